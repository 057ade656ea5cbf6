"""Seals: the size and sha256 of a file a later stage reads, recorded beside it when it is written.

`seal(path)` writes `.<name>.sha256` (hidden, so no output glob picks it up); `check_seal(path)`,
called by every JSONL read (`reading.iter_jsonl`) and by the loaders of reward models, features
and caches, refuses a file whose sealed bytes changed. Bytes appended after the seal (a run killed
mid-append) are the unsealed tail a resumed run continues. `discard_if_tampered` is the cache
variant: the file is dropped with one warning line and computed again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from .contracts import RecordError, sha256_file
from .files import atomic_write_json

log = logging.getLogger("factuality.records")


def seal_path(path: str | os.PathLike) -> Path:
    """The seal of `path`: `.<name>.sha256` beside it (hidden, so no output glob picks it up)."""
    path = Path(path)
    return path.with_name(f".{path.name}.sha256")


def seal(path: str | os.PathLike) -> None:
    """Record `path`'s size and sha256 beside it (`seal_path`). Readers (`reading.check_seal`,
    called by every JSONL read) refuse a file whose sealed bytes changed. Rows appended after the
    seal (a run killed before it sealed again) are the unsealed tail a resumed run continues."""
    path = Path(path)
    atomic_write_json(seal_path(path), {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)})


def seal_dir(folder: str | os.PathLike) -> None:
    """Seal every file in `folder` (not its subfolders): a set whose files are all sealed."""
    for p in sorted(Path(folder).iterdir()):
        if p.is_file() and not p.name.startswith("."):
            seal(p)


def check_seal(path: str | os.PathLike, fix: str | None = None) -> None:
    """When `path` has a seal (`seal`), its first sealed bytes must still have the sealed
    sha256: a file edited, damaged or swapped after it was written is refused (one line)."""
    path = Path(path)
    sp = seal_path(path)
    if not sp.is_file():
        return
    try:
        rec = json.loads(sp.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        rec = None
    n, want = (rec.get("bytes"), rec.get("sha256")) if isinstance(rec, dict) else (None, None)
    if not isinstance(n, int) or isinstance(n, bool) or n < 0 or not isinstance(want, str):
        raise RecordError(f"{sp}: not a file seal (JSON object with integer bytes and sha256); delete it and rerun "
                          f"the step that writes {path.name}")
    h, left = hashlib.sha256(), n
    with open(path, "rb") as f:
        while left > 0 and (block := f.read(min(left, 1 << 20))):
            h.update(block)
            left -= len(block)
    if left > 0 or h.hexdigest() != want:
        what = f"is {n - left} bytes, shorter than the {n} sealed" if left > 0 else \
            f"differs in its first {n} bytes from the sha256 recorded when it was written ({sp.name})"
        raise RecordError(f"{path}: {what}; the file was edited, damaged or replaced. "
                          + (fix or f"Rerun the step that writes it (or delete {path} and {sp}, and that step "
                                    f"rebuilds it)"))


def check_sealed_dir(folder: str | os.PathLike) -> None:
    """Every sealed file in `folder` (`seal_dir`) still has its sealed bytes, and none is missing."""
    folder = Path(folder)
    for sp in sorted(folder.glob(".*.sha256")):
        target = folder / sp.name[1:-len(".sha256")]
        if not target.is_file():
            raise RecordError(f"{target}: missing, but {sp.name} records it as part of this set; the folder was "
                              f"edited: rerun the step that wrote {folder}")
        check_seal(target)


def discard_if_tampered(path: str | os.PathLike) -> bool:
    """A cache whose sealed bytes changed is dropped (one warning line) so it is computed again;
    True when it was."""
    try:
        check_seal(path, fix="The cache is discarded and computed again")
    except RecordError as e:
        log.warning("%s", e)
        Path(path).unlink(missing_ok=True)
        seal_path(path).unlink(missing_ok=True)
        return True
    return False


def cache_rows(path: str | os.PathLike, contract) -> list[dict]:
    """The rows of an append-only cache file (`files.JsonlAppender`, sealed after each batch),
    created empty if absent: a file whose sealed bytes changed is dropped first
    (`discard_if_tampered`), and a line torn by a kill is cut before it is read."""
    from .files import JsonlAppender
    from .reading import read_jsonl

    path = Path(path)
    discard_if_tampered(path)             # before the appender may cut a torn (unsealed) last line
    JsonlAppender(path, contract).close()
    return read_jsonl(path, contract, allow_empty=True) if path.stat().st_size else []
