"""Grounded-QA metrics: one definition of every measure, used by every script (README, "The measures").

Shape. `score_example` turns one output into per-example *columns*: for each, a number (the
example counts towards it) or None (it does not). Every reported *measure* (MEASURES) is computed
from those columns over any set of examples, with a weight per example: a masked mean of one
column, a function of such means (the F1s and Trust-Score are ratios of sums, not means of
per-example values), or a function of whole columns (ECE, AURC). The weights are how often each
example occurs: all 1 for the point value, the resample's counts for each bootstrap replicate
(examples drawn with replacement; the same draw for every system in a paired delta). So every
measure gets its point value and its percentile interval from one code path.

Notation. C = the ids an output cites (duplicates removed); G = the example's gold support chunk
ids; an *answer* = an output that is not a refusal (format failures included: an unreadable output
is an answer with no content, so emitting garbage never lowers a rate over answers); *answerable* =
the evidence shown holds the answer (`example["answerable"]`); QA = every source but FEVER.

Refusal: `prompts.is_refusal` on the output's JSON `answer` field (salvaged from a broken object
too): any wording in `prompts.REFUSAL_PARAPHRASES`, any case, quotes or punctuation around it. The
parser, the output schema and these metrics share that one rule.

Support (`answer_supported`; needs no gold, so a judge or a reward model can use it on new data).
An answer is supported by the chunks it cites (ids of the evidence shown; unknown ids cite nothing)
- on a FEVER example, when it is a verdict (`fever_label` SUPPORTS or REFUTES) and cites at least
  one chunk (whether the verdict is right is scored apart: fever_accuracy, correctness);
- on a QA example whose answer is yes / no, when it cites at least one chunk (a comparison verdict
  has no span to find);
- otherwise when all its normalised tokens (`text.normalize_answer`) occur in one cited chunk
  (title and text). An answer with no tokens is never supported.
The check is pluggable: any callable `(answer, cited_chunk_texts, *, source, question) -> bool`
(an NLI model, say), passed as `checker=` (the callable or a name given to
`register_support_checker`). The default is "lexical", the rule above, which cannot judge a
verdict: a wrong FEVER verdict citing a chunk is "supported". `entailment.support_checker` builds
the checker of an entailment model (--entailment nli:... / true:...): a QA answer is supported when
the cited chunks entail "<question> <answer>", a SUPPORTS verdict when they entail the claim, a
REFUTES verdict when they contradict it.

Correct: a QA answer exact-matches a gold alias (em = 1); a FEVER answer's label equals the gold
label: answers[0] when answerable, NOT ENOUGH INFO when not (the evidence shown decides nothing, even
where the claim's original evidence was removed). An answer on an unanswerable example is never
correct.

HEADLINE: measures that no degenerate system (constant answer citing the gold chunks, cite every
chunk, refuse everything, never refuse, constant "SUPPORTS", copy the question, empty answers) can
raise to the gold system's 1.0 (tests/test_report.py builds each one):
- correct_grounded_f1: TP = answers that are correct and cite at least one id of G; P = TP /
  answers, R = TP / answerable examples; F1 = 2PR/(P+R) = 2 TP / (answers + answerable examples).
- grounded_citation_f1: F1 of grounded citation precision (mean over answers of |C∩G|/|C| when
  the answer is supported by its citations, else 0; so 0 for an answer on an unanswerable example)
  and grounded citation recall (mean over answerable examples of |C∩G|/|G| when answered and
  supported, else 0).
- trust_score: mean of grounded_refusal_f1, answer_correctness_f1 and grounded_citation_f1.
  Shaped like Trust-Align's Trust-Score (ICLR 2025) but NOT Trust-Eval's measure, and not
  comparable with its published figures: its citation term is overlap with the gold chunk ids
  gated by the support rule (lexical unless --entailment names a model), where Trust-Eval's is
  ALCE's entailment-judged citation recall / precision; its correctness term is exact match of
  one answer, where Trust-Eval's is string-EM recall of the gold answers the documents hold;
  answerability is our `answerable` flag. Trust-Eval's own measures, under their names, are in
  factuality/trusteval.py and in every results file's `published.trust_eval`.

Trust-Score family (an F1 is 2PR/(P+R); a P or R with no member counts as 0 in it, so a system
that answers nothing scores 0; an F1 with neither is undefined):
- answered_precision / answered_recall / answered_f1: answers on answerable examples over answers
  / over answerable examples.
- refusal_precision / refusal_recall / refusal_f1: refusals on unanswerable examples over
  refusals / over unanswerable examples.
- grounded_refusal_f1: mean of answered_f1 and refusal_f1 (answered_f1 alone where refusal_f1 is
  undefined: a cell with neither refusals nor unanswerable examples).
- answer_correctness_precision / _recall / _f1: correct answers over answers / over answerable
  examples (citations not looked at).
- correct_grounded_precision / correct_grounded (the recall) / correct_grounded_f1: as
  answer_correctness with "correct and citing a gold chunk".
- grounded_citation_precision / grounded_citation_recall: the two halves of grounded_citation_f1.

Grounding:
- hallucination_rate: over answers: 1 when the answer is not supported by the chunks it cites.
- citation_hallucination_rate: over answers: 1 when no cited id is in G. Citations only: the
  answer's text is not looked at ("banana" citing the gold chunk scores 0 here, 1 above).
- citation_precision / citation_recall / citation_f1 (citation_correctness is citation_f1, the name
  the deltas use): per example |C∩G|/|C| (0 when C is empty; unknown ids count as wrong),
  |C∩G|/|G|, their harmonic mean (0 when both are 0); macro over answers on answerable examples.

Content, strict and lenient side by side:
- em / f1: strict: the JSON answer field (salvaged from a truncated object too; prose gives no
  answer), SQuAD v1.1 exact match / token F1, max over the gold aliases (`text.py`: an empty answer
  never matches); over answerable QA examples (FEVER is scored by fever_accuracy alone); a refusal
  scores 0.
- match: lenient: the answer extracted leniently (`lenient_answer`: the JSON answer field when
  one can be read, else the whole output text, so prose is scored on content too); 1 when some
  normalised gold alias occurs in it as a whole-token run (`text.has_answer`) and it is not a
  refusal; over answerable QA examples.
- fever_accuracy: over FEVER examples: the predicted label (NOT ENOUGH INFO for a refusal, else
  `fever_label` of the JSON answer field; unreadable = wrong) equals the gold label.
- fever_accuracy_lenient: the same on the leniently extracted answer (`fever_label_lenient`: a
  label word found in prose counts when it is the only label present).

Refusals:
- refusal_rate: share of all outputs that are refusals.
- refusal_noncanonical: over refusals, the share not worded exactly "insufficient evidence"
  (still refusals everywhere else; format_validity counts them invalid).

Confidence (over answers whose `confidence` can be read, clipped to [0, 1]; y = correct):
- ece: expected calibration error, 10 equal-width bins: sum over bins |sum(y) - sum(conf)| / n.
- brier: mean of (conf - y)^2.
- aurc: area under the risk-coverage curve (`risk_coverage`): answers sorted by confidence,
  highest first; at each confidence level (ties enter together) risk = share wrong among those at
  or above it; AURC = sum over levels of (share of answers at that level) x risk. 0 for a system
  that is always right; lower is better.
- confidence / confidence_correct: mean confidence and accuracy of those answers.

Form:
- format_validity: every output: 1 when `parse_output(...).valid` (one JSON object, valid against
  the output schema, citing only ids of the evidence shown), else 0.
- output_tokens: mean generated length in tokens (up to the stop token).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Protocol, Sequence

import numpy as np

from .prompts import ParsedOutput, is_canonical_refusal, is_refusal, parse_output
from .text import (
    answer_tokens,
    best_over_golds,
    exact_match,
    has_answer,
    normalize_answer,
    token_f1,
)

# --------------------------------------------------------------------------------------------
# FEVER labels
# --------------------------------------------------------------------------------------------
SUPPORTS, REFUTES, NEI = "SUPPORTS", "REFUTES", "NOT ENOUGH INFO"
FEVER_LABELS = (SUPPORTS, REFUTES, NEI)
# Wordings read as each label (compared after text.normalize_answer: case, punctuation and
# articles do not matter). Every refusal wording (prompts.is_refusal) also reads as NOT ENOUGH INFO.
FEVER_LABEL_WORDINGS: dict[str, tuple[str, ...]] = {
    SUPPORTS: ("supports", "support", "supported", "true", "yes", "correct", "the claim is supported",
               "the claim is true", "the evidence supports the claim", "supports the claim"),
    REFUTES: ("refutes", "refute", "refuted", "false", "no", "incorrect", "the claim is refuted",
              "the claim is false", "the evidence refutes the claim", "refutes the claim"),
    NEI: ("not enough info", "not enough information", "nei"),
}
_FEVER_BY_WORDING = {normalize_answer(w): label for label, ws in FEVER_LABEL_WORDINGS.items() for w in ws}
# for prose (lenient): label words that may stand anywhere in a sentence
_FEVER_PROSE_WORDS = {SUPPORTS: ("supports", "supported"), REFUTES: ("refutes", "refuted"),
                      NEI: ("not enough info", "not enough information", "insufficient evidence")}


def fever_label(answer: str | None) -> str | None:
    """SUPPORTS / REFUTES / NOT ENOUGH INFO for an answer worded as one (FEVER_LABEL_WORDINGS, or a
    refusal for NOT ENOUGH INFO), else None ("SUPPORTS or REFUTES" is no label)."""
    if answer is None:
        return None
    if is_refusal(answer):
        return NEI
    return _FEVER_BY_WORDING.get(normalize_answer(answer))


def fever_label_lenient(text: str | None) -> str | None:
    """fever_label, else the one label whose words occur in the text (None when several do)."""
    exact = fever_label(text)
    if exact is not None or not text:
        return exact
    joined = f" {normalize_answer(text)} "
    found = {label for label, words in _FEVER_PROSE_WORDS.items() if any(f" {w} " in joined for w in words)}
    return found.pop() if len(found) == 1 else None


def gold_fever_label(example: Mapping) -> str:
    """NOT ENOUGH INFO when the evidence shown does not decide the claim, else the verdict."""
    if not example["answerable"]:
        return NEI
    return fever_label(example["answers"][0]) or str(example["answers"][0]).upper()


# --------------------------------------------------------------------------------------------
# Support of an answer by its citations (pluggable)
# --------------------------------------------------------------------------------------------
class SupportChecker(Protocol):
    """Decides whether cited chunk texts support an answer (no gold needed)."""

    def __call__(self, answer: str, cited_chunks: Sequence[str], *, source: str | None = None,
                 question: str | None = None) -> bool: ...


def is_verdict(answer: str, source: str | None = None) -> bool:
    """A FEVER verdict (SUPPORTS / REFUTES in any wording) on FEVER, yes / no elsewhere."""
    if source == "fever":
        return fever_label(answer) in (SUPPORTS, REFUTES)
    return normalize_answer(answer) in ("yes", "no")


def lexical_support(answer: str, cited_chunks: Sequence[str], *, source: str | None = None,
                    question: str | None = None) -> bool:
    """The default checker (module docstring, "Support")."""
    if source == "fever" or is_verdict(answer, source):
        return is_verdict(answer, source) and bool(cited_chunks)
    tokens = set(answer_tokens(answer))
    return bool(tokens) and any(tokens <= set(answer_tokens(c)) for c in cited_chunks)


SUPPORT_CHECKERS: dict[str, SupportChecker] = {"lexical": lexical_support}


def register_support_checker(name: str, checker: SupportChecker) -> None:
    """Make `checker` available as `checker=name` (e.g. an NLI model wrapped in a function)."""
    if not callable(checker):
        raise TypeError(f"support checker {name!r} must be callable (answer, cited_chunks, *, source, question)")
    SUPPORT_CHECKERS[name] = checker


def get_support_checker(checker: str | SupportChecker | None = None) -> SupportChecker:
    if checker is None:
        return lexical_support
    if callable(checker):
        return checker
    if checker not in SUPPORT_CHECKERS:
        from .config import ConfigError

        raise ConfigError(f"support checker {checker!r} is not registered; known: {', '.join(sorted(SUPPORT_CHECKERS))} "
                          f"(register one with factuality.metrics.register_support_checker)")
    return SUPPORT_CHECKERS[checker]


def chunk_text(chunk: str | Mapping) -> str:
    """An evidence chunk as the model saw it: title and text (a plain string is taken as is)."""
    if isinstance(chunk, str):
        return chunk
    return f"{chunk.get('title') or ''}\n{chunk['text']}".strip()


def answer_supported(answer: str | None, cited_chunks: Sequence[str | Mapping], source: str | None = None,
                     checker: str | SupportChecker | None = None, question: str | None = None) -> bool:
    """Is a (non-refusal) answer supported by the chunks it cites? Needs no gold.

    `cited_chunks`: the cited evidence chunks, as texts or as {title, text} dicts (ids that are
    not among the evidence shown cite nothing and must be left out). A refusal, an empty answer
    or an answer citing nothing is never supported; otherwise `checker` decides (default: the
    lexical rule of the module docstring).
    """
    if not answer or not answer.strip() or is_refusal(answer) or not cited_chunks:
        return False
    texts = [chunk_text(c) for c in cited_chunks]
    return bool(get_support_checker(checker)(answer, texts, source=source, question=question))


# --------------------------------------------------------------------------------------------
# Per-example columns
# --------------------------------------------------------------------------------------------
COLUMNS: tuple[str, ...] = (
    "format_validity", "em", "f1", "match", "fever_accuracy", "fever_accuracy_lenient",
    "hallucination_rate", "citation_hallucination_rate",
    "citation_precision", "citation_recall", "citation_f1", "citation_correctness",
    "refusal_rate", "refusal_precision", "refusal_recall", "refusal_noncanonical",
    "answered_precision", "answered_recall", "answer_correctness_precision", "answer_correctness_recall",
    "correct_grounded_precision", "correct_grounded", "grounded_citation_precision", "grounded_citation_recall",
    "confidence", "confidence_correct", "brier", "output_tokens",
)


def gold_support_ids(example: Mapping) -> list[str]:
    return list(dict.fromkeys(s["chunk_id"] for s in example["support"]))


def lenient_answer(raw_output: str | None, parsed: ParsedOutput | None = None) -> str:
    """The JSON answer field when one can be read (also from a broken object), else the whole text."""
    if parsed is None:
        parsed = parse_output(raw_output)
    if parsed.answer is not None:
        return parsed.answer
    return raw_output.strip() if isinstance(raw_output, str) else ""


def score_example(example: Mapping, raw_output: str | None = None, parsed: ParsedOutput | None = None,
                  output_tokens: int | None = None, checker: str | SupportChecker | None = None
                  ) -> dict[str, float | None]:
    """Per-example columns (None = outside that column's denominator); definitions: module docstring.

    Pass `raw_output` (with or without `parsed`): with `parsed` alone the lenient measures cannot
    see prose around or instead of the JSON.
    """
    evidence = {c["id"]: c for c in example["evidence"]}
    if parsed is None:
        parsed = parse_output(raw_output, list(evidence))
    source = example.get("source")
    fever = source == "fever"
    answerable = bool(example["answerable"])
    refusal = bool(parsed.refusal)
    answered = not refusal
    cited = list(dict.fromkeys(parsed.citations or []))
    gold = set(gold_support_ids(example))
    hits = len(set(cited) & gold)
    answer = parsed.answer if (answered and parsed.answer) else ""
    supported = answered and answer_supported(answer, [evidence[c] for c in cited if c in evidence], source,
                                              checker, question=example.get("question"))
    if fever:
        correct = answered and answerable and fever_label(answer) == gold_fever_label(example)
    else:
        em = best_over_golds(exact_match, answer, example["answers"]) if answer else 0.0
        correct = answered and answerable and em == 1.0
    grounded = correct and hits > 0

    out: dict[str, float | None] = dict.fromkeys(COLUMNS)
    out["format_validity"] = float(parsed.valid)
    out["refusal_rate"] = float(refusal)
    if refusal:
        out["refusal_precision"] = float(not answerable)
        out["refusal_noncanonical"] = float(not is_canonical_refusal(parsed.answer))
    else:
        out["answered_precision"] = float(answerable)
        out["hallucination_rate"] = float(not supported)
        out["citation_hallucination_rate"] = float(hits == 0)
        out["answer_correctness_precision"] = float(correct)
        out["correct_grounded_precision"] = float(grounded)
        p = hits / len(cited) if cited else 0.0
        out["grounded_citation_precision"] = p if supported else 0.0
    if answerable:
        out["answered_recall"] = float(answered)
        out["answer_correctness_recall"] = float(correct)
        out["correct_grounded"] = float(grounded)
        r = hits / len(gold) if gold else 0.0
        out["grounded_citation_recall"] = r if supported else 0.0
        if answered:
            p = hits / len(cited) if cited else 0.0
            out["citation_precision"] = p
            out["citation_recall"] = r
            out["citation_f1"] = out["citation_correctness"] = 2 * p * r / (p + r) if p + r > 0 else 0.0
    else:
        out["refusal_recall"] = float(refusal)

    loose = lenient_answer(raw_output, parsed)
    if fever:
        strict_label = NEI if refusal else fever_label(answer)
        out["fever_accuracy"] = float(strict_label == gold_fever_label(example))
        out["fever_accuracy_lenient"] = float(fever_label_lenient(loose) == gold_fever_label(example))
    elif answerable:
        out["em"] = em
        out["f1"] = best_over_golds(token_f1, answer, example["answers"]) if answer else 0.0
        out["match"] = float(not is_refusal(loose) and has_answer(loose, example["answers"]))

    conf = parsed.confidence
    if answered and conf is not None and math.isfinite(conf):
        conf = min(max(float(conf), 0.0), 1.0)
        out["confidence"] = conf
        out["confidence_correct"] = float(correct)
        out["brier"] = (conf - float(correct)) ** 2
    out["output_tokens"] = float(output_tokens) if output_tokens is not None else None
    return out


# --------------------------------------------------------------------------------------------
# Measures: how each reported figure is computed from the columns
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Measure:
    label: str                # for tables and plots
    higher_is_better: bool
    kind: str = "mean"        # mean (of a column) | f1 (of two measures) | avg (of measures) | ece | aurc
    inputs: tuple[str, ...] = ()   # mean: (column,) (default: the measure's name); f1: (P, R); avg: measures;
                                   # ece / aurc: (confidence column, correctness column)


def _mean(label, higher=True, column=None):
    return Measure(label, higher, "mean", (column,) if column else ())


MEASURES: dict[str, Measure] = {
    # headline
    "correct_grounded_f1": Measure("Correct & grounded F1", True, "f1", ("correct_grounded_precision", "correct_grounded")),
    "grounded_citation_f1": Measure("Grounded citation F1", True, "f1",
                                    ("grounded_citation_precision", "grounded_citation_recall")),
    "trust_score": Measure("Trust-Score (ours; not Trust-Eval's)", True, "avg",
                           ("grounded_refusal_f1", "answer_correctness_f1", "grounded_citation_f1")),
    # Trust-Score family (ours; Trust-Eval's own: trusteval.py)
    "correct_grounded": _mean("Correct & grounded (of answerable)"),
    "correct_grounded_precision": _mean("Correct & grounded (of answers)"),
    "answered_precision": _mean("Answered precision"),
    "answered_recall": _mean("Answered recall"),
    "answered_f1": Measure("Answered F1", True, "f1", ("answered_precision", "answered_recall")),
    "refusal_precision": _mean("Refusal precision"),
    "refusal_recall": _mean("Refusal recall"),
    "refusal_f1": Measure("Refusal F1", True, "f1", ("refusal_precision", "refusal_recall")),
    "grounded_refusal_f1": Measure("Grounded refusal F1", True, "avg", ("answered_f1", "refusal_f1")),
    "answer_correctness_precision": _mean("Answer correctness precision"),
    "answer_correctness_recall": _mean("Answer correctness recall"),
    "answer_correctness_f1": Measure("Answer correctness F1", True, "f1",
                                     ("answer_correctness_precision", "answer_correctness_recall")),
    "grounded_citation_precision": _mean("Grounded citation precision"),
    "grounded_citation_recall": _mean("Grounded citation recall"),
    # grounding
    "hallucination_rate": _mean("Hallucination rate", False),
    "citation_hallucination_rate": _mean("Citation-only hallucination rate", False),
    "citation_precision": _mean("Citation precision"),
    "citation_recall": _mean("Citation recall"),
    "citation_f1": _mean("Citation F1"),
    "citation_correctness": _mean("Citation correctness (= citation F1)"),
    # content
    "em": _mean("EM"),
    "f1": _mean("F1"),
    "match": _mean("Match (lenient)"),
    "fever_accuracy": _mean("FEVER label accuracy"),
    "fever_accuracy_lenient": _mean("FEVER label accuracy (lenient)"),
    # refusals
    "refusal_rate": _mean("Refusal rate", False),
    "refusal_noncanonical": _mean("Non-canonical refusals", False),
    # confidence
    "ece": Measure("ECE", False, "ece", ("confidence", "confidence_correct")),
    "brier": _mean("Brier score", False),
    "aurc": Measure("AURC", False, "aurc", ("confidence", "confidence_correct")),
    "confidence": _mean("Mean confidence (answers)"),
    "confidence_correct": _mean("Accuracy of answers with a confidence"),
    # form
    "format_validity": _mean("Format validity"),
    "output_tokens": _mean("Mean output tokens", False),
}
# name -> (short label for tables, higher_is_better)
METRICS: dict[str, tuple[str, bool]] = {name: (m.label, m.higher_is_better) for name, m in MEASURES.items()}
HEADLINE: tuple[str, ...] = ("correct_grounded_f1", "grounded_citation_f1", "trust_score")
ECE_BINS = 10


def _columns_of(name: str) -> list[str]:
    """The per-example columns a measure reads (a name that is no measure is a column itself)."""
    m = MEASURES.get(name)
    if m is None:
        return [name]
    if m.kind == "mean":
        return [m.inputs[0] if m.inputs else name]
    if m.kind in ("ece", "aurc"):
        return list(m.inputs)
    return [c for sub in m.inputs for c in _columns_of(sub)]


def columns_for(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(c for n in names for c in _columns_of(n)))


def measure_matrix(scores: Sequence[Mapping], names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(values, mask) arrays of shape (n_examples, n_columns); masked-out values are 0."""
    vals = np.zeros((len(scores), len(names)), dtype=np.float64)
    mask = np.zeros_like(vals, dtype=bool)
    for i, s in enumerate(scores):
        for j, name in enumerate(names):
            v = s.get(name)
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                vals[i, j] = v
                mask[i, j] = True
    return vals, mask


def _f1(p: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Harmonic mean; a side with no member counts as 0; NaN only when both have none."""
    both_missing = np.isnan(p) & np.isnan(r)
    p0, r0 = np.nan_to_num(p), np.nan_to_num(r)
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.where(p0 + r0 > 0, 2 * p0 * r0 / np.where(p0 + r0 > 0, p0 + r0, 1), 0.0)
    return np.where(both_missing, np.nan, f)


def _nanmean_rows(parts: Sequence[np.ndarray]) -> np.ndarray:
    stack = np.stack(parts)
    count = (~np.isnan(stack)).sum(axis=0)
    total = np.nansum(stack, axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def weighted_ece(weights: np.ndarray, conf: np.ndarray, y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    bins = np.minimum((conf * ECE_BINS).astype(int), ECE_BINS - 1)
    onehot = np.zeros((len(conf), ECE_BINS))
    onehot[np.arange(len(conf)), bins] = mask
    n = weights @ onehot                          # (B, bins)
    gap = np.abs(weights @ (onehot * y[:, None]) - weights @ (onehot * conf[:, None])).sum(axis=1)
    total = n.sum(axis=1)
    return np.where(total > 0, gap / np.maximum(total, 1), np.nan)


def _risk_coverage(weights: np.ndarray, conf: np.ndarray, y: np.ndarray, mask: np.ndarray):
    """(coverage (B, L), risk (B, L), aurc (B,)) at the L distinct confidence levels, highest first."""
    rows = np.flatnonzero(mask)
    order = rows[np.argsort(-conf[rows], kind="stable")]
    c = conf[order]
    ends = np.flatnonzero(np.r_[c[1:] != c[:-1], True]) if len(c) else np.array([], dtype=int)
    w = weights[:, order]
    cum_w = np.cumsum(w, axis=1)[:, ends]
    cum_err = np.cumsum(w * (1.0 - y[order]), axis=1)[:, ends]
    total = cum_w[:, -1] if len(ends) else np.zeros(weights.shape[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        risk = np.where(cum_w > 0, cum_err / np.where(cum_w > 0, cum_w, 1), 0.0)
        coverage = cum_w / np.where(total > 0, total, 1)[:, None]
    level_w = np.diff(np.concatenate([np.zeros((weights.shape[0], 1)), cum_w], axis=1), axis=1)
    aurc = np.where(total > 0, (level_w * risk).sum(axis=1) / np.where(total > 0, total, 1), np.nan)
    return coverage, risk, aurc


def risk_coverage(confidence: Sequence[float], correct: Sequence[float]) -> dict:
    """The risk-coverage curve of answers with a confidence: {"coverage", "risk", "confidence", "aurc", "n",
    "random_aurc"}: random abstention keeps the overall risk at every coverage, so its AURC is the share
    wrong; a confidence that ranks answers at all has an AURC below it."""
    conf = np.asarray(confidence, dtype=np.float64)
    y = np.asarray(correct, dtype=np.float64)
    cov, risk, aurc = _risk_coverage(np.ones((1, len(conf))), conf, y, np.ones(len(conf), dtype=bool))
    levels = np.unique(conf)[::-1]
    return {"coverage": cov[0].tolist(), "risk": risk[0].tolist(), "confidence": levels.tolist(),
            "aurc": None if np.isnan(aurc[0]) else float(aurc[0]), "n": len(conf),
            "random_aurc": float(1.0 - y.mean()) if len(y) else None}


def measure_values(names: Sequence[str], columns: Sequence[str], vals: np.ndarray, mask: np.ndarray,
                    weights: np.ndarray) -> np.ndarray:
    """(B, len(names)) values of the measures for each weight row (NaN where undefined)."""
    col = {c: j for j, c in enumerate(columns)}
    sums = weights @ (vals * mask)
    counts = weights @ mask.astype(np.float64)
    memo: dict[str, np.ndarray] = {}

    def get(name: str) -> np.ndarray:
        if name in memo:
            return memo[name]
        m = MEASURES.get(name, Measure(name, True))
        if m.kind == "mean":
            j = col[m.inputs[0] if m.inputs else name]
            with np.errstate(invalid="ignore", divide="ignore"):
                v = np.where(counts[:, j] > 0, sums[:, j] / np.maximum(counts[:, j], 1e-12), np.nan)
        elif m.kind == "f1":
            v = _f1(get(m.inputs[0]), get(m.inputs[1]))
        elif m.kind == "avg":
            v = _nanmean_rows([get(x) for x in m.inputs])
        else:
            jc, jy = col[m.inputs[0]], col[m.inputs[1]]
            args = (weights, vals[:, jc], vals[:, jy], mask[:, jc])
            v = weighted_ece(*args) if m.kind == "ece" else _risk_coverage(*args)[2]
        memo[name] = v
        return v

    if not names:
        return np.zeros((weights.shape[0], 0))
    return np.stack([get(n) for n in names], axis=1)


def measure_counts(names: Sequence[str], columns: Sequence[str], mask: np.ndarray) -> list[int]:
    """n of each measure: the examples that enter at least one of its columns."""
    col = {c: j for j, c in enumerate(columns)}
    return [int(mask[:, [col[c] for c in _columns_of(n)]].any(axis=1).sum()) if len(mask) else 0 for n in names]


