"""Every measure over a set of examples, with intervals: the point value and a percentile interval
from one code path (the weights are how often each example occurs: all 1 for the point value, a
resample's counts for each bootstrap replicate, the same draw for every system in a paired delta),
per source and per prompt-length bucket. The measures themselves are defined in `metrics`."""
from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from .metrics import (
    METRICS,
    columns_for,
    measure_counts,
    measure_matrix,
    measure_values,
)


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


def _resample_indices(n: int, n_boot: int, seed: int, max_cells: int = 20_000_000):
    """Yield index blocks (b, n) totalling n_boot resamples, in blocks that fit memory."""
    rng = np.random.default_rng(seed)
    per_block = max(1, min(n_boot, max_cells // max(n, 1)))
    done = 0
    while done < n_boot:
        b = min(per_block, n_boot - done)
        yield rng.integers(0, n, size=(b, n))
        done += b


def _resample_weights(n: int, boot: BootstrapSpec):
    """Yield (b, n) weight blocks: how often each example occurs in each resample."""
    for idx in _resample_indices(n, boot.n_boot, boot.seed):
        b = idx.shape[0]
        flat = (np.arange(b)[:, None] * n + idx).ravel()
        yield np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


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


def _wants_boot(boot: BootstrapSpec | None, n: int) -> bool:
    return boot is not None and boot.n_boot > 0 and n > 0


def aggregate(scores: Sequence[Mapping], names: Sequence[str] = tuple(METRICS),
              boot: BootstrapSpec | None = BootstrapSpec()) -> dict:
    """{"n": examples, "metrics": {name: {"value", "n", "ci"}}} for one cell."""
    names = list(names)
    columns = columns_for(names)
    vals, mask = measure_matrix(scores, columns)
    n = len(scores)
    point = measure_values(names, columns, vals, mask, np.ones((1, n)))[0]
    cis = [None] * len(names)
    if _wants_boot(boot, n):
        samples = np.concatenate([measure_values(names, columns, vals, mask, w) for w in _resample_weights(n, boot)])
        cis, _ = _percentile_ci(samples, boot.level)
    counts = measure_counts(names, columns, mask)
    metrics = {}
    for j, name in enumerate(names):
        metrics[name] = {"value": None if np.isnan(point[j]) else float(point[j]), "n": counts[j], "ci": cis[j]}
    return {"n": n, "metrics": metrics}


def paired_deltas(scores_new: Sequence[Mapping], scores_old: Sequence[Mapping],
                  names: Sequence[str] = tuple(METRICS), boot: BootstrapSpec | None = BootstrapSpec()) -> dict:
    """new minus old for each measure, on the same examples (aligned lists), with a paired bootstrap CI.

    Each resample draws one set of examples and evaluates both systems on it, so the interval
    reflects the difference between the systems, not the spread of the test set twice over.
    """
    if len(scores_new) != len(scores_old):
        raise ValueError("paired_deltas needs the two systems' scores on the same examples, in the same order")
    names = list(names)
    columns = columns_for(names)
    v1, m1 = measure_matrix(scores_new, columns)
    v0, m0 = measure_matrix(scores_old, columns)
    n = len(scores_new)
    ones = np.ones((1, n))
    point = (measure_values(names, columns, v1, m1, ones) - measure_values(names, columns, v0, m0, ones))[0]
    cis = [None] * len(names)
    if _wants_boot(boot, n):
        parts = [measure_values(names, columns, v1, m1, w) - measure_values(names, columns, v0, m0, w)
                 for w in _resample_weights(n, boot)]
        cis, _ = _percentile_ci(np.concatenate(parts), boot.level)
    return {name: {"delta": None if np.isnan(point[j]) else float(point[j]), "ci": cis[j], "n": n}
            for j, name in enumerate(names)}


def group_indices(keys: Iterable, order: Sequence | None = None) -> dict:
    """{key: [row indices]} in `order` (keys not in it follow, sorted); empty groups from `order` kept."""
    groups: dict = {k: [] for k in (order or [])}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    if order is None:
        return dict(sorted(groups.items(), key=lambda kv: str(kv[0])))
    return groups


def _cells(sources: Sequence[str], prompt_tokens: Sequence[int], boundaries: Sequence[int]) -> dict:
    labels = bucket_labels(boundaries)
    return {"by_source": group_indices(sources),
            "by_bucket": group_indices((labels[bucket_index(t, boundaries)] for t in prompt_tokens), order=labels)}


def breakdown(scores: Sequence[Mapping], sources: Sequence[str], prompt_tokens: Sequence[int],
              boundaries: Sequence[int], boot: BootstrapSpec | None = BootstrapSpec(),
              names: Sequence[str] = tuple(METRICS)) -> dict:
    """overall, by_source and by_bucket cells of one system's per-example scores."""
    out = {"overall": aggregate(scores, names, boot)}
    for group, cells in _cells(sources, prompt_tokens, boundaries).items():
        out[group] = {k: aggregate([scores[i] for i in idx], names, boot) for k, idx in cells.items()}
    return out


def breakdown_deltas(scores_new, scores_old, sources, prompt_tokens, boundaries,
                     boot: BootstrapSpec | None = BootstrapSpec(), names: Sequence[str] = tuple(METRICS)) -> dict:
    """paired_deltas overall, by_source and by_bucket (the two systems on the same examples)."""
    out = {"overall": paired_deltas(scores_new, scores_old, names, boot)}
    for group, cells in _cells(sources, prompt_tokens, boundaries).items():
        out[group] = {k: paired_deltas([scores_new[i] for i in idx], [scores_old[i] for i in idx], names, boot)
                      for k, idx in cells.items()}
    return out
