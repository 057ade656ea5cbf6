"""The raw inputs of a build: where they are (the user's data/raw, a --raw-dir, or the bundled
sample), which files the sources read, and their sha256 checked against the manifest accepted
earlier (a changed, new or vanished file stops the build before anything is written)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Callable

from . import sources as S
from .records import RecordError, read_json, sha256_file

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO_ROOT / "data" / "sample"
MANIFEST_NAME = "raw_manifest.json"


class HashMismatch(RuntimeError):
    """A raw input differs from the manifest (or is new) and --accept-new-hash was not given."""


@dataclass
class RawLayout:
    roots: list[Path]
    manifest: Path
    bundled_sample: bool


def resolve_layout(cfg) -> RawLayout:
    """The raw roots and manifest of a build (`cfg.data_dir`, `cfg.raw_dir`): the user's raw/ when it
    holds files or a manifest of theirs exists, else the bundled sample."""
    data_dir = Path(cfg.data_dir)
    if cfg.raw_dir:
        return RawLayout([Path(cfg.raw_dir)], data_dir / MANIFEST_NAME, False)
    raw = data_dir / "raw"
    # A manifest of the user's own means their raw files are the inputs, even if all of them vanished:
    # falling back to the bundled sample then would hide the loss.
    if (raw.is_dir() and any(p.is_file() for p in raw.rglob("*"))) or (data_dir / MANIFEST_NAME).exists():
        return RawLayout([raw], data_dir / MANIFEST_NAME, False)
    return RawLayout([SAMPLE_DIR / "raw", SAMPLE_DIR / "fixtures"], SAMPLE_DIR / MANIFEST_NAME, True)


def discover_inputs(roots: list[Path], sources: list[str]) -> dict[str, list[Path]]:
    """{role: files} for every raw file the sources' dataset modules read, found under the roots."""
    out: dict[str, list[Path]] = {}
    for role, pattern in S.input_globs(sources).items():
        files = []
        for root in roots:
            files += sorted(p for p in root.glob(pattern) if p.is_file() and not p.name.startswith("."))
        out[role] = files
    return out


def glob_match(rel_parts: tuple[str, ...], pattern: str) -> bool:
    """Path.glob semantics for a relative path: one pattern part per path part."""
    pat = pattern.split("/")
    return len(pat) == len(rel_parts) and all(fnmatchcase(p, q) for p, q in zip(rel_parts, pat))


def input_scope(roots: list[Path], sources: list[str]) -> Callable[[Path], bool]:
    """Whether a path is one this build would read (under a root, matching an input glob): a file the
    manifest lists that is in scope and missing has vanished."""
    patterns = list(S.input_globs(sources).values())

    def in_scope(path: Path) -> bool:
        for root in roots:
            try:
                rel = path.resolve().relative_to(root.resolve()).parts
            except ValueError:
                continue
            if not (rel and rel[-1].startswith(".")) and any(glob_match(rel, p) for p in patterns):
                return True
        return False

    return in_scope


def relative_posix(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()


def verify_hashes(files: list[Path], manifest_path: Path, accept_new: bool,
                  in_scope: Callable[[Path], bool] | None = None) -> tuple[dict[str, str], dict | None]:
    """sha256 of each input checked against the manifest; a file the manifest lists (and that
    `in_scope` says this run reads; default: every listed file) must still exist.

    Returns ({relative path: sha256}, manifest to write or None). Raises HashMismatch naming the
    file, both hashes and the fix; nothing has been written at that point.
    """
    base = manifest_path.parent
    manifest = {"files": {}}
    if manifest_path.exists():
        try:
            manifest = read_json(manifest_path, expected="a hash manifest {'files': {path: sha256}}")
            if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
                raise RecordError("not a mapping with 'files'")
        except RecordError:
            raise HashMismatch(f"{manifest_path}: not a valid hash manifest ({{'files': {{path: sha256}}}}); "
                               "delete it and rerun with --accept-new-hash") from None
    recorded = manifest["files"]
    current = {relative_posix(p, base): sha256_file(p) for p in files}
    changed = False
    for rel in sorted(recorded):
        if rel in current or (base / rel).exists() or (in_scope is not None and not in_scope(base / rel)):
            continue
        if not accept_new:
            raise HashMismatch(
                f"{base / rel}: listed in {manifest_path} (sha256 {recorded[rel]}) but missing; a raw input "
                "vanished since it was accepted. Restore or re-download it (python build_data.py download), or, if "
                "you removed it on purpose, rerun with --accept-new-hash to drop it from the manifest; nothing was "
                "written")
        del recorded[rel]
        changed = True
    for rel, digest in current.items():
        old = recorded.get(rel)
        if old == digest:
            continue
        if not accept_new:
            if old is None:
                raise HashMismatch(
                    f"{base / rel}: new raw input, sha256 {digest} is not in {manifest_path}. If you added it on "
                    "purpose, rerun with --accept-new-hash to record it; nothing was written")
            raise HashMismatch(
                f"{base / rel}: sha256 {digest} differs from {old} recorded in {manifest_path}; the raw file "
                "changed since it was accepted. Restore or re-download it (python build_data.py download), or, if "
                "the change is intended, rerun with --accept-new-hash; nothing was written")
        recorded[rel] = digest
        changed = True
    if not manifest_path.exists():
        changed = True
    manifest["files"] = dict(sorted(recorded.items()))
    manifest.setdefault("note", "sha256 of every raw input; build_data.py refuses inputs that differ "
                                "(rerun with --accept-new-hash to record a deliberate change)")
    return current, (manifest if changed else None)
