"""Batched, left-padded, length-sorted generation gives what one-at-a-time generation gives."""
from __future__ import annotations

import copy

import pytest

from factuality.generation import (
    Generation,
    GenerationStats,
    common_prefix_len,
    generate,
    iter_generate,
    length_sorted_batches,
    stop_token_ids,
)
from factuality.prompts import render_prompt
from factuality.testing import make_example

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from factuality.modeling import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir), padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, tok


@pytest.fixture(scope="module")
def prompts(tiny):
    _, tok = tiny
    # different lengths (1..4 chunks) so batches need padding, in an order that is not sorted
    return [render_prompt(make_example(i, n_chunks=1 + (i * 3) % 4, gold_position=0), tok) for i in range(7)]


@pytest.fixture(scope="module")
def singles(tiny, prompts):
    model, tok = tiny
    return [generate(model, tok, [p], batch_size=1, max_new_tokens=16, progress=False)[0] for p in prompts]


def test_helpers():
    assert common_prefix_len([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert common_prefix_len([[1], [2]]) == 0
    assert length_sorted_batches([3, 9, 1, 7, 5], 2) == [[1, 3], [4, 0], [2]]


def test_stop_tokens(tiny):
    model, tok = tiny
    ids = stop_token_ids(tok, model)
    vocab = tok.get_vocab()
    assert vocab["<|im_end|>"] in ids and vocab["<|endoftext|>"] in ids
    assert vocab["<pad>"] not in ids


@pytest.mark.parametrize("prefill,share_prefix", [("batched", False), ("batched", True), ("per_example", True)])
def test_batched_equals_one_at_a_time(tiny, prompts, singles, prefill, share_prefix):
    model, tok = tiny
    single = singles
    stats = GenerationStats()
    batched = generate(model, tok, prompts, batch_size=3, max_new_tokens=16, progress=False, prefill=prefill,
                       share_prefix=share_prefix, stats=stats)
    assert batched == single                       # same greedy text, returned in input order
    assert len(set(single)) > 1                    # the prompts do lead to different outputs
    assert stats.batches == 3 and stats.new_tokens > 0
    assert (stats.shared_prefix_tokens > 0) == share_prefix


def test_iter_generate_subset_sorted_batches(tiny, prompts):
    model, tok = tiny
    seen = []
    lengths = [len(tok(p)["input_ids"]) for p in prompts]
    for batch in iter_generate(model, tok, prompts, batch_size=2, max_new_tokens=4, indices=[0, 2, 5, 6],
                               progress=False):
        assert all(isinstance(g, Generation) for g in batch)
        seen.append([g.index for g in batch])
        for g in batch:
            assert g.prompt_tokens == lengths[g.index] and 0 <= g.output_tokens <= 4
    assert sorted(i for b in seen for i in b) == [0, 2, 5, 6]
    flat = [lengths[i] for b in seen for i in b]
    assert flat == sorted(flat, reverse=True)      # longest first


def test_stops_at_end_of_turn_token(tiny, prompts):
    model, tok = tiny
    m = copy.deepcopy(model)
    with __import__("torch").no_grad():
        m.lm_head.weight.zero_()                   # all logits tie; argmax takes id 0 = <|endoftext|>, a stop token
    assert tok.convert_ids_to_tokens(0) == "<|endoftext|>"
    gens = [g for b in iter_generate(m, tok, prompts[:3], batch_size=3, max_new_tokens=8, progress=False) for g in b]
    assert all(g.text == "" and g.output_tokens == 0 and g.stopped for g in gens)
    gens = [g for b in iter_generate(model, tok, prompts[:2], batch_size=2, max_new_tokens=3, progress=False) for g in b]
    assert all(not g.stopped and g.output_tokens == 3 for g in gens)   # random model: runs to the limit


# ------------------------------------------------------------------ finished rows leave the batch
@pytest.fixture(scope="module")
def early_stops(tiny, prompts):
    """Extra stop tokens that end the prompts' greedy answers at as many different steps as three
    tokens can (chosen from the answers each prompt gets alone, 16 tokens, no stop token)."""
    import itertools

    import torch

    from factuality.generation import decode_batch

    model, tok = tiny
    answers = []
    for p in prompts:
        ids = torch.tensor([tok(p, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            answers.append(decode_batch(model, ids, torch.ones_like(ids), None, 16, [])[0][0])

    def lengths(stops):
        return [next((k + 1 for k, t in enumerate(a) if t in stops), len(a)) for a in answers]

    vocab = sorted({t for a in answers for t in a})
    return list(max(itertools.combinations(vocab, 3), key=lambda s: len(set(lengths(set(s))))))


@pytest.mark.parametrize("prefill", ["batched", "per_example"])
def test_dropping_finished_rows_gives_one_at_a_time_outputs(tiny, prompts, early_stops, prefill, monkeypatch):
    import factuality.generation as gen

    model, tok = tiny
    base_stops = gen.stop_token_ids(tok, model)
    monkeypatch.setattr(gen, "stop_token_ids", lambda tokenizer, model=None: base_stops + early_stops)
    alone = [[g for b in iter_generate(model, tok, [p], batch_size=1, max_new_tokens=16, progress=False,
                                       decode="generate") for g in b][0] for p in prompts]
    lengths = {g.output_tokens for g in alone}
    assert len(lengths) >= 2 and any(g.stopped for g in alone)  # rows really finish at different steps
    dropped, kept = GenerationStats(), GenerationStats()
    got = {g.index: g for b in iter_generate(model, tok, prompts, batch_size=4, max_new_tokens=16, progress=False,
                                             prefill=prefill, decode="drop_finished", stats=dropped) for g in b}
    old = {g.index: g for b in iter_generate(model, tok, prompts, batch_size=4, max_new_tokens=16, progress=False,
                                             prefill=prefill, decode="generate", stats=kept) for g in b}
    for i, g in enumerate(alone):
        assert (got[i].text, got[i].output_tokens, got[i].stopped) == (g.text, g.output_tokens, g.stopped)
        assert (old[i].text, old[i].stopped) == (g.text, g.stopped)
    # the drop loop computed fewer row-steps than decoding every row to the batch's longest answer
    assert dropped.row_steps < kept.row_steps
    assert dropped.row_steps == sum(g.output_tokens + g.stopped for g in alone)


def test_sampling_with_seeds_does_not_depend_on_the_batch(tiny, prompts):
    model, tok = tiny
    seeds = [1000 + i for i in range(len(prompts))]
    kw = dict(max_new_tokens=8, progress=False, do_sample=True, temperature=1.0, top_p=0.9, decode="drop_finished")
    by_batch = {bs: generate(model, tok, prompts, batch_size=bs, sample_seeds=seeds, **kw) for bs in (1, 3)}
    assert by_batch[1] == by_batch[3]
    other = generate(model, tok, prompts, batch_size=3, sample_seeds=[s + 1 for s in seeds], **kw)
    assert other != by_batch[3]                                  # the seeds matter
    greedy = generate(model, tok, prompts, batch_size=3, max_new_tokens=8, progress=False)
    assert by_batch[3] != greedy


def test_score_next_token_equals_a_full_forward(tiny, prompts):
    import torch

    from factuality.generation import score_next_token

    model, tok = tiny
    seqs = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    want = [tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "E", "1")]
    groups = [[0, 1, 2, 3], [4, 5, 6]]                          # each group prefilled once, then batched
    got = score_next_token(model, seqs, want, groups=groups, batch_size=2, pad_id=tok.pad_token_id)
    for s, row in zip(seqs, got):
        with torch.no_grad():
            ref = torch.log_softmax(model(torch.tensor([s])).logits[0, -1].float(), -1)[want].tolist()
        assert row == pytest.approx(ref, abs=1e-4)
    with pytest.raises(ValueError, match="every sequence index"):
        score_next_token(model, seqs, want, groups=[[0, 1]])
