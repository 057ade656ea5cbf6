"""Trust-Eval's measures (declare-lab/trust-align, `trust_eval/metrics.py`), from its rules.

A Trust-Eval item is an ALCE item (alce.py) whose `answers` is a list of gold answers, each a list
of aliases (ASQA: the qa_pairs' short answers; ELI5: claims, the first alias of each is the claim),
and whose `docs` each carry `answers_found`: one 0/1 per gold answer, 1 when the document holds it.

- answerable: some shown document holds some gold answer (OR of `answers_found` over the docs).
- refusal: the refusal sentence ("I apologize, but I couldn't find an answer") fuzzily found in
  the output: fuzzywuzzy's partial_ratio of the two normalised strings > 85 (`partial_ratio` below
  is fuzzywuzzy's algorithm on difflib; Trust-Eval runs it on python-Levenshtein, which can differ
  by a point near the threshold). An item may carry `refusal` (bool) instead: our own outputs are
  JSON, and their refusal is our refusal rule (prompts.is_refusal), not a fuzzy match.
- refuse_prec / refuse_rec / refuse_f1, answerable_prec / answerable_rec / answerable_f1 and
  macro_f1 = their mean (the grounded refusal term).
- em (ASQA): per output, the share of gold answers with an alias in the output (citations removed):
  regular_str_em (all outputs), answered_str_em (answers). Calibrated: only the gold answers some
  document holds count, and an output on an unanswerable question, or a refusal, scores 0:
  calib_answered_str_em (over answers), calib_answerable_str_em (over answerable questions),
  calib_str_em_f1 = their harmonic mean. parametric_str_em = answered_str_em minus the answers'
  str-em on gold answers the documents hold, divided by all gold answers: what the model got right
  that the documents did not give it.
- cm (ELI5): the same with entailment of each claim by the output (citations removed):
  regular_/answered_/calib_answered_/calib_answerable_claims_nli, calib_claims_nli_f1,
  parametric_answered_claims_nli.
- citations: ALCE's citation recall and precision (alce.citation_scores) on the raw outputs, with
  one change: a citation that is not needed by the leave-one-out test still counts as needed when
  it holds a gold answer that one of the other cited documents also holds. regular_citation_* over
  all outputs, answered_citation_* over answers; *_f1 is the harmonic mean of the two means.
- trust_score = mean(calib_str_em_f1 (cm: calib_claims_nli_f1), macro_f1, answered_citation_f1).
All x 100, as Trust-Eval reports them.
"""
from __future__ import annotations

from difflib import SequenceMatcher
from typing import Mapping, Sequence

import numpy as np

from .alce import AT_MOST_CITATIONS, Entails, citation_scores, exact_presence, normalize_answer, remove_citations

REFUSAL_FLAG = "I apologize, but I couldn't find an answer"
REFUSAL_THRESHOLD = 85


def partial_ratio(s1: str, s2: str) -> int:
    """fuzzywuzzy's fuzz.partial_ratio: the best ratio of the shorter string against the windows of the
    longer one that its matching blocks point at, 0-100."""
    if s1 == s2:
        return 100
    if not s1 or not s2:
        return 0
    shorter, longer = (s1, s2) if len(s1) <= len(s2) else (s2, s1)
    scores = []
    for a, b, _ in SequenceMatcher(None, shorter, longer).get_matching_blocks():
        start = max(b - a, 0)
        r = SequenceMatcher(None, shorter, longer[start:start + len(shorter)]).ratio()
        if r > 0.995:
            return 100
        scores.append(r)
    return int(round(100 * max(scores)))


def is_refusal(item: Mapping, cited: bool = True, flag: str = REFUSAL_FLAG, threshold: int = REFUSAL_THRESHOLD) -> bool:
    """Refusal of an output as written (`cited`), or with its citations removed: Trust-Eval looks at the
    latter inside its correctness measures, at the former elsewhere."""
    if "refusal" in item and item["refusal"] is not None:
        return bool(item["refusal"])
    out = item["output"] if cited else remove_citations(item["output"])
    return partial_ratio(normalize_answer(flag), normalize_answer(out)) > threshold


def supported_answers(item: Mapping) -> list[int]:
    found = [d["answers_found"] for d in item["docs"]]
    return [int(any(col)) for col in zip(*found)] if found else [0] * len(item["answers"])


def is_answerable(item: Mapping) -> bool:
    return any(supported_answers(item))


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def _hmean(a: float, b: float) -> float:
    """scipy.stats.hmean of two non-negative numbers (0 when either is 0)."""
    return 0.0 if a <= 0 or b <= 0 else 2 / (1 / a + 1 / b)


def _mean(xs) -> float:
    return float(np.mean(xs)) if len(xs) else 0.0


def macro_scores(items: Sequence[Mapping]) -> dict:
    refused = [is_refusal(it) for it in items]
    answerable = [is_answerable(it) for it in items]
    pct = lambda num, den: 100 * num / den if den else 0.0
    rr = pct(sum(r and not a for r, a in zip(refused, answerable)), sum(not a for a in answerable))
    rp = pct(sum(r and not a for r, a in zip(refused, answerable)), sum(refused))
    ar = pct(sum(a and not r for r, a in zip(refused, answerable)), sum(answerable))
    ap = pct(sum(a and not r for r, a in zip(refused, answerable)), sum(not r for r in refused))
    rf, af = _f1(rp, rr), _f1(ap, ar)
    return {"refuse_rec": rr, "refuse_prec": rp, "refuse_f1": rf, "answerable_rec": ar, "answerable_prec": ap,
            "answerable_f1": af, "macro_avg": (rr + ar) / 2, "macro_f1": (rf + af) / 2}


def _em_scores(item: Mapping, hit: list[float]) -> tuple[float, float, float]:
    """(regular, calibrated, parametric-calibrated) of one output, given a 0/1 per gold answer."""
    sup = supported_answers(item)
    regular = _mean(hit)
    if any(sup) and not is_refusal(item, cited=False):
        kept = [h for h, s in zip(hit, sup) if s]
        return regular, _mean(kept), sum(kept) / len(sup)
    return regular, 0.0, 0.0


def correctness_scores(items: Sequence[Mapping], entails: Entails | None = None, kind: str = "em") -> dict:
    """The em (ASQA) or cm (ELI5) family of the module docstring."""
    rows = []
    for it in items:
        out = remove_citations(it["output"])
        if kind == "em":
            hit = [float(exact_presence(aliases, out)) for aliases in it["answers"]]
        else:
            hit = [float(entails(out, aliases[0])) for aliases in it["answers"]]
        rows.append((it, *_em_scores(it, hit)))
    # em: the answers are chosen on the outputs as written; cm: on the outputs without citations
    answered = [r for r in rows if not is_refusal(r[0], cited=(kind == "em"))]
    answerable = [r for r in rows if is_answerable(r[0])]
    name = "str_em" if kind == "em" else "claims_nli"
    res = {f"regular_{name}": 100 * _mean([r[1] for r in rows]),
           f"answered_{name}": 100 * _mean([r[1] for r in answered]),
           f"calib_answered_{name}": 100 * _mean([r[2] for r in answered]),
           f"calib_answerable_{name}": 100 * _mean([r[2] for r in answerable])}
    res[f"calib_{name}_f1"] = _hmean(res[f"calib_answered_{name}"], res[f"calib_answerable_{name}"])
    parametric = res[f"answered_{name}"] - 100 * _mean([r[3] for r in answered])
    res["parametric_str_em" if kind == "em" else "parametric_answered_claims_nli"] = parametric
    return res


def _shares_a_found_answer(item: Mapping, ref, psg: int, others) -> bool:
    """Trust-Eval's veto: `psg` holds a gold answer one of `others` also holds."""
    docs = item["docs"]
    cover = [int(any(col)) for col in zip(*[docs[p]["answers_found"] for p in others])]
    return any(c == 1 and f == 1 for c, f in zip(cover, docs[psg]["answers_found"]))


def citation_measures(items: Sequence[Mapping], entails: Entails,
                      at_most_citations: int | None = AT_MOST_CITATIONS) -> dict:
    regular, answered = [], []
    for it in items:
        c = citation_scores(it, entails, at_most_citations, needed=_shares_a_found_answer)
        if c is None:
            continue
        regular.append(c)
        if not is_refusal(it):
            answered.append(c)
    res = {}
    for prefix, cs in (("regular_", regular), ("answered_", answered)):
        rec = 100 * _mean([c["recall"] for c in cs])
        prec = 100 * _mean([c["precision"] for c in cs])
        res.update({prefix + "citation_rec": rec, prefix + "citation_prec": prec,
                    prefix + "citation_f1": _f1(prec, rec)})
    return res


def trust_eval_measures(items: Sequence[Mapping], entails: Entails, kind: str = "em",
                        at_most_citations: int | None = AT_MOST_CITATIONS) -> dict:
    """Trust-Eval's report (module docstring) over `items`; kind em (ASQA, NQ-like short answers) or cm (ELI5)."""
    if kind not in ("em", "cm"):
        raise ValueError(f"kind {kind!r}: expected em (short answers) or cm (claims)")
    res: dict = {"num_samples": len(items), "eval_type": kind}
    if not items:
        return res
    res["answered_num"] = sum(not is_refusal(it) for it in items)
    res["answerable_num"] = sum(is_answerable(it) for it in items)
    res.update(macro_scores(items))
    res.update(correctness_scores(items, entails, kind))
    res.update(citation_measures(items, entails, at_most_citations))
    correctness = res["calib_str_em_f1"] if kind == "em" else res["calib_claims_nli_f1"]
    res["trust_score"] = float(np.mean([correctness, res["macro_f1"], res["answered_citation_f1"]]))
    return res
