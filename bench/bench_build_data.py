"""Benchmark: batched BM25 hard-negative mining on a generated corpus.

    python bench/bench_build_data.py                       # 100k passages, 10k questions
    python bench/bench_build_data.py --passages 20000 --questions 2000

Generates passages with a seeded RNG over a Zipf-distributed synthetic vocabulary, and questions
from words of a random "gold" passage, with a rare word of that passage as the answer. Mines 3
hard negatives per question the way build_data.py does (factuality.retrieval.BM25Index.mine: one
batched bm25s retrieve, k small, answer-holding and gold passages filtered afterwards), and
compares against baselines measured in the same run on a subset:
  - bm25s one query at a time (no batching, no threads), extrapolated to all questions;
  - rank_bm25-style pure-Python scoring (a score for every passage per query).
Prints questions/s, the ratio to each baseline, and peak memory (ru_maxrss).
"""
from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from factuality.retrieval import BM25Index, tokenize  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux reports KiB


def make_corpus(n_passages: int, n_questions: int, vocab_size: int, seed: int):
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}x" for i in range(vocab_size)])
    ranks = np.arange(1, vocab_size + 1)
    p = 1 / ranks ** 1.07
    p /= p.sum()
    lengths = rng.integers(60, 101, size=n_passages)
    words = rng.choice(vocab_size, size=int(lengths.sum()), p=p)
    passages, pos = [], 0
    for n in lengths:
        passages.append(" ".join(vocab[words[pos:pos + n]]))
        pos += n
    gold = rng.integers(0, n_passages, size=n_questions)
    questions, answers = [], []
    for g in gold:
        toks = passages[g].split()
        picks = rng.choice(len(toks), size=6, replace=False)
        noise = vocab[rng.integers(0, vocab_size, size=2)]
        questions.append(" ".join([toks[i] for i in picks] + list(noise)))
        answers.append([max(toks, key=lambda t: int(t[1:-1]))])   # the passage's rarest word
    return passages, questions, answers, gold


class PurePythonBM25:
    """rank_bm25's BM25Okapi scoring, in plain Python: a score for every passage per query."""

    def __init__(self, corpus_tokens, k1=1.5, b=0.75):
        self.k1, self.b = k1, b
        self.doc_freqs = [Counter(d) for d in corpus_tokens]
        self.doc_len = [len(d) for d in corpus_tokens]
        self.avgdl = sum(self.doc_len) / len(self.doc_len)
        df = defaultdict(int)
        for d in self.doc_freqs:
            for w in d:
                df[w] += 1
        n = len(corpus_tokens)
        self.idf = {w: math.log((n - f + 0.5) / (f + 0.5) + 1) for w, f in df.items()}

    def top_k(self, q_tokens, k):
        scores = []
        for i, (freqs, dl) in enumerate(zip(self.doc_freqs, self.doc_len)):
            s = 0.0
            for w in q_tokens:
                f = freqs.get(w)
                if f:
                    s += self.idf[w] * f * (self.k1 + 1) / (f + self.k1 * (1 - self.b + self.b * dl / self.avgdl))
            scores.append(s)
        return sorted(range(len(scores)), key=lambda i: -scores[i])[:k]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passages", type=int, default=100_000)
    ap.add_argument("--questions", type=int, default=10_000)
    ap.add_argument("--vocab", type=int, default=50_000)
    ap.add_argument("--k", type=int, default=10, help="BM25 candidates per question before filtering")
    ap.add_argument("--negatives", type=int, default=3)
    ap.add_argument("--n-threads", type=int, default=-1, help="bm25s retrieve threads (-1: all cores)")
    ap.add_argument("--baseline-questions", type=int, default=500)
    ap.add_argument("--python-baseline-questions", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    t = time.perf_counter()
    passages, questions, answers, gold = make_corpus(args.passages, args.questions, args.vocab, args.seed)
    t_gen = time.perf_counter() - t
    rss_gen = peak_rss_mb()

    t = time.perf_counter()
    index = BM25Index(passages, n_threads=args.n_threads)
    t_index = time.perf_counter() - t
    rss_index = peak_rss_mb()

    exclude = [{int(g)} for g in gold]
    t = time.perf_counter()
    mined = index.mine(questions, answers, args.negatives, exclude=exclude, k=args.k)
    t_mine = time.perf_counter() - t
    rss_mine = peak_rss_mb()
    qps = len(questions) / t_mine
    full = sum(len(m) == args.negatives for m in mined) / len(mined)
    leaked = sum(any(index.norm.has_answer(h.index, [a[0].lower()]) or h.index in ex for h in m)
                 for m, a, ex in zip(mined, answers, exclude))

    nb = min(args.baseline_questions, len(questions))
    single = BM25Index.__new__(BM25Index)
    single.__dict__.update(index.__dict__)
    single.n_threads = 0
    single.norm = type(index.norm)(index.texts)
    t = time.perf_counter()
    for i in range(nb):
        single.mine([questions[i]], [answers[i]], args.negatives, exclude=[exclude[i]], k=args.k)
    qps_single = nb / (time.perf_counter() - t)

    npy = min(args.python_baseline_questions, len(questions))
    t = time.perf_counter()
    py = PurePythonBM25(tokenize(passages))
    t_py_index = time.perf_counter() - t
    q_tokens = tokenize(questions[:npy])
    t = time.perf_counter()
    for q in q_tokens:
        py.top_k(q, args.k)
    qps_py = npy / (time.perf_counter() - t)

    print(f"corpus: {len(passages):,} passages, {len(questions):,} questions (generated in {t_gen:.1f} s, seed {args.seed})")
    print(f"bm25s index: {t_index:.1f} s")
    print(f"batched mining (k={args.k}, {args.negatives} negatives, n_threads={args.n_threads}): "
          f"{t_mine:.1f} s = {qps:,.0f} questions/s; {full:.1%} got all {args.negatives} negatives; "
          f"{leaked} with a gold/answer passage among negatives")
    print(f"baseline bm25s one query at a time ({nb} questions): {qps_single:,.0f} questions/s "
          f"-> batched is {qps / qps_single:.1f}x (all {len(questions):,} would take {len(questions) / qps_single:.0f} s)")
    print(f"baseline pure-Python BM25, rank_bm25 style ({npy} questions; index {t_py_index:.1f} s): "
          f"{qps_py:.2f} questions/s -> batched is {qps / qps_py:,.0f}x "
          f"(all {len(questions):,} would take {len(questions) / qps_py / 3600:.1f} h)")
    print(f"peak memory (ru_maxrss): after generation {rss_gen:,.0f} MB, after indexing {rss_index:,.0f} MB, "
          f"after mining {rss_mine:,.0f} MB, end {peak_rss_mb():,.0f} MB")
    return {"questions_per_s": qps, "mine_s": t_mine, "ratio_single": qps / qps_single, "ratio_python": qps / qps_py,
            "peak_rss_mb": rss_mine}


if __name__ == "__main__":
    main()
