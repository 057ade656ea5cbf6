"""Choosing preference pairs among one example's candidates (make_prefs.py's judge phase).

The candidates of an example: its model answers (from the generation cache), the gold output and
labelled perturbations (`perturb.py`) of a good answer, each scored by the verifiers (and, with a
judge, by verdicts.py). Here: building those candidates, choosing the pairs and dropping ties,
near-ties and identical texts, the PREFERENCE row of a pair, the signature payload of a pairs file
and the statistics written beside it (judge-verifier agreement included).
"""
from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .judge import verifier_score
from .perturb import perturbations
from .prompts import dump_output, gold_output, parse_output
from .records import SCHEMA_VERSION, RecordError, sha256_text


@dataclass
class Candidate:
    origin: str                        # sft, base, sft_sample_<k>, gold, perturb:<kind>
    text: str
    kind: str | None = None            # the perturbation kind (hard candidates)
    source: str | None = None          # origin of the good answer it edits (hard candidates)
    verifier: float = 0.0
    breakdown: dict = field(default_factory=dict)
    judge: float | None = None
    judge_detail: dict | None = None
    score: float = 0.0
    rationale: str | None = None

    @property
    def is_model(self) -> bool:
        return self.kind is None and self.origin != "gold"


def good_sources(example: Mapping, model_cands: Sequence[Candidate]) -> list[tuple[str, dict, str]]:
    """(origin, answer object, text) of the good answers to perturb: the gold output, and the SFT
    candidate where the verifiers find it correct and grounded (supported by its citations)."""
    gold = gold_output(example)
    out = [("gold", gold, dump_output(gold))]
    sft = next((c for c in model_cands if c.origin == "sft"), None)
    if sft is not None and sft.breakdown.get("correct_grounded") == 1.0 and sft.breakdown.get("supported") == 1.0 \
            and example["answerable"]:
        parsed = parse_output(sft.text, [c["id"] for c in example["evidence"]])
        obj = {"answer": parsed.answer, "citations": parsed.citations,
               "confidence": parsed.confidence if parsed.confidence is not None else 1.0}
        out.append(("sft", obj, sft.text))
    return out


def hard_candidates(example: Mapping, goods: Sequence[tuple[str, dict, str]], kinds: Sequence[str], n: int,
                    seed: int, usage: Counter) -> list[Candidate]:
    """Up to n perturbation candidates for one example, the least used kinds so far first (ties in a
    seeded order), one per kind while other kinds are left; `usage` is updated."""
    options = [(kind, origin, obj) for origin, good, _ in goods for kind, obj in perturbations(example, good, kinds, seed)]
    options.sort(key=lambda o: (usage[o[0]], sha256_text(f"{seed}:{example['id']}:{o[0]}:{o[1]}")))
    picked: list[tuple[str, str, dict]] = []
    for opt in options:
        if len(picked) < n and opt[0] not in {p[0] for p in picked}:
            picked.append(opt)
    for opt in options:
        if len(picked) < n and opt not in picked:
            picked.append(opt)
    for kind, _, _ in picked:
        usage[kind] += 1
    return [Candidate(origin=f"perturb:{kind}", text=dump_output(obj), kind=kind, source=origin)
            for kind, origin, obj in picked]


DROP_REASONS = ("tie", "near_tie", "identical", "perturbation_not_worse", "over_pairs_per_prompt")


@dataclass
class Pair:
    chosen: Candidate
    rejected: Candidate
    margin: float
    kind: str                          # model | gold_vs_model | perturb:<kind>


def select_pairs(cands: Sequence[Candidate], min_margin: float, pairs_per_prompt: int,
                 hard_min_margin: float | None = None, gold_pairs_per_prompt: int = 0) -> tuple[list[Pair], Counter]:
    """The pairs of one example and the dropped ones counted as (kind, reason).

    Model against model: every two model candidates, the higher score chosen; kept when
    chosen - rejected >= min_margin, largest gap first, at most pairs_per_prompt. A perturbation
    against its source: kept when source - perturbation >= hard_min_margin (default min_margin;
    a perturbation scored higher than its source is dropped, never flipped: its label is known by
    construction). Gold against the model (`gold_pairs_per_prompt`): the gold output against the
    model's own worst candidates (its real mistakes: an evidence id as the answer, a wrong entity,
    a refusal of an answerable question...), lowest score first, distinct texts, each kept when
    gold - candidate >= min_margin. The margin written is exactly chosen_score - rejected_score.
    """
    hard_min = min_margin if hard_min_margin is None else hard_min_margin
    drops: Counter = Counter()
    options: list[Pair] = []
    model = [c for c in cands if c.is_model]
    for a, b in itertools.combinations(model, 2):
        hi, lo = (a, b) if a.score >= b.score else (b, a)
        margin = hi.score - lo.score
        if a.text == b.text:
            drops[("model", "identical")] += 1
        elif margin == 0:
            drops[("model", "tie")] += 1
        elif margin < min_margin:
            drops[("model", "near_tie")] += 1
        else:
            options.append(Pair(hi, lo, margin, "model"))
    options.sort(key=lambda p: -p.margin)  # stable: equal gaps keep candidate order
    kept = options[:pairs_per_prompt]
    drops[("model", "over_pairs_per_prompt")] += len(options) - len(kept)
    kept += _gold_pairs(cands, model, min_margin, gold_pairs_per_prompt, drops)
    by_origin = {c.origin: c for c in cands}
    for c in cands:
        if c.kind is None:
            continue
        src = by_origin[c.source]
        kind = f"perturb:{c.kind}"
        margin = src.score - c.score
        if src.text == c.text:
            drops[(kind, "identical")] += 1
        elif margin < 0:
            drops[(kind, "perturbation_not_worse")] += 1
        elif margin == 0:
            drops[(kind, "tie")] += 1
        elif margin < hard_min:
            drops[(kind, "near_tie")] += 1
        else:
            kept.append(Pair(src, c, margin, kind))
    return kept, +drops




def _gold_pairs(cands: Sequence[Candidate], model: Sequence[Candidate], min_margin: float, n: int,
                drops: Counter) -> list[Pair]:
    """Up to n pairs of the gold output against the model's worst distinct candidates (select_pairs)."""
    gold = next((c for c in cands if c.origin == "gold"), None)
    if not n or gold is None:
        return []
    out, seen = [], {gold.text}
    for c in sorted(model, key=lambda c: c.score):
        margin = gold.score - c.score
        if c.text in seen:
            drops[("gold_vs_model", "identical")] += 1
        elif margin < min_margin:
            drops[("gold_vs_model", "near_tie" if margin > 0 else "tie")] += 1
        elif len(out) >= n:
            drops[("gold_vs_model", "over_pairs_per_prompt")] += 1
        else:
            out.append(Pair(gold, c, margin, "gold_vs_model"))
        seen.add(c.text)
    return out


def example_candidates(cfg, cached) -> list[tuple[dict, dict, list[Candidate]]]:
    """(prompt row, example with its fitted evidence, candidates) per cached example: the model
    candidates, the gold output and the hard candidates, each with its verifier score; perturbation
    kinds are balanced across the run."""
    from .entailment import support_checker_for

    usage: Counter = Counter()
    items = []
    checker = support_checker_for(getattr(cfg, "entailment", "lexical"), getattr(cfg, "trust_remote_code", False))
    for row in cached.prompt_rows:
        if row["id"] not in cached.examples:
            raise RecordError(f"{cached.path}/examples.jsonl: example {row['id']!r} is not in the data files")
        ex = {**cached.examples[row["id"]], "evidence": row["evidence"]}
        model_cands = [Candidate(origin=r["origin"], text=r["raw_output"]) for r in cached.by_example[row["id"]]]
        for c in model_cands:
            c.verifier, c.breakdown = verifier_score(ex, c.text, cfg.verifier_weights, checker)
        goods = good_sources(ex, model_cands)
        gold = Candidate(origin="gold", text=goods[0][2])
        hard = hard_candidates(ex, goods, cfg.perturb_kinds, cfg.hard_pairs_per_prompt, cfg.seed, usage)
        cands = model_cands + [gold] + hard
        for c in [gold] + hard:
            c.verifier, c.breakdown = verifier_score(ex, c.text, cfg.verifier_weights, checker)
        items.append((row, ex, cands))
    return items


def choose_pairs(items, cfg) -> tuple[list[tuple], Counter]:
    """(prompt row, example, pair, k) of every kept pair, and the dropped ones counted as (kind, reason)."""
    drops, kept_pairs = Counter(), []
    for row, ex, cands in items:
        pairs, dropped = select_pairs(cands, cfg.min_margin, cfg.pairs_per_prompt, cfg.hard_min_margin,
                                      cfg.gold_pairs_per_prompt)
        drops.update(dropped)
        for k, pair in enumerate(pairs):
            kept_pairs.append((row, ex, pair, k))
    return kept_pairs, drops


def pairs_payload(cfg, gen_sig: str, judge_sig: str | None) -> dict:
    """What determines a pairs file (its signature): the candidates, the judge, every pairing option."""
    return {"generation": gen_sig, "judge": judge_sig, "judge_mode": cfg.judge_mode,
            "judge_weight": cfg.judge_weight if cfg.judge_mode == "both" else None,
            "verifier_weights": cfg.verifier_weights, "min_margin": cfg.min_margin,
            "hard_min_margin": cfg.hard_min_margin, "gold_pairs_per_prompt": cfg.gold_pairs_per_prompt,
            "pairs_per_prompt": cfg.pairs_per_prompt, "hard_pairs_per_prompt": cfg.hard_pairs_per_prompt,
            "perturb_kinds": list(cfg.perturb_kinds), "seed": cfg.seed, "output_mode": cfg.output_mode,
            "judge_rationale_tokens": cfg.judge_rationale_tokens if cfg.output_mode == "rich" else 0}


def _detail(c: Candidate, evidence_ids: Sequence[str]) -> dict:
    return {"origin": c.origin, "parsed": parse_output(c.text, evidence_ids).to_dict(), "verifier_score": c.verifier,
            "verifiers": c.breakdown, "judge_score": c.judge, "judge": c.judge_detail, "rationale": c.rationale,
            "perturbed_from": c.source}


def pair_record(row: Mapping, example: Mapping, pair: Pair, k: int, cfg) -> dict:
    """One records.PREFERENCE row (TRL's prompt/chosen/rejected plus what the reward model needs)."""
    shown = [c["id"] for c in row["evidence"]]
    rec = {"schema_version": SCHEMA_VERSION, "id": f"{row['id']}#{k}", "example_id": row["id"], "split": row["split"],
           "source": example["source"], "prompt": row["prompt"], "chosen": pair.chosen.text,
           "rejected": pair.rejected.text, "margin": pair.margin, "chosen_score": pair.chosen.score,
           "rejected_score": pair.rejected.score, "kind": pair.kind, "chosen_origin": pair.chosen.origin,
           "rejected_origin": pair.rejected.origin, "evidence": row["evidence"],
           "support_ids": list(dict.fromkeys(s["chunk_id"] for s in example["support"])),
           "hard_negative_ids": [i for i in example.get("hard_negatives", []) if i in shown],
           "answerable": bool(example["answerable"]), "answers": list(example["answers"])}
    if cfg.output_mode == "rich":
        rec["details"] = {"chosen": _detail(pair.chosen, shown), "rejected": _detail(pair.rejected, shown),
                          "judge_mode": cfg.judge_mode, "judge_weight": cfg.judge_weight,
                          "verifier_weights": cfg.verifier_weights}
    return rec


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------
def count_by_reason(drops: Counter) -> Counter:
    out: Counter = Counter()
    for (_, reason), n in drops.items():
        out[reason] += n
    return out


def _share(flags: Sequence[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


def agreement(items, min_gap: float = 1e-9) -> dict:
    """How often the judge orders two candidates of a prompt as the verifiers do, over the pairs
    whose verifier scores differ (a judge tie counts half): over all such pairs, model against
    model, perturbation against its source, and per kind; and the Pearson correlation of the two
    scores over all candidates."""
    groups: dict[str, list[float]] = defaultdict(list)
    xs, ys = [], []
    for _, _, cands in items:
        by_origin = {c.origin: c for c in cands}
        for c in cands:
            if c.judge is not None:
                xs.append(c.judge)
                ys.append(c.verifier)
        for a, b in itertools.combinations(cands, 2):
            if a.judge is None or b.judge is None or a.text == b.text or abs(a.verifier - b.verifier) <= min_gap:
                continue
            dj, dv = a.judge - b.judge, a.verifier - b.verifier
            hit = 0.5 if dj == 0 else float((dj > 0) == (dv > 0))
            groups["all"].append(hit)
            if a.is_model and b.is_model:
                groups["model"].append(hit)
            for x, y in ((a, b), (b, a)):
                if x.kind is not None and by_origin.get(x.source) is y:
                    groups["perturbation_vs_source"].append(hit)
                    groups[f"perturb:{x.kind}"].append(hit)
    out = {k: {"agreement": round(sum(v) / len(v), 4), "pairs": len(v)} for k, v in sorted(groups.items())}
    if len(xs) > 1:
        import numpy as np

        r = np.corrcoef(xs, ys)[0, 1] if np.std(xs) > 0 and np.std(ys) > 0 else float("nan")
        out["pearson_judge_verifier"] = None if math.isnan(r) else round(float(r), 4)
    return out


def pair_statistics(items, kept_pairs, drops: Counter, cfg) -> dict:
    kinds = sorted({p.kind for _, _, p, _ in kept_pairs} | {k for k, _ in drops})
    by_kind = {}
    for kind in kinds:
        ps = [p for _, _, p, _ in kept_pairs if p.kind == kind]
        by_kind[kind] = {"kept": len(ps), "dropped": {r: n for (k, r), n in sorted(drops.items()) if k == kind},
                         "mean_margin": _mean([p.margin for p in ps]),
                         "chosen_verifier_better": _share([p.chosen.verifier > p.rejected.verifier for p in ps])}
    pairs = [p for _, _, p, _ in kept_pairs]
    model_pairs = [p for p in pairs if p.kind == "model"]
    cands = [c for _, _, cs in items for c in cs]
    origins = sorted({c.origin if c.kind is None else "perturbation" for c in cands})
    by_origin = {}
    for o in origins:
        cs = [c for c in cands if (c.origin if c.kind is None else "perturbation") == o]
        by_origin[o] = {"n": len(cs), "mean_verifier": _mean([c.verifier for c in cs]),
                        "mean_judge": _mean([c.judge for c in cs if c.judge is not None]),
                        "correct_grounded": _mean([c.breakdown["correct_grounded"] for c in cs]),
                        "format_valid": _mean([c.breakdown["format_valid"] for c in cs])}
    masses = [c.judge_detail["mass"] for c in cands if c.judge_detail and "mass" in c.judge_detail]
    splits = Counter(r["split"] for r, _, _, _ in kept_pairs)
    return {
        "examples": len(items), "candidates": len(cands),
        "pairs_kept": len(pairs), "pairs_by_split": dict(sorted(splits.items())),
        "pairs_dropped": sum(drops.values()), "dropped_by_reason": dict(sorted(count_by_reason(drops).items())),
        "by_kind": by_kind,
        "mean_margin": _mean([p.margin for p in pairs]), "min_margin": cfg.min_margin,
        "hard_min_margin": cfg.hard_min_margin if cfg.hard_min_margin is not None else cfg.min_margin,
        "chosen_is_sft_share_of_model_pairs": _share([p.chosen.origin.startswith("sft") for p in model_pairs]),
        "chosen_is_sft_share": _share([p.chosen.origin.startswith("sft") for p in pairs]),
        "chosen_verifier_better": _share([p.chosen.verifier > p.rejected.verifier for p in pairs]),
        "chosen_verifier_equal": _share([p.chosen.verifier == p.rejected.verifier for p in pairs]),
        "candidates_by_origin": by_origin,
        "judge_verifier_agreement": agreement(items) if cfg.judge_mode != "verifiers" else None,
        "judge_score_token_mass": _mean(masses) if masses else None,
        "perturbations_drawn": dict(sorted(Counter(c.kind for c in cands if c.kind).items())),
    }




def _mean(xs: Sequence[float]) -> float | None:
    return round(sum(xs) / len(xs), 4) if xs else None
