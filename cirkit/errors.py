"""The one exception type users see: its message is printed as a single line by the CLI."""


class CirkitError(Exception):
    """A problem the user can fix (bad input, bad file, missing model); never a bug."""


class ImageError(CirkitError):
    """An image that cannot be used: missing, unreadable, corrupt, or too large."""


def one_line(exc: BaseException | str) -> str:
    """An exception's message folded onto one line, for error output."""
    return " ".join(str(exc).split())
