"""The passage corpus out of core (factuality/passage_store.py): the on-disk BM25 index equals the one
bm25s builds in memory (scores and hits), is built once per corpus and reused, verified against its
sha256s, rebuilt when damaged, and a killed build leaves nothing half-written."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from factuality import passage_store as PS
from factuality.retrieval import BM25Index
from factuality.sources import BadRecords
from factuality.sources.corpus import StoredBM25Index, StoredCorpus, iter_chunks


def zipf_corpus(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(3000)] + ["the", "of", "and"]
    weights = [1 / (i + 1) for i in range(len(words))]
    lines = ["id\ttext\ttitle"]
    for i in range(n):
        k = rng.randint(0, 130)      # some passages longer than chunk_words (split), some empty of tokens
        text = " ".join(rng.choices(words, weights, k=k)) or "a"
        lines.append(f"{i + 1}\t{text}\tTitle {rng.choice(words)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture
def small_batches(monkeypatch):
    monkeypatch.setattr(PS, "BATCH", 97)           # many batches
    monkeypatch.setattr(PS, "BLOCK_NNZ", 5_000)    # many token blocks


def open_store(tsv: Path, root: Path, bad=None):
    bad = bad or BadRecords()
    return PS.open_or_build([tsv], [PS._sha256(tsv)], 100, lambda b: iter_chunks([tsv], b, 100), bad,
                            quiet=True, root=root)


def test_disk_index_equals_bm25s_in_memory(tmp_path, small_batches):
    tsv = tmp_path / "psgs.tsv"
    zipf_corpus(tsv, 1500)
    store, model, man = open_store(tsv, tmp_path / "cache")
    chunks = list(iter_chunks([tsv], BadRecords(), 100))
    assert len(store) == len(chunks) > 1500 and not man["reused"]        # long passages were split
    corpus = StoredCorpus(store)
    assert [tuple(vars(corpus[i]).values()) for i in range(len(chunks))] == chunks
    mem = BM25Index([f"{t}. {x}" for _, t, x in chunks])
    disk = StoredBM25Index(model, store)
    # the same score for every (token, passage): the two CSC matrices map onto each other
    inv = {v: k for k, v in mem.model.vocab_dict.items()}
    for tid in range(len(mem.model.scores["indptr"]) - 1):
        tok = inv[tid]
        a, b = mem.model.scores["indptr"][tid:tid + 2]
        c, d = model.scores["indptr"][model.vocab_dict[tok]:model.vocab_dict[tok] + 2]
        m = dict(zip(mem.model.scores["indices"][a:b].tolist(), mem.model.scores["data"][a:b].tolist()))
        assert m == dict(zip(model.scores["indices"][c:d].tolist(), model.scores["data"][c:d].tolist())), tok
    assert len(model.vocab_dict) == len(mem.model.vocab_dict)
    rng = random.Random(1)
    queries = [" ".join(rng.choices([f"w{i}" for i in range(200)], k=rng.randint(1, 8))) for _ in range(300)]
    hits_mem, hits_disk = mem.search(queries, 20), disk.search(queries, 20)
    assert [[(h.index, h.score) for h in r] for r in hits_mem] == [[(h.index, h.score) for h in r] for r in hits_disk]
    ans = [[q.split()[0]] for q in queries]
    assert [[h.index for h in r] for r in mem.mine(queries, ans, 3)] == [[h.index for h in r] for r in disk.mine(queries, ans, 3)]


def test_built_once_reused_verified_and_rebuilt_when_damaged(tmp_path, caplog):
    tsv = tmp_path / "psgs.tsv"
    zipf_corpus(tsv, 300)
    root = tmp_path / "cache"
    _, _, first = open_store(tsv, root)
    _, _, second = open_store(tsv, root)
    assert not first["reused"] and second["reused"] and second["key"] == first["key"]
    folder = root / first["key"]
    data = folder / "data.npy"
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF
    data.write_bytes(bytes(raw))
    store, model, third = open_store(tsv, root)
    assert not third["reused"] and "sha256 differs" in caplog.text
    assert json.loads((folder / "manifest.json").read_text())["sha256"]["data.npy"] == PS._sha256(data)
    # another chunk size or another corpus file is another index
    tsv.write_text(tsv.read_text() + "99999\textra passage\tExtra\n")
    _, _, other = open_store(tsv, root)
    assert other["key"] != first["key"] and not other["reused"]
    assert sorted(p.name for p in root.iterdir()) == sorted([first["key"], other["key"]])


def test_a_killed_build_leaves_no_cache_and_the_rerun_builds_it(tmp_path, small_batches):
    tsv = tmp_path / "psgs.tsv"
    zipf_corpus(tsv, 400)
    root = tmp_path / "cache"

    def dying(bad):
        for i, c in enumerate(iter_chunks([tsv], bad, 100)):
            if i == 250:
                raise KeyboardInterrupt
            yield c

    with pytest.raises(KeyboardInterrupt):
        PS.open_or_build([tsv], [PS._sha256(tsv)], 100, dying, BadRecords(), quiet=True, root=root)
    assert list(root.iterdir()) == []          # the temp folder went with the build
    store, _, man = open_store(tsv, root)
    assert not man["reused"] and len(store) == man["n_passages"]


def test_malformed_corpus_rows_are_reported_again_by_a_cached_build(tmp_path):
    tsv = tmp_path / "psgs.tsv"
    zipf_corpus(tsv, 50)
    lines = tsv.read_text().splitlines()
    lines[3] = "3\t\tEmpty text"
    tsv.write_text("\n".join(lines) + "\n")
    root = tmp_path / "cache"
    bad1 = BadRecords(collect=True)
    open_store(tsv, root, bad1)
    bad2 = BadRecords(collect=True)
    _, _, man = open_store(tsv, root, bad2)
    assert man["reused"] and bad1.items == bad2.items and bad2.items[0]["where"] == f"{tsv}:4"
    with pytest.raises(Exception, match=r"psgs\.tsv:4: text: empty"):
        open_store(tsv, root, BadRecords())


def test_arrays_load_without_pickle(tmp_path):
    tsv = tmp_path / "psgs.tsv"
    zipf_corpus(tsv, 30)
    _, model, man = open_store(tsv, tmp_path / "cache")
    for name in ("data", "indices", "indptr", "offsets"):
        arr = np.load(Path(man["folder"]) / f"{name}.npy", allow_pickle=False)
        assert arr.dtype != object
    col = model.scores["data"]
    assert isinstance(col, PS.ColumnFile) and len(col) == man["nnz"]
    whole = np.load(Path(man["folder"]) / "data.npy", allow_pickle=False)
    assert np.array_equal(col[3:17], whole[3:17]) and np.array_equal(col[0:len(col)], whole) and len(col[5:5]) == 0


def batch_tokens(texts: list[str]) -> list[list[str]]:
    """`_tokenize_batch`'s ids turned back into each text's tokens."""
    flat, lens, vocab = PS._tokenize_batch(texts)
    got, pos = [], 0
    for n in lens.tolist():
        got.append([vocab[i] for i in flat[pos:pos + n].tolist()])
        pos += n
    return got


def test_batch_tokens_are_bm25s_tokens():
    from factuality.retrieval import tokenize

    texts = ["The Eiffel Tower, in Paris: 330 m (1,083 ft) tall!", "", "a an the of", "Zürich's naïve café_au_lait x1 ÉTÉ",
             "don't stop-believing 3.14 __init__ _", "北京 是 中国的 首都", "\u00a0tab\there  newline\nend"]
    assert batch_tokens(texts) == tokenize(texts)


def test_batch_tokens_are_bm25s_tokens_on_random_text():
    from factuality.retrieval import tokenize

    rng = random.Random(3)
    alphabet = "ab_1Zé\u0301\u00b2ß İ'-. ,\t\n日本x\u2163\u0660"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(2000)]
    assert batch_tokens(texts) == tokenize(texts)


@pytest.mark.parametrize("n", [700, 120])   # many batches; exactly one, still with a worker when the pass ends
def test_tokenising_in_worker_processes_builds_the_same_files(tmp_path, small_batches, monkeypatch, n):
    tsv = tmp_path / "psgs.tsv"
    zipf_corpus(tsv, n)
    if n == 120:
        monkeypatch.setattr(PS, "BATCH", len(list(iter_chunks([tsv], BadRecords(), 100))))
    mans = []
    for workers in (1, 2):
        mans.append(PS.open_or_build([tsv], [PS._sha256(tsv)], 100, lambda b: iter_chunks([tsv], b, 100), BadRecords(),
                                     quiet=True, root=tmp_path / f"cache{workers}", workers=workers)[2])
    assert mans[0]["sha256"] == mans[1]["sha256"] and mans[0]["nnz"] == mans[1]["nnz"] > 0
    assert mans[0]["n_passages"] >= n


def test_hits_are_kept_per_corpus_resumed_after_a_kill_and_recomputed_when_changed(tmp_path, monkeypatch, caplog):
    """A second search over the same stored corpus reads its hits from hits/k<k>.jsonl (the same
    hits), a cache cut by a kill keeps its sealed batches and retrieves the rest, and a changed
    cache is dropped with one warning and computed again."""
    from factuality.sources import corpus as C

    monkeypatch.setattr(C, "HITS_BATCH", 7)
    tsv = tmp_path / "psgs.tsv"
    zipf_corpus(tsv, 400)
    store, model, man = open_store(tsv, tmp_path / "cache")
    hits_dir = Path(man["folder"]) / "hits"
    rng = random.Random(3)
    queries = [" ".join(rng.choices([f"w{i}" for i in range(100)], k=4)) for _ in range(40)]
    plain = [[(h.index, h.score) for h in r] for r in StoredBM25Index(model, store).search(queries, 10)]

    def search(qs=queries):
        idx = StoredBM25Index(model, store, hits_dir=hits_dir)
        return [[(h.index, h.score) for h in r] for r in idx.search(qs, 10)], idx.stats

    assert search() == (plain, {"retrieved": 40, "from_cache": 0})
    assert search() == (plain, {"retrieved": 0, "from_cache": 40})
    path = hits_dir / "k10.jsonl"
    # a kill after three sealed batches, halfway through writing the fourth
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:21]))
    from factuality.records import seal
    seal(path)
    with open(path, "ab") as f:
        f.write(lines[21][:30])
    assert search() == (plain, {"retrieved": 19, "from_cache": 21})
    # a changed score: dropped, computed again, the same hits
    text = path.read_text()
    path.write_text(text.replace('"scores": [', '"scores": [9', 1))
    caplog.clear()
    assert search() == (plain, {"retrieved": 40, "from_cache": 0})
    assert "discarded and computed again" in caplog.text
    # only questions it has not seen are retrieved
    assert search(queries[:5] + ["w1 w2 new question"])[1] == {"retrieved": 1, "from_cache": 5}
