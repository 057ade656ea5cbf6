"""ALCE / Trust-Eval data files as sources (asqa, qampari, eli5): read, drafted with the file's
documents as evidence, trained on by train_sft.py and scored by evaluate_sft.py with ALCE's and
Trust-Eval's measures beside ours."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import evaluate_sft
from factuality.config import parse_config
from factuality.records import RecordError, read_examples
from factuality.stages.build import BuildConfig, build

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parent.parent

PEOPLE = ["Linda Davis", "Reba McEntire", "Vince Gill", "Trisha Yearwood", "Garth Brooks", "Alan Jackson",
          "Faith Hill", "Tim McGraw", "Shania Twain", "Brooks Dunn", "Kenny Chesney", "Clint Black"]


def asqa_items(n: int = 12) -> list[dict]:
    """ASQA in ALCE's format: five documents per question; two hold an answer, except every fourth
    question, whose documents hold none (unanswerable in Trust-Eval's sense)."""
    items = []
    for i in range(n):
        who, year = PEOPLE[i % len(PEOPLE)], str(1980 + i)
        docs = [{"title": f"Filler {i}-{k}", "text": f"An unrelated passage {k} about country radio charts."}
                for k in range(5)]
        if i % 4 != 3:
            docs[1] = {"title": f"Duet {i}", "text": f"The duet number {i} was sung by {who} on the record."}
            docs[3] = {"title": f"Release {i}", "text": f"It was released in {year} in the United States."}
        items.append({"sample_id": f"q{i}", "question": f"Who sang duet number {i} and when was it released?",
                      "answer": f"{who} sang it; it came out in {year}.",
                      "qa_pairs": [{"question": f"Who sang duet {i}?", "short_answers": [who]},
                                   {"question": f"When was duet {i} released?", "short_answers": [year]}],
                      "docs": docs})
    return items


def write_raw(tmp_path: Path, kind: str, items) -> Path:
    data = tmp_path / "data"
    (data / "raw" / kind).mkdir(parents=True)
    (data / "raw" / kind / f"{kind}_eval_gtr_top100.json").write_text(json.dumps(items))
    return data


def build_it(data: Path, kind: str, **kw):
    cfg = BuildConfig(data_dir=str(data), sources=[kind], quiet=True, accept_new_hash=True, num_distractors=5,
                      no_oracle_fraction=0.0, **kw)
    cfg.validate()
    build(cfg)
    out = {}
    for split in ("train", "val", "test"):
        p = data / "processed" / f"{split}.jsonl"
        out[split] = read_examples(p) if p.exists() and p.stat().st_size else []
    return out


def test_asqa_file_builds_with_its_five_documents(tmp_path):
    data = write_raw(tmp_path, "asqa", asqa_items())
    splits = build_it(data, "asqa")
    recs = [r for s in splits.values() for r in s]
    assert len(recs) == 12 and all(r["source"] == "asqa" for r in recs)
    for r in recs:
        assert len(r["evidence"]) == 5, "every document of the file is shown"
        q = int(r["meta"]["original_id"][1:])
        assert r["answerable"] == (q % 4 != 3)
        assert r["meta"]["answer_groups"] == [[PEOPLE[q % len(PEOPLE)]], [str(1980 + q)]]
        found = r["meta"]["answers_found"]
        assert sorted(map(tuple, found.values())) == (sorted([(0, 0)] * 3 + [(1, 0), (0, 1)]) if r["answerable"]
                                                       else [(0, 0)] * 5)
        gold_ids = set(r["meta"]["gold_chunk_ids"])
        assert len(gold_ids) == (2 if r["answerable"] else 0)


def test_a_bad_asqa_record_names_file_index_and_field(tmp_path):
    items = asqa_items(3)
    items[1]["qa_pairs"] = [{"short_answers": []}]
    data = write_raw(tmp_path, "asqa", items)
    with pytest.raises(RecordError, match=r"asqa_eval_gtr_top100\.json\[1\]: qa_pairs: expected a non-empty list"):
        build_it(data, "asqa")


def test_eli5_and_qampari_files_build(tmp_path):
    eli5 = [{"question_id": f"e{i}", "question": f"Why does thing {i} happen?", "answer": "Because of reasons.",
             "claims": [f"thing {i} happens because of heat", "the sky is blue"],
             "docs": [{"title": "Heat", "text": f"Heat: thing {i} happens because of heat.", "answers_found": [1, 0]},
                      {"title": "Other", "text": "Nothing here.", "answers_found": [0, 0]}]} for i in range(4)]
    recs = [r for s in build_it(write_raw(tmp_path / "e", "eli5", eli5), "eli5").values() for r in s]
    assert len(recs) == 4 and all(r["answerable"] and r["meta"]["claims"] for r in recs)
    assert all(r["meta"]["answers_found_from"] == "file" for r in recs)
    qampari = [{"id": f"m{i}", "question": f"Which singers recorded album {i}?",
                "answers": [["Linda Davis"], ["Vince Gill", "Vincent Gill"]],
                "docs": [{"title": "A", "text": f"Album {i} featured Linda Davis."},
                         {"title": "B", "text": "Vince Gill sang on it too."}, {"title": "C", "text": "No one."}]}
               for i in range(4)]
    recs = [r for s in build_it(write_raw(tmp_path / "q", "qampari", qampari), "qampari").values() for r in s]
    assert len(recs) == 4 and all(len(r["meta"]["gold_chunk_ids"]) == 2 for r in recs)
    assert all(r["meta"]["answers_found_from"] == "string match" for r in recs)


def test_asqa_built_trained_and_scored_with_alce_and_trust_eval(tmp_path, tiny_model_dir):
    from factuality.stages.sft import SFT_SPEC
    from factuality.stages.sft import run as train_sft

    data = write_raw(tmp_path, "asqa", asqa_items())
    splits = build_it(data, "asqa", split_fractions=[0.5, 0.0, 0.5])
    assert splits["train"] and splits["test"]
    cfg = parse_config(SFT_SPEC, ["-c", str(ROOT / "configs" / "sft_tiny.yaml")],
                       model_name_or_path=str(tiny_model_dir), train_file=str(data / "processed" / "train.jsonl"),
                       val_file="", output_dir=str(tmp_path / "sft"), save_strategy="no")
    train_sft(cfg)
    ecfg = parse_config(evaluate_sft.EvalConfig, [], model_path=str(tmp_path / "sft"),
                        test_data=str(data / "processed" / "test.jsonl"), output=str(tmp_path / "eval.json"),
                        batch_size=2, max_new_tokens=8, bootstrap_samples=0, plots=False, progress=False,
                        buckets=[300, 400])
    res = evaluate_sft.main(ecfg)
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["metrics"]["sft"]["overall"]["n"] == len(splits["test"])
    alce = saved["published"]["alce"]["sft"]["asqa"]
    te = saved["published"]["trust_eval"]["sft"]["asqa"]
    assert {"str_em", "str_hit", "citation_rec", "citation_prec"} <= set(alce)
    assert {"trust_score", "macro_f1", "calib_str_em_f1", "answered_citation_f1", "parametric_str_em"} <= set(te)
    assert te["answerable_num"] == sum(e["answerable"] for e in splits["test"])
    assert saved["entailment"]["spec"] == "lexical" and res["published"]["entailment"] == "lexical"
    assert "trust_score" in saved["metrics"]["sft"]["overall"]["metrics"]   # ours, beside theirs


def test_their_output_file_is_scored_with_citations_renumbered(tmp_path):
    items = asqa_items()
    data = write_raw(tmp_path, "asqa", items)
    splits = build_it(data, "asqa", split_fractions=[0.5, 0.0, 0.5])
    test_q = {e["question"] for e in splits["test"]}
    outs = []
    for i, it in enumerate(items):
        if it["question"] not in test_q:
            continue
        who, year = PEOPLE[i % len(PEOPLE)], str(1980 + i)
        text = (f"The duet number {i} was sung by {who} [2]. It was released in {year} [4]." if i % 4 != 3
                else "I apologize, but I couldn't find an answer.")
        outs.append({**it, "output": text})
    (tmp_path / "alce_out.json").write_text(json.dumps({"args": {}, "data": outs}))
    cfg = parse_config(evaluate_sft.EvalConfig, [], predictions=str(tmp_path / "alce_out.json"),
                       test_data=str(data / "processed" / "test.jsonl"), output=str(tmp_path / "r.json"),
                       bootstrap_samples=0, plots=False, progress=False, buckets=[300, 400])
    evaluate_sft.main(cfg)
    pub = json.loads((tmp_path / "r.json").read_text())["published"]
    alce, te = pub["alce"]["sft"]["asqa"], pub["trust_eval"]["sft"]["asqa"]
    answerable = [e for e in splits["test"] if e["answerable"]]
    share = len(answerable) / len(splits["test"])
    # the file's [2] and [4] point at the documents holding the answers wherever the build put them
    assert alce["citation_rec"] == pytest.approx(100 * share)
    assert alce["str_em"] == pytest.approx(100 * share)
    assert te["answered_citation_rec"] == 100.0 and te["macro_f1"] == 100.0
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"data": [{"question": "Not a test question?", "output": "x", "docs": []}]}))
    with pytest.raises(RecordError, match=r"other\.json\[0\]: question: 'Not a test question\?' is not a question"):
        evaluate_sft.main(parse_config(evaluate_sft.EvalConfig, [], predictions=str(bad),
                                       test_data=str(data / "processed" / "test.jsonl"), output=str(tmp_path / "s.json"),
                                       bootstrap_samples=0, plots=False, progress=False, buckets=[300, 400]))


def test_long_form_prompt_asks_for_statements_and_the_target_has_them(tmp_path):
    from factuality.prompts import STATEMENTS_INSTRUCTION, gold_target, parse_output, render_prompt

    data = write_raw(tmp_path, "asqa", asqa_items())
    recs = [r for s in build_it(data, "asqa").values() for r in s]
    ex = next(r for r in recs if r["answerable"])
    assert STATEMENTS_INSTRUCTION in render_prompt(ex, None)
    target = json.loads(gold_target(ex))
    by_id = {c["id"]: c["text"] for c in ex["evidence"]}
    q = int(ex["meta"]["original_id"][1:])
    who, year = PEOPLE[q % len(PEOPLE)], str(1980 + q)
    assert [st["text"] for st in target["statements"]] == [who, year]
    for st in target["statements"]:
        assert len(st["citations"]) == 1 and st["text"] in by_id[st["citations"][0]]
    assert set(target["citations"]) == {c for st in target["statements"] for c in st["citations"]}
    assert parse_output(gold_target(ex), list(by_id)).valid
    refusal = json.loads(gold_target(next(r for r in recs if not r["answerable"])))
    assert "statements" not in refusal and refusal["citations"] == []
