"""Metrics of scores on preference pairs: accuracy, ROC-AUC, and the calibration of
p = sigmoid(s x (r_chosen - r_rejected)) as the probability that the chosen response is preferred.

- accuracy: share of pairs with r_chosen > r_rejected (a tie counts one half);
- roc_auc: sklearn's ROC-AUC with the chosen responses' scores as positives and the rejected
  responses' as negatives (the chance that a chosen response outscores a rejected one);
- ece / brier: of p, each pair counted in both orders ((p, 1) and (1 - p, 0)); ECE with
  factuality/metrics.py's 10 equal-width bins. s = 1 for the reward model's own scores (BT
  log-odds); for a baseline whose score is not a log-odds, s is fitted on the training pairs
  (`fit_scale`, one-parameter logistic regression).
"""
from __future__ import annotations

import numpy as np

from ..metrics import ECE_BINS, weighted_ece
from .features import PairIndex


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def calibration_points(d: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(probability, outcome) of each pair in both orders: (sigmoid(s d), 1) and (1 - sigmoid(s d), 0)."""
    p = _sigmoid(scale * np.asarray(d, dtype=np.float64))
    return np.concatenate([p, 1 - p]), np.concatenate([np.ones_like(p), np.zeros_like(p)])


def expected_calibration_error(prob: np.ndarray, outcome: np.ndarray) -> float:
    """ECE with metrics.py's bins (one definition of ECE in the suite)."""
    n = len(prob)
    return float(weighted_ece(np.ones((1, n)), np.asarray(prob, float), np.asarray(outcome, float), np.ones(n, bool))[0])


def fit_scale(d: np.ndarray) -> float:
    """s minimising the logistic loss of sigmoid(s d) over pairs in both orders (no intercept)."""
    d = np.asarray(d, dtype=np.float64)
    if not len(d) or not np.any(d):
        return 1.0
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([d, -d])[:, None]
    y = np.concatenate([np.ones(len(d)), np.zeros(len(d))])
    lr = LogisticRegression(fit_intercept=False, C=1e4, max_iter=1000)
    lr.fit(x, y)
    return float(lr.coef_[0, 0])


def pair_metrics(r_chosen: np.ndarray, r_rejected: np.ndarray, scale: float = 1.0) -> dict:
    """accuracy, roc_auc, ece, brier of scores on pairs (definitions: module docstring)."""
    from sklearn.metrics import roc_auc_score

    c, r = np.asarray(r_chosen, float), np.asarray(r_rejected, float)
    n = len(c)
    if n == 0:
        return {"n": 0, "roc_auc": None, "accuracy": None, "ece": None, "brier": None}
    d = c - r
    prob, outcome = calibration_points(d, scale)
    auc = roc_auc_score(np.r_[np.ones(n), np.zeros(n)], np.r_[c, r])
    return {"n": n, "roc_auc": float(auc), "accuracy": float(np.mean((d > 0) + 0.5 * (d == 0))),
            "ece": expected_calibration_error(prob, outcome), "brier": float(np.mean((prob - outcome) ** 2)),
            "mean_reward_gap": float(d.mean())}


def metrics_by_kind(scores: np.ndarray, pairs: PairIndex, scale: float = 1.0) -> dict:
    """{"overall": pair_metrics, "by_kind": {kind: pair_metrics}} of per-sequence scores on indexed pairs."""
    c, r = scores[pairs.chosen], scores[pairs.rejected]
    kinds = np.array(pairs.kinds)
    out = {"overall": pair_metrics(c, r, scale), "by_kind": {}}
    for k in sorted(set(pairs.kinds)):
        m = kinds == k
        out["by_kind"][k] = pair_metrics(c[m], r[m], scale)
    return out


def reliability_bins(d: np.ndarray, scale: float = 1.0) -> list[dict]:
    prob, outcome = calibration_points(d, scale)
    bins = np.minimum((prob * ECE_BINS).astype(int), ECE_BINS - 1)
    out = []
    for b in range(ECE_BINS):
        m = bins == b
        out.append({"lo": b / ECE_BINS, "hi": (b + 1) / ECE_BINS, "n": int(m.sum()),
                    "mean_prob": float(prob[m].mean()) if m.any() else None,
                    "frequency": float(outcome[m].mean()) if m.any() else None})
    return out
