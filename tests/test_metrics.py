"""Every metric on hand-made cases whose values were computed by hand (definitions: factuality/metrics.py).

make_example(gold_position=1) has evidence E1, E2, E3 with the answer "Linda Davis" in E2 only.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from factuality.bootstrap import (
    BootstrapSpec,
    aggregate,
    breakdown,
    bucket_index,
    bucket_labels,
    check_boundaries,
    paired_deltas,
)
from factuality.metrics import score_example
from factuality.records import with_hash
from factuality.testing import make_example


def out(answer, citations, confidence=0.9):
    return json.dumps({"answer": answer, "citations": citations, "confidence": confidence})


@pytest.fixture()
def ans():
    return make_example(1, answerable=True, gold_position=1)


@pytest.fixture()
def unans():
    return make_example(2, answerable=False)


def test_correct_answer_with_gold_citation(ans):
    s = score_example(ans, out("Linda Davis", ["E2"]))
    assert s["format_validity"] == 1 and s["em"] == 1 and s["f1"] == 1
    assert s["hallucination_rate"] == 0
    assert (s["citation_precision"], s["citation_recall"], s["citation_f1"]) == (1, 1, 1)
    assert s["citation_correctness"] == s["citation_f1"]
    assert s["refusal_rate"] == 0 and s["refusal_precision"] is None and s["refusal_recall"] is None


def test_refusal_on_answerable_example(ans):
    s = score_example(ans, out("insufficient evidence", [], 0.0))
    assert s["format_validity"] == 1 and s["refusal_rate"] == 1
    assert s["em"] == 0 and s["f1"] == 0                      # missed answer
    assert s["refusal_precision"] == 0                        # a refusal, wrongly
    assert s["refusal_recall"] is None                        # only unanswerable examples count
    assert s["hallucination_rate"] is None and s["citation_f1"] is None  # refusals are outside both


def test_citing_only_a_distractor_is_a_hallucination(ans):
    s = score_example(ans, out("Linda Davis", ["E1"]))
    assert s["em"] == 1 and s["hallucination_rate"] == 1
    assert (s["citation_precision"], s["citation_recall"], s["citation_f1"]) == (0, 0, 0)


def test_gold_plus_distractor_citation(ans):
    s = score_example(ans, out("Linda Davis", ["E1", "E2"]))
    assert s["hallucination_rate"] == 0
    assert s["citation_precision"] == pytest.approx(0.5) and s["citation_recall"] == 1
    assert s["citation_f1"] == pytest.approx(2 * 0.5 * 1 / 1.5)  # 2/3


def test_invalid_id_is_a_format_failure_and_a_wrong_citation(ans):
    s = score_example(ans, out("Reba", ["E9"]))
    assert s["format_validity"] == 0 and s["hallucination_rate"] == 1
    assert s["citation_precision"] == 0 and s["em"] == 0 and s["f1"] == 0
    s = score_example(ans, out("Linda Davis", ["E2", "E9"]))
    assert s["format_validity"] == 0 and s["hallucination_rate"] == 0
    assert s["citation_precision"] == pytest.approx(0.5) and s["citation_recall"] == 1


def test_duplicate_citations_are_invalid_and_counted_once(ans):
    s = score_example(ans, '{"answer": "Linda Davis", "citations": ["E2", "E2"], "confidence": 1}')
    assert s["format_validity"] == 0                            # schema: uniqueItems
    assert (s["citation_precision"], s["citation_recall"]) == (1, 1)  # not 2 hits out of 2


def test_empty_and_non_json_outputs(ans):
    for raw in ("", "Linda Davis", '{"answer": "Linda'):
        s = score_example(ans, raw)
        assert s["format_validity"] == 0 and s["refusal_rate"] == 0
        assert s["hallucination_rate"] == 1 and s["citation_f1"] == 0
    assert score_example(ans, "")["em"] == 0
    assert score_example(ans, "Linda Davis")["em"] == 0         # no JSON: no answer could be read
    assert score_example(ans, '{"answer": "Linda Davis", "cit')["em"] == 1  # truncated: answer salvaged
    assert score_example(ans, None)["format_validity"] == 0


def test_alias_match_and_partial_f1():
    ex = make_example(3, answer="Linda Davis")
    ex = with_hash({**ex, "answers": ["Linda Davis", "L. Davis"]})
    s = score_example(ex, out("The L Davis", ["E2"]))
    assert s["em"] == 1 and s["f1"] == 1                        # normalised alias: "l davis"
    s = score_example(ex, out("Linda", ["E2"]))
    assert s["em"] == 0 and s["f1"] == pytest.approx(2 / 3)     # P=1/1, R=1/2 against "Linda Davis"


def test_unanswerable_examples(unans):
    s = score_example(unans, out("Linda Davis", ["E1"]))
    assert s["em"] is None and s["f1"] is None and s["citation_f1"] is None
    assert s["hallucination_rate"] == 1 and s["refusal_recall"] == 0
    s = score_example(unans, out("insufficient evidence", []))
    assert s["refusal_precision"] == 1 and s["refusal_recall"] == 1 and s["hallucination_rate"] is None


def test_aggregate_by_hand(ans, unans):
    a2 = make_example(4, answerable=True, gold_position=1)
    u2 = make_example(5, answerable=False)
    scores = [
        score_example(ans, out("Linda Davis", ["E2"]), output_tokens=10),        # A: right
        score_example(a2, out("insufficient evidence", []), output_tokens=20),   # B: wrong refusal
        score_example(unans, out("insufficient evidence", []), output_tokens=30),  # C: right refusal
        score_example(u2, out("Linda Davis", ["E1"]), output_tokens=40),         # D: hallucination
    ]
    m = aggregate(scores, boot=None)["metrics"]
    assert m["refusal_rate"]["value"] == 0.5 and m["refusal_rate"]["n"] == 4
    assert m["refusal_precision"]["value"] == 0.5 and m["refusal_precision"]["n"] == 2  # C of {B, C}
    assert m["refusal_recall"]["value"] == 0.5 and m["refusal_recall"]["n"] == 2        # C of {C, D}
    assert m["hallucination_rate"]["value"] == 0.5 and m["hallucination_rate"]["n"] == 2  # D of {A, D}
    assert m["em"]["value"] == 0.5 and m["em"]["n"] == 2                                 # A of {A, B}
    assert m["citation_f1"]["value"] == 1 and m["citation_f1"]["n"] == 1                 # A only
    assert m["format_validity"]["value"] == 1
    assert m["output_tokens"]["value"] == 25
    assert m["em"]["ci"] is None


def test_empty_denominator_is_none_not_zero(unans):
    m = aggregate([score_example(unans, out("insufficient evidence", []))], boot=None)["metrics"]
    assert m["em"]["value"] is None and m["em"]["n"] == 0
    assert m["hallucination_rate"]["value"] is None


def test_bucket_boundaries():
    b = [10, 20]
    assert bucket_labels(b) == ["<=10", "11-20", ">20"]
    assert [bucket_index(t, b) for t in (0, 10, 11, 20, 21, 10_000)] == [0, 0, 1, 1, 2, 2]
    assert bucket_labels([2048, 3072, 4096]) == ["<=2048", "2049-3072", "3073-4096", ">4096"]
    with pytest.raises(ValueError, match="strictly increasing"):
        check_boundaries([3072, 2048])


def test_breakdown_by_source_and_bucket(ans):
    exs = [make_example(i, source=s) for i, s in enumerate(["nq", "nq", "popqa"])]
    raws = [out("Linda Davis", ["E2"]), out("wrong", ["E2"]), out("Linda Davis", ["E2"])]
    scores = [score_example(e, r) for e, r in zip(exs, raws)]
    br = breakdown(scores, [e["source"] for e in exs], [5, 15, 25], [10, 20], boot=None)
    assert br["by_source"]["nq"]["n"] == 2 and br["by_source"]["nq"]["metrics"]["em"]["value"] == 0.5
    assert br["by_source"]["popqa"]["metrics"]["em"]["value"] == 1
    assert [br["by_bucket"][k]["n"] for k in ("<=10", "11-20", ">20")] == [1, 1, 1]
    assert br["by_bucket"]["11-20"]["metrics"]["em"]["value"] == 0
    assert br["overall"]["metrics"]["em"]["value"] == pytest.approx(2 / 3)
    empty = breakdown(scores, [e["source"] for e in exs], [5, 6, 7], [10, 20], boot=None)["by_bucket"]
    assert empty[">20"]["n"] == 0 and empty[">20"]["metrics"]["em"]["value"] is None


def _bernoulli_scores(n, p=0.3):
    k = int(round(n * p))
    return [{"em": float(i < k)} for i in range(n)]


def test_bootstrap_ci_contains_point_and_shrinks_with_n():
    boot = BootstrapSpec(n_boot=1000, seed=0)
    small = aggregate(_bernoulli_scores(20), names=["em"], boot=boot)["metrics"]["em"]
    large = aggregate(_bernoulli_scores(2000), names=["em"], boot=boot)["metrics"]["em"]
    for m in (small, large):
        assert m["ci"][0] <= m["value"] <= m["ci"][1]
    w_small, w_large = small["ci"][1] - small["ci"][0], large["ci"][1] - large["ci"][0]
    assert w_large < w_small / 4                                  # ~ 1/sqrt(100) = 1/10
    # the 95% interval of a proportion: about +-1.96 * sqrt(p(1-p)/n)
    assert w_large == pytest.approx(2 * 1.96 * np.sqrt(0.3 * 0.7 / 2000), rel=0.15)
    again = aggregate(_bernoulli_scores(20), names=["em"], boot=boot)["metrics"]["em"]
    assert again["ci"] == small["ci"]                             # seeded


def test_paired_delta():
    boot = BootstrapSpec(n_boot=500, seed=1)
    old = [{"em": float(i % 2 == 0)} for i in range(200)]         # 0.5
    new = [{"em": 1.0 if i % 2 == 0 or i % 4 == 1 else 0.0} for i in range(200)]  # 0.75, never worse
    d = paired_deltas(new, old, names=["em"], boot=boot)["em"]
    assert d["delta"] == pytest.approx(0.25)
    assert 0 < d["ci"][0] <= 0.25 <= d["ci"][1]
    same = paired_deltas(old, old, names=["em"], boot=boot)["em"]
    assert same["delta"] == 0 and same["ci"] == [0.0, 0.0]        # paired: identical systems, no spread
    with pytest.raises(ValueError):
        paired_deltas(new[:3], old, names=["em"])


# ------------------------------------------------------------------ the empty-answer convention (text.py)
def test_empty_answers_never_match():
    from factuality.text import exact_match, token_f1

    for pred, gold in (("", ""), ("The", "a"), ("!", ""), ("", "Linda Davis"), ("Linda Davis", "the")):
        assert exact_match(pred, gold) == 0 and token_f1(pred, gold) == 0, (pred, gold)
    assert exact_match("the Linda Davis!", "linda davis") == 1


def test_empty_answer_scores_zero(ans):
    s = score_example(ans, out("", ["E2"]))
    assert s["em"] == 0 and s["f1"] == 0 and s["match"] == 0
    assert s["hallucination_rate"] == 1 and s["refusal_rate"] == 0 and s["format_validity"] == 0


# ------------------------------------------------------------------ support (answer-aware grounding)
def test_answer_supported_lexical():
    from factuality.metrics import answer_supported

    chunk = {"title": "Reba McEntire", "text": "The song was a duet with Linda Davis in 1993."}
    assert answer_supported("Linda Davis", [chunk])
    assert answer_supported("the davis, linda", [chunk])            # normalised tokens, any order
    assert answer_supported("Reba McEntire", [chunk])                # the title is part of the chunk
    assert not answer_supported("banana", [chunk])
    assert not answer_supported("Linda Davis", [])                   # cites nothing
    assert not answer_supported("", [chunk]) and not answer_supported("The", [chunk])
    assert not answer_supported("insufficient evidence", [chunk])    # a refusal is no answer
    other = {"title": "x", "text": "McEntire"}
    assert not answer_supported("Linda McEntire", [{"title": "y", "text": "Linda"}, other])  # one chunk must hold it
    # verdicts: FEVER labels on FEVER, yes / no on QA: supported when they cite evidence
    assert answer_supported("Supported.", [chunk], source="fever") and answer_supported("REFUTES", [chunk], "fever")
    assert not answer_supported("SUPPORTS or REFUTES", [chunk], source="fever")
    assert not answer_supported("Linda Davis", [chunk], source="fever")   # on FEVER only a verdict is an answer
    assert answer_supported("yes", [chunk], source="hotpotqa") and not answer_supported("yes", [], "hotpotqa")


def test_support_checker_is_pluggable(ans):
    from factuality.config import ConfigError
    from factuality.metrics import answer_supported, register_support_checker

    seen = []

    def nli(answer, cited_chunks, *, source=None, question=None):
        seen.append((answer, len(cited_chunks), source, question))
        return answer == "banana"

    chunk = "The song was a duet with Linda Davis."
    assert answer_supported("banana", [chunk], checker=nli) and not answer_supported("Linda Davis", [chunk], checker=nli)
    register_support_checker("test-nli", nli)
    s = score_example(ans, out("banana", ["E2"]), checker="test-nli")
    assert s["hallucination_rate"] == 0 and seen[-1] == ("banana", 1, "nq", ans["question"])
    assert score_example(ans, out("banana", ["E2"]))["hallucination_rate"] == 1       # default: lexical
    with pytest.raises(ConfigError, match="not registered.*lexical"):
        score_example(ans, out("banana", ["E2"]), checker="no-such-checker")


def test_hallucination_looks_at_the_answer(ans):
    s = score_example(ans, out("banana", ["E2"]))                    # constant answer citing the gold chunk
    assert s["hallucination_rate"] == 1 and s["citation_hallucination_rate"] == 0
    assert s["citation_f1"] == 1 and s["grounded_citation_precision"] == 0 and s["grounded_citation_recall"] == 0
    assert s["correct_grounded"] == 0
    ex = make_example(7, gold_position=1)
    ev = [dict(c) for c in ex["evidence"]]
    ev[0]["text"] = "A distractor that also names Linda Davis."
    ex = with_hash({**{k: v for k, v in ex.items() if k != "hash"}, "evidence": ev})
    s = score_example(ex, out("Linda Davis", ["E1"]))                # right answer, in a non-gold chunk it cites
    assert s["hallucination_rate"] == 0 and s["citation_hallucination_rate"] == 1
    assert s["correct_grounded"] == 0 and s["answer_correctness_recall"] == 1   # correct, not grounded in gold


# ------------------------------------------------------------------ lenient content scoring
def test_lenient_match_scores_prose():
    ex = make_example(20, answer="2005")
    s = score_example(ex, "The answer is: 2005")                     # the base model's prose
    assert s["format_validity"] == 0 and s["em"] == 0 and s["match"] == 1
    assert s["hallucination_rate"] == 1                              # no citations: not grounded
    s = score_example(ex, out("It was released in 2005, I think", ["E2"]))
    assert s["em"] == 0 and s["match"] == 1 and s["f1"] == pytest.approx(2 * (1 / 7) * 1 / (1 / 7 + 1))  # 1 of 7 tokens
    assert score_example(ex, out("20050", ["E2"]))["match"] == 0     # whole tokens only
    assert score_example(ex, out("insufficient evidence", []))["match"] == 0
    assert score_example(ex, '{"answer": "2005", "cit')["match"] == 1   # a broken object: its answer field


# ------------------------------------------------------------------ FEVER
def test_fever_labels():
    from factuality.metrics import fever_label, fever_label_lenient

    for text, label in (("SUPPORTS", "SUPPORTS"), ("Supported.", "SUPPORTS"), ("true", "SUPPORTS"),
                        ("The claim is supported", "SUPPORTS"), ("REFUTES", "REFUTES"), ("False", "REFUTES"),
                        ("NOT ENOUGH INFO", "NOT ENOUGH INFO"), ("not enough information", "NOT ENOUGH INFO"),
                        ("Insufficient evidence.", "NOT ENOUGH INFO"), ("SUPPORTS or REFUTES", None), ("Paris", None)):
        assert fever_label(text) == label, text
    assert fever_label_lenient("I think the evidence clearly supports this.") == "SUPPORTS"
    assert fever_label_lenient("It either supports or refutes it") is None


def test_fever_accuracy_is_kept_out_of_qa_em():
    sup = make_example(30, source="fever")                            # SUPPORTS, evidence E2
    nei = with_hash({**{k: v for k, v in make_example(31, source="fever", answerable=False).items() if k != "hash"},
                     "answers": ["REFUTES"]})                         # its evidence removed: the gold is NEI
    s = score_example(sup, out("Supported", ["E2"]))
    assert s["fever_accuracy"] == 1 and s["em"] is None and s["f1"] is None and s["match"] is None
    assert s["hallucination_rate"] == 0 and s["correct_grounded"] == 1
    s = score_example(sup, out("SUPPORTS or REFUTES", ["E2"]))
    assert s["fever_accuracy"] == 0 and s["hallucination_rate"] == 1
    assert score_example(sup, out("SUPPORTS", ["E1"]))["correct_grounded"] == 0      # right verdict, wrong evidence
    assert score_example(nei, out("insufficient evidence", []))["fever_accuracy"] == 1
    assert score_example(nei, out("REFUTES", ["E1"]))["fever_accuracy"] == 0
    assert score_example(sup, "The evidence supports the claim.")["fever_accuracy_lenient"] == 1
    assert score_example(sup, "The evidence supports the claim.")["fever_accuracy"] == 0


# ------------------------------------------------------------------ refusal detection
REFUSAL_VARIANTS = ("Insufficient evidence.", "INSUFFICIENT EVIDENCE!", '"insufficient evidence"',
                    "  insufficient\n evidence ", "\u201cInsufficient evidence\u201d", "Not enough information.",
                    "NOT ENOUGH INFO", "I don\u2019t know.")
NOT_REFUSALS = ("insufficient evidence for 1993", "evidence", "Linda Davis", "insufficientevidence", "")


@pytest.mark.parametrize("variant", REFUSAL_VARIANTS)
def test_non_canonical_refusals_are_refusals(unans, ans, variant):
    s = score_example(unans, out(variant, []))
    assert s["refusal_rate"] == 1 and s["refusal_recall"] == 1 and s["refusal_precision"] == 1
    assert s["hallucination_rate"] is None and s["refusal_noncanonical"] == 1 and s["format_validity"] == 0
    s = score_example(ans, out(variant, []))
    assert s["refusal_precision"] == 0 and s["em"] == 0 and s["answered_recall"] == 0


def test_canonical_refusal_and_non_refusals(unans):
    s = score_example(unans, out("insufficient evidence", []))
    assert s["refusal_noncanonical"] == 0 and s["format_validity"] == 1
    for text in NOT_REFUSALS:
        assert score_example(unans, out(text, ["E1"]))["refusal_rate"] == 0, text


def test_parser_schema_and_metrics_share_one_refusal_rule():
    import jsonschema

    from factuality.prompts import (
        OUTPUT_SCHEMA,
        REFUSAL_PATTERN,
        is_refusal,
        parse_output,
    )

    refusal_rule = jsonschema.Draft202012Validator(OUTPUT_SCHEMA["if"])
    for text in REFUSAL_VARIANTS + NOT_REFUSALS + ("insufficient evidence",):
        assert refusal_rule.is_valid({"answer": text}) == is_refusal(text), text
        p = parse_output(json.dumps({"answer": text, "citations": ["E1"], "confidence": 0.5}), ["E1"])
        assert p.refusal == is_refusal(text) and p.valid == (not is_refusal(text) and bool(text)), text
    p = parse_output(out("INSUFFICIENT EVIDENCE!", []), ["E1"])
    assert p.refusal and not p.valid and "refusal must be worded exactly 'insufficient evidence'" in p.reason
    assert not re.search(r"\(\?[aiLmsux]", REFUSAL_PATTERN)           # no inline flags: valid in any JSON Schema validator


# ------------------------------------------------------------------ Trust-Score family, by hand
def test_trust_score_family_by_hand(ans, unans):
    a2, a3, a4 = (make_example(i, answerable=True, gold_position=1) for i in (40, 41, 42))
    u2 = make_example(43, answerable=False)
    scores = [
        score_example(ans, out("Linda Davis", ["E2"])),               # A: right, grounded
        score_example(a2, out("insufficient evidence", [])),          # B: answerable, refused
        score_example(unans, out("insufficient evidence", [])),       # C: right refusal
        score_example(u2, out("Linda Davis", ["E1"])),                # D: answers an unanswerable one
        score_example(a3, out("Linda Davis", ["E1", "E2"])),          # E: right, grounded, P = 1/2
        score_example(a4, out("banana", ["E2"])),                     # F: wrong, unsupported
    ]
    m = {k: v["value"] for k, v in aggregate(scores, boot=None)["metrics"].items()}
    # answers A D E F; answerable A B E F; refusals B C; unanswerable C D
    assert m["answered_precision"] == 0.75 and m["answered_recall"] == 0.75 and m["answered_f1"] == 0.75
    assert m["refusal_precision"] == 0.5 and m["refusal_recall"] == 0.5 and m["refusal_f1"] == 0.5
    assert m["grounded_refusal_f1"] == pytest.approx(0.625)
    assert m["answer_correctness_f1"] == 0.5 and m["correct_grounded_f1"] == 0.5 and m["correct_grounded"] == 0.5
    # grounded citation P over answers: A 1, D 0, E 1/2, F 0 (unsupported) = 3/8; R over answerable: A 1, B 0, E 1, F 0
    assert m["grounded_citation_precision"] == 0.375 and m["grounded_citation_recall"] == 0.5
    gc = 2 * 0.375 * 0.5 / 0.875
    assert m["grounded_citation_f1"] == pytest.approx(gc)
    assert m["trust_score"] == pytest.approx((0.625 + 0.5 + gc) / 3)
    assert m["hallucination_rate"] == 0.5 and m["citation_hallucination_rate"] == 0.25   # D F / D
    n = aggregate(scores, boot=None)["metrics"]
    assert n["answered_precision"]["n"] == 4 and n["trust_score"]["n"] == 6 and n["correct_grounded_f1"]["n"] == 5


def test_nothing_answered_scores_zero_not_undefined(ans, unans):
    scores = [score_example(ans, out("insufficient evidence", [])), score_example(unans, out("insufficient evidence", []))]
    m = {k: v["value"] for k, v in aggregate(scores, boot=None)["metrics"].items()}
    assert m["answered_precision"] is None and m["answered_f1"] == 0
    assert m["correct_grounded_f1"] == 0 and m["grounded_citation_f1"] == 0
    assert m["refusal_f1"] == pytest.approx(2 / 3)                    # P 1/2, R 1
    assert m["trust_score"] == pytest.approx((2 / 3 / 2) / 3)
    assert aggregate([], boot=None)["metrics"]["trust_score"]["value"] is None


# ------------------------------------------------------------------ confidence
def test_calibration_by_hand():
    from factuality.metrics import risk_coverage

    exs = [make_example(50 + i, gold_position=1) for i in range(6)]
    raws = [out("Linda Davis", ["E2"], 0.9), out("wrong", ["E2"], 0.9), out("Linda Davis", ["E2"], 0.6),
            out("wrong", ["E2"], 0.2), out("insufficient evidence", [], 0.7),    # a refusal: not an answer
            '{"answer": "Linda Davis", "citations": ["E2"]}']                    # no confidence stated
    scores = [score_example(e, r) for e, r in zip(exs, raws)]
    m = aggregate(scores, boot=None)["metrics"]
    assert m["ece"]["n"] == 4 and m["brier"]["n"] == 4
    # bins: 0.9 -> y 1 of 2 (|1 - 1.8|), 0.6 -> |1 - 0.6|, 0.2 -> |0 - 0.2|; over 4
    assert m["ece"]["value"] == pytest.approx((0.8 + 0.4 + 0.2) / 4)
    assert m["brier"]["value"] == pytest.approx((0.01 + 0.81 + 0.16 + 0.04) / 4)
    # levels 0.9 (2 answers, 1 wrong), 0.6 (3, 1 wrong), 0.2 (4, 2 wrong)
    assert m["aurc"]["value"] == pytest.approx(2 / 4 * 1 / 2 + 1 / 4 * 1 / 3 + 1 / 4 * 2 / 4)
    curve = risk_coverage([0.9, 0.9, 0.6, 0.2], [1, 0, 1, 0])
    assert curve["coverage"] == [0.5, 0.75, 1.0] and curve["risk"] == pytest.approx([0.5, 1 / 3, 0.5])
    assert curve["aurc"] == pytest.approx(m["aurc"]["value"])
    s = score_example(exs[0], out("Linda Davis", ["E2"], 7))          # out of range: clipped (and invalid)
    assert s["confidence"] == 1.0 and s["brier"] == 0


# ------------------------------------------------------------------ ratio measures in the bootstrap
def test_resample_weights_give_what_the_resampled_list_gives(ans, unans):
    """Every measure (masked means, F1s, Trust-Score, ECE, AURC) on a bootstrap resample equals
    the same measure computed directly on the resampled list of examples."""
    from factuality.metrics import METRICS, columns_for, measure_matrix, measure_values

    rng = np.random.default_rng(3)
    exs = [make_example(60 + i, source=("nq", "fever")[i % 5 == 0], answerable=bool(i % 3), gold_position=1)
           for i in range(15)]

    def output(kind):
        cite, conf = [f"E{rng.integers(1, 4)}"], float(rng.choice([0.2, 0.5, 0.9]))
        return {0: out("Linda Davis", cite, conf), 1: out("banana", cite, conf), 2: out("SUPPORTS", cite, conf),
                3: out("insufficient evidence", []), 4: "Linda Davis, in prose"}[kind]

    scores = [score_example(e, output(rng.integers(5))) for e in exs]
    names = list(METRICS)
    cols = columns_for(names)
    vals, mask = measure_matrix(scores, cols)
    for _ in range(5):
        idx = rng.integers(0, len(scores), size=len(scores))
        weights = np.bincount(idx, minlength=len(scores)).astype(float)[None, :]
        got = measure_values(names, cols, vals, mask, weights)[0]
        direct = aggregate([scores[i] for i in idx], names, boot=None)["metrics"]
        for j, name in enumerate(names):
            want = direct[name]["value"]
            assert (np.isnan(got[j]) and want is None) or got[j] == pytest.approx(want), name


def test_ratio_measures_get_intervals(ans, unans):
    exs = [make_example(70 + i, answerable=bool(i % 4), gold_position=1) for i in range(40)]
    raws = [out("Linda Davis" if i % 3 else "banana", ["E2"], 0.8) if e["answerable"] or i % 8 == 0
            else out("insufficient evidence", []) for i, e in enumerate(exs)]
    m = aggregate([score_example(e, r) for e, r in zip(exs, raws)], boot=BootstrapSpec(300, seed=0))["metrics"]
    for name in ("trust_score", "correct_grounded_f1", "grounded_citation_f1", "refusal_f1", "ece", "aurc"):
        lo, hi = m[name]["ci"]
        assert lo <= m[name]["value"] <= hi and hi > lo, name
