"""Text normalisation shared by data building (has_answer) and metrics (EM/F1, support).

One definition, used everywhere: SQuAD v1.1's normalisation (lowercase, drop punctuation, drop the
articles a/an/the, collapse white space).

Empty answers (written down because the SQuAD versions disagree): a prediction or a gold alias
that normalises to the empty string ("", "The", "!") matches nothing, so `exact_match` and
`token_f1` give 0 whenever either side is empty, two empty sides included. SQuAD v1.1's script
gives EM 1 and F1 0 to two empty strings; SQuAD 2.0's gives 1 to both, because there an empty gold
means "no answer". Here "no answer" is the explicit refusal (scored by the refusal measures), so an
answer with no content is never a correct answer, and a gold alias with no content is never matched.
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)
DROP_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(s: str) -> str:
    s = s.lower()
    s = s.translate(DROP_PUNCT)   # the same as dropping each character in string.punctuation, in C
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def answer_tokens(s: str) -> list[str]:
    return normalize_answer(s).split()


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when both normalise to the same non-empty string (empty answers: module docstring)."""
    pred = normalize_answer(prediction)
    return float(bool(pred) and pred == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD token F1 of the normalised tokens; 0.0 when either side is empty (module docstring)."""
    pred, ref = answer_tokens(prediction), answer_tokens(gold)
    if not pred or not ref:
        return 0.0
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


# The one token estimate of the package, for when no tokenizer is at hand (evidence budgets in
# build_data, prompt-length buckets of re-scored outputs): English averages ~4/3 tokens a word.
TOKENS_PER_WORD = 4 / 3


def approx_tokens(text: str) -> int:
    """Approximate token count: whitespace-separated words x 4/3, rounded up (0 for empty text)."""
    return math.ceil(len(text.split()) * TOKENS_PER_WORD)
