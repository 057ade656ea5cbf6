"""What each output is, in one word: the error breakdown beside the evaluation table.

Every output falls in exactly one type, checked in this order (the first that applies):

- unreadable: no answer field can be read (prose, an empty or broken object);
- cited_refusal: a refusal that cites evidence (a refusal claims nothing, so it cites nothing);
- refused_answerable: a refusal where the evidence holds the answer;
- refusal_ok: a refusal where it does not (the right call);
- evidence_id_answer: the answer is an evidence id ("E3"), not an answer;
- answered_unanswerable: an answer where the evidence does not hold one;
- correct_grounded: correct and citing a gold support chunk;
- correct_ungrounded: correct, but citing no gold chunk;
- wrong_supported: wrong, yet its words are in the chunks it cites (a distractor entity: it read
  the wrong passage or the wrong span);
- wrong_unsupported: wrong and not in the chunks it cites (made up, or cites nothing useful).

The two `_ok`/`correct_grounded` types are the good ones. Inputs are a parsed output and its
`metrics.score_example` columns, so the types use the metrics' own definitions of correct, grounded
and supported.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Mapping

from .prompts import ParsedOutput

ERROR_TYPES: tuple[str, ...] = (
    "correct_grounded", "refusal_ok", "correct_ungrounded", "wrong_supported", "wrong_unsupported",
    "evidence_id_answer", "answered_unanswerable", "refused_answerable", "cited_refusal", "unreadable",
)
_EVIDENCE_ID = re.compile(r"^\W*E\d+\W*$", re.IGNORECASE)


def is_evidence_id(answer: str | None) -> bool:
    """True when an answer is an evidence id (E3, [E3], "E3.") rather than an answer."""
    return isinstance(answer, str) and _EVIDENCE_ID.match(answer.strip()) is not None


def error_type(example: Mapping, parsed: ParsedOutput, scores: Mapping) -> str:
    """The one type of this output (module docstring)."""
    if parsed.refusal:
        if parsed.citations:
            return "cited_refusal"
        return "refused_answerable" if example["answerable"] else "refusal_ok"
    if parsed.answer is None or not str(parsed.answer).strip():
        return "unreadable"
    if is_evidence_id(parsed.answer):
        return "evidence_id_answer"
    if not example["answerable"]:
        return "answered_unanswerable"
    if scores.get("answer_correctness_precision") == 1.0:
        return "correct_grounded" if scores.get("correct_grounded_precision") == 1.0 else "correct_ungrounded"
    return "wrong_supported" if scores.get("hallucination_rate") == 0.0 else "wrong_unsupported"


def count_types(types: Iterable[str]) -> dict[str, int]:
    """{type: count} over ERROR_TYPES, in that order (zeros included, so tables line up)."""
    c = Counter(types)
    unknown = set(c) - set(ERROR_TYPES)
    if unknown:
        raise ValueError(f"unknown error types {sorted(unknown)}")
    return {t: c.get(t, 0) for t in ERROR_TYPES}
