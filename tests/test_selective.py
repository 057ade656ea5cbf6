"""Selective answering (selective.py), gold-against-model pairs (pairing.py), DPO's pair kinds
(dpo_pairs.load_pairs) and the risk-coverage baseline (metrics.risk_coverage)."""
import json

import pytest

from factuality.dpo_pairs import load_pairs
from factuality.metrics import risk_coverage
from factuality.pairing import Candidate, select_pairs
from factuality.prompts import REFUSAL_ANSWER, parse_output
from factuality.records import RecordError
from factuality.report import rescore
from factuality.selective import (
    REFUSAL_TEXT,
    calibrated,
    choose_threshold,
    fit_platt,
    fit_selective,
    selective_rows,
)


def example(i, answerable=True):
    return {"id": f"q{i}", "source": "nq", "answerable": answerable, "answers": ["Paris"] if answerable else [],
            "question": "capital of France?",
            "evidence": [{"id": "E1", "title": "France", "text": "Paris is the capital of France."},
                         {"id": "E2", "title": "Spain", "text": "Madrid is the capital of Spain."}],
            "support": [{"chunk_id": "E1", "start": 0, "end": 5}] if answerable else []}


def row(answer, prob, cite="E1"):
    return {"raw_output": json.dumps({"answer": answer, "citations": [cite], "confidence": 1.0}), "answer_prob": prob}


def test_platt_keeps_the_order_and_fixes_the_scale():
    probs = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5]
    correct = [0, 0, 0, 1, 0, 1, 1, 1]
    fit = fit_platt(probs, correct)
    cal = [calibrated(p, fit) for p in probs]
    assert cal == sorted(cal) and fit["a"] > 0
    assert abs(sum(cal) / len(cal) - sum(correct) / len(correct)) < 0.05   # logistic regression matches the mean
    assert fit_platt(probs[:3], correct[:3]) is None                          # too few
    assert fit_platt(probs, [1] * len(probs)) is None                         # nothing to tell apart
    assert calibrated(0.3, None) == 0.3 and calibrated(None, fit) is None


def test_threshold_withholds_the_doubtful_answers_when_that_pays():
    """Wrong answers with low probability, right ones with high: the chosen threshold turns the wrong
    ones into refusals (and the unanswerable one's answer too), raising the validation Trust-Score."""
    exs = [example(i) for i in range(6)] + [example(6, answerable=False)]
    rows = {"q0": row("Paris", 0.9), "q1": row("Paris", 0.8), "q2": row("Paris", 0.7),
            "q3": row("Madrid", 0.05, "E2"), "q4": row("Lyon", 0.04), "q5": row("Paris", 0.6),
            "q6": row("Paris", 0.03)}
    got = fit_selective(exs, rows, rescore)
    assert got["trust_score"] > got["trust_score_without"] and got["withheld"] >= 1
    sel = selective_rows(rows, got["fit"], got["threshold"])
    withheld = sorted(i for i, r in sel.items() if "abstained_from" in r)
    assert "q6" in withheld and not {"q0", "q1", "q2", "q5"} & set(withheld)   # the lowest go first, no right answer
    assert len(withheld) == got["withheld"]
    for i in withheld:
        assert sel[i]["raw_output"] == REFUSAL_TEXT and sel[i]["abstained_from"] == rows[i]["raw_output"]
        assert parse_output(sel[i]["raw_output"], ["E1", "E2"]).valid
    assert sel["q0"]["token_prob"] == 0.9 and sel["q0"]["answer_prob"] == calibrated(0.9, got["fit"])
    # with every answer right, nothing is withheld (ties go to the lowest threshold)
    good = {f"q{i}": row("Paris", 0.5 + i / 20) for i in range(6)}
    assert choose_threshold(exs[:6], good, None, rescore)["threshold"] == 0.0


def test_risk_coverage_reports_random_abstention():
    rc = risk_coverage([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0])
    assert rc["random_aurc"] == 0.5 and rc["aurc"] < rc["random_aurc"]
    worst = risk_coverage([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0])
    assert worst["aurc"] > worst["random_aurc"]


def cand(origin, text, score):
    c = Candidate(origin=origin, text=text)
    c.verifier = c.score = score
    return c


def test_gold_pairs_take_the_model_worst_mistakes():
    gold = cand("gold", '{"answer": "Paris", "citations": ["E1"], "confidence": 1.0}', 1.0)
    sft = cand("sft", '{"answer": "E1", "citations": ["E1"], "confidence": 1.0}', 0.2)
    s1 = cand("sft_sample_1", '{"answer": "Madrid", "citations": ["E2"], "confidence": 1.0}', 0.1)
    s2 = cand("sft_sample_2", gold.text, 1.0)   # a sample that is the gold answer: never paired with it
    pairs, drops = select_pairs([sft, s1, s2, gold], 0.12, 0, gold_pairs_per_prompt=1)
    gp = [p for p in pairs if p.kind == "gold_vs_model"]
    assert len(gp) == 1 and gp[0].chosen is gold and gp[0].rejected is s1 and gp[0].margin == pytest.approx(0.9)
    assert drops[("gold_vs_model", "over_pairs_per_prompt")] == 1 and drops[("gold_vs_model", "identical")] == 1
    pairs, _ = select_pairs([sft, s1, s2, gold], 0.12, 0, gold_pairs_per_prompt=0)
    assert not [p for p in pairs if p.kind == "gold_vs_model"]


def test_dpo_pair_kinds(tmp_path):
    from factuality.records import SCHEMA_VERSION

    def pair(i, kind, split="train"):
        return {"schema_version": SCHEMA_VERSION, "id": f"p{i}", "example_id": f"q{i}", "split": split,
                "source": "nq", "prompt": "p", "chosen": "{}", "rejected": "{} ", "margin": 0.5, "chosen_score": 1.0,
                "rejected_score": 0.5, "kind": kind, "chosen_origin": "gold", "rejected_origin": "sft",
                "evidence": [], "support_ids": [], "answers": ["a"], "answerable": True}

    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(pair(i, k)) + "\n" for i, k in
                            enumerate(["model", "gold_vs_model", "perturb:unknown_id", "perturb:cite_all"])))
    assert len(load_pairs(path)[0]) == 4
    assert [p["kind"] for p in load_pairs(path, kinds=["perturb"])[0]] == ["perturb:unknown_id", "perturb:cite_all"]
    assert [p["kind"] for p in load_pairs(path, kinds=["model", "perturb:cite_all"])[0]] == ["model", "perturb:cite_all"]
    with pytest.raises(RecordError, match="of kinds nonexistent"):
        load_pairs(path, kinds=["nonexistent"])


def test_refusal_text_is_the_canonical_refusal():
    parsed = parse_output(REFUSAL_TEXT, [])
    assert parsed.valid and parsed.refusal and parsed.answer == REFUSAL_ANSWER and parsed.citations == []
