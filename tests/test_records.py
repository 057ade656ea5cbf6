"""records.py and config.py: strict reading, rejects, atomic writes, strict configs."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from factuality.config import ConfigError, parse_config
from factuality.records import (EXAMPLE, RecordError, atomic_open, read_examples, read_jsonl, with_hash,
                                write_jsonl)


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
    rej = read_jsonl(tmp_path / "rej.jsonl")
    assert [r["line"] for r in rej] == [2, 3] and "not valid JSON" in rej[1]["problem"]


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


@dataclass
class _Cfg:
    seed: int = field(default=1, metadata={"help": "seed"})
    num_distractors: int = field(default=3, metadata={"help": "n"})


def test_unknown_config_key_is_an_error(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("seed: 3\nnum_distractor: 4\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key 'num_distractor'; did you mean 'num_distractors'"):
        parse_config(_Cfg, ["-c", str(y)])
    with pytest.raises(SystemExit):
        parse_config(_Cfg, ["--num-distractorz", "2"])
    y.write_text("seed: 3\n")
    assert parse_config(_Cfg, ["-c", str(y), "--num-distractors", "5"]) == _Cfg(seed=3, num_distractors=5)


def test_data_yaml_matches_build_config():
    from factuality.build import BuildConfig
    cfg = parse_config(BuildConfig, ["-c", "configs/data.yaml"])
    assert cfg == BuildConfig()
