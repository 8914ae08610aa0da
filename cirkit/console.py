"""The rich consoles everything prints through: results to stdout, progress and messages to stderr."""

from rich.console import Console

stdout = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)
