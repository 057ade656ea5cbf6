"""Build the processed grounded-QA corpus: raw datasets -> data/processed/{train,val,test}.jsonl.

Order of work (each step in its own function, so tests can call them):
1. resolve the raw roots (`{data_dir}/raw`, or the bundled sample) and find the input files;
2. verify every input's sha256 against the manifest (nothing is written when one differs);
3. read each source with its reader (sources.py), malformed records -> error or rejects file;
4. remove duplicate questions (normalised), count them;
5. attach evidence: gold/support chunks and BM25-ranked hard negatives within a token budget;
   FEVER NOT ENOUGH INFO and a seeded `no_oracle_fraction` of answerable examples become
   unanswerable (the target is a refusal);
6. shuffle each example's evidence with a per-example seeded RNG and name chunks E1, E2, ...;
7. split by a seeded hash of the normalised question (no question in two splits);
8. validate everything against records.EXAMPLE, then write the splits, rejects, run card and
   (when accepted) the manifest, all atomically.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from . import sources as S
from .config import to_dict
from .provenance import run_card, set_seed, write_run_card
from .records import (EXAMPLE, SCHEMA_VERSION, SOURCES, SPLITS, RecordError, atomic_write_json,
                      atomic_write_text, dumps_line, sha256_file, with_hash)
from .retrieval import BM25Index, approx_tokens, chunk_words, rank_small, truncate_to_tokens, window_around_span
from .text import has_answer, normalize_answer

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DIR = REPO_ROOT / "data" / "sample"
MANIFEST_NAME = "raw_manifest.json"


@dataclass
class BuildConfig:
    data_dir: str = field(default="data", metadata={
        "help": "root for raw inputs ({data_dir}/raw), the hash manifest ({data_dir}/raw_manifest.json) and "
                "outputs ({data_dir}/processed); when {data_dir}/raw holds no files the bundled sample "
                "(data/sample, with its own shipped manifest) is used"})
    raw_dir: str | None = field(default=None, metadata={
        "help": "raw-data root to read instead of {data_dir}/raw (same layout: hotpotqa/, fever/, "
                "fever/wiki-pages/, nq/, popqa/, corpus/)"})
    out_dir: str | None = field(default=None, metadata={"help": "output folder; default {data_dir}/processed"})
    sources: list[str] = field(default_factory=lambda: list(SOURCES), metadata={
        "help": "datasets to build, comma separated (fever,hotpotqa,nq,popqa)"})
    seed: int = field(default=42, metadata={
        "help": "seed for evidence order, no-oracle choice, output order and the split hash salt"})
    accept_new_hash: bool = field(default=False, metadata={
        "help": "record the sha256 of new or changed raw files in the manifest instead of stopping"})
    rejects: str | None = field(default=None, metadata={
        "help": "JSONL file for malformed raw records (then counted, not fatal); default: the first one stops the run"})
    download: bool = field(default=False, metadata={
        "help": "download the official raw files into {data_dir}/raw first (see `build_data.py download -h`)"})
    num_distractors: int = field(default=3, metadata={
        "help": "hard-negative chunks shown next to the gold ones (BM25-ranked, never holding a gold answer)"})
    max_evidence_tokens: int = field(default=600, metadata={
        "help": "budget for all evidence shown, in approximate tokens (white-space words x 4/3, no tokenizer "
                "needed); support chunks are cut around their spans, distractors dropped or cut to fit"})
    max_support_chunks: int = field(default=2, metadata={
        "help": "at most this many support chunks per example (HotpotQA needs 2; NQ/PopQA retrieval keeps 1)"})
    retrieve_k: int = field(default=20, metadata={
        "help": "BM25 candidates fetched per question before filtering out answer-holding passages"})
    no_oracle_fraction: float = field(default=0.15, metadata={
        "help": "share of answerable examples whose support chunks are removed (RAFT's no-oracle case); they "
                "become answerable=false with a refusal target, original answers kept"})
    split_fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1], metadata={
        "help": "train,val,test shares (sum 1); assigned by a seeded hash of the normalised question"})
    retrieval_miss: str = field(default="drop", metadata={
        "choices": ["drop", "unanswerable"],
        "help": "NQ-Open/PopQA questions whose retrieved passages hold no gold answer: drop them (counted) or "
                "keep them as unanswerable (noisier: distant supervision misses paraphrased answers)"})
    fever_wiki_scope: str = field(default="all", metadata={
        "choices": ["all", "referenced"],
        "help": "FEVER sentences indexed for hard negatives and NOT ENOUGH INFO evidence: all pages, or only pages "
                "cited by some claim (use 'referenced' with the full 5.4M-page dump to bound memory)"})
    chunk_words: int = field(default=100, metadata={
        "help": "corpus passages longer than this many words are split into chunks of this size (psgs_w100 "
                "passages are already 100 words)"})
    max_examples_per_source: int | None = field(default=None, metadata={
        "help": "keep at most this many examples per source (a seeded choice), for quick runs"})
    n_threads: int = field(default=0, metadata={"help": "threads for bm25s batched retrieval (0: one, -1: all cores)"})
    quiet: bool = field(default=False, metadata={"help": "no progress bars or table"})

    def validate(self) -> None:
        bad = [s for s in self.sources if s not in SOURCES]
        if bad:
            raise ValueError(f"sources: unknown source {bad[0]!r}; choose from {', '.join(SOURCES)}")
        if len(self.split_fractions) != 3 or abs(sum(self.split_fractions) - 1) > 1e-6 or min(self.split_fractions) < 0:
            raise ValueError(f"split_fractions {self.split_fractions} must be three shares >= 0 that sum to 1, "
                             "e.g. --split-fractions 0.8,0.1,0.1")
        if not 0 <= self.no_oracle_fraction < 1:
            raise ValueError(f"no_oracle_fraction ({self.no_oracle_fraction}) must be in [0, 1)")
        if self.num_distractors < 0 or self.max_support_chunks < 1 or self.retrieve_k < 1:
            raise ValueError("num_distractors must be >= 0, max_support_chunks and retrieve_k >= 1")
        if self.max_evidence_tokens < 64:
            raise ValueError(f"max_evidence_tokens ({self.max_evidence_tokens}) is too small; use >= 64")
        if self.retrieval_miss not in ("drop", "unanswerable"):
            raise ValueError("retrieval_miss must be 'drop' or 'unanswerable'")
        if self.fever_wiki_scope not in ("all", "referenced"):
            raise ValueError("fever_wiki_scope must be 'all' or 'referenced'")


class HashMismatch(RuntimeError):
    """A raw input differs from the manifest (or is new) and --accept-new-hash was not given."""


# --------------------------------------------------------------------------------------------
# Inputs and hashes
# --------------------------------------------------------------------------------------------
INPUT_GLOBS = {  # role -> (source, glob under a raw root)
    "hotpotqa": ("hotpotqa", "hotpotqa/*.json"),
    "fever_claims": ("fever", "fever/*.jsonl"),
    "fever_wiki": ("fever", "fever/wiki-pages/*.jsonl"),
    "nq_dpr": ("nq", "nq/*.json"),
    "nq_open": ("nq", "nq/*.jsonl"),
    "popqa": ("popqa", "popqa/*.tsv"),
    "corpus": ("nq,popqa", "corpus/*.tsv"),
}


@dataclass
class RawLayout:
    roots: list[Path]
    manifest: Path
    bundled_sample: bool


def resolve_layout(cfg: BuildConfig) -> RawLayout:
    data_dir = Path(cfg.data_dir)
    if cfg.raw_dir:
        return RawLayout([Path(cfg.raw_dir)], data_dir / MANIFEST_NAME, False)
    raw = data_dir / "raw"
    if raw.is_dir() and any(p.is_file() for p in raw.rglob("*")):
        return RawLayout([raw], data_dir / MANIFEST_NAME, False)
    return RawLayout([SAMPLE_DIR / "raw", SAMPLE_DIR / "fixtures"], SAMPLE_DIR / MANIFEST_NAME, True)


def discover_inputs(roots: list[Path], sources: list[str]) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for role, (srcs, pattern) in INPUT_GLOBS.items():
        if not set(srcs.split(",")) & set(sources):
            continue
        files = []
        for root in roots:
            files += sorted(p for p in root.glob(pattern) if p.is_file() and not p.name.startswith("."))
        out[role] = files
    return out


def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()


def verify_hashes(files: list[Path], manifest_path: Path, accept_new: bool) -> tuple[dict[str, str], dict | None]:
    """sha256 of each input checked against the manifest.

    Returns ({relative path: sha256}, manifest to write or None). Raises HashMismatch naming the
    file, both hashes and the fix; nothing has been written at that point.
    """
    base = manifest_path.parent
    manifest = {"files": {}}
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            assert isinstance(manifest.get("files"), dict)
        except (json.JSONDecodeError, AssertionError):
            raise HashMismatch(f"{manifest_path}: not a valid hash manifest ({{'files': {{path: sha256}}}}); "
                               "delete it and rerun with --accept-new-hash") from None
    recorded = manifest["files"]
    current = {_rel(p, base): sha256_file(p) for p in files}
    changed = False
    for rel, digest in current.items():
        old = recorded.get(rel)
        if old == digest:
            continue
        if not accept_new:
            if old is None:
                raise HashMismatch(
                    f"{base / rel}: new raw input, sha256 {digest} is not in {manifest_path}. If you added it on "
                    "purpose, rerun with --accept-new-hash to record it; nothing was written")
            raise HashMismatch(
                f"{base / rel}: sha256 {digest} differs from {old} recorded in {manifest_path}; the raw file "
                "changed since it was accepted. Restore or re-download it (python build_data.py download), or, if "
                "the change is intended, rerun with --accept-new-hash; nothing was written")
        recorded[rel] = digest
        changed = True
    if not manifest_path.exists():
        changed = True
    manifest["files"] = dict(sorted(recorded.items()))
    manifest.setdefault("note", "sha256 of every raw input; build_data.py refuses inputs that differ "
                                "(rerun with --accept-new-hash to record a deliberate change)")
    return current, (manifest if changed else None)


# --------------------------------------------------------------------------------------------
# Seeded hashing helpers
# --------------------------------------------------------------------------------------------
def unit_hash(*parts: Any) -> float:
    """A number in [0, 1) from a sha256 of the parts: seeded, order-independent choices."""
    h = hashlib.sha256(":".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def assign_split(question: str, seed: int, fractions: list[float]) -> str:
    u = unit_hash("split", seed, normalize_answer(question))
    acc = 0.0
    for name, frac in zip(SPLITS, fractions):
        acc += frac
        if u < acc:
            return name
    return SPLITS[-1]


def question_key(question: str) -> str:
    return normalize_answer(question) or question.strip().lower()


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def read_sources(cfg: BuildConfig, inputs: dict[str, list[Path]], bad: S.BadRecords,
                 base: Path | None = None) -> dict[str, list[S.RawExample]]:
    """All raw examples per source, in file order; `where` made relative to `base` (the manifest's folder)."""
    out: dict[str, list[S.RawExample]] = {s: [] for s in cfg.sources}
    readers = [("hotpotqa", "hotpotqa", S.read_hotpotqa), ("fever_claims", "fever", S.read_fever_claims),
               ("nq_dpr", "nq", S.read_dpr), ("nq_open", "nq", S.read_nq_open), ("popqa", "popqa", S.read_popqa)]
    for role, source, reader in readers:
        if source not in cfg.sources:
            continue
        for path in inputs.get(role, []):
            rel = _rel(path, base) if base else str(path)
            for ex in reader(path, bad):
                ex.where = rel + ex.where[len(str(path)):] if ex.where.startswith(str(path)) else ex.where
                out[source].append(ex)
    if cfg.max_examples_per_source:
        for s, exs in out.items():
            if len(exs) > cfg.max_examples_per_source:
                keep = sorted(exs, key=lambda e: unit_hash("cap", cfg.seed, e.id))[:cfg.max_examples_per_source]
                keep_ids = {e.id for e in keep}
                bad.dropped[f"{s}_over_max_examples_per_source"] += len(exs) - len(keep)
                out[s] = [e for e in exs if e.id in keep_ids]
    return out


def dedupe(raw: dict[str, list[S.RawExample]]) -> tuple[dict[str, list[S.RawExample]], Counter]:
    """Keep the first example of each normalised question (sources in SOURCES order)."""
    seen: set[str] = set()
    removed: Counter = Counter()
    out: dict[str, list[S.RawExample]] = {}
    for source in SOURCES:
        if source not in raw:
            continue
        keep = []
        for ex in raw[source]:
            k = question_key(ex.question)
            if k in seen:
                removed[source] += 1
                continue
            seen.add(k)
            keep.append(ex)
        out[source] = keep
    return out, removed


# --------------------------------------------------------------------------------------------
# Evidence assembly
# --------------------------------------------------------------------------------------------
@dataclass
class Draft:
    """An example before shuffling: gold chunks with spans and ranked negatives."""

    raw: S.RawExample
    gold: list[tuple[S.Chunk, list[tuple[int, int]]]]
    negatives: list[tuple[S.Chunk, float | None]]
    answerable: bool
    evidence_origin: str
    unanswerable_reason: str | None = None
    gold_scores: list[float | None] = field(default_factory=list)


def _chunk_tokens(c: S.Chunk) -> int:
    return approx_tokens(c.title) + approx_tokens(c.text)


def fit_budget(gold, negatives, max_tokens: int, n_neg: int):
    """Cut gold chunks around their spans and add negatives in rank order until the budget is used."""
    gold_out = []
    if gold:
        total = sum(_chunk_tokens(c) for c, _ in gold)
        allowance = max_tokens // len(gold) if total > max_tokens else None
        for c, spans in gold:
            if allowance is not None and _chunk_tokens(c) > allowance:
                s0, e0 = spans[0]
                text, a, b = window_around_span(c.text, s0, e0, max(16, allowance - approx_tokens(c.title)))
                shift = a - s0
                kept = [(x + shift, y + shift) for x, y in spans if 0 <= x + shift < y + shift <= len(text)]
                c, spans = S.Chunk(c.doc_id, c.title, text), kept or [(a, b)]
            gold_out.append((c, spans))
    used = sum(_chunk_tokens(c) for c, _ in gold_out)
    neg_out = []
    for c, score in negatives:
        if len(neg_out) >= n_neg:
            break
        room = max_tokens - used
        t = _chunk_tokens(c)
        if t <= room:
            neg_out.append((c, score))
            used += t
        elif room - approx_tokens(c.title) >= 48:
            text = truncate_to_tokens(c.text, room - approx_tokens(c.title))
            neg_out.append((S.Chunk(c.doc_id, c.title, text), score))
            used += _chunk_tokens(neg_out[-1][0])
            break
        else:
            break
    return gold_out, neg_out, used


def finalize(d: Draft, cfg: BuildConfig, split: str) -> dict:
    """Apply the no-oracle choice and the budget, shuffle with a per-example seed, name chunks E1.."""
    ex = d.raw
    answerable, gold, reason = d.answerable, d.gold, d.unanswerable_reason
    meta = {k: v for k, v in ex.meta.items() if v is not None}
    n_neg = cfg.num_distractors
    if answerable and cfg.no_oracle_fraction > 0 and d.negatives and \
            unit_hash("no_oracle", cfg.seed, ex.id) < cfg.no_oracle_fraction:
        meta["no_oracle"] = True
        meta["removed_support_doc_ids"] = [c.doc_id for c, _ in gold]
        n_neg = cfg.num_distractors + len(gold)   # keep the prompt about as long as the oracle one
        answerable, gold, reason = False, [], "no_oracle"
    elif not answerable:
        n_neg = cfg.num_distractors + 1
    gold, negs, used = fit_budget(gold, d.negatives, cfg.max_evidence_tokens, n_neg)
    gold_scores = d.gold_scores if gold else []
    items = [(c, spans, True, gold_scores[i] if i < len(gold_scores) else None) for i, (c, spans) in enumerate(gold)]
    items += [(c, [], False, s) for c, s in negs]
    rng = random.Random(f"{cfg.seed}:order:{ex.id}")
    rng.shuffle(items)
    evidence, support, hard_negs, scores = [], [], [], {}
    for i, (c, spans, is_gold, score) in enumerate(items, start=1):
        cid = f"E{i}"
        evidence.append({"id": cid, "title": c.title, "text": c.text, "doc_id": c.doc_id})
        if is_gold:
            support += [{"chunk_id": cid, "start": a, "end": b} for a, b in spans]
        else:
            hard_negs.append(cid)
        if score is not None:
            scores[cid] = round(score, 4)
    meta.update({
        "original_id": ex.orig_id,
        "raw_record": ex.where,
        "question_norm_hash": S.short_hash(question_key(ex.question), 16),
        "evidence_origin": d.evidence_origin,
        "gold_chunk_ids": [e["id"] for e, (_, _, g, _) in zip(evidence, items) if g],
        "evidence_tokens": used,
        "no_oracle": meta.get("no_oracle", False),
    })
    if scores:
        meta["retrieval_scores"] = scores
    if reason:
        meta["unanswerable_reason"] = reason
    rec = {
        "schema_version": SCHEMA_VERSION,
        "id": ex.id,
        "source": ex.source,
        "split": split,
        "question": ex.question,
        "answers": ex.answers,
        "answerable": answerable,
        "evidence": evidence,
        "support": support,
        "hard_negatives": hard_negs,
        "meta": meta,
    }
    return with_hash(rec)


def _filter_candidates(cands: list[S.Chunk], answers: list[str], exclude: set[str]) -> list[S.Chunk]:
    out, seen = [], set(exclude)
    for c in cands:
        if c.doc_id in seen or has_answer(c.text, answers):
            continue
        seen.add(c.doc_id)
        out.append(c)
    return out


def draft_hotpotqa(exs: list[S.RawExample], cfg: BuildConfig) -> list[Draft]:
    drafts = []
    for ex in tqdm(exs, desc="hotpotqa: rank distractors", disable=cfg.quiet or len(exs) < 2000):
        gold = ex.gold[:cfg.max_support_chunks]
        cands = _filter_candidates(ex.candidates, ex.answers, {c.doc_id for c, _ in ex.gold})
        ranked = rank_small(ex.question, [f"{c.title}. {c.text}" for c in cands])
        negs = [(cands[h.index], h.score) for h in ranked]
        drafts.append(Draft(ex, gold, negs, True, "context"))
    return drafts


def draft_dpr(exs: list[S.RawExample], cfg: BuildConfig) -> list[Draft]:
    drafts = []
    for ex in exs:
        cands = _filter_candidates(ex.candidates, ex.answers, {c.doc_id for c, _ in ex.gold})
        drafts.append(Draft(ex, ex.gold[:1], [(c, None) for c in cands], True, "dpr"))
    return drafts


def load_corpus(paths: list[Path], bad: S.BadRecords, cfg: BuildConfig) -> list[S.Chunk]:
    chunks: list[S.Chunk] = []
    for path in paths:
        for c in tqdm(S.read_passages(path, bad), desc=f"corpus {path.name}",
                      disable=cfg.quiet or path.stat().st_size < 50_000_000, leave=False):
            parts = chunk_words(c.text, cfg.chunk_words)
            if len(parts) == 1:
                chunks.append(c)
            else:
                chunks += [S.Chunk(f"{c.doc_id}#{j}", c.title, t) for j, t in enumerate(parts)]
    return chunks


def draft_retrieved(exs: list[S.RawExample], index: BM25Index, corpus: list[S.Chunk], cfg: BuildConfig,
                    bad: S.BadRecords, source: str) -> list[Draft]:
    """NQ-Open / PopQA: BM25 over the passage corpus; the best hit holding a gold answer is support."""
    if not exs:
        return []
    hits_all = index.search([ex.question for ex in exs], cfg.retrieve_k, show_progress=not cfg.quiet and len(exs) > 2000)
    drafts = []
    for ex, hits in zip(exs, hits_all):
        norm = [normalize_answer(a) for a in ex.answers if normalize_answer(a)]
        gold, negs = [], []
        for h in hits:
            c = corpus[h.index]
            if index.norm.has_answer(h.index, norm):
                if not gold:
                    span = S.find_span(c.text, ex.answers)
                    if span:
                        gold.append((c, [span], h.score))
                continue   # answer-holding passages are never negatives
            negs.append((c, h.score))
        if gold:
            c, spans, score = gold[0]
            drafts.append(Draft(ex, [(c, spans)], negs, True, "bm25", gold_scores=[score]))
        elif cfg.retrieval_miss == "unanswerable" and negs:
            drafts.append(Draft(ex, [], negs, False, "bm25", unanswerable_reason="retrieval_miss"))
        else:
            bad.drop(f"{source}_no_support_retrieved")
    return drafts


def draft_fever(exs: list[S.RawExample], wiki_paths: list[Path], cfg: BuildConfig, bad: S.BadRecords) -> list[Draft]:
    pages_needed = {p for ex in exs for s in ex.fever_sets for p, _ in s}
    scope = pages_needed if cfg.fever_wiki_scope == "referenced" else None
    sentences: list[S.WikiSentence] = []
    for path in wiki_paths:
        sentences += list(tqdm(S.read_wiki_pages(path, bad, scope), desc=f"wiki {path.name}",
                               disable=cfg.quiet or path.stat().st_size < 50_000_000, leave=False))
    if not sentences:
        if exs:
            raise RecordError("FEVER: no wiki-pages sentences found (expected fever/wiki-pages/*.jsonl under the raw "
                              "root); download them with `python build_data.py download --sources fever`")
        return []
    by_key = {(s.page, s.sent_id): i for i, s in enumerate(sentences)}
    chunks = [S.Chunk(s.doc_id, S.page_title(s.page), s.text) for s in sentences]
    index = BM25Index([f"{c.title}. {c.text}" for c in chunks], show_progress=not cfg.quiet and len(chunks) > 50_000,
                      n_threads=cfg.n_threads)
    usable: list[tuple[S.RawExample, list[int] | None]] = []
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


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
def build(cfg: BuildConfig) -> dict:
    """Everything but the printing; returns the summary (see `main`)."""
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    set_seed(cfg.seed)
    if cfg.download:
        from .download import download_sources
        download_sources(Path(cfg.data_dir) / "raw", cfg.sources, quiet=cfg.quiet)
    layout = resolve_layout(cfg)
    inputs = discover_inputs(layout.roots, cfg.sources)
    all_files = sorted({p for files in inputs.values() for p in files})
    if not all_files:
        raise FileNotFoundError(f"no raw input files under {', '.join(map(str, layout.roots))} for sources "
                                f"{cfg.sources}; run `python build_data.py download --data-dir {cfg.data_dir}`")
    for s in cfg.sources:
        roles = [r for r, (srcs, _) in INPUT_GLOBS.items() if s in srcs.split(",") and r != "corpus"]
        if not any(inputs.get(r) for r in roles):
            raise FileNotFoundError(f"source {s!r}: no raw files under {', '.join(map(str, layout.roots))} "
                                    f"(expected {', '.join(INPUT_GLOBS[r][1] for r in roles)}); drop it from --sources "
                                    "or download it")
    t = time.perf_counter()
    hashes, manifest_to_write = verify_hashes(all_files, layout.manifest, cfg.accept_new_hash)
    timings["hash_s"] = time.perf_counter() - t

    bad = S.BadRecords(collect=cfg.rejects is not None)
    t = time.perf_counter()
    raw = read_sources(cfg, inputs, bad, layout.manifest.parent)
    raw, dups = dedupe(raw)
    timings["read_s"] = time.perf_counter() - t

    t = time.perf_counter()
    drafts: list[Draft] = []
    if "hotpotqa" in raw:
        drafts += draft_hotpotqa(raw["hotpotqa"], cfg)
    if "fever" in raw:
        drafts += draft_fever(raw["fever"], inputs.get("fever_wiki", []), cfg, bad)
    retrieval_exs = {s: [e for e in raw.get(s, []) if not e.gold] for s in ("nq", "popqa")}
    if "nq" in raw:
        drafts += draft_dpr([e for e in raw["nq"] if e.gold], cfg)
    if any(retrieval_exs.values()):
        corpus = load_corpus(inputs.get("corpus", []), bad, cfg)
        if not corpus:
            raise FileNotFoundError("NQ-Open/PopQA need a passage corpus (corpus/psgs_w100.tsv under the raw root); "
                                    "run `python build_data.py download --sources nq`")
        index = BM25Index([f"{c.title}. {c.text}" for c in corpus], show_progress=not cfg.quiet and len(corpus) > 50_000,
                          n_threads=cfg.n_threads)
        for s, exs in retrieval_exs.items():
            drafts += draft_retrieved(exs, index, corpus, cfg, bad, s)
    timings["evidence_s"] = time.perf_counter() - t

    t = time.perf_counter()
    splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for d in drafts:
        split = assign_split(d.raw.question, cfg.seed, cfg.split_fractions)
        splits[split].append(finalize(d, cfg, split))
    for name, recs in splits.items():
        recs.sort(key=lambda r: r["id"])
        random.Random(f"{cfg.seed}:shuffle:{name}").shuffle(recs)
        for r in recs:
            EXAMPLE.validate(r, where=f"{name} id={r['id']!r} (from {r['meta']['raw_record']})")
    timings["assemble_s"] = time.perf_counter() - t

    # ---- write: everything validated above, each file atomic ----
    out_dir = Path(cfg.out_dir) if cfg.out_dir else Path(cfg.data_dir) / "processed"
    outputs = {}
    for name, recs in splits.items():
        path = out_dir / f"{name}.jsonl"
        atomic_write_text(path, "".join(dumps_line(r) for r in recs))
        outputs[name] = str(path)
    if cfg.rejects:
        atomic_write_text(cfg.rejects, "".join(dumps_line(r) for r in bad.items))
    if manifest_to_write is not None:
        atomic_write_json(layout.manifest, manifest_to_write)

    counts: dict[str, dict[str, dict[str, int]]] = {}
    labels: dict[str, Counter] = defaultdict(Counter)
    for name, recs in splits.items():
        for r in recs:
            c = counts.setdefault(r["source"], {}).setdefault(name, {"answerable": 0, "unanswerable": 0})
            c["answerable" if r["answerable"] else "unanswerable"] += 1
            labels[r["source"]][r["meta"].get("original_label") or r["meta"].get("unanswerable_reason") or "answerable"] += 1
    timings["total_s"] = time.perf_counter() - t_start
    summary = {
        "outputs": outputs,
        "out_dir": str(out_dir),
        "bundled_sample": layout.bundled_sample,
        "manifest": str(layout.manifest),
        "manifest_updated": manifest_to_write is not None,
        "counts": counts,
        "split_sizes": {k: len(v) for k, v in splits.items()},
        "total": sum(len(v) for v in splits.values()),
        "labels": {k: dict(v) for k, v in labels.items()},
        "duplicates_removed": dict(dups),
        "rejected": len(bad.items),
        "rejects_file": cfg.rejects,
        "dropped": dict(bad.dropped),
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    card = run_card("build_data.py", to_dict(cfg), inputs=hashes, **{k: v for k, v in summary.items() if k != "outputs"},
                    output_sha256={k: sha256_file(v) for k, v in outputs.items()})
    write_run_card(out_dir / "run_card.json", card)
    summary["run_card"] = str(out_dir / "run_card.json")
    return summary


def format_table(summary: dict) -> str:
    rows = [("source", "split", "answerable", "unanswerable", "total")]
    tot = Counter()
    for source in SOURCES:
        for split in SPLITS:
            c = summary["counts"].get(source, {}).get(split)
            if not c:
                continue
            rows.append((source, split, str(c["answerable"]), str(c["unanswerable"]),
                         str(c["answerable"] + c["unanswerable"])))
            tot[split, "a"] += c["answerable"]
            tot[split, "u"] += c["unanswerable"]
    for split in SPLITS:
        rows.append(("all", split, str(tot[split, "a"]), str(tot[split, "u"]), str(tot[split, "a"] + tot[split, "u"])))
    a, u = sum(v for (s, k), v in tot.items() if k == "a"), sum(v for (s, k), v in tot.items() if k == "u")
    rows.append(("all", "all", str(a), str(u), str(a + u)))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    dups = summary["duplicates_removed"]
    lines.append(f"duplicates removed: {sum(dups.values())}" + (f" ({', '.join(f'{k} {v}' for k, v in dups.items())})" if dups else ""))
    lines.append(f"rejected raw records: {summary['rejected']}" + (f" (see {summary['rejects_file']})" if summary["rejects_file"] else ""))
    dropped = summary["dropped"]
    lines.append(f"dropped (well-formed but unusable): {sum(dropped.values())}"
                 + (f" ({', '.join(f'{k} {v}' for k, v in sorted(dropped.items()))})" if dropped else ""))
    lines.append(f"time: {summary['timings']['total_s']:.1f} s; outputs in {summary['out_dir']}"
                 + (" (bundled sample)" if summary["bundled_sample"] else ""))
    return "\n".join(lines)


def main(cfg: BuildConfig) -> dict:
    summary = build(cfg)
    if not cfg.quiet:
        print(format_table(summary))
    return summary
