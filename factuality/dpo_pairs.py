"""DPO's training pairs, from a PREFERENCE file (make_prefs.py) to the rows TRL trains on: read and
split, filtered or weighted by a reward model's score gap, and fitted to max_length.

What one training pair is (records.PREFERENCE):
    prompt_ids   = tokens(prompt, evidence cut to fit when needed)       # never the question
    chosen_ids   = tokens(chosen + end-of-turn)   # the end-of-turn the SFT completion ends with
    rejected_ids = tokens(rejected + end-of-turn)
Pairs are tokenised and fitted here, before TRL sees them: TRL 1.16's DPO has no prompt-length
option and truncates from the end, which would cut the answers of a long evidence prompt. A pair
longer than max_length is re-rendered with its evidence cut (`prompts.fit_evidence` on an example
rebuilt from the pair: chunks the pair's support or either completion cites are kept, around the
answer where it occurs in them); one whose question and completions alone exceed max_length is
skipped and reported (counted, ids logged and in the run card). Only split == "train" pairs train
and split == "val" pairs evaluate; a test pair is refused.
"""
from __future__ import annotations

import glob
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ConfigError
from .errors import UserError
from .prompts import (
    PromptTemplates,
    completion_text,
    fit_evidence,
    gold_target,
    parse_output,
    render_prompt,
    tokenize_prompt,
)
from .records import PREFERENCE, RecordError, read_jsonl
from .training import fit_stats_line

# train_dpo's log lines keep the logger name they have always had
log = logging.getLogger("factuality.stages.dpo")

RM_MODES = ("filter", "weight")
TOKEN_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")


# --------------------------------------------------------------------------------------------
# Pairs: read, split, reward-model filter
# --------------------------------------------------------------------------------------------
def resolve_pairs_file(pattern: str) -> Path:
    if not any(ch in pattern for ch in "*?["):
        p = Path(pattern)
        if not p.exists():
            raise FileNotFoundError(f"{p}: pairs file not found; run `python make_prefs.py --phase judge` first or "
                                    f"pass --pairs-file")
        return p
    hits = sorted(glob.glob(pattern))
    if len(hits) != 1:
        found = f"{len(hits)} files ({', '.join(hits[:4])}{', ...' if len(hits) > 4 else ''})" if hits else "no file"
        raise FileNotFoundError(f"{pattern}: matches {found}; pass --pairs-file naming exactly one pairs file")
    return Path(hits[0])


def load_pairs(path: str | Path, max_pairs: int | None = None,
               max_val_pairs: int | None = None, kinds: Sequence[str] = ()) -> tuple[list[dict], list[dict]]:
    """(train pairs, val pairs) of a PREFERENCE file, only pairs of `kinds` when given (a kind is a
    pair's `kind`, or `perturb` for every perturbation kind); a test pair is a RecordError."""
    path = Path(path)
    train, val = [], []
    for pair in read_jsonl(path, PREFERENCE):
        if pair["split"] == "test":
            raise RecordError(f"{path}: pair {pair['id']!r} is from the test split; test examples must never train or "
                              f"tune a model. Rebuild the pairs with make_prefs.py (from train/val examples only)")
        if kinds and pair["kind"] not in kinds and pair["kind"].split(":")[0] not in kinds:
            continue
        (train if pair["split"] == "train" else val).append(pair)
    if not train:
        raise RecordError(f"{path}: no split=train pairs{' of kinds ' + ', '.join(kinds) if kinds else ''} (found "
                          f"{len(val)} val); DPO needs training pairs")
    return train[:max_pairs] if max_pairs else train, val if max_val_pairs is None else val[:max_val_pairs]


def rm_filter(pairs: Sequence[dict], scorer, mode: str = "filter", min_gap: float | None = None,
              batch_size: int = 16, progress: bool = False) -> tuple[list[dict], dict]:
    """Keep or reweight `pairs` by a reward model's score gap (chosen - rejected).

    `scorer.score(prompts, responses) -> list[float]` (factuality.rm's API; any object with it).
    filter: keep the pairs whose gap >= min_gap (default 0: the reward model does not prefer the
    rejected answer), each with weight 1. weight: keep every pair (those under min_gap dropped when
    it is set), weighted sigmoid(gap). Returns (kept pairs, each a copy with rm_chosen_score,
    rm_rejected_score, rm_gap and rm_weight; stats for the run card)."""
    if mode not in RM_MODES:
        raise ConfigError(f"rm_mode {mode!r} is not one of {', '.join(RM_MODES)}")
    from tqdm.auto import tqdm

    cut = (0.0 if mode == "filter" else None) if min_gap is None else float(min_gap)
    scored: list[dict] = []
    for start in tqdm(range(0, len(pairs), batch_size), desc="reward model", disable=not progress, leave=False):
        batch = pairs[start:start + batch_size]
        prompts = [p["prompt"] for p in batch] * 2
        responses = [p["chosen"] for p in batch] + [p["rejected"] for p in batch]
        scores = [float(s) for s in scorer.score(prompts, responses)]
        if len(scores) != len(responses) or not all(math.isfinite(s) for s in scores):
            raise UserError(f"the reward model returned {len(scores)} scores (finite: "
                            f"{sum(math.isfinite(s) for s in scores)}) for {len(responses)} responses; its "
                            f"head or base is broken (NaN weights?): train it again or pass another "
                            f"--rm-checkpoint")
        for i, p in enumerate(batch):
            c, r = scores[i], scores[len(batch) + i]
            gap = c - r
            weight = 1.0 if mode == "filter" else 1.0 / (1.0 + math.exp(-gap))
            scored.append(dict(p, rm_chosen_score=c, rm_rejected_score=r, rm_gap=gap, rm_weight=weight))
    kept = [p for p in scored if cut is None or p["rm_gap"] >= cut]
    kept_ids = {p["id"] for p in kept}
    gaps = [p["rm_gap"] for p in scored]
    stats = {"mode": mode, "min_gap": cut, "scored": len(scored), "kept": len(kept),
             "dropped": len(scored) - len(kept), "dropped_ids": [p["id"] for p in scored if p["id"] not in kept_ids],
             "agree_share": round(sum(g > 0 for g in gaps) / len(gaps), 4) if gaps else None,
             "mean_gap": round(sum(gaps) / len(gaps), 4) if gaps else None,
             "mean_weight": round(sum(p["rm_weight"] for p in kept) / len(kept), 4) if kept else None}
    return kept, stats


# --------------------------------------------------------------------------------------------
# Fitting: evidence is cut, the question and both completions never
# --------------------------------------------------------------------------------------------
@dataclass
class PairStats:
    pairs: int = 0
    kept: int = 0
    truncated: int = 0                     # re-rendered with evidence cut
    chunks_dropped: int = 0
    chunks_shortened: int = 0
    too_long: int = 0                      # question + completions alone exceed max_length (skipped)
    too_long_ids: list[str] = field(default_factory=list)
    identical: int = 0                     # chosen == rejected: no preference to learn (skipped)
    identical_ids: list[str] = field(default_factory=list)
    tokens: int = 0                        # prompt + longer completion, summed over kept pairs
    max_tokens: int = 0

    def line(self, name: str) -> str:
        return fit_stats_line(self, name, self.pairs, "pairs",
                              skipped_too=f" and {self.identical} with identical completions",
                              tokens_note=" (prompt + longer completion)")


def end_of_turn(tokenizer, templates: PromptTemplates) -> str:
    """What follows the answer in an SFT completion (`prompts.completion_text`): the chat
    template's end of the assistant turn up to EOS (ChatML's <|im_end|>), else EOS."""
    probe = {"source": "nq", "question": "?", "answerable": False, "support": [],
             "evidence": [{"id": "E1", "title": "", "text": "."}]}
    full, target = completion_text(probe, tokenizer, templates), gold_target(probe)
    if not full.startswith(target):
        raise RuntimeError("completion_text no longer starts with the target; end_of_turn needs updating")
    return full[len(target):]


_QUESTION, _EVIDENCE = "\x00question\x00", "\x00evidence\x00"


def question_of(pair: dict, tokenizer, templates: PromptTemplates) -> str | None:
    """The question inside a pair's rendered prompt: the text between what the templates put after
    the evidence and the end of the prompt (None when the prompt does not have that shape)."""
    probe = {"source": pair["source"], "question": _QUESTION}
    text = render_prompt(probe, tokenizer, templates, evidence=[{"id": _EVIDENCE, "title": _EVIDENCE, "text": _EVIDENCE}])
    q = text.find(_QUESTION)
    e = text.rfind(_EVIDENCE, 0, q)
    if q < 0 or e < 0:
        return None
    between, suffix = text[e + len(_EVIDENCE):q], text[q + len(_QUESTION):]
    prompt = pair["prompt"]
    if not prompt.endswith(suffix):
        return None
    end = len(prompt) - len(suffix)
    at = prompt.rfind(between, 0, end)
    return prompt[at + len(between):end] if at >= 0 else None


def _occurrences(text: str, needle: str) -> list[tuple[int, int]]:
    low, n = text.lower(), needle.lower()
    out, at = [], low.find(n)
    while n and at >= 0:
        out.append((at, at + len(n)))
        at = low.find(n, at + 1)
    return out


def example_from_pair(pair: dict, tokenizer, templates: PromptTemplates, where: str = "pairs") -> dict:
    """A processed-example-like dict that renders to the pair's prompt, for `fit_evidence`.

    Protected (never dropped) are the chunks the pair's support names and those either completion
    cites (so every citation still names a chunk shown). Each keeps a window around the gold answer
    or a completion's answer where one occurs in it; else a support chunk stays whole (the pair has
    no spans to say which part supports) and a chunk only a completion cites keeps its head. Raises RecordError when the prompt is not the rendering of its question
    and evidence (other templates or another chat template): its evidence cannot be cut safely."""
    ids = [c["id"] for c in pair["evidence"]]
    parsed = [parse_output(pair["chosen"], ids), parse_output(pair["rejected"], ids)]
    answers = [a for a in pair.get("answers", []) if a] + [p.answer for p in parsed if p.answer and not p.refusal]
    supported, cited = set(pair["support_ids"]), set().union(*(p.citations for p in parsed))
    support = []
    for chunk in pair["evidence"]:
        if chunk["id"] in supported | cited:
            text = chunk["text"]
            spans = sorted({s for a in answers for s in _occurrences(text, a)})
            spans = spans or [(0, len(text) if chunk["id"] in supported else 1)]
            support += [{"chunk_id": chunk["id"], "start": s, "end": e} for s, e in spans]
    example = {"id": pair["example_id"], "source": pair["source"], "question": question_of(pair, tokenizer, templates),
               "answerable": pair["answerable"], "evidence": [dict(c) for c in pair["evidence"]], "support": support,
               "hard_negatives": [i for i in pair.get("hard_negative_ids", []) if i in ids]}
    if example["question"] is None or render_prompt(example, tokenizer, templates) != pair["prompt"]:
        raise RecordError(
            f"{where}: pair {pair['id']!r} is longer than max_length, and its prompt is not what this model's chat "
            f"template and the prompt templates in use make of its question and evidence, so its evidence cannot be "
            f"cut safely. Make the pairs with the same model and templates (make_prefs.py), pass the --prompts-dir "
            f"they were made with, or raise --max-length")
    return example


def _completion_ids(tokenizer, text: str, eot: str) -> list[int]:
    return list(tokenizer(text if eot and text.endswith(eot) else text + eot, add_special_tokens=False)["input_ids"])


def fit_pair(pair: dict, tokenizer, max_length: int, templates: PromptTemplates, eot: str,
             min_chunk_chars: int = 160, where: str = "pairs") -> tuple[dict | None, Any]:
    """(row with prompt/prompt_ids/chosen_ids/rejected_ids, FitResult or None when the prompt fit
    as it was); row is None when the pair cannot fit max_length even with its evidence cut."""
    chosen_ids = _completion_ids(tokenizer, pair["chosen"], eot)
    rejected_ids = _completion_ids(tokenizer, pair["rejected"], eot)
    budget = max_length - max(len(chosen_ids), len(rejected_ids))
    if budget <= 0:  # the completions alone fill max_length
        return None, None
    prompt, prompt_ids, fit = pair["prompt"], tokenize_prompt(tokenizer, pair["prompt"]), None
    if len(prompt_ids) > budget:
        example = example_from_pair(pair, tokenizer, templates, where)
        fit = fit_evidence(example, tokenizer, budget, templates, min_chunk_chars=min_chunk_chars)
        if not fit.fits:
            return None, fit
        prompt = render_prompt(example, tokenizer, templates, evidence=fit.evidence)
        prompt_ids = tokenize_prompt(tokenizer, prompt)
    row = {"id": pair["id"], "prompt": prompt, "prompt_ids": prompt_ids, "chosen_ids": chosen_ids,
           "rejected_ids": rejected_ids, "weight": float(pair.get("rm_weight", 1.0))}
    return row, fit


def fit_pairs(pairs: Iterable[dict], tokenizer, max_length: int, templates: PromptTemplates,
              name: str = "train", min_chunk_chars: int = 160, where: str = "pairs") -> tuple[list[dict], PairStats]:
    """Tokenised rows that fit max_length (`fit_pair`) and the PairStats (also logged)."""
    from tqdm.auto import tqdm

    pairs = list(pairs)
    eot = end_of_turn(tokenizer, templates)
    stats, rows = PairStats(pairs=len(pairs)), []
    for pair in tqdm(pairs, desc=f"tokenising {name} pairs", disable=len(pairs) < 200, leave=False):
        if pair["chosen"] == pair["rejected"]:
            stats.identical += 1
            stats.identical_ids.append(pair["id"])
            continue
        row, fit = fit_pair(pair, tokenizer, max_length, templates, eot, min_chunk_chars, where)
        if row is None:
            stats.too_long += 1
            stats.too_long_ids.append(pair["id"])
            continue
        if fit is not None:
            stats.truncated += 1
            stats.chunks_dropped += len(fit.dropped_ids)
            stats.chunks_shortened += len(fit.shortened_ids)
        n = len(row["prompt_ids"]) + max(len(row["chosen_ids"]), len(row["rejected_ids"]))
        stats.kept += 1
        stats.tokens += n
        stats.max_tokens = max(stats.max_tokens, n)
        rows.append(row)
    log.info(stats.line(name))
    if stats.too_long:
        log.warning("%s: %d pairs skipped because their question and completions alone exceed max_length %d (ids: %s); "
                    "raise --max-length", name, stats.too_long, max_length, ", ".join(stats.too_long_ids[:5]))
    if stats.identical:
        log.warning("%s: %d pairs skipped because chosen == rejected (ids: %s)", name, stats.identical,
                    ", ".join(stats.identical_ids[:5]))
    return rows, stats


def to_dataset(rows: Sequence[dict]):
    """The datasets.Dataset TRL trains on: the token columns only (already fitted)."""
    from datasets import Dataset

    return Dataset.from_dict({c: [r[c] for r in rows] for c in TOKEN_COLUMNS})

