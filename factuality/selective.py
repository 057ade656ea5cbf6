"""Selective answering: a calibrated confidence and an abstention threshold, both fitted on held-out
(validation) outputs of a system and applied unchanged to its test outputs.

- Calibration (Platt scaling, scikit-learn's LogisticRegression on the logit of the answer's token
  probability, `confidence.answer_probability`): P(correct | p) for the answers of that system on the
  validation split. The token probability ranks answers (its AURC is below random abstention's)
  but its scale is its own: the product of an answer's token probabilities runs low for long
  answers. The fitted map keeps the ranking and fixes the scale.
- Threshold: the calibrated confidence below which an answer becomes the refusal, chosen as the
  one that gives the highest Trust-Score on the validation outputs (ties: the lowest threshold, so
  the fewest answers withheld); 0 = withhold nothing. On test, an answer under it is replaced by
  `{"answer": "insufficient evidence", "citations": [], "confidence": 0.0}` and the row keeps what it
  replaced (`abstained_from`).

Nothing here looks at the test split's gold: the evaluation fits on validation examples (no id of
which may be a test id) and reports the test outputs as `<tag>.sel`, beside `<tag>`.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from .bootstrap import aggregate
from .prompts import REFUSAL_ANSWER, dump_output

SELECTIVE_SUFFIX = ".sel"
REFUSAL_TEXT = dump_output({"answer": REFUSAL_ANSWER, "citations": [], "confidence": 0.0})
_EPS = 1e-6


def _logit(p: float) -> float:
    p = min(max(float(p), _EPS), 1 - _EPS)
    return math.log(p / (1 - p))


def fit_platt(probs: Sequence[float], correct: Sequence[float]) -> dict | None:
    """{"a", "b", "n", "correct"}: P(correct) = sigmoid(a * logit(p) + b), fitted on answers with a
    token probability; None when there are fewer than 4 of them or they are all right or all wrong
    (nothing to fit: the raw probability is then kept)."""
    ys = [int(round(float(y))) for y in correct]
    if len(probs) < 4 or len(set(ys)) < 2:
        return None
    from sklearn.linear_model import LogisticRegression

    x = [[_logit(p)] for p in probs]
    lr = LogisticRegression(C=1.0).fit(x, ys)
    return {"a": float(lr.coef_[0][0]), "b": float(lr.intercept_[0]), "n": len(ys), "correct": sum(ys)}


def calibrated(p: float | None, fit: Mapping | None) -> float | None:
    if p is None or fit is None:
        return p
    z = fit["a"] * _logit(p) + fit["b"]
    return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0


def selective_rows(rows: Mapping[str, Mapping], fit: Mapping | None, threshold: float) -> dict[str, dict]:
    """{id: row} with each answer's confidence calibrated (`answer_prob`; the token probability kept
    as `token_prob`) and every answer under `threshold` replaced by the refusal."""
    out = {}
    for ex_id, row in rows.items():
        new = dict(row)
        p = row.get("answer_prob")
        if p is not None:
            new["token_prob"] = p
            new["answer_prob"] = calibrated(p, fit)
            if new["answer_prob"] < threshold:
                new.update(raw_output=REFUSAL_TEXT, abstained_from=row["raw_output"], answer_prob=None)
        out[ex_id] = new
    return out


def choose_threshold(examples: Sequence[Mapping], rows: Mapping[str, Mapping], fit: Mapping | None,
                     rescore) -> dict:
    """The threshold with the best validation Trust-Score (module docstring): {"threshold",
    "trust_score", "trust_score_without", "answers", "withheld"}. `rescore(example, row)` scores one row
    (report.rescore)."""
    shown = [e for e in examples if e["id"] in rows]
    confs = sorted({calibrated(rows[e["id"]]["answer_prob"], fit) for e in shown
                    if rows[e["id"]].get("answer_prob") is not None})
    best = None
    for t in [0.0] + confs:
        sel = selective_rows({e["id"]: rows[e["id"]] for e in shown}, fit, t)
        scores = [rescore(e, sel[e["id"]]) for e in shown]
        for s in scores:
            s.pop("error_type", None)
        ts = aggregate(scores, ["trust_score"], None)["metrics"]["trust_score"]["value"] or 0.0
        withheld = sum(1 for r in sel.values() if "abstained_from" in r)
        if best is None or ts > best["trust_score"] + 1e-12:
            best = {"threshold": t, "trust_score": ts, "withheld": withheld}
        if t == 0.0:
            without = ts
    best["trust_score_without"] = without
    best["answers"] = sum(1 for e in shown if rows[e["id"]].get("answer_prob") is not None)
    best["examples"] = len(shown)
    return best


def fit_selective(examples: Sequence[Mapping], rows: Mapping[str, Mapping], rescore) -> dict:
    """Calibration and threshold of one system from its validation rows: {"fit", "threshold", ...}."""
    probs, correct = [], []
    for e in examples:
        row = rows.get(e["id"])
        if row is None or row.get("answer_prob") is None:
            continue
        s = rescore(e, row)
        if s.get("confidence_correct") is not None:
            probs.append(row["answer_prob"])
            correct.append(s["confidence_correct"])
    fit = fit_platt(probs, correct)
    return {"fit": fit, **choose_threshold(examples, rows, fit, rescore)}
