"""build_data.py end to end on the bundled sample (real slices + fixtures), in a temp folder."""
from __future__ import annotations

import json
from collections import Counter

import pytest
from _data_helpers import build_sample, copy_sample_raw, load_all

import build_data  # noqa: E402  (repo root put on sys.path by _data_helpers)
from factuality import sources as S
from factuality.raw_inputs import SAMPLE_DIR, HashMismatch
from factuality.stages.build import BuildConfig, build, question_key
from factuality.records import RecordError, read_examples
from factuality.text import has_answer


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("built")
    summary = build_sample(out)
    return out, summary, load_all(out / "processed")


def test_sample_size_splits_and_classes(built):
    out, summary, recs = built
    assert 300 <= summary["total"] <= 600 and summary["bundled_sample"] and not summary["manifest_updated"]
    assert {r["source"] for r in recs} == {"fever", "hotpotqa", "nq", "popqa"}
    for split in ("train", "val", "test"):
        rows = read_examples(out / "processed" / f"{split}.jsonl")   # validated against the contract on read
        assert rows and {r["answerable"] for r in rows} == {True, False}, split
        assert all(r["split"] == split for r in rows)
    card = json.loads((out / "processed" / "run_card.json").read_text())
    assert card["counts"] == summary["counts"] and len(card["inputs"]) == 8
    assert all(len(h) == 64 for h in card["inputs"].values()) and card["config"]["seed"] == 42


def test_support_spans_point_at_the_answer_or_supporting_sentence(built):
    _, _, recs = built
    hotpot_raw = {r["_id"]: r for r in json.loads((SAMPLE_DIR / "raw/hotpotqa/hotpot_train_sample.json").read_text())}
    fever_raw = {e.orig_id: e for e in S.read_fever_claims(SAMPLE_DIR / "raw/fever/paper_dev.sample.jsonl", S.BadRecords())}
    checked = Counter()
    for r in recs:
        ev = {e["id"]: e for e in r["evidence"]}
        for sp in r["support"]:
            chunk = ev[sp["chunk_id"]]
            span_text = chunk["text"][sp["start"]:sp["end"]]
            if r["source"] in ("nq", "popqa"):
                assert has_answer(span_text, r["answers"]), (r["id"], span_text)
            elif r["source"] == "hotpotqa":
                raw = hotpot_raw[r["meta"]["original_id"]]
                sents = {s.strip() for t, ss in raw["context"] if t == chunk["title"] for s in ss}
                assert span_text in sents and [chunk["title"], ] in [[t] for t, _ in raw["supporting_facts"]]
            else:
                page, sent = chunk["doc_id"].rsplit(":", 1)
                assert (page, int(sent)) in {k for s in fever_raw[r["meta"]["original_id"]].fever_sets for k in s}
                assert span_text == chunk["text"]
            checked[r["source"]] += 1
    assert all(checked[s] > 20 for s in ("nq", "popqa", "hotpotqa", "fever")), checked


def test_no_hard_negative_holds_a_gold_answer(built):
    _, _, recs = built
    n = 0
    for r in recs:
        ev = {e["id"]: e for e in r["evidence"]}
        support_ids = {s["chunk_id"] for s in r["support"]}
        assert set(r["hard_negatives"]).isdisjoint(support_ids)
        assert set(r["hard_negatives"]) | support_ids == set(ev)
        if r["source"] == "fever":
            continue   # FEVER's "answer" is a verdict; its negatives exclude every cited sentence instead
        for hn in r["hard_negatives"]:
            assert not has_answer(ev[hn]["text"], r["answers"]), (r["id"], hn)
            n += 1
    assert n > 500


def test_gold_position_varies_and_budget_holds(built):
    _, _, recs = built
    positions = Counter(s["chunk_id"] for r in recs for s in r["support"][:1])
    assert len(positions) >= 4 and max(positions.values()) < 0.5 * sum(positions.values())
    assert all(r["meta"]["evidence_tokens"] <= 600 for r in recs)
    assert all([e["id"] for e in r["evidence"]] == [f"E{i}" for i in range(1, len(r["evidence"]) + 1)] for r in recs)


def test_unanswerable_kinds(built):
    _, _, recs = built
    reasons = Counter(r["meta"].get("unanswerable_reason") for r in recs if not r["answerable"])
    assert reasons["fever_nei"] > 50 and reasons["no_oracle"] > 20
    for r in recs:
        if r["meta"].get("no_oracle"):
            assert not r["answerable"] and not r["support"] and r["meta"]["removed_support_doc_ids"]
            assert r["answers"] and r["evidence"]
            assert not {e["doc_id"] for e in r["evidence"]} & set(r["meta"]["removed_support_doc_ids"])
        if r["meta"].get("unanswerable_reason") == "fever_nei":
            assert r["answers"] == ["NOT ENOUGH INFO"] and not r["support"]


def test_no_question_in_two_splits(built):
    _, _, recs = built
    split_of: dict[str, str] = {}
    for r in recs:
        k = question_key(r["question"])
        assert split_of.setdefault(k, r["split"]) == r["split"]
        assert r["meta"]["question_norm_hash"] == S.short_hash(k, 16)
    assert len(split_of) == len(recs)   # duplicates were removed


def test_same_seed_byte_identical_other_seed_other_splits(built, tmp_path):
    out, _, recs = built
    build_sample(tmp_path / "again")
    for split in ("train", "val", "test"):
        assert (tmp_path / "again/processed" / f"{split}.jsonl").read_bytes() == (out / "processed" / f"{split}.jsonl").read_bytes()
    build_sample(tmp_path / "seed7", seed=7)
    other = load_all(tmp_path / "seed7/processed")
    a = {r["id"]: r["split"] for r in recs}
    b = {r["id"]: r["split"] for r in other}
    moved = sum(a[i] != b[i] for i in a.keys() & b.keys())
    assert moved > 30


def test_tampered_raw_file_is_refused_and_nothing_written(tmp_path):
    data = tmp_path / "data"
    copy_sample_raw(data / "raw")
    cfg = dict(data_dir=str(data), sources=["popqa"], quiet=True)
    with pytest.raises(HashMismatch, match="--accept-new-hash"):
        build(BuildConfig(**cfg))
    assert not (data / "processed").exists() and not (data / "raw_manifest.json").exists()
    build(BuildConfig(**cfg, accept_new_hash=True))
    manifest = json.loads((data / "raw_manifest.json").read_text())["files"]
    before = {p.name: p.read_bytes() for p in (data / "processed").iterdir()}
    tsv = data / "raw/popqa/popQA.fixture.tsv"
    tsv.write_text(tsv.read_text().replace("Hobart", "Launceston"))
    with pytest.raises(HashMismatch) as err:
        build(BuildConfig(**cfg))
    msg = str(err.value)
    assert "popQA.fixture.tsv" in msg and manifest["raw/popqa/popQA.fixture.tsv"] in msg
    assert S.short_hash("x") not in msg and "nothing was written" in msg and "--accept-new-hash" in msg
    assert {p.name: p.read_bytes() for p in (data / "processed").iterdir()} == before
    assert json.loads((data / "raw_manifest.json").read_text())["files"] == manifest


def test_malformed_raw_record_stops_with_file_and_line_or_goes_to_rejects(tmp_path):
    data = tmp_path / "data"
    copy_sample_raw(data / "raw")
    nq = data / "raw/nq/NQ-open.dev.sample.jsonl"
    lines = nq.read_text().splitlines()
    lines[4] = '{"question": "who is it", "answer": "not a list"}'
    lines.append(lines[0])   # an exact duplicate question
    nq.write_text("\n".join(lines) + "\n")
    cfg = dict(data_dir=str(data), sources=["nq"], quiet=True, accept_new_hash=True)
    with pytest.raises(RecordError, match=r"NQ-open\.dev\.sample\.jsonl:5: answer: expected a non-empty list"):
        build(BuildConfig(**cfg))
    assert not (data / "processed").exists() and not (data / "raw_manifest.json").exists()
    rejects = tmp_path / "rejects.jsonl"
    summary = build(BuildConfig(**cfg, rejects=str(rejects)))
    assert summary["rejected"] == 1 and summary["duplicates_removed"] == {"nq": 1}
    (row,) = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert row["where"].endswith("raw/nq/NQ-open.dev.sample.jsonl:5") and row["field"] == "answer"
    assert summary["dropped"]["nq_no_support_retrieved"] > 100


def test_cli_main_prints_the_table(tmp_path, capsys):
    summary = build_data.cli(["--data-dir", str(tmp_path / "d"), "--sources", "hotpotqa,popqa",
                              "--num-distractors", "2", "--no-oracle-fraction", "0"])
    table = capsys.readouterr().out
    assert "hotpotqa  train" in table and "duplicates removed: 0" in table and "time:" in table
    recs = load_all(tmp_path / "d/processed")
    assert len(recs) == summary["total"] == 101
    assert all(len(r["hard_negatives"]) <= 2 and r["answerable"] for r in recs)


def test_bad_config_values_are_explained():
    with pytest.raises(ValueError, match="split_fractions"):
        BuildConfig(split_fractions=[0.5, 0.1, 0.1]).validate()
    with pytest.raises(ValueError, match="unknown source 'squad'"):
        BuildConfig(sources=["squad"]).validate()
