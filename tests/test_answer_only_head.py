"""The LM head only where the loss is (factuality/heads.py): the same loss and LoRA gradients as a
plain full-logits forward and as TRL's own fused head, in every batching mode, on a tiny Llama
(with a LoRA on lm_head too), a tiny Gemma-2 (final-logit soft-capping) and a model with Gemma-2's
256,000-entry vocabulary; DPO log-probs equal a plain forward's; the head is applied only at label
positions; tiny train_sft / train_dpo runs with the option on."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from factuality import heads
from factuality.config import ConfigError, parse_config
from factuality.modeling import load_model, load_tokenizer
from factuality.prompts import DEFAULT_TEMPLATES
from factuality.records import EXAMPLE, write_jsonl
from factuality.stages.sft import SFT_SPEC, build_dataset, build_trainer
from factuality.testing import make_example, make_large_vocab_model, make_tiny_model

ROOT = Path(__file__).resolve().parent.parent
SFT_TINY = ROOT / "configs" / "sft_tiny.yaml"
MODEL_KEYS = ("input_ids", "attention_mask", "position_ids", "labels")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tiny_model_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("head-models")
    return {"llama": tiny_model_dir,
            "gemma2": make_tiny_model(d / "gemma2", arch="gemma2"),  # final_logit_softcapping 30
            "vocab256k": make_large_vocab_model(d / "vocab256k")}


def examples(n: int = 4) -> list[dict]:
    return [make_example(i, source=s, answerable=i % 3 != 2, gold_position=i % 3, n_chunks=2 + i % 3, split="train")
            for i, s in zip(range(n), ["nq", "hotpotqa", "popqa", "fever"] * 2)]


def sft_setup(model_dir: Path, batching: str, answer_only: bool, tmp: Path, n: int = 3, **options):
    """A trainer (fresh model, LoRA with seeded random A and B) and one collated batch of n examples."""
    cfg = parse_config(SFT_SPEC, ["-c", str(SFT_TINY)], model_name_or_path=str(model_dir), val_file="",
                       output_dir=str(tmp / f"run-{batching}-{answer_only}"), batching=batching,
                       answer_only_head=answer_only, **options)
    tok = load_tokenizer(str(model_dir))
    ds, _ = build_dataset(examples(n), tok, cfg.max_length, DEFAULT_TEMPLATES, "head-test")
    trainer = build_trainer(cfg, ds, None, tok, model=load_model(cfg.model, is_trainable=True), save_strategy="no")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in sorted(trainer.model.named_parameters()):
            if "lora_" in name or "modules_to_save" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    batch = trainer._prepare_inputs(trainer.data_collator([ds[i] for i in range(len(ds))]))
    return trainer, batch


def lora_grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def trainer_loss_and_grads(trainer, batch):
    trainer.model.train()
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    return loss.detach(), lora_grads(trainer.model)


def plain_loss_and_grads(trainer, batch):
    """The model's own forward: full logits at every position, its own shifted cross-entropy."""
    trainer.model.train()
    trainer.model.zero_grad(set_to_none=True)
    out = trainer.model(**{k: v for k, v in batch.items() if k in MODEL_KEYS}, use_cache=False)
    assert out.logits.shape[1] == batch["input_ids"].shape[1]  # the plain forward did compute every position
    out.loss.backward()
    return out.loss.detach(), lora_grads(trainer.model)


def assert_same(a, b, rtol=1e-4, atol=1e-6):
    (la, ga), (lb, gb) = a, b
    torch.testing.assert_close(la, lb, rtol=rtol, atol=atol)
    assert ga.keys() == gb.keys() and ga
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


# ------------------------------------------------------------------ SFT: loss and gradients
@pytest.mark.parametrize("arch", ["llama", "gemma2", "vocab256k"])
@pytest.mark.parametrize("batching", ["padded", "padding_free", "packed"])
def test_sft_loss_and_lora_grads_equal_full_logits_and_trl(models, tmp_path, arch, batching):
    n = 2 if arch == "vocab256k" else 3  # full logits of 256,000 entries are slow on a CPU
    trainer, batch = sft_setup(models[arch], batching, answer_only=True, tmp=tmp_path, n=n)
    assert trainer.lm_head_mode == "answer-only"
    if batching != "padded":
        assert batch["input_ids"].shape[0] == 1 and "position_ids" in batch  # one flat row
    ours = trainer_loss_and_grads(trainer, batch)
    assert_same(ours, plain_loss_and_grads(trainer, batch))
    if arch == "vocab256k" and batching != "padding_free":
        return  # TRL's CPU head scores every position of a 256,000 vocabulary: slow; compared in one mode
    trl_trainer, trl_batch = sft_setup(models[arch], batching, answer_only=False, tmp=tmp_path, n=n)
    assert trl_trainer.lm_head_mode.startswith("TRL fused head")
    assert torch.equal(trl_batch["input_ids"], batch["input_ids"])
    assert_same(ours, trainer_loss_and_grads(trl_trainer, trl_batch))


def test_a_trained_copy_of_lm_head_gets_the_same_gradients(models, tmp_path):
    """lm_head in lora_modules_to_save (a trained copy of the head, PEFT's ModulesToSaveWrapper): the
    head module is called, so its copy gets the gradients of a plain forward."""
    trainer, batch = sft_setup(models["llama"], "padding_free", answer_only=True, tmp=tmp_path,
                               lora_modules_to_save=["lm_head"])
    ours = trainer_loss_and_grads(trainer, batch)
    head_grads = [g for n, g in ours[1].items() if "lm_head" in n]
    assert head_grads and all(g.abs().sum() > 0 for g in head_grads)
    assert_same(ours, plain_loss_and_grads(trainer, batch))


def test_qlora_4bit_base_gives_the_same_loss_and_grads(models, tmp_path):
    """QLoRA: the 4-bit (bitsandbytes NF4, run here on the CPU) base's answer-only loss and LoRA
    gradients equal its plain forward's."""
    pytest.importorskip("bitsandbytes")
    trainer, batch = sft_setup(models["llama"], "padding_free", answer_only=True, tmp=tmp_path, load_in_4bit=True)
    assert trainer.lm_head_mode == "answer-only"
    (loss, grads), (plain_loss, plain_grads) = trainer_loss_and_grads(trainer, batch), plain_loss_and_grads(trainer, batch)
    torch.testing.assert_close(loss, plain_loss, rtol=1e-4, atol=1e-6)
    assert grads.keys() == plain_grads.keys() and grads
    for name, g in grads.items():  # bf16 gradients (QLoRA's compute dtype): within bf16 rounding, tensor by tensor
        assert (g.float() - plain_grads[name].float()).norm() <= 1e-2 * plain_grads[name].float().norm(), name


def test_lora_on_lm_head_is_a_clear_config_error():
    with pytest.raises(ConfigError, match="lm_head"):
        parse_config(SFT_SPEC, ["-c", str(SFT_TINY), "--lora-target-modules", "q_proj,lm_head"])


def test_head_runs_only_at_label_positions(models, tmp_path):
    trainer, batch = sft_setup(models["vocab256k"], "padded", answer_only=True, tmp=tmp_path)
    seen: list[int] = []
    head = trainer.model.get_base_model().get_output_embeddings()
    hook = head.register_forward_hook(lambda mod, inp, out: seen.append(out.shape[:-1].numel()))
    try:
        trainer.compute_loss(trainer.model, dict(batch))
    finally:
        hook.remove()
    answer = int((batch["labels"][:, 1:] != heads.IGNORE_INDEX).sum())
    assert sum(seen) == answer  # each answer position once (in chunks of at most CHUNK_ELEMENTS logits)
    assert len(seen) > 1 and max(seen) * 256_000 <= heads.CHUNK_ELEMENTS
    assert answer < batch["attention_mask"].sum() / 5  # the point: a small share of the tokens


# ------------------------------------------------------------------ the head itself
def test_chunked_head_equals_one_pass_with_softcap():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 1000, bias=False)
    hidden = torch.randn(37, 16, requires_grad=True)
    targets = torch.randint(0, 1000, (37,))
    want = heads.OUTPUT_FIELDS
    one = heads.answer_log_probs(hidden, targets, head, softcap=5.0, want=want)
    (-one[0].sum()).backward()
    g_one = (hidden.grad.clone(), head.weight.grad.clone())
    hidden.grad, head.weight.grad = None, None
    chunked = heads.answer_log_probs(hidden, targets, head, softcap=5.0, want=want, chunk_elements=8 * 1000)
    (-chunked[0].sum()).backward()
    for a, b in zip(one, chunked):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(g_one[0], hidden.grad)
    torch.testing.assert_close(g_one[1], head.weight.grad)
    z = 5.0 * torch.tanh(head(hidden) / 5.0)
    ref = torch.log_softmax(z, -1)
    torch.testing.assert_close(one[0], ref.gather(-1, targets[:, None]).squeeze(-1))
    torch.testing.assert_close(one[1], -(ref.exp() * ref).sum(-1))  # entropy
    assert torch.equal(one[4], z.argmax(-1) == targets)


def test_models_that_scale_logits_keep_trls_head(models):
    model = load_model(str(models["llama"]))
    model.config.logit_scale = 0.5
    assert "logit_scale" in heads.add_answer_only_head(model)
    assert not getattr(model, "_answer_only_head", False)


# ------------------------------------------------------------------ DPO log-probs
@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_dpo_log_probs_equal_a_plain_forward(models, arch):
    """The per-token log-probs the DPO loss sums (completion positions, chosen and rejected rows,
    right-padded) equal log_softmax of a plain forward's logits, with gradient to the same weights."""
    model = load_model(str(models[arch]))
    heads.add_answer_only_head(model)
    torch.manual_seed(0)
    ids = torch.randint(5, 300, (4, 40))
    mask = torch.ones_like(ids)
    mask[2:, 33:] = 0  # two shorter (padded) rows
    completion = torch.zeros_like(ids)
    completion[:, 25:] = 1
    completion &= mask
    labels = ids.masked_fill(completion == 0, -100)
    out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    ref = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1) * completion[:, 1:]
    torch.testing.assert_close(out.log_probs, ref, rtol=1e-4, atol=1e-5)
    assert torch.equal(out.label_mask, completion[:, 1:].bool())
    out.log_probs.sum().backward()
    g_ours = model.get_output_embeddings().weight.grad.clone()
    model.zero_grad()
    ref.sum().backward()
    torch.testing.assert_close(g_ours, model.get_output_embeddings().weight.grad, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ options
def test_use_liger_kernel_is_a_clear_error_without_cuda_or_package():
    with pytest.raises(ConfigError, match="use_liger_kernel"):
        parse_config(SFT_SPEC, ["-c", str(SFT_TINY), "--use-liger-kernel", "true"])


def test_answer_only_head_is_an_option_of_both_stages():
    from factuality.stages.dpo import DPO_SPEC

    assert parse_config(SFT_SPEC, ["-c", str(SFT_TINY)]).run.answer_only_head is True
    cfg = parse_config(DPO_SPEC, ["-c", str(ROOT / "configs" / "dpo_tiny.yaml"), "--answer-only-head", "false"])
    assert cfg.run.answer_only_head is False


# ------------------------------------------------------------------ end to end
def test_tiny_train_sft_and_train_dpo_with_the_option_on(models, tmp_path):
    from factuality.stages import dpo, sft
    from tests.test_dpo import make_pairs

    train = examples(8)
    write_jsonl(tmp_path / "train.jsonl", train, EXAMPLE)
    cfg = parse_config(sft.SFT_SPEC, ["-c", str(SFT_TINY)], model_name_or_path=str(models["llama"]),
                       train_file=str(tmp_path / "train.jsonl"), val_file="", output_dir=str(tmp_path / "sft"),
                       save_strategy="no", batching="padding_free")
    card = sft.run(cfg)
    assert card["lm_head"] == "answer-only" and card["global_step"] == 4
    losses = card["losses"]["train_loss_log"]
    assert losses[-1] < losses[0]

    tok = load_tokenizer(str(models["llama"]))
    from factuality.records import PREFERENCE

    write_jsonl(tmp_path / "pairs.jsonl", make_pairs(tok, 6, 2), PREFERENCE)
    dcfg = parse_config(dpo.DPO_SPEC, ["-c", str(ROOT / "configs" / "dpo_tiny.yaml")],
                        model_name_or_path=str(models["llama"]), sft_adapter=str(tmp_path / "sft"),
                        pairs_file=str(tmp_path / "pairs.jsonl"), output_dir=str(tmp_path / "dpo"), save_strategy="no",
                        ref_cache_dir=str(tmp_path / "refcache"))
    dcard = dpo.run(dcfg)
    assert dcard["lm_head"] == "answer-only" and dcard["global_step"] == 4
    assert dcard["rewards"]["final_train"]["rewards/margins"] is not None


# ------------------------------------------------------------------ the reward model's feature pass
def test_reward_feature_pass_stops_at_the_last_hidden_state(models, monkeypatch):
    """features.load_body drops the output layer and extract_features reads the body's last hidden
    state: the vocabulary projection never runs (the features equal a plain forward's last hidden state)."""
    from factuality.rm import features
    from factuality.modeling import ModelOptions

    model = load_model(str(models["vocab256k"]))
    calls: list[int] = []
    model.get_output_embeddings().register_forward_hook(lambda *a: calls.append(1))
    monkeypatch.setattr(features, "load_model", lambda opts: model)
    body = features.load_body(ModelOptions(model_name_or_path=str(models["vocab256k"]), dtype="float32"))
    assert model.lm_head is None
    tok = load_tokenizer(str(models["vocab256k"]))
    tokens = features.Tokens(tok, max_length=128, max_response_tokens=32)
    prompts, responses = ["Question: who sang it?"] * 2 + ["Evidence: [E1] text."], ['{"answer": "x"}', "no", "yes"]
    feats = features.extract_features(body, tokens, prompts, responses, batch_size=2)
    assert calls == [] and feats.shape == (3, body.config.hidden_size)
    ids = torch.tensor([tokens.full(prompts[2], responses[2])])
    with torch.no_grad():
        last = body(input_ids=ids).last_hidden_state[0, -1]
    torch.testing.assert_close(torch.from_numpy(feats[2]), last, rtol=1e-4, atol=1e-5)
