"""The `tlkit` command line: parse arguments (no torch import for --help or recipe errors), then run a command."""

from tlkit.cli.main import main

__all__ = ["main"]
