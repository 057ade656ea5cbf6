"""Streamed JSON arrays (`records.iter_json_array`): the same records as `json.loads` of the whole
file at any window size, the same messages (file, line, byte offset, index), and memory bounded by
the largest record rather than the file."""
from __future__ import annotations

import gzip
import json
import re
import tracemalloc
from pathlib import Path

import pytest

from factuality.records import RecordError, Rejects, iter_json_array, read_json

RAW = Path(__file__).resolve().parent.parent / "data" / "sample" / "raw"
FILES = [RAW / "hotpotqa" / "hotpot_train_sample.json", RAW / "nq" / "dpr_nq_dev_sample.json"]


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_records_are_those_of_json_loads_at_any_window_size(path, chunk):
    whole = json.loads(path.read_text(encoding="utf-8"))
    assert [r for _, r in iter_json_array(path, chunk_bytes=chunk)] == whole


def test_compact_gzip_and_multibyte_text_split_across_windows(tmp_path):
    recs = [{"q": "Zürich – Ελλάδα 東京 " * i, "n": [i, -1.5e-3, True, None], "s": "\\\"x\""} for i in range(40)]
    for text in (json.dumps(recs, ensure_ascii=False), json.dumps(recs, indent=2, ensure_ascii=False)):
        p = tmp_path / "a.json.gz"
        p.write_bytes(gzip.compress(("\n " + text + "\n\n").encode()))
        for chunk in (1, 3, 64):
            assert [r for _, r in iter_json_array(p, chunk_bytes=chunk)] == recs


@pytest.mark.parametrize("content,needle", [
    (b'[{"a": 1},\n {"a": 2}\n {"a": 3}]', r"x\.json:3: \(file\): not valid JSON \(Expecting ',' delimiter\)"),
    (b'[{"a": 1},\n {"a": 2,\n', r"x\.json:\d: \(file\): not valid JSON"),
    (b'[{"a": 1}] x', r"x\.json:1: \(file\): not valid JSON \(Extra data\)"),
    (b'{"a": 1}', r"x\.json: \(file\): a JSON array of things is expected, got dict"),
    (b'  \n', r"x\.json: the file is empty; expected a JSON array of things"),
    (b'[ ]', r"x\.json: \(file\): the array is empty \(no records\); expected things"),
])
def test_malformed_arrays_name_file_and_line(tmp_path, content, needle):
    p = tmp_path / "x.json"
    p.write_bytes(content)
    for chunk in (2, 1 << 20):
        with pytest.raises(RecordError, match=needle):
            list(iter_json_array(p, expected="things", chunk_bytes=chunk))


def test_bytes_that_are_not_utf8_give_the_whole_file_readers_line_and_offset(tmp_path):
    recs = [{"id": i, "text": f"record number {i}"} for i in range(30)]
    text = json.dumps(recs, indent=1).encode()
    at = text.index(b"record number 17") + 7
    p = tmp_path / "x.json"
    p.write_bytes(text[:at] + b"\xe9" + text[at + 1:])
    line = text[:at].count(b"\n") + 1
    column = at - text.rfind(b"\n", 0, at)
    with pytest.raises(RecordError, match=rf"x\.json:{line}: \(encoding\): byte 0xe9 at byte offset {at} "
                                          rf"\(column {column}\) is not UTF-8"):
        list(iter_json_array(p, chunk_bytes=16))
    with pytest.raises(RecordError, match=re.escape(f"x.json:{line}: (encoding): byte 0xe9 at byte offset {at}")):
        read_json(p)   # the whole-file reader says the same
    for chunk in (5, 1 << 20):
        bad = Rejects(collect=True)
        got = list(iter_json_array(p, bad, chunk_bytes=chunk))
        assert [i for i, _ in got] == [i for i in range(30) if i != 17]
        (row,) = bad.items
        assert row["index"] == 17 and row["byte"] == at and row["problem"].startswith(f"line {line}: byte 0xe9")


def test_memory_is_bounded_by_the_record_not_the_file(tmp_path):
    """A 40 MB array: peak Python allocations while streaming stay a small fraction of the file."""
    p = tmp_path / "big.json"
    rec = {"question": "q", "answers": ["a"], "ctxs": [{"title": "t", "text": "word " * 100}] * 20}
    one = json.dumps(rec)
    with open(p, "w") as f:
        f.write("[\n" + ",\n".join([one] * (40_000_000 // len(one))) + "\n]")
    size = p.stat().st_size
    tracemalloc.start()
    n = sum(1 for _ in iter_json_array(p))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n == 40_000_000 // len(one) and size > 39_000_000
    assert peak < 12_000_000, f"peak {peak / 1e6:.1f} MB streaming a {size / 1e6:.0f} MB file"
