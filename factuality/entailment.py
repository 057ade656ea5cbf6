"""Entailment checkers: one interface `(premise, hypothesis) -> probability`, batched and cached.

A checker is chosen by one spec string (`--entailment` in evaluate_sft.py, make_prefs.py and
train_rm.py; default `lexical`):

- `lexical`: 1.0 when every normalised token of the hypothesis (`text.answer_tokens`) occurs in
  the premise, else 0.0 (the rule `metrics.lexical_support` applies to an answer and one chunk).
  It cannot tell SUPPORTS from REFUTES from NOT ENOUGH INFO: see `support_checker`.
- `nli:<hub id or path>`: any `AutoModelForSequenceClassification`; P(entailment) is the softmax
  mass of the label its config's `id2label` names entailment (a label containing "entail"); the
  contradiction label, when the model has one, gives `contradiction()`.
- `true:<hub id or path>`: a TRUE-style seq2seq model (ALCE's `google/t5_xxl_true_nli_mixture`):
  input `premise: {premise} hypothesis: {hypothesis}`, output the token `1` (entailed) or `0`.
  P(entailment) = p("1") / (p("1") + p("0")) from the logits of the first decoded token; ALCE's
  binary decision (greedy decode == "1") is P > 0.5 whenever the model's top token is "1" or "0",
  which is what the TRUE model emits.

Remote code runs only when the user passed `--trust-remote-code`. Scores are cached on disk per
checker (`<cache_dir>/<checker key>.json`, keyed by the sha256 of premise and hypothesis), written
atomically and sealed (`records.seal`); a cache whose bytes changed is discarded and computed again.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .errors import ConfigError, UserError
from .records import (
    atomic_write_json,
    discard_if_tampered,
    read_json,
    seal,
    seal_path,
    sha256_json,
)
from .text import answer_tokens

log = logging.getLogger(__name__)

THRESHOLD = 0.5           # a hypothesis is entailed when P(entailment) >= this (ALCE: the TRUE model's "1")
KINDS = ("lexical", "nli", "true")
NEGATION = "It is not true that {claim}"
TRUE_MAX_TOKENS = 4096    # a TRUE-style model's input is cut only past this   # the REFUTES check of a checker without a contradiction label


class EntailmentCacheError(UserError):
    """A cache file does not match its recorded sha256; the message says what to do."""


def _key(kind: str, premise: str, hypothesis: str) -> str:
    return sha256_json([kind, premise, hypothesis])


class EntailmentChecker:
    """Base: subclasses implement `_score(pairs, kind)` for kind "entail" (and "contradict" when
    `has_contradiction`). Calls are batched and cached (in memory, and on disk with `cache_dir`)."""

    spec = "abstract"
    has_contradiction = False

    def __init__(self, cache_dir: str | Path | None = None, batch_size: int = 16):
        self.batch_size = max(1, int(batch_size))
        self._memo: dict[str, float] = {}
        self._dirty = False
        self.cache_path: Path | None = None
        if cache_dir is not None:
            self.cache_path = Path(cache_dir) / f"{self.cache_key()}.json"
            self._load_cache()

    # ---- identity
    def fingerprint(self) -> dict:
        return {"spec": self.spec}

    def cache_key(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.spec)[:60] + "-" + sha256_json(self.fingerprint())[:16]

    def describe(self) -> dict:
        """What results files record about the checker."""
        return {"spec": self.spec, "fingerprint_sha256": sha256_json(self.fingerprint()), "threshold": THRESHOLD,
                "contradiction_label": self.has_contradiction,
                "cache": str(self.cache_path) if self.cache_path else None}

    # ---- the interface
    def __call__(self, premise: str, hypothesis: str) -> float:
        return self.probabilities([(premise, hypothesis)])[0]

    def entails(self, premise: str, hypothesis: str) -> bool:
        return self(premise, hypothesis) >= THRESHOLD

    def probabilities(self, pairs: Sequence[tuple[str, str]], kind: str = "entail") -> list[float]:
        """P(entailment) (kind "entail") or P(contradiction) ("contradict") of each (premise, hypothesis)."""
        keys = [_key(kind, p, h) for p, h in pairs]
        todo = list(dict.fromkeys(k for k in keys if k not in self._memo))
        if todo:
            first = {k: pair for k, pair in zip(keys, pairs)}
            for i in range(0, len(todo), self.batch_size):
                chunk = todo[i:i + self.batch_size]
                scores = self._score([first[k] for k in chunk], kind)
                for k, s in zip(chunk, scores):
                    self._memo[k] = float(s)
            self._dirty = True
        return [self._memo[k] for k in keys]

    def contradiction(self, premise: str, hypothesis: str) -> float | None:
        """P(contradiction), or None when the checker has no contradiction label."""
        if not self.has_contradiction:
            return None
        return self.probabilities([(premise, hypothesis)], kind="contradict")[0]

    def refutes(self, premise: str, claim: str) -> bool:
        """Does the premise contradict the claim? The contradiction label when the checker has one,
        else entailment of the negated claim (NEGATION)."""
        p = self.contradiction(premise, claim)
        if p is None:
            p = self(premise, NEGATION.format(claim=claim.rstrip(". ")))
        return p >= THRESHOLD

    def _score(self, pairs: Sequence[tuple[str, str]], kind: str) -> list[float]:
        raise NotImplementedError

    # ---- disk cache
    def _load_cache(self) -> None:
        path = self.cache_path
        if not path.exists() or discard_if_tampered(path):   # a changed cache is dropped and computed again
            return
        if not seal_path(path).exists():
            raise EntailmentCacheError(f"{path}: entailment cache without its seal ({seal_path(path).name}); delete "
                                       f"it to recompute")
        obj = read_json(path, expected="an entailment cache (JSON object: fingerprint, scores)")
        if not isinstance(obj, dict):
            raise EntailmentCacheError(f"{path}: not a JSON object; delete the file to recompute")
        if obj.get("fingerprint") != self.fingerprint():
            raise EntailmentCacheError(f"{path}: entailment cache of another checker ({obj.get('fingerprint')}); "
                                       f"delete it or pass another --entailment-cache")
        scores = obj.get("scores")
        if not isinstance(scores, dict) or not all(isinstance(v, (int, float)) for v in scores.values()):
            raise EntailmentCacheError(f"{path}: field 'scores' must map keys to numbers; delete the file to recompute")
        self._memo.update({k: float(v) for k, v in scores.items()})

    def save(self) -> None:
        """Write the disk cache (atomically, with its sha256 sidecar) when something new was scored."""
        if self.cache_path is None or not self._dirty:
            return
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.cache_path, {"fingerprint": self.fingerprint(), "scores": self._memo})
        seal(self.cache_path)
        self._dirty = False


class LexicalEntailment(EntailmentChecker):
    """Token containment (module docstring); knows no contradiction."""

    spec = "lexical"

    def _score(self, pairs, kind):
        out = []
        for premise, hypothesis in pairs:
            tokens = set(answer_tokens(hypothesis))
            out.append(float(bool(tokens) and tokens <= set(answer_tokens(premise))))
        return out


def _label_index(id2label: Mapping, word: str) -> int | None:
    hits = [int(i) for i, lab in id2label.items() if word in str(lab).lower()]
    return hits[0] if len(hits) == 1 else None


class _HubChecker(EntailmentChecker):
    def __init__(self, name_or_path: str, trust_remote_code: bool = False, device: str | None = None, **kw):
        from .modeling import pick_device
        from .pool import fingerprint_model

        self.name = name_or_path
        self.trust_remote_code = trust_remote_code
        self.device = device or pick_device()
        self._fp = fingerprint_model(name_or_path)
        self._load()
        super().__init__(**kw)

    def fingerprint(self) -> dict:
        return {"spec": self.spec, "model": self._fp}

    def _from_pretrained(self, cls):
        from transformers import AutoTokenizer

        from .modeling import ModelLoadError

        try:
            tok = AutoTokenizer.from_pretrained(self.name, trust_remote_code=self.trust_remote_code)
            model = cls.from_pretrained(self.name, trust_remote_code=self.trust_remote_code)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"--entailment {self.spec}: cannot load {self.name!r} ({str(e).splitlines()[0][:200]}); "
                                 f"pass a local path or a hub id in the cache (remote code needs "
                                 f"--trust-remote-code)") from e
        return tok, model.to(self.device).eval()


class NLIEntailment(_HubChecker):
    """Any sequence-classification NLI model; the entailment label is read from its config."""

    def __init__(self, name_or_path: str, **kw):
        self.spec = f"nli:{name_or_path}"
        super().__init__(name_or_path, **kw)

    def _load(self):
        from transformers import AutoModelForSequenceClassification

        self.tok, self.model = self._from_pretrained(AutoModelForSequenceClassification)
        id2label = dict(self.model.config.id2label or {})
        self.entail_index = _label_index(id2label, "entail")
        if self.entail_index is None:
            raise ConfigError(f"--entailment {self.spec}: its config's id2label {id2label} names no single "
                              f"entailment label; pass an NLI model whose labels say which is entailment")
        self.contra_index = _label_index(id2label, "contradict")
        self.has_contradiction = self.contra_index is not None
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        if getattr(self.model.config, "pad_token_id", None) is None:
            self.model.config.pad_token_id = self.tok.pad_token_id

    def describe(self) -> dict:
        return {**super().describe(), "entailment_label": self.model.config.id2label[self.entail_index]}

    def _score(self, pairs, kind):
        import torch

        enc = self.tok([p for p, _ in pairs], [h for _, h in pairs], return_tensors="pt", padding=True,
                       truncation="only_first", max_length=getattr(self.tok, "model_max_length", 512) if
                       (getattr(self.tok, "model_max_length", 0) or 0) < 100_000 else 512)
        with torch.inference_mode():
            logits = self.model(**{k: v.to(self.device) for k, v in enc.items()}).logits.float()
        probs = logits.softmax(-1)
        idx = self.entail_index if kind == "entail" else self.contra_index
        return probs[:, idx].tolist()


class TrueEntailment(_HubChecker):
    """A TRUE-style seq2seq model: `premise: ... hypothesis: ...` -> "1" / "0"."""

    def __init__(self, name_or_path: str, **kw):
        self.spec = f"true:{name_or_path}"
        super().__init__(name_or_path, **kw)

    def _load(self):
        from transformers import AutoModelForSeq2SeqLM

        self.tok, self.model = self._from_pretrained(AutoModelForSeq2SeqLM)
        ids = {}
        for label in ("1", "0"):
            enc = [i for i in self.tok(label, add_special_tokens=False)["input_ids"]
                   if self.tok.decode([i]).strip() == label]
            if len(enc) != 1:
                raise ConfigError(f"--entailment {self.spec}: its tokenizer has no single token for {label!r}; "
                                  f"a TRUE-style model answers '1' or '0'")
            ids[label] = enc[0]
        self.one, self.zero = ids["1"], ids["0"]
        start = self.model.config.decoder_start_token_id
        if start is None:
            raise ConfigError(f"--entailment {self.spec}: config has no decoder_start_token_id; not a seq2seq model")
        self.start = start

    def _score(self, pairs, kind):
        import torch

        texts = [f"premise: {p} hypothesis: {h}" for p, h in pairs]
        # no cut at the tokenizer's nominal 512: ALCE feeds the whole joined passage (T5's relative
        # positions take it); only a premise past TRUE_MAX_TOKENS is cut
        enc = self.tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=TRUE_MAX_TOKENS)
        dec = torch.full((len(texts), 1), self.start, dtype=torch.long)
        with torch.inference_mode():
            logits = self.model(**{k: v.to(self.device) for k, v in enc.items()},
                                decoder_input_ids=dec.to(self.device)).logits[:, 0, :].float()
        two = logits[:, [self.one, self.zero]].softmax(-1)
        return two[:, 0].tolist()


def make_checker(spec: str | EntailmentChecker | None = "lexical", *, trust_remote_code: bool = False,
                 cache_dir: str | Path | None = None, batch_size: int = 16, device: str | None = None
                 ) -> EntailmentChecker:
    """The checker a spec names (module docstring); an EntailmentChecker is returned as it is."""
    if isinstance(spec, EntailmentChecker):
        return spec
    spec = (spec or "lexical").strip()
    kind, _, target = spec.partition(":")
    if spec == "lexical":
        return LexicalEntailment(cache_dir=None, batch_size=batch_size)
    if kind == "nli" and target:
        return NLIEntailment(target, trust_remote_code=trust_remote_code, device=device, cache_dir=cache_dir,
                             batch_size=batch_size)
    if kind == "true" and target:
        return TrueEntailment(target, trust_remote_code=trust_remote_code, device=device, cache_dir=cache_dir,
                              batch_size=batch_size)
    raise ConfigError(f"--entailment {spec!r}: expected lexical, nli:<hub id or path> or true:<hub id or path>")


def check_spec(spec: str) -> None:
    """Config-time check of an --entailment value (no model is loaded)."""
    kind, sep, target = (spec or "").partition(":")
    if spec != "lexical" and not (kind in ("nli", "true") and sep and target):
        raise ConfigError(f"--entailment {spec!r}: expected lexical, nli:<hub id or path> or true:<hub id or path>")


# --------------------------------------------------------------------------------------------
# The bridge to metrics' support rule
# --------------------------------------------------------------------------------------------
def joined(chunks: Iterable[str]) -> str:
    return "\n".join(chunks)


def support_checker(checker: EntailmentChecker):
    """A metrics.SupportChecker `(answer, cited_chunks, *, source, question) -> bool` built on `checker`.

    The lexical checker keeps metrics.lexical_support unchanged (a FEVER verdict citing a chunk is
    supported whatever the chunk says: the lexical rule cannot judge verdicts). With a model:
    - FEVER: SUPPORTS is supported when the cited chunks, joined, entail the claim (the question);
      REFUTES when they contradict it (`EntailmentChecker.refutes`); any other answer is not.
    - QA: the cited chunks, joined, entail "<question> <answer>" (ALCE's QAMPARI form of a short
      answer as a claim); a yes / no answer the same way.
    """
    from .metrics import REFUTES, SUPPORTS, fever_label, lexical_support

    if isinstance(checker, LexicalEntailment):
        return lexical_support

    def check(answer: str, cited_chunks: Sequence[str], *, source: str | None = None,
              question: str | None = None) -> bool:
        premise = joined(cited_chunks)
        if not cited_chunks:
            return False
        if source == "fever":
            label = fever_label(answer)
            claim = (question or "").strip()
            if label == SUPPORTS:
                return checker.entails(premise, claim)
            if label == REFUTES:
                return checker.refutes(premise, claim)
            return False
        hypothesis = f"{question.strip()} {answer.strip()}" if question else answer.strip()
        return checker.entails(premise, hypothesis)

    check.entailment = checker  # type: ignore[attr-defined]
    return check


_LOADED: dict[tuple[str, bool], object] = {}


def support_checker_for(spec: str, trust_remote_code: bool = False):
    """`support_checker(make_checker(spec))`, loaded once per process (the reward model's penalties and
    the verifiers call it per row)."""
    key = (spec, bool(trust_remote_code))
    if key not in _LOADED:
        _LOADED[key] = support_checker(make_checker(spec, trust_remote_code=trust_remote_code))
    return _LOADED[key]


_RUN: dict[tuple, EntailmentChecker] = {}


def run_checker(spec: str, trust_remote_code: bool, cache_dir: str | Path, batch_size: int = 16) -> EntailmentChecker:
    """`make_checker` for one evaluation run, loaded once (the selective column and the scores share
    it); one model in memory at a time."""
    key = (spec, bool(trust_remote_code), str(cache_dir), batch_size)
    if key not in _RUN:
        _RUN.clear()
        _RUN[key] = make_checker(spec, trust_remote_code=trust_remote_code, cache_dir=cache_dir, batch_size=batch_size)
    return _RUN[key]
