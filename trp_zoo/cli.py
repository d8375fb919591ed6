"""The command lines' parser: argparse, with usage errors on one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line that points to ``--help``,
    instead of the whole usage block (dozens of lines for a recipe) above the error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (all options: {self.prog} --help)\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """Parse as argparse does, refusing an empty option value first: ``--output-dir ''``
        would otherwise mean the current directory, ``--revision ''`` the default."""
        argv = list(sys.argv[1:] if args is None else args)
        for i, token in enumerate(argv):
            option, eq, value = token.partition("=")
            action = self._option_string_actions.get(option if eq else token)
            if action is None or action.nargs == 0:
                continue
            if (eq and value == "") or (not eq and argv[i + 1 : i + 2] == [""]):
                self.error(
                    f"{max(action.option_strings, key=len)} is empty: give a value or leave it out"
                )
        return super().parse_known_args(argv, namespace)
