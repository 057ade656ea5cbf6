"""Gaming probes: for each answerable held-out example, the honest gold answer against each trick of
PROBE_KINDS (factuality/perturb.py); the report gives the share of probes the honest answer wins."""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..perturb import perturb
from ..prompts import PromptTemplates, dump_output
from ..records import read_examples
from .features import prompt_budget
from .pairs import example_of_pair, fitted_prompt, honest_output

# the gaming probes: perturb.py kinds a policy could use to look grounded (report order)
PROBE_KINDS = ("cite_all", "unknown_id", "filler_padding", "overconfident_wrong", "cite_hard_negative",
               "refuse_answerable", "distractor_entity", "flipped_verdict")


@dataclass
class Probe:
    example_id: str
    kind: str           # "honest" or a PROBE_KINDS trick
    prompt: str
    response: str
    source: str = ""    # the example's dataset (the report splits each trick by it)


def probe_examples(cfg, val_pairs: Sequence[Mapping], tokenizer, templates: PromptTemplates,
                   train_ids: set[str]) -> tuple[list[tuple[str, dict]], str]:
    """(prompt, example) of each probe example and where they came from. From probe_data when the
    file exists (examples of training pairs are left out), else from the val pairs' own fields."""
    if not cfg.run.probe_data:
        return [], "none"
    path = Path(cfg.run.probe_data)
    out: list[tuple[str, dict]] = []
    if path.exists():
        budget = prompt_budget(cfg.train.max_length, cfg.run.max_response_tokens)
        exs = [e for e in read_examples(path) if e["id"] not in train_ids]
        for ex in exs[:cfg.run.max_probe_examples] if cfg.run.max_probe_examples else exs:
            out.append(fitted_prompt(ex, tokenizer, templates, budget))
        where = str(path)
    else:
        seen: dict[str, tuple[str, dict]] = {}
        for pair in val_pairs:
            if pair["example_id"] not in seen and pair.get("answers"):
                seen[pair["example_id"]] = (pair["prompt"], example_of_pair(pair, templates))
        out = list(seen.values())[:cfg.run.max_probe_examples or None]
        where = f"val pairs (no {path})"
    return out, where


def make_probes(examples: Sequence[tuple[str, dict]], seed: int = 0) -> list[Probe]:
    """The honest answer (`honest_output`) and each applicable trick, per answerable example whose
    support chunks hold a gold alias."""
    probes: list[Probe] = []
    for prompt, ex in examples:
        if not ex["answerable"] or not ex["support"] or not ex.get("answers"):
            continue
        honest = honest_output(ex)
        if honest is None:
            continue
        rng = random.Random(f"{seed}:{ex['id']}")
        probes.append(Probe(ex["id"], "honest", prompt, dump_output(honest), ex.get("source", "")))
        for kind in PROBE_KINDS:
            bad = perturb(ex, honest, kind, rng)
            if bad is not None:
                probes.append(Probe(ex["id"], kind, prompt, dump_output(bad), ex.get("source", "")))
    return probes


def probe_table(probes: Sequence[Probe], scores: Mapping[str, np.ndarray]) -> dict:
    """Per trick: n and the share of probes where the honest answer scores strictly higher, for each
    score variant (e.g. with_penalties, without_penalties, penalties_only), overall and per source."""
    honest = {p.example_id: i for i, p in enumerate(probes) if p.kind == "honest"}

    def shares(idx: list[tuple[int, int]]) -> dict:
        row: dict[str, Any] = {"n": len(idx)}
        for name, s in scores.items():
            row[f"honest_wins_{name}"] = float(np.mean([s[h] > s[t] for h, t in idx])) if idx else None
        return row

    table: dict[str, dict] = {}
    for kind in PROBE_KINDS:
        idx = [(honest[p.example_id], i) for i, p in enumerate(probes) if p.kind == kind]
        row = shares(idx)
        sources = sorted({probes[i].source for _, i in idx})
        if len(sources) > 1:
            row["by_source"] = {src: shares([(h, i) for h, i in idx if probes[i].source == src]) for src in sources}
        table[kind] = row
    return table
