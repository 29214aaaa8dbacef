"""Errors that are the user's to fix: the CLI prints them and exits 2, never a traceback."""

from __future__ import annotations


class UserInputError(Exception):
    """Bad input: one line per problem, each naming the file, the field path and what was expected."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


def problem(source: str, path: str, message: str) -> str:
    """One problem line: `file: field.path: message` (the path is left out when empty)."""
    return f"{source}: {path}: {message}" if path else f"{source}: {message}"
