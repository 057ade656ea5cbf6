"""The KV-cache and decoding mechanics under `generation`: per-row caches stacked left-padded into
one batch cache, rows laid out `[shared prefix][padding][own suffix]` with positions from the
attention mask, last-position logits, the next token (greedy or seeded nucleus sampling), and the
cache columns cut when the rows that used them have finished."""
from __future__ import annotations

from collections.abc import Sequence


def device_of(model):
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        import torch

        return torch.device("cpu")


def forward_into(model, input_ids, cache):
    """Run `input_ids` through the model, appending to `cache`; logits only for the last position."""
    try:
        model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    except TypeError:  # a model whose forward has no logits_to_keep
        model(input_ids=input_ids, past_key_values=cache, use_cache=True)


def stack_left_padded(caches, config):
    """One batch cache from per-row caches of different lengths, left-padded with zeros (masked)."""
    import torch
    from transformers import DynamicCache

    per_layer = []
    n_layers = len(caches[0].layers)
    width = max(c.get_seq_length() for c in caches)
    for layer in range(n_layers):
        ks, vs = [], []
        for c in caches:
            k, v = c.layers[layer].keys, c.layers[layer].values
            pad = width - k.shape[-2]
            if pad:
                k = torch.nn.functional.pad(k, (0, 0, pad, 0))
                v = torch.nn.functional.pad(v, (0, 0, pad, 0))
            ks.append(k)
            vs.append(v)
        per_layer.append((torch.cat(ks, 0), torch.cat(vs, 0)))
    return DynamicCache(ddp_cache_data=per_layer, config=config)


def layout(rows: Sequence[tuple[Sequence[int], Sequence[int]]], width: int, pad_id: int, device):
    """(input_ids, attention mask) of rows `(head, own)` laid out `[head][padding][own]` in `width`
    columns: a shared prefix (or nothing) on the left, each row's own tokens right-aligned."""
    import torch

    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros_like(input_ids)
    for r, (head, own) in enumerate(rows):
        if head:
            input_ids[r, :len(head)] = torch.tensor(list(head), dtype=torch.long)
            attn[r, :len(head)] = 1
        input_ids[r, width - len(own):] = torch.tensor(list(own), dtype=torch.long)
        attn[r, width - len(own):] = 1
    return input_ids.to(device), attn.to(device)


def positions(attn):
    """Position ids from a 0/1 attention mask, as transformers' generate makes them (padding at 0)."""
    pos = attn.long().cumsum(-1) - 1
    return pos.masked_fill(attn == 0, 0)


def last_logits(model, input_ids, attn, cache, past_len: int):
    """float32 logits (rows, vocab) of the last position, for the columns of `input_ids` after the
    `past_len` already in `cache`; `attn` covers all columns (None: no padding anywhere)."""
    import torch

    pos = positions(attn)[:, past_len:] if attn is not None else (
        torch.arange(past_len, input_ids.shape[1], device=input_ids.device).unsqueeze(0).expand(input_ids.shape[0], -1))
    kwargs = {"input_ids": input_ids[:, past_len:], "attention_mask": attn, "position_ids": pos, "use_cache": True}
    if cache is not None:
        kwargs["past_key_values"] = cache
    try:
        out = model(**kwargs, logits_to_keep=1)
    except TypeError:  # a model whose forward has no logits_to_keep
        out = model(**kwargs)
    return out.logits[:, -1, :].float(), out.past_key_values


def sample_next(logits, do_sample: bool, temperature: float, top_p: float, generators):
    """Next token per row: argmax (greedy), or a draw after temperature and nucleus filtering (the
    order transformers' logits warpers apply them), one seeded generator per row when given."""
    import torch

    if not do_sample:
        return logits.argmax(-1)
    scores = logits / max(temperature, 1e-6)
    if top_p < 1.0:
        sorted_scores, sorted_idx = torch.sort(scores, descending=False)
        remove = sorted_scores.softmax(-1).cumsum(-1) <= (1 - top_p)
        remove[..., -1:] = False
        scores = scores.masked_fill(remove.scatter(1, sorted_idx, remove), float("-inf"))
    probs = scores.softmax(-1)
    if generators is None:
        return torch.multinomial(probs, 1).squeeze(1)
    return torch.cat([torch.multinomial(probs[r:r + 1], 1, generator=g).squeeze(1) for r, g in enumerate(generators)])


def cut_columns(cache, attn, min_cut: int = 8):
    """Drop cache columns no remaining row attends to (the padding of rows that left); returns the new mask."""
    import torch

    used = attn.bool().any(0)
    if int((~used).sum()) < min_cut:
        return attn
    cols = torch.nonzero(used).squeeze(1)
    for layer in cache.layers:
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            layer.keys = layer.keys.index_select(-2, cols.to(layer.keys.device))
            layer.values = layer.values.index_select(-2, cols.to(layer.values.device))
    return attn[:, cols]


def plain_cache(model) -> bool:
    """True when the model's KV cache is a plain growing one (no sliding window) our loops may edit."""
    config = getattr(model, "config", None)
    text_cfg = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    return not getattr(text_cfg, "sliding_window", None)
