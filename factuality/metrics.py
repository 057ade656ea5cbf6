"""Grounded-QA metrics: one definition, used by every script (DESIGN.md, "Metrics").

Every metric is a *masked mean* of a per-example value: `score_example` returns, for each metric,
either a number (the example counts towards that metric) or None (it does not). That one shape
gives the overall figure, every per-source and per-bucket cell, and a vectorised bootstrap
(examples resampled with replacement, the same resample for base and fine-tuned in a paired
delta) without a special case per metric.

Definitions (C = the set of ids the output cites, duplicates removed; G = the example's gold
support chunk ids; a *refusal* is an output whose answer is "insufficient evidence"):

- format_validity: 1 when `parse_output(...).valid` (one JSON object, valid against the output
  schema, citing only ids of the evidence shown), else 0. Every output counts.
- em / f1: SQuAD-normalised exact match / token F1 of the answer, max over gold aliases
  (`text.best_over_golds`). Over answerable examples only. The answer is the parser's best
  reading, so a truncated object with the right answer still earns EM (its format failure is
  counted by format_validity); an empty/unreadable output and a refusal score 0.
- hallucination_rate: over outputs that are NOT refusals (format failures included, so emitting
  garbage cannot lower it): 1 when no cited id is in G (no citation at all, only unknown ids,
  or only distractors), else 0. On an unanswerable example G is empty, so every non-refusal
  answer is a hallucination.
- citation_precision / citation_recall / citation_f1: per example P = |C∩G|/|C| (0 when C is
  empty; ids not among the evidence count as wrong citations), R = |C∩G|/|G|, F1 their harmonic
  mean (0 when P = R = 0); macro-averaged over answerable examples whose output is not a refusal
  (a refusal on an answerable example is counted by em/f1 and refusal_precision instead).
  citation_correctness is citation_f1 (the name the deltas use).
- refusal_rate: share of all outputs that are refusals.
- refusal_precision: over refusals, the share on unanswerable examples.
- refusal_recall: over unanswerable examples, the share refused.
- output_tokens: mean generated length in tokens (up to the stop token).
"""
from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from .prompts import ParsedOutput, parse_output
from .text import best_over_golds, exact_match, token_f1

# name -> (short label for tables, higher_is_better)
METRICS: dict[str, tuple[str, bool]] = {
    "em": ("EM", True),
    "f1": ("F1", True),
    "hallucination_rate": ("Hallucination rate", False),
    "citation_precision": ("Citation precision", True),
    "citation_recall": ("Citation recall", True),
    "citation_f1": ("Citation F1", True),
    "citation_correctness": ("Citation correctness (= citation F1)", True),
    "refusal_rate": ("Refusal rate", False),
    "refusal_precision": ("Refusal precision", True),
    "refusal_recall": ("Refusal recall", True),
    "format_validity": ("Format validity", True),
    "output_tokens": ("Mean output tokens", False),
}
HEADLINE = ("em", "f1", "hallucination_rate", "citation_f1", "refusal_precision", "refusal_recall",
            "format_validity")


def gold_support_ids(example: Mapping) -> list[str]:
    return list(dict.fromkeys(s["chunk_id"] for s in example["support"]))


def score_example(example: Mapping, raw_output: str | None = None, parsed: ParsedOutput | None = None,
                  output_tokens: int | None = None) -> dict[str, float | None]:
    """Per-example values of every metric (None = the example is outside that metric's denominator)."""
    evidence_ids = [c["id"] for c in example["evidence"]]
    if parsed is None:
        parsed = parse_output(raw_output, evidence_ids)
    answerable = bool(example["answerable"])
    refusal = bool(parsed.refusal)
    cited = list(dict.fromkeys(parsed.citations or []))
    gold = set(gold_support_ids(example))
    hits = len(set(cited) & gold)

    out: dict[str, float | None] = dict.fromkeys(METRICS)
    out["format_validity"] = float(parsed.valid)
    out["refusal_rate"] = float(refusal)
    out["refusal_precision"] = float(not answerable) if refusal else None
    out["refusal_recall"] = float(refusal) if not answerable else None
    if answerable:
        answer = "" if (refusal or not parsed.answer) else parsed.answer
        out["em"] = best_over_golds(exact_match, answer, example["answers"]) if answer else 0.0
        out["f1"] = best_over_golds(token_f1, answer, example["answers"]) if answer else 0.0
    if not refusal:
        out["hallucination_rate"] = float(hits == 0)
        if answerable:
            p = hits / len(cited) if cited else 0.0
            r = hits / len(gold) if gold else 0.0
            out["citation_precision"] = p
            out["citation_recall"] = r
            out["citation_f1"] = 2 * p * r / (p + r) if p + r > 0 else 0.0
            out["citation_correctness"] = out["citation_f1"]
    out["output_tokens"] = float(output_tokens) if output_tokens is not None else None
    return out


# --------------------------------------------------------------------------------------------
# Length buckets
# --------------------------------------------------------------------------------------------
def bucket_labels(boundaries: Sequence[int]) -> list[str]:
    """[2048, 3072] -> ['<=2048', '2049-3072', '>3072']."""
    b = list(boundaries)
    if not b:
        return ["all"]
    labels = [f"<={b[0]}"]
    labels += [f"{lo + 1}-{hi}" for lo, hi in zip(b, b[1:])]
    labels.append(f">{b[-1]}")
    return labels


def bucket_index(n_tokens: int, boundaries: Sequence[int]) -> int:
    """Index into bucket_labels: a prompt of exactly a boundary's length falls in the lower bucket."""
    return bisect_left(list(boundaries), n_tokens)


def check_boundaries(boundaries: Sequence[int]) -> list[int]:
    b = [int(x) for x in boundaries]
    if any(x <= 0 for x in b) or any(y <= x for x, y in zip(b, b[1:])):
        raise ValueError(f"buckets {b}: boundaries must be positive and strictly increasing, e.g. 2048,3072,4096")
    return b


# --------------------------------------------------------------------------------------------
# Aggregation and bootstrap
# --------------------------------------------------------------------------------------------
def _matrix(scores: Sequence[Mapping], names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(values, mask) arrays of shape (n_examples, n_metrics); masked-out values are 0."""
    vals = np.zeros((len(scores), len(names)), dtype=np.float64)
    mask = np.zeros_like(vals, dtype=bool)
    for i, s in enumerate(scores):
        for j, name in enumerate(names):
            v = s.get(name)
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                vals[i, j] = v
                mask[i, j] = True
    return vals, mask


def _masked_means(vals: np.ndarray, mask: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Means for each resample: idx (B, n) -> (B, n_metrics), NaN where a resample has no member."""
    v = vals[idx]                     # (B, n, m)
    m = mask[idx]
    num = (v * m).sum(axis=1)
    den = m.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def _resample_indices(n: int, n_boot: int, seed: int, max_cells: int = 20_000_000):
    """Yield index blocks (b, n) totalling n_boot resamples, in blocks that fit memory."""
    rng = np.random.default_rng(seed)
    per_block = max(1, min(n_boot, max_cells // max(n, 1)))
    done = 0
    while done < n_boot:
        b = min(per_block, n_boot - done)
        yield rng.integers(0, n, size=(b, n))
        done += b


def _percentile_ci(samples: np.ndarray, level: float) -> tuple[list, int]:
    """Per-column (lo, hi) over the non-NaN bootstrap samples."""
    alpha = (1 - level) / 2
    out = []
    for j in range(samples.shape[1]):
        col = samples[:, j]
        col = col[~np.isnan(col)]
        out.append(None if col.size == 0 else [float(np.quantile(col, alpha)), float(np.quantile(col, 1 - alpha))])
    return out, samples.shape[0]


@dataclass
class BootstrapSpec:
    n_boot: int = 1000     # resamples; 0 = no intervals
    level: float = 0.95
    seed: int = 0


def aggregate(scores: Sequence[Mapping], names: Sequence[str] = tuple(METRICS),
              boot: BootstrapSpec | None = BootstrapSpec()) -> dict:
    """{"n": examples, "metrics": {name: {"value", "n", "ci"}}} for one cell."""
    vals, mask = _matrix(scores, names)
    n = len(scores)
    counts = mask.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        point = np.where(counts > 0, (vals * mask).sum(axis=0) / np.maximum(counts, 1), np.nan)
    cis = [None] * len(names)
    if boot is not None and boot.n_boot > 0 and n > 0:
        samples = np.concatenate([_masked_means(vals, mask, idx)
                                  for idx in _resample_indices(n, boot.n_boot, boot.seed)])
        cis, _ = _percentile_ci(samples, boot.level)
    metrics = {}
    for j, name in enumerate(names):
        metrics[name] = {"value": None if np.isnan(point[j]) else float(point[j]), "n": int(counts[j]),
                         "ci": cis[j]}
    return {"n": n, "metrics": metrics}


def paired_deltas(scores_new: Sequence[Mapping], scores_old: Sequence[Mapping],
                  names: Sequence[str] = tuple(METRICS), boot: BootstrapSpec | None = BootstrapSpec()) -> dict:
    """new minus old for each metric, on the same examples (aligned lists), with a paired bootstrap CI.

    Each resample draws one set of examples and evaluates both systems on it, so the interval
    reflects the difference between the systems, not the spread of the test set twice over.
    """
    if len(scores_new) != len(scores_old):
        raise ValueError("paired_deltas needs the two systems' scores on the same examples, in the same order")
    v1, m1 = _matrix(scores_new, names)
    v0, m0 = _matrix(scores_old, names)
    n = len(scores_new)
    a1 = aggregate(scores_new, names, None)["metrics"]
    a0 = aggregate(scores_old, names, None)["metrics"]
    cis = [None] * len(names)
    if boot is not None and boot.n_boot > 0 and n > 0:
        parts = []
        for idx in _resample_indices(n, boot.n_boot, boot.seed):
            parts.append(_masked_means(v1, m1, idx) - _masked_means(v0, m0, idx))
        cis, _ = _percentile_ci(np.concatenate(parts), boot.level)
    out = {}
    for j, name in enumerate(names):
        new, old = a1[name]["value"], a0[name]["value"]
        out[name] = {"delta": None if new is None or old is None else new - old, "ci": cis[j], "n": n}
    return out


def group_indices(keys: Iterable, order: Sequence | None = None) -> dict:
    """{key: [row indices]} in `order` (keys not in it follow, sorted); empty groups from `order` kept."""
    groups: dict = {k: [] for k in (order or [])}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    if order is None:
        return dict(sorted(groups.items(), key=lambda kv: str(kv[0])))
    return groups


def breakdown(scores: Sequence[Mapping], sources: Sequence[str], prompt_tokens: Sequence[int],
              boundaries: Sequence[int], boot: BootstrapSpec | None = BootstrapSpec()) -> dict:
    """overall, by_source and by_bucket cells of one system's per-example scores."""
    labels = bucket_labels(boundaries)
    by_bucket = group_indices((labels[bucket_index(t, boundaries)] for t in prompt_tokens), order=labels)
    by_source = group_indices(sources)
    pick = lambda idx: [scores[i] for i in idx]  # noqa: E731
    return {
        "overall": aggregate(scores, boot=boot),
        "by_source": {k: aggregate(pick(v), boot=boot) for k, v in by_source.items()},
        "by_bucket": {k: aggregate(pick(v), boot=boot) for k, v in by_bucket.items()},
    }


def breakdown_deltas(scores_new, scores_old, sources, prompt_tokens, boundaries,
                     boot: BootstrapSpec | None = BootstrapSpec()) -> dict:
    labels = bucket_labels(boundaries)
    by_bucket = group_indices((labels[bucket_index(t, boundaries)] for t in prompt_tokens), order=labels)
    by_source = group_indices(sources)
    pd = lambda idx: paired_deltas([scores_new[i] for i in idx], [scores_old[i] for i in idx], boot=boot)  # noqa: E731
    return {
        "overall": paired_deltas(scores_new, scores_old, boot=boot),
        "by_source": {k: pd(v) for k, v in by_source.items()},
        "by_bucket": {k: pd(v) for k, v in by_bucket.items()},
    }
