"""Chunking, cheap token counts, and BM25 retrieval / hard-negative mining (bm25s).

Hard negatives are mined in one batch: every query goes to `bm25s.BM25.retrieve` at once (k
small), and the passages that hold a gold answer (`text.has_answer`) or are the example's own
gold chunks are filtered out afterwards. Queries left short after filtering are retried once
with a larger k. This is what makes 10k questions over 100k passages take seconds, not hours
(see bench/bench_build_data.py).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import bm25s
import numpy as np

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


class _NormCache:
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
        self.norm = _NormCache(self.texts)
        self.model = bm25s.BM25()
        self.model.index(tokenize(self.texts, show_progress), show_progress=show_progress)

    def __len__(self) -> int:
        return len(self.texts)

    def search(self, queries: Sequence[str], k: int, show_progress: bool = False) -> list[list[Hit]]:
        """Top-k hits per query, best first (ties broken by corpus position, so runs repeat)."""
        if not queries:
            return []
        k = max(1, min(k, len(self.texts)))
        q_tokens = tokenize(queries)
        docs, scores = self.model.retrieve(q_tokens, k=k, show_progress=show_progress,
                                           n_threads=self.n_threads)
        out = []
        for row_d, row_s in zip(np.asarray(docs), np.asarray(scores)):
            hits = sorted(zip(row_d.tolist(), row_s.tolist()), key=lambda t: (-t[1], t[0]))
            out.append([Hit(int(d), float(s)) for d, s in hits if s > 0])
        return out

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
