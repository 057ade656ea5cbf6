"""Confidence that means something: the probability the model gave its own answer.

A model fine-tuned on targets that all say `"confidence": 1.0` writes 1.0 whatever it believes, so
the number it writes says nothing (ECE, Brier and AURC collapse to one value, and no threshold can
turn a doubtful answer into a refusal). What the model does believe is in its token
probabilities: `answer_probability` reads, from a generation's own log-probabilities, the
probability of the tokens that spell the answer value (from its first character through the
closing quote, so "the answer ends here" counts too), i.e. P(answer | prompt, citations). The
evaluation writes it into the output's `confidence` (the number the model wrote is kept as
`stated_confidence`), and `risk_coverage` / ECE / AURC then measure a real signal.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

_ANSWER_KEY = re.compile(r'"answer"\s*:\s*"')


def use_answer_probability(parsed, prob: float | None) -> bool:
    """Make `prob` the confidence of a parsed answer (prompts.ParsedOutput; a refusal keeps its own);
    True when it did. The one rule the predictions file and the rescoring share."""
    if prob is None or parsed.refusal:
        return False
    parsed.confidence = float(prob)
    return True


def answer_value_span(text: str) -> tuple[int, int] | None:
    """(start, end) character offsets of the first `"answer": "..."` string value in `text`, end
    just past its closing quote; None when there is no such string or it is never closed."""
    m = _ANSWER_KEY.search(text)
    if m is None:
        return None
    i = m.end()
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == '"':
            return m.end(), i + 1
        i += 1
    return None


def token_char_ends(tokenizer, token_ids: Sequence[int]) -> list[int]:
    """For each token, the length of the text the tokens up to and including it decode to (exact for
    byte-level and sentencepiece tokenizers alike: each prefix is decoded as a whole)."""
    return [len(tokenizer.decode(list(token_ids[:k + 1]), skip_special_tokens=True)) for k in range(len(token_ids))]


def answer_probability(tokenizer, token_ids: Sequence[int] | None, token_logprobs: Sequence[float] | None,
                       text: str | None = None) -> float | None:
    """exp(sum of the log-probabilities of the tokens that overlap the answer value and its closing
    quote), or None when the output has no readable answer string or no log-probabilities."""
    if not token_ids or not token_logprobs or len(token_logprobs) < len(token_ids):
        return None
    if text is None:
        text = tokenizer.decode(list(token_ids), skip_special_tokens=True)
    span = answer_value_span(text)
    if span is None:
        return None
    start, end = span
    ends = token_char_ends(tokenizer, token_ids)
    total, prev, used = 0.0, 0, 0
    for k, stop in enumerate(ends):
        if stop > start and prev < end:
            total += float(token_logprobs[k])
            used += 1
        prev = stop
        if prev >= end:
            break
    if not used or not math.isfinite(total):
        return None
    return math.exp(total)
