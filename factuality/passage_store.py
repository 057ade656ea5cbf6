"""The passage corpus out of core: passages stored once on disk and fetched by position, and a BM25
index over them built once per corpus, saved, and read from disk (column by column) by every later build.

What a 21M-passage corpus (DPR's psgs_w100.tsv, 13 GB) needs: the build must not hold every passage
as a Python object, nor every token as a Python string. So:

- passages: one pass over the TSV writes `passages.bin` (UTF-8 doc id, title and text of each chunk,
  back to back) and `offsets.npy` (int64 field boundaries); `PassageStore.fields(i)` reads chunk i
  with two preads. Only the passages a question retrieves are ever decoded.
- tokens: the same pass tokenises batches of `BATCH` passages with bm25s' own tokenizer (lower-case,
  \\w\\w+ tokens, English stop words) to ids; a batch's local vocabulary is mapped to the corpus one,
  and only its (token, doc, tf) triples, sorted by token, are written to disk (`pairs.*`, temporary).
- the index: bm25s' own BM25 (method lucene, k1 1.5, b 0.75, float32) as a CSC score matrix
  (`data.npy`, `indices.npy`, `indptr.npy`) plus `vocab.json`; built block by block of tokens from
  the sorted batches (memory: one block, `BLOCK_NNZ` entries), each score computed with the very
  float operations bm25s uses, so the matrix equals the one `bm25s.BM25.index` builds in memory
  (tests/test_passage_store.py checks scores and hits against it). Retrieval is bm25s' own
  `BM25.retrieve` over the arrays on disk (`ColumnFile`: the columns of a query's tokens, read per query).

Cache: `$FACTUALITY_CACHE/corpus/<key>/`, key = sha256 of the corpus files' sha256s (the build has
just verified them against the raw manifest), the chunk size, the tokenizer and BM25 settings, the
bm25s version and this format's version. Written into a temp folder and renamed into place (a kill
leaves no half cache; a stale temp folder is removed by the next build). `manifest.json` records
each file's sha256; every later build verifies every file against it before use (a mismatch: the
folder is removed and rebuilt, said in a warning). Arrays are read with `allow_pickle=False`,
never through `bm25s.BM25.load`, and no path is read from the cache. Malformed corpus rows seen
while building are kept in the manifest and replayed to `bad` by later builds, so a cached build
reports (or refuses) exactly what the first one did.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import tempfile
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN
from tqdm import tqdm

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
BATCH = 20_000                 # passages tokenised at a time (memory: one batch of texts and ids)
BLOCK_NNZ = 8_000_000          # index entries assembled at a time (about 40 bytes each while sorting)
K1, B, METHOD = 1.5, 0.75, "lucene"   # bm25s.BM25() defaults, as the in-memory BM25Index uses them
TOKENIZER = {"fn": "bm25s.tokenize", "stopwords": "en", "lower": True, "splitter": r"(?u)\b\w\w+\b"}
FILES = ("passages.bin", "offsets.npy", "data.npy", "indices.npy", "indptr.npy", "vocab.json")


def cache_root() -> Path:
    from .modeling import cache_dir

    return cache_dir() / "corpus"


def corpus_key(file_sha256: Sequence[str], chunk_words: int) -> str:
    spec = {"format": FORMAT_VERSION, "files": list(file_sha256), "chunk_words": chunk_words, "tokenizer": TOKENIZER,
            "bm25": {"k1": K1, "b": B, "method": METHOD, "dtype": "float32"}, "bm25s": bm25s.__version__}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Reading a built store
# --------------------------------------------------------------------------------------------
class ColumnFile:
    """A 1-D .npy array on disk read slice by slice (`a[i:j]`: one pread into a private array), for
    bm25s' scorer, which reads the columns of a query's tokens as `data[start:end]`. Like a memory map
    it reads only those columns; unlike one, the pages it read stay in the page cache, not in the
    process (a map's touched pages count in its RSS until the kernel drops them)."""

    def __init__(self, path: Path):
        arr = np.load(path, mmap_mode="r", allow_pickle=False)   # checks the header; no pickle
        self.dtype, self.shape, self.start = arr.dtype, arr.shape, arr.offset
        del arr
        self._f = open(path, "rb")

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("ColumnFile reads contiguous slices only")
        a, b, _ = key.indices(self.shape[0])
        n = max(0, b - a)
        out = np.empty(n, dtype=self.dtype)
        if n:
            got = os.preadv(self._f.fileno(), [memoryview(out).cast("B")], self.start + a * self.dtype.itemsize)
            if got != out.nbytes:
                raise OSError(f"{self._f.name}: short read ({got} of {out.nbytes} bytes)")
        return out


class PassageStore:
    """Chunks by position from `passages.bin` and `offsets.npy`: `store.fields(i)` -> (doc_id, title,
    text), two preads per chunk. (Not a memory map: each page a map touches, with the kernel's
    fault-around, stays in the process's RSS; 20 hits a question over a 13 GB file would fill it.)"""

    def __init__(self, folder: Path):
        self.offsets = ColumnFile(folder / "offsets.npy")
        self._fd = os.open(folder / "passages.bin", os.O_RDONLY)
        self.n = (len(self.offsets) - 1) // 3

    def __len__(self) -> int:
        return self.n

    def fields(self, i: int) -> tuple[str, str, str]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        a, b, c, d = self.offsets[3 * i:3 * i + 4].tolist()
        raw = os.pread(self._fd, d - a, a)
        return raw[:b - a].decode("utf-8"), raw[b - a:c - a].decode("utf-8"), raw[c - a:].decode("utf-8")


class IndexTexts(Sequence):
    """"title. text" of each stored chunk (what the index was built from; what has_answer reads)."""

    def __init__(self, store: PassageStore):
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i):
        _, title, text = self.store.fields(i)
        return f"{title}. {text}"


def load_bm25(folder: Path, n_docs: int) -> bm25s.BM25:
    """A bm25s.BM25 over the on-disk arrays (no pickle, no bm25s.load): indptr in memory, the score
    columns read per query (`ColumnFile`)."""
    model = bm25s.BM25(k1=K1, b=B, method=METHOD)
    model.scores = {"data": ColumnFile(folder / "data.npy"), "indices": ColumnFile(folder / "indices.npy"),
                    "indptr": np.load(folder / "indptr.npy", allow_pickle=False), "num_docs": n_docs}
    with open(folder / "vocab.json", encoding="utf-8") as f:
        vocab = json.load(f)
    if not isinstance(vocab, list) or not all(isinstance(t, str) for t in vocab):
        raise ValueError("vocab.json: not a list of tokens")
    model.vocab_dict = {t: i for i, t in enumerate(vocab)}
    model.vocab_dict[""] = len(vocab)      # bm25s' empty token (create_empty_token=True)
    model.unique_token_ids_set = set(model.vocab_dict.values())
    model.nonoccurrence_array = None
    return model


def verify(folder: Path, key: str) -> dict | None:
    """The folder's manifest when it is whole and every file matches its recorded sha256; else None."""
    try:
        with open(folder / "manifest.json", encoding="utf-8") as f:
            man = json.load(f)
        if not isinstance(man, dict) or man.get("key") != key or man.get("format") != FORMAT_VERSION:
            return None
        sums = man.get("sha256")
        if not isinstance(sums, dict) or set(sums) != set(FILES):
            return None
        for name in FILES:
            if _sha256(folder / name) != sums[name]:
                log.warning("%s: sha256 differs from the one recorded when it was written; rebuilding the corpus "
                            "index", folder / name)
                return None
        return man
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------
# Building a store: one pass over the passages, then the index block by block
# --------------------------------------------------------------------------------------------
# bm25s' pattern without its \b anchors: a greedy run of 2+ word characters already starts and ends
# at word boundaries, so the matches are the same (tested), found about 25% faster
_SPLIT = re.compile(r"\w\w+").findall
_STOPWORDS = frozenset(STOPWORDS_EN)


def _tokenize_batch(texts: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(flat local token ids, tokens per text, local vocabulary in id order): the tokens of
    `bm25s.tokenize(texts, stopwords="en")` (lower-case, the same pattern, the same stop words, no
    stemmer, empty documents allowed), without its per-text rebuild of the stop-word set, which
    makes it about 5x slower (tests/test_passage_store.py checks the tokens are the same)."""
    vocab: dict[str, int] = {}
    ids: list[int] = []
    lens = np.empty(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        n0 = len(ids)
        ids.extend(vocab.setdefault(t, len(vocab)) for t in _SPLIT(text.lower()) if t not in _STOPWORDS)
        lens[i] = len(ids) - n0
    return np.asarray(ids, dtype=np.int64), lens, list(vocab)


class _Builder:
    def __init__(self, tmp: Path, quiet: bool, workers: int = 1):
        self.tmp, self.quiet, self.workers = tmp, quiet, max(1, workers)
        self.pool = (ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"))
                     if self.workers > 1 else None)
        self.pending: deque = deque()
        self.closing = False
        self.added = 0               # chunks added (`n` counts those tokenised, in batch order)
        self.blob = open(tmp / "passages.bin", "wb")
        self.offsets = open(tmp / "offsets.tmp", "wb")
        self.pairs = {k: open(tmp / f"pairs.{k}", "wb") for k in ("tok", "doc", "tf")}
        self.pos = 0
        self.offsets_buf: list[int] = [0]
        self.vocab: dict[str, int] = {}
        self.df = np.zeros(0, dtype=np.int64)
        self.doc_len: list[np.ndarray] = []
        self.segments = [0]          # start of each batch's sorted pairs in pairs.*
        self.n = 0
        self.batch: list[str] = []

    def add(self, doc_id: str, title: str, text: str) -> None:
        for s in (doc_id, title, text):
            b = s.encode("utf-8")
            self.blob.write(b)
            self.pos += len(b)
            self.offsets_buf.append(self.pos)
        self.batch.append(f"{title}. {text}")
        self.added += 1
        if len(self.batch) >= BATCH:
            self.flush()

    def flush(self) -> None:
        """Hand the batch to the tokenizer (a worker process when there are several); absorb what
        the workers finished, in batch order, keeping at most `workers` batches in flight."""
        np.asarray(self.offsets_buf[:-1], dtype=np.int64).tofile(self.offsets)   # the last one starts the next
        self.offsets_buf = self.offsets_buf[-1:]
        if self.batch:
            texts, self.batch = self.batch, []
            if self.pool is None:
                self.absorb(*_tokenize_batch(texts))
            else:
                self.pending.append(self.pool.submit(_tokenize_batch, texts))
        while self.pending and (len(self.pending) > self.workers or self.closing):
            self.absorb(*self.pending.popleft().result())

    def absorb(self, flat: np.ndarray, lens: np.ndarray, local_vocab: list[str]) -> None:
        """One tokenised batch: its ids mapped to the corpus vocabulary, its sorted (token, doc, tf) triples
        written, document frequencies counted."""
        size = len(lens)
        lmap = np.fromiter((self.vocab.setdefault(t, len(self.vocab)) for t in local_vocab), dtype=np.int64,
                           count=len(local_vocab))
        tok = lmap[flat] if len(flat) else flat
        doc = np.repeat(np.arange(self.n, self.n + size, dtype=np.int64), lens)
        if len(tok):
            key = tok * (size + 1) + (doc - self.n)      # sort by (token, doc)
            key.sort()
            u, tf = np.unique(key, return_counts=True)
            ptok, pdoc = u // (size + 1), u % (size + 1) + self.n
            if len(self.vocab) > len(self.df):
                self.df = np.concatenate([self.df, np.zeros(len(self.vocab) - len(self.df), dtype=np.int64)])
            self.df += np.bincount(ptok, minlength=len(self.df))
            ptok.astype(np.int32).tofile(self.pairs["tok"])
            pdoc.astype(np.int32).tofile(self.pairs["doc"])
            tf.astype(np.int32).tofile(self.pairs["tf"])
            self.segments.append(self.segments[-1] + len(u))
        self.doc_len.append(lens)
        self.n += size

    def finish(self, progress: bool) -> dict:
        """Close the pass, then write the CSC index block by block; returns the manifest fields."""
        self.closing = True
        self.flush()
        if self.pool is not None:
            self.pool.shutdown()
        np.asarray(self.offsets_buf, dtype=np.int64).tofile(self.offsets)   # the final end offset
        for f in (self.blob, self.offsets, *self.pairs.values()):
            f.close()
        tmp = self.tmp
        n_off = (tmp / "offsets.tmp").stat().st_size // 8
        with open(tmp / "offsets.npy", "wb") as out, open(tmp / "offsets.tmp", "rb") as src:   # streamed, not loaded
            np.lib.format.write_array_header_1_0(out, {"descr": "<i8", "fortran_order": False, "shape": (n_off,)})
            shutil.copyfileobj(src, out, 1 << 22)
        os.remove(tmp / "offsets.tmp")
        n, vocab_size = self.n, len(self.vocab)
        doc_len = np.concatenate(self.doc_len) if self.doc_len else np.zeros(0, dtype=np.int64)
        df = np.concatenate([self.df, np.zeros(vocab_size - len(self.df), dtype=np.int64)])
        # bm25s: avg_doc_len = np.array([len(doc) ...]).mean() (exact: an integer sum, then one division)
        avg_doc_len = np.float64(np.array(doc_len, dtype=np.float64).sum() / n) if n else np.float64(0)
        # bm25s _build_idf_array: math.log on Python numbers, stored as float32
        idf = np.array([math.log(1 + (n - d + 0.5) / (d + 0.5)) if d else 0.0 for d in df.tolist()], dtype=np.float32)
        indptr = np.zeros(vocab_size + 1, dtype=np.int64)
        np.cumsum(df, out=indptr[1:])
        nnz = int(indptr[-1])
        np.save(tmp / "indptr.npy", indptr, allow_pickle=False)
        vocab = [None] * vocab_size
        for t, i in self.vocab.items():
            vocab[i] = t
        with open(tmp / "vocab.json", "w", encoding="utf-8") as f:
            json.dump(vocab, f, ensure_ascii=False)
        del vocab, self.vocab
        _write_csc(tmp, np.asarray(self.segments, dtype=np.int64), indptr, idf, doc_len, avg_doc_len, progress)
        return {"n_passages": n, "vocab": vocab_size, "nnz": nnz, "avg_doc_len": float(avg_doc_len)}


class EmptyCorpus(Exception):
    """The corpus files hold no usable passage (the caller says what to do)."""


def _write_csc(tmp: Path, seg: np.ndarray, indptr: np.ndarray, idf: np.ndarray, doc_len: np.ndarray,
               avg_doc_len, progress: bool) -> None:
    """data.npy / indices.npy, column by column, from the batches' (token, doc, tf) triples sorted by
    token (`seg`: where each batch starts): token blocks of at most BLOCK_NNZ entries, each gathered
    from every batch, scored, and appended."""
    nnz, vocab_size = int(indptr[-1]), len(indptr) - 1
    data_f = open(tmp / "data.npy", "wb")
    ind_f = open(tmp / "indices.npy", "wb")
    np.lib.format.write_array_header_1_0(data_f, {"descr": "<f4", "fortran_order": False, "shape": (nnz,)})
    np.lib.format.write_array_header_1_0(ind_f, {"descr": "<i4", "fortran_order": False, "shape": (nnz,)})
    tok_mm = np.memmap(tmp / "pairs.tok", dtype=np.int32, mode="r") if nnz else np.zeros(0, np.int32)
    files = {k: open(tmp / f"pairs.{k}", "rb") for k in ("tok", "doc", "tf")}
    # token blocks of at most BLOCK_NNZ entries (a token with more entries is a block of its own)
    bounds, t = [0], 0
    while t < vocab_size:
        t2 = int(np.searchsorted(indptr, indptr[t] + BLOCK_NNZ, side="right")) - 1
        t = max(t2, t + 1)
        t = min(t, vocab_size)
        bounds.append(t)
    bar = tqdm(total=nnz, desc="BM25 index (entries)", unit="", unit_scale=True, disable=not progress, leave=False)
    for t0, t1 in zip(bounds[:-1], bounds[1:]):
        parts_tok, parts_doc, parts_tf = [], [], []
        for s0, s1 in zip(seg[:-1], seg[1:]):
            seg_tok = tok_mm[s0:s1]
            a = s0 + int(np.searchsorted(seg_tok, t0, side="left"))
            b = s0 + int(np.searchsorted(seg_tok, t1, side="left"))
            if b > a:   # read with seek + fromfile: only the binary search touches the mapping
                for k, dest in (("tok", parts_tok), ("doc", parts_doc), ("tf", parts_tf)):
                    files[k].seek(4 * a)
                    dest.append(np.fromfile(files[k], dtype=np.int32, count=b - a))
        if not parts_tok:
            continue
        tok = np.concatenate(parts_tok)
        order = np.argsort(tok, kind="stable")     # column-major; docs ascending within a column
        tok = tok[order]
        doc = np.concatenate(parts_doc)[order]
        tf = np.concatenate(parts_tf)[order].astype(np.float32)
        del order, parts_tok, parts_doc, parts_tf
        # bm25s _score_tfc_robertson (lucene) and idf * tfc, op for op: tf is float32, the length
        # term float64 (NumPy 2 promotes float32 + float64 scalar to float64), stored as float32
        x = doc_len[doc].astype(np.float64)
        x *= B
        x /= avg_doc_len
        x += 1 - B
        x *= K1
        x += tf                                     # float64
        np.divide(tf, x, out=x)                     # tfc, float64
        x *= idf[tok]
        x.astype(np.float32).tofile(data_f)
        doc.tofile(ind_f)                            # int32 already
        bar.update(len(tok))
        del x, tok, doc, tf
    bar.close()
    for f in (data_f, ind_f, *files.values()):
        f.close()
    del tok_mm
    for k in ("tok", "doc", "tf"):
        os.remove(tmp / f"pairs.{k}")


def _remove_stale(root: Path) -> None:
    """Temp folders of builds that were killed (their process is gone)."""
    for p in root.glob(".tmp-*"):
        try:
            pid = int(p.name.split("-")[-1].split(".")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except (ValueError, PermissionError, OSError):
            continue


class Recorder:
    """Forwards bad-record reports to `bad` and keeps them (file index, line, field, problem, raw, byte)
    for the cache manifest, so a later build replays them."""

    def __init__(self, bad, paths: list[Path]):
        self.bad, self.paths, self.rows = bad, [str(p) for p in paths], []

    def report(self, where, field_name, problem, raw=None, byte=None):
        from .records import Where
        from .records.reading import printable

        loc = where if isinstance(where, Where) else Where.parse(str(where))
        self.rows.append([self.paths.index(loc.file) if loc.file in self.paths else -1, loc.line, loc.index,
                          field_name, problem, printable(raw if raw is not None else ""), byte])
        self.bad.report(where, field_name, problem, raw, byte=byte)

    def __getattr__(self, name):
        return getattr(self.bad, name)


def replay(rows: list, paths: list[Path], bad) -> None:
    from .records import Where

    for i, line, index, field_name, problem, raw, byte in rows:
        where = Where(str(paths[i]) if 0 <= i < len(paths) else "corpus", line=line, index=index)
        bad.report(where, field_name, problem, raw, byte=byte)


def open_or_build(paths: list[Path], file_sha256: list[str], chunk_words: int,
                  passages: Callable[[Any], Iterator[tuple[str, str, str]]], bad, quiet: bool = False,
                  root: Path | None = None, workers: int = 1) -> tuple[PassageStore, bm25s.BM25, dict]:
    """The store and index of this corpus: verified and opened from the cache, or built there
    first. `passages(bad)` yields (doc_id, title, text) of every chunk, in corpus order; `workers`
    processes tokenise (the same index whatever their number)."""
    root = root or cache_root()
    key = corpus_key(file_sha256, chunk_words)
    folder = root / key
    t0 = time.perf_counter()
    man = verify(folder, key) if folder.is_dir() else None
    if man is None:
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        _remove_stale(root)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:16]}-", suffix=f"-{os.getpid()}", dir=root))
        os.chmod(tmp, 0o755)
        builder = None
        try:
            builder = _Builder(tmp, quiet, workers)
            rec = Recorder(bad, paths)
            bar = tqdm(desc="corpus: passages read and tokenised", unit=" psg", unit_scale=True, disable=quiet,
                       leave=False)
            for doc_id, title, text in passages(rec):
                builder.add(doc_id, title, text)
                bar.update(1)
            bar.close()
            if builder.added == 0:
                raise EmptyCorpus()
            stats = builder.finish(progress=not quiet)
            man = {"format": FORMAT_VERSION, "key": key, "chunk_words": chunk_words, "tokenizer": TOKENIZER,
                   "bm25": {"k1": K1, "b": B, "method": METHOD}, "bm25s": bm25s.__version__,
                   "corpus_sha256": list(file_sha256), **stats, "bad_rows": rec.rows,
                   "build_s": round(time.perf_counter() - t0, 1),
                   "sha256": {name: _sha256(tmp / name) for name in FILES}}
            with open(tmp / "manifest.json", "w", encoding="utf-8") as f:
                json.dump(man, f, ensure_ascii=False)
            try:
                os.replace(tmp, folder)
            except OSError:
                if verify(folder, key) is None:   # lost a race to a build whose folder is whole: fine
                    raise
                man = verify(folder, key)
        finally:
            if builder is not None and builder.pool is not None:
                builder.pool.shutdown(wait=False, cancel_futures=True)
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        man["reused"] = False
    else:
        replay(man.get("bad_rows", []), paths, bad)
        man["reused"] = True
    store = PassageStore(folder)
    model = load_bm25(folder, len(store))
    man["folder"] = str(folder)
    man["open_s"] = round(time.perf_counter() - t0, 3)
    return store, model, man
