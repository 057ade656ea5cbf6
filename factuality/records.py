"""JSONL contracts between the scripts: JSON Schemas, strict reading, atomic writing.

Every JSONL row carries `schema_version` and `id`, is validated against its contract's JSON
Schema when written AND when read, and a bad row stops the run with
`path:line: field: problem` (or, when a rejects file is given, goes there and is counted).
Nothing is dropped silently. Bytes that are not UTF-8 are reported with file, line and byte
offset; an empty file and a repeated id are refused where the contract says so.

Writing: one file is written to a temp file beside the target and renamed over it
(`atomic_open`); a set of files that belong together (a build's splits and run card) is written
into a temp folder beside the target folder and swapped in with one rename (`atomic_dir`), so a
kill leaves the old set or the new one, never a mix. A reader of a file whose folder holds a run
card that lists the file's sha256 checks it (`read_jsonl`). Files are created with the user's
umask (readable by the group where the umask says so), never private temp-file modes.
"""
from __future__ import annotations

import codecs
import contextlib
import ctypes
import ctypes.util
import errno
import gzip
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import string
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import jsonschema

SCHEMA_VERSION = 1
SOURCES = ("fever", "hotpotqa", "nq", "popqa")   # the datasets the suite ships readers for
# A source of one's own (build_data.py --sources NAME, see factuality/sources/own.py) goes under
# its own name: lower-case letters, digits and underscores, so that `<source>:<id>` stays parseable.
SOURCE_NAME = r"[a-z][a-z0-9_]{0,39}"
SPLITS = ("train", "val", "test")


class RecordError(ValueError):
    """A record (or a file) breaks its contract. The message names file, line and field."""


# --------------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------------
CHUNK_SCHEMA = {
    "type": "object",
    "required": ["id", "title", "text"],
    "properties": {
        "id": {"type": "string", "minLength": 1, "description": "short id shown to the model, e.g. 'E3'"},
        "title": {"type": "string"},
        "text": {"type": "string", "minLength": 1},
        "doc_id": {"type": "string", "description": "stable id of the source passage/sentence"},
    },
}

SPAN_SCHEMA = {
    "type": "object",
    "required": ["chunk_id", "start", "end"],
    "properties": {
        "chunk_id": {"type": "string", "minLength": 1},
        "start": {"type": "integer", "minimum": 0},
        "end": {"type": "integer", "minimum": 1},
    },
}

EXAMPLE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "processed grounded-QA example (train/val/test.jsonl)",
    "type": "object",
    "required": [
        "schema_version", "id", "source", "split", "question", "answers", "answerable",
        "evidence", "support", "hard_negatives", "meta", "hash",
    ],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "id": {"type": "string", "pattern": f"^{SOURCE_NAME}:.+"},
        "source": {"type": "string", "pattern": f"^{SOURCE_NAME}$"},
        "split": {"enum": list(SPLITS)},
        "question": {"type": "string", "minLength": 1},
        "answers": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
        "answerable": {"type": "boolean"},
        "evidence": {"type": "array", "items": CHUNK_SCHEMA, "minItems": 1},
        "support": {"type": "array", "items": SPAN_SCHEMA},
        "hard_negatives": {"type": "array", "items": {"type": "string"}},
        "meta": {"type": "object"},
        "hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    },
}


def _check_example(rec: dict) -> str | None:
    """Cross-field rules a JSON Schema cannot say. Returns a problem or None."""
    if not rec["id"].startswith(rec["source"] + ":"):
        return f"id: {rec['id']!r} does not start with its source {rec['source']!r} and a colon"
    ids = [c["id"] for c in rec["evidence"]]
    if len(set(ids)) != len(ids):
        return "evidence: chunk ids are not unique"
    by_id = {c["id"]: c for c in rec["evidence"]}
    for i, span in enumerate(rec["support"]):
        chunk = by_id.get(span["chunk_id"])
        if chunk is None:
            return f"support[{i}].chunk_id: {span['chunk_id']!r} is not an evidence id"
        if not span["start"] < span["end"] <= len(chunk["text"]):
            return f"support[{i}]: span {span['start']}:{span['end']} is outside chunk {span['chunk_id']}"
    if rec["answerable"] and not rec["support"]:
        return "support: an answerable example needs at least one support span"
    if not rec["answerable"] and rec["support"]:
        return "support: an unanswerable example must have no support spans"
    for hn in rec["hard_negatives"]:
        if hn not in by_id:
            return f"hard_negatives: {hn!r} is not an evidence id"
    if record_hash(rec) != rec["hash"]:
        return "hash: does not match the record's content (edited by hand? rebuild with build_data.py)"
    return None


@dataclass(frozen=True)
class Contract:
    """One JSONL contract: a name, a JSON Schema, optional cross-field checks, and file-level rules.

    `unique`: fields whose values together must not repeat within one file (e.g. ("id",)); a
    repeat is refused with both line numbers. `allow_empty=False`: a file with no records is
    refused, naming what was expected (`expected`, default the schema's title).
    """

    name: str
    schema: dict
    check: Callable[[dict], str | None] | None = None
    unique: tuple[str, ...] = ()
    allow_empty: bool = True
    expected: str = ""
    _validator: Any = field(default=None, compare=False, repr=False)

    def validator(self):
        if self._validator is None:
            cls = jsonschema.validators.validator_for(self.schema)
            object.__setattr__(self, "_validator", cls(self.schema))
        return self._validator

    def problem(self, rec: Any) -> str | None:
        """The first thing wrong with `rec` as `field: problem`, or None when it is valid."""
        if not isinstance(rec, dict):
            return f"a JSON object is expected, got {type(rec).__name__}"
        errors = sorted(self.validator().iter_errors(rec), key=lambda e: (len(e.path), list(map(str, e.path))))
        if errors:
            err = errors[0]
            path = list(err.absolute_path)
            if err.validator == "required":  # name the missing field itself, not its parent
                missing = next((r for r in err.validator_value if r not in err.instance), None)
                return f"{_path_str(path + [missing])}: is missing"
            where = _path_str(path) or "(record)"
            return f"{where}: {_short(err)}"
        return self.check(rec) if self.check else None

    def describe(self) -> str:
        return self.expected or self.schema.get("title") or f"{self.name} records"

    def validate(self, rec: Any, where: str = "") -> dict:
        problem = self.problem(rec)
        if problem:
            raise RecordError(f"{where}: {problem}" if where else problem)
        return rec


EXAMPLE = Contract("example", EXAMPLE_SCHEMA, _check_example, unique=("id",), allow_empty=False,
                   expected="processed examples, one JSON object a line, as build_data.py writes them")


# A preference pair (make_prefs.py writes, train_rm.py and train_dpo.py read). `prompt`, `chosen`
# and `rejected` are TRL's standard (string) preference format: the prompt as rendered for the
# policy (chat template applied, generation prompt added), the completions as the model's raw
# answer text (no end-of-turn token: the trainers append it). The rest is what the reward model's
# penalties and the reports need.
PREFERENCE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "one preference pair (prefs/preferences_<signature>.jsonl)",
    "type": "object",
    "required": ["schema_version", "id", "example_id", "split", "source", "prompt", "chosen", "rejected", "margin",
                 "chosen_score", "rejected_score", "kind", "chosen_origin", "rejected_origin", "evidence",
                 "support_ids", "answerable"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "id": {"type": "string", "minLength": 1, "description": "<example id>#<k>: the k-th pair of that example"},
        "example_id": {"type": "string", "minLength": 1},
        "split": {"enum": ["train", "val", "test"], "description": "the example's split; test never becomes a pair"},
        "source": {"type": "string", "minLength": 1},
        "prompt": {"type": "string", "minLength": 1},
        "chosen": {"type": "string"},
        "rejected": {"type": "string"},
        "margin": {"type": "number", "description": "chosen_score - rejected_score (>= the run's min_margin)"},
        "chosen_score": {"type": "number"},
        "rejected_score": {"type": "number"},
        "kind": {"type": "string", "minLength": 1,
                 "description": "model (two model candidates) or perturb:<what> (a labelled edit of a good answer)"},
        "chosen_origin": {"type": "string", "description": "sft, base, sft_sample_<k>, gold, perturb:<what>"},
        "rejected_origin": {"type": "string"},
        "evidence": {"type": "array", "items": {"type": "object", "required": ["id", "text"],
                                                "properties": {"id": {"type": "string"}, "title": {"type": "string"},
                                                               "text": {"type": "string"}}}},
        "support_ids": {"type": "array", "items": {"type": "string"}},
        "hard_negative_ids": {"type": "array", "items": {"type": "string"}},
        "answerable": {"type": "boolean"},
        "answers": {"type": "array", "items": {"type": "string"}},
        "details": {"type": "object", "description": "--output-mode rich: parsed outputs, judge rationale, verifier breakdown"},
    },
}
PREFERENCE = Contract("preference pair", PREFERENCE_SCHEMA, unique=("id",), allow_empty=False,
                      expected="preference pairs, one JSON object a line, as make_prefs.py --phase judge writes them")


def _path_str(path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _short(err: jsonschema.ValidationError) -> str:
    if err.validator == "required":
        return err.message.replace("is a required property", "is missing")
    if err.validator in ("enum", "const"):
        return f"{err.instance!r} is not one of {err.validator_value!r}"
    msg = err.message
    return msg if len(msg) < 200 else msg[:200] + "..."


# --------------------------------------------------------------------------------------------
# Hashing
# --------------------------------------------------------------------------------------------
def canonical_json(obj: Any) -> str:
    """Key-sorted, compact, UTF-8 JSON: the byte form that hashes are taken over."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_json(obj: Any) -> str:
    """sha256 of an object's canonical JSON: equal content gives an equal hash, whatever the key order."""
    return sha256_text(canonical_json(obj))


def record_hash(rec: dict) -> str:
    """sha256 of the canonical record without its own `hash` field."""
    return sha256_json({k: v for k, v in rec.items() if k != "hash"})


def with_hash(rec: dict) -> dict:
    rec = dict(rec)
    rec.pop("hash", None)
    rec["hash"] = record_hash(rec)
    return rec


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Fault injection (tests): kill the process at a named step of a multi-file write
# --------------------------------------------------------------------------------------------
KILL_AT_ENV = "FACTUALITY_TEST_KILL_AT"     # =<step name>: SIGKILL this process when it reaches that step
TRACE_ENV = "FACTUALITY_TEST_TRACE"         # =<file>: append the name of every step reached (to list them)


def fault_point(name: str) -> None:
    """A named step of an output commit. Does nothing unless a test set the environment above."""
    trace = os.environ.get(TRACE_ENV)
    if trace:
        with open(trace, "a", encoding="utf-8") as f:
            f.write(name + "\n")
    if os.environ.get(KILL_AT_ENV) == name:
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


# --------------------------------------------------------------------------------------------
# Atomic writing: one file (atomic_open), a set of files (atomic_dir)
# --------------------------------------------------------------------------------------------
# Temp names: `.{target name}.{8 random chars}{suffix}` beside the target, so leftovers of a killed
# run are recognised (and removed) by the next writer of the same target and by no one else.
_TOKEN_CHARS = string.ascii_lowercase + string.digits
_TMP, _NEW, _OLD = ".tmp", ".new", ".old"


def _temp_path(target: Path, suffix: str) -> Path:
    return target.parent / f".{target.name}.{''.join(secrets.choice(_TOKEN_CHARS) for _ in range(8))}{suffix}"


def _leftovers(target: Path, suffixes: tuple[str, ...]) -> list[Path]:
    pattern = re.compile(rf"\.{re.escape(target.name)}\.[{_TOKEN_CHARS}]{{8}}({'|'.join(map(re.escape, suffixes))})")
    if not target.parent.is_dir():
        return []
    return sorted(p for p in target.parent.iterdir() if pattern.fullmatch(p.name))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):   # not every platform / file system lets a folder be fsynced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def apply_umask(root: str | os.PathLike) -> None:
    """Give every file and folder under `root` the mode a plain open/mkdir would (0o666 / 0o777
    less the umask): libraries that save through private temp files leave 0o600 behind."""
    mask = os.umask(0)
    os.umask(mask)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            p = os.path.join(dirpath, name)
            full = 0o777 if os.stat(p).st_mode & 0o111 else 0o666  # executables keep their x bits
            os.chmod(p, full & ~mask)
        for name in dirnames:
            p = os.path.join(dirpath, name)
            os.chmod(p, 0o777 & ~mask)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temp file beside `path`; on clean exit fsync and rename it over `path`.

    On an exception the temp file is removed and `path` is left as it was; temp files left by a
    killed earlier write of the same `path` are removed first. The file gets the mode a plain
    `open` would give (0o666 less the umask), not mkstemp's private 0o600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in _leftovers(path, (_TMP,)):
        _remove(stale)
    while True:
        tmp = _temp_path(path, _TMP)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def json_text(obj: Any) -> str:
    """The JSON form of every JSON file this suite writes (indented, UTF-8, trailing newline)."""
    return json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json_text(obj))


_libc = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2 RENAME_EXCHANGE, macOS renamex_np
    RENAME_SWAP). False where the platform or file system has no such call (then two renames)."""
    global _libc
    if os.environ.get("FACTUALITY_NO_RENAME_EXCHANGE"):   # tests: take the two-rename path
        return False
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        except OSError:
            _libc = False
    if not _libc:
        return False
    src, dst = os.fsencode(a), os.fsencode(b)
    if hasattr(_libc, "renameat2"):
        rc = _libc.renameat2(-100, src, -100, dst, 2)        # AT_FDCWD, RENAME_EXCHANGE
    elif hasattr(_libc, "renamex_np"):
        rc = _libc.renamex_np(src, dst, 2)                   # RENAME_SWAP
    else:
        return False
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, getattr(errno, "EOPNOTSUPP", errno.ENOTSUP)):
        return False
    raise OSError(err, os.strerror(err), str(b))


PENDING_DIR = ".pending"   # inside a committed set: files to place outside it, right after the commit


def stage_outside(set_dir: str | os.PathLike, dest: str | os.PathLike, data: str | bytes) -> None:
    """Part of a set that lives outside its folder (e.g. the raw-hash manifest): written to `dest`
    right after the set is committed, and by the next `recover_dir` when a kill came in between."""
    pending = Path(set_dir) / PENDING_DIR
    pending.mkdir(exist_ok=True)
    n = len(list(pending.glob("*.dest")))
    (pending / f"{n:04d}").write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    (pending / f"{n:04d}.dest").write_text(str(Path(dest).resolve()), encoding="utf-8")


def _place_pending(target: Path) -> None:
    pending = target / PENDING_DIR
    if not pending.is_dir():
        return
    for dest_file in sorted(pending.glob("*.dest")):
        data_file = dest_file.with_suffix("")
        dest = Path(dest_file.read_text(encoding="utf-8"))
        if data_file.exists():
            atomic_write_bytes(dest, data_file.read_bytes())
            fault_point(f"set:placed:{dest.name}")
            data_file.unlink()
        dest_file.unlink()
    shutil.rmtree(pending, ignore_errors=True)


def recover_dir(target: str | os.PathLike) -> None:
    """Finish or undo what a killed `atomic_dir` commit of `target` left, so `target` holds one whole set.

    A complete new set waiting beside an absent target (killed between the two renames of the
    fallback swap) is moved in; an old set put aside is restored when nothing replaced it, else
    removed; unfinished temp folders and temp files are removed; files the committed set still
    had to place outside itself are placed.
    """
    target = _real(target)
    if not target.exists():
        ready = _leftovers(target, (_NEW,)) or _leftovers(target, (_OLD,))
        if ready:
            os.rename(ready[0], target)
            _fsync_dir(target.parent)
    for stale in _leftovers(target, (_TMP, _NEW, _OLD)):
        _remove(stale)
    if target.is_dir():
        for stale in target.iterdir():   # temp files of per-file atomic writes killed inside the set
            if re.fullmatch(r"\..+\.[a-z0-9_]{8}\.tmp", stale.name) and stale.is_file():
                stale.unlink()
        _place_pending(target)


def _real(target: str | os.PathLike) -> Path:
    """A folder reached through a symlink is replaced where it really is (the link stays a link)."""
    target = Path(target)
    return target.resolve() if target.is_symlink() else target


def _link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:   # a file system without hard links
        shutil.copy2(src, dst, follow_symlinks=False)


def _carry_over(old: Path, new: Path) -> None:
    """Entries of the old folder that the new set does not write are kept (hard links: no copy)."""
    for entry in old.iterdir():
        dst = new / entry.name
        if dst.exists() or dst.is_symlink() or entry.name == PENDING_DIR:
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), dst)
        elif entry.is_dir():
            shutil.copytree(entry, dst, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, dst)
    shutil.copymode(old, new)


def _commit_dir(tmp: Path, target: Path) -> None:
    for root, _, files in os.walk(tmp):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))
    if not target.exists():
        fault_point("set:ready")
        os.rename(tmp, target)
    else:
        if not target.is_dir():
            raise FileExistsError(f"{target}: exists and is not a folder; the outputs are a folder of files. "
                                  "Move it away or choose another output folder")
        _carry_over(target, tmp)
        fault_point("set:ready")
        if _exchange(tmp, target):          # tmp now holds the old set
            fault_point("set:swapped")
            _remove(tmp)
        else:
            new = _temp_path(target, _NEW)
            os.rename(tmp, new)             # complete: recover_dir moves it in if killed below
            fault_point("set:new_ready")
            old = _temp_path(target, _OLD)
            os.rename(target, old)
            fault_point("set:old_aside")
            os.rename(new, target)
            fault_point("set:swapped")
            _remove(old)
    _fsync_dir(target.parent)
    fault_point("set:committed")


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Write a set of files as one: yields an empty temp folder beside `target` to write into.

    On clean exit every file in it is fsynced and the folder replaces `target` in one atomic
    rename (an exchange with the old folder where the platform has one; elsewhere two renames
    that `recover_dir` completes after a kill). Entries of the old `target` that the new set does
    not write are kept (hard-linked across). Files given to `stage_outside` are placed after the
    commit. On an exception the temp folder is removed and `target` is left as it was. Leftovers
    of a killed earlier commit are cleaned up first (`recover_dir`). One writer per target.

        with atomic_dir("data/processed") as tmp:
            (tmp / "train.jsonl").write_text(...)
            write_run_card(tmp / "run_card.json", card)    # lists each file's sha256
    """
    target = _real(target)
    recover_dir(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = _temp_path(target, _TMP)
        try:
            os.mkdir(tmp, 0o777)            # the umask decides who may read it, as for any new folder
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        _commit_dir(tmp, target)
    except BaseException:
        _remove(tmp)
        raise
    _place_pending(target)


def dumps_line(rec: dict) -> str:
    return json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n"


def write_jsonl(path: str | os.PathLike, records: Iterable[dict], contract: Contract | None = None) -> int:
    """Validate (when a contract is given) and atomically write records; returns the count.

    Validation happens before anything is renamed into place: a bad record leaves `path` as it was.
    """
    n = 0
    with atomic_open(path) as f:
        for n, rec in enumerate(records, start=1):
            if contract is not None:
                contract.validate(rec, where=f"{path}: record {n} (id={rec.get('id')!r})")
            f.write(dumps_line(rec))
    return n


class JsonlAppender:
    """Append-only JSONL for resumable runs: each line is flushed and fsynced as it is written.

    A line torn by a kill (no trailing newline) is cut off on reopen, so a resumed run never
    reads half a record.
    """

    def __init__(self, path: str | os.PathLike, contract: Contract | None = None):
        self.path = Path(path)
        self.contract = contract
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):
                keep = data.rfind(b"\n") + 1
                with open(self.path, "r+b") as f:
                    f.truncate(keep)
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, rec: dict) -> None:
        if self.contract is not None:
            self.contract.validate(rec, where=f"{self.path}: id={rec.get('id')!r}")
        self._f.write(dumps_line(rec))
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------------------------
# Bad records: one location type, one rejects-file format, one sink for every reader
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Where:
    """Where a record sits: `file:line` (line-based files) or `file[index]` (JSON arrays)."""

    file: str
    line: int | None = None
    index: int | None = None

    def __str__(self) -> str:
        if self.line is not None:
            return f"{self.file}:{self.line}"
        return f"{self.file}[{self.index}]" if self.index is not None else self.file

    @classmethod
    def parse(cls, text: str) -> Where:
        """The inverse of str(): 'file:line', 'file[index]' or a bare file."""
        m = re.fullmatch(r"(.+):(\d+)", text)
        if m:
            return cls(m.group(1), line=int(m.group(2)))
        m = re.fullmatch(r"(.+)\[(\d+)\]", text)
        return cls(m.group(1), index=int(m.group(2))) if m else cls(text)


REJECT_SCHEMA: dict[str, Any] = {
    "title": "a malformed record set aside (the rejects file of every reader)",
    "type": "object",
    "required": ["where", "file", "line", "field", "problem", "raw"],
    "properties": {
        "where": {"type": "string", "description": "file:line or file[index], as in the error message"},
        "file": {"type": "string"},
        "line": {"type": ["integer", "null"], "description": "1-based line; null in a JSON array file"},
        "index": {"type": "integer", "description": "position in a JSON array file"},
        "byte": {"type": "integer", "description": "file offset of the first byte that is not UTF-8"},
        "field": {"type": "string", "description": "the field at fault, or (line) / (record) / (encoding)"},
        "problem": {"type": "string"},
        "raw": {"type": "string", "description": "the record as read (bytes that are not UTF-8 as \\xNN)"},
    },
}
REJECT = Contract("reject", REJECT_SCHEMA)


def _split_problem(problem: str) -> tuple[str, str]:
    """'field: problem' (Contract.problem's form) -> (field, problem)."""
    m = re.match(r"([\w.\[\]()-]+): (.*)", problem, flags=re.DOTALL)
    return (m.group(1), m.group(2)) if m else ("(record)", problem)


def printable(raw: Any) -> str:
    """A raw record as text for messages and rejects rows: undecodable bytes become \\xNN."""
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "backslashreplace")
    if not isinstance(raw, str):
        raw = json.dumps(raw, ensure_ascii=False, default=str)
    return raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class Rejects:
    """Where malformed records go: by default the first one raises RecordError
    `file:line: field: problem` (plus `hint`); with `path` each is appended there as a REJECT row,
    with `collect=True` each is kept in `items` (for a caller that writes them with its outputs).
    """

    def __init__(self, path: str | os.PathLike | None = None, collect: bool = False, hint: str | None = None):
        self.path, self.collect, self.hint = path, collect, hint
        self.items: list[dict] = []
        self.count = 0
        self._out: JsonlAppender | None = None

    @property
    def raising(self) -> bool:
        return self.path is None and not self.collect

    def report(self, where: Where | str, field_name: str, problem: str, raw: Any = None,
               byte: int | None = None) -> None:
        msg = f"{where}: {field_name}: {problem}"
        if self.raising:
            raise RecordError(f"{msg}; {self.hint}" if self.hint else msg)
        loc = where if isinstance(where, Where) else Where.parse(str(where))
        row = {"where": str(where), "file": loc.file, "line": loc.line, "field": field_name, "problem": problem,
               "raw": printable(raw if raw is not None else "")}
        if loc.index is not None:
            row["index"] = loc.index
        if byte is not None:
            row["byte"] = byte
        self.count += 1
        if self.path is None:
            self.items.append(row)
            return
        if self._out is None:
            self._out = JsonlAppender(self.path, REJECT)
        self._out.write(row)

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


# --------------------------------------------------------------------------------------------
# Strict reading: UTF-8 checked per line, JSONL, JSON, run-card check
# --------------------------------------------------------------------------------------------
def _not_utf8(data: bytes, pos: int, data_offset: int = 0) -> tuple[int, str]:
    """(file offset, problem) for the undecodable byte at data[pos]; `data` starts at `data_offset` in the file."""
    column = pos - (data.rfind(b"\n", 0, pos) + 1) + 1
    offset = data_offset + pos
    return offset, (f"byte 0x{data[pos]:02x} at byte offset {offset} (column {column}) is not UTF-8; "
                    "re-save the file as UTF-8 or re-download it")


GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(path: str | os.PathLike) -> bool:
    """Whether a file is gzip-compressed, by its first two bytes (not its name)."""
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


@contextlib.contextmanager
def open_bytes(path: str | os.PathLike) -> Iterator[Any]:
    """A file opened for reading bytes, decompressed when it is gzip (detected by content). A gzip
    stream that is cut short or corrupt is a RecordError naming the file (byte offsets in messages
    about such a file count in the decompressed data)."""
    path = Path(path)
    if not is_gzip(path):
        with open(path, "rb") as f:
            yield f
        return
    try:
        with gzip.open(path, "rb") as f:
            yield f
    except (OSError, EOFError, zlib.error) as e:
        raise RecordError(f"{path}: (gzip): the compressed data is damaged or cut short ({e}); re-download or "
                          "re-compress the file") from None


def read_bytes(path: str | os.PathLike) -> bytes:
    """The whole file, decompressed when it is gzip (`open_bytes`)."""
    with open_bytes(path) as f:
        return f.read()


def decode_lines(path: Path, bad: Rejects) -> Iterator[tuple[int, str | None, bytes]]:
    """(line number, text or None when not UTF-8 (reported to `bad`), raw bytes) of each line
    (of the decompressed data when the file is gzip)."""
    offset = 0
    with open_bytes(path) as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                byte, problem = _not_utf8(raw, e.start, offset)
                bad.report(Where(str(path), lineno), "(encoding)", problem, raw.rstrip(b"\r\n"), byte=byte)
                text = None
            offset += len(raw)
            yield lineno, text, raw


def _require_file(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file; check the path (or run the step that writes it)")


def iter_json_lines(path: str | os.PathLike, bad: Rejects, expected: str = "JSON objects, one a line",
                    allow_empty: bool = False, stats: dict | None = None) -> Iterator[tuple[Where, dict, str]]:
    """(where, object, line) of each non-blank line of a JSONL file: the one JSONL reader.

    A line that is not UTF-8, not JSON or not an object goes to `bad`; blank lines are skipped
    (counted in `stats["blank"]`). A file with no non-blank line is refused unless `allow_empty`,
    with a message that says what was `expected`.
    """
    path = Path(path)
    _require_file(path)
    stats = stats if stats is not None else {}
    stats.setdefault("blank", 0)
    seen_any = False
    for lineno, line, raw in decode_lines(path, bad):
        if line is None:
            seen_any = True
            continue
        if not line.strip():
            stats["blank"] += 1
            continue
        seen_any = True
        where = Where(str(path), lineno)
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            bad.report(where, "(line)", f"not valid JSON ({e.msg} at column {e.colno})", line.rstrip("\r\n"))
            continue
        if not isinstance(rec, dict):
            bad.report(where, "(line)", "a JSON object is expected", line.rstrip("\r\n"))
            continue
        yield where, rec, line
    if not seen_any and not allow_empty:
        raise RecordError(f"{path}: the file is empty (no records); expected {expected}. Check that it was "
                          "written completely (or re-download / rebuild it)")


def _surrogates(obj: Any) -> int:
    """How many undecodable bytes (surrogateescape characters) a decoded JSON value holds."""
    if isinstance(obj, str):
        return sum(1 for ch in obj if "\udc80" <= ch <= "\udcff")
    if isinstance(obj, dict):
        return sum(_surrogates(k) + _surrogates(v) for k, v in obj.items())
    if isinstance(obj, list):
        return sum(_surrogates(v) for v in obj)
    return 0


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


UNDECODABLE = type("Undecodable", (), {"__repr__": lambda self: "UNDECODABLE"})()


def read_json(path: str | os.PathLike, bad: Rejects | None = None, expected: str = "a JSON document") -> Any:
    """A whole JSON file. Not valid JSON -> RecordError `path:line: ...`. Bytes that are not UTF-8:
    RecordError with line and byte offset; for a JSON array with `bad` that collects, the records
    holding them go to `bad` (`path[index]`) and stand as UNDECODABLE at their index. A gzip file is
    decompressed first."""
    path = Path(path)
    _require_file(path)
    data = read_bytes(path)
    bad_offsets: list[int] = []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        if bad is None or bad.raising:
            off, problem = _not_utf8(data, e.start)
            raise RecordError(f"{path}:{_line_of(data, off)}: (encoding): {problem}"
                              + (f"; {bad.hint}" if bad is not None and bad.hint else "")) from None
        view, pos = memoryview(data), e.start
        while True:   # every undecodable byte, in order: each step decodes only up to the next one
            bad_offsets.append(pos)
            pos += 1
            try:
                codecs.utf_8_decode(view[pos:], "strict", True)
                break
            except UnicodeDecodeError as err:
                pos += err.start
        text = data.decode("utf-8", "surrogateescape")
    if not text.strip():
        raise RecordError(f"{path}: the file is empty; expected {expected}. Check that it was written completely "
                          "(or re-download / rebuild it)")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        if bad_offsets:   # an undecodable byte outside any string breaks the JSON itself: say so
            raise RecordError(f"{path}:{_line_of(data, bad_offsets[0])}: (encoding): "
                              f"{_not_utf8(data, bad_offsets[0])[1]}") from None
        raise RecordError(f"{path}:{e.lineno}: (file): not valid JSON ({e.msg}); expected {expected}. Re-download "
                          "or rebuild the file") from None
    if not bad_offsets:
        return obj
    if not isinstance(obj, list):
        raise RecordError(f"{path}:{_line_of(data, bad_offsets[0])}: (encoding): byte offset {bad_offsets[0]} is "
                          "not UTF-8; re-save the file as UTF-8 or re-download it")
    queue = iter(bad_offsets)
    out = []
    for i, rec in enumerate(obj):
        offsets = [o for o in (next(queue, None) for _ in range(_surrogates(rec))) if o is not None]
        if not offsets:
            out.append(rec)
            continue
        bad.report(Where(str(path), index=i), "(encoding)", f"line {_line_of(data, offsets[0])}: "
                   + _not_utf8(data, offsets[0])[1], rec, byte=offsets[0])
        out.append(UNDECODABLE)
    return out


RUN_CARD_NAME = "run_card.json"


def check_against_run_card(path: str | os.PathLike) -> None:
    """When `path`'s folder holds a run card that lists `path` in its `output_sha256`, the file's
    sha256 must match: a file from another run (or edited by hand) is refused, never mixed in."""
    path = Path(path)
    card_path = path.parent / RUN_CARD_NAME
    if not card_path.is_file():
        return
    card = read_json(card_path, expected="a run card (JSON object)")
    listed = card.get("output_sha256") if isinstance(card, dict) else None
    if not isinstance(listed, dict) or path.name not in listed:
        return
    actual = sha256_file(path)
    if actual != listed[path.name]:
        script = card.get("script") or "the script that wrote it"
        raise RecordError(
            f"{path}: sha256 {actual} differs from {listed[path.name]} recorded in {card_path}; the file does not "
            f"belong to the set of outputs that run card describes (edited, or left by another run). Rebuild the "
            f"folder (run {script} again); to use an edited file on purpose, keep it outside {path.parent}")


def iter_jsonl(
    path: str | os.PathLike,
    contract: Contract | None = None,
    rejects: str | os.PathLike | None = None,
    stats: dict | None = None,
    *,
    unique: tuple[str, ...] | None = None,
    allow_empty: bool | None = None,
) -> Iterator[dict]:
    """Yield the records of a JSONL file, each validated against `contract`.

    A bad line raises RecordError `path:line: field: problem`; with `rejects`, it is written
    there (a REJECT row) instead, and counted in `stats["rejected"]`. Blank lines are skipped
    (counted in `stats["blank"]`). The contract's file rules apply (`unique`, `allow_empty`;
    the keyword arguments override them), and a run card beside the file that lists it must
    hold its sha256 (`check_against_run_card`).
    """
    path = Path(path)
    _require_file(path)
    check_against_run_card(path)
    stats = stats if stats is not None else {}
    stats.setdefault("read", 0)
    stats.setdefault("rejected", 0)
    unique = unique if unique is not None else (contract.unique if contract else ())
    allow_empty = allow_empty if allow_empty is not None else (contract.allow_empty if contract else True)
    expected = contract.describe() if contract else "JSON objects, one a line"
    bad = Rejects(rejects)
    first_line: dict[tuple, int] = {}
    rejected_before = stats["rejected"]
    try:
        for where, rec, line in iter_json_lines(path, bad, expected, allow_empty, stats):
            stats["rejected"] = rejected_before + bad.count
            problem = contract.problem(rec) if contract else None
            if problem is None and unique:
                key = tuple(rec.get(k) for k in unique)
                if key in first_line:
                    what = ", ".join(f"{k}={v!r}" for k, v in zip(unique, key))
                    problem = (f"{unique[-1]}: {what} already appears on line {first_line[key]}; each must be "
                               "unique in the file (remove one of the two lines, or rebuild the file)")
                else:
                    first_line[key] = where.line
            if problem is None:
                stats["read"] += 1
                yield rec
                continue
            bad.report(where, *_split_problem(problem), line.rstrip("\r\n"))
        stats["rejected"] = rejected_before + bad.count
    finally:
        bad.close()


def read_jsonl(path, contract: Contract | None = None, rejects=None, stats: dict | None = None, **rules) -> list[dict]:
    return list(iter_jsonl(path, contract, rejects, stats, **rules))


def read_examples(path, rejects=None, stats: dict | None = None) -> list[dict]:
    """Read processed examples (train/val/test.jsonl), validated against the EXAMPLE contract.

    Refused, each with file, line and field: a file its folder's run card does not describe
    (sha256), an empty file, a repeated id (both lines named), bytes that are not UTF-8 (byte
    offset), and any record that breaks the contract.
    """
    return read_jsonl(path, EXAMPLE, rejects, stats)
