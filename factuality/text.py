"""Text normalisation shared by data building (has_answer) and metrics (EM/F1).

One definition, used everywhere: SQuAD's normalisation (lowercase, drop punctuation, drop the
articles a/an/the, collapse white space).
"""
from __future__ import annotations

import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def answer_tokens(s: str) -> list[str]:
    return normalize_answer(s).split()


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    pred, ref = answer_tokens(prediction), answer_tokens(gold)
    if not pred or not ref:
        return float(pred == ref)
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def best_over_golds(metric, prediction: str, golds) -> float:
    return max((metric(prediction, g) for g in golds), default=0.0)


def has_answer(text: str, answers) -> bool:
    """DPR-style distant supervision: a normalised gold answer occurs as a whole-token run in text."""
    toks = answer_tokens(text)
    joined = " " + " ".join(toks) + " "
    for a in answers:
        na = normalize_answer(a)
        if na and f" {na} " in joined:
            return True
    return False


def find_answer_span(text: str, answers) -> tuple[int, int] | None:
    """Character span of the first gold answer found in `text` (case-insensitive, word-bounded)."""
    best = None
    for a in answers:
        a = a.strip()
        if not a:
            continue
        m = re.search(r"(?<!\w)" + re.escape(a) + r"(?!\w)", text, flags=re.IGNORECASE)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), m.end())
    return best
