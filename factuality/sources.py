"""One reader per raw dataset, each in the format the dataset publishes.

Every reader yields `RawExample`s (or passages / wiki sentences) and checks each raw record's
fields. A malformed record goes to `BadRecords.report`, which raises
`file:line: field: problem` (JSONL/TSV) or `file[index]: field: problem` (JSON arrays), or, when
the run was given a rejects file, keeps it to be written there and counted. Nothing is dropped
silently: records that are well formed but cannot be used (e.g. a DPR question with no positive
passage) are counted in `dropped` by reason.

Formats:
- HotpotQA distractor JSON: a JSON array of `{_id, question, answer, type, level,
  supporting_facts: [[title, sent_idx]], context: [[title, [sentences]]]}`.
- FEVER claims JSONL `{id, verifiable, label, claim, evidence: [[[ann_id, ev_id, page, sent]]]}`
  and wiki-pages JSONL `{id, text, lines}` where `lines` is `N\\tsentence\\tlink\\tlink...` rows
  joined by newlines; PTB escapes (-LRB- ...) are undone.
- NQ: DPR retriever JSON (`question, answers, positive_ctxs, hard_negative_ctxs`), NQ-Open
  JSONL (`question, answer[]`), and a DPR passage corpus TSV (`id\\ttext\\ttitle`, header line).
- PopQA TSV (pandas-written: quoted cells, `possible_answers` a JSON list inside a cell).
"""
from __future__ import annotations

import csv
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .records import RecordError, sha256_text
from .text import find_answer_span

FEVER_LABELS = ("SUPPORTS", "REFUTES", "NOT ENOUGH INFO")
POPQA_COLUMNS = ("id", "subj", "prop", "obj", "s_pop", "o_pop", "question", "possible_answers")
PASSAGE_COLUMNS = ("id", "text", "title")

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


# --------------------------------------------------------------------------------------------
# Intermediate records
# --------------------------------------------------------------------------------------------
@dataclass
class Chunk:
    doc_id: str          # stable id of the passage / sentence / paragraph in its dataset
    title: str
    text: str


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

    @property
    def id(self) -> str:
        return f"{self.source}:{self.orig_id}"


class BadRecords:
    """Where malformed raw records go: an error (default) or a list for the rejects file."""

    def __init__(self, collect: bool = False):
        self.collect = collect
        self.items: list[dict] = []
        self.dropped: Counter = Counter()

    def report(self, where: str, field_name: str, problem: str, raw: Any = None) -> None:
        msg = f"{where}: {field_name}: {problem}"
        if not self.collect:
            raise RecordError(f"{msg}; fix or remove the record, or pass --rejects FILE to set bad "
                              "records aside and count them")
        raw_s = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False, default=str)
        self.items.append({"where": where, "field": field_name, "problem": problem, "raw": raw_s})

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1


def short_hash(text: str, n: int = 12) -> str:
    return sha256_text(text)[:n]


def _str(rec: dict, key: str, allow_empty: bool = False) -> str | None:
    v = rec.get(key)
    if not isinstance(v, str) or (not allow_empty and not v.strip()):
        return None
    return v


def _str_list(v: Any) -> list[str] | None:
    if not isinstance(v, list) or not v or not all(isinstance(x, str) and x.strip() for x in v):
        return None
    return v


def _jsonl(path: Path, bad: BadRecords) -> Iterator[tuple[int, dict, str]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                bad.report(f"{path}:{lineno}", "(line)", f"not valid JSON ({e.msg} at column {e.colno})", line.rstrip("\n"))
                continue
            if not isinstance(rec, dict):
                bad.report(f"{path}:{lineno}", "(line)", "a JSON object is expected", line.rstrip("\n"))
                continue
            yield lineno, rec, line


def _json_array(path: Path, bad: BadRecords) -> list:
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise RecordError(f"{path}:{e.lineno}: (file): not valid JSON ({e.msg}); re-download the file") from None
    if not isinstance(data, list):
        raise RecordError(f"{path}: (file): a JSON array of records is expected, got {type(data).__name__}")
    return data


# --------------------------------------------------------------------------------------------
# HotpotQA (distractor setting)
# --------------------------------------------------------------------------------------------
def paragraph_chunk(title: str, sentences: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """Join HotpotQA sentences into the paragraph text; return it and each sentence's span."""
    text, spans, pos = "", [], 0
    for s in sentences:
        lead = len(s) - len(s.lstrip())
        body = s.strip()
        spans.append((pos + lead, pos + lead + len(body)))
        text += s
        pos += len(s)
    shift = len(text) - len(text.lstrip())
    text = text.strip()
    spans = [(max(0, a - shift), min(len(text), b - shift)) for a, b in spans]
    return text, spans


def read_hotpotqa(path: Path, bad: BadRecords) -> Iterator[RawExample]:
    for i, rec in enumerate(_json_array(path, bad)):
        where = f"{path}[{i}]"
        if not isinstance(rec, dict):
            bad.report(where, "(record)", "a JSON object is expected", rec)
            continue
        problem = None
        for key in ("_id", "question", "answer"):
            if _str(rec, key) is None:
                problem = (key, "missing or not a non-empty string")
                break
        ctx, sfs = rec.get("context"), rec.get("supporting_facts")
        if problem is None and not (isinstance(ctx, list) and ctx and all(
                isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], list)
                and all(isinstance(s, str) for s in p[1]) for p in ctx)):
            problem = ("context", "expected a non-empty list of [title, [sentences]]")
        if problem is None and not (isinstance(sfs, list) and sfs and all(
                isinstance(s, list) and len(s) == 2 and isinstance(s[0], str) and isinstance(s[1], int) for s in sfs)):
            problem = ("supporting_facts", "expected a non-empty list of [title, sentence_index]")
        if problem is None:
            titles = [p[0] for p in ctx]
            missing = [t for t, _ in sfs if t not in titles]
            if missing:
                problem = ("supporting_facts", f"title {missing[0]!r} is not in context")
        if problem:
            bad.report(where, *problem, rec)
            continue
        paragraphs: dict[str, tuple[str, list[tuple[int, int]]]] = {}
        for title, sents in ctx:
            if title not in paragraphs:
                paragraphs[title] = paragraph_chunk(title, sents)
        gold_titles: list[str] = []
        spans_by_title: dict[str, list[tuple[int, int]]] = {}
        out_of_range = []
        for title, si in sfs:
            text, sent_spans = paragraphs[title]
            if not 0 <= si < len(sent_spans) or sent_spans[si][0] >= sent_spans[si][1]:
                out_of_range.append([title, si])   # a known quirk of the HotpotQA dump
                continue
            if title not in gold_titles:
                gold_titles.append(title)
            span = sent_spans[si]
            if span not in spans_by_title.setdefault(title, []):
                spans_by_title[title].append(span)
        if not gold_titles:
            bad.report(where, "supporting_facts", "no supporting sentence index is inside its paragraph", rec)
            continue
        gold = [(Chunk(title, title, paragraphs[title][0]), sorted(spans_by_title[title])) for title in gold_titles]
        cands = [Chunk(t, t, paragraphs[t][0]) for t in paragraphs if t not in gold_titles and paragraphs[t][0]]
        meta = {"type": rec.get("type"), "level": rec.get("level")}
        if out_of_range:
            meta["support_facts_out_of_range"] = out_of_range
        yield RawExample("hotpotqa", rec["_id"], rec["question"].strip(), [rec["answer"].strip()], where,
                         gold=gold, candidates=cands, meta=meta)


# --------------------------------------------------------------------------------------------
# FEVER
# --------------------------------------------------------------------------------------------
_PTB = {"-LRB-": "(", "-RRB-": ")", "-LSB-": "[", "-RSB-": "]", "-LCB-": "{", "-RCB-": "}",
        "-COLON-": ":", "``": '"', "''": '"'}
_PTB_RE = re.compile("|".join(re.escape(k) for k in _PTB))


def unescape_ptb(s: str) -> str:
    """Undo FEVER's PTB escapes and the tokeniser's spaces around punctuation."""
    s = _PTB_RE.sub(lambda m: _PTB[m.group(0)], s)
    s = re.sub(r'\s+([,.;:!?%)\]}])', r"\1", s)
    s = re.sub(r"([(\[{$])\s+", r"\1", s)
    s = re.sub(r"\s+(n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", s)
    s = re.sub(r'"\s+([^"]*?)\s+"', r'"\1"', s)
    return " ".join(s.split())


def page_title(page_id: str) -> str:
    return unescape_ptb(page_id.replace("_", " "))


def read_fever_claims(path: Path, bad: BadRecords) -> Iterator[RawExample]:
    for lineno, rec, line in _jsonl(path, bad):
        where = f"{path}:{lineno}"
        if not isinstance(rec.get("id"), int):
            bad.report(where, "id", "missing or not an integer", line.rstrip("\n"))
            continue
        label, claim, ev = rec.get("label"), _str(rec, "claim"), rec.get("evidence")
        if label not in FEVER_LABELS:
            bad.report(where, "label", f"{label!r} is not one of {list(FEVER_LABELS)}", line.rstrip("\n"))
            continue
        if claim is None:
            bad.report(where, "claim", "missing or not a non-empty string", line.rstrip("\n"))
            continue
        if not (isinstance(ev, list) and all(isinstance(s, list) and all(
                isinstance(e, list) and len(e) == 4 for e in s) for s in ev)):
            bad.report(where, "evidence", "expected [[[annotation_id, evidence_id, page, sentence]]]", line.rstrip("\n"))
            continue
        sets: list[list[tuple[str, int]]] = []
        if label != "NOT ENOUGH INFO":
            for s in ev:
                one = [(e[2], e[3]) for e in s if isinstance(e[2], str) and isinstance(e[3], int)]
                if len(one) != len(s):
                    bad.report(where, "evidence", "a verifiable claim's evidence needs [.., .., page, sentence] "
                               "with a page title and a sentence number", line.rstrip("\n"))
                    sets = []
                    break
                if one not in sets:
                    sets.append(one)
            if not sets:
                continue
        yield RawExample("fever", str(rec["id"]), claim.strip(), [label], where, label=label, fever_sets=sets,
                         meta={"type": "claim", "original_label": label, "verifiable": rec.get("verifiable")})


@dataclass
class WikiSentence:
    page: str       # FEVER page id, e.g. "Soul_Food_-LRB-film-RRB-"
    sent_id: int
    text: str       # unescaped sentence

    @property
    def doc_id(self) -> str:
        return f"{self.page}:{self.sent_id}"


def read_wiki_pages(path: Path, bad: BadRecords, pages: set[str] | None = None) -> Iterator[WikiSentence]:
    """Sentences of FEVER wiki-pages JSONL; with `pages`, only those pages (saves memory)."""
    for lineno, rec, line in _jsonl(path, bad):
        where = f"{path}:{lineno}"
        pid, lines = rec.get("id"), rec.get("lines")
        if not isinstance(pid, str):
            bad.report(where, "id", "missing or not a string", line.rstrip("\n")[:500])
            continue
        if pid == "" or (pages is not None and pid not in pages):
            continue   # the real dump starts with an empty-id page
        if not isinstance(lines, str):
            bad.report(where, "lines", "missing or not a string of 'N\\tsentence\\t...' rows", line.rstrip("\n")[:500])
            continue
        for row in lines.split("\n"):
            if not row.strip():
                continue
            parts = row.split("\t")
            if not parts[0].isdigit():
                bad.report(where, "lines", f"row {row[:60]!r} does not start with a sentence number", line.rstrip("\n")[:500])
                break
            text = unescape_ptb(parts[1]) if len(parts) > 1 else ""
            if text:
                yield WikiSentence(pid, int(parts[0]), text)


# --------------------------------------------------------------------------------------------
# Natural Questions: DPR JSON, NQ-Open JSONL, DPR passage corpus TSV
# --------------------------------------------------------------------------------------------
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


def _ctx_ok(c: Any) -> bool:
    return isinstance(c, dict) and isinstance(c.get("text"), str) and c["text"].strip() and isinstance(c.get("title"), str)


def read_dpr(path: Path, bad: BadRecords) -> Iterator[RawExample]:
    for i, rec in enumerate(_json_array(path, bad)):
        where = f"{path}[{i}]"
        if not isinstance(rec, dict):
            bad.report(where, "(record)", "a JSON object is expected", rec)
            continue
        q, answers = _str(rec, "question"), _str_list(rec.get("answers"))
        pos, negs = rec.get("positive_ctxs"), rec.get("hard_negative_ctxs", [])
        problem = None
        if q is None:
            problem = ("question", "missing or not a non-empty string")
        elif answers is None:
            problem = ("answers", "expected a non-empty list of strings")
        elif not isinstance(pos, list) or not all(_ctx_ok(c) for c in pos):
            problem = ("positive_ctxs", "expected a list of {title, text, passage_id}")
        elif not isinstance(negs, list) or not all(_ctx_ok(c) for c in negs):
            problem = ("hard_negative_ctxs", "expected a list of {title, text, passage_id}")
        if problem:
            bad.report(where, *problem, rec)
            continue
        if not pos:
            bad.drop("nq_dpr_no_positive_passage")
            continue
        gold, span_found = None, True
        for c in pos:
            span = find_span(c["text"], answers)
            if span:
                gold = (c, span)
                break
        if gold is None:   # DPR positives are gold passages even when the string differs
            gold, span_found = (pos[0], (0, len(pos[0]["text"]))), False
        c, span = gold
        pid = str(c.get("passage_id", short_hash(c["text"])))
        cands = [Chunk(f"psg:{n.get('passage_id', short_hash(n['text']))}", n["title"], n["text"]) for n in negs]
        yield RawExample("nq", f"dpr:{short_hash(q)}", q.strip(), answers, where,
                         gold=[(Chunk(f"psg:{pid}", c["title"], c["text"]), [span])], candidates=cands,
                         meta={"type": "dpr", "answer_span_found": span_found})


def read_nq_open(path: Path, bad: BadRecords) -> Iterator[RawExample]:
    for lineno, rec, line in _jsonl(path, bad):
        where = f"{path}:{lineno}"
        q, answers = _str(rec, "question"), _str_list(rec.get("answer"))
        if q is None:
            bad.report(where, "question", "missing or not a non-empty string", line.rstrip("\n"))
            continue
        if answers is None:
            bad.report(where, "answer", "expected a non-empty list of strings", line.rstrip("\n"))
            continue
        yield RawExample("nq", f"open:{short_hash(q)}", q.strip(), answers, where, meta={"type": "open"})


def _tsv_rows(path: Path, bad: BadRecords, required: tuple[str, ...]) -> Iterator[tuple[int, dict, list]]:
    """Rows of a pandas-style TSV (header line, quoted cells) with the line each row ends on."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        try:
            header = next(reader)
        except StopIteration:
            raise RecordError(f"{path}:1: (header): the file is empty; expected a header {list(required)}") from None
        missing = [c for c in required if c not in header]
        if missing:
            raise RecordError(f"{path}:1: (header): column {missing[0]!r} is missing; expected columns "
                              f"{list(required)} (is this the right file?)")
        for row in reader:
            if not row or all(not c for c in row):
                continue
            if len(row) != len(header):
                bad.report(f"{path}:{reader.line_num}", "(row)", f"{len(row)} cells, the header has {len(header)}",
                           "\t".join(row))
                continue
            yield reader.line_num, dict(zip(header, row)), row


def read_popqa(path: Path, bad: BadRecords) -> Iterator[RawExample]:
    for lineno, rec, row in _tsv_rows(path, bad, POPQA_COLUMNS):
        where = f"{path}:{lineno}"
        raw = "\t".join(row)
        try:
            answers = json.loads(rec["possible_answers"])
        except json.JSONDecodeError as e:
            bad.report(where, "possible_answers", f"not a JSON list ({e.msg})", raw)
            continue
        answers = _str_list(answers)
        if answers is None:
            bad.report(where, "possible_answers", "expected a non-empty JSON list of strings", raw)
            continue
        if not rec["question"].strip():
            bad.report(where, "question", "empty", raw)
            continue
        if not rec["id"].strip():
            bad.report(where, "id", "empty", raw)
            continue
        try:
            s_pop, o_pop = int(rec["s_pop"]), int(rec["o_pop"])
        except ValueError:
            bad.report(where, "s_pop", f"not an integer: {rec['s_pop']!r} / o_pop {rec['o_pop']!r}", raw)
            continue
        meta = {"type": rec["prop"], "subj": rec["subj"], "obj": rec["obj"], "s_pop": s_pop, "o_pop": o_pop}
        if rec.get("s_wiki_title"):
            meta["s_wiki_title"] = rec["s_wiki_title"]
        yield RawExample("popqa", rec["id"].strip(), rec["question"].strip(), answers, where, meta=meta)


def read_passages(path: Path, bad: BadRecords) -> Iterator[Chunk]:
    """A DPR-style passage corpus: `id\\ttext\\ttitle` with a header line (psgs_w100.tsv)."""
    for lineno, rec, row in _tsv_rows(path, bad, PASSAGE_COLUMNS):
        if not rec["id"].strip() or not rec["text"].strip():
            bad.report(f"{path}:{lineno}", "id" if not rec["id"].strip() else "text", "empty", "\t".join(row))
            continue
        yield Chunk(f"psg:{rec['id'].strip()}", rec["title"], rec["text"].strip())
