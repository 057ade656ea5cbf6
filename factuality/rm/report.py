"""The reward model's report: metrics of the model and its baselines on the val pairs (overall, per
pair kind), the gaming-probe table, reliability bins; Markdown tables and plots.

Baselines: length only (response tokens), penalties only (-sum of weighted penalties), the
untrained head (the head at its seeded initialisation, no penalties), the trained head without
penalties, and the verifier score (judge.unweighted_verifier_score with the pair's gold fields).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .features import PairIndex
from .metrics import fit_scale, metrics_by_kind, reliability_bins
from .probes import Probe, probe_table


@dataclass
class ScoredSet:
    """Every score variant of the eval sequences (val pairs and probes), one float per sequence."""

    learned: np.ndarray
    penalty: np.ndarray
    untrained: np.ndarray | None
    length: np.ndarray
    verifier: np.ndarray


def _variants(s: ScoredSet) -> dict[str, np.ndarray]:
    out = {"model": s.learned - s.penalty, "model_without_penalties": s.learned, "penalties_only": -s.penalty,
           "length_only": s.length, "verifier": s.verifier}
    if s.untrained is not None:
        out["untrained_head"] = s.untrained
    return out


# rows whose scores are BT log-odds (calibrated as they are); the rest get a scale fitted on the train pairs
LOG_ODDS_ROWS = ("model", "model_without_penalties", "untrained_head")


def build_report(val: ScoredSet, val_pairs: PairIndex, train: ScoredSet | None, train_pairs: PairIndex | None,
                 probes: Sequence[Probe], probe_rows: Sequence[int]) -> dict:
    """Metrics of every variant on the val pairs (overall, per kind), probe table, reliability bins."""
    variants = _variants(val)
    train_variants = _variants(train) if train is not None else {}
    scales = {}
    rows = {}
    for name, s in variants.items():
        if name in LOG_ODDS_ROWS or name not in train_variants or train_pairs is None:
            scales[name] = 1.0
        else:
            t = train_variants[name]
            scales[name] = fit_scale(t[train_pairs.chosen] - t[train_pairs.rejected])
        rows[name] = metrics_by_kind(s, val_pairs, scales[name])
        rows[name]["scale"] = scales[name]
    probe_idx = np.asarray(probe_rows, dtype=np.int64)
    table = probe_table(probes, {"with_penalties": variants["model"][probe_idx],
                                 "without_penalties": variants["model_without_penalties"][probe_idx],
                                 "penalties_only": variants["penalties_only"][probe_idx]}) if probes else {}
    d = variants["model"][val_pairs.chosen] - variants["model"][val_pairs.rejected]
    return {"metrics": rows, "probes": {"examples": len({p.example_id for p in probes}), "by_trick": table},
            "reliability": reliability_bins(d), "pairs_by_kind": {k: val_pairs.kinds.count(k)
                                                                  for k in sorted(set(val_pairs.kinds))}}


ROW_LABELS = {"model": "reward model (penalised)", "model_without_penalties": "trained head, no penalties",
              "untrained_head": "untrained head", "penalties_only": "penalties only", "length_only": "length only",
              "verifier": "verifier score (gold)"}


def fmt(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def heldout_table(report: Mapping) -> list[str]:
    """Markdown rows: ROC-AUC, accuracy, ECE and Brier of the model and each baseline on the held-out pairs."""
    lines = ["| scorer | n | ROC-AUC | accuracy | ECE | Brier |", "|---|---:|---:|---:|---:|---:|"]
    for name, row in report["metrics"].items():
        o = row["overall"]
        lines.append(f"| {ROW_LABELS.get(name, name)} | {o['n']} | {fmt(o['roc_auc'])} | {fmt(o['accuracy'])} | "
                     f"{fmt(o['ece'])} | {fmt(o['brier'])} |")
    return lines


def probe_summary(report: Mapping) -> list[str]:
    """Markdown rows: per trick, the share of probes where the honest answer scores higher ([] without probes)."""
    table = report["probes"]["by_trick"]
    if not table:
        return []
    on = f"penalties on (entailment: {report['entailment']})" if report.get("entailment") else "penalties on"
    lines = [f"## Gaming probes ({report['probes']['examples']} held-out examples): share where the honest "
             "answer scores higher", "", f"| trick | n | {on} | penalties off | penalties alone |",
             "|---|---:|---:|---:|---:|"]
    for trick, row in table.items():
        lines.append(f"| {trick} | {row['n']} | {fmt(row['honest_wins_with_penalties'])} | "
                     f"{fmt(row['honest_wins_without_penalties'])} | {fmt(row['honest_wins_penalties_only'])} |")
    return lines


def format_report(report: Mapping, title: str = "Reward model") -> str:
    lines = [f"# {title}", "", "## Held-out pairs", "", *heldout_table(report)]
    rows = report["metrics"]
    kinds = list(rows["model"]["by_kind"])
    if kinds:
        lines += ["", "## Per pair kind (reward model, penalised)", "", "| kind | n | ROC-AUC | accuracy | ECE | Brier |",
                  "|---|---:|---:|---:|---:|---:|"]
        for k in kinds:
            o = rows["model"]["by_kind"][k]
            lines.append(f"| {k} | {o['n']} | {fmt(o['roc_auc'])} | {fmt(o['accuracy'])} | {fmt(o['ece'])} | {fmt(o['brier'])} |")
    table = report["probes"]["by_trick"]
    if table:
        lines += ["", *probe_summary(report)]
        split = [(t, src, r) for t, row in table.items() for src, r in row.get("by_source", {}).items()]
        if split:
            lines += ["", "Per source:", "", "| trick | source | n | penalties on | penalties off | penalties alone |",
                      "|---|---|---:|---:|---:|---:|"]
            for trick, src, r in split:
                lines.append(f"| {trick} | {src} | {r['n']} | {fmt(r['honest_wins_with_penalties'])} | "
                             f"{fmt(r['honest_wins_without_penalties'])} | {fmt(r['honest_wins_penalties_only'])} |")
    return "\n".join(lines) + "\n"


def write_plots(run_dir: Path, history: Mapping | None, report: Mapping) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if history is not None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        axes[0].plot(history["train_loss_steps"], history["train_losses"])
        axes[0].set(title="Reward model training loss", xlabel="step", ylabel="BT loss")
        ev = history["eval_metrics"]
        axes[1].plot([m["step"] for m in ev], [m["roc_auc"] for m in ev], marker="o")
        axes[1].set(title="Validation ROC-AUC", xlabel="step", ylabel="ROC-AUC")
        fig.tight_layout()
        fig.savefig(run_dir / "training_curves.png", dpi=100)
        plt.close(fig)
        written.append("training_curves.png")
    bins = [b for b in report["reliability"] if b["n"]]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    ax.plot([b["mean_prob"] for b in bins], [b["frequency"] for b in bins], marker="o")
    ece = report["metrics"]["model"]["overall"]["ece"]
    ax.set(title=f"Reliability: sigmoid(r_c - r_r), ECE {fmt(ece)}", xlabel="predicted P(chosen preferred)",
           ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(run_dir / "reliability.png", dpi=100)
    plt.close(fig)
    written.append("reliability.png")
    return written


def compare_reports(new: Mapping, saved: Mapping, tol: float = 1e-4) -> dict:
    """Largest absolute difference between two reports' numbers (metrics and probe table)."""
    diffs: list[tuple[float, str]] = []

    def walk(a, b, path):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in set(a) | set(b):
                walk(a.get(k), b.get(k), f"{path}.{k}" if path else k)
        elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            diffs.append((abs(float(a) - float(b)), path))
        elif a != b:
            diffs.append((math.inf, path))
    walk({"metrics": new["metrics"], "probes": new["probes"]}, {"metrics": saved["metrics"], "probes": saved["probes"]}, "")
    worst = max(diffs, default=(0.0, ""))
    return {"reproduced": worst[0] <= tol, "max_abs_diff": worst[0], "where": worst[1] or None, "tolerance": tol}
