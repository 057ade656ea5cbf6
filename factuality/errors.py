"""Expected errors: what a user can cause and fix (bad input, bad config, a missing model).

Every script's entry point (`factuality.cli`) turns these into one `error: ...` line and exit
code 2; anything else is a bug and keeps its traceback. The project's own error classes
(`RecordError`, `HashMismatch`, `ModelLoadError`) are registered here by name, so this module
imports nothing heavy and each class stays in the module that raises it; `UserError` and
`ConfigError` (raised by config and compat alike) live here.
"""
from __future__ import annotations

import errno
import sys


class UserError(Exception):
    """Base for expected errors raised by the package; the message says what to do."""


class ConfigError(UserError, ValueError):
    """A bad option: unknown key, wrong type, out of range, contradicting another (config, compat)."""


# (module, class name) of the package's expected errors, looked up only in modules already imported:
# an error of a module never imported cannot have been raised.
_EXPECTED = (
    ("factuality.records.contracts", "RecordError"),
    ("factuality.raw_inputs", "HashMismatch"),
    ("factuality.modeling", "ModelLoadError"),
)
# OS errors about a path the user named: missing inputs, a run folder in the way, no permission.
_EXPECTED_OS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def is_expected(exc: BaseException) -> bool:
    """True for errors the user can fix from the message alone (no traceback needed)."""
    if isinstance(exc, (UserError, UnicodeDecodeError) + _EXPECTED_OS):
        return True
    for module, name in _EXPECTED:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(exc, cls):
            return True
    return False


def one_line(exc: BaseException) -> str:
    """The message of an expected error, as the single line printed after `error: `."""
    if isinstance(exc, UnicodeDecodeError):
        return (f"input is not UTF-8 text: byte 0x{exc.object[exc.start]:02x} at offset {exc.start} "
                f"({exc.reason}); re-encode the file as UTF-8")
    if isinstance(exc, OSError) and exc.strerror:   # never a raw "[Errno N] ...": the path, the reason, the fix
        where = f"{exc.filename}: " if exc.filename else ""
        other = f" (and {exc.filename2})" if exc.filename2 else ""
        return f"{where}{exc.strerror}{other}{_OS_HINTS.get(exc.errno, '')}"
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in str(exc):
        return f"{exc.filename}: {exc}"
    text = str(exc) or type(exc).__name__
    text = " ".join(text.split()) if "\n" in text and len(text) < 2000 else text.replace("\n", " ")
    if len(text) > MAX_LINE:   # keep where it happened (the start) and what to do (the end)
        head, tail = MAX_LINE - 160, 100
        text = f"{text[:head]} [... {len(text) - head - tail:,} characters left out ...] {text[-tail:]}"
    return text


MAX_LINE = 500   # the longest error line printed

_OS_HINTS = {
    errno.ENOENT: "; check the path (or run the step that writes it)",
    errno.EACCES: "; check its permissions, or choose a path you may write",
    errno.EPERM: "; check its permissions, or choose a path you may write",
    errno.ENOSPC: "; free disk space and rerun the same command (it resumes)",
    errno.EISDIR: "; name a file, not a folder",
    errno.ENOTDIR: "; a part of the path is a file, not a folder",
    errno.EROFS: "; the file system is read-only: choose another output path",
    errno.ENAMETOOLONG: "; use a shorter path",
}
