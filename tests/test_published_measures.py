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
    assert len(ASQA) + len(ELI5) + len(FIXTURE["qampari"]) >= 20
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


def _same(ours, theirs) -> bool:
    """Equal numbers; ours None where theirs is NaN (the mean of nothing, which JSON cannot hold)."""
    theirs = float(theirs)
    if theirs != theirs:
        return ours is None or ours != ours
    return ours is not None and abs(ours - theirs) <= 1e-9


@pytest.mark.parametrize("kind,items", [("em", ASQA), ("cm", ELI5), ("em5", FIXTURE["qampari"])])
def test_trust_eval_measures_equal_trust_evals_case_by_case(kind, items):
    entails = lambda p, h: bool(stub_nli(p, h))
    for it in items:
        ours = trusteval.trust_eval_measures([it], entails, kind=kind)
        theirs = trust_eval_metrics.evaluate([it], te_args(), eval_type=kind)
        for key, value in theirs.items():
            if key != "num_samples":
                assert _same(ours[key], value), (it["case"], key, ours[key], value)


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


def test_our_outputs_become_items_with_inline_citations():
    from factuality.published import as_item
    from factuality.testing import make_example

    ex = make_example(0)   # the gold chunk is E2, the second shown
    one = as_item(ex, '{"answer": "Linda Davis", "citations": ["E2"], "confidence": 0.9}')
    assert one["output"] == "Linda Davis [2]." and one["refusal"] is False
    assert [d["answers_found"] for d in one["docs"]] == [[0], [1], [0]]
    long = as_item(ex, json.dumps({"answer": "Linda Davis sang it with Reba", "citations": [], "confidence": 0.5,
                                   "statements": [{"text": "Linda Davis sang it.", "citations": ["E2"]},
                                                  {"text": "Reba sang too", "citations": ["E1", "E3"]}]}))
    assert long["output"] == "Linda Davis sang it [2]. Reba sang too [1][3]."
    from factuality.prompts import parse_output

    parsed = parse_output(json.dumps({"answer": "x", "citations": ["E1"], "confidence": 0.5,
                                      "statements": [{"text": "x", "citations": ["E2"]}]}), ["E1", "E2", "E3"])
    assert parsed.valid and parsed.citations == ["E1", "E2"] and parsed.statements[0]["citations"] == ["E2"]
    bad = parse_output(json.dumps({"answer": "x", "citations": ["E1"], "confidence": 0.5,
                                   "statements": [{"text": "x", "citations": ["E9"]}]}), ["E1", "E2"])
    assert not bad.valid and "E9" in bad.reason
    refused = as_item(ex, '{"answer": "insufficient evidence", "citations": [], "confidence": 0.0}')
    assert refused["refusal"] is True and "[" not in refused["output"]
    free = as_item(ex, "Linda Davis sang it [2].")
    assert free["output"] == "Linda Davis sang it [2]." and free["refusal"] is None


def test_evaluate_results_carry_alce_and_trust_eval_beside_ours(tmp_path):
    import evaluate_sft
    from factuality.config import parse_config
    from factuality.records import write_jsonl
    from factuality.testing import make_example

    exs = [make_example(i, answerable=i % 3 != 2) for i in range(6)]
    write_jsonl(tmp_path / "test.jsonl", exs)
    good = '{"answer": "Linda Davis", "citations": ["E2"], "confidence": 0.9}'
    refuse = '{"answer": "insufficient evidence", "citations": [], "confidence": 0.0}'
    rows = [{"id": e["id"], "raw_output": good if e["answerable"] else refuse} for e in exs]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = parse_config(evaluate_sft.EvalConfig, [], predictions=str(tmp_path / "p.jsonl"),
                       test_data=str(tmp_path / "test.jsonl"), output=str(tmp_path / "r.json"),
                       bootstrap_samples=0, plots=False, progress=False, buckets=[300, 400])
    res = evaluate_sft.main(cfg)
    pub = json.loads((tmp_path / "r.json").read_text())["published"]
    assert pub["entailment"] == "lexical"
    te = pub["trust_eval"]["sft"]["nq"]
    assert te["macro_f1"] == 100.0 and te["calib_str_em_f1"] == 100.0   # right refusals, right answers
    assert te["answered_citation_rec"] == 100.0   # lexical: every word of "Linda Davis." is in the cited chunk
    assert pub["alce"]["sft"]["nq"]["str_em"] == pytest.approx(100 * 4 / 6)
    assert "ALCE and Trust-Eval measures" in (tmp_path / "r.md").read_text()
    assert res["metrics"]["sft"]["overall"]["metrics"]["trust_score"]["value"] == 1.0   # ours, beside theirs


QAMPARI = FIXTURE["qampari"]


def test_alce_qampari_measures_equal_alces_eval():
    ours = alce.alce_measures(QAMPARI, lambda p, h: bool(stub_nli(p, h)), qampari=True)
    theirs = alce_eval.main([{**it, "qa_pairs": None} for it in QAMPARI], stub_nli, recorded_split, qampari=True)
    keys = ("num_preds", "qampari_prec", "qampari_rec", "qampari_rec_top5", "qampari_f1", "qampari_f1_top5",
            "citation_rec", "citation_prec", "length")
    for key in keys:
        assert ours[key] == pytest.approx(float(theirs[key]), abs=1e-9), key
    assert 0 < ours["citation_rec"] < 100 and 0 < ours["qampari_f1"] < 100


def test_trust_eval_qampari_measures_equal_trust_evals():
    ours = trusteval.trust_eval_measures(QAMPARI, lambda p, h: bool(stub_nli(p, h)), kind="em5")
    theirs = trust_eval_metrics.evaluate(QAMPARI, te_args(), eval_type="em5")
    keys = [k for k in theirs if k != "num_samples"]
    assert len(keys) >= 30
    for key in keys:
        assert ours[key] == pytest.approx(float(theirs[key]), abs=1e-9), key
    assert 0 < ours["trust_score"] < 100 and ours["qampari_presence"] > 0


def test_batched_prefetch_covers_every_question_the_measures_ask():
    """published_measures scores alce.entailment_pairs in batches first; the measures then ask
    nothing new of the checker."""
    from factuality.entailment import EntailmentChecker

    class Counting(EntailmentChecker):
        spec = "stub"

        def __init__(self):
            self.batches = []
            super().__init__()

        def _score(self, pairs, kind):
            self.batches.append(len(pairs))
            return [float(stub_nli(p, h)) for p, h in pairs]

    for items, qampari in ((ASQA, False), (ELI5, False), (QAMPARI, True)):
        c = Counting()
        from factuality.published import prep

        pairs = [p for it in items for p in alce.entailment_pairs(prep(it), qampari=qampari)]
        pairs += [p for it in items for p in alce.entailment_pairs(it, qampari=qampari)]
        c.probabilities(list(dict.fromkeys(pairs)))
        n = len(c.batches)
        alce.alce_measures(items, c.entails, qampari=qampari)
        trusteval.trust_eval_measures(items, c.entails, kind="em5" if qampari else ("cm" if items is ELI5 else "em"))
        assert len(c.batches) == n, "a measure asked a pair the prefetch missed"


def test_alce_claims_and_qampari_equal_alces_eval_case_by_case():
    entails = lambda p, h: bool(stub_nli(p, h))
    for it in ELI5:
        ours = alce.alce_measures([it], entails)
        theirs = alce_eval.main([{**it, "qa_pairs": None}], stub_nli, recorded_split, claims_nli=True)
        for key in ("claims_nli", "citation_rec", "citation_prec", "length"):
            assert _same(ours[key], theirs[key]), (it["case"], key)
    for it in QAMPARI:
        ours = alce.alce_measures([it], entails, qampari=True)
        theirs = alce_eval.main([{**it, "qa_pairs": None}], stub_nli, recorded_split, qampari=True)
        for key in ("num_preds", "qampari_prec", "qampari_rec", "qampari_rec_top5", "qampari_f1",
                    "qampari_f1_top5", "citation_rec", "citation_prec", "length"):
            assert _same(ours[key], theirs[key]), (it["case"], key)
