"""The predictions file of an evaluation: its contract (one scored model output per test example
and system), the outputs another system wrote (`--predictions`), where a run's files go, and the
resume rule (a row of another signature is an error, never a silent mix)."""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping

from .metrics import score_example
from .prompts import parse_output
from .records import SCHEMA_VERSION, Contract, RecordError, read_jsonl

PREDICTION_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "one model output on one test example, scored (predictions.jsonl)",
    "type": "object",
    "required": ["schema_version", "id", "model_tag", "raw_output", "parsed", "scores", "prompt_tokens",
                 "output_tokens", "signature"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "id": {"type": "string", "minLength": 1, "description": "the test example's id"},
        "model_tag": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$", "description": "base, sft, ..."},
        "raw_output": {"type": "string"},
        "parsed": {"type": "object", "description": "prompts.ParsedOutput.to_dict()"},
        "scores": {"type": "object", "description": "metrics.score_example(); null = outside that metric"},
        "prompt_tokens": {"type": "integer", "minimum": 0},
        "output_tokens": {"type": ["integer", "null"], "minimum": 0},
        "stopped": {"type": "boolean", "description": "false when max_new_tokens cut the output"},
        "signature": {"type": "string", "description": "hash of model, generation settings, templates, data"},
    },
}


PREDICTION = Contract("prediction", PREDICTION_SCHEMA)


# What --predictions accepts: this suite's own predictions file, or another system's outputs.
EXTERNAL_PREDICTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "raw_output"],
    "properties": {
        "id": {"type": "string", "minLength": 1},
        "raw_output": {"type": "string"},
        "model_tag": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$"},
        "prompt_tokens": {"type": "integer", "minimum": 0},
        "output_tokens": {"type": ["integer", "null"], "minimum": 0},
    },
}


EXTERNAL_PREDICTION = Contract("external prediction", EXTERNAL_PREDICTION_SCHEMA, unique=("model_tag", "id"),
                               allow_empty=False, expected="model outputs, one {id, raw_output[, model_tag]} object a line")


def output_paths(output: str | os.PathLike, predictions_out: str | None = None) -> dict[str, Path]:
    out = Path(output)
    stem = out.with_suffix("") if out.suffix == ".json" else out
    return {
        "results": out if out.suffix == ".json" else out.with_suffix(".json"),
        "predictions": Path(predictions_out) if predictions_out else Path(f"{stem}.predictions.jsonl"),
        "summary": Path(f"{stem}.md"),
        "plots": Path(f"{stem}_plots"),
    }


def prediction_row(example: Mapping, tag: str, raw_output: str, prompt_tokens: int, output_tokens: int | None,
                   sig: str, stopped: bool | None = None) -> dict:
    parsed = parse_output(raw_output, [c["id"] for c in example["evidence"]])
    row = {"schema_version": SCHEMA_VERSION, "id": example["id"], "model_tag": tag, "raw_output": raw_output,
           "parsed": parsed.to_dict(), "scores": score_example(example, parsed=parsed, output_tokens=output_tokens),
           "prompt_tokens": int(prompt_tokens), "output_tokens": output_tokens, "signature": sig}
    if stopped is not None:
        row["stopped"] = bool(stopped)
    return row


def load_existing(path: Path) -> dict[str, dict[str, dict]]:
    """{tag: {example id: row}} of a predictions file written by this module (strictly read)."""
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    if not path.exists():
        return out
    for row in read_jsonl(path, PREDICTION):
        out[row["model_tag"]][row["id"]] = row
    return out


def check_signatures(path: Path, existing: Mapping[str, Mapping[str, dict]], tag: str, sig: str,
                     payload: Mapping, sidecar: Mapping) -> None:
    rows = existing.get(tag, {})
    other = {r["signature"] for r in rows.values()} - {sig}
    if not other:
        return
    old = (sidecar.get(tag) or {}).get(next(iter(other)), {})
    changed = sorted(k for k in set(payload) | set(old) if payload.get(k) != old.get(k)) if old else []
    what = f" (changed: {', '.join(changed)})" if changed else ""
    raise RecordError(
        f"{path}: holds {len(rows)} '{tag}' predictions from a different run{what}; a resumed run must use the "
        f"same model, data and generation settings. Pass a new --output (or --predictions-out) to keep both, "
        f"or --overwrite to replace them")


def read_external(path: str | os.PathLike, default_tag: str) -> dict[str, dict[str, dict]]:
    """{tag: {id: row}} from --predictions (this suite's file, or {id, raw_output} rows)."""
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for row in read_jsonl(path, EXTERNAL_PREDICTION):  # a repeated (model_tag, id) is refused with both lines
        tag = row.get("model_tag") or default_tag
        if row["id"] in out[tag]:  # one row without a tag, one with the default tag
            raise RecordError(f"{path}: id {row['id']!r} appears twice for model tag {tag!r}")
        out[tag][row["id"]] = row
    return out
