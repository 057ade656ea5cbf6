"""ALCE's and Trust-Eval's measures (factuality/alce.py, factuality/trusteval.py) equal the reference
implementations' on a fixture of outputs with their edge cases, under one stubbed entailment function.

The references are transcriptions of ALCE's eval.py and Trust-Eval's metrics.py (tests/reference/),
run with the same stub and with NLTK Punkt's sentence splits recorded in the fixture; ours run with
our splitter, which the first test holds to the recorded splits."""
from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from factuality import alce, trusteval
from tests.reference import alce_eval, trust_eval_metrics

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "published" / "outputs.json").read_text())
ASQA, ELI5 = FIXTURE["asqa"], FIXTURE["eli5"]
SPLITS = {it["output"]: it["sentences"] for it in ASQA + ELI5}


def stub_nli(premise: str, hypothesis: str) -> int:
    """Entailed when every word of 4+ characters of the hypothesis occurs in the premise."""
    words = lambda s: set(re.findall(r"[a-z0-9]+", s.lower()))
    return int({w for w in words(hypothesis) if len(w) >= 4} <= words(premise))


def recorded_split(text: str) -> list[str]:
    return SPLITS[text]   # a KeyError here means the reference saw a text the fixture has no split for


def te_args():
    try:
        from fuzzywuzzy import fuzz   # the library Trust-Eval uses, when installed
    except ImportError:
        fuzz = SimpleNamespace(partial_ratio=trusteval.partial_ratio)
    return SimpleNamespace(run_nli=stub_nli, sent_tokenize=recorded_split, fuzz=fuzz, at_most_citations=3,
                           refusal_flag=trusteval.REFUSAL_FLAG, refusal_threshold=trusteval.REFUSAL_THRESHOLD)


def test_fixture_has_the_edge_cases():
    cases = " | ".join(it["case"] for it in ASQA)
    assert len(ASQA) + len(ELI5) >= 20
    for needed in ("no citation", "out-of-range", "after the full stop", "redundant second citation"):
        assert needed in cases


def test_our_sentence_splitter_gives_punkts_splits():
    for it in ASQA + ELI5:
        assert alce.split_sentences(it["output"]) == it["sentences"], it["case"]


@pytest.mark.parametrize("subset", ["all", "one_by_one"])
def test_alce_measures_equal_alces_eval(subset):
    groups = [ASQA] if subset == "all" else [[it] for it in ASQA]
    for items in groups:
        ours = alce.alce_measures(items, lambda p, h: bool(stub_nli(p, h)))
        theirs = alce_eval.main(items, stub_nli, recorded_split, at_most_citations=3)
        for key in ("length", "str_em", "str_hit", "citation_rec", "citation_prec"):
            if ours[key] is None:   # every output without a sentence: ALCE's mean of nothing
                assert all(not it["output"].strip() for it in items) and theirs[key] != theirs[key]
                continue
            assert ours[key] == pytest.approx(theirs[key], abs=1e-9), (key, [it["case"] for it in items])


def test_alce_claims_equal_alces_eval():
    ours = alce.alce_measures(ELI5, lambda p, h: bool(stub_nli(p, h)))
    theirs = alce_eval.main([{**it, "qa_pairs": None} for it in ELI5], stub_nli, recorded_split, claims_nli=True)
    for key in ("claims_nli", "citation_rec", "citation_prec", "length"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-9), key


def test_alce_numbers_move_with_the_entailment_function():
    yes = alce.alce_measures(ASQA, lambda p, h: True)
    no = alce.alce_measures(ASQA, lambda p, h: False)
    stub = alce.alce_measures(ASQA, lambda p, h: bool(stub_nli(p, h)))
    assert no["citation_rec"] == 0 and yes["citation_rec"] > stub["citation_rec"] > 0


@pytest.mark.parametrize("kind,items", [("em", ASQA), ("cm", ELI5)])
def test_trust_eval_measures_equal_trust_evals(kind, items):
    ours = trusteval.trust_eval_measures(items, lambda p, h: bool(stub_nli(p, h)), kind=kind)
    theirs = trust_eval_metrics.evaluate(items, te_args(), eval_type=kind)
    keys = [k for k in theirs if k != "num_samples"]
    assert len(keys) >= 15
    for key in keys:
        assert ours[key] == pytest.approx(float(theirs[key]), abs=1e-9), key
    assert 0 < ours["trust_score"] < 100


def test_trust_eval_differs_from_alce_where_it_says_it_does():
    """The redundant citation that holds the same gold answer: ALCE counts it an over-citation,
    Trust-Eval keeps it."""
    it = next(i for i in ASQA if "Trust-Eval keeps it" in i["case"])
    entails = lambda p, h: bool(stub_nli(p, h))
    assert alce.citation_scores(it, entails)["precision"] == 0.5
    assert alce.citation_scores(it, entails, needed=trusteval._shares_a_found_answer)["precision"] == 1.0


def test_refusal_rule_is_fuzzywuzzys_partial_ratio():
    # fuzzywuzzy's documented examples
    assert trusteval.partial_ratio("YANKEES", "NEW YORK YANKEES") == 100
    assert trusteval.partial_ratio("NEW YORK METS", "NEW YORK YANKEES") == 69
    assert trusteval.partial_ratio("this is a test", "this is a test!") == 100
    assert trusteval.is_refusal({"output": "I apologize, but I couldn't find an answer to that [1]."})
    assert not trusteval.is_refusal({"output": "The Eiffel Tower was completed in 1889 [1]."})
    assert not trusteval.is_refusal({"output": "I apologize, but I couldn't find an answer.", "refusal": False})
