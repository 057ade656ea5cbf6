"""Token sequences of (prompt, response) pairs and the frozen base's features, with their on-disk cache.

Tokens. A sequence is tokens(prompt) + tokens(response)[:max_response_tokens - 1] + EOS. A prompt
longer than max_length - max_response_tokens keeps its last tokens (counted and logged); the
penalties always read the whole prompt text.

Features are computed once per (prompt, response), stopping at the last hidden state of the model
body (no vocabulary logits), and cached on disk under a key hashed from the model, the data and the
lengths, so epochs after the first (and later runs on the same pairs) cost almost nothing.
Responses that share a prompt share its forward pass: the prompt is run once and each response
continues from its key/value cache.
"""
from __future__ import annotations

import copy
import io
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..generation import common_prefix_len
from ..kv_cache import device_of
from ..modeling import (
    ModelLoadError,
    ModelOptions,
    base_model_id,
    load_model,
    pick_device,
    resolve_model_path,
)
from ..prompts import tokenize_prompt
from ..records import (
    atomic_write_bytes,
    atomic_write_json,
    discard_if_tampered,
    fault_point,
    seal,
    seal_path,
    sha256_json,
)

FEATURE_FORMAT = 1


class Sequences:
    """Unique (prompt, response) texts, in order of first appearance; `add` returns the row."""

    def __init__(self):
        self.prompts: list[str] = []
        self.responses: list[str] = []
        self._row: dict[tuple[str, str], int] = {}

    def add(self, prompt: str, response: str) -> int:
        key = (prompt, response)
        if key not in self._row:
            self._row[key] = len(self.prompts)
            self.prompts.append(prompt)
            self.responses.append(response)
        return self._row[key]

    def __len__(self) -> int:
        return len(self.prompts)

    def digest(self) -> str:
        return sha256_json([self.prompts, self.responses])


@dataclass
class PairIndex:
    """Pairs as rows of a Sequences table."""

    chosen: np.ndarray
    rejected: np.ndarray
    margin: np.ndarray
    kinds: list[str]


def index_pairs(pairs: Sequence[Mapping], seqs: Sequences) -> PairIndex:
    c = [seqs.add(p["prompt"], p["chosen"]) for p in pairs]
    r = [seqs.add(p["prompt"], p["rejected"]) for p in pairs]
    return PairIndex(np.array(c, dtype=np.int64), np.array(r, dtype=np.int64),
                     np.array([float(p["margin"]) for p in pairs]), [p["kind"] for p in pairs])


def prompt_budget(max_length: int, max_response_tokens: int) -> int:
    return max_length - max_response_tokens


class Tokens:
    """prompt ids + response ids (+ EOS) of each sequence, the prompt kept to its budget."""

    def __init__(self, tokenizer, max_length: int, max_response_tokens: int):
        self.tok, self.max_length, self.max_response_tokens = tokenizer, max_length, max_response_tokens
        self.prompt_budget = prompt_budget(max_length, max_response_tokens)
        self.truncated_prompts = 0
        self.truncated_responses = 0
        self._prompt_cache: dict[str, list[int]] = {}

    def prompt(self, text: str) -> list[int]:
        ids = self._prompt_cache.get(text)
        if ids is None:
            ids = tokenize_prompt(self.tok, text)
            if len(ids) > self.prompt_budget:
                self.truncated_prompts += 1
                ids = ids[-self.prompt_budget:]
            self._prompt_cache[text] = ids
        return ids

    def response(self, text: str) -> list[int]:
        eos = self.tok.eos_token_id
        ids = list(self.tok(text, add_special_tokens=False)["input_ids"])
        if eos is not None and ids and ids[-1] == eos:
            ids = ids[:-1]
        if len(ids) > self.max_response_tokens - 1:
            self.truncated_responses += 1
            ids = ids[: self.max_response_tokens - 1]
        return ids + ([eos] if eos is not None else [])

    def full(self, prompt: str, response: str) -> list[int]:
        return self.prompt(prompt) + self.response(response)


def load_body(opts: ModelOptions):
    """The base model's body (decoder stack and final norm: AutoModel's part of the causal LM),
    frozen, in eval mode, on this process's device. Its forward stops at the last hidden state;
    the LM head is dropped, so no vocabulary logits are ever computed."""
    model = load_model(opts)
    body = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, model.base_model_prefix)
    if hasattr(model, "lm_head"):
        model.lm_head = None
    body.requires_grad_(False)
    body.eval()
    if not (opts.load_in_4bit or opts.load_in_8bit):
        body.to(pick_device())
    return body


def extract_features(body, tokens: Tokens, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 8,
                     share_prompt_prefix: bool = True, desc: str = "features", progress: bool | None = None) -> np.ndarray:
    """(N, hidden) float32: the body's final hidden state at each sequence's last token.

    share_prompt_prefix: the tokens every prompt starts with (system text, chat-template header) run
    once; each prompt continues from a copy of that key/value cache (batch 1), and its responses
    continue from copies of the prompt's cache, right-padded (causal attention never lets a real
    token see the padding after it). Otherwise: full sequences, right-padded batches."""
    import torch
    from tqdm.auto import tqdm

    n = len(prompts)
    device = device_of(body)
    pad = tokens.tok.pad_token_id if tokens.tok.pad_token_id is not None else 0
    hidden = body.config.get_text_config().hidden_size if hasattr(body.config, "get_text_config") else body.config.hidden_size
    out = np.zeros((n, hidden), dtype=np.float32)
    if progress is None:
        progress = sys.stderr.isatty()
    bar = tqdm(total=n, desc=desc, disable=not progress or n == 0, leave=False)

    def run_batch(rows: list[int], seqs: list[list[int]], cache=None):
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        ids = ids.to(device)
        if cache is None:
            mask = (torch.arange(width)[None, :] < torch.tensor([len(s) for s in seqs])[:, None]).long().to(device)
            h = body(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        else:
            h = body(input_ids=ids, past_key_values=cache, use_cache=True).last_hidden_state
        last = torch.tensor([len(s) - 1 for s in seqs], device=h.device)
        out[rows] = h[torch.arange(len(seqs), device=h.device), last].float().cpu().numpy()
        bar.update(len(rows))

    with torch.no_grad():
        if not share_prompt_prefix:
            order = sorted(range(n), key=lambda i: len(tokens.full(prompts[i], responses[i])))
            for b in range(0, n, batch_size):
                rows = order[b:b + batch_size]
                run_batch(rows, [tokens.full(prompts[i], responses[i]) for i in rows])
        else:
            groups: dict[str, list[int]] = {}
            for i, p in enumerate(prompts):
                groups.setdefault(p, []).append(i)
            ids_of = {p: tokens.prompt(p) for p in groups}
            # the head every prompt shares, run once; each prompt keeps >= 2 tokens of its own
            shared = min(common_prefix_len(list(ids_of.values())), min(map(len, ids_of.values())) - 2) \
                if len(groups) > 1 else 0
            root = None
            if shared >= 8:
                first = next(iter(ids_of.values()))
                root = body(input_ids=torch.tensor([first[:shared]], device=device), use_cache=True).past_key_values
            else:
                shared = 0
            for p, rows in groups.items():
                pids = ids_of[p]
                if len(pids) < 2:  # nothing to share: run whole
                    for b in range(0, len(rows), batch_size):
                        run_batch(rows[b:b + batch_size], [tokens.full(p, responses[i]) for i in rows[b:b + batch_size]])
                    continue
                # the prompt's last token goes with the responses, so every response step has a query
                prefix = body(input_ids=torch.tensor([pids[shared:-1]], device=device), use_cache=True,
                              past_key_values=copy.deepcopy(root) if root is not None else None).past_key_values
                for b in range(0, len(rows), batch_size):
                    chunk = rows[b:b + batch_size]
                    cache = copy.deepcopy(prefix)
                    if len(chunk) > 1:
                        cache.batch_repeat_interleave(len(chunk))
                    run_batch(chunk, [pids[-1:] + tokens.response(responses[i]) for i in chunk], cache)
    bar.close()
    return out


def model_key(opts: ModelOptions) -> dict:
    """What determines a frozen base's features: the model files (or hub name) and how it is loaded."""
    from ..pool import fingerprint_hash, model_fingerprint

    try:
        path = resolve_model_path(opts.model_name_or_path)
    except ModelLoadError:
        path = opts.model_name_or_path
    fp = model_fingerprint(path)
    if list(fp) == ["name"]:  # a hub id: its cached snapshot names the revision
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(str(path), "config.json")
            fp["snapshot"] = str(Path(cached).parent.name) if isinstance(cached, str) else None
        except Exception:  # noqa: BLE001 - no hub cache: the name alone
            pass
    return {"model": base_model_id(opts.model_name_or_path), "files": fingerprint_hash(fp), "dtype": str(opts.dtype),
            "load_in_4bit": bool(opts.load_in_4bit), "load_in_8bit": bool(opts.load_in_8bit),
            "bnb_4bit_quant_type": opts.bnb_4bit_quant_type if opts.load_in_4bit else None}


def feature_cache_root(cfg) -> Path:
    from ..modeling import cache_dir

    return Path(cfg.run.feature_cache_dir) if cfg.run.feature_cache_dir else cache_dir() / "rm_features"


def _save_npy(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def cached_features(body, tokens: Tokens, seqs: Sequences, key_payload: Mapping, cache_root: Path | None,
                    batch_size: int, share_prompt_prefix: bool = True, shard_rows: int = 256,
                    desc: str = "features") -> tuple[np.ndarray, dict]:
    """Features of every sequence, from the disk cache `cache_root/<key>/` when it has them.

    The key is the sha256 of `key_payload` (model, lengths) and the sequences' texts. Rows are
    computed in shards of `shard_rows`, each written atomically as it completes, so a killed
    feature pass resumes at the first missing shard; a complete pass is joined into
    features.npy with a meta.json. `cache_root=None`: computed in memory, nothing written."""
    payload = {"format": FEATURE_FORMAT, **key_payload, "data": seqs.digest(), "rows": len(seqs)}
    key = sha256_json(payload)[:32]
    info = {"key": key, "rows": len(seqs), "hit": False, "computed_rows": 0, "seconds": 0.0}
    t0 = time.time()
    if cache_root is None:
        feats = extract_features(body, tokens, seqs.prompts, seqs.responses, batch_size, share_prompt_prefix, desc)
        info.update(computed_rows=len(seqs), seconds=round(time.time() - t0, 2))
        return feats, info
    d = Path(cache_root) / key
    final, meta = d / "features.npy", d / "meta.json"
    if final.exists() and meta.exists() and not discard_if_tampered(final):
        feats = np.load(final, allow_pickle=False)
        if feats.shape[0] == len(seqs):
            info.update(hit=True, path=str(d), seconds=round(time.time() - t0, 2))
            return feats, info
    d.mkdir(parents=True, exist_ok=True)
    parts: list[np.ndarray] = []
    start = 0
    while start < len(seqs):
        end = min(start + shard_rows, len(seqs))
        shard = d / f"rows-{start:09d}-{end:09d}.npy"
        if shard.exists() and not discard_if_tampered(shard):
            parts.append(np.load(shard, allow_pickle=False))
        else:
            arr = extract_features(body, tokens, seqs.prompts[start:end], seqs.responses[start:end], batch_size,
                                   share_prompt_prefix, f"{desc} {start}-{end}/{len(seqs)}")
            _save_npy(shard, arr)
            seal(shard)
            fault_point(f"rm:features:{end}")
            parts.append(arr)
            info["computed_rows"] += end - start
        start = end
    feats = np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
    _save_npy(final, feats)
    seal(final)
    atomic_write_json(meta, payload)
    for shard in d.glob("rows-*.npy"):
        shard.unlink()
        seal_path(shard).unlink(missing_ok=True)
    info.update(path=str(d), seconds=round(time.time() - t0, 2))
    return feats, info
