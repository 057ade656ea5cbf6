"""Labelled perturbations: each kind is made where it applies and scores worse than its source."""
from __future__ import annotations

import random

import pytest

from factuality.metrics import score_example
from factuality.perturb import KINDS, perturb, perturbations
from factuality.prompts import dump_output, gold_output, parse_output
from factuality.testing import make_example

# higher is better for each; a perturbation must lower at least one (hallucination: lower is better)
VERIFIERS = ("correct_grounded", "citation_f1", "refusal_recall", "format_validity", "em")


def verdicts(example, obj) -> dict:
    s = score_example(example, raw_output=dump_output(obj))
    out = {k: s[k] for k in VERIFIERS if s[k] is not None}
    if s["hallucination_rate"] is not None:
        out["not_hallucinated"] = 1 - s["hallucination_rate"]
    return out


def test_every_kind_is_made_and_is_worse_than_its_source():
    examples = [make_example(i, source=s, answerable=(i % 3 != 2), gold_position=i % 3)
                for i, s in enumerate(["nq", "hotpotqa", "popqa", "fever"] * 3)]
    made = dict.fromkeys(KINDS, 0)
    for ex in examples:
        good = gold_output(ex)
        before = verdicts(ex, good)
        for kind, bad in perturbations(ex, good, seed=1):
            made[kind] += 1
            assert parse_output(dump_output(bad), None).answer is not None
            after = verdicts(ex, bad)
            assert any(after.get(k, 0) < v for k, v in before.items()), (kind, ex["id"], before, after)
    assert all(made.values()), made


def test_edits_do_what_they_say():
    ex = make_example(0, source="nq", answerable=True, gold_position=1)
    good = gold_output(ex)
    ids = [c["id"] for c in ex["evidence"]]
    rng = random.Random(0)
    assert perturb(ex, good, "cite_all", rng)["citations"] == ids
    assert perturb(ex, good, "missing_citation", rng)["citations"] == []
    unknown = perturb(ex, good, "unknown_id", rng)["citations"][-1]
    assert unknown not in ids
    wrong = perturb(ex, good, "distractor_entity", rng)
    assert wrong["answer"] != good["answer"] and wrong["citations"] == good["citations"]
    assert perturb(ex, good, "overconfident_wrong", rng)["confidence"] == 1.0
    assert perturb(ex, good, "refuse_answerable", rng)["answer"] == "insufficient evidence"
    assert perturb(ex, good, "answer_unanswerable", rng) is None  # answerable: does not apply
    fever = make_example(1, source="fever", answerable=True)
    flipped = perturb(fever, gold_output(fever), "flipped_verdict", rng)["answer"]
    assert {flipped, gold_output(fever)["answer"]} == {"SUPPORTS", "REFUTES"}
    assert perturb(ex, good, "flipped_verdict", rng) is None  # only a verdict flips
    entity = perturb(fever, gold_output(fever), "distractor_entity", rng)
    assert entity is None or entity["answer"] not in ("SUPPORTS", "REFUTES")
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb(ex, good, "nonsense")


def test_perturbations_are_seeded_per_example():
    ex = make_example(4, source="popqa", answerable=True)
    assert perturbations(ex, gold_output(ex), seed=3) == perturbations(ex, gold_output(ex), seed=3)
