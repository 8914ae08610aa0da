"""The one exception type users see: its message is printed as a single line by the CLI."""


class CirkitError(Exception):
    """A problem the user can fix (bad input, bad file, missing model); never a bug."""


class PartialGenerationError(CirkitError):
    """A batch of generations that failed part-way (a server went away, a request kept failing).

    `results[i]` is request i's generations, or None where it failed; `str(error)` is the one-line
    reason of the first failure. Callers keep what was answered.
    """

    def __init__(self, message: str, results: list):
        super().__init__(message)
        self.results = results

    @property
    def completed(self) -> int:
        return sum(r is not None for r in self.results)


class ImageError(CirkitError):
    """An image that cannot be used: missing, unreadable, corrupt, or too large."""


def one_line(exc: BaseException | str) -> str:
    """An exception's message folded onto one line, for error output."""
    return " ".join(str(exc).split())
