"""One error hierarchy for everything a user can get wrong.

The CLI catches :class:`ThresherError` once and prints its one-line message (exit
code 2); any other exception is a bug in thresher and is printed with its
traceback and a request to report it. Each class also derives from the builtin
exception that older callers catch (``ValueError``, ``FileExistsError``,
``ImportError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

from typing import Any, Optional


class ThresherError(Exception):
    """Base class: a problem the user can fix (bad input, bad option, missing resource)."""

    exit_code = 2


class InputError(ThresherError, ValueError):
    """A bad row or file: the message names the file, the line (1-based) and the field."""

    def __init__(
        self, message: str, *, file: Any = None, line: Optional[int] = None, field: Optional[str] = None
    ) -> None:
        where = str(file) if file is not None else "<data>"
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {message}")
        self.file, self.line, self.field, self.reason = file, line, field, message


class OptionError(ThresherError, ValueError):
    """An option, budget or config value that is out of type, range or choices (names the option)."""


class ResourceError(ThresherError, RuntimeError):
    """Something outside the data: a model, a folder, a permission, a device."""


class OutputExistsError(ResourceError, FileExistsError):
    """An output folder holds something a run must not overwrite."""


class MissingExtraError(ThresherError, ImportError):
    """An optional dependency is missing; the message says which extra to install."""

    def __init__(self, what: str, extra: str, exc: Optional[BaseException] = None) -> None:
        why = f" ({exc})" if exc is not None else ""
        super().__init__(f"{what} needs the '{extra}' extra{why}: pip install 'thresher[{extra}]'")
        self.extra = extra
