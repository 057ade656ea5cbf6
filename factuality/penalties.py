"""Anti-gaming penalties of the reward model: cheap tricks a policy could use to look grounded.

Each penalty reads only the prompt (the evidence the model was shown, parsed back out of the
rendered prompt: `parse_prompt`) and the response (`prompts.parse_output`), never gold fields, so
the reward model scores new data that has no gold. Each lies in [0, 1]; the reward model subtracts
`sum(weight_k * penalty_k)` from its learned score (`PenaltyOptions` holds the weights under the
notebook's names).

Notation: C = the ids a response cites (duplicates removed), V = C ∩ the evidence ids shown,
n = the number of evidence chunks shown; an *answer* is a response that is not a refusal
(`prompts.is_refusal`; unreadable text counts as an answer with no content, as in metrics.py).

- citation (invalid citations): |C \\ V| / |C|; 0 when nothing is cited. An id that is not among
  the evidence shown ("E9" with four chunks) is a made-up source.
- overcitation: cited chunks beyond those the answer needs and one more (a bridge passage), over
  the chunks that could be cited beyond those: max(0, |V| - |V ∩ N| - 1) / (n - |N| - 1), 0 when
  the denominator is < 1. N, the chunks an answer needs (`needed_chunks`): for a span answer, each
  chunk that supports it alone (metrics.answer_supported); for a verdict (FEVER, yes / no), the
  chunks most about the claim or question (the largest share of its content words; ties count);
  none for a refusal or an unsupported answer. Citing every chunk costs 1 (the "cite everything
  to be sure to cite the support" trick); an honest two-hop answer (answer passage + bridge) and an
  answer that cites every chunk it needs cost 0.
- span (support mismatch): for an answer, 1 - support, where support (`support_score`) is
  `metrics.answer_supported` of the answer by the chunks in V (the one definition of
  "supported": its tokens occur in one cited chunk; a FEVER verdict or a yes/no answer needs a
  cited chunk), times, for a verdict on a claim (no span to find), the *relevance* of the cited
  chunks: the largest share of the claim's content words found in one cited chunk over the
  largest share found in any chunk shown (1 when the cited chunk is the passage about the claim,
  lower when it is a retrieved neighbour); a yes / no answer to a question that is not a yes / no
  question ("No" to "when did ...?") is unsupported. 0 for a refusal.
- confidence (confidence mismatch): for an answer, confidence x (1 - support): high confidence on
  an answer its citations do not support. A missing or unreadable confidence counts as 1 (an
  answer that states none asserts it fully); values are clipped to [0, 1]. 0 for a refusal.
- length (excessive length): for the answer text (the whole response when no answer field can be
  read), words beyond `max_answer_words`, over `max_answer_words`, capped at 1: free up to the
  limit, 1 at twice the limit (confident filler padding).

    from factuality.penalties import PenaltyOptions, compute_penalties
    p = compute_penalties(prompt, '{"answer": "Paris", "citations": ["E2"], "confidence": 0.9}')
    p.values["span"], p.total(PenaltyOptions())
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from .metrics import answer_supported, is_verdict
from .prompts import DEFAULT_TEMPLATES, ParsedOutput, PromptTemplates, parse_output
from .text import answer_tokens

PENALTIES: tuple[str, ...] = ("citation", "overcitation", "confidence", "length", "span")
WEIGHT_FIELDS: dict[str, str] = {name: f"{name}_penalty_weight" for name in PENALTIES}

# Function words left out of a claim's content words (relevance of a verdict's citations).
STOPWORDS = frozenset(
    "a an the is was are were be been being am of in on at to for by with from as and or but not no nor "
    "that this these those it its he him his she her they them their we our you your i me my which who whom "
    "whose what when where why how than then also has have had having do does did done can could will would "
    "may might shall should must there here into onto over under about after before during between through "
    "only very so such just too both either neither each every any some all most more less".split())


@dataclass
class PenaltyOptions:
    """Weights of the anti-gaming penalties (the notebook's keys) and their one setting.
    A weight of 0 switches a penalty off; the reward is learned score - sum(weight x penalty)."""

    citation_penalty_weight: float = field(default=0.2, metadata={
        "min": 0, "help": "weight of the invalid-citation penalty (share of cited ids not among the evidence shown)"})
    confidence_penalty_weight: float = field(default=0.1, metadata={
        "min": 0, "help": "weight of the confidence-mismatch penalty (confidence x (1 - support of the answer))"})
    length_penalty_weight: float = field(default=0.05, metadata={
        "min": 0, "help": "weight of the excessive-length penalty (answer words beyond max_answer_words)"})
    overcitation_penalty_weight: float = field(default=0.15, metadata={
        "min": 0, "help": "weight of the over-citation penalty (cited chunks beyond those the answer needs and a bridge)"})
    span_penalty_weight: float = field(default=0.25, metadata={
        "min": 0, "help": "weight of the support-mismatch penalty (1 - support of the answer by its cited chunks)"})
    max_answer_words: int = field(default=12, metadata={
        "min": 1, "help": "answers up to this many words cost nothing; the length penalty reaches 1 at twice as many"})
    entailment: str = field(default="lexical", metadata={
        "help": "the entailment checker behind the support the span, confidence and over-citation penalties read "
                "(entailment.py: lexical, nli:<hub id or path>, true:<hub id or path>; no remote code)"})

    def __post_init__(self):
        from .entailment import check_spec

        check_spec(self.entailment)

    def weights(self) -> dict[str, float]:
        return {name: float(getattr(self, attr)) for name, attr in WEIGHT_FIELDS.items()}


# --------------------------------------------------------------------------------------------
# The evidence and question, read back from a rendered prompt
# --------------------------------------------------------------------------------------------
class PromptFormatError(ValueError):
    """A prompt holds no evidence block in this suite's prompt format (prompts.py)."""


@dataclass(frozen=True)
class PromptView:
    """What a rendered prompt showed: the evidence chunks (id, text: title and text as shown),
    the question or claim, and whether it is a claim (FEVER's template)."""

    evidence: tuple[dict, ...]
    question: str
    claim: bool

    @property
    def ids(self) -> list[str]:
        return [c["id"] for c in self.evidence]


def _template_markers(templates: PromptTemplates) -> dict[str, str]:
    """The fixed text around {evidence} and {question} in the user templates, and the chunk
    template's text before {id} and between {id} and the rest."""
    out = {}
    for kind in ("question", "claim"):
        t = getattr(templates, kind)
        if "{evidence}" not in t or "{question}" not in t or t.index("{evidence}") > t.index("{question}"):
            raise PromptFormatError(f"the {kind} template must hold {{evidence}} before {{question}}: {t!r}")
        before, rest = t.split("{evidence}", 1)
        middle, after = rest.split("{question}", 1)
        out[f"{kind}_before"], out[f"{kind}_middle"], out[f"{kind}_after"] = before, middle, after
    chunk = templates.chunk
    if "{id}" not in chunk:
        raise PromptFormatError(f"the chunk template must hold {{id}}: {chunk!r}")
    pre, post = chunk.split("{id}", 1)
    out["chunk_pre"] = pre
    out["chunk_post"] = post.split("{", 1)[0]  # e.g. "] " before {title}
    return out


_END_OF_TURN = re.compile(r"\s*(?:<[^<>\s]{1,40}>\s*)+$")   # <|im_end|>, <end_of_turn>, </s> ... after the question


@functools.lru_cache(maxsize=4096)
def _parse_prompt_cached(prompt: str, templates: PromptTemplates) -> PromptView:
    m = _template_markers(templates)
    best = None
    for kind in ("question", "claim"):
        before, middle = m[f"{kind}_before"], m[f"{kind}_middle"]
        start = prompt.find(before) if before else 0
        if start < 0:
            continue
        ev_start = start + len(before)
        q_at = prompt.rfind(middle, ev_start) if middle else -1
        if q_at < 0:
            continue
        # the claim template's middle ("\n\nClaim: ") differs from the question's: the longer match wins
        if best is None or q_at > best[2] or (q_at == best[2] and len(middle) > len(best[3])):
            best = (kind, ev_start, q_at, middle)
    if best is None:
        raise PromptFormatError("no evidence block found: the prompt is not in this suite's format "
                                "(render it with factuality.prompts.render_prompt)")
    kind, ev_start, q_at, middle = best
    block = prompt[ev_start:q_at]
    tail = prompt[q_at + len(middle):]
    after = m[f"{kind}_after"]
    cut = tail.find(after) if after.strip() else -1
    question = tail[:cut] if cut >= 0 else tail.split("\n", 1)[0]
    question = _END_OF_TURN.sub("", question).strip()
    pre, post = re.escape(m["chunk_pre"]), re.escape(m["chunk_post"])
    heads = list(re.finditer(rf"(?:^|\n){pre}(E\d+){post}", block))
    chunks = []
    for i, h in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(block)
        chunks.append({"id": h.group(1), "text": block[h.end():end].strip()})
    return PromptView(tuple(chunks), question, kind == "claim")


def parse_prompt(prompt: str, templates: PromptTemplates = DEFAULT_TEMPLATES) -> PromptView:
    """The evidence chunks and question a rendered prompt (chat template or plain) showed.

    Each chunk's `text` is everything shown for it (title and text), which is what support is
    checked against. Raises PromptFormatError when the prompt has no evidence block."""
    if not isinstance(prompt, str):
        raise PromptFormatError(f"a prompt must be text, got {type(prompt).__name__}")
    return _parse_prompt_cached(prompt, templates)


# --------------------------------------------------------------------------------------------
# The penalties (ranges and definitions: module docstring)
# --------------------------------------------------------------------------------------------
def _cited(parsed: ParsedOutput) -> list[str]:
    return list(dict.fromkeys(parsed.citations or []))


def invalid_citation_penalty(cited: Sequence[str], evidence_ids: Sequence[str]) -> float:
    """Share of cited ids that are not among the evidence shown, in [0, 1]; 0 when nothing is cited."""
    cited = list(dict.fromkeys(cited))
    if not cited:
        return 0.0
    known = set(evidence_ids)
    return sum(1 for c in cited if c not in known) / len(cited)


def overcitation_penalty(cited: Sequence[str], evidence_ids: Sequence[str], needed_ids: Sequence[str]) -> float:
    """max(0, valid cited - needed cited - 1) / (chunks shown - needed - 1), in [0, 1] (module docstring)."""
    shown = set(evidence_ids)
    valid = set(cited) & shown
    needed = set(needed_ids) & shown
    room = len(shown) - len(needed) - 1
    if room < 1:
        return 0.0
    return max(0, len(valid) - len(valid & needed) - 1) / room


def needed_chunks(view: "PromptView", parsed: ParsedOutput, checker=None) -> list[str]:
    """Ids of the chunks an answer needs (module docstring, "overcitation"); [] for a refusal or an
    answer no chunk supports."""
    if parsed.refusal or not parsed.answer:
        return []
    source = "fever" if view.claim else None
    if is_verdict(parsed.answer, source) and (view.claim or is_yes_no_question(view.question)):
        words = content_words(view.question)
        if not words:
            return []
        shares = {c["id"]: len(words & set(answer_tokens(c["text"]))) for c in view.evidence}
        best = max(shares.values(), default=0)
        return [i for i, v in shares.items() if v == best and best > 0]
    return [c["id"] for c in view.evidence
            if answer_supported(parsed.answer, [c["text"]], source=source, checker=checker, question=view.question)]


def content_words(text: str) -> set[str]:
    """Normalised tokens (text.normalize_answer) that are not STOPWORDS."""
    return {t for t in answer_tokens(text) if t not in STOPWORDS}


def claim_relevance(claim: str, cited_texts: Sequence[str], all_texts: Sequence[str]) -> float:
    """Largest share of the claim's content words in one cited chunk, over the largest share in any
    chunk shown; in [0, 1]. 1 when no chunk shares a word with the claim (nothing to prefer)."""
    words = content_words(claim)
    if not words:
        return 1.0

    def share(text: str) -> float:
        return len(words & set(answer_tokens(text))) / len(words)

    best = max((share(t) for t in all_texts), default=0.0)
    if best == 0:
        return 1.0
    return min(1.0, max((share(t) for t in cited_texts), default=0.0) / best)


_YES_NO_QUESTION = re.compile(r"^\W*(is|are|was|were|am|do|does|did|can|could|has|have|had|will|would|should|shall|"
                              r"may|might|must|isn't|aren't|wasn't|weren't|don't|doesn't|didn't)\b", re.IGNORECASE)


def is_yes_no_question(question: str) -> bool:
    """A question a yes / no answer can answer: it opens with an auxiliary verb ("Are both ...?")."""
    return bool(_YES_NO_QUESTION.match(question or ""))


def support_score(view: PromptView, parsed: ParsedOutput, checker=None) -> float:
    """How well the chunks an answer cites support it, in [0, 1] (module docstring, "span").
    0 for an answer with no content or no valid citation; 1 for a refusal (it claims nothing)."""
    if parsed.refusal:
        return 1.0
    answer = parsed.answer or ""
    by_id = {c["id"]: c["text"] for c in view.evidence}
    cited = [by_id[c] for c in _cited(parsed) if c in by_id]
    source = "fever" if view.claim else None
    if not answer_supported(answer, cited, source=source, checker=checker, question=view.question):
        return 0.0
    if view.claim and is_verdict(answer, source):
        return claim_relevance(view.question, cited, list(by_id.values()))
    if not view.claim and is_verdict(answer) and not is_yes_no_question(view.question):
        return 0.0  # "No" to a "when ..." question: a yes/no answer is a verdict only on a yes/no question
    return 1.0


def confidence_penalty(parsed: ParsedOutput, support: float) -> float:
    """confidence x (1 - support) for an answer, in [0, 1]; a missing confidence counts as 1."""
    if parsed.refusal:
        return 0.0
    conf = parsed.confidence
    conf = 1.0 if conf is None or not math.isfinite(conf) else min(max(float(conf), 0.0), 1.0)
    return conf * (1.0 - support)


def span_penalty(parsed: ParsedOutput, support: float) -> float:
    """1 - support for an answer, 0 for a refusal; in [0, 1]."""
    return 0.0 if parsed.refusal else 1.0 - support


def length_penalty(parsed: ParsedOutput, response: str, max_answer_words: int) -> float:
    """min(1, max(0, words - max_answer_words) / max_answer_words) of the answer (else the response)."""
    text = parsed.answer if parsed.answer is not None else (response or "")
    words = len(text.split())
    return min(1.0, max(0, words - max_answer_words) / max_answer_words)


@dataclass(frozen=True)
class PenaltyValues:
    """The five penalties of one response (each in [0, 1]) and the support they were built on."""

    values: dict[str, float]
    support: float

    def total(self, options: PenaltyOptions) -> float:
        weights = options.weights()
        return sum(weights[k] * self.values[k] for k in PENALTIES)


def compute_penalties(prompt: str, response: str, options: PenaltyOptions | None = None,
                      templates: PromptTemplates = DEFAULT_TEMPLATES, checker=None) -> PenaltyValues:
    """The five penalties of `response` to `prompt` (ranges and definitions: module docstring)."""
    options = options or PenaltyOptions()
    if checker is None and options.entailment != "lexical":
        from .entailment import support_checker_for

        checker = support_checker_for(options.entailment)
    view = parse_prompt(prompt, templates)
    parsed = parse_output(response, view.ids)
    cited = _cited(parsed)
    support = support_score(view, parsed, checker)
    values = {
        "citation": invalid_citation_penalty(cited, view.ids),
        "overcitation": overcitation_penalty(cited, view.ids, needed_chunks(view, parsed, checker)),
        "confidence": confidence_penalty(parsed, support),
        "length": length_penalty(parsed, response, options.max_answer_words),
        "span": span_penalty(parsed, support),
    }
    return PenaltyValues(values, support)


def penalty_matrix(prompts: Sequence[str], responses: Sequence[str], options: PenaltyOptions | None = None,
                   templates: PromptTemplates = DEFAULT_TEMPLATES, checker=None):
    """(N, len(PENALTIES)) float array of the penalties of each (prompt, response), columns in PENALTIES order."""
    import numpy as np

    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses; pass one response per prompt")
    options = options or PenaltyOptions()
    if checker is None and options.entailment != "lexical":
        from .entailment import support_checker_for

        checker = support_checker_for(options.entailment)   # loaded once, not per row
    rows = [compute_penalties(p, r, options, templates, checker).values for p, r in zip(prompts, responses)]
    return np.array([[row[k] for k in PENALTIES] for row in rows], dtype=np.float64).reshape(len(rows), len(PENALTIES))


def weight_vector(options: PenaltyOptions):
    import numpy as np

    w = options.weights()
    return np.array([w[k] for k in PENALTIES], dtype=np.float64)


def weights_from(mapping: Mapping) -> PenaltyOptions:
    """PenaltyOptions from a saved mapping (a reward model's config), unknown keys refused."""
    known = {f for f in PenaltyOptions.__dataclass_fields__}
    extra = set(mapping) - known
    if extra:
        raise ValueError(f"unknown penalty options {sorted(extra)}; known: {sorted(known)}")
    return PenaltyOptions(**dict(mapping))
