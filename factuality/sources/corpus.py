"""The DPR Wikipedia passage corpus (psgs_w100.tsv) that NQ-Open and PopQA retrieve from.

Not a dataset of its own: `nq` and `popqa` list it among their inputs and downloads, and share
one BM25 index over it per build (`corpus_index`). Raw format: `id\\ttext\\ttitle` with a header
line. Retrieval drafting (`draft_retrieved`): the best BM25 hit holding a gold answer is
support (DPR's `has_answer`), answer-free hits are the hard negatives.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from ..retrieval import BM25Index, chunk_words
from ..text import normalize_answer
from .base import (
    BadRecords,
    Chunk,
    Draft,
    DraftContext,
    RawExample,
    RemoteFile,
    find_span,
    tsv_rows,
)

INPUTS = {"corpus": "corpus/*.tsv"}
PSGS_W100 = RemoteFile("https://dl.fbaipublicfiles.com/dpr/wikipedia_split/psgs_w100.tsv.gz",
                       "corpus/psgs_w100.tsv", "gunzip")
PASSAGE_COLUMNS = ("id", "text", "title")
EXPECTED = "a DPR passage corpus, tab-separated id, text, title rows (psgs_w100.tsv)"


def read_passages(path: Path, bad: BadRecords) -> Iterator[Chunk]:
    """A DPR-style passage corpus: `id\\ttext\\ttitle` with a header line (psgs_w100.tsv)."""
    for where, rec, raw in tsv_rows(path, bad, PASSAGE_COLUMNS, EXPECTED):
        if not rec["id"].strip() or not rec["text"].strip():
            bad.report(where, "id" if not rec["id"].strip() else "text", "empty", raw)
            continue
        yield Chunk(f"psg:{rec['id'].strip()}", rec["title"], rec["text"].strip())


def load_corpus(paths: list[Path], bad: BadRecords, cfg) -> list[Chunk]:
    """Every passage of the corpus files; passages longer than cfg.chunk_words words are split."""
    chunks: list[Chunk] = []
    for path in paths:
        for c in tqdm(read_passages(path, bad), desc=f"corpus {path.name}",
                      disable=cfg.quiet or path.stat().st_size < 50_000_000, leave=False):
            parts = chunk_words(c.text, cfg.chunk_words)
            if len(parts) == 1:
                chunks.append(c)
            else:
                chunks += [Chunk(f"{c.doc_id}#{j}", c.title, t) for j, t in enumerate(parts)]
    return chunks


def corpus_index(ctx: DraftContext) -> tuple[list[Chunk], BM25Index]:
    """The passage corpus and its BM25 index, built once per build and shared by nq and popqa."""
    if "corpus" not in ctx.shared:
        corpus = load_corpus(ctx.inputs.get("corpus", []), ctx.bad, ctx.cfg)
        if not corpus:
            raise FileNotFoundError("NQ-Open/PopQA need a passage corpus (corpus/psgs_w100.tsv under the raw root); "
                                    "run `python build_data.py download --sources nq`")
        index = BM25Index([f"{c.title}. {c.text}" for c in corpus],
                          show_progress=not ctx.cfg.quiet and len(corpus) > 50_000, n_threads=ctx.cfg.n_threads)
        ctx.shared["corpus"] = (corpus, index)
    return ctx.shared["corpus"]


def draft_retrieved(exs: list[RawExample], ctx: DraftContext, source: str) -> list[Draft]:
    """NQ-Open / PopQA: BM25 over the passage corpus; the best hit holding a gold answer is support."""
    if not exs:
        return []
    corpus, index = corpus_index(ctx)
    return draft_from_index(exs, corpus, index, ctx, source, "bm25")


def draft_from_index(exs: list[RawExample], corpus: list[Chunk], index, ctx: DraftContext, source: str,
                     origin: str) -> list[Draft]:
    """Retrieve `retrieve_k` passages per question from `index` (BM25Index, or a dense / hybrid one
    with the same `search` and `norm`): the best hit holding a gold answer is support (DPR's
    `has_answer`), answer-free hits are the hard negatives; a question with no answer-holding hit is
    a retrieval miss (dropped or unanswerable, `retrieval_miss`)."""
    if not exs:
        return []
    cfg = ctx.cfg
    hits_all = index.search([ex.question for ex in exs], cfg.retrieve_k, show_progress=not cfg.quiet and len(exs) > 2000)
    drafts = []
    for ex, hits in zip(exs, hits_all):
        norm = [normalize_answer(a) for a in ex.answers if normalize_answer(a)]
        gold, negs = [], []
        for h in hits:
            c = corpus[h.index]
            if index.norm.has_answer(h.index, norm):
                if not gold:
                    span = find_span(c.text, ex.answers)
                    if span:
                        gold.append((c, [span], h.score))
                continue   # answer-holding passages are never negatives
            negs.append((c, h.score))
        if gold:
            c, spans, score = gold[0]
            drafts.append(Draft(ex, [(c, spans)], negs, True, origin, gold_scores=[score]))
        elif cfg.retrieval_miss == "unanswerable" and negs:
            drafts.append(Draft(ex, [], negs, False, origin, unanswerable_reason="retrieval_miss"))
        else:
            ctx.bad.drop(f"{source}_no_support_retrieved")
    return drafts
