"""The command lines' parser: argparse, with usage errors on one line."""

from __future__ import annotations

import argparse
from typing import NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line that points to ``--help``,
    instead of the whole usage block (dozens of lines for a recipe) above the error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (all options: {self.prog} --help)\n")
