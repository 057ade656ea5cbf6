"""The report layer (factuality/report.py) and the headline measures against degenerate systems.

The fixture test set mixes every kind of example the corpus has: answerable QA (one and two
support chunks, aliases, a yes/no comparison), unanswerable QA (support removed, answers kept),
FEVER SUPPORTS / REFUTES, FEVER NOT ENOUGH INFO and a FEVER claim whose evidence was removed.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import evaluate_sft
from factuality.bootstrap import BootstrapSpec, aggregate
from factuality.config import parse_config
from factuality.metrics import HEADLINE, METRICS, score_example
from factuality.prompts import REFUSAL_ANSWER, dump_output, gold_output, is_refusal
from factuality.records import with_hash, write_jsonl
from factuality.report import (
    TABLE_METRICS,
    compute_metrics,
    format_comparison_table,
    format_summary,
    write_plots,
)
from factuality.testing import make_example


# --------------------------------------------------------------------------------------------
# Fixture test set and systems
# --------------------------------------------------------------------------------------------
def _edit(ex: dict, **fields) -> dict:
    ex = {k: v for k, v in ex.items() if k != "hash"}
    ex.update(fields)
    return with_hash(ex)


def fixture_test_set() -> list[dict]:
    out = [
        make_example(1, source="nq", answer="Linda Davis", gold_position=1),
        make_example(2, source="popqa", answer="Alfred Hitchcock", gold_position=0),
        make_example(3, source="nq", answer="1993 Grammy", gold_position=2, n_chunks=4),
        make_example(8, source="nq", answerable=False),
        make_example(9, source="popqa", answerable=False),
        make_example(10, source="fever", answer="Reba McEntire", gold_position=0),      # SUPPORTS
        make_example(11, source="fever", answer="Reba McEntire", gold_position=2),      # -> REFUTES below
        make_example(12, source="fever", answerable=False),                             # NOT ENOUGH INFO
        make_example(13, source="fever", answerable=False),                             # evidence removed
    ]
    out[1] = _edit(out[1], answers=["Alfred Hitchcock", "Hitchcock"])
    # two support chunks (a HotpotQA bridge question)
    hp = make_example(4, source="hotpotqa", answer="Kenny Rogers", gold_position=0)
    text = "Kenny Rogers recorded the album in Nashville."
    ev = [dict(c) for c in hp["evidence"]]
    ev[2] = {**ev[2], "text": text}
    out.append(_edit(hp, evidence=ev, support=hp["support"] + [{"chunk_id": "E3", "start": 0, "end": 12}]))
    # a yes/no comparison: no span holds "yes"; both paragraphs are support
    yn = make_example(5, source="hotpotqa", answer="Linda Davis", gold_position=1)
    out.append(_edit(yn, question="are both singers from texas", answers=["yes"],
                     support=yn["support"] + [{"chunk_id": "E1", "start": 0, "end": 7}]))
    # unanswerable QA with its answers kept (support removed: RAFT's no-oracle case)
    out[3] = _edit(out[3], answers=["Linda Davis"], meta={"unanswerable_reason": "no_oracle"})
    out[4] = _edit(out[4], answers=["Brooks"], meta={"unanswerable_reason": "no_oracle"})
    out[6] = _edit(out[6], answers=["REFUTES"])
    out[7] = _edit(out[7], answers=["NOT ENOUGH INFO"])
    out[8] = _edit(out[8], answers=["REFUTES"], meta={"unanswerable_reason": "no_oracle"})
    return out


def _gold_ids(ex):
    return list(dict.fromkeys(s["chunk_id"] for s in ex["support"]))


def _obj(answer, citations, confidence=1.0):
    return {"answer": answer, "citations": citations, "confidence": confidence}


def _never_refuse_answer(ex):
    """The gold answer even where the evidence lacks it (a FEVER claim with no verdict: SUPPORTS)."""
    return "SUPPORTS" if is_refusal(ex["answers"][0]) else ex["answers"][0]


def _refusal():
    return _obj(REFUSAL_ANSWER, [], 0.0)


SYSTEMS = {
    "gold": gold_output,
    # the "banana": a constant answer citing the gold chunks, refusing the rest
    "constant_answer_gold_citations": lambda e: _obj("banana", _gold_ids(e)) if e["answerable"] else _refusal(),
    # every output cites every chunk (so it never refuses: a refusal cites nothing); gold answers
    "cite_every_chunk": lambda e: _obj(e["answers"][0] if e["answerable"] else _never_refuse_answer(e),
                                       [c["id"] for c in e["evidence"]]),
    "refuse_everything": lambda e: _refusal(),
    # gold answers and citations, and the gold answer (citing the first chunk) where the evidence lacks it
    "never_refuse": lambda e: gold_output(e) if e["answerable"] else _obj(_never_refuse_answer(e),
                                                                          [e["evidence"][0]["id"]]),
    "constant_supports": lambda e: _obj("SUPPORTS", ["E1"]),
    "copy_question": lambda e: _obj(e["question"], _gold_ids(e) or ["E1"]),
    "empty_answers": lambda e: _obj("", _gold_ids(e)),
}


def system_outputs(kind: str, examples) -> dict[str, str]:
    return {e["id"]: dump_output(SYSTEMS[kind](e)) for e in examples}


def headline(kind: str, examples) -> dict[str, float | None]:
    raw = system_outputs(kind, examples)
    scores = [score_example(e, raw[e["id"]]) for e in examples]
    return {k: v["value"] for k, v in aggregate(scores, HEADLINE, boot=None)["metrics"].items()}


# --------------------------------------------------------------------------------------------
# Degenerate systems against the gold system
# --------------------------------------------------------------------------------------------
def test_gold_system_scores_one_on_every_headline_measure():
    examples = fixture_test_set()
    assert headline("gold", examples) == dict.fromkeys(HEADLINE, 1.0)
    raw = system_outputs("gold", examples)
    m = aggregate([score_example(e, raw[e["id"]]) for e in examples], boot=None)["metrics"]
    for name in ("em", "match", "fever_accuracy", "refusal_precision", "refusal_recall", "format_validity",
                 "grounded_refusal_f1", "answer_correctness_f1", "correct_grounded"):
        assert m[name]["value"] == 1.0, name
    assert m["hallucination_rate"]["value"] == 0 and m["ece"]["value"] == 0 and m["aurc"]["value"] == 0


@pytest.mark.parametrize("kind", [k for k in SYSTEMS if k != "gold"])
def test_every_degenerate_system_is_below_gold_on_every_headline_measure(kind):
    examples = fixture_test_set()
    got = headline(kind, examples)
    below = {name: 1.0 - (got[name] or 0.0) for name in HEADLINE}
    assert all(v is not None for v in got.values()), got
    assert all(gap > 0 for gap in below.values()), f"{kind}: {got}"
    assert max(below.values()) >= 0.25, f"{kind}: {got}"


def test_the_old_measures_were_gamed_by_these_systems():
    """What the headline replaces: each old figure a degenerate system maxed out."""
    examples = fixture_test_set()

    def overall(kind):
        raw = system_outputs(kind, examples)
        return aggregate([score_example(e, raw[e["id"]]) for e in examples], boot=None)["metrics"]

    banana = overall("constant_answer_gold_citations")
    assert banana["citation_hallucination_rate"]["value"] == 0 and banana["citation_f1"]["value"] == 1
    assert banana["refusal_precision"]["value"] == 1 and banana["refusal_recall"]["value"] == 1
    assert banana["grounded_refusal_f1"]["value"] == 1          # refusal behaviour alone is perfect...
    assert banana["hallucination_rate"]["value"] == 1          # ...but no answer is in its cited chunk
    supports = overall("constant_supports")
    assert supports["em"]["value"] == 0 and supports["em"]["n"] == 5   # FEVER no longer pooled into QA EM
    assert supports["fever_accuracy"]["value"] == pytest.approx(1 / 4)   # right on the one SUPPORTS claim of 4


def test_citing_every_chunk_but_refusing_right_is_caught_by_citations_only():
    """A system with perfect answers and refusals whose only fault is citing every chunk: the
    correct-and-grounded F1 cannot see it (it asks for one gold citation, and there is one);
    grounded-citation F1 and Trust-Score can."""
    examples = fixture_test_set()
    raw = {e["id"]: dump_output(_obj(e["answers"][0], [c["id"] for c in e["evidence"]]) if e["answerable"]
                                else _refusal()) for e in examples}
    m = aggregate([score_example(e, raw[e["id"]]) for e in examples], HEADLINE, boot=None)["metrics"]
    assert m["correct_grounded_f1"]["value"] == 1.0
    assert m["grounded_citation_f1"]["value"] < 0.8 and m["trust_score"]["value"] < 1.0


# --------------------------------------------------------------------------------------------
# compute_metrics: N systems, comparisons on the same examples
# --------------------------------------------------------------------------------------------
def _rows(kind, examples, drop=()):
    return {i: {"raw_output": r, "output_tokens": 7} for i, r in system_outputs(kind, examples).items() if i not in drop}


@pytest.fixture()
def three_systems():
    examples = fixture_test_set()
    lacking = {examples[0]["id"], examples[6]["id"]}
    rows = {"base": _rows("refuse_everything", examples), "sft": _rows("never_refuse", examples, drop=lacking),
            "dpo": _rows("gold", examples)}
    lengths = {e["id"]: 100 * (i + 1) for i, e in enumerate(examples)}
    res = compute_metrics(examples, rows, lengths, [300, 600], BootstrapSpec(n_boot=200, seed=0),
                          comparisons=[("sft", "base"), ("dpo", "sft")])
    return examples, res


def test_every_column_and_delta_is_on_the_shared_examples(three_systems):
    examples, res = three_systems
    n = len(examples) - 2
    assert res["tags"] == ["base", "sft", "dpo"] and res["shared"] == n
    assert res["coverage"]["sft"] == {"scored": n, "missing": 2, "left_out": 0}
    assert res["coverage"]["dpo"] == {"scored": len(examples), "missing": 0, "left_out": 2}
    for tag in res["tags"]:
        assert res["metrics"][tag]["overall"]["n"] == n
    gold_on_shared = aggregate([score_example(e, system_outputs("gold", examples)[e["id"]]) for e in examples[1:6]
                                + examples[7:]], boot=None)["metrics"]
    assert res["metrics"]["dpo"]["overall"]["metrics"]["em"] == {**gold_on_shared["em"], "ci": [1.0, 1.0]}
    first, second = res["comparisons"]
    assert (first["label"], second["label"], first["n"], second["n"]) == ("sft-base", "dpo-sft", n, n)
    for name in ("correct_grounded_f1", "em", "hallucination_rate", "ece"):
        cols = {t: res["metrics"][t]["overall"]["metrics"][name]["value"] for t in res["tags"]}
        d = second["overall"][name]["delta"]
        if cols["dpo"] is not None and cols["sft"] is not None:
            assert d == pytest.approx(cols["dpo"] - cols["sft"])   # the delta is the difference of the columns
    assert set(res["deltas"]) >= {"em", "f1", "hallucination_rate", "citation_correctness"}
    assert res["deltas"]["em"] == first["overall"]["em"]["delta"] and res["delta_details"]["compared"].startswith("sft")
    tc = first["overall"]["trust_score"]
    assert tc["ci"][0] <= tc["delta"] <= tc["ci"][1]                # a ratio measure gets its interval too


def test_table_has_a_column_per_tag_and_per_comparison(three_systems):
    _, res = three_systems
    text = format_comparison_table(res)
    header = text.splitlines()[0].split()
    assert header == ["metric", "base", "sft", "dpo", "sft-base", "95%", "CI", "dpo-sft", "95%", "CI", "n"]
    labels = [METRICS[m][0] for m in TABLE_METRICS]
    body = text.splitlines()[2:]
    assert [line[:len(label)] for line, label in zip(body, labels)] == labels   # headline rows first
    assert TABLE_METRICS[:len(HEADLINE)] == HEADLINE
    md = format_comparison_table(res, markdown=True)
    assert md.splitlines()[0] == "| metric | base | sft | dpo | sft-base | 95% CI | dpo-sft | 95% CI | n |"
    hall = next(line for line in md.splitlines() if line.startswith("| Hallucination rate |"))
    assert hall.split("|")[-2].strip().count("/") == 2        # answers differ by system: n per tag
    summary = format_summary(res)
    assert "over the 9 examples every system has" in summary and "sft lacks 2" in summary
    single = {**res, "tags": ["dpo"], "comparisons": []}
    assert format_comparison_table(single).splitlines()[0].split()[:4] == ["metric", "dpo", "95%", "CI"]


def test_plots_per_group_and_risk_coverage(three_systems, tmp_path):
    _, res = three_systems
    written = write_plots(res, tmp_path / "plots")
    assert sorted(Path(p).name for p in written) == ["metrics_by_bucket.png", "metrics_by_source.png",
                                                     "risk_coverage.png"]
    assert all(Path(p).stat().st_size > 1000 for p in written)
    assert res["risk_coverage"]["base"]["n"] == 0                 # refusals state no answer confidence
    assert res["risk_coverage"]["dpo"]["aurc"] == 0.0


def test_rescoring_a_predictions_file_prints_the_new_table(tmp_path, capsys):
    examples = fixture_test_set()
    test_file = tmp_path / "test.jsonl"
    write_jsonl(test_file, examples)
    pred = tmp_path / "preds.jsonl"
    lines = [{"id": i, "raw_output": r, "model_tag": "gold"} for i, r in system_outputs("gold", examples).items()]
    lines += [{"id": i, "raw_output": r, "model_tag": "banana"}
              for i, r in system_outputs("constant_answer_gold_citations", examples).items()]
    pred.write_text("".join(json.dumps(x) + "\n" for x in lines))
    res = evaluate_sft.main(parse_config(evaluate_sft.EvalConfig, [
        "--predictions", str(pred), "--test-data", str(test_file), "--output", str(tmp_path / "re.json"),
        "--bootstrap-samples", "50", "--plots", "false", "--buckets", "500"]))
    printed = capsys.readouterr().out
    assert res["tags"] == ["gold", "banana"]
    lines = printed.splitlines()
    header_at = next(i for i, x in enumerate(lines) if x.startswith("metric"))
    assert lines[header_at].split()[:6] == ["metric", "(entailment:", "lexical)", "gold", "banana", "banana-gold"]  # no base: each against the one before
    assert lines[header_at + 2].split()[:5] == ["Correct", "&", "grounded", "F1", "1.000"]
    saved = json.loads((tmp_path / "re.json").read_text())
    assert saved["metrics"]["gold"]["overall"]["metrics"]["trust_score"]["value"] == 1.0
