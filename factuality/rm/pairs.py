"""Preference pairs: the contract the reward model reads them by, the pairs file, and pairs made without
a model (synthetic pairs for a first reward model; augment pairs, gold against an edit, added to a
pairs file's training pairs)."""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from ..judge import unweighted_verifier_score
from ..metrics import answer_supported
from ..penalties import PromptFormatError, parse_prompt
from ..perturb import perturbations
from ..prompts import (
    PromptTemplates,
    dump_output,
    fit_evidence,
    gold_output,
    render_prompt,
)
from ..records import (
    PREFERENCE,
    SCHEMA_VERSION,
    Contract,
    RecordError,
    check_pair,
    read_examples,
    read_jsonl,
    write_jsonl,
)
from .features import prompt_budget

log = logging.getLogger("factuality.stages.reward")  # the train_rm stage's log

PAIR_GLOB = "preferences_*.jsonl"
# base-model-like prose (no JSON object, no citation) for synthetic pairs
PROSE_TEMPLATES = ("The answer is {a}.", "Based on the passages provided, the answer is {a}.",
                   "According to the evidence, {a}.", "{a}")


def _pair_contract(templates: PromptTemplates) -> Contract:
    """records.PREFERENCE plus the cross-field rules the reward model relies on (a RecordError
    `file:line: field: problem` each): no test pairs, a prompt in this suite's format, and the
    pair's evidence ids equal to the chunks its prompt shows."""

    def check(rec: dict) -> str | None:
        problem = check_pair(rec)
        if problem:
            return problem
        if rec["split"] == "test":
            return "split: 'test' examples never become pairs (they are held out for evaluate_sft.py); rebuild the pairs"
        try:
            view = parse_prompt(rec["prompt"], templates)
        except PromptFormatError as e:
            return f"prompt: {e}"
        shown = [c["id"] for c in rec["evidence"]]
        if view.ids != shown:
            return (f"evidence: ids {shown} differ from the chunks the prompt shows {view.ids}; the pair's evidence "
                    "must be the evidence rendered into its prompt")
        return None

    return Contract(PREFERENCE.name, PREFERENCE.schema, check, PREFERENCE.unique, PREFERENCE.allow_empty,
                    PREFERENCE.expected)


def newest_pairs_file(prefs_dir: str | Path) -> Path:
    d = Path(prefs_dir)
    found = sorted(d.glob(PAIR_GLOB), key=lambda p: (p.stat().st_mtime, p.name)) if d.is_dir() else []
    if not found:
        raise FileNotFoundError(
            f"{d}/{PAIR_GLOB}: no preference pairs found; run `python make_prefs.py --phase judge ...` first, pass "
            f"--pairs-path FILE, or --synthetic-pairs true to make pairs from data/processed without a model")
    return found[-1]


def read_pairs(path: str | Path, templates: PromptTemplates | None = None) -> tuple[list[dict], list[dict]]:
    """(train pairs, val pairs) of a PREFERENCE file, each checked (`path:line: field: problem`); the
    same example in both splits is refused, and a file without val pairs is an error (nothing to
    validate on)."""
    path = Path(path)
    rows = read_jsonl(path, _pair_contract(templates or PromptTemplates()))
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    both = {r["example_id"] for r in train} & {r["example_id"] for r in val}
    if both:
        raise RecordError(f"{path}: example(s) {sorted(both)[:3]} have pairs in both train and val; the held-out pairs "
                          "must come from other examples (rebuild the pairs)")
    if not train:
        raise RecordError(f"{path}: no pairs with split 'train'; make pairs of training examples (make_prefs.py "
                          "--data-path data/processed/train.jsonl)")
    if not val:
        raise RecordError(f"{path}: no pairs with split 'val': the reward model is validated on pairs of held-out "
                          "examples; make pairs of data/processed/val.jsonl too (make_prefs.py --data-path ...)")
    return train, val


def example_of_pair(pair: Mapping, templates: PromptTemplates | None = None) -> dict:
    """The example fields a pair carries, in the processed-example shape score_example and perturb read."""
    view = parse_prompt(pair["prompt"], templates or PromptTemplates())
    return {"id": pair["example_id"], "source": pair["source"], "split": pair["split"], "question": view.question,
            "answers": list(pair.get("answers") or []), "answerable": bool(pair["answerable"]),
            "evidence": [{"id": c["id"], "title": c.get("title", ""), "text": c["text"]} for c in pair["evidence"]],
            "support": [{"chunk_id": i} for i in pair["support_ids"]],
            "hard_negatives": list(pair.get("hard_negative_ids") or [])}


def honest_output(example: Mapping) -> dict | None:
    """The gold answer object with the first gold alias its cited support chunks support (NQ's
    answers[0] is not always the alias the support passage holds); the refusal when unanswerable;
    None when no alias is supported by the support chunks (no honest, cited answer to compare)."""
    gold = gold_output(dict(example))
    if not example["answerable"]:
        return gold
    cited = [c for c in example["evidence"] if c["id"] in gold["citations"]]
    for alias in example["answers"]:
        if answer_supported(alias, cited, example.get("source"), question=example.get("question")):
            return dict(gold, answer=alias)
    return None


def fitted_prompt(example: Mapping, tokenizer, templates: PromptTemplates, max_prompt_tokens: int) -> tuple[str, dict]:
    """(prompt, example with the evidence that fits) for an example rendered within the prompt budget."""
    fit = fit_evidence(dict(example), tokenizer, max_prompt_tokens, templates)
    kept = {c["id"] for c in fit.evidence}
    ex = dict(example, evidence=fit.evidence, hard_negatives=[i for i in example.get("hard_negatives", []) if i in kept])
    return render_prompt(ex, tokenizer, templates), ex


def _prose(example: Mapping, rng: random.Random) -> str:
    from ..perturb import distractor_entity

    if example["answerable"]:
        a = example["answers"][0]
    else:
        a = distractor_entity({**example, "support": []}, rng) or example["evidence"][0]["title"] or "unknown"
    return rng.choice(PROSE_TEMPLATES).format(a=a)


def synthetic_pairs(examples: Sequence[Mapping], tokenizer, n_pairs: int, per_example: int = 2, seed: int = 0,
                    templates: PromptTemplates | None = None, max_prompt_tokens: int = 1536,
                    kinds: Sequence[str] | None = None, tag: str = "") -> list[dict]:
    """PREFERENCE pairs made without a model: each example's gold answer (chosen) against labelled
    perturbations of it (perturb.py) and against base-model-like prose, `per_example` kinds drawn
    at random per example, until `n_pairs`. Margin = verifier score difference. `kinds`: only
    these perturbation kinds, no prose; `tag` goes into the pair ids (<example id>#<tag><k>)."""
    templates = templates or PromptTemplates()
    rng = random.Random(seed)
    order = list(examples)
    rng.shuffle(order)
    out: list[dict] = []
    for ex in order:
        if len(out) >= n_pairs:
            break
        prompt, shown = fitted_prompt(ex, tokenizer, templates, max_prompt_tokens)
        gold = honest_output(shown)
        if gold is None:
            continue
        cands = [(f"perturb:{k}", f"perturb:{k}", dump_output(b)) for k, b in perturbations(shown, gold, kinds, seed)]
        if kinds is None:
            cands.append(("synthetic:prose", "prose", _prose(shown, random.Random(f"{seed}:{ex['id']}"))))
        if not cands:
            continue
        chosen = dump_output(gold)
        picked = rng.sample(cands, min(per_example, len(cands)))
        for k, (kind, origin, rejected) in enumerate(picked):
            if len(out) >= n_pairs:
                break
            c, r = unweighted_verifier_score(shown, chosen), unweighted_verifier_score(shown, rejected)
            out.append({
                "schema_version": SCHEMA_VERSION, "id": f"{ex['id']}#{tag}{k}", "example_id": ex["id"], "split": ex["split"],
                "source": ex["source"], "prompt": prompt, "chosen": chosen, "rejected": rejected, "margin": c - r,
                "chosen_score": c, "rejected_score": r, "kind": kind, "chosen_origin": "gold", "rejected_origin": origin,
                "evidence": [{"id": ch["id"], "title": ch.get("title", ""), "text": ch["text"]} for ch in shown["evidence"]],
                "support_ids": list(dict.fromkeys(s["chunk_id"] for s in shown["support"])),
                "hard_negative_ids": list(shown.get("hard_negatives", [])), "answerable": bool(shown["answerable"]),
                "answers": list(shown["answers"])})
    return out


def write_synthetic_pairs(cfg, tokenizer, templates: PromptTemplates) -> Path:
    """Synthetic pairs of <synthetic_data_dir>/{train,val}.jsonl written to pairs_path (rewritten only
    when they differ, so an unchanged file keeps its date and hash)."""
    d = Path(cfg.run.synthetic_data_dir)
    budget = prompt_budget(cfg.train.max_length, cfg.run.max_response_tokens)
    rows = []
    for split, n in (("train", cfg.run.synthetic_train_pairs), ("val", cfg.run.synthetic_val_pairs)):
        path = d / f"{split}.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"{path}: not found; synthetic pairs are made from build_data.py's output "
                                    f"(run `python build_data.py`) or set --synthetic-data-dir")
        rows += synthetic_pairs(read_examples(path), tokenizer, n, cfg.run.synthetic_pairs_per_example,
                                cfg.train.seed, templates, budget)
    out = Path(cfg.run.pairs_path or Path(cfg.run.prefs_dir) / "preferences_synthetic.jsonl")
    text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
    if not out.exists() or out.read_text(encoding="utf-8") != text:
        write_jsonl(out, rows, PREFERENCE)
    log.info("synthetic pairs: %d train + %d val -> %s", sum(r["split"] == "train" for r in rows),
             sum(r["split"] == "val" for r in rows), out)
    return out


def unknown_example_ids(cfg, pairs: Sequence[Mapping]) -> tuple[int, list[str]]:
    """(pairs, files): how many pairs name an example id that the processed data files the reward
    model also reads (probe_data, the augment / synthetic train file) do not hold. Such pairs come
    from another build: the probes and augment pairs, which leave out the pairs' examples by id,
    could then hold the same question under another id."""
    files = [Path(p) for p in dict.fromkeys(filter(None, [
        cfg.run.probe_data, cfg.run.augment_data or str(Path(cfg.run.synthetic_data_dir) / "train.jsonl")]))]
    files = [p for p in files if p.is_file()]
    if not files or not pairs:
        return 0, []
    known = {e["id"] for p in files for e in read_examples(p)}
    unknown = [p["example_id"] for p in pairs if p["example_id"] not in known]
    if unknown:
        log.warning("%d of %d pairs name example ids that %s do not hold (first: %r): pairs from another build? "
                    "Probes and augment pairs leave out the pairs' examples by id, so they may now hold the same "
                    "questions; build the pairs from these data files, or set --probe-data / --augment-data to the "
                    "data the pairs came from", len(unknown), len(pairs), " and ".join(map(str, files)), unknown[0])
    return len(unknown), [str(p) for p in files]


def augment_pairs(cfg, tokenizer, templates: PromptTemplates, used_ids: set[str]) -> tuple[list[dict], str | None]:
    """(pairs, file) of the augment_pairs option: gold against one of augment_kinds, from the split:
    train examples of augment_data (default <synthetic_data_dir>/train.jsonl) that `used_ids` (the
    examples of the pairs file and the probes) do not hold; ids <example id>#aug<k>."""
    n = cfg.run.augment_pairs
    if not n:
        return [], None
    if cfg.run.synthetic_pairs:
        log.info("augment_pairs: not used with synthetic_pairs (those are gold-against-edit pairs already; "
                 "synthetic_train_pairs sets how many)")
        return [], None
    path = Path(cfg.run.augment_data or Path(cfg.run.synthetic_data_dir) / "train.jsonl")
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; augment_pairs makes pairs of build_data.py's training examples "
                                "(run `python build_data.py`), set --augment-data, or set --augment-pairs 0")
    exs = [e for e in read_examples(path) if e["split"] == "train" and e["id"] not in used_ids]
    budget = prompt_budget(cfg.train.max_length, cfg.run.max_response_tokens)
    rows = synthetic_pairs(exs, tokenizer, n, cfg.run.synthetic_pairs_per_example, cfg.train.seed, templates, budget,
                           kinds=cfg.run.augment_kinds, tag="aug")
    counts = count_kinds(rows)
    log.info("augment pairs: %d of %d unused training examples of %s (%s)", len(rows), len(exs), path,
             ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no edit applies")
    return rows, str(path)


def pair_examples(pairs: Iterable[Mapping], templates: PromptTemplates) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for p in pairs:
        out.setdefault(p["example_id"], example_of_pair(p, templates))
    return out


def count_kinds(pairs) -> dict:
    out: dict[str, int] = {}
    for p in pairs:
        out[p["kind"]] = out.get(p["kind"], 0) + 1
    return out
