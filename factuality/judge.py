"""How good one candidate answer is: programmatic verifiers, an LLM judge, and their combination.

Verifiers (`verifier_breakdown`, `verifier_score`) are the answer-aware metrics of
`factuality/metrics.py` (`score_example`) read per example, each in [0, 1]:
- correct_grounded: answerable: the answer is correct and cites a gold support chunk
  (metrics "correct_grounded"); unanswerable: the output refuses.
- supported: an answer is supported by the chunks it cites (metrics.answer_supported, through
  "hallucination_rate"); a refusal states nothing unsupported and counts 1 (a wrong refusal loses
  on correct_grounded, citation_f1 and refusal_correct instead), so refusing scores above
  hallucinating.
- citation_f1: answerable: F1 of the cited ids against the gold support ids (0 for a refusal);
  unanswerable: 1 for a refusal (citing nothing is right), 0 for an answer.
- refusal_correct: refuses exactly when the evidence does not hold the answer.
- format_valid: one JSON object valid against the output schema, citing only ids shown.
The verifier score is their weighted mean (VERIFIER_WEIGHTS, configurable); the gold output
scores 1.0 on every example.

Judge (`Judge`): any instruct model, prompted with a rubric (faithful to the evidence, correct
against the gold answer, cites the right chunks, refuses only when it should), the evidence, the
question and the gold answer. Its verdict is read from its next-token probabilities, never from
free text:
- pointwise: after "Score:", the probabilities of the tokens "1".."5" (with or without a leading
  space; a tokenizer that splits " 3" into a space and the digit gets the space in the prompt, so
  the digit is the next token), renormalised over those five; the judge score is the expected score mapped to [0, 1],
  (E[s] - 1) / 4. `mass` is how much probability the judge put on those tokens at all: a judge
  that does not follow the format shows a low mass.
- pairwise: two candidates shown as "Response A" / "Response B", after "Better response:" the
  probabilities of "A" and "B"; each pair is shown in both orders and the preference is the mean
  of P(x better | x first) and P(x better | x second), so a judge's bias for a position cancels
  and pref(x, y) = 1 - pref(y, x) exactly. A candidate's judge score is its mean preference over
  the other candidates of its prompt.
The shared part of each example's judge prompts (rubric, evidence, question, gold answer) is
prefilled once per example (`generation.score_next_token`).

Combined (`combine`): judge_mode "verifiers", "judge", or "both" = (1 - w) * verifiers + w * judge.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

from .metrics import score_example
from .prompts import REFUSAL_ANSWER, format_evidence
from .records import sha256_json, sha256_text

VERIFIERS = ("correct_grounded", "supported", "citation_f1", "refusal_correct", "format_valid")
# Content first: a correct, grounded answer (or the right refusal) counts most; form least.
VERIFIER_WEIGHTS: dict[str, float] = {"correct_grounded": 0.35, "supported": 0.2, "citation_f1": 0.15,
                                      "refusal_correct": 0.2, "format_valid": 0.1}
JUDGE_METHODS = ("pointwise", "pairwise")
JUDGE_MODES = ("both", "judge", "verifiers")
SCORES = ("1", "2", "3", "4", "5")
SIDES = ("A", "B")


# --------------------------------------------------------------------------------------------
# Verifiers
# --------------------------------------------------------------------------------------------
def verifier_breakdown(example: Mapping, raw_output: str, checker=None) -> dict[str, float]:
    """The verifiers of one output (module docstring), each in [0, 1], from metrics.score_example."""
    s = score_example(example, raw_output=raw_output, checker=checker)
    answerable = bool(example["answerable"])
    refused = s["refusal_rate"] == 1.0
    if answerable:
        correct_grounded = float(s["correct_grounded"])
        citation_f1 = 0.0 if refused else float(s["citation_f1"])
    else:
        correct_grounded = citation_f1 = float(refused)
    supported = 1.0 if refused else 1.0 - float(s["hallucination_rate"])
    return {"correct_grounded": correct_grounded, "supported": supported, "citation_f1": citation_f1,
            "refusal_correct": float(refused != answerable), "format_valid": float(s["format_validity"])}


def check_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """Verifier weights as given, checked: known names, non-negative, not all zero."""
    from .config import ConfigError

    unknown = sorted(set(weights) - set(VERIFIERS))
    if unknown:
        raise ConfigError(f"verifier_weights: unknown verifier {unknown[0]!r}; known: {', '.join(VERIFIERS)}")
    bad = [k for k, v in weights.items() if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0]
    if bad:
        raise ConfigError(f"verifier_weights: {bad[0]}: {weights[bad[0]]!r} must be a number >= 0")
    if not sum(weights.values()) > 0:
        raise ConfigError("verifier_weights: at least one weight must be > 0")
    return {k: float(v) for k, v in weights.items()}


def verifier_score(example: Mapping, raw_output: str, weights: Mapping[str, float] | None = None,
                   checker=None) -> tuple[float, dict[str, float]]:
    """(weighted mean of the verifiers, the breakdown) for one output."""
    w = dict(weights) if weights is not None else VERIFIER_WEIGHTS
    parts = verifier_breakdown(example, raw_output, checker)
    total = sum(w.values())
    return sum(w.get(k, 0.0) * v for k, v in parts.items()) / total, parts


def unweighted_verifier_score(example: Mapping, response: str) -> float:
    """The reward model's verifier score of a response (needs gold), in [0, 1]: the unweighted mean
    of metrics.score_example's columns, not of the verifiers above: format validity and, on an
    answerable example, not hallucinated, citation F1 and (when the gold answers are known)
    correct-and-grounded; on an unanswerable example, refusal. Unlike `verifier_score` (the
    VERIFIER_WEIGHTS-weighted mean of `verifier_breakdown`, which make_prefs ranks candidates by),
    the two give different numbers for the same output. train_rm reports it as the "verifier score
    (gold)" baseline and uses it for the chosen / rejected scores and margin of the pairs it makes
    without a model (synthetic and augment pairs)."""
    s = score_example(example, raw_output=response)
    parts = [s["format_validity"]]
    if example["answerable"]:
        answered = s["hallucination_rate"] is not None
        parts += [1 - s["hallucination_rate"], s["citation_f1"] or 0.0] if answered else [0.0, 0.0]
        if example.get("answers"):
            parts.append(s["correct_grounded"] or 0.0)
    else:
        parts.append(s["refusal_recall"])
    return float(sum(parts) / len(parts))


def combine(verifier: float | None, judge: float | None, mode: str, judge_weight: float) -> float:
    """The final score of a candidate under `mode` (judge, verifiers or both)."""
    if mode == "verifiers":
        return float(verifier)
    if mode == "judge":
        return float(judge)
    return (1.0 - judge_weight) * float(verifier) + judge_weight * float(judge)


# --------------------------------------------------------------------------------------------
# Judge prompts
# --------------------------------------------------------------------------------------------
RUBRIC = (
    "You grade answers to questions that must be answered ONLY from the evidence passages given.\n"
    "A good response is one JSON object {\"answer\", \"citations\", \"confidence\"} that:\n"
    "1. is faithful: everything it states is in the evidence, nothing from memory;\n"
    "2. is correct: it agrees with the gold answer;\n"
    "3. cites the right passages: the ids of the passages that support the answer, and no others;\n"
    f"4. refuses (answer \"{REFUSAL_ANSWER}\", no citations) only when the evidence does not hold the answer.\n"
)
POINTWISE_TASK = ("Grade the response from 1 (wrong, unsupported or unreadable) to 5 (correct, grounded, citing "
                  "exactly the right passages, or rightly refusing). Reply with one digit.")
PAIRWISE_TASK = "Which response is better under the rubric? Reply with one letter, A or B."
POINTWISE_PREFILL = "Score:"
PAIRWISE_PREFILL = "Better response:"
JUDGE_FORMAT_VERSION = 2


def gold_line(example: Mapping) -> str:
    """What the judge is told the right response is."""
    if not example["answerable"]:
        return (f"Gold: the evidence does not hold the answer; the right response is the refusal "
                f"\"{REFUSAL_ANSWER}\" with no citations.")
    support = list(dict.fromkeys(s["chunk_id"] for s in example["support"]))
    aliases = "; ".join(example["answers"][:5])
    return f"Gold answer: {aliases} (supported by passage{'s' if len(support) > 1 else ''} {', '.join(support)})."


def _context(example: Mapping, evidence: Sequence[Mapping]) -> str:
    kind = "Claim" if example.get("source") == "fever" else "Question"
    return (f"{RUBRIC}\nEvidence:\n{format_evidence(evidence)}\n\n{kind}: {example['question']}\n"
            f"{gold_line(example)}\n")


def pointwise_messages(example: Mapping, evidence: Sequence[Mapping], response: str) -> list[dict]:
    return [{"role": "user", "content": f"{_context(example, evidence)}\nResponse:\n{response}\n\n{POINTWISE_TASK}"}]


def pairwise_messages(example: Mapping, evidence: Sequence[Mapping], first: str, second: str) -> list[dict]:
    return [{"role": "user", "content": f"{_context(example, evidence)}\nResponse A:\n{first}\n\nResponse B:\n"
                                        f"{second}\n\n{PAIRWISE_TASK}"}]


def render_judge_prompt(tokenizer, messages: list[dict], prefill: str) -> str:
    """The judge's prompt: its chat template with the generation prompt (one user turn, so every
    template takes it), then the start of its reply."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = f"{messages[0]['content']}\n\n"
    return text + prefill


def templates_hash() -> str:
    """Hash of everything in the judge's prompts (part of the judge cache's signature)."""
    return sha256_json({"rubric": RUBRIC, "pointwise": POINTWISE_TASK, "pairwise": PAIRWISE_TASK,
                        "prefills": [POINTWISE_PREFILL, PAIRWISE_PREFILL], "version": JUDGE_FORMAT_VERSION})


def verdict_token_ids(tokenizer, labels: Sequence[str]) -> list[list[int]]:
    """For each label ("1".."5" or "A"/"B"), the single-token spellings of it (bare and with a
    leading space); a label with none is an error naming the judge's tokenizer."""
    from .modeling import ModelLoadError

    out = []
    for label in labels:
        ids = []
        for text in (label, " " + label):
            toks = tokenizer.encode(text, add_special_tokens=False)
            if len(toks) == 1 and toks[0] not in ids:
                ids.append(toks[0])
        if not ids:
            raise ModelLoadError(f"the judge's tokenizer has no single token for {label!r}; its probabilities "
                                 f"cannot be read: pick another --judge-model")
        out.append(ids)
    return out


def space_before_labels(tokenizer, labels: Sequence[str]) -> bool:
    """True when the tokenizer writes " 3" as a space token then "3" (SmolLM2, Llama-3): the reply
    prefix then ends with that space, so the label itself is the next token."""
    for label in labels:
        bare = tokenizer.encode(label, add_special_tokens=False)
        spaced = tokenizer.encode(" " + label, add_special_tokens=False)
        if not (len(spaced) == len(bare) + 1 and spaced[1:] == bare):
            return False
    return True


def _label_probs(logprobs: Sequence[float], groups: Sequence[Sequence[int]]) -> tuple[list[float], float]:
    """(probabilities renormalised over the labels, total probability mass on them) from the
    log-probabilities of the flattened token spellings, `groups` giving each label's positions."""
    per_label = []
    for g in groups:
        vals = [logprobs[i] for i in g]
        top = max(vals)
        per_label.append(top + math.log(sum(math.exp(v - top) for v in vals)))
    top = max(per_label)
    ex = [math.exp(v - top) for v in per_label]
    total = sum(ex)
    mass = sum(math.exp(v) for v in per_label)
    return [e / total for e in ex], mass


@dataclass
class PointwiseVerdict:
    score: float                 # (E[s] - 1) / 4 in [0, 1]
    expected: float              # E[s] in [1, 5]
    distribution: list[float]    # P(1..5), renormalised
    mass: float                  # probability the judge put on the five score tokens

    def to_dict(self) -> dict:
        return asdict(self)


def pointwise_verdict(logprobs: Sequence[float], groups: Sequence[Sequence[int]]) -> PointwiseVerdict:
    dist, mass = _label_probs(logprobs, groups)
    expected = sum((i + 1) * p for i, p in enumerate(dist))
    return PointwiseVerdict(score=(expected - 1.0) / 4.0, expected=expected, distribution=dist, mass=mass)


def pairwise_preference(first_order: Sequence[float], second_order: Sequence[float],
                        groups: Sequence[Sequence[int]]) -> tuple[float, dict]:
    """P(x better than y) from the judge's A/B log-probabilities with x shown first
    (`first_order`) and x shown second (`second_order`): the mean of P(A | x, y) and
    P(B | y, x). Returns it and the two one-order probabilities."""
    (pa_xy, _), m1 = _label_probs(first_order, groups)
    (_, pb_yx), m2 = _label_probs(second_order, groups)
    return 0.5 * (pa_xy + pb_yx), {"x_first": pa_xy, "x_second": pb_yx, "mass": 0.5 * (m1 + m2)}


def text_key(text: str) -> str:
    """Short content key of a candidate text (judge cache rows are keyed by content, not origin)."""
    return sha256_text(text)[:16]


class Judge:
    """A loaded judge model with its tokenizer, scoring candidates of many examples.

        judge = Judge(model, tokenizer, method="pointwise", batch_size=8)
        logprobs = judge.score(requests)     # one list of label log-probs per request
    """

    def __init__(self, model, tokenizer, method: str = "pointwise", batch_size: int = 8, progress: bool = False):
        if method not in JUDGE_METHODS:
            raise ValueError(f"judge method {method!r} is not one of {JUDGE_METHODS}")
        self.model, self.tok, self.method, self.batch_size, self.progress = model, tokenizer, method, batch_size, progress
        labels = SCORES if method == "pointwise" else SIDES
        spellings = verdict_token_ids(tokenizer, labels)
        self.space = " " if space_before_labels(tokenizer, labels) else ""
        self.token_ids = [i for g in spellings for i in g]
        self.groups, k = [], 0
        for g in spellings:
            self.groups.append(list(range(k, k + len(g))))
            k += len(g)

    def prompt(self, example: Mapping, evidence: Sequence[Mapping], texts: Sequence[str]) -> str:
        """The judge prompt for one candidate (pointwise) or an ordered pair (pairwise)."""
        if self.method == "pointwise":
            return render_judge_prompt(self.tok, pointwise_messages(example, evidence, texts[0]),
                                       POINTWISE_PREFILL + self.space)
        return render_judge_prompt(self.tok, pairwise_messages(example, evidence, texts[0], texts[1]),
                                   PAIRWISE_PREFILL + self.space)

    def score(self, requests: Sequence[tuple[str, Mapping, Sequence[Mapping], Sequence[str]]]) -> list[list[float]]:
        """Label log-probabilities for each request (group key, example, evidence, texts); requests
        of the same group key share their prompt prefix, prefilled once."""
        from .generation import score_next_token
        from .prompts import tokenize_prompt

        seqs = [tokenize_prompt(self.tok, self.prompt(ex, ev, texts)) for _, ex, ev, texts in requests]
        groups: dict[str, list[int]] = {}
        for i, (key, *_rest) in enumerate(requests):
            groups.setdefault(key, []).append(i)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        return score_next_token(self.model, seqs, self.token_ids, list(groups.values()), self.batch_size, pad_id=pad,
                                progress=self.progress, desc=f"judge ({self.method})")

    def pointwise(self, logprobs: Sequence[float]) -> PointwiseVerdict:
        return pointwise_verdict(logprobs, self.groups)

    def preference(self, first_order: Sequence[float], second_order: Sequence[float]) -> tuple[float, dict]:
        return pairwise_preference(first_order, second_order, self.groups)
