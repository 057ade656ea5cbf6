"""Every metric on hand-made cases whose values were computed by hand (definitions: factuality/metrics.py).

make_example(gold_position=1) has evidence E1, E2, E3 with the answer "Linda Davis" in E2 only.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from factuality.metrics import (BootstrapSpec, aggregate, breakdown, bucket_index, bucket_labels, check_boundaries,
                                paired_deltas, score_example)
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
