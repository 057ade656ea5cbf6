"""What every dataset module shares: intermediate records, bad-record reporting, field checks,
the raw-file readers (JSONL, JSON array, TSV) and the draft handed to the build.

A dataset module (see `factuality/sources/__init__.py` for the protocol) reads its raw files
into `RawExample`s and turns them into `Draft`s (gold chunks with spans, ranked negatives);
`factuality.stages.build` then fits the evidence budget, shuffles, splits and writes.
"""
from __future__ import annotations

import csv
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..records import (
    RecordError,
    Rejects,
    Where,
    decode_lines,
    iter_json_array,
    iter_json_lines,
    open_bytes,
    sha256_text,
)
from ..text import find_answer_span, has_answer

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


# --------------------------------------------------------------------------------------------
# Intermediate records
# --------------------------------------------------------------------------------------------
@dataclass
class Chunk:
    doc_id: str          # stable id of the passage / sentence / paragraph in its dataset
    title: str
    text: str


@dataclass(slots=True)
class Retrieved:
    """One passage of a retrieval-results record (`ctxs`), with what the file says about it."""

    chunk: Chunk
    score: float | None = None       # the retriever's score, when the file has one
    has_answer: bool | None = None   # the file's has_answer / hasanswer flag, when present
    isgold: bool | None = None       # the file's isgold flag, when present


@dataclass
class RawExample:
    source: str
    orig_id: str
    question: str
    answers: list[str]
    where: str                                     # file:line or file[index], for messages
    gold: list[tuple[Chunk, list[tuple[int, int]]]] = field(default_factory=list)
    candidates: list[Chunk] = field(default_factory=list)   # distractors the dataset ships
    label: str | None = None                       # FEVER verdict
    fever_sets: list[list[tuple[str, int]]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    retrieved: list[Retrieved] | None = None       # the record's own ranked passages (ctxs format)

    @property
    def id(self) -> str:
        return f"{self.source}:{self.orig_id}"


@dataclass
class Draft:
    """An example before shuffling: gold chunks with spans and ranked negatives."""

    raw: RawExample
    gold: list[tuple[Chunk, list[tuple[int, int]]]]
    negatives: list[tuple[Chunk, float | None]]
    answerable: bool
    evidence_origin: str
    unanswerable_reason: str | None = None
    gold_scores: list[float | None] = field(default_factory=list)


@dataclass(frozen=True)
class RemoteFile:
    """One file a dataset publishes, and where it goes under the raw root."""

    url: str
    dest: str                 # path under the raw root (a folder for "unzip")
    unpack: str = "none"      # none | gunzip | unzip


@dataclass
class DraftContext:
    """What a dataset's `draft` may use: the build config, its input files per role, where bad
    records go, and resources built once and shared between datasets (the passage corpus index)."""

    cfg: Any
    inputs: dict[str, list[Path]]
    bad: BadRecords
    shared: dict[str, Any] = field(default_factory=dict)


class BadRecords(Rejects):
    """Malformed raw records: an error naming file, line and field (default), or collected for the
    build's rejects file (`collect=True`). Well-formed records that cannot be used are counted in
    `dropped` by reason; unusable parts of a record that is otherwise used (an empty retrieved
    passage) in `skipped` by reason."""

    def __init__(self, collect: bool = False):
        super().__init__(collect=collect, hint="fix or remove the record, or pass --rejects FILE to set bad "
                                               "records aside and count them")
        self.dropped: Counter = Counter()
        self.skipped: Counter = Counter()

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    def skip(self, reason: str, n: int = 1) -> None:
        """Parts of a record that is otherwise used (a retrieved passage with no text, say), left out:
        normal in real files, counted by reason, never a refused record."""
        self.skipped[reason] += n


# --------------------------------------------------------------------------------------------
# Field checks and small helpers
# --------------------------------------------------------------------------------------------
def short_hash(text: str, n: int = 12) -> str:
    return sha256_text(text)[:n]


def str_field(rec: dict, key: str, allow_empty: bool = False) -> str | None:
    v = rec.get(key)
    if not isinstance(v, str) or (not allow_empty and not v.strip()):
        return None
    return v


def str_list(v: Any) -> list[str] | None:
    if not isinstance(v, list) or not v or not all(isinstance(x, str) and x.strip() for x in v):
        return None
    return v


def answer_variants(answers: list[str]) -> list[str]:
    """Answers plus de-tokenised forms ("July 5 , 2018" -> "July 5, 2018"), as NQ/DPR answers are PTB-spaced."""
    out = []
    for a in answers:
        for v in (a, re.sub(r"\s+([,.;:!?%)\]'])", r"\1", re.sub(r"([(\[$])\s+", r"\1", a)), a.replace("\u00a0", " ")):
            if v.strip() and v not in out:
                out.append(v)
    return out


def find_span(text: str, answers: list[str]) -> tuple[int, int] | None:
    """text.find_answer_span over the answers and their de-tokenised variants."""
    return find_answer_span(text, answer_variants(answers))


def filter_candidates(cands: list[Chunk], answers: list[str], exclude: set[str]) -> list[Chunk]:
    """Distractor candidates that hold no gold answer, without repeats or the excluded doc ids."""
    out, seen = [], set(exclude)
    for c in cands:
        if c.doc_id in seen or has_answer(c.text, answers):
            continue
        seen.add(c.doc_id)
        out.append(c)
    return out


# --------------------------------------------------------------------------------------------
# Raw-file readers (the records module's readers, with the dataset's description of the file)
# --------------------------------------------------------------------------------------------
def jsonl_records(path: Path, bad: BadRecords, expected: str,
                  skip: Callable[[str], bool] | None = None) -> Iterator[tuple[Where, dict, str]]:
    """(where, object, line without its newline) per non-blank line; an empty file is refused.
    `skip(line)`: lines it answers True for are passed over unparsed (`records.iter_json_lines`)."""
    for where, rec, line in iter_json_lines(path, bad, expected, skip=skip):
        yield where, rec, line.rstrip("\r\n")


def json_array(path: Path, bad: BadRecords, expected: str) -> Iterator[tuple[Where, Any]]:
    """(where, record) of a JSON array file, streamed one record at a time (`records.iter_json_array`:
    memory bounded by the largest record, not the file); an empty array is refused. Records holding
    bytes that are not UTF-8 went to `bad` and are skipped."""
    for i, rec in iter_json_array(path, bad, expected):
        yield Where(str(path), index=i), rec


def _column(c: str | tuple[str, ...]) -> str:
    return " or ".join(map(repr, c)) if isinstance(c, tuple) else repr(c)


def tsv_rows(path: Path, bad: BadRecords, required: tuple[str | tuple[str, ...], ...], expected: str,
             delimiter: str = "\t") -> Iterator[tuple[Where, dict, str]]:
    """Rows of a pandas-style TSV (header line, quoted cells; `delimiter=","` for CSV): (where of the
    row's last line, {column: cell}, the row as text). A `required` entry that is a tuple asks for
    any one of its columns. A row on a line that is not UTF-8 goes to `bad`; no data row is refused."""
    lines = decode_lines(path, bad)
    undecodable: set[int] = set()

    def text_lines():
        for lineno, text, raw in lines:
            if text is None:
                undecodable.add(lineno)
                text = raw.decode("utf-8", "surrogateescape")
            yield text

    reader = csv.reader(text_lines(), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise RecordError(f"{path}:1: (header): the file is empty; expected {expected} with a header "
                          f"[{', '.join(map(_column, required))}]") from None
    if undecodable:
        raise RecordError(f"{path}:1: (header): the header is not UTF-8; re-save the file as UTF-8 or re-download it")
    missing = [c for c in required if not (set(c) & set(header) if isinstance(c, tuple) else c in header)]
    if missing:
        raise RecordError(f"{path}:1: (header): column {_column(missing[0])} is missing; expected columns "
                          f"[{', '.join(map(_column, required))}] (is this the right file?)")
    n_rows, first = 0, 2
    for row in reader:
        last = reader.line_num
        lines_of_row, first = range(first, last + 1), last + 1
        if not row or all(not c for c in row):
            continue
        n_rows += 1
        if undecodable.intersection(lines_of_row):
            continue   # reported with its byte offset as the line was read
        where = Where(str(path), last)
        if len(row) != len(header):
            bad.report(where, "(row)", f"{len(row)} cells, the header has {len(header)}", delimiter.join(row))
            continue
        yield where, dict(zip(header, row)), delimiter.join(row)
    if not n_rows:
        raise RecordError(f"{path}: the file has a header but no rows; expected {expected}. Check that it was "
                          "downloaded completely")


def json_records(path: Path, bad: BadRecords, expected: str) -> Iterator[tuple[Where, Any, Any]]:
    """(where, record, raw) of a JSON array or of JSONL, whichever the file holds (told apart by its
    first character, after gzip decompression when the file is gzip): one reader for formats that
    are published both ways (DPR, FiD and Self-RAG retrieval results)."""
    with open_bytes(path) as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"["):
        for where, rec in json_array(path, bad, expected):
            yield where, rec, rec
    else:
        yield from jsonl_records(path, bad, expected)


@dataclass(frozen=True)
class Format:
    """One record format a dataset reads: its name, what it looks like (for messages), a test on a
    record (`matches`), and `read(records, path, bad)` turning (where, record, raw) into RawExamples."""

    name: str
    expected: str
    matches: Callable[[Any], bool]
    read: Callable[[Iterable[tuple[Where, Any, Any]], Path, BadRecords], Iterator[RawExample]]


def describe_formats(formats: Iterable[Format]) -> str:
    return "; ".join(f"{f.name}: {f.expected}" for f in formats)


def first_record(records: Iterator[tuple[Where, Any, Any]]) -> tuple[tuple[Where, Any, Any] | None, Iterator]:
    """The first record of an iterator and the iterator with it put back."""
    first = next(records, None)
    return first, (chain([first], records) if first is not None else records)


def pick_format(path: Path, first: tuple[Where, Any, Any], formats: list[Format], source: str) -> Format:
    """The format whose test the file's first record passes; one error line naming the file and the
    formats that would have matched when none does."""
    where, rec, _ = first
    for fmt in formats:
        if fmt.matches(rec):
            return fmt
    keys = sorted(rec)[:8] if isinstance(rec, dict) else type(rec).__name__
    raise RecordError(f"{where}: (format): not a format source {source!r} reads (the first record has fields "
                      f"{keys}); expected one of: {describe_formats(formats)}")


def read_by_content(path: Path, bad: BadRecords, formats: list[Format], source: str) -> Iterator[RawExample]:
    """Read a JSON / JSONL file (gzip or not) in whichever of `formats` its first record shows."""
    records = json_records(path, bad, "one of: " + describe_formats(formats))
    first, records = first_record(records)
    if first is None:      # every record was malformed and set aside
        return
    yield from pick_format(path, first, formats, source).read(records, path, bad)
