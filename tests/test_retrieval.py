"""Chunking, token budget helpers and batched BM25 hard-negative mining."""
from __future__ import annotations

import numpy as np
import pytest

from factuality.retrieval import (
    BM25Index,
    approx_tokens,
    chunk_words,
    rank_small,
    truncate_to_tokens,
    window_around_span,
)
from factuality.text import has_answer

CORPUS = [
    "Paris is the capital and most populous city of France.",
    "The Eiffel Tower is a wrought-iron tower in Paris, France, built in 1889.",
    "Berlin is the capital of Germany and its largest city.",
    "France is a country in Western Europe; its capital city hosts the Louvre museum.",
    "The Louvre is the world's most-visited museum, located in the capital of France.",
    "Lyon is the third-largest city of France.",
    "Madrid is the capital of Spain.",
]


def test_approx_tokens_and_truncate():
    text = " ".join(["word"] * 30)
    assert approx_tokens(text) == 40
    cut = truncate_to_tokens(text, 20)
    assert approx_tokens(cut) <= 20 and text.startswith(cut)


def test_window_keeps_the_span():
    text = " ".join(f"w{i}" for i in range(400)) + " GOLD ANSWER " + " ".join(f"v{i}" for i in range(400))
    s = text.index("GOLD ANSWER")
    piece, a, b = window_around_span(text, s, s + 11, 60)
    assert piece[a:b] == "GOLD ANSWER" and approx_tokens(piece) <= 80


def test_chunk_words():
    parts = chunk_words(" ".join(str(i) for i in range(250)), 100)
    assert [len(p.split()) for p in parts] == [100, 100, 50]


def test_search_ranks_topical_passages_first():
    idx = BM25Index(CORPUS)
    (hits,) = idx.search(["What is the capital of France?"], k=3)
    assert hits[0].index in (0, 3, 4) and all(h.score > 0 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_mined_negatives_never_hold_the_answer_and_skip_excluded():
    idx = BM25Index(CORPUS)
    queries = ["What is the capital of France?", "Which city is the capital of Germany?"]
    answers = [["Paris"], ["Berlin"]]
    negs = idx.mine(queries, answers, n_negatives=3, exclude=[{4}, set()], k=4)
    for q_negs, ans in zip(negs, answers):
        assert q_negs, "expected some negatives"
        for h in q_negs:
            assert not has_answer(CORPUS[h.index], ans)
    assert 4 not in {h.index for h in negs[0]} and 0 not in {h.index for h in negs[0]}


def test_batched_equals_one_by_one():
    idx = BM25Index(CORPUS)
    qs = ["capital of France", "capital of Spain", "tower built in 1889", "zzz unknown words"]
    batched = idx.search(qs, k=3)
    single = [idx.search([q], k=3)[0] for q in qs]
    assert [[(h.index, round(h.score, 5)) for h in r] for r in batched] == \
           [[(h.index, round(h.score, 5)) for h in r] for r in single]
    assert batched[3] == []   # no shared term: nothing retrieved, never an arbitrary passage


def test_rank_small():
    ranked = rank_small("Eiffel Tower", CORPUS[:3])
    assert ranked[0].index == 1


@pytest.mark.parametrize("dense_fraction", [0.0, 0.1, 1e9])   # every query dense, the default, every query sparse
def test_postings_scorer_equals_bm25s_scores_with_ties_by_position(monkeypatch, dense_fraction):
    """The scores are bm25s' own bit for bit; the top k are the best k of bm25s' full score array
    above 0, ties broken by corpus position, whichever path a query takes and on any thread count."""
    import random

    from factuality import retrieval as R

    monkeypatch.setattr(R, "DENSE_FRACTION", dense_fraction)
    rng = random.Random(0)
    words = [f"w{i}" for i in range(800)]
    weights = [1 / (i + 1) for i in range(len(words))]
    texts = [" ".join(rng.choices(words, weights, k=rng.randint(0, 40))) or "a" for _ in range(1500)]
    texts += [texts[7]] * 30                    # exact duplicates: ties at every rank
    idx = BM25Index(texts)
    qs = [" ".join(rng.choices(words[:200], k=rng.randint(1, 6))) for _ in range(150)]
    qs += ["nothing shared zzz", texts[7], "w1 w1 w1", "w700"]
    for threads in (0, 2):
        idx.n_threads = threads
        got = idx.search(qs, 12)
        for q, row in zip(qs, got):
            ids = idx.model.get_tokens_ids(R.tokenize([q])[0])
            full = idx.model.get_scores(ids) if ids else np.zeros(len(texts), np.float32)
            want = sorted(((i, float(full[i])) for i in np.flatnonzero(full > 0)), key=lambda t: (-t[1], t[0]))[:12]
            assert [(h.index, h.score) for h in row] == want, q
    assert got[-4] == [] and len(got[-3]) == 12
