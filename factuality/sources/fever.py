"""FEVER: claims to verify against Wikipedia sentences (SUPPORTS / REFUTES / NOT ENOUGH INFO).

Raw format: claims JSONL `{id, verifiable, label, claim, evidence: [[[ann_id, ev_id, page,
sent]]]}` and wiki-pages JSONL `{id, text, lines}` where `lines` is `N\\tsentence\\tlink\\t...`
rows joined by newlines; PTB escapes (-LRB- ...) are undone. The first evidence set whose
sentences are all in the wiki pages is gold; NOT ENOUGH INFO claims get BM25-retrieved sentences
and become unanswerable (the target is the refusal).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from tqdm import tqdm

from ..records import RecordError
from ..retrieval import BM25Index
from .base import (
    BadRecords,
    Chunk,
    Draft,
    DraftContext,
    RawExample,
    RemoteFile,
    jsonl_records,
    str_field,
)

NAME = "fever"
TASK = "claim"      # the prompt states a claim; the answer is the verdict
INPUTS = {"fever_claims": "fever/*.jsonl", "fever_wiki": "fever/wiki-pages/*.jsonl"}
DOWNLOADS = [RemoteFile("https://fever.ai/download/fever/paper_dev.jsonl", "fever/paper_dev.jsonl"),
             RemoteFile("https://fever.ai/download/fever/wiki-pages.zip", "fever", "unzip")]
FEVER_LABELS = ("SUPPORTS", "REFUTES", "NOT ENOUGH INFO")
EXPECTED_CLAIMS = "FEVER claims {id, label, claim, evidence}, one JSON object a line (e.g. paper_dev.jsonl)"
EXPECTED_WIKI = "FEVER wiki pages {id, text, lines}, one JSON object a line (wiki-pages/wiki-*.jsonl)"

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
    for where, rec, line in jsonl_records(path, bad, EXPECTED_CLAIMS):
        if not isinstance(rec.get("id"), int):
            bad.report(where, "id", "missing or not an integer", line)
            continue
        label, claim, ev = rec.get("label"), str_field(rec, "claim"), rec.get("evidence")
        if label not in FEVER_LABELS:
            bad.report(where, "label", f"{label!r} is not one of {list(FEVER_LABELS)}", line)
            continue
        if claim is None:
            bad.report(where, "claim", "missing or not a non-empty string", line)
            continue
        if not (isinstance(ev, list) and all(isinstance(s, list) and all(
                isinstance(e, list) and len(e) == 4 for e in s) for s in ev)):
            bad.report(where, "evidence", "expected [[[annotation_id, evidence_id, page, sentence]]]", line)
            continue
        sets: list[list[tuple[str, int]]] = []
        if label != "NOT ENOUGH INFO":
            for s in ev:
                one = [(e[2], e[3]) for e in s if isinstance(e[2], str) and isinstance(e[3], int)]
                if len(one) != len(s):
                    bad.report(where, "evidence", "a verifiable claim's evidence needs [.., .., page, sentence] "
                               "with a page title and a sentence number", line)
                    sets = []
                    break
                if one not in sets:
                    sets.append(one)
            if not sets:
                continue
        yield RawExample(NAME, str(rec["id"]), claim.strip(), [label], str(where), label=label, fever_sets=sets,
                         meta={"type": "claim", "original_label": label, "verifiable": rec.get("verifiable")})


READERS = {"fever_claims": read_fever_claims}


@dataclass
class WikiSentence:
    page: str       # FEVER page id, e.g. "Soul_Food_-LRB-film-RRB-"
    sent_id: int
    text: str       # unescaped sentence

    @property
    def doc_id(self) -> str:
        return f"{self.page}:{self.sent_id}"


# A JSON string literal (RFC 8259); the page id read from the start of a line without parsing the rest
_JSON_STR = r'"[^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*"'
_ID_FIRST = re.compile(r'\{[ \t\r\n]*"id"[ \t\r\n]*:[ \t\r\n]*(' + _JSON_STR + r')[ \t\r\n]*[,}]')
_scanstring = json.decoder.scanstring


def unwanted_page(pages: set[str]) -> Callable[[str], bool]:
    """`skip` for the JSONL reader: True for a line that certainly holds a page other than `pages` (or
    the empty-id page), decided from the id the line starts with (`{"id": "..."`, escapes decoded as
    json does) without parsing the rest. A line the cheap path is not certain of (not starting that
    way, the id not the first key, a second "id" key possible) is parsed in full, as is every line of
    a wanted page, so what is read and what is reported for them is what the full parse gives."""
    def skip(line: str) -> bool:
        end = line.find('", ', 8) if line.startswith('{"id": "') else -1
        pid = line[8:end]
        if end < 0 or "\\" in pid or '"' in pid:     # not the dump's plain `{"id": "...", `: the JSON grammar
            m = _ID_FIRST.match(line)
            if m is None:
                return False
            pid, end = _scanstring(m.group(1), 1)[0], m.end()
        if pid and pid in pages:
            return False
        # a later "id" key (json keeps the last one), maybe spelt with \u0069 / \u0064: parse in full
        return line.find('"id"', end) < 0 and line.find("\\u006", end) < 0
    return skip


def read_wiki_pages(path: Path, bad: BadRecords, pages: set[str] | None = None) -> Iterator[WikiSentence]:
    """Sentences of FEVER wiki-pages JSONL; with `pages`, only those pages (saves memory and time: a
    line of another page is passed over from its id, unparsed; `unwanted_page`)."""
    skip = unwanted_page(pages) if pages is not None else None
    for where, rec, line in jsonl_records(path, bad, EXPECTED_WIKI, skip=skip):
        pid, lines = rec.get("id"), rec.get("lines")
        if not isinstance(pid, str):
            bad.report(where, "id", "missing or not a string", line[:500])
            continue
        if pid == "" or (pages is not None and pid not in pages):
            continue   # the real dump starts with an empty-id page
        if not isinstance(lines, str):
            bad.report(where, "lines", "missing or not a string of 'N\\tsentence\\t...' rows", line[:500])
            continue
        for row in lines.split("\n"):
            if not row.strip():
                continue
            parts = row.split("\t")
            if not parts[0].isdigit():
                bad.report(where, "lines", f"row {row[:60]!r} does not start with a sentence number", line[:500])
                break
            text = unescape_ptb(parts[1]) if len(parts) > 1 else ""
            if text:
                yield WikiSentence(pid, int(parts[0]), text)


def read_wiki_files(paths: list[Path], bad: BadRecords, pages: set[str] | None = None,
                    quiet: bool = True) -> list[WikiSentence]:
    """The sentences of every wiki-pages file, in file order (`read_wiki_pages`), with one progress bar
    over the files' bytes (rate and time left). One process: on two cores a pool of readers was no faster
    (README, "The corpus at full scale")."""
    sizes = [p.stat().st_size for p in paths]
    out: list[WikiSentence] = []
    with tqdm(total=sum(sizes), unit="B", unit_scale=True, desc="FEVER wiki pages", leave=False,
              disable=quiet or sum(sizes) < 50_000_000) as bar:
        for path, size in zip(paths, sizes):
            out += read_wiki_pages(path, bad, pages)
            bar.update(size)
    return out


def draft(exs: list[RawExample], ctx: DraftContext) -> list[Draft]:
    """Gold: the first evidence set found in the wiki pages. Negatives: BM25-close sentences that no
    evidence set cites. NOT ENOUGH INFO: retrieved sentences only, unanswerable."""
    cfg, bad = ctx.cfg, ctx.bad
    pages_needed = {p for ex in exs for s in ex.fever_sets for p, _ in s}
    scope = pages_needed if cfg.fever_wiki_scope == "referenced" else None
    sentences = read_wiki_files(ctx.inputs.get("fever_wiki", []), bad, scope, cfg.quiet)
    if not sentences:
        if exs:
            raise RecordError("FEVER: no wiki-pages sentences found (expected fever/wiki-pages/*.jsonl under the raw "
                              "root); download them with `python build_data.py download --sources fever`")
        return []
    by_key = {(s.page, s.sent_id): i for i, s in enumerate(sentences)}
    chunks = [Chunk(s.doc_id, page_title(s.page), s.text) for s in sentences]
    index = BM25Index([f"{c.title}. {c.text}" for c in chunks], show_progress=not cfg.quiet and len(chunks) > 50_000,
                      n_threads=cfg.n_threads)
    usable: list[tuple[RawExample, list[int] | None]] = []
    for ex in exs:
        if ex.label == "NOT ENOUGH INFO":
            usable.append((ex, None))
            continue
        chosen = next((s for s in ex.fever_sets if all((p, n) in by_key for p, n in s)), None)
        if chosen is None:
            bad.drop("fever_evidence_not_in_wiki_pages")
            continue
        usable.append((ex, [by_key[k] for k in chosen][:cfg.max_support_chunks]))
    excl = []
    for ex, gold_idx in usable:
        all_ev = {by_key[(p, n)] for s in ex.fever_sets for p, n in s if (p, n) in by_key}
        excl.append(all_ev | set(gold_idx or []))
    mined = index.mine([ex.question for ex, _ in usable], [[] for _ in usable], cfg.num_distractors + cfg.max_support_chunks + 1,
                       exclude=excl, k=cfg.retrieve_k, show_progress=not cfg.quiet and len(usable) > 2000)
    drafts = []
    for (ex, gold_idx), hits in zip(usable, mined):
        negs = [(chunks[h.index], h.score) for h in hits]
        if gold_idx is None:
            if not negs:
                bad.drop("fever_nei_nothing_retrieved")
                continue
            drafts.append(Draft(ex, [], negs, False, "wiki_bm25", unanswerable_reason="fever_nei"))
        else:
            gold = [(chunks[i], [(0, len(chunks[i].text))]) for i in gold_idx]
            drafts.append(Draft(ex, gold, negs, True, "wiki"))
    return drafts
