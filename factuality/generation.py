"""Batched generation: length-sorted, left-padded, greedy by default, results in input order.

    texts = generate(model, tokenizer, prompts, batch_size=8, max_new_tokens=256)

`iter_generate` yields one list of `Generation`s per batch (so a caller can append them to a
resumable file as they are made); `generate` collects the texts in input order.

What makes it fast on a CPU, where prefill (reading the prompt) dominates:
- prompts are sorted by token length, so a batch pads little (and longest-first, so an
  out-of-memory shows up in the first batch, not the last);
- the prompt prefix that every prompt shares (system instruction + chat-template header) is run
  through the model ONCE; its KV cache is copied into each batch and only the rest of each
  prompt is prefilled (`share_prefix`, on by default). Rows are laid out
  `[shared prefix][padding][own suffix]`: positions come from the attention mask, so every row
  sees exactly the positions it would see alone;
- `torch.inference_mode`, logits only for the last prompt position (transformers does this),
  and generation stops at EOS or any end-of-turn token of the chat template;
- a row that has finished (stop token or max_new_tokens) leaves the batch at once: its KV-cache
  rows are dropped, and cache columns that only finished rows attended to are cut, so the rest
  of the batch decodes at the cost of the rows still running (`decode="drop_finished"`, the
  default). `model.generate` (`decode="generate"`) decodes every row until the longest answer
  ends. Greedy outputs are those of one-at-a-time generation (tests/test_generation.py).

`score_next_token` reads the log-probabilities of a few chosen tokens after many sequences
that share long prefixes (a judge's rubric, evidence and question, then each candidate answer):
each group's prefix is prefilled once and only the differing ends are run per sequence.
"""
from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from transformers import LogitsProcessor, LogitsProcessorList

from .kv_cache import (
    cut_columns,
    device_of,
    forward_into,
    last_logits,
    layout,
    plain_cache,
    positions,
    sample_next,
    stack_left_padded,
)

log = logging.getLogger(__name__)

# End-of-turn markers of common chat templates; those present in the vocabulary stop generation.
END_OF_TURN_TOKENS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "</s>", "<eos>",
                      "<|end_of_text|>")


@dataclass
class Generation:
    index: int                 # position of the prompt in the caller's list
    text: str                  # decoded new tokens, special tokens dropped, cut at the first stop token
    output_tokens: int         # new tokens up to (not including) the stop token
    prompt_tokens: int
    stopped: bool              # True when a stop token ended it, False when max_new_tokens did
    token_ids: list[int] | None = None        # the new tokens kept (as `text` decodes them)
    token_logprobs: list[float] | None = None  # each kept token's log-probability under the model (temperature 1,
                                               # before any sampling filter): what `confidence.answer_probability` reads


@dataclass
class GenerationStats:
    """Timings a benchmark can report (filled by iter_generate when passed in)."""

    prefill_s: float = 0.0
    decode_s: float = 0.0
    prefix_s: float = 0.0
    prompt_tokens: int = 0
    padded_prompt_tokens: int = 0
    new_tokens: int = 0
    shared_prefix_tokens: int = 0
    batches: int = 0
    row_steps: int = 0         # decode forward passes x rows in them (what dropping finished rows saves)
    extra: dict = field(default_factory=dict)


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """EOS of the tokenizer and of the model's generation config, plus end-of-turn tokens in the vocab."""
    ids: list[int] = []

    def add(x):
        if x is None:
            return
        for i in (x if isinstance(x, (list, tuple)) else [x]):
            if i is not None and int(i) not in ids:
                ids.append(int(i))

    add(tokenizer.eos_token_id)
    if model is not None and getattr(model, "generation_config", None) is not None:
        add(model.generation_config.eos_token_id)
    vocab = tokenizer.get_vocab()
    for t in END_OF_TURN_TOKENS:
        if t in vocab:
            add(vocab[t])
    return ids


def encode_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of rendered prompts, exactly as SFT tokenises them (prompts.tokenize_prompt: no
    second BOS when the chat template already wrote one)."""
    from .prompts import tokenize_prompt

    return [tokenize_prompt(tokenizer, p) for p in prompts]


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    if not seqs:
        return 0
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for s in seqs[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
        if n == 0:
            break
    return n


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _generation_config(model, max_new_tokens, do_sample, temperature, top_p, stop_ids, pad_id):
    from transformers import GenerationConfig

    kw = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "eos_token_id": stop_ids, "pad_token_id": pad_id}
    if do_sample:
        kw.update(temperature=temperature, top_p=top_p, top_k=0)
    else:  # explicit, so a sampling default in the model's generation_config cannot leak in
        kw.update(temperature=1.0, top_p=1.0, top_k=50)
    return GenerationConfig(**kw)


PREFILL_MODES = ("auto", "batched", "per_example")
# drop_finished: our decode loop, finished rows leave the batch and the KV cache; generate: model.generate
# (every row decodes until the longest answer ends); auto: drop_finished unless the model's cache is not a
# plain growing one (sliding-window attention), where model.generate keeps its own cache handling.
DECODE_MODES = ("auto", "drop_finished", "generate")


def decode_batch(model, input_ids, attn, cache, max_new_tokens: int, stop_ids: Iterable[int], do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, generators=None, stats: GenerationStats | None = None,
                 logprobs: list[list[float]] | None = None, allowed=None) -> tuple[list[list[int]], float]:
    """Decode a left-padded batch, each row leaving the batch (and the KV cache) when it finishes.

    `input_ids`/`attn`: (rows, width); `cache` already holds the first `cache.get_seq_length()`
    columns (or is None). Returns each row's new tokens (up to and including its stop token) and
    the time the first new token's logits were ready. Positions and masks follow
    `model.generate`, so greedy rows equal what generate gives them. A `logprobs` list passed in
    gets one list per row: each chosen token's log-probability under the model's distribution.
    `allowed(row, generated)` (constrained decoding) returns the token ids row `row` may write
    next; the others are masked out before the choice (the log-probabilities stay the model's).
    """
    import torch
    from transformers import DynamicCache

    stop = torch.tensor(sorted(set(stop_ids)) or [-1], device=input_ids.device)
    if cache is None:
        cache = DynamicCache(config=getattr(model, "config", None))
    past = cache.get_seq_length()
    mask = None if bool((attn == 1).all()) else attn
    logits, cache = last_logits(model, input_ids, mask, cache, past)
    first_at = time.perf_counter()
    pos = (positions(attn)[:, -1] if mask is not None else
           torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, device=input_ids.device))
    rows = list(range(input_ids.shape[0]))           # caller's row of each row still decoding
    out: list[list[int]] = [[] for _ in rows]
    if logprobs is not None:
        logprobs[:] = [[] for _ in rows]
    gens = list(generators) if generators is not None else None
    for step in range(max_new_tokens):
        nxt = sample_next(masked(logits, rows, out, allowed), do_sample, temperature, top_p, gens)
        if stats is not None:
            stats.row_steps += len(rows)
        for r, t in zip(rows, nxt.tolist()):
            out[r].append(t)
        if logprobs is not None:
            chosen = torch.log_softmax(logits, dim=-1).gather(1, nxt.unsqueeze(1)).squeeze(1)
            for r, lp in zip(rows, chosen.tolist()):
                logprobs[r].append(lp)
        done = torch.isin(nxt, stop)
        if step + 1 == max_new_tokens or bool(done.all()):
            break
        if bool(done.any()):
            keep = torch.nonzero(~done).squeeze(1)
            cache.batch_select_indices(keep)
            nxt, pos = nxt[keep], pos[keep]
            rows = [rows[k] for k in keep.tolist()]
            gens = [gens[k] for k in keep.tolist()] if gens is not None else None
            if mask is not None:
                mask = cut_columns(cache, mask[keep])
        pos = pos + 1
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
        kwargs = {"input_ids": nxt.unsqueeze(1), "attention_mask": mask, "position_ids": pos.unsqueeze(1),
                  "past_key_values": cache, "use_cache": True}
        try:
            logits = model(**kwargs, logits_to_keep=1).logits[:, -1, :].float()
        except TypeError:
            logits = model(**kwargs).logits[:, -1, :].float()
    return out, first_at


def masked(logits, rows: Sequence[int], out: Sequence[Sequence[int]], allowed):
    """`logits` with every token `allowed(row, generated)` does not list set to -inf (no copy when
    `allowed` is None)."""
    if allowed is None:
        return logits
    import torch

    mask = torch.full_like(logits, float("-inf"))
    for k, r in enumerate(rows):
        ids = allowed(r, out[r])
        if ids:
            mask[k, torch.tensor(ids, dtype=torch.long, device=logits.device)] = 0.0
    return logits + mask


class _ConstraintProcessor(LogitsProcessor):
    """`masked` for model.generate: row r's new tokens are input_ids[r, width:]."""

    def __init__(self, allowed, width: int):
        self.allowed, self.width = allowed, width

    def __call__(self, input_ids, scores):
        rows = list(range(input_ids.shape[0]))
        return masked(scores, rows, [input_ids[r, self.width:].tolist() for r in rows], self.allowed)


@dataclass
class Decoding:
    """How iter_generate picks each new token and when a row ends."""

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    stop_ids: list[int] = field(default_factory=list)
    pad_id: int = 0


@dataclass
class _Run:
    """One iter_generate call's model, prompts and settings once they are resolved."""

    model: object
    tokenizer: object
    ids: dict[int, list[int]]          # prompt index -> token ids
    decoding: Decoding
    gen_cfg: object                    # transformers.GenerationConfig (decode="generate")
    device: object
    config: object
    prefill: str
    decode: str
    stats: GenerationStats
    prefix_len: int = 0                # tokens of the prefix every prompt shares, prefilled once
    prefix_cache: object = None
    constraint: object = None          # constrained.ContractConstraint (or any object with enforcer/allowed)


def iter_generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    batch_size: int = 8,
    max_new_tokens: int = 256,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    indices: Iterable[int] | None = None,
    sort_by_length: bool = True,
    share_prefix: bool = True,
    prefill: str = "auto",
    progress: bool = True,
    desc: str = "generate",
    stats: GenerationStats | None = None,
    prompt_ids: Sequence[Sequence[int]] | None = None,
    decode: str = "auto",
    sample_seeds: Sequence[int] | Mapping[int, int] | None = None,
    constraint=None,
) -> Iterator[list[Generation]]:
    """Yield the generations of each batch (batch order; `Generation.index` says whose).

    `indices` restricts generation to those prompts (a resumed run skips what it already has).
    `prompt_ids` passes token ids already computed by `encode_prompts` (saves a second pass).
    `prefill`: "batched" runs each batch's padded prompts through the model in one forward pass
    (best on a GPU); "per_example" prefills each prompt alone (no padding computed, small
    activations: faster on a CPU, where prefill is compute-bound) and stacks the KV caches,
    left-padded, for the batched decode; "auto" picks per_example on CPU, batched elsewhere.
    `decode`: "drop_finished" (finished rows leave the batch and the KV cache), "generate"
    (`model.generate`: the batch decodes until its longest answer ends), "auto" (drop_finished
    unless the model has sliding-window attention). `sample_seeds[i]` seeds prompt i's own
    sampling generator, so a sampled output does not depend on the batch it fell in
    (drop_finished only; generate samples from torch's global generator). `constraint`
    (constrained.ContractConstraint over the same prompt indices) holds every output to the answer
    contract.
    """
    _check_options(batch_size, prefill, decode)
    todo = list(range(len(prompts))) if indices is None else list(indices)
    if not todo:
        return
    ids = {i: list(prompt_ids[i]) for i in todo} if prompt_ids is not None else dict(
        zip(todo, encode_prompts(tokenizer, [prompts[i] for i in todo])))
    stop_ids = stop_token_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop_ids[0] if stop_ids else 0)
    decoding = Decoding(max_new_tokens, do_sample, temperature, top_p, stop_ids, pad_id)
    run = _start_run(model, tokenizer, ids, todo, decoding, prefill, decode, share_prefix, stats)
    run.constraint = constraint
    lengths = [len(ids[i]) for i in todo]
    if sort_by_length:
        batches = [[todo[j] for j in b] for b in length_sorted_batches(lengths, batch_size)]
    else:
        batches = [todo[k:k + batch_size] for k in range(0, len(todo), batch_size)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=desc, unit="ex", dynamic_ncols=True)
    try:
        for batch in batches:
            results = _generate_batch(run, batch, sample_seeds)
            if bar is not None:
                bar.update(len(batch))
                el = bar.format_dict.get("elapsed") or 0
                if el:
                    bar.set_postfix_str(f"{bar.n / el:.2f} ex/s")
            yield results
    finally:
        if bar is not None:
            bar.close()


def _check_options(batch_size: int, prefill: str, decode: str) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if prefill not in PREFILL_MODES:
        raise ValueError(f"prefill {prefill!r} is not one of {PREFILL_MODES}")
    if decode not in DECODE_MODES:
        raise ValueError(f"decode {decode!r} is not one of {DECODE_MODES}")


def _start_run(model, tokenizer, ids: dict[int, list[int]], todo: Sequence[int], decoding: Decoding, prefill: str,
               decode: str, share_prefix: bool, stats: GenerationStats | None) -> _Run:
    """The run's settings: the prefill and decode modes the model allows, and the shared prefix prefilled."""
    gen_cfg = _generation_config(model, decoding.max_new_tokens, decoding.do_sample, decoding.temperature,
                                 decoding.top_p, decoding.stop_ids, decoding.pad_id)
    device = device_of(model)
    lengths = [len(ids[i]) for i in todo]
    if min(lengths) < 2:
        prefill, share_prefix = "batched", False  # a 1-token prompt leaves nothing to cache
    if prefill == "auto":
        prefill = "per_example" if device.type == "cpu" else "batched"
    if not plain_cache(model) or getattr(model, "is_loaded_in_4bit", False):
        # a sliding-window cache may drop entries a stacked/shared cache relies on: keep it plain
        prefill, share_prefix = "batched", False
    if decode == "auto":
        decode = "drop_finished" if plain_cache(model) else "generate"
    run = _Run(model, tokenizer, ids, decoding, gen_cfg, device, getattr(model, "config", None), prefill, decode,
               stats if stats is not None else GenerationStats())
    if share_prefix and len(todo) > 1:
        _prefill_shared_prefix(run, todo, lengths)
    return run


def _prefill_shared_prefix(run: _Run, todo: Sequence[int], lengths: Sequence[int]) -> None:
    """The prefix shared by every prompt (system text + template header), prefilled once. Keep
    >= 2 own tokens per prompt: per_example prefill caches all but the last one."""
    import torch
    from transformers import DynamicCache

    prefix_len = max(0, min(common_prefix_len([run.ids[i] for i in todo]), min(lengths) - 2))
    if prefix_len < 8:  # not worth a separate forward pass
        return
    t0 = time.perf_counter()
    with torch.inference_mode():
        run.prefix_cache = DynamicCache(config=run.config)
        forward_into(run.model, torch.tensor([run.ids[todo[0]][:prefix_len]], device=run.device), run.prefix_cache)
    run.prefix_len = prefix_len
    run.stats.prefix_s += time.perf_counter() - t0
    run.stats.shared_prefix_tokens = prefix_len


def _prefill(run: _Run, batch: Sequence[int]):
    """(input_ids, attention mask, KV cache or None) of one batch, laid out for the decode."""
    import torch

    ids, prefix_len, past = run.ids, run.prefix_len, None
    if run.prefill == "per_example":
        # each prompt alone (minus its last token) into its own cache, then stacked
        from transformers import DynamicCache

        caches = []
        with torch.inference_mode():
            for i in batch:
                cache = copy.deepcopy(run.prefix_cache) if run.prefix_cache is not None else DynamicCache(
                    config=run.config)
                forward_into(run.model, torch.tensor([ids[i][prefix_len:-1]], device=run.device), cache)
                caches.append(cache)
            past = stack_left_padded(caches, run.config)
        width = max(len(ids[i]) for i in batch)
        rows = [([], ids[i]) for i in batch]  # plain left padding; the cache matches it
        run.stats.padded_prompt_tokens += sum(len(ids[i]) for i in batch)
    else:
        # [shared prefix][padding][own tokens]: positions come from the attention mask
        rows = [(ids[i][:prefix_len], ids[i][prefix_len:]) for i in batch]
        width = prefix_len + max(len(own) for _, own in rows)
        if run.prefix_cache is not None:
            past = copy.deepcopy(run.prefix_cache)
            if len(batch) > 1:
                past.batch_repeat_interleave(len(batch))
        run.stats.padded_prompt_tokens += len(batch) * width
    input_ids, attn = layout(rows, width, run.decoding.pad_id, run.device)
    return input_ids, attn, past


def _generate_batch(run: _Run, batch: Sequence[int], sample_seeds) -> list[Generation]:
    """Prefill and decode one batch; its generations, stats updated."""
    import torch

    d, stats = run.decoding, run.stats
    t0 = time.perf_counter()
    input_ids, attn, past = _prefill(run, batch)
    allowed = None
    if run.constraint is not None:
        enforcers = [run.constraint.enforcer(i) for i in batch]

        def allowed(row, generated):
            return run.constraint.allowed(enforcers[row], generated)
    if run.decode == "drop_finished":
        gens = None
        if d.do_sample and sample_seeds is not None:
            gens = [torch.Generator(device=run.device).manual_seed(int(sample_seeds[i])) for i in batch]
        logprobs: list[list[float]] = []
        with torch.inference_mode():
            new, first = decode_batch(run.model, input_ids, attn, past, d.max_new_tokens, d.stop_ids, d.do_sample,
                                      d.temperature, d.top_p, gens, stats, logprobs, allowed)
        t1 = time.perf_counter()
    else:
        timer = _FirstTokenTimer()
        kwargs = {"past_key_values": past} if past is not None else {}
        processors = [timer] + ([_ConstraintProcessor(allowed, input_ids.shape[1])] if allowed is not None else [])
        with torch.inference_mode():
            out = run.model.generate(input_ids=input_ids, attention_mask=attn, generation_config=run.gen_cfg,
                                     logits_processor=LogitsProcessorList(processors), output_logits=True,
                                     return_dict_in_generate=True, **kwargs)
        t1 = time.perf_counter()
        first = timer.first_token_at or t1
        new = out.sequences[:, input_ids.shape[1]:].tolist()
        # the raw logits of each step, so the log-probabilities are those of the model (as decode_batch's)
        steps = torch.stack([x.float() for x in out.logits], dim=1).log_softmax(-1) if out.logits else None
        logprobs = ([steps[r, range(len(new[r])), new[r]].tolist() for r in range(len(new))]
                    if steps is not None else [[] for _ in new])
        stats.row_steps += len(batch) * len(new[0]) if new else 0
    stats.prefill_s += first - t0
    stats.decode_s += t1 - first
    stats.batches += 1
    stats.prompt_tokens += sum(len(run.ids[i]) for i in batch)
    return _generations(run, batch, new, logprobs)


def _generations(run: _Run, batch: Sequence[int], new: Sequence[Sequence[int]],
                 logprobs: Sequence[Sequence[float]]) -> list[Generation]:
    """Each row's new tokens cut at the first stop token and decoded."""
    stop_set = set(run.decoding.stop_ids)
    results = []
    for r, i in enumerate(batch):
        toks = new[r]
        cut = next((k for k, t in enumerate(toks) if t in stop_set), None)
        kept = toks if cut is None else toks[:cut]
        run.stats.new_tokens += len(kept)
        results.append(Generation(index=i, text=run.tokenizer.decode(kept, skip_special_tokens=True),
                                  output_tokens=len(kept), prompt_tokens=len(run.ids[i]), stopped=cut is not None,
                                  token_ids=list(kept), token_logprobs=list(logprobs[r][:len(kept)])))
    return results


class _FirstTokenTimer(LogitsProcessor):
    """A logits processor that notes when the first new token's logits arrive (= end of prefill)."""

    def __init__(self):
        self.first_token_at: float | None = None

    def __call__(self, input_ids, scores):
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        return scores


def generate(model, tokenizer, prompts: Sequence[str], batch_size: int = 8, max_new_tokens: int = 256,
             on_batch: Callable[[list[Generation]], None] | None = None, **kwargs) -> list[str]:
    """Texts generated for `prompts`, in input order (see iter_generate for the options)."""
    texts: list[str | None] = [None] * len(prompts)
    for batch in iter_generate(model, tokenizer, prompts, batch_size, max_new_tokens, **kwargs):
        for g in batch:
            texts[g.index] = g.text
        if on_batch is not None:
            on_batch(batch)
    return [t if t is not None else "" for t in texts]


def score_next_token(model, sequences: Sequence[Sequence[int]], token_ids: Sequence[int],
                     groups: Sequence[Sequence[int]] | None = None, batch_size: int = 8, pad_id: int = 0,
                     progress: bool = False, desc: str = "score") -> list[list[float]]:
    """Log-probabilities of each of `token_ids` as the next token after each sequence (in input order).

    `groups` lists sequence indices that share a long prefix (default: all one group); each
    group's common prefix is prefilled once and its KV cache copied into each batch of that
    group, so only the part after it is run per sequence. Rows are laid out
    `[prefix][padding][own tokens]` with positions from the attention mask, so each row sees
    exactly the positions it would see alone.
    """
    import torch
    from transformers import DynamicCache

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    seqs = [list(s) for s in sequences]
    if any(not s for s in seqs):
        raise ValueError("score_next_token: an empty sequence has no next token to score")
    groups = [list(g) for g in groups] if groups is not None else [list(range(len(seqs)))]
    if sorted(i for g in groups for i in g) != list(range(len(seqs))):
        raise ValueError("score_next_token: groups must list every sequence index exactly once")
    device = device_of(model)
    config = getattr(model, "config", None)
    want = torch.tensor(list(token_ids), device=device)
    out: list[list[float] | None] = [None] * len(seqs)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(seqs), desc=desc, unit="seq", dynamic_ncols=True)
    try:
        with torch.inference_mode():
            for group in groups:
                if not group:
                    continue
                members = [seqs[i] for i in group]
                prefix_len = min(common_prefix_len(members), min(len(s) for s in members) - 1) if len(group) > 1 else 0
                if not plain_cache(model):
                    prefix_len = 0  # a sliding-window cache cannot be shared this way
                prefix_cache = None
                if prefix_len:
                    prefix_cache = DynamicCache(config=config)
                    forward_into(model, torch.tensor([members[0][:prefix_len]], device=device), prefix_cache)
                for k in range(0, len(group), batch_size):
                    chunk = group[k:k + batch_size]
                    rows = [(seqs[i][:prefix_len], seqs[i][prefix_len:]) for i in chunk]
                    width = prefix_len + max(len(own) for _, own in rows)
                    input_ids, attn = layout(rows, width, pad_id, device)
                    cache = None
                    if prefix_cache is not None:
                        cache = copy.deepcopy(prefix_cache)
                        if len(chunk) > 1:
                            cache.batch_repeat_interleave(len(chunk))
                    mask = None if bool((attn == 1).all()) else attn
                    logits, _ = last_logits(model, input_ids, mask, cache, prefix_len)
                    logp = torch.log_softmax(logits, dim=-1)[:, want].cpu().tolist()
                    for r, i in enumerate(chunk):
                        out[i] = logp[r]
                    if bar is not None:
                        bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return out  # type: ignore[return-value]
