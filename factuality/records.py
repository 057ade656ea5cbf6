"""JSONL contracts between the scripts: JSON Schemas, strict reading, atomic writing.

Every JSONL row carries `schema_version` and `id`, is validated against its contract's JSON
Schema when written AND when read, and a bad row stops the run with
`path:line: field: problem` (or, when a rejects file is given, goes there and is counted).
Nothing is dropped silently. Every file is written to a temp file beside the target and renamed
over it, so a crash never leaves a half file that looks whole.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import jsonschema

SCHEMA_VERSION = 1
SOURCES = ("fever", "hotpotqa", "nq", "popqa")
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
        "id": {"type": "string", "pattern": "^(fever|hotpotqa|nq|popqa):.+"},
        "source": {"enum": list(SOURCES)},
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
    """One JSONL contract: a name, a JSON Schema, and optional cross-field checks."""

    name: str
    schema: dict
    check: Callable[[dict], str | None] | None = None
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

    def validate(self, rec: Any, where: str = "") -> dict:
        problem = self.problem(rec)
        if problem:
            raise RecordError(f"{where}: {problem}" if where else problem)
        return rec


EXAMPLE = Contract("example", EXAMPLE_SCHEMA, _check_example)


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
# Atomic writing
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temp file beside `path`; on clean exit fsync and rename it over `path`.

    On an exception the temp file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


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
# Strict reading
# --------------------------------------------------------------------------------------------
def iter_jsonl(
    path: str | os.PathLike,
    contract: Contract | None = None,
    rejects: str | os.PathLike | None = None,
    stats: dict | None = None,
) -> Iterator[dict]:
    """Yield the records of a JSONL file, each validated against `contract`.

    A bad line raises RecordError `path:line: field: problem`; with `rejects`, it is written
    there as `{"line", "problem", "raw"}` instead, and counted in `stats["rejected"]`.
    Blank lines are skipped (and counted in `stats["blank"]`).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file; check the path (or run the step that writes it)")
    stats = stats if stats is not None else {}
    stats.setdefault("read", 0)
    stats.setdefault("rejected", 0)
    stats.setdefault("blank", 0)
    rej = JsonlAppender(rejects) if rejects else None
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    stats["blank"] += 1
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    problem = f"(line): not valid JSON ({e.msg} at column {e.colno})"
                else:
                    problem = contract.problem(rec) if contract else (
                        None if isinstance(rec, dict) else "a JSON object is expected")
                if problem is None:
                    stats["read"] += 1
                    yield rec
                    continue
                if rej is None:
                    raise RecordError(f"{path}:{lineno}: {problem}")
                stats["rejected"] += 1
                rej.write({"file": str(path), "line": lineno, "problem": problem, "raw": line.rstrip("\n")})
    finally:
        if rej is not None:
            rej.close()


def read_jsonl(path, contract: Contract | None = None, rejects=None, stats: dict | None = None) -> list[dict]:
    return list(iter_jsonl(path, contract, rejects, stats))


def read_examples(path, rejects=None, stats: dict | None = None) -> list[dict]:
    """Read processed examples (train/val/test.jsonl), validated against the EXAMPLE contract."""
    return read_jsonl(path, EXAMPLE, rejects, stats)
