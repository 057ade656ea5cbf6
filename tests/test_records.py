"""factuality/records and config.py: strict reading, rejects, atomic writes, strict configs."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from factuality.config import ConfigError, parse_config
from factuality.records import (
    EXAMPLE,
    REJECT,
    JsonlAppender,
    RecordError,
    atomic_dir,
    atomic_open,
    atomic_write_text,
    read_examples,
    read_json,
    read_jsonl,
    recover_dir,
    stage_outside,
    with_hash,
    write_jsonl,
)


def example(**over) -> dict:
    rec = {"schema_version": 1, "id": "nq:1", "source": "nq", "split": "train", "question": "who?",
           "answers": ["Ada"], "answerable": True,
           "evidence": [{"id": "E1", "title": "T", "text": "Ada wrote it.", "doc_id": "psg:1"},
                        {"id": "E2", "title": "U", "text": "Someone else.", "doc_id": "psg:2"}],
           "support": [{"chunk_id": "E1", "start": 0, "end": 3}], "hard_negatives": ["E2"], "meta": {}}
    rec.update(over)
    return with_hash(rec)


def test_valid_example_passes_and_hash_is_checked():
    rec = example()
    assert EXAMPLE.problem(rec) is None
    rec["question"] = "edited?"
    assert "hash" in EXAMPLE.problem(rec)


@pytest.mark.parametrize("over,needle", [
    ({"support": [{"chunk_id": "E1", "start": 0, "end": 99}]}, "outside chunk"),
    ({"support": [{"chunk_id": "E9", "start": 0, "end": 2}]}, "not an evidence id"),
    ({"answerable": False}, "unanswerable example must have no support"),
    ({"hard_negatives": ["E7"]}, "hard_negatives"),
    ({"answers": []}, "answers"),
])
def test_example_contract_catches_cross_field_errors(over, needle):
    assert needle in EXAMPLE.problem(example(**over))


def test_strict_reader_names_file_line_and_field(tmp_path):
    p = tmp_path / "train.jsonl"
    good, bad = example(), example(id="nq:2")
    del bad["question"]
    p.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n{not json\n")
    with pytest.raises(RecordError, match=r"train\.jsonl:3: question: is missing"):
        read_examples(p)


def test_rejects_file_collects_and_counts(tmp_path):
    p = tmp_path / "train.jsonl"
    bad = example(id="nq:2")
    del bad["question"]
    p.write_text(json.dumps(example()) + "\n" + json.dumps(bad) + "\n{not json\n")
    stats: dict = {}
    rows = read_examples(p, rejects=tmp_path / "rej.jsonl", stats=stats)
    assert len(rows) == 1 and stats["rejected"] == 2
    rej = read_jsonl(tmp_path / "rej.jsonl", REJECT)   # the one rejects format, validated on read too
    assert [r["line"] for r in rej] == [2, 3] and "not valid JSON" in rej[1]["problem"]
    assert rej[0]["field"] == "question" and rej[0]["where"].endswith("train.jsonl:2")


def test_bytes_that_are_not_utf8_name_file_line_and_offset(tmp_path):
    p = tmp_path / "test.jsonl"
    good = json.dumps(example()).encode()
    bad_line = json.dumps(example(id="nq:2")).encode().replace(b"who?", b"wh\xff?")
    p.write_bytes(good + b"\n" + bad_line + b"\n")
    offset = len(good) + 1 + bad_line.index(b"\xff")
    with pytest.raises(RecordError, match=rf"test\.jsonl:2: \(encoding\): byte 0xff at byte offset {offset} \(column "):
        read_examples(p)
    stats: dict = {}
    rows = read_examples(p, rejects=tmp_path / "rej.jsonl", stats=stats)
    (rej,) = read_jsonl(tmp_path / "rej.jsonl", REJECT)
    assert len(rows) == 1 and stats["rejected"] == 1 and rej["byte"] == offset and "\\xff" in rej["raw"]


def test_empty_file_is_refused_saying_what_was_expected(tmp_path):
    p = tmp_path / "test.jsonl"
    p.write_text("\n\n")
    with pytest.raises(RecordError, match=r"test\.jsonl: the file is empty \(no records\); expected processed examples"):
        read_examples(p)
    assert read_jsonl(p) == []                                  # a contract without the rule allows it
    with pytest.raises(RecordError, match="the file is empty"):
        read_jsonl(p, allow_empty=False)                        # e.g. a predictions file given to be scored


def test_repeated_id_is_refused_with_both_lines(tmp_path):
    p = tmp_path / "train.jsonl"
    rows = [example(), example(id="nq:2"), example()]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(RecordError, match=r"train\.jsonl:3: id: id='nq:1' already appears on line 1"):
        read_examples(p)
    stats: dict = {}
    assert [r["id"] for r in read_examples(p, rejects=tmp_path / "rej.jsonl", stats=stats)] == ["nq:1", "nq:2"]
    assert stats["rejected"] == 1
    pairs = tmp_path / "preds.jsonl"   # a key over two fields: the same id under two model tags is fine
    pairs.write_text('{"id": "a", "model_tag": "base"}\n{"id": "a", "model_tag": "sft"}\n{"id": "a", "model_tag": "sft"}\n')
    with pytest.raises(RecordError, match=r"preds\.jsonl:3: id: model_tag='sft', id='a' already appears on line 2"):
        read_jsonl(pairs, unique=("model_tag", "id"))


def test_read_json_reports_bad_bytes_with_line_and_offset(tmp_path):
    p = tmp_path / "x.json"
    p.write_bytes(b'[\n {"a": "ok"},\n {"a": "b\xe9d"}\n]\n')
    with pytest.raises(RecordError, match=r"x\.json:3: \(encoding\): byte 0xe9 at byte offset 25 \(column 10\)"):
        read_json(p)
    p.write_bytes(b"")
    with pytest.raises(RecordError, match=r"x\.json: the file is empty; expected a JSON document"):
        read_json(p)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    p = tmp_path / "out.jsonl"
    write_jsonl(p, [example()], EXAMPLE)
    before = p.read_bytes()
    broken = example(id="nq:2")
    broken["hash"] = "0" * 64
    with pytest.raises(RecordError):
        write_jsonl(p, [example(id="nq:3"), broken], EXAMPLE)
    assert p.read_bytes() == before
    with pytest.raises(RuntimeError):
        with atomic_open(p) as f:
            f.write("half")
            raise RuntimeError("killed")
    assert p.read_bytes() == before
    assert [x.name for x in tmp_path.iterdir()] == ["out.jsonl"]   # no temp file left behind


def test_atomic_dir_commits_a_set_in_one_step(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.") and not target.exists()
        (tmp / "a.txt").write_text("1")
        stage_outside(tmp, tmp_path / "elsewhere" / "manifest.json", "{}\n")
    assert (target / "a.txt").read_text() == "1" and (tmp_path / "elsewhere/manifest.json").read_text() == "{}\n"
    (target / "mine.txt").write_text("not part of the set")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("2")
            raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "1"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("3")
        (tmp / "b.txt").write_text("3")
    assert {p.name: p.read_text() for p in target.iterdir()} == {"a.txt": "3", "b.txt": "3", "mine.txt": "not part of the set"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "out"]     # no temp folder left
    (tmp_path / ".out.abcd1234.tmp").mkdir()                                      # left by a killed writer
    recover_dir(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "out"]


def test_written_files_follow_the_umask(tmp_path):
    import os
    old = os.umask(0o002)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        with JsonlAppender(tmp_path / "b.jsonl") as out:
            out.write({"id": "1"})
        with atomic_dir(tmp_path / "set") as tmp:
            (tmp / "c.txt").write_text("x")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [*tmp_path.iterdir(), tmp_path / "set/c.txt"]}
    assert modes == {"a.txt": 0o664, "b.jsonl": 0o664, "set": 0o775, "c.txt": 0o664}


@dataclass
class _Cfg:
    seed: int = field(default=1, metadata={"help": "seed"})
    num_distractors: int = field(default=3, metadata={"help": "n"})


def test_unknown_config_key_is_an_error(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("seed: 3\nnum_distractor: 4\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key 'num_distractor'; did you mean 'num_distractors'"):
        parse_config(_Cfg, ["-c", str(y)])
    with pytest.raises(ConfigError, match="unknown option --num-distractorz; did you mean --num-distractors"):
        parse_config(_Cfg, ["--num-distractorz", "2"])
    y.write_text("seed: 3\n")
    assert parse_config(_Cfg, ["-c", str(y), "--num-distractors", "5"]) == _Cfg(seed=3, num_distractors=5)


def test_data_yaml_matches_build_config():
    from factuality.stages.build import BuildConfig
    cfg = parse_config(BuildConfig, ["-c", "configs/data.yaml"])
    assert cfg == BuildConfig()
