"""Benchmark: build_data.py at the datasets' real sizes, and the projection to the full files.

    python bench/bench_scale.py                                   # 200k, 1M, 2M passages; DPR JSON of 256 MB and 1 GB
    python bench/bench_scale.py --sizes 200000,1000000 --dpr-mb 256,1024 --questions 1000
    python bench/bench_scale.py --sizes "" --dpr-mb 0 --fever-pages 200000,1000000   # FEVER only

Generates, in the real layouts, a DPR passage corpus `raw/corpus/psgs_w100.tsv` (id, quoted text,
title; 100-word passages over a Zipf vocabulary) plus NQ-Open questions `raw/nq/NQ-open.train.jsonl`
(words of a passage, its rarest word the answer), and a DPR retriever file
`raw/nq/biencoder-nq-train.json` (a JSON array of {question, answers, positive_ctxs,
negative_ctxs, hard_negative_ctxs}, 100-word passages). Each build is a whole
`build_data.py --sources nq` in its own process (peak RSS: its VmHWM, read by the build process
itself; a child's ru_maxrss would start from this process's size at the fork). Per corpus
size: the first build (reads, stores and indexes the corpus), a second build over the same corpus
(the index reused from the cache), and retrieval questions/s on the reused index. Then the slope
per passage between the two largest sizes (least squares over all sizes when more), and the
projection to DPR's 21,015,324 passages and to the 7.9 GB biencoder-nq-train.json.

FEVER (`--fever-pages`, off by default): a wiki-pages dump in the real layout
(`raw/fever/wiki-pages/wiki-001.jsonl`, ... of 50,000 pages each, the empty-id first page, PTB escapes
and \\u escapes in ids) plus claims `raw/fever/train.jsonl` citing `--fever-claims` pages
(SUPPORTS / REFUTES / NOT ENOUGH INFO); per size one whole `build_data.py --sources fever
--fever-wiki-scope referenced`, then the slope per page and the projection to the dump's 5.4M pages.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FULL_PASSAGES = 21_015_324
FULL_DPR_BYTES = 7.9e9
FULL_DPR_RECORDS = 58_880   # biencoder-nq-train.json
NQ_TRAIN_QUESTIONS = 79_168


def vocab_and_probs(size: int = 200_000, s: float = 1.07):
    vocab = np.array([f"w{i}x" for i in range(size)])
    p = 1 / np.arange(1, size + 1) ** s
    return vocab, p / p.sum()


def write_corpus(path: Path, n: int, seed: int) -> list[str]:
    """psgs_w100.tsv-style rows: id, "text" (quoted, as DPR writes it), title; returns a few passages' words."""
    rng = np.random.default_rng(seed)
    vocab, p = vocab_and_probs()
    path.parent.mkdir(parents=True, exist_ok=True)
    keep = []
    with open(path, "w", encoding="utf-8") as f:
        f.write("id\ttext\ttitle\n")
        for start in range(0, n, 50_000):
            m = min(50_000, n - start)
            words = vocab[rng.choice(len(vocab), size=m * 100, p=p)]
            for j in range(m):
                text = " ".join(words[j * 100:(j + 1) * 100])
                f.write(f'{start + j + 1}\t"{text}"\tT{words[j * 100]}\n')
                if len(keep) < 5000 and rng.random() < 5000 / n:
                    keep.append(text)
    return keep


def write_questions(path: Path, passages: list[str], n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            toks = passages[i % len(passages)].split()
            picks = rng.choice(len(toks), size=6, replace=False)
            answer = max(toks, key=lambda t: int(t[1:-1]))
            f.write(json.dumps({"question": " ".join(toks[k] for k in picks) + f" q{i}", "answer": [answer]}) + "\n")


def write_dpr(path: Path, target_bytes: int, seed: int) -> int:
    """A DPR retriever JSON array (indented like DPR's own files) of about target_bytes; returns records."""
    rng = np.random.default_rng(seed)
    vocab, p = vocab_and_probs()
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0

    def ctx(words, pid):
        return {"title": f"T{words[0]}", "text": " ".join(words), "score": 1000, "title_score": 0, "passage_id": str(pid)}

    with open(path, "w", encoding="utf-8") as f:
        f.write("[\n")
        while f.tell() < target_bytes:
            words = vocab[rng.choice(len(vocab), size=61 * 100, p=p)]
            ps = [words[k * 100:(k + 1) * 100] for k in range(61)]
            answer = max(ps[0], key=lambda t: int(t[1:-1]))
            rec = {"dataset": "nq_train_psgs_w100", "question": " ".join(ps[0][:8]) + f" q{n}", "answers": [answer],
                   "positive_ctxs": [ctx(ps[0], n * 100)],
                   "negative_ctxs": [ctx(ps[k], n * 100 + k) for k in range(1, 31)],
                   "hard_negative_ctxs": [ctx(ps[k], n * 100 + k) for k in range(31, 61)]}
            f.write((",\n" if n else "") + json.dumps(rec, indent=4))
            n += 1
        f.write("\n]\n")
    return n


WRAPPER = """
import json, resource, sys
sys.argv = ["build_data.py"] + sys.argv[2:]
import build_data
def hwm():
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024
try:
    code = build_data.main(sys.argv[1:])
finally:
    with open(__out__, "w") as f:
        json.dump({"self": hwm(), "workers": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}, f)
sys.exit(code)
"""


def run_build(data: Path, cache: Path, log: Path, n_threads: int = 0, sources: str = "nq",
              extra: tuple[str, ...] = ()) -> dict:
    """One whole build_data.py --sources SOURCES in its own process: wall time, its own peak RSS (VmHWM,
    read by the process itself: a child's ru_maxrss would start from this process's size at the fork),
    the peak of its tokenising workers, the summary."""
    env = {**os.environ, "FACTUALITY_CACHE": str(cache)}
    out = log.with_suffix(".rss.json")
    code = WRAPPER.replace("__out__", repr(str(out)))
    cmd = [sys.executable, "-c", code, "build_data.py", "--data-dir", str(data), "--sources", sources,
           "--accept-new-hash", "--quiet", "--n-threads", str(n_threads), *extra]
    t = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"build failed ({log}):\n{log.read_text()[-3000:]}")
    rss = json.loads(out.read_text())
    card = json.loads((data / "processed" / "run_card.json").read_text())
    return {"s": wall, "rss_gb": rss["self"] / 1024 ** 3, "workers_gb": rss["workers"] / 1024 ** 3, "card": card}


FEVER_PAGES = 5_400_000        # FEVER's wiki-pages dump (109 files)
FEVER_PAGES_PER_FILE = 50_000


def fever_page_id(i: int) -> str:
    """Page ids in the dump's style: underscores, PTB escapes, accented letters, now and then a quote."""
    pid = f"Page_{i}"
    if i % 7 == 3:
        pid += "_-LRB-film-RRB-"
    if i % 31 == 5:
        pid = "Caf\u00e9_" + pid
    if i % 997 == 11:
        pid = f'"{pid}"_-COLON-_x'
    return pid


def write_wiki_pages(folder: Path, n: int, cited: set[int], seed: int) -> dict[str, list[str]]:
    """FEVER wiki-pages JSONL in the real layout: files of 50,000 pages (wiki-001.jsonl, ...), the first
    page of the first file with an empty id, each page {id, text, lines} with `lines` rows
    `N\tsentence\tlink\tlink` (PTB-tokenised sentences, some rows empty); returns the sentences of
    the `cited` pages, by page id."""
    rng = np.random.default_rng(seed)
    vocab, p = vocab_and_probs()
    words = vocab[rng.choice(len(vocab), size=20_000 * 20, p=p)]
    extra = np.array([",", "-LRB-", "-RRB-", "'s", "``", "''", "caf\u00e9", "na\u00efve"])
    pool = []
    for k in range(20_000):
        w = list(words[k * 20:k * 20 + int(rng.integers(8, 20))])
        w.insert(int(rng.integers(1, len(w))), str(extra[k % len(extra)]))
        pool.append(" ".join(w) + " .")
    folder.mkdir(parents=True, exist_ok=True)
    n_sent = rng.integers(1, 9, size=n)
    picks = rng.integers(0, len(pool), size=int(n_sent.sum()))
    keep, at = {}, 0
    for start in range(0, n, FEVER_PAGES_PER_FILE):
        with open(folder / f"wiki-{start // FEVER_PAGES_PER_FILE + 1:03d}.jsonl", "w", encoding="utf-8") as f:
            if start == 0:
                f.write(json.dumps({"id": "", "text": "", "lines": ""}) + "\n")
            for i in range(start, min(n, start + FEVER_PAGES_PER_FILE)):
                sents = [pool[j] for j in picks[at:at + n_sent[i]]]
                at += n_sent[i]
                rows = [f"{k}\t{t}" + (f"\tT{k}\tT{k}" if k % 2 else "") for k, t in enumerate(sents)]
                if i % 3 == 0:
                    rows.append(f"{len(rows)}\t")
                pid = fever_page_id(i)
                f.write(json.dumps({"id": pid, "text": " ".join(sents), "lines": "\n".join(rows)}) + "\n")
                if i in cited:
                    keep[pid] = sents
    return keep


def write_fever_claims(path: Path, cited: dict[str, list[str]], seed: int) -> None:
    """FEVER claims JSONL in the real layout ({id, verifiable, label, claim, evidence}), one claim per cited
    page: 40% SUPPORTS and 30% REFUTES citing one or two of its sentences, 30% NOT ENOUGH INFO
    (evidence [[[annotation_id, null, null, null]]]); a claim is words of its page's first sentence."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i, (pid, sents) in enumerate(cited.items()):
            u = rng.random()
            label = "SUPPORTS" if u < 0.4 else "REFUTES" if u < 0.7 else "NOT ENOUGH INFO"
            toks = sents[0].split()
            claim = " ".join(toks[:int(rng.integers(4, 9))]) + "."
            if label == "NOT ENOUGH INFO":
                ev = [[[100_000 + i, None, None, None]]]
            else:
                ev = [[[100_000 + i, 200_000 + i, pid, k] for k in range(min(len(sents), int(rng.integers(1, 3))))]]
            f.write(json.dumps({"id": 10_000 + i, "verifiable": "NOT VERIFIABLE" if label == "NOT ENOUGH INFO"
                                else "VERIFIABLE", "label": label, "claim": claim, "evidence": ev}) + "\n")


def fever_part(sizes: list[int], n_claims: int, work: Path, seed: int, n_threads: int) -> None:
    """build_data.py --sources fever --fever-wiki-scope referenced over n-page dumps: time, peak RSS,
    slope per page, projection to FEVER's 5.4M pages."""
    rows = []
    for n in sizes:
        data, cache = work / f"fever{n}", work / f"cache_fever{n}"
        cited = set(np.random.default_rng(seed).choice(n, size=min(n_claims, n), replace=False).tolist())
        t = time.perf_counter()
        kept = write_wiki_pages(data / "raw/fever/wiki-pages", n, cited, seed)
        write_fever_claims(data / "raw/fever/train.jsonl", kept, seed)
        gen_s = time.perf_counter() - t
        files = sorted((data / "raw/fever/wiki-pages").glob("*.jsonl"))
        mb = sum(p.stat().st_size for p in files) / 1e6
        r = run_build(data, cache, work / f"fever{n}.log", n_threads, "fever", ("--fever-wiki-scope", "referenced"))
        r = {"n": n, "mb": mb, "files": len(files), "s": r["s"], "gb": r["rss_gb"], "examples": r["card"]["total"]}
        rows.append(r)
        print(f"{n:>10,} wiki pages ({mb:,.0f} MB, {len(files)} files, generated in {gen_s:.0f} s), {len(kept):,} claims: "
              f"build {r['s']:,.1f} s ({mb / r['s']:,.0f} MB/s), peak RSS {r['gb']:.2f} GB, {r['examples']} examples",
              flush=True)
        for p in files:
            p.unlink()
    if rows:
        print("\n| wiki pages | JSONL | build | peak RSS | examples |\n|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['n']:,} | {r['mb'] / 1e3:.2f} GB | {r['s']:,.1f} s | {r['gb']:.2f} GB | {r['examples']} |")
    if len(rows) >= 2:
        ns = [r["n"] for r in rows]
        s_t, b_t = fit(ns, [r["s"] for r in rows])
        s_rss, b_rss = fit(ns, [r["gb"] for r in rows])
        per_page = sum(r["mb"] for r in rows) * 1e6 / sum(ns)
        N = FEVER_PAGES
        print(f"slope per page: build {s_t * 1e6:.2f} us, peak RSS {s_rss * 1e9:.1f} bytes ({per_page:,.0f} bytes of "
              f"JSONL per page); projected to {N:,} pages ({N * per_page / 1e9:.1f} GB at that size): build "
              f"{(s_t * N + b_t) / 60:.1f} min, peak RSS {s_rss * N + b_rss:.2f} GB")


def retrieval_rate(data: Path, cache: Path, n_questions: int) -> dict:
    """Questions/s on the reused on-disk index (k=20, one thread, no hits cache; the best of three runs
    alternating with the baseline, after a warm-up pass), in a child process:
    ours (`PostingsScorer` through StoredBM25Index.search) against bm25s' own `retrieve` in the same
    run (with the same sort into hits), for the bench's questions and for the same questions without
    the generated vocabulary's 100 most frequent words. bm25s drops English stop words, and the
    generated words hold none: their most frequent ones, in nearly every passage, stand where a
    real question's stop words would be (`rare`: the questions a real corpus gives more of)."""
    code = f"""
import json, sys, time
import numpy as np
from pathlib import Path
sys.path.insert(0, {str(ROOT)!r})
from factuality import passage_store as PS
from factuality.retrieval import Hit, tokenize
from factuality.sources import BadRecords
from factuality.sources.corpus import StoredBM25Index, iter_chunks
tsv = Path({str(data / 'raw/corpus/psgs_w100.tsv')!r})
store, model, man = PS.open_or_build([tsv], [PS._sha256(tsv)], 100, lambda b: iter_chunks([tsv], b, 100), BadRecords(),
                                     quiet=True, root=Path({str(cache / 'corpus')!r}))
assert man["reused"], "the index should be in the cache"
qs = [json.loads(l)["question"] for l in open({str(data / 'raw/nq/NQ-open.train.jsonl')!r})][:{n_questions}]
rare = [" ".join(t for t in q.split() if not (t[0] == "w" and t[1:-1].isdigit() and int(t[1:-1]) < 100)) for q in qs]
idx = StoredBM25Index(model, store)
out = {{}}
def before(q):                                                # what BM25Index.search did before PostingsScorer
    docs, scores = model.retrieve(tokenize(q), k=20, show_progress=False)
    return [[Hit(int(d), float(s)) for d, s in sorted(zip(rd.tolist(), rs.tolist()), key=lambda x: (-x[1], x[0]))
             if s > 0] for rd, rs in zip(np.asarray(docs), np.asarray(scores))]
for name, q in (("common", qs), ("rare", rare)):
    idx.search(q, 20)                                         # warm the page cache (score columns) for both
    best = {{name: 0.0, name + "_bm25s": 0.0}}
    for _ in range(3):                                        # alternating, the best of three each
        for key, fn in ((name, lambda: idx.search(q, 20)), (name + "_bm25s", lambda: before(q))):
            t = time.perf_counter(); fn(); best[key] = max(best[key], len(q) / (time.perf_counter() - t))
    out.update(best)
print(json.dumps(out))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def fit(xs, ys):
    """Least-squares slope and intercept."""
    a, b = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(a), float(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="200000,1000000,2000000", help="corpus sizes (passages), comma separated")
    ap.add_argument("--questions", type=int, default=1000, help="NQ-Open questions per build")
    ap.add_argument("--rate-questions", type=int, default=300, help="questions of the retrieval rates (each the best "
                                                                    "of three alternating runs)")
    ap.add_argument("--dpr-mb", default="256,1024", help="sizes of the generated DPR JSON files (MB), comma separated; "
                                                        "0 to skip (two sizes give the slope)")
    ap.add_argument("--fever-pages", default="0", help="FEVER wiki-pages dump sizes (pages), comma separated, e.g. "
                                                       "200000,1000000; 0 to skip")
    ap.add_argument("--fever-claims", type=int, default=3000, help="FEVER claims, each citing one page")
    ap.add_argument("--work", default=None, help="folder for the generated files (default: a temp folder, removed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-threads", type=int, default=-1, help="build_data.py --n-threads: tokenising processes and "
                                                               "retrieval threads (-1: every core, as configs/data_full.yaml)")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]   # "" : the DPR files only
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_scale."))
    rows = []
    print(f"machine: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}; builds with --n-threads "
          f"{args.n_threads}; work folder {work}")
    for n in sizes:
        data, cache = work / f"c{n}", work / f"cache{n}"
        t = time.perf_counter()
        keep = write_corpus(data / "raw/corpus/psgs_w100.tsv", n, args.seed)
        write_questions(data / "raw/nq/NQ-open.train.jsonl", keep, args.questions, args.seed)
        gen_s = time.perf_counter() - t
        first = run_build(data, cache, work / f"c{n}.first.log", args.n_threads)
        second = run_build(data, cache, work / f"c{n}.second.log", args.n_threads)
        assert not first["card"]["corpus_index"]["reused"] and second["card"]["corpus_index"]["reused"]
        assert first["card"]["output_sha256"] == second["card"]["output_sha256"], "a reused index changed the output"
        rate = retrieval_rate(data, cache, args.rate_questions)
        qps = rate["common"]
        mb = (data / "raw/corpus/psgs_w100.tsv").stat().st_size / 1e6
        rows.append({"n": n, "mb": mb, "gen_s": gen_s, "first_s": first["s"], "first_gb": first["rss_gb"],
                     "workers_gb": first["workers_gb"],
                     "second_s": second["s"], "second_gb": second["rss_gb"], "qps": qps, "rate": rate,
                     "second_hits": second["card"]["corpus_index"].get("questions"),
                     "index_gb": sum(f.stat().st_size for f in (cache / "corpus").rglob("*") if f.is_file()) / 1e9,
                     "examples": first["card"]["total"]})
        r = rows[-1]
        print(f"{n:>10,} passages ({mb:,.0f} MB): first build {r['first_s']:,.0f} s, peak RSS {r['first_gb']:.2f} GB "
              f"(each tokenising worker {r['workers_gb']:.2f} GB); "
              f"second build {r['second_s']:,.0f} s ({100 * r['second_s'] / r['first_s']:.0f}%), {r['second_gb']:.2f} GB; "
              f"(questions {r['second_hits']}); "
              f"retrieval (one thread) {qps:,.0f} questions/s, bm25s' retrieve {rate['common_bm25s']:,.0f} "
              f"(x{qps / rate['common_bm25s']:.2f}); without the 100 most frequent words {rate['rare']:,.0f}, bm25s "
              f"{rate['rare_bm25s']:,.0f} (x{rate['rare'] / rate['rare_bm25s']:.2f}); cache {r['index_gb']:.2f} GB; "
              f"{r['examples']} examples", flush=True)
        for p in (data / "raw/corpus/psgs_w100.tsv",):
            p.unlink()
    if rows:
        print("\n| corpus | file | first build | peak RSS | second build | its peak RSS | retrieval: ours / bm25s "
              "(bench questions) | ours / bm25s (no frequent words) | cache on disk |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n']:,} passages | {r['mb'] / 1e3:.2f} GB | {r['first_s']:,.0f} s | {r['first_gb']:.2f} GB | "
              f"{r['second_s']:,.0f} s ({100 * r['second_s'] / r['first_s']:.0f}%) | {r['second_gb']:.2f} GB | "
              f"{r['qps']:,.0f} / {r['rate']['common_bm25s']:,.0f} q/s | {r['rate']['rare']:,.0f} / "
              f"{r['rate']['rare_bm25s']:,.0f} q/s | {r['index_gb']:.2f} GB |")
    if len(rows) >= 2:
        ns = [r["n"] for r in rows]
        s_rss, b_rss = fit(ns, [r["first_gb"] for r in rows])
        s_t, b_t = fit(ns, [r["first_s"] for r in rows])
        s_t2, b_t2 = fit(ns, [r["second_s"] for r in rows])
        s_disk, b_disk = fit(ns, [r["index_gb"] for r in rows])
        # per-question retrieval time grows with the corpus (a score per passage per query)
        s_q, b_q = fit(ns, [1 / r["qps"] for r in rows])
        s_qr, b_qr = fit(ns, [1 / r["rate"]["rare"] for r in rows])
        N = FULL_PASSAGES
        print(f"\nslope per passage ({len(rows)} sizes, least squares): peak RSS {s_rss * 1e9 / 1e3:.2f} KB, "
              f"first build {s_t * 1e3:.3f} ms, second build {s_t2 * 1e3:.4f} ms, cache {s_disk * 1e9 / 1e3:.2f} KB, "
              f"retrieval {s_q * 1e9:.2f} ns per question per passage")
        q_s = s_q * N + b_q
        print(f"projected to {N:,} passages: peak RSS {s_rss * N + b_rss:.1f} GB, first build (one-time index) "
              f"{(s_t * N + b_t) / 60:.0f} min, second build {(s_t2 * N + b_t2) / 60:.1f} min "
              f"({100 * (s_t2 * N + b_t2) / (s_t * N + b_t):.0f}%), cache {s_disk * N + b_disk:.0f} GB on disk, "
              f"retrieval {1 / q_s:.2f} questions/s (one thread): NQ-Open train's {NQ_TRAIN_QUESTIONS:,} questions "
              f"{NQ_TRAIN_QUESTIONS * q_s / 3600:.1f} h; without the frequent words {1 / (s_qr * N + b_qr):.1f} "
              f"questions/s, {NQ_TRAIN_QUESTIONS * (s_qr * N + b_qr) / 3600:.1f} h")
    dpr_rows = []
    for mb in [float(x) for x in args.dpr_mb.split(",") if float(x) > 0]:
        data, cache = work / f"dpr{mb:g}", work / "cache_dpr"
        path = data / "raw/nq/biencoder-nq-train.json"
        n_rec = write_dpr(path, int(mb * 1e6), args.seed)
        size = path.stat().st_size
        r = run_build(data, cache, work / f"dpr{mb:g}.log")
        dpr_rows.append((size, r["s"], r["rss_gb"], n_rec))
        print(f"DPR retriever JSON {size / 1e9:.2f} GB ({n_rec:,} records): build {r['s']:,.0f} s, peak RSS "
              f"{r['rss_gb']:.2f} GB ({r['rss_gb'] * 1e9 / size:.2f}x the file), {r['card']['total']} examples", flush=True)
        path.unlink()
    if dpr_rows:
        print("\n| DPR JSON | build | peak RSS |\n|---:|---:|---:|")
        for size, sec, gb, _ in dpr_rows:
            print(f"| {size / 1e9:.2f} GB | {sec:,.0f} s | {gb:.2f} GB |")
        if len(dpr_rows) >= 2:
            s_rss, b_rss = fit([r[0] for r in dpr_rows], [r[2] for r in dpr_rows])
            s_t, b_t = fit([r[0] for r in dpr_rows], [r[1] for r in dpr_rows])
            print(f"slope per GB of DPR JSON: peak RSS {s_rss * 1e9:.3f} GB, time {s_t * 1e9:.0f} s; projected to a "
                  f"{FULL_DPR_BYTES / 1e9:.1f} GB file: peak RSS {s_rss * FULL_DPR_BYTES + b_rss:.2f} GB, "
                  f"build {(s_t * FULL_DPR_BYTES + b_t) / 60:.0f} min")
            # the build keeps one example per record (it shuffles and splits in memory): memory follows
            # the records, and a generated record is smaller than a real one (DPR's file: 58,880 records)
            s_r, b_r = fit([r[3] for r in dpr_rows], [r[2] for r in dpr_rows])
            print(f"slope per record: peak RSS {s_r * 1e9 / 1e3:.1f} KB; projected to the real file's {FULL_DPR_RECORDS:,} "
                  f"records: peak RSS {s_r * FULL_DPR_RECORDS + b_r:.2f} GB")
    fever = [int(x) for x in args.fever_pages.split(",") if x.strip() and int(x) > 0]
    if fever:
        fever_part(fever, args.fever_claims, work, args.seed, args.n_threads)


if __name__ == "__main__":
    main()
