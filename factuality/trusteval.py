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
- em5 (QAMPARI): the output's comma-separated predictions against the gold alias lists
  (alce.qampari_scores' rules), regular_ / answered_ / calib_answered_ / calib_answerable_
  qampari_{prec, rec, rec_top5, f1, f1_top5}, calib_qampari_em_f1 (harmonic mean of the calibrated
  f1_top5), parametric_qampari_rec_top5, qampari_presence / qampari_absence; citations are judged
  per prediction, the question prefixed (ALCE's QAMPARI rule).
- trust_score = mean(calib_str_em_f1 (em5: calib_qampari_em_f1; cm: calib_claims_nli_f1), macro_f1,
  answered_citation_f1).
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


def _qampari_one(item: Mapping, calib: bool, parametric: bool) -> dict:
    """One QAMPARI output's prec / rec / rec_top5 / f1 / f1_top5 (Trust-Eval's compute_qampari_f1);
    `output` is already without citations."""
    preds = [p for p in (normalize_answer(x.strip()) for x in item["output"].rstrip().rstrip(".").rstrip(",")
                         .split(",")) if p]
    sup = supported_answers(item)
    if calib:
        if any(sup) and not is_refusal(item, cited=False):
            answers = [[normalize_answer(x) for x in ans] for ans, s in zip(item["answers"], sup) if s == 1]
        else:
            answers = [[""]]
    else:
        answers = [[normalize_answer(x) for x in ans] for ans in item["answers"]]
    flat = [a for group in answers for a in group]
    hits = sum(any(x in preds for x in group) for group in answers)
    denom = len(sup) if calib and parametric else len(answers)
    prec = sum(p in flat for p in preds) / len(preds) if preds else 0.0
    rec, rec5 = hits / denom, min(5, hits) / min(5, denom)
    return {"num_preds": len(preds), "qampari_prec": prec, "qampari_rec": rec, "qampari_rec_top5": rec5,
            "qampari_f1": _f1(prec, rec), "qampari_f1_top5": _f1(prec, rec5)}


def _qampari_scores(items: Sequence[Mapping], prefix: str, calib: bool = False, parametric: bool = False) -> dict:
    keys = ("num_preds", "qampari_prec", "qampari_rec", "qampari_rec_top5", "qampari_f1", "qampari_f1_top5")
    if not items:
        return {prefix + k: 0.0 for k in keys}
    rows = [_qampari_one(it, calib, parametric) for it in items]
    return {prefix + k: (1 if k == "num_preds" else 100) * float(np.mean([r[k] for r in rows])) for k in keys}


def incorrect_frequency(answered: Sequence[Mapping]) -> dict:
    """Of the wrong predictions (items in an answer's comma-separated list that match no gold answer the
    documents hold), the share that do occur in a shown document (`qampari_presence`) and that do not
    (`qampari_absence`): mean over answers that have a wrong prediction; NaN when none has."""
    if not answered:
        return {"qampari_presence": 0.0, "qampari_absence": 0.0}
    presence, absence = [], []
    for it in answered:
        sup = supported_answers(it)
        truths = [ans for ans, s in zip(it["answers"], sup) if s == 1]
        preds = [p for p in (x.strip() for x in it["output"].rstrip().rstrip(".").rstrip(",").split(",")) if p]
        correct = np.array([any(exact_presence(gts, p) for gts in truths) for p in preds])
        exists = np.array([any(exact_presence([p], d["text"]) for d in it["docs"]) for p in preds])
        if len(preds) and any(correct == 0):
            wrong = correct == 0
            presence.append(np.sum(wrong & (exists == 1)) / wrong.sum())
            absence.append(np.sum(wrong & (exists == 0)) / wrong.sum())
    mean = lambda xs: 100 * float(np.mean(xs)) if xs else float("nan")
    return {"qampari_presence": mean(presence), "qampari_absence": mean(absence)}


def qampari_measures(items: Sequence[Mapping]) -> dict:
    """Trust-Eval's em5 family (QAMPARI): regular_ / answered_ / calib_answered_ / calib_answerable_
    qampari_* over the outputs without citations, calib_qampari_em_f1 (harmonic mean of the two
    calibrated f1_top5), parametric_qampari_rec_top5, qampari_presence / _absence."""
    norm = [{**it, "output": remove_citations(it["output"])} for it in items]
    answered = [n for it, n in zip(items, norm) if not is_refusal(it)]
    answerable = [n for n in norm if is_answerable(n)]
    res = incorrect_frequency(answered)
    res.update(_qampari_scores(norm, "regular_"))
    res.update(_qampari_scores(answered, "answered_"))
    res.update(_qampari_scores(answered, "calib_answered_", calib=True))
    res.update(_qampari_scores(answerable, "calib_answerable_", calib=True))
    res["calib_qampari_em_f1"] = _hmean(res["calib_answered_qampari_f1_top5"], res["calib_answerable_qampari_f1_top5"])
    res["parametric_qampari_rec_top5"] = res["answered_qampari_rec_top5"] - _qampari_scores(
        answered, "p_", calib=True, parametric=True)["p_qampari_rec_top5"]
    return res


def _shares_a_found_answer(item: Mapping, ref, psg: int, others) -> bool:
    """Trust-Eval's veto: `psg` holds a gold answer one of `others` also holds."""
    docs = item["docs"]
    cover = [int(any(col)) for col in zip(*[docs[p]["answers_found"] for p in others])]
    return any(c == 1 and f == 1 for c, f in zip(cover, docs[psg]["answers_found"]))


def citation_measures(items: Sequence[Mapping], entails: Entails,
                      at_most_citations: int | None = AT_MOST_CITATIONS, qampari: bool = False) -> dict:
    regular, answered = [], []
    for it in items:
        c = citation_scores(it, entails, at_most_citations, qampari=qampari, needed=_shares_a_found_answer)
        if c is None:
            continue
        regular.append(c)
        if not is_refusal(it):
            answered.append(c)
    res = {}
    for prefix, cs in (("regular_", regular), ("answered_", answered)):
        if prefix == "regular_" and not cs:   # Trust-Eval: the mean of nothing (NaN); None in our JSON
            res.update({"regular_citation_rec": None, "regular_citation_prec": None, "regular_citation_f1": 0.0})
            continue
        rec = 100 * _mean([c["recall"] for c in cs])
        prec = 100 * _mean([c["precision"] for c in cs])
        res.update({prefix + "citation_rec": rec, prefix + "citation_prec": prec,
                    prefix + "citation_f1": _f1(prec, rec)})
    return res


def trust_eval_measures(items: Sequence[Mapping], entails: Entails, kind: str = "em",
                        at_most_citations: int | None = AT_MOST_CITATIONS) -> dict:
    """Trust-Eval's report (module docstring) over `items`; kind em (ASQA, NQ-like short answers) or cm (ELI5)."""
    if kind not in ("em", "em5", "cm"):
        raise ValueError(f"kind {kind!r}: expected em (short answers), em5 (QAMPARI's lists) or cm (claims)")
    res: dict = {"num_samples": len(items), "eval_type": kind}
    if not items:
        return res
    res["answered_num"] = sum(not is_refusal(it) for it in items)
    res["answerable_num"] = sum(is_answerable(it) for it in items)
    res.update(macro_scores(items))
    res.update(qampari_measures(items) if kind == "em5" else correctness_scores(items, entails, kind))
    res.update(citation_measures(items, entails, at_most_citations, qampari=kind == "em5"))
    correctness = {"em": "calib_str_em_f1", "em5": "calib_qampari_em_f1", "cm": "calib_claims_nli_f1"}[kind]
    correctness = res[correctness]
    res["trust_score"] = float(np.mean([correctness, res["macro_f1"], res["answered_citation_f1"]]))
    return res
