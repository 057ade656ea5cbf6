"""The judge's verdicts on one example's candidates, for make_prefs.py's judge phase.

The judge model (judge.Judge) scores each candidate from its label tokens' probabilities,
pointwise (a 1-5 score) or pairwise (two candidates, both orders). Its label log-probabilities are
appended to `<cache>/judge_<sig>.jsonl` (JUDGE_ROW) as they are made, so a rerun scores only what
is missing; the signature covers the judge's weights, loading, method, prompt templates and label
tokens. Here: that signature, loading the judge, the prompts an example needs, scoring them into
the cache, reading the candidates' judge scores back, and the judge's optional rationales.
"""
from __future__ import annotations

import dataclasses
import itertools
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from .candidates import load_settings, signature_of
from .judge import Judge, pointwise_messages, render_judge_prompt, text_key
from .judge import templates_hash as judge_templates_hash
from .pairing import Candidate
from .records import SCHEMA_VERSION, Contract, JsonlAppender, cache_rows, seal

JUDGE_ROW = Contract("prefs judge verdict", {
    "title": "the judge's label log-probabilities for one candidate or ordered pair (judge_<sig>.jsonl)",
    "type": "object",
    "required": ["schema_version", "id", "example_id", "key", "logprobs", "signature"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION}, "id": {"type": "string", "minLength": 1},
        "example_id": {"type": "string"}, "key": {"type": "string"},
        "logprobs": {"type": "array", "items": {"type": "number"}, "minItems": 2},
        "signature": {"type": "string"},
    }}, unique=("id",))


def load_judge(cfg):
    """The judge model, loaded with the run's options and --judge-use-8bit / --judge-use-4bit."""
    from .modeling import load_model, pick_device
    from .pool import model_options

    opts = dataclasses.replace(model_options(cfg, cfg.judge_model), load_in_8bit=cfg.judge_use_8bit,
                               load_in_4bit=cfg.judge_use_4bit)
    model = load_model(opts)
    if not (opts.load_in_4bit or opts.load_in_8bit):
        model = model.to(pick_device())
    return model


def judge_signature(cfg, gen_sig: str, tokenizer) -> tuple[str, dict]:
    """Hash of what determines the judge's verdicts: its weights, loading, method, prompt templates
    and how its tokenizer spells the labels (the judge cache is keyed by it)."""
    from .judge import SCORES, SIDES, space_before_labels, verdict_token_ids
    from .pool import fingerprint_hash, fingerprint_model

    labels = SCORES if cfg.judge_method == "pointwise" else SIDES
    payload = {"stage": "make_prefs.judge", "generation": gen_sig, "method": cfg.judge_method,
               "judge": {"fingerprint": fingerprint_hash(fingerprint_model(cfg.judge_model)),
                         "load_in_8bit": cfg.judge_use_8bit, "load_in_4bit": cfg.judge_use_4bit},
               "load": {k: v for k, v in load_settings(cfg).items() if not k.startswith(("load_in", "bnb", "use_bnb"))},
               "templates": judge_templates_hash(), "label_tokens": verdict_token_ids(tokenizer, labels),
               "space_before_labels": space_before_labels(tokenizer, labels)}
    return signature_of(payload), payload


def judge_requests(method: str, ex_id: str, example: Mapping, evidence, cands: Sequence[Candidate]) -> dict:
    """{key: (group, example, evidence, texts)} of the judge prompts one example needs."""
    texts = list(dict.fromkeys(c.text for c in cands))
    if method == "pointwise":
        return {text_key(t): (ex_id, example, evidence, [t]) for t in texts}
    out = {}
    for x, y in itertools.permutations(texts, 2):
        out[f"{text_key(x)}>{text_key(y)}"] = (ex_id, example, evidence, [x, y])
    return out


def apply_judge(judge: Judge, method: str, cands: Sequence[Candidate], logprobs: Mapping[str, list]) -> list[float]:
    """Set each candidate's judge score (and detail) from the judge's label log-probabilities.
    Pairwise: returns, per compared pair, P(first shown wins) - P(second shown wins) averaged over
    both orders: the judge's position bias, which showing both orders cancels."""
    if method == "pointwise":
        for c in cands:
            v = judge.pointwise(logprobs[text_key(c.text)])
            c.judge, c.judge_detail = v.score, {"method": "pointwise", **v.to_dict()}
        return []
    texts = list(dict.fromkeys(c.text for c in cands))
    wins: dict[str, list[float]] = defaultdict(list)
    bias = []
    for x, y in itertools.combinations(texts, 2):
        kx, ky = text_key(x), text_key(y)
        pref, one = judge.preference(logprobs[f"{kx}>{ky}"], logprobs[f"{ky}>{kx}"])
        bias.append(one["x_first"] - one["x_second"])
        wins[x].append(pref)
        wins[y].append(1.0 - pref)
    for c in cands:
        prefs = wins.get(c.text) or [0.5]
        c.judge = sum(prefs) / len(prefs)
        c.judge_detail = {"method": "pairwise", "opponents": len(wins.get(c.text, [])), "mean_preference": c.judge}
    return bias


def read_verdicts(path: Path) -> dict[str, list]:
    """{"<example id>#<key>": label log-probabilities} already in a judge cache (created empty if absent;
    opening it cuts a line torn by a kill)."""
    return {r["id"]: r["logprobs"] for r in cache_rows(path, JUDGE_ROW)}


def score_into(cfg, judge: Judge, path: Path, jsig: str, todo: Sequence[tuple], cached: dict) -> None:
    """Score the judge prompts `todo` ((example id, key, request) each) in chunks, appending each
    verdict to the judge cache as it is made and adding it to `cached`."""
    from tqdm.auto import tqdm

    chunk = max(cfg.judge_batch_size, 16)
    with JsonlAppender(path, JUDGE_ROW) as out:
        for k in tqdm(range(0, len(todo), chunk), desc=f"judge ({cfg.judge_method})", disable=not cfg.progress):
            part = todo[k:k + chunk]
            for (ex_id, key, _), lp in zip(part, judge.score([req for _, _, req in part])):
                out.write({"schema_version": SCHEMA_VERSION, "id": f"{ex_id}#{key}", "example_id": ex_id,
                           "key": key, "logprobs": lp, "signature": jsig})
                cached[f"{ex_id}#{key}"] = lp
    seal(path)


def add_rationales(cfg, judge: Judge, kept_pairs) -> None:
    """The judge's explanation of each kept candidate (generated text; scores never come from it)."""
    from .generation import generate

    cands, prompts = [], []
    for row, ex, pair, _ in kept_pairs:
        for c in (pair.chosen, pair.rejected):
            if c.rationale is None and all(c is not d for d in cands):
                cands.append(c)
                prompts.append(render_judge_prompt(judge.tok, pointwise_messages(ex, row["evidence"], c.text), "Reason:"))
    texts = generate(judge.model, judge.tok, prompts, batch_size=cfg.judge_batch_size,
                     max_new_tokens=cfg.judge_rationale_tokens, progress=cfg.progress, desc="judge rationales")
    for c, t in zip(cands, texts):
        c.rationale = t.strip()

