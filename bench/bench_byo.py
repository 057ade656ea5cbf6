"""Benchmark: building from retrieval results in the ctxs format, against re-retrieving with BM25.

    python bench/bench_byo.py                          # 10k questions x 20 passages
    python bench/bench_byo.py --questions 2000         # quicker

Generates, with a seeded RNG, a pool of passages over a Zipf-distributed synthetic vocabulary
and, for each question, a DPR-style retrieval-results record (`{question, answers, ctxs}`, 20
passages with ids, string scores and `has_answer`; one passage holds the answer, the question is
words of it plus noise), written as gzipped JSONL under nq/. Then runs `build_data.py`'s build
(`factuality.stages.build.build`, everything from hashing the input to writing the splits), each
variant in its own process so peak memory (ru_maxrss) is its own:
  - baseline, first-party NQ-Open path: the same questions as NQ-Open JSONL plus the pool as a
    psgs_w100-style TSV corpus; evidence by BM25 over the whole corpus (what a user had to do
    before this reader existed, throwing the retriever's passages away);
  - ctxs: the retrieval-results file; evidence from each record's own passages, no index at all
    (19 answer-free passages cover the 3 distractors + 2 spare the build asks for);
  - ctxs + BM25 fill: the same file with --num-distractors 20, so every question asks for more
    negatives than its list holds and the BM25 fill over all the file's passages runs for all.
Prints questions/s of each against the baseline, and each one's peak memory.
"""
from __future__ import annotations

import argparse
import gzip
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux reports KiB


def generate(raw_open: Path, raw_ctxs: Path, n_questions: int, n_ctxs: int, n_passages: int, vocab_size: int,
             seed: int) -> dict:
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}x" for i in range(vocab_size)])
    p = 1 / np.arange(1, vocab_size + 1) ** 1.07
    p /= p.sum()
    lengths = rng.integers(60, 101, size=n_passages)
    words = rng.choice(vocab_size, size=int(lengths.sum()), p=p)
    passages, pos = [], 0
    for n in lengths:
        passages.append(" ".join(vocab[words[pos:pos + n]]))
        pos += n
    (raw_open / "nq").mkdir(parents=True)
    (raw_open / "corpus").mkdir()
    (raw_ctxs / "nq").mkdir(parents=True)
    with open(raw_open / "corpus" / "psgs.tsv", "w") as f:
        f.write("id\ttext\ttitle\n")
        for i, text in enumerate(passages):
            f.write(f"{i}\t{text}\tTitle {i}\n")
    with open(raw_open / "nq" / "NQ-open.bench.jsonl", "w") as fo, \
            gzip.open(raw_ctxs / "nq" / "nq-bench-ctxs.jsonl.gz", "wt", compresslevel=1) as fc:
        for q in range(n_questions):
            gold = int(rng.integers(0, n_passages))
            toks = passages[gold].split()
            answer = max(toks, key=lambda t: int(t[1:-1]))            # the gold passage's rarest word
            picks = rng.choice(len(toks), size=6, replace=False)
            question = " ".join([toks[i] for i in picks] + list(vocab[rng.integers(0, vocab_size, size=2)])) + f" q{q}"
            others = rng.choice(n_passages, size=n_ctxs - 1, replace=False)
            ranked = [int(i) for i in others if i != gold][:n_ctxs - 1]
            ranked.insert(int(rng.integers(0, 3)), gold)                 # the answer passage near the top
            ctxs = [{"id": str(i), "title": f"Title {i}", "text": passages[i], "score": f"{80 - r * 0.5:.2f}",
                     "has_answer": i == gold} for r, i in enumerate(ranked)]
            fo.write(json.dumps({"question": question, "answer": [answer]}) + "\n")
            fc.write(json.dumps({"question": question, "answers": [answer], "ctxs": ctxs}) + "\n")
    return {"passages": n_passages, "ctxs_file_mb": (raw_ctxs / "nq" / "nq-bench-ctxs.jsonl.gz").stat().st_size / 2**20}


def child(args) -> None:
    """One build in this process; prints its figures as one JSON line."""
    from factuality.stages.build import BuildConfig, build

    cfg = BuildConfig(data_dir=args.data_dir, raw_dir=args.raw_dir, sources=["nq"], accept_new_hash=True, quiet=True,
                      num_distractors=args.num_distractors, no_oracle_fraction=0.0)
    cfg.validate()
    t = time.perf_counter()
    summary = build(cfg)
    wall = time.perf_counter() - t
    origins: dict[str, int] = {}
    for split in ("train", "val", "test"):
        with open(Path(summary["outputs"][split])) as f:
            for line in f:
                o = json.loads(line)["meta"]["evidence_origin"]
                origins[o] = origins.get(o, 0) + 1
    print(json.dumps({"wall_s": wall, "total": summary["total"], "timings": summary["timings"],
                      "dropped": summary["dropped"], "origins": origins, "peak_rss_mb": peak_rss_mb()}))


def run_variant(name: str, raw: Path, work: Path, num_distractors: int) -> dict:
    cmd = [sys.executable, __file__, "--child", "--raw-dir", str(raw), "--data-dir", str(work / name),
           "--num-distractors", str(num_distractors)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=10_000)
    ap.add_argument("--ctxs", type=int, default=20, help="passages per question in the retrieval results")
    ap.add_argument("--passages", type=int, default=100_000, help="size of the passage pool the ctxs are drawn from")
    ap.add_argument("--vocab", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--raw-dir", help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", help=argparse.SUPPRESS)
    ap.add_argument("--num-distractors", type=int, default=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return {}
    with tempfile.TemporaryDirectory(prefix="bench_byo_") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        info = generate(tmp / "raw_open", tmp / "raw_ctxs", args.questions, args.ctxs, args.passages, args.vocab, args.seed)
        print(f"generated {args.questions:,} questions x {args.ctxs} passages (pool {info['passages']:,}; ctxs file "
              f"{info['ctxs_file_mb']:.0f} MB gzipped) in {time.perf_counter() - t:.1f} s, seed {args.seed}")
        results = {
            "baseline: NQ-Open + BM25 over the corpus": run_variant("open", tmp / "raw_open", tmp, 3),
            "ctxs (own passages only)": run_variant("ctxs", tmp / "raw_ctxs", tmp, 3),
            "ctxs + BM25 fill for every question": run_variant("fill", tmp / "raw_ctxs", tmp, 20),
        }
    base = None
    for name, r in results.items():
        qps = args.questions / r["timings"]["total_s"]
        base = base or qps
        tm = r["timings"]
        print(f"{name}: {r['timings']['total_s']:.1f} s = {qps:,.0f} questions/s ({qps / base:.2f}x baseline); "
              f"read {tm['read_s']:.1f} s, evidence {tm['evidence_s']:.1f} s, assemble {tm['assemble_s']:.1f} s; "
              f"{r['total']:,} examples (evidence origin {r['origins']}); dropped {r['dropped'] or 0}; "
              f"peak memory {r['peak_rss_mb']:,.0f} MB ({r['peak_rss_mb'] / results[next(iter(results))]['peak_rss_mb']:.2f}x)")
        r["questions_per_s"] = qps
    return results


if __name__ == "__main__":
    main()
