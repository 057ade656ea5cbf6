"""Scoring and reporting of any number of systems: metrics, comparisons, tables, Markdown, plots.

`compute_metrics` scores the prediction rows of every system (tag) on the examples that every
system has, so every column, delta and interval of a comparison is over the same examples; the
examples a tag lacks are counted in `coverage`. Tables and plots take every column from the
results (no tag name is special) and lead with the headline measures (metrics.HEADLINE), the ones
a degenerate system cannot raise. Definitions of the measures: factuality/metrics.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from .bootstrap import BootstrapSpec, breakdown, breakdown_deltas
from .confidence import use_answer_probability
from .error_types import ERROR_TYPES, count_types, error_type
from .metrics import HEADLINE, METRICS, SupportChecker, risk_coverage, score_example
from .prompts import parse_output

# The overall table's rows: the headline first, then what explains it.
TABLE_METRICS: tuple[str, ...] = HEADLINE + (
    "correct_grounded", "grounded_refusal_f1", "answer_correctness_f1",
    "hallucination_rate", "citation_hallucination_rate", "citation_f1",
    "em", "match", "f1", "fever_accuracy", "fever_accuracy_lenient",
    "refusal_precision", "refusal_recall", "refusal_noncanonical",
    "ece", "brier", "aurc", "format_validity",
)
CELL_METRICS: tuple[str, ...] = HEADLINE + ("hallucination_rate", "em", "match", "fever_accuracy", "refusal_f1",
                                            "format_validity")
PLOT_METRICS: tuple[str, ...] = HEADLINE + ("hallucination_rate", "match", "format_validity")


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------
def rescore(example: Mapping, row: Mapping, checker: str | SupportChecker | None = None) -> dict:
    """Per-example scores recomputed from the raw output (so a metric change reaches old files), with
    the row's `answer_prob` as the answer's confidence when it has one (predictions.prediction_row),
    and the output's `error_type` (error_types.py)."""
    parsed = parse_output(row["raw_output"], [c["id"] for c in example["evidence"]])
    use_answer_probability(parsed, row.get("answer_prob"))
    scores = score_example(example, raw_output=row["raw_output"], parsed=parsed,
                           output_tokens=row.get("output_tokens"), checker=checker)
    return {**scores, "error_type": error_type(example, parsed, scores)}


def compute_metrics(examples: Sequence[Mapping], rows_by_tag: Mapping[str, Mapping[str, Mapping]],
                    prompt_tokens: Mapping[str, int], boundaries: Sequence[int], boot: BootstrapSpec | None,
                    comparisons: Sequence[tuple[str, str]] = (),
                    checker: str | SupportChecker | None = None) -> dict:
    """Metrics of every tag and paired deltas of every (new_tag, old_tag) comparison.

    `rows_by_tag` is an ordered {tag: {example_id: prediction row (raw_output, output_tokens)}};
    a tag with no rows at all is left out of the columns (and of comparisons: listed under
    `comparisons_skipped`). Every column is over the examples that every remaining tag has;
    `coverage[tag]` says how many examples it has a prediction for (`scored`), how many it lacks
    (`missing`) and how many of its own were left out because another tag lacks them (`left_out`).
    Returns {"tags", "shared", "metrics": {tag: breakdown}, "coverage", "comparisons": [{"new",
    "old", "label", "n", "overall", "by_source", "by_bucket"}], "comparisons_skipped", "deltas"
    (overall deltas of the first comparison), "delta_details" (its details), "risk_coverage"}.
    """
    tags = [t for t, rows in rows_by_tag.items() if rows]
    shared = [e for e in examples if all(e["id"] in rows_by_tag[t] for t in tags)]
    sources = [e["source"] for e in shared]
    lengths = [prompt_tokens[e["id"]] for e in shared]
    out: dict[str, Any] = {"tags": tags, "shared": len(shared), "metrics": {}, "coverage": {}, "comparisons": [],
                           "comparisons_skipped": [], "deltas": {}, "delta_details": {}, "risk_coverage": {},
                           "error_types": {}}
    scores: dict[str, list[dict]] = {}
    for tag, rows in rows_by_tag.items():
        scored = sum(1 for e in examples if e["id"] in rows)
        out["coverage"][tag] = {"scored": scored, "missing": len(examples) - scored,
                                "left_out": scored - len(shared) if tag in tags else 0}
    for tag in tags:
        scores[tag] = [rescore(e, rows_by_tag[tag][e["id"]], checker) for e in shared]
        out["error_types"][tag] = count_types(s.pop("error_type") for s in scores[tag])
        out["metrics"][tag] = breakdown(scores[tag], sources, lengths, boundaries, boot)
        with_conf = [s for s in scores[tag] if s["confidence"] is not None]
        out["risk_coverage"][tag] = risk_coverage([s["confidence"] for s in with_conf],
                                                  [s["confidence_correct"] for s in with_conf])
    for new, old in comparisons:
        lacking = [t for t in (new, old) if t not in scores]
        if lacking:
            out["comparisons_skipped"].append(f"{new}-{old}: no predictions for {', '.join(map(repr, lacking))}")
            continue
        details = breakdown_deltas(scores[new], scores[old], sources, lengths, boundaries, boot)
        out["comparisons"].append({"new": new, "old": old, "label": f"{new}-{old}", "n": len(shared), **details})
    if out["comparisons"]:
        first = out["comparisons"][0]
        out["deltas"] = {name: d["delta"] for name, d in first["overall"].items()}
        out["delta_details"] = {k: first[k] for k in ("overall", "by_source", "by_bucket")}
        out["delta_details"]["compared"] = f"{first['new']} minus {first['old']} on {len(shared)} shared examples"
    return out


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------
def _fmt(v, signed=False, digits=3) -> str:
    if v is None:
        return "n/a"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _fmt_ci(ci, signed=False, digits=3) -> str:
    if not ci:
        return "n/a"
    return f"[{_fmt(ci[0], signed, digits)}, {_fmt(ci[1], signed, digits)}]"


def _get(d, path):
    for k in path:
        d = (d or {}).get(k)
    return d


def _tags(results: Mapping) -> list[str]:
    return list(results.get("tags") or results.get("metrics", {}))


def comparison_rows(results: Mapping, metrics: Sequence[str] = TABLE_METRICS, cell: tuple[str, ...] = ("overall",)
                    ) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the table for one cell (("overall",), ("by_bucket", label), ...).

    Columns: one per tag (with its interval when there is no comparison), then for each
    comparison its delta and the delta's interval, then n: the measure's denominator, one figure
    per tag ("a/b") where the systems' denominators differ (answers, refusals, ...).
    """
    tags = _tags(results)
    comps = results.get("comparisons") or []
    spec = (results.get("entailment") or {}).get("spec")
    header = [f"metric (entailment: {spec})" if spec else "metric"]   # the checker behind every citation measure
    for t in tags:
        header += [t] if comps else [t, "95% CI"]
    for c in comps:
        header += [c["label"], "95% CI"]
    header.append("n")
    rows = []
    for name in metrics:
        digits = 1 if name == "output_tokens" else 3
        row, ns = [METRICS[name][0]], []
        for t in tags:
            m = _get(results["metrics"][t], cell + ("metrics", name)) or {}
            row.append(_fmt(m.get("value"), digits=digits))
            if not comps:
                row.append(_fmt_ci(m.get("ci"), digits=digits))
            ns.append(str(m.get("n", 0)))
        for c in comps:
            d = _get(c, cell + (name,)) or {}
            row += [_fmt(d.get("delta"), signed=True, digits=digits), _fmt_ci(d.get("ci"), signed=True, digits=digits)]
        row.append(ns[0] if len(set(ns)) == 1 else "/".join(ns))
        rows.append(row)
    return header, rows


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < left else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def format_comparison_table(results: Mapping, markdown: bool = False, metrics: Sequence[str] = TABLE_METRICS,
                            cell: tuple[str, ...] = ("overall",)) -> str:
    """Every tag's value of each measure, the headline first; each comparison's delta and its 95%
    paired-bootstrap interval; n. Importable: the demo prints it after a run."""
    header, rows = comparison_rows(results, metrics, cell)
    if markdown:
        return _markdown(header, rows)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    fmt_row = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt_row(header), "  ".join("-" * w for w in widths)] + [fmt_row(r) for r in rows])


def _cell_table(results: Mapping, group: str, metrics: Sequence[str] = CELL_METRICS) -> str:
    """Markdown table: one row per (bucket or source) and tag, with n and the measures."""
    tags = _tags(results)
    keys: list[str] = []
    for t in tags:
        keys += [k for k in results["metrics"][t][group] if k not in keys]
    spec = (results.get("entailment") or {}).get("spec")
    header = [group.replace("by_", ""), f"model (entailment: {spec})" if spec else "model", "n"] + [
        METRICS[m][0] for m in metrics]
    rows = []
    for k in keys:
        for t in tags:
            cell = results["metrics"][t][group].get(k)
            if cell is not None:
                rows.append([k, t, str(cell["n"])] + [_fmt(cell["metrics"][m]["value"]) for m in metrics])
    return _markdown(header, rows, left=2)


def format_error_types(results: Mapping, markdown: bool = False) -> str:
    """Counts of each output type (rows) per system (columns)."""
    types = results.get("error_types") or {}
    tags = [t for t in _tags(results) if t in types] or list(types)
    rows = [[name] + [str(types[t].get(name, 0)) for t in tags] for name in ERROR_TYPES]
    if markdown:
        return _markdown(["output type", *tags], rows)
    width = max(len(n) for n in ERROR_TYPES)
    return "\n".join([f"{'output type':<{width}}  " + "  ".join(f"{t:>8}" for t in tags)] +
                     [f"{r[0]:<{width}}  " + "  ".join(f"{v:>8}" for v in r[1:]) for r in rows])


def _coverage_line(results: Mapping) -> str:
    cov = results.get("coverage", {})
    lacks = ", ".join(f"{t} lacks {c['missing']}" + (f" (and {c['left_out']} of its own left out)" if c.get("left_out") else "")
                      for t, c in cov.items())
    return f"- every column, delta and interval is over the {results.get('shared', 'n/a')} examples every system has ({lacks})"


PUBLISHED_ROWS = (
    ("alce", ("citation_rec", "citation_prec", "str_em", "str_hit", "claims_nli", "qampari_f1_top5", "length")),
    ("trust_eval", ("trust_score", "macro_f1", "calib_str_em_f1", "calib_qampari_em_f1", "calib_claims_nli_f1",
                    "answered_citation_f1", "parametric_str_em", "refuse_f1", "answerable_f1")),
)


def format_published(results: Mapping) -> str:
    """Markdown: ALCE's and Trust-Eval's measures (x 100) per source and system, the checker in the header."""
    pub = results["published"]
    spec = pub.get("entailment")
    out = [f"## ALCE and Trust-Eval measures (x 100; entailment: {spec})", "",
           "Their names and definitions (factuality/alce.py, factuality/trusteval.py); comparable with published "
           "figures only on their data with their entailment model (README, \"Comparing with published numbers\").", ""]
    for bench, names in PUBLISHED_ROWS:
        table = pub.get(bench) or {}
        rows = []
        for tag, by_source in table.items():
            for source, m in by_source.items():
                rows.append([source, tag, str(m.get("n", m.get("num_samples", 0)))] + [
                    _fmt(m.get(k), digits=1) if k in m else "-" for k in names])
        if rows:
            out += [f"### {'ALCE' if bench == 'alce' else 'Trust-Eval'} (entailment: {spec})", "",
                    _markdown(["source", "model", "n", *names], rows, left=2), ""]
    return "\n".join(out)


def format_summary(results: Mapping) -> str:
    """The Markdown report: inputs, the headline table, per-bucket and per-source tables."""
    cfg = results.get("config", {})
    lines = [f"# Grounded-QA evaluation: {cfg.get('model_path') or cfg.get('predictions') or ''}", ""]
    td = results.get("inputs", {}).get("test_data", {})
    splits = td.get("splits") or {}
    split_note = "" if set(splits) <= {"test"} else (
        "; **splits: " + ", ".join(f"{k} {v}" for k, v in splits.items()) + " (not only held-out test)**")
    lines.append(f"- test data: `{td.get('path')}` ({td.get('examples')} examples, sha256 {str(td.get('sha256'))[:12]}"
                 f"{split_note})")
    for tag, info in results.get("models", {}).items():
        lines.append(f"- {tag}: `{info.get('name')}` (fingerprint {str(info.get('fingerprint_sha256'))[:12]})")
    lines.append(_coverage_line(results))
    for tag, c in results.get("coverage", {}).items():
        if c.get("missing"):
            lines.append(f"- **{tag}: {c['missing']} examples have no prediction (partial run)**")
    lines.append(f"- prompt length counted with: {results.get('prompt_length', {}).get('counted_with')}")
    lines.append(f"- intervals: {results.get('bootstrap', {}).get('description', 'none')}")
    lower = [METRICS[m][0] for m in TABLE_METRICS if not METRICS[m][1]]
    intro = (f"The first {len(HEADLINE)} rows are the headline: measures that no degenerate system (constant "
             "answer citing the gold chunks, cite everything, refuse everything, never refuse, ...) raises to the "
             f"gold system's 1.0. Lower is better for: {', '.join(lower)}. n: the measure's denominator, per "
             "system where they differ.")
    lines += ["", "## Headline (overall)", "", intro, "", format_comparison_table(results, markdown=True), ""]
    rc = results.get("risk_coverage") or {}
    if any(v.get("n") for v in rc.values()):
        lines += ["## Confidence ranking (answers only)", "",
                  "AURC: area under the risk-coverage curve (answers dropped lowest confidence first); random "
                  "abstention's AURC is the share of answers that are wrong. Lower is better; below random means "
                  "the confidence tells right answers from wrong ones.", "",
                  _markdown(["system", "answers", "AURC", "random abstention"],
                            [[t, str(v.get("n", 0)), _fmt(v.get("aurc")), _fmt(v.get("random_aurc"))]
                             for t, v in rc.items()]), ""]
    if results.get("error_types"):
        lines += ["## What the outputs are (error_types.py; the first two are the good ones)", "",
                  format_error_types(results, markdown=True), ""]
    if results.get("published"):
        lines += [format_published(results), ""]
    lines += ["## By prompt-length bucket (prompt tokens)", "", _cell_table(results, "by_bucket"), ""]
    lines += ["## By source", "", _cell_table(results, "by_source"), ""]
    lines += ["Metric definitions: factuality/metrics.py (docstring).", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------
def write_plots(results: Mapping, out_dir: Path) -> list[str]:
    """PNGs: per grouping (bucket, source) a panel per PLOT_METRICS measure with a bar per tag and
    its interval; and the risk-coverage curve of every tag that has answers with a confidence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    tags = _tags(results)
    for group, title in (("by_bucket", "prompt tokens"), ("by_source", "source")):
        keys: list[str] = []
        for t in tags:
            keys += [k for k in results["metrics"][t][group] if k not in keys]
        if not keys:
            continue
        fig, axes = plt.subplots(2, 3, figsize=(14, 7.5), squeeze=False)
        x = np.arange(len(keys))
        width = 0.8 / max(len(tags), 1)
        for ax, name in zip(axes.flat, PLOT_METRICS):
            for j, t in enumerate(tags):
                vals, lo, hi = [], [], []
                for k in keys:
                    m = results["metrics"][t][group].get(k, {"metrics": {}})["metrics"].get(name, {})
                    v, ci = m.get("value"), m.get("ci")
                    vals.append(np.nan if v is None else v)
                    lo.append(0 if (v is None or not ci) else max(v - ci[0], 0))
                    hi.append(0 if (v is None or not ci) else max(ci[1] - v, 0))
                ax.bar(x + (j - (len(tags) - 1) / 2) * width, vals, width, yerr=[lo, hi], capsize=2, label=t, alpha=0.85)
            ax.set_title(METRICS[name][0] + ("" if METRICS[name][1] else " (lower is better)"))
            ax.set_xticks(x)
            ns = [max((results["metrics"][t][group].get(k, {}).get("n", 0) for t in tags), default=0) for k in keys]
            ax.set_xticklabels([f"{k}\n(n={n})" for k, n in zip(keys, ns)], fontsize=7, rotation=30)
            ax.set_ylim(0, 1.05)
        fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="upper right", ncol=len(tags), fontsize=8)
        fig.suptitle(f"Metrics by {title} (95% bootstrap intervals; first row: headline)", x=0.02, ha="left")
        fig.tight_layout(rect=(0, 0, 1, 0.95))
        path = out_dir / f"metrics_{group}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(str(path))
    curves = {t: c for t, c in (results.get("risk_coverage") or {}).items() if c.get("n")}
    if curves:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for t, c in curves.items():
            ax.step([0.0] + c["coverage"], [c["risk"][0]] + c["risk"], where="pre",
                    label=f"{t} (AURC {_fmt(c['aurc'])}, n={c['n']})")
        ax.set_xlabel("coverage (share of answers kept, most confident first)")
        ax.set_ylabel("risk (share of kept answers that are wrong)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.05)
        ax.legend()
        ax.set_title("Risk-coverage of the stated confidence")
        fig.tight_layout()
        path = out_dir / "risk_coverage.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(str(path))
    return written


def format_run_summary(results: Mapping) -> str:
    """What evaluate_sft.py prints at the end: coverage, the comparison table, the files written."""
    cov = ", ".join(f"{t} {c['scored']}/{c['scored'] + c['missing']}" for t, c in results["coverage"].items())
    lines = [f"\nscored: {cov} examples; prompt lengths: {results['prompt_length']['counted_with']}",
             format_comparison_table(results)]
    if not results["complete"]:
        lines.append("PARTIAL run: rerun the same command to continue where it stopped")
    lines.append(f"wrote {results['files']['results']}, {results['files']['summary']}, {results['files']['predictions']}")
    return "\n".join(lines)
