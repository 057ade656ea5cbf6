"""One prompt format and one output schema for every script.

The model sees a system instruction, then the evidence chunks (each with its id, e.g. `[E3]`)
and the question, and must answer with ONE JSON object:

    {"answer": "Linda Davis", "citations": ["E2"], "confidence": 0.9}

The answer comes first, so the model decides to answer or to refuse before it writes any citation
(a citations-first order, tried on the demo, made the model commit to an id and then refuse: 14 of
46 validation outputs were refusals that cite).

A refusal is the schema-defined form `{"answer": "insufficient evidence", "citations": [], ...}`;
other wordings of it (REFUSAL_PARAPHRASES, any case, quotes or punctuation around) are read as
refusals too (`is_refusal`, the one rule the parser, the schema and the metrics share) but are
invalid outputs.
`parse_output` turns anything a model emits into a `ParsedOutput` and never raises: prose around
the JSON, code fences, truncation, wrong types and unknown evidence ids each give a reason.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import jsonschema

from .records import EVIDENCE_ID_PATTERN
from .text import normalize_answer

REFUSAL_ANSWER = "insufficient evidence"
PROMPT_FORMAT_VERSION = 2   # 2: a refusal's target says confidence 0.0 (as the system prompt asks)

# --------------------------------------------------------------------------------------------
# Refusal detection: one rule for the parser, the output schema and the metrics
# --------------------------------------------------------------------------------------------
# An answer is a refusal when, ignoring letter case, white space and any quotes or punctuation
# around it, it is one of these wordings (inner white space may be any run of spaces). The
# canonical refusal is REFUSAL_ANSWER exactly; any other wording is a *non-canonical* refusal: a
# refusal all the same (the metrics count it as one, and count it apart), but not a valid output
# (the schema asks for the canonical form).
REFUSAL_PARAPHRASES: tuple[str, ...] = (
    REFUSAL_ANSWER,
    "insufficient information", "insufficient info", "insufficient context",
    "not enough evidence", "not enough information", "not enough info", "not enough context",
    "there is insufficient evidence", "there is not enough evidence", "there is not enough information",
    "the evidence is insufficient", "the evidence does not contain the answer",
    "the answer is not in the evidence", "cannot be determined from the evidence",
    "cannot be answered from the evidence", "unanswerable", "no answer", "i don't know", "i do not know",
)
# white space, ASCII punctuation, typographic quotes, guillemets and the ellipsis character
_REFUSAL_EDGE = "[\\s!-/:-@\\[-`{-~\u2018\u2019\u201c\u201d\u00ab\u00bb\u2026]"


def _refusal_pattern(phrases: Sequence[str]) -> str:
    """A regular expression (ECMA-262 and Python alike: no inline flags) matching exactly the
    refusals: each letter as [xX], each space as one or more white-space characters, an
    apostrophe straight or typographic, any run of _REFUSAL_EDGE characters at either end."""
    def one(phrase: str) -> str:
        out = []
        for ch in phrase:
            if ch.isalpha():
                out.append(f"[{ch.lower()}{ch.upper()}]")
            elif ch == " ":
                out.append("\\s+")
            elif ch == "'":
                out.append("['\u2019]")
            else:
                out.append(re.escape(ch))
        return "".join(out)
    return f"^{_REFUSAL_EDGE}*(?:{'|'.join(one(p) for p in phrases)}){_REFUSAL_EDGE}*$"


REFUSAL_PATTERN = _refusal_pattern(REFUSAL_PARAPHRASES)
_REFUSAL_RE = re.compile(REFUSAL_PATTERN)


def is_refusal(answer: str | None) -> bool:
    """True when `answer` is a refusal in any wording of REFUSAL_PARAPHRASES (see above). The
    output schema's refusal rule uses the same REFUSAL_PATTERN, so parser and schema agree."""
    return isinstance(answer, str) and _REFUSAL_RE.search(answer) is not None


def is_canonical_refusal(answer: str | None) -> bool:
    """True only for the exact form the schema asks for (REFUSAL_ANSWER)."""
    return answer == REFUSAL_ANSWER

OUTPUT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "grounded answer with citations",
    "type": "object",
    "required": ["answer", "citations", "confidence"],
    "additionalProperties": False,
    "properties": {
        "answer": {"type": "string", "minLength": 1,
                   "description": f"the answer, or exactly {REFUSAL_ANSWER!r} when the evidence does not hold it "
                                  f"(any other refusal wording, e.g. 'Not enough information.', is invalid)"},
        "citations": {"type": "array", "items": {"type": "string", "pattern": EVIDENCE_ID_PATTERN}, "uniqueItems": True,
                      "description": "ids of the evidence chunks that support the answer; empty for a refusal"},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        # optional, for long-form answers (ASQA, ELI5): the answer as statements, each with its own citations
        "statements": {"type": "array", "items": {
            "type": "object", "required": ["text", "citations"], "additionalProperties": False,
            "properties": {"text": {"type": "string", "minLength": 1},
                           "citations": {"type": "array", "items": {"type": "string", "pattern": "^E[0-9]+$"},
                                         "uniqueItems": True}}},
            "description": "the answer as statements, each citing the evidence ids that support it"},
    },
    # a refusal in any wording (is_refusal's pattern) must be the canonical form and cite nothing
    "if": {"required": ["answer"], "properties": {"answer": {"type": "string", "pattern": REFUSAL_PATTERN}}},
    "then": {"properties": {"answer": {"const": REFUSAL_ANSWER}, "citations": {"maxItems": 0}}},
    "else": {"properties": {"citations": {"minItems": 1}}},
}

SYSTEM_TEMPLATE = (
    "You answer questions using ONLY the evidence passages you are given, never your own memory.\n"
    "Reply with one JSON object and nothing else:\n"
    '{"answer": "<short answer>", "citations": ["<evidence id>", ...], "confidence": <0 to 1>}\n'
    "Cite the id of every passage that supports the answer. If the passages do not contain the "
    f'answer, reply {{"answer": "{REFUSAL_ANSWER}", "citations": [], "confidence": 0.0}}.'
)

QUESTION_TEMPLATE = "Evidence:\n{evidence}\n\nQuestion: {question}"
CLAIM_TEMPLATE = (
    "Evidence:\n{evidence}\n\nClaim: {question}\n"
    "Answer SUPPORTS or REFUTES if the evidence decides the claim."
)
CHUNK_TEMPLATE = "[{id}] {title}: {text}"


@dataclass(frozen=True)
class PromptTemplates:
    """The templates; `prompt_schema.py save` writes them to prompts/ and `from_dir` reads them back."""

    system: str = SYSTEM_TEMPLATE
    question: str = QUESTION_TEMPLATE
    claim: str = CLAIM_TEMPLATE
    chunk: str = CHUNK_TEMPLATE

    FILES = {"system": "system.txt", "question": "user_question.txt", "claim": "user_claim.txt",
             "chunk": "evidence_chunk.txt"}

    @classmethod
    def from_dir(cls, prompts_dir: str | Path | None) -> "PromptTemplates":
        if prompts_dir is None:
            return cls()
        d = Path(prompts_dir)
        values = {}
        for name, fname in cls.FILES.items():
            p = d / fname
            if not p.exists():
                raise FileNotFoundError(f"{p}: template missing; run `python prompt_schema.py save --prompts-dir {d}`")
            values[name] = p.read_text(encoding="utf-8").rstrip("\n")
        return cls(**values)

    def save(self, prompts_dir: str | Path) -> list[Path]:
        from .records import atomic_write_json, atomic_write_text

        d = Path(prompts_dir)
        written = []
        for name, fname in self.FILES.items():
            atomic_write_text(d / fname, getattr(self, name) + "\n")
            written.append(d / fname)
        atomic_write_json(d / "output_schema.json", OUTPUT_SCHEMA)
        written.append(d / "output_schema.json")
        return written


DEFAULT_TEMPLATES = PromptTemplates()


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------
def format_evidence(chunks: Sequence[dict], templates: PromptTemplates = DEFAULT_TEMPLATES) -> str:
    return "\n\n".join(templates.chunk.format(id=c["id"], title=c.get("title", ""), text=c["text"]) for c in chunks)


# Sources whose answers are long-form (several facts): their prompt also asks for statements.
LONG_FORM_SOURCES = ("asqa", "eli5")
STATEMENTS_INSTRUCTION = ('The answer has several parts: also give them as "statements": [{"text": "<one fact>", '
                          '"citations": ["<evidence id>", ...]}, ...], each citing the passages that support it.')


def build_messages(example: dict, templates: PromptTemplates = DEFAULT_TEMPLATES,
                   evidence: Sequence[dict] | None = None) -> list[dict]:
    """System + user messages for one example (`evidence` overrides the example's chunks); a
    long-form source's question also asks for statements (STATEMENTS_INSTRUCTION)."""
    chunks = example["evidence"] if evidence is None else evidence
    user_t = templates.claim if example.get("source") == "fever" else templates.question
    user = user_t.format(evidence=format_evidence(chunks, templates), question=example["question"])
    if example.get("source") in LONG_FORM_SOURCES:
        user += "\n" + STATEMENTS_INSTRUCTION
    return [{"role": "system", "content": templates.system}, {"role": "user", "content": user}]


def render_plain(messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
    """Fallback for tokenizers without a chat template."""
    parts = [f"### {m['role'].capitalize()}:\n{m['content']}" for m in messages]
    if add_generation_prompt:
        parts.append("### Assistant:\n")
    return "\n\n".join(parts)


def render_prompt(example: dict, tokenizer=None, templates: PromptTemplates = DEFAULT_TEMPLATES,
                  evidence: Sequence[dict] | None = None) -> str:
    """The prompt text, through the tokenizer's chat template when it has one, plain otherwise.

    Models whose chat template rejects a system role (Gemma) get the system text folded into the
    user turn.
    """
    messages = build_messages(example, templates, evidence)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return render_plain(messages)
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # jinja raises TemplateError("System role not supported")
        if "system" not in str(e).lower():
            raise
        folded = [{"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}]
        return tokenizer.apply_chat_template(folded, tokenize=False, add_generation_prompt=True)


def gold_output(example: dict) -> dict:
    """The training target: gold answer + support chunk ids, or the refusal when unanswerable.

    A refusal claims nothing, so its confidence is 0.0 (what the system prompt asks for); an answer
    says 1.0 here, and generation replaces the number the model writes with the probability it gave
    its own answer (`answer_confidence`), so the reported confidence is never this constant."""
    if not example["answerable"]:
        return {"answer": REFUSAL_ANSWER, "citations": [], "confidence": 0.0}
    cited = []
    for span in example["support"]:
        if span["chunk_id"] not in cited:
            cited.append(span["chunk_id"])
    order = {c["id"]: i for i, c in enumerate(example["evidence"])}
    cited.sort(key=lambda cid: order.get(cid, 1 << 30))
    out = {"answer": supported_alias(example), "citations": cited, "confidence": 1.0}
    statements = gold_statements(example)
    if statements:
        out["statements"] = statements
        out["citations"] = sorted(set(cited) | {c for st in statements for c in st["citations"]},
                                  key=lambda cid: order.get(cid, 1 << 30))
    return out


def gold_statements(example: dict) -> list[dict]:
    """A long-form source's gold statements: one per gold answer some shown chunk holds (its first
    alias, or the claim), citing the chunks that hold it (`meta.answers_found`, per document id)."""
    meta = example.get("meta") or {}
    groups, found = meta.get("answer_groups"), meta.get("answers_found")
    if example.get("source") not in LONG_FORM_SOURCES or not groups or not isinstance(found, dict):
        return []
    out = []
    for i, group in enumerate(groups):
        cites = [c["id"] for c in example["evidence"] if (found.get(c.get("doc_id")) or [0] * len(groups))[i] == 1]
        if cites:
            out.append({"text": group[0], "citations": cites})
    return out


def supported_alias(example: dict) -> str:
    """The gold alias the support spans hold (the first such alias), else answers[0]: a target whose
    words are in the cited chunk ("England" where the passage says England, not the dataset's first
    alias "United Kingdom"), so the gold answer is supported by its own citations."""
    answers = example["answers"]
    texts = {c["id"]: c.get("text", "") for c in example.get("evidence", [])}
    spans = {normalize_answer(texts[s["chunk_id"]][s["start"]:s["end"]]) for s in example.get("support", [])
             if s.get("chunk_id") in texts and isinstance(s.get("start"), int) and isinstance(s.get("end"), int)}
    spans.discard("")
    for alias in answers:
        if normalize_answer(alias) in spans:
            return alias
    return answers[0]


OUTPUT_KEYS = ("answer", "citations", "confidence", "statements")   # the order targets are written in


def dump_output(obj: dict) -> str:
    """Canonical compact text of an output object (fixed key order: OUTPUT_KEYS) -- what SFT trains on."""
    ordered = {k: obj[k] for k in OUTPUT_KEYS if k in obj}
    return json.dumps(ordered, ensure_ascii=False)


def gold_target(example: dict) -> str:
    return dump_output(gold_output(example))


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------
@dataclass
class ParsedOutput:
    """What a model emitted, as far as it can be read.

    `valid` is True only when the text holds exactly one JSON object that validates against
    OUTPUT_SCHEMA and cites only ids of the evidence shown. For an invalid output the fields are
    salvaged where possible (`answer` from a truncated object, say) and `reason` says why.
    """

    valid: bool
    answer: str | None = None
    citations: list[str] = field(default_factory=list)
    confidence: float | None = None
    refusal: bool = False
    reason: str | None = None
    unknown_ids: list[str] = field(default_factory=list)
    extra_text: bool = False
    statements: list[dict] = field(default_factory=list)   # [{text, citations}] of a long-form answer

    def to_dict(self) -> dict:
        return asdict(self)


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)(?:```|$)", re.DOTALL)
_ANSWER_RE = re.compile(r'"answer"\s*:\s*"((?:[^"\\]|\\.)*)"?')
_CITES_RE = re.compile(r'"citations"\s*:\s*\[([^\]]*)\]?')
_CONF_RE = re.compile(r'"confidence"\s*:\s*"?(-?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)')
_validator = jsonschema.Draft202012Validator(OUTPUT_SCHEMA)


def _first_object(text: str):
    """(object, start, end) of the first decodable JSON object in text, or None."""
    dec = json.JSONDecoder()
    for m in re.finditer(r"\{", text):
        try:
            obj, end = dec.raw_decode(text, m.start())
        except json.JSONDecodeError:
            continue
        except RecursionError:   # nested deeper than Python can follow: no object is read from it
            return None
        if isinstance(obj, dict):
            return obj, m.start(), end
    return None


def _salvage(text: str) -> ParsedOutput:
    """Read what can be read from text that holds no complete JSON object."""
    out = ParsedOutput(valid=False)
    m = _ANSWER_RE.search(text)
    if m:
        try:
            out.answer = json.loads('"' + m.group(1) + '"')
        except json.JSONDecodeError:
            out.answer = m.group(1)
    m = _CITES_RE.search(text)
    if m:
        out.citations = list(dict.fromkeys(re.findall(r'"([^"]+)"', m.group(1))))
    m = _CONF_RE.search(text)
    if m:
        try:
            out.confidence = float(m.group(1))
        except ValueError:
            pass
    out.refusal = is_refusal(out.answer)
    stripped = text.strip()
    if not stripped:
        out.reason = "empty output"
    elif "{" in stripped and out.answer is not None:
        out.reason = "truncated or malformed JSON (no complete object)"
    elif "{" in stripped:
        out.reason = "malformed JSON (no complete object)"
    else:
        out.reason = "no JSON object in output"
    return out


def parse_output(text: Any, evidence_ids: Sequence[str] | None = None) -> ParsedOutput:
    """Parse a model's raw output. Never raises; every invalid output gets a `reason`."""
    try:
        return _parse_output(text, evidence_ids)
    except RecursionError:
        return ParsedOutput(valid=False, reason="output nested deeper than can be read")


def _parse_output(text: Any, evidence_ids: Sequence[str] | None) -> ParsedOutput:
    if not isinstance(text, str):
        return ParsedOutput(valid=False, reason=f"output is {type(text).__name__}, not text")
    body = text
    fence = _FENCE.search(text)
    if fence and "{" in fence.group(1):
        body = fence.group(1)
    found = _first_object(body)
    if found is None:
        return _salvage(body)
    obj, start, end = found
    outside = (body[:start] + body[end:]).strip()
    out = ParsedOutput(valid=True, extra_text=bool(outside) or body is not text)

    ans = obj.get("answer")
    out.answer = ans if isinstance(ans, str) else (None if ans is None else str(ans))
    cites = obj.get("citations")
    if isinstance(cites, list):
        out.citations = list(dict.fromkeys(str(c) for c in cites))
    elif isinstance(cites, str):
        out.citations = [cites]
    stmts = obj.get("statements")
    if isinstance(stmts, list):
        for st in stmts:
            if isinstance(st, dict) and isinstance(st.get("text"), str):
                sc = st.get("citations")
                sc = [str(c) for c in sc] if isinstance(sc, list) else ([sc] if isinstance(sc, str) else [])
                out.statements.append({"text": st["text"], "citations": list(dict.fromkeys(sc))})
        # the answer cites what its statements cite
        out.citations = list(dict.fromkeys(out.citations + [c for st in out.statements for c in st["citations"]]))
    conf = obj.get("confidence")
    if isinstance(conf, (int, float)) and not isinstance(conf, bool):
        out.confidence = float(conf)
    elif isinstance(conf, str):
        try:
            out.confidence = float(conf)
        except ValueError:
            pass
    out.refusal = is_refusal(out.answer)

    errors = sorted(_validator.iter_errors(obj), key=lambda e: list(map(str, e.path)))
    if not errors and out.confidence is not None and not math.isfinite(out.confidence):
        out.valid, out.reason = False, f"schema: confidence: {out.confidence!r} is not a finite number"
    if errors:
        e = errors[0]
        where = ".".join(map(str, e.absolute_path)) or "(object)"
        out.valid = False
        out.reason = f"schema: {where}: {e.message[:160]}"
        if out.refusal and where == "answer" and e.validator == "const":
            out.reason = f"schema: answer: a refusal must be worded exactly {REFUSAL_ANSWER!r}, not {out.answer[:60]!r}"
        if isinstance(cites, list) and len(set(map(str, cites))) != len(cites):
            out.reason = "schema: citations: duplicate ids"
    if evidence_ids is not None:
        known = set(evidence_ids)
        out.unknown_ids = [c for c in out.citations if c not in known]
        if out.unknown_ids and out.valid:
            out.valid = False
            out.reason = f"citations: {', '.join(map(repr, out.unknown_ids))} not among the evidence ids"
    if out.valid and _first_object(body[end:]) is not None:
        out.valid = False
        out.reason = "more than one JSON object in output"
    return out



# --------------------------------------------------------------------------------------------
# Tokenising prompts and targets (shared by SFT and evaluation, so both see the same tokens)
# --------------------------------------------------------------------------------------------
def tokenize_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a rendered prompt. A chat template that writes the BOS token itself (Gemma)
    must not get a second one from the tokenizer; plain prompts get the tokenizer's usual specials."""
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and text.startswith(bos))
    return list(tokenizer(text, add_special_tokens=add_special)["input_ids"])


def completion_text(example: dict, tokenizer=None, templates: PromptTemplates = DEFAULT_TEMPLATES) -> str:
    """The SFT completion: `gold_target(example)` followed by the end-of-turn the model must learn
    to emit so generation stops -- what the chat template writes after an assistant message, cut
    after the EOS token when the template writes it (ChatML's <|im_end|>), else with the EOS
    token appended (Gemma's <end_of_turn> then <eos>; plain prompts: EOS)."""
    target = gold_target(example)
    eos = getattr(tokenizer, "eos_token", None) or ""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return target + eos
    messages = build_messages(example, templates)
    try:
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": target}], tokenize=False)
    except Exception as e:  # system role not supported: fold it, as render_prompt does
        if "system" not in str(e).lower():
            raise
        folded = [{"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}]
        prompt = tokenizer.apply_chat_template(folded, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(folded + [{"role": "assistant", "content": target}], tokenize=False)
    at = full.find(target, len(prompt) - 1 if full.startswith(prompt) else 0)
    if at < 0:  # a template that rewrites the assistant text: fall back to target + EOS
        return target + eos
    suffix = full[at + len(target):]
    if eos and eos in suffix:
        return target + suffix[: suffix.index(eos) + len(eos)]
    return target + suffix.rstrip() + eos


@dataclass
class FitResult:
    """Evidence that fits a token budget, and what was cut to get there."""

    evidence: list[dict]
    prompt_tokens: int
    fits: bool
    dropped_ids: list[str] = field(default_factory=list)
    shortened_ids: list[str] = field(default_factory=list)

    @property
    def truncated(self) -> bool:
        return bool(self.dropped_ids or self.shortened_ids)


ELLIPSIS = " ... "


def shorten_around(text: str, spans: list[tuple[int, int]], context_chars: int) -> str:
    """Keep each span with `context_chars` either side; windows that overlap merge, gaps become ' ... '."""
    windows: list[list[int]] = []
    for s, e in sorted(spans):
        lo, hi = max(0, s - context_chars), min(len(text), e + context_chars)
        if windows and lo <= windows[-1][1] + len(ELLIPSIS):
            windows[-1][1] = max(windows[-1][1], hi)
        else:
            windows.append([lo, hi])
    out = ELLIPSIS.join(text[lo:hi].strip() for lo, hi in windows)
    if windows[0][0] > 0:
        out = ELLIPSIS.lstrip() + out
    if windows[-1][1] < len(text):
        out = out + ELLIPSIS.rstrip()
    return out


def _shorten_head(text: str, keep_chars: int) -> str:
    return text if len(text) <= keep_chars else text[:keep_chars].rstrip() + ELLIPSIS.rstrip()


def fit_evidence(example: dict, tokenizer, max_prompt_tokens: int, templates: PromptTemplates = DEFAULT_TEMPLATES,
                 min_chunk_chars: int = 160) -> FitResult:
    """Cut the evidence (never the question or the answer) until the rendered prompt fits.

    In order, stopping as soon as it fits:
      1. shorten non-support chunks to a common head length (not below `min_chunk_chars`);
      2. drop non-support chunks, plain distractors before hard negatives, last shown first
         (an unanswerable example keeps at least one chunk);
      3. shorten the remaining chunks: support chunks keep a window around their support spans,
         others keep their head.
    Chunk ids are kept, so gold citations stay valid. `fits` is False when even the shortest form
    is too long (the question alone fills the budget): the caller must count it, not hide it.
    """
    def n_tokens(chunks):
        return len(tokenize_prompt(tokenizer, render_prompt(example, tokenizer, templates, evidence=chunks)))

    chunks = [dict(c) for c in example["evidence"]]
    n = n_tokens(chunks)
    if n <= max_prompt_tokens:
        return FitResult(chunks, n, True)
    spans: dict[str, list[tuple[int, int]]] = {}
    for s in example["support"]:
        spans.setdefault(s["chunk_id"], []).append((s["start"], s["end"]))
    original = {c["id"]: c["text"] for c in chunks}

    def largest_fitting(apply, lo: int, hi: int) -> tuple[list[dict], int] | None:
        """Binary-search the largest size in [lo, hi] whose `apply(size)` fits; None if none does."""
        best = None
        while lo <= hi:
            mid = (lo + hi) // 2
            cand = apply(mid)
            k = n_tokens(cand)
            if k <= max_prompt_tokens:
                best, lo = (cand, k), mid + 1
            else:
                hi = mid - 1
        return best

    def result(cand, k, fits=True):
        dropped = [cid for cid in original if cid not in {c["id"] for c in cand}]
        shortened = [c["id"] for c in cand if c["text"] != original[c["id"]]]
        return FitResult(cand, k, fits, dropped, shortened)

    # 1. shorten non-support chunks to a common head length
    others = [c["id"] for c in chunks if c["id"] not in spans]
    longest_other = max((len(original[i]) for i in others), default=0)
    if others and longest_other > min_chunk_chars:
        def heads(size):
            return [dict(c, text=_shorten_head(c["text"], size)) if c["id"] not in spans else c for c in chunks]
        got = largest_fitting(heads, min_chunk_chars, longest_other)
        if got is not None:
            return result(*got)
        chunks = heads(min_chunk_chars)
    # 2. drop non-support chunks: plain distractors before hard negatives, from the end
    hard = set(example.get("hard_negatives", []))
    order = [i for i in reversed(others) if i not in hard] + [i for i in reversed(others) if i in hard]
    keep_at_least = 0 if spans else 1
    for cid in order:
        if len(chunks) <= keep_at_least:
            break
        chunks = [c for c in chunks if c["id"] != cid]
        k = n_tokens(chunks)
        if k <= max_prompt_tokens:
            return result(chunks, k)
    # 3. shorten what is left: support chunks around their spans, others from the head
    longest = max(len(original[c["id"]]) for c in chunks)

    def windows(size):
        return [dict(c, text=shorten_around(original[c["id"]], spans[c["id"]], size) if c["id"] in spans
                     else _shorten_head(original[c["id"]], max(size, 1))) for c in chunks]
    got = largest_fitting(windows, 0, longest)
    if got is not None:
        return result(*got)
    shortest = windows(0)
    return result(shortest, n_tokens(shortest), fits=False)
