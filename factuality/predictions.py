"""The predictions file of an evaluation: its contract (one scored model output per test example
and system), the outputs another system wrote (`--predictions`), where a run's files go, and the
resume rule (a row of another signature is an error, never a silent mix)."""
from __future__ import annotations

import glob
import logging
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from .confidence import use_answer_probability
from .config import ConfigError
from .metrics import score_example
from .prompts import parse_output, render_prompt
from .records import SCHEMA_VERSION, Contract, RecordError, read_examples, read_jsonl
from .text import approx_tokens

log = logging.getLogger("factuality.stages.evaluate")

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
        "answer_prob": {"type": ["number", "null"], "minimum": 0, "maximum": 1, "description":
                        "the probability the model gave its answer's tokens (confidence.answer_probability); "
                        "when present it is the parsed output's confidence"},
        "stated_confidence": {"type": ["number", "null"], "description": "the confidence the model wrote"},
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
    if out.is_dir():          # --output <a folder>: the files go inside it, not beside it
        out = out / "eval_results.json"
    stem = out.with_suffix("") if out.suffix == ".json" else out
    return {
        "results": out if out.suffix == ".json" else out.with_suffix(".json"),
        "predictions": Path(predictions_out) if predictions_out else Path(f"{stem}.predictions.jsonl"),
        "summary": Path(f"{stem}.md"),
        "plots": Path(f"{stem}_plots"),
    }


def prediction_row(example: Mapping, tag: str, raw_output: str, prompt_tokens: int, output_tokens: int | None,
                   sig: str, stopped: bool | None = None, answer_prob: float | None = None) -> dict:
    """One scored output. With `answer_prob` (an answer's token probability) the parsed output's
    confidence is that probability, and the number the model wrote is kept as `stated_confidence`."""
    parsed = parse_output(raw_output, [c["id"] for c in example["evidence"]])
    stated = parsed.confidence
    extra = ({"answer_prob": float(answer_prob), "stated_confidence": stated}
             if use_answer_probability(parsed, answer_prob) else {})
    row = {"schema_version": SCHEMA_VERSION, "id": example["id"], "model_tag": tag, "raw_output": raw_output,
           "parsed": parsed.to_dict(),
           "scores": score_example(example, raw_output=raw_output, parsed=parsed, output_tokens=output_tokens),
           "prompt_tokens": int(prompt_tokens), "output_tokens": output_tokens, "signature": sig}
    if stopped is not None:
        row["stopped"] = bool(stopped)
    row.update(extra)
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


def recorded_prompt_tokens(examples, rows_by_tag, templates) -> tuple[dict[str, int], str]:
    """Prompt lengths recorded in the predictions file, else approximated from the plain-rendered prompt."""
    recorded = {}
    for rows in rows_by_tag.values():
        for i, r in rows.items():
            if r.get("prompt_tokens") is not None:
                recorded.setdefault(i, r["prompt_tokens"])
    missing = [e for e in examples if e["id"] not in recorded]
    prompt_tokens = dict(recorded)
    for e in missing:
        prompt_tokens[e["id"]] = approx_tokens(render_prompt(e, None, templates))
    if missing:
        counted_with = (f"approximation, words x 4/3 of the plain-rendered prompt (text.approx_tokens), for "
                        f"{len(missing)}/{len(examples)} examples (pass --tokenizer for exact counts)")
        log.warning("prompt lengths: %s", counted_with)
    else:
        counted_with = "prompt_tokens recorded in the predictions file"
    return prompt_tokens, counted_with


def set_aside_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.replaced")


def settle_replaced(pred_path: Path, leftovers: Sequence[Path] = ()) -> None:
    """--overwrite sets the old predictions aside (`.<name>.replaced`) instead of deleting them; they
    are dropped once the new run has written a row, and put back when it wrote none (a model that
    fails to load, a kill before the first batch), so a failed --overwrite leaves them byte for byte."""
    from . import dist

    if not dist.is_main_process():
        return
    aside = sorted(pred_path.parent.glob(f".{glob.escape(pred_path.name)}*.replaced"))
    if not aside:
        return
    wrote = any(p.exists() and p.stat().st_size > 0 for p in (pred_path, *leftovers))
    if not wrote and pred_path.exists() and set_aside_name(pred_path) not in aside:
        pred_path.unlink()               # the old run had no predictions file: none is left either
    for b in aside:
        if wrote:
            b.unlink()
        else:
            os.replace(b, b.with_name(b.name[1:-len(".replaced")]))


# ---- the examples an evaluation scores
def split_counts(examples: Sequence[Mapping]) -> dict[str, int]:
    """{split: examples}, in order of first appearance."""
    return dict(Counter(e["split"] for e in examples))


def read_test_examples(cfg) -> list[dict]:
    """The test examples (the first --limit), each id once."""
    examples = read_examples(cfg.test_data)
    if not examples:
        raise RecordError(f"{cfg.test_data}: no test examples; run `python build_data.py` or pass another --test-data")
    if cfg.limit:
        examples = examples[:cfg.limit]
    splits = split_counts(examples)
    if splits.get("train") and not cfg.allow_train_split:
        raise ConfigError(f"--test-data {cfg.test_data}: {splits['train']} of {len(examples)} examples are from the "
                          f"train split; score held-out examples (data/processed/test.jsonl), or pass "
                          f"--allow-train-split to score training examples knowingly")
    if set(splits) != {"test"}:
        log.warning("--test-data %s holds splits %s, not only test; the results name them", cfg.test_data, splits)
    ids_seen: dict[str, int] = {}
    for n, e in enumerate(examples, start=1):
        if e["id"] in ids_seen:
            raise RecordError(f"{cfg.test_data}:{n}: id {e['id']!r} also on line {ids_seen[e['id']]}; rebuild the test split")
        ids_seen[e["id"]] = n
    return examples
