"""Labelled perturbations of a good answer, in the same JSON format.

One set of edits serves two users: make_prefs.py turns them into hard preference pairs (a good
answer against a subtly worse one in the same style, so a reward model must read content, not
format), and train_rm.py's gaming probes check that the reward model ranks the honest answer
above each trick. Every edit is made from the example alone (evidence, support ids, hard
negatives, answers) and returns a new answer object, or None where the edit does not apply
(e.g. no hard negative among the evidence shown).

    from factuality.perturb import KINDS, perturb
    bad = perturb(example, {"answer": "Paris", "citations": ["E2"], "confidence": 0.9}, "cite_hard_negative", rng)
"""
from __future__ import annotations

import random
import re
from typing import Callable, Mapping

from .config import ConfigError
from .prompts import REFUSAL_ANSWER
from .text import normalize_answer

FEVER_LABELS = ("SUPPORTS", "REFUTES")
FILLER = (" It is widely documented and generally agreed upon by the available sources, as is well known to "
          "historians and experts in the field, that this is indeed the case.")

# kind -> what the edit does (also the label written into pairs and probe tables)
KINDS: dict[str, str] = {
    "cite_hard_negative": "cites a retrieved chunk that does not support the answer instead of the support",
    "missing_citation": "the same answer with no citation",
    "extra_citation": "the support plus one chunk that does not support the answer",
    "unknown_id": "cites an id that is not among the evidence",
    "cite_all": "cites every evidence chunk",
    # the entity tricks stay entity answers on FEVER too (a claim answered with a name); the other
    # verdict is its own kind, flipped_verdict
    "distractor_entity": "the answer swapped for an entity from a distractor chunk",
    "refuse_answerable": "refuses although the evidence holds the answer",
    "answer_unanswerable": "answers, citing a chunk, where the evidence does not hold the answer",
    "overconfident_unsupported": "the right answer with confidence 1.0, citing a chunk that does not support it",
    "overconfident_wrong": "a wrong answer (a distractor entity) with confidence 1.0",
    "flipped_verdict": "FEVER: the other verdict, citing the same chunks (only an entailment check can see it)",
    "filler_padding": "the right answer padded with confident filler",
}

_ENTITY = re.compile(r"\b(?:[A-Z][\w'-]+(?:\s+(?:of|the|de|von|van)?\s*[A-Z][\w'-]+)*|\d{3,4})\b")


def _ids(example: Mapping) -> list[str]:
    return [c["id"] for c in example["evidence"]]


def _support(example: Mapping) -> list[str]:
    return list(dict.fromkeys(s["chunk_id"] for s in example.get("support", [])))


def _non_support(example: Mapping) -> list[str]:
    sup = set(_support(example))
    return [i for i in _ids(example) if i not in sup]


def _hard_negatives(example: Mapping) -> list[str]:
    shown = set(_ids(example))
    return [i for i in example.get("hard_negatives", []) if i in shown] or _non_support(example)


def _gold_tokens(example: Mapping) -> set[str]:
    return {t for a in example.get("answers", []) for t in normalize_answer(a).split()}


def distractor_entity(example: Mapping, rng: random.Random) -> str | None:
    """An entity (capitalised phrase or year-like number) from a chunk that does not support the
    answer, sharing no token with any gold alias or the question's own words."""
    avoid = _gold_tokens(example) | set(normalize_answer(example.get("question", "")).split())
    by_id = {c["id"]: c for c in example["evidence"]}
    cands: list[str] = []
    for cid in _non_support(example):
        for m in _ENTITY.finditer(by_id[cid]["text"]):
            toks = set(normalize_answer(m.group(0)).split())
            if toks and not toks & avoid:
                cands.append(m.group(0).strip())
    cands = list(dict.fromkeys(cands))
    return rng.choice(cands) if cands else None


def _other_verdict(example: Mapping) -> str | None:
    if example.get("source") != "fever" or not example.get("answers"):
        return None
    gold = normalize_answer(example["answers"][0]).upper()
    others = [lab for lab in FEVER_LABELS if lab != gold]
    return others[0] if gold in FEVER_LABELS else None


def _obj(answer: str, citations, confidence) -> dict:
    return {"answer": answer, "citations": list(citations), "confidence": float(confidence)}


def _cite_hard_negative(ex, good, rng):
    negs = [i for i in _hard_negatives(ex) if i not in good["citations"]]
    if not ex["answerable"] or not good["citations"] or not negs:
        return None
    return _obj(good["answer"], [rng.choice(negs)], good["confidence"])


def _missing_citation(ex, good, rng):
    if not ex["answerable"] or not good["citations"]:
        return None
    return _obj(good["answer"], [], good["confidence"])


def _extra_citation(ex, good, rng):
    extra = [i for i in _non_support(ex) if i not in good["citations"]]
    if not ex["answerable"] or not extra:
        return None
    return _obj(good["answer"], list(good["citations"]) + [rng.choice(extra)], good["confidence"])


def _unknown_id(ex, good, rng):
    if not ex["answerable"]:
        return None
    ids, n = _ids(ex), len(_ids(ex)) + 1
    while f"E{n}" in ids:  # evidence cut to fit a prompt may skip ids (E1, E3): the new id must be unknown
        n += 1
    return _obj(good["answer"], list(good["citations"]) + [f"E{n}"], good["confidence"])


def _cite_all(ex, good, rng):
    ids = _ids(ex)
    if not ex["answerable"] or sorted(good["citations"]) == sorted(ids):
        return None
    return _obj(good["answer"], ids, good["confidence"])


def _distractor_entity(ex, good, rng):
    wrong = distractor_entity(ex, rng) if ex["answerable"] else None
    return None if wrong is None else _obj(wrong, good["citations"], good["confidence"])


def _refuse_answerable(ex, good, rng):
    return _obj(REFUSAL_ANSWER, [], good["confidence"]) if ex["answerable"] else None


def _answer_unanswerable(ex, good, rng):
    if ex["answerable"] or not ex["evidence"]:
        return None
    cid = rng.choice(_ids(ex))
    if ex.get("source") == "fever":
        return _obj(rng.choice(FEVER_LABELS), [cid], 0.9)
    ent = distractor_entity({**ex, "support": []}, rng)
    return None if ent is None else _obj(ent, [cid], 0.9)


def _overconfident_unsupported(ex, good, rng):
    negs = _hard_negatives(ex)
    if not ex["answerable"] or not negs:
        return None
    return _obj(good["answer"], [rng.choice(negs)], 1.0)


def _overconfident_wrong(ex, good, rng):
    wrong = distractor_entity(ex, rng) if ex["answerable"] else None
    return None if wrong is None else _obj(wrong, good["citations"], 1.0)


def _flipped_verdict(ex, good, rng):
    wrong = _other_verdict(ex) if ex["answerable"] else None
    return None if wrong is None else _obj(wrong, good["citations"], good["confidence"])


def _filler_padding(ex, good, rng):
    if not ex["answerable"]:
        return None
    return _obj(good["answer"] + FILLER, good["citations"], 1.0)


_EDITS: dict[str, Callable[[Mapping, Mapping, random.Random], dict | None]] = {
    "cite_hard_negative": _cite_hard_negative, "missing_citation": _missing_citation,
    "extra_citation": _extra_citation, "unknown_id": _unknown_id, "cite_all": _cite_all,
    "distractor_entity": _distractor_entity, "refuse_answerable": _refuse_answerable,
    "answer_unanswerable": _answer_unanswerable, "overconfident_unsupported": _overconfident_unsupported,
    "overconfident_wrong": _overconfident_wrong, "filler_padding": _filler_padding,
    "flipped_verdict": _flipped_verdict,
}
assert set(_EDITS) == set(KINDS)


def perturb(example: Mapping, good: Mapping, kind: str, rng: random.Random | None = None) -> dict | None:
    """`good` (an answer object) edited as `kind` says, or None where the edit does not apply."""
    if kind not in _EDITS:
        raise ValueError(f"unknown perturbation {kind!r}; one of {', '.join(KINDS)}")
    good = {"answer": str(good.get("answer", "")), "citations": list(good.get("citations") or []),
            "confidence": float(good.get("confidence", 1.0) if good.get("confidence") is not None else 1.0)}
    return _EDITS[kind](example, good, rng or random.Random(0))


def check_kinds(kinds, option: str) -> None:
    """A ConfigError naming `option` and its first kind that is not one of KINDS (config validation of
    make_prefs' perturb_kinds and train_rm's augment_kinds)."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ConfigError(f"{option}: unknown kind {unknown[0]!r}; known: {', '.join(KINDS)}")


def perturbations(example: Mapping, good: Mapping, kinds=None, seed: int = 0) -> list[tuple[str, dict]]:
    """Every applicable edit of `good`, as (kind, answer object), seeded per example."""
    rng = random.Random(f"{seed}:{example['id']}")
    out = []
    for kind in kinds or KINDS:
        bad = perturb(example, good, kind, rng)
        if bad is not None:
            out.append((kind, bad))
    return out
