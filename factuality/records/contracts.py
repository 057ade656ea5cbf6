"""The record contracts between the scripts: JSON Schemas of a processed example and a preference
pair, `Contract` (schema + cross-field checks + file-level rules: unique ids, no empty file), the
error a broken record raises (`RecordError`, naming file, line and field), and the hashes records
and files are checked by (canonical JSON, sha256 of a record without its own `hash`, of a file)."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import jsonschema

SCHEMA_VERSION = 1
SOURCES = ("fever", "hotpotqa", "nq", "popqa", "asqa", "qampari", "eli5")   # the datasets the suite ships readers for
DEFAULT_SOURCES = ("fever", "hotpotqa", "nq", "popqa")   # built / downloaded when --sources is not given
# A source of one's own (build_data.py --sources NAME, see factuality/sources/own.py) goes under
# its own name: lower-case letters, digits and underscores, so that `<source>:<id>` stays parseable.
SOURCE_NAME = r"[a-z][a-z0-9_]{0,39}"
SPLITS = ("train", "val", "test")


class RecordError(ValueError):
    """A record (or a file) breaks its contract. The message names file, line and field."""


# --------------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------------
# The ids a prompt shows its evidence by, and the only strings a citation may be (prompts.OUTPUT_SCHEMA
# uses the same pattern): data with ids like `../x` or a Cyrillic `Е1` would train on citations the
# output schema calls invalid.
EVIDENCE_ID_PATTERN = "^E[0-9]+$"

CHUNK_SCHEMA = {
    "type": "object",
    "required": ["id", "title", "text"],
    "properties": {
        "id": {"type": "string", "pattern": EVIDENCE_ID_PATTERN, "description": "short id shown to the model, e.g. 'E3'"},
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
                 "description": "model (two model candidates), gold_vs_model (the gold answer against a model "
                                "candidate) or perturb:<what> (a labelled edit of a good answer)"},
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
def check_pair(rec: dict) -> str | None:
    """Cross-field rules of a preference pair: the two answers differ (a pair of equal answers
    teaches nothing, and DPO's loss on it is a constant); its support and hard-negative ids are
    among the evidence it shows (the support penalty and the verifiers read them)."""
    if rec["chosen"] == rec["rejected"]:
        return "rejected: equals chosen; a pair must hold two different answers (drop the row or rebuild the pairs)"
    if isinstance(rec.get("evidence"), list):
        shown = [c.get("id") for c in rec["evidence"] if isinstance(c, dict)]
        for key in ("support_ids", "hard_negative_ids"):
            unknown = [i for i in rec.get(key) or [] if i not in shown]
            if unknown:
                return (f"{key}: {unknown[0]!r} is not among the evidence ids the prompt shows "
                        f"({', '.join(map(str, shown[:8]))}); fix the ids or rebuild the pairs")
    return None


PREFERENCE = Contract("preference pair", PREFERENCE_SCHEMA, check_pair, unique=("id",), allow_empty=False,
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


