"""Constrained decoding: every output is the answer contract, by construction.

    {"answer": "<answer>", "citations": ["E1", ...], "confidence": <0 to 1>}
    {"answer": "insufficient evidence", "citations": [], "confidence": 0.0}

lm-format-enforcer does the part that is hard and generic: mapping a character-level grammar onto
a BPE vocabulary (its token trie, its cache of the tokens legal inside a JSON string) and
masking the logits at each step. Ours is only the grammar, `AnswerParser`, because the contract
has three rules a JSON-schema engine cannot state per example:

- the citations are ids of the evidence this prompt showed (and each once), never an unknown id;
- a refusal (`prompts.is_refusal`, the one rule the parser, the schema and the metrics share)
  cites nothing, and an answer cites at least one id;
- an answer is not an evidence id ("E3"): an answer that starts with E cannot go on with a digit.

The answer's words are the model's own (any JSON string characters, at most MAX_ANSWER_CHARS; tokens
that are only part of a multi-byte character are left out, so no output ends mid-character);
the constraint never picks an answer, it only rules out outputs that break the contract. The
metrics score constrained outputs exactly as free ones, and the evaluation reports both.
"""
from __future__ import annotations

import functools
from typing import Sequence

from lmformatenforcer import (
    CharacterLevelParser,
    CharacterLevelParserConfig,
    TokenEnforcer,
    TokenEnforcerTokenizerData,
)

from .prompts import is_refusal

MAX_ANSWER_CHARS = 100
_OPEN = '{"answer": "'
_REFUSAL_TAIL = '", "citations": [], "confidence": 0.0}'
_CITATIONS = '", "citations": ['
_CONFIDENCE = '], "confidence": '
_DIGITS = "0123456789"
_ESCAPES = '"\\/bfnrt'


class AnswerParser(CharacterLevelParser):
    """The output contract as a character-level grammar (module docstring). Immutable: each
    `add_character` returns the next state."""

    def __init__(self, ids: Sequence[str], config: CharacterLevelParserConfig | None = None, *,
                 state: str = "open", text: str = "", answer: str = "", cited: tuple = (), escape: bool = False):
        super().__init__(config)
        self.ids = tuple(ids)
        self.state, self.text, self.answer, self.cited, self.escape = state, text, answer, cited, escape

    def _next(self, **changes) -> "AnswerParser":
        kw = dict(state=self.state, text=self.text, answer=self.answer, cited=self.cited, escape=self.escape)
        kw.update(changes)
        return AnswerParser(self.ids, self.config, **kw)

    # ---- what may come next
    def _literal(self) -> str | None:
        """The fixed text this state must write, when it is one."""
        return {"open": _OPEN, "refusal_tail": _REFUSAL_TAIL, "citations_open": _CITATIONS,
                "confidence_key": _CONFIDENCE}.get(self.state)

    def _open_ids(self) -> list[str]:
        """Ids still citable that extend what this citation has written so far."""
        return [i for i in self.ids if i not in self.cited and i.startswith(self.text)]

    def get_allowed_characters(self) -> str:
        lit = self._literal()
        if lit is not None:
            return lit[len(self.text)]
        if self.state == "answer":
            if self.escape:
                return _ESCAPES
            if len(self.answer) >= MAX_ANSWER_CHARS:
                return '"'
            plain = _plain_chars(self.config.alphabet)
            if self.answer == "E":   # "E" then a digit would be an evidence id
                plain = "".join(c for c in plain if c not in _DIGITS)
            return plain + "\\" + ('"' if self.answer else "")
        if self.state == "citation":   # inside "E..": the rest of a shown id, or its closing quote
            options = self._open_ids()
            chars = {i[len(self.text)] for i in options if len(i) > len(self.text)}
            if self.text in options:
                chars.add('"')
            return "".join(sorted(chars))
        if self.state == "citation_start":
            return '"' if self._open_ids() else ""
        if self.state == "after_citation":   # another id or the end of the list
            return ("," if any(i not in self.cited for i in self.ids) else "") + "]"
        if self.state == "after_comma":
            return " "
        if self.state == "confidence":
            return _confidence_next(self.text)
        return ""

    def add_character(self, ch: str) -> "AnswerParser":
        if ch not in self.get_allowed_characters():
            raise ValueError(f"character {ch!r} breaks the answer contract in state {self.state}")
        lit = self._literal()
        if lit is not None:
            text = self.text + ch
            if len(text) < len(lit):
                return self._next(text=text)
            after = {"open": "answer", "refusal_tail": "done", "citations_open": "citation_start",
                     "confidence_key": "confidence"}[self.state]
            return self._next(state=after, text="")
        if self.state == "answer":
            if self.escape:
                return self._next(answer=self.answer + "\\" + ch, escape=False)
            if ch == "\\":
                return self._next(escape=True)
            if ch == '"':   # the answer is closed: a refusal cites nothing, an answer cites at least one id
                if is_refusal(self.answer):
                    return self._next(state="refusal_tail", text='"')
                return self._next(state="citations_open", text='"')
            return self._next(answer=self.answer + ch)
        if self.state == "citation_start":
            return self._next(state="citation", text="")
        if self.state == "citation":
            if ch == '"':
                return self._next(state="after_citation", cited=self.cited + (self.text,), text="")
            return self._next(text=self.text + ch)
        if self.state == "after_citation":
            if ch == "]":
                return self._next(state="confidence_key", text="]")
            return self._next(state="after_comma")
        if self.state == "after_comma":
            return self._next(state="citation_start")
        if self.state == "confidence":
            text = self.text + ch
            return self._next(state="done" if ch == "}" else "confidence", text="" if ch == "}" else text)
        raise ValueError(f"no character may follow the end of the answer object (got {ch!r})")

    def can_end(self) -> bool:
        return self.state == "done"

    def shortcut_key(self):
        """Inside the answer string any JSON string token is legal: the enforcer's cached list of
        them (its 'json_freetext' shortcut) spares a walk of the whole trie. The list cannot see the
        evidence-id rule; `ContractConstraint.allowed` takes those tokens out."""
        if self.state == "answer" and not self.escape:
            return ("json_freetext", len(self.answer), 1, MAX_ANSWER_CHARS)
        return None


@functools.lru_cache(maxsize=8)
def _plain_chars(alphabet: str) -> str:
    """The alphabet's characters a JSON string holds unescaped (no quote, backslash or line break)."""
    return "".join(c for c in alphabet if c not in '"\\' and ord(c) >= 32)


def _confidence_next(text: str) -> str:
    """Characters that extend `text` toward a number in [0, 1] with at most 3 decimals, then '}'."""
    if text == "":
        return "01"
    if text in ("0", "1"):
        return ".}"
    if text.startswith("1."):
        return ("0" if len(text) < 5 else "") + "}"
    # "0." and more
    return (_DIGITS if len(text) < 5 else "") + ("}" if len(text) > 2 else "")


class ContractConstraint:
    """Per-row token masks for generation.decode_batch: one TokenEnforcer per prompt (its evidence
    ids), sharing one tokenizer index (built once per tokenizer: a few seconds for 49k tokens)."""

    def __init__(self, tokenizer, evidence_ids: Sequence[Sequence[str]]):
        self.data, self.id_start, self.digit_start = tokenizer_data(tokenizer)
        self.evidence_ids = [list(ids) for ids in evidence_ids]

    def enforcer(self, index: int) -> TokenEnforcer:
        return TokenEnforcer(self.data, AnswerParser(self.evidence_ids[index]))

    def allowed(self, enforcer: TokenEnforcer, generated: Sequence[int]) -> list[int]:
        """Token ids the contract allows after `generated` (this row's new tokens so far)."""
        key = (-1, *generated)
        allowed = enforcer.get_allowed_tokens(list(key)).allowed_tokens
        parser = enforcer.prefix_states[key].parser
        if isinstance(parser, AnswerParser) and parser.state == "answer" and not parser.escape:
            if parser.answer == "":
                return [t for t in allowed if t not in self.id_start]
            if parser.answer == "E":
                return [t for t in allowed if t not in self.digit_start]
        return list(allowed)


def _id_tokens(data) -> tuple[frozenset, frozenset]:
    """(tokens whose text starts with E and a digit, tokens whose text starts with a digit): what
    the json_freetext list must lose at an answer's first and second character."""
    id_start, digit_start = set(), set()
    for tok, text, _ in data.regular_tokens:
        if len(text) > 1 and text[0] == "E" and text[1] in _DIGITS:
            id_start.add(tok)
        if text[:1] in _DIGITS:
            digit_start.add(tok)
    return frozenset(id_start), frozenset(digit_start)


@functools.lru_cache(maxsize=4)
def tokenizer_data(tokenizer) -> tuple[TokenEnforcerTokenizerData, frozenset, frozenset]:
    """lm-format-enforcer's index of a tokenizer and `_id_tokens` of it, built once per tokenizer
    object. The index is built as its transformers integration builds it (that module imports a
    path transformers 5 removed): each regular token's text as it reads after another token (so a
    word-start token keeps its leading space) and whether it starts a word."""
    vocab_size = len(tokenizer)
    zero = tokenizer.encode("0", add_special_tokens=False)[-1]
    special = set(tokenizer.all_special_ids)
    regular = []
    for t in range(vocab_size):
        if t in special:
            continue
        after_zero = tokenizer.decode([zero, t])[1:]
        alone = tokenizer.decode([t])
        if "\ufffd" in after_zero or any(ord(c) < 32 for c in after_zero):
            continue   # a piece of a multi-byte character (an output could end mid-character) or a control
                       # character (JSON strings cannot hold one unescaped)
        regular.append((t, after_zero, len(after_zero) > len(alone)))

    def decode(tokens):
        return tokenizer.decode(tokens).rstrip("\ufffd")

    data = TokenEnforcerTokenizerData(regular, decode, tokenizer.eos_token_id, False, vocab_size)
    return (data, *_id_tokens(data))
