"""SFT on the tiny random model: masking in the real collated batch, LoRA-only updates, 4-bit,
config errors, resume, evidence-side truncation. Tests drive factuality.stages.sft.run() directly."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from factuality.config import ConfigError, parse_config
from factuality.prompts import (
    completion_text,
    gold_target,
    render_prompt,
    tokenize_prompt,
)
from factuality.records import EXAMPLE, write_jsonl
from factuality.stages.sft import (
    IGNORE_INDEX,
    SFT_SPEC,
    build_dataset,
    build_trainer,
)
from factuality.stages.sft import run as train_sft
from factuality.testing import make_example
from factuality.training import find_last_checkpoint

ROOT = Path(__file__).resolve().parent.parent
TINY_YAML = ROOT / "configs" / "sft_tiny.yaml"


@pytest.fixture()
def data(tmp_path):
    train = [make_example(i, source=s, answerable=(i % 3 != 2), gold_position=i % 3, split="train")
             for i, s in enumerate(["nq", "hotpotqa", "popqa", "fever"] * 3)]
    val = [make_example(100 + i, gold_position=i % 3, split="val") for i in range(4)]
    write_jsonl(tmp_path / "train.jsonl", train, EXAMPLE)
    write_jsonl(tmp_path / "val.jsonl", val, EXAMPLE)
    return tmp_path, train


def tiny_cfg(tiny_model_dir, tmp_path, *argv, run="default", **overrides):
    kw = dict(model_name_or_path=str(tiny_model_dir), train_file=str(tmp_path / "train.jsonl"),
              val_file=str(tmp_path / "val.jsonl"), output_dir=str(tmp_path / "runs" / run))
    kw.update(overrides)
    return parse_config(SFT_SPEC, ["-c", str(TINY_YAML), *argv], **kw)


def tokenizer_for(cfg):
    from factuality.modeling import load_tokenizer

    return load_tokenizer(cfg.model_name_or_path)


# ------------------------------------------------------------------ configs
@pytest.mark.parametrize("name", ["sft_gemma2.yaml", "sft_cpu.yaml", "sft_tiny.yaml"])
def test_shipped_configs_parse(name):
    cfg = parse_config(SFT_SPEC, ["-c", str(ROOT / "configs" / name)])
    assert cfg.config_path.endswith(name)


def test_gemma2_config_is_the_seed_recipe():
    cfg = parse_config(SFT_SPEC, ["-c", str(ROOT / "configs" / "sft_gemma2.yaml")])
    assert cfg.model_name_or_path == "google/gemma-2-9b" and cfg.load_in_4bit and cfg.dtype == "bfloat16"
    assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout) == (16, 32, 0.05)
    assert set(cfg.lora_target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert (cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps) == (1, 64)
    assert (cfg.learning_rate, cfg.num_train_epochs, cfg.max_length) == (1.5e-5, 2, 2048)
    assert (cfg.warmup_steps, cfg.weight_decay, cfg.lr_scheduler_type, cfg.seed) == (0.03, 0.1, "cosine", 42)
    assert cfg.save_total_limit == 2


def test_cli_overrides_yaml(tmp_path):
    cfg = parse_config(SFT_SPEC, ["-c", str(TINY_YAML), "--lora-r", "4", "--lora-target-modules", "q_proj,v_proj"])
    assert cfg.lora_r == 4 and cfg.lora_target_modules == ["q_proj", "v_proj"] and cfg.lora_alpha == 16


def test_bad_config_key_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY_YAML.read_text() + "lora_rank: 8\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'lora_rank'; did you mean 'lora_r'\?"):
        parse_config(SFT_SPEC, ["-c", str(bad)])
    with pytest.raises(ConfigError, match="unknown option --lora-rnak; did you mean --lora-r"):
        parse_config(SFT_SPEC, ["-c", str(TINY_YAML), "--lora-rnak", "8"])
    with pytest.raises(ConfigError, match="batching"):
        parse_config(SFT_SPEC, ["-c", str(TINY_YAML)], batching="sorted")


def test_missing_data_file_is_a_clear_error(tiny_model_dir, tmp_path):
    cfg = tiny_cfg(tiny_model_dir, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"train.jsonl: train file not found; run `python build_data.py`"):
        train_sft(cfg)


# ------------------------------------------------------------------ the batch the trainer really uses
def test_collated_batch_masks_prompt_and_keeps_answer(tiny_model_dir, data):
    tmp_path, train = data
    cfg = tiny_cfg(tiny_model_dir, tmp_path, max_samples=6)
    tok = tokenizer_for(cfg)
    ds, _ = build_dataset(train[:6], tok, cfg.max_length, __import__("factuality.prompts").prompts.DEFAULT_TEMPLATES)
    trainer = build_trainer(cfg, ds, None, tok)
    batch = next(iter(trainer.get_train_dataloader()))
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert ids.shape[0] == cfg.per_device_train_batch_size
    by_prompt = {tuple(tokenize_prompt(tok, render_prompt(ex, tok))): ex for ex in train[:6]}
    for row in range(ids.shape[0]):
        n = int(mask[row].sum())
        assert (labels[row, n:] == IGNORE_INDEX).all(), "padding is not trained on"
        answer_pos = (labels[row, :n] != IGNORE_INDEX).nonzero().flatten()
        start = int(answer_pos[0])
        assert answer_pos.tolist() == list(range(start, n)), "labels are one contiguous block at the end"
        ex = by_prompt[tuple(ids[row, :start].tolist())]  # everything before the answer is exactly the prompt
        assert (labels[row, start:n] == ids[row, start:n]).all()
        answer = tok.decode(labels[row, start:n].tolist())
        assert answer == completion_text(ex, tok) and answer.startswith(gold_target(ex))
        assert int(labels[row, n - 1]) == tok.eos_token_id, "the model learns to stop"


# ------------------------------------------------------------------ training
def test_every_lora_weight_moves_and_base_weights_do_not(tiny_model_dir, data):
    tmp_path, train = data
    cfg = tiny_cfg(tiny_model_dir, tmp_path)
    tok = tokenizer_for(cfg)
    from factuality.prompts import DEFAULT_TEMPLATES

    ds, _ = build_dataset(train, tok, cfg.max_length, DEFAULT_TEMPLATES)
    trainer = build_trainer(cfg, ds, None, tok, save_strategy="no")
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    lora = [n for n in before if "lora_" in n]
    assert lora and all(trainer.model.get_parameter(n).requires_grad for n in lora)
    assert not any(p.requires_grad for n, p in trainer.model.named_parameters() if "lora_" not in n)
    trainer.train()
    after = dict(trainer.model.named_parameters())
    unmoved = [n for n in lora if torch.equal(before[n], after[n].detach())]
    assert not unmoved, f"LoRA weights that did not change: {unmoved[:5]}"
    moved_base = [n for n in before if "lora_" not in n and not torch.equal(before[n], after[n].detach())]
    assert not moved_base, f"base weights changed: {moved_base[:5]}"


def test_main_saves_adapter_tokenizer_config_and_run_card(tiny_model_dir, data):
    tmp_path, _ = data
    cfg = tiny_cfg(tiny_model_dir, tmp_path, run="r1")
    card = train_sft(cfg)
    run = tmp_path / "runs" / "r1"
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "config.yaml",
                 "run_card.json", "prompts/system.txt"):
        assert (run / name).exists(), name
    saved = json.loads((run / "run_card.json").read_text())
    assert saved["global_step"] == 4 and saved["seed"] == 0
    modules = json.loads((run / "adapter_config.json").read_text())["target_modules"]
    assert modules == sorted(modules), "PEFT's set order would change the adapter's fingerprint between runs"
    assert set(saved["inputs"]) == {cfg.train_file, cfg.val_file, cfg.config_path}
    assert saved["losses"]["final_train_loss"] < saved["losses"]["first_train_loss"], "the loss went down"
    assert saved["losses"]["final_eval_loss"] is not None
    assert saved["data"]["train"]["kept"] == 12 and saved["data"]["train"]["truncated"] == 0
    assert saved["versions"]["trl"] and card["losses"] == saved["losses"]
    again = parse_config(SFT_SPEC, ["-c", str(run / "config.yaml")])  # the resolved config is loadable
    assert again.lora_r == cfg.lora_r and again.model_name_or_path == cfg.model_name_or_path
    from factuality.modeling import load_model

    model = load_model(cfg.model, adapter_path=run)  # what the evaluator does
    assert type(model).__name__ == "PeftModelForCausalLM"
    with pytest.raises(FileExistsError, match="--resume"):
        train_sft(cfg)  # same run name again without --resume/--overwrite


def test_4bit_qlora_trains_on_cpu(tiny_model_dir, data):
    tmp_path, _ = data
    card = train_sft(tiny_cfg(tiny_model_dir, tmp_path, "--load-in-4bit", "--max-steps", "3", run="q4"))
    assert card["global_step"] == 3
    assert all(torch.isfinite(torch.tensor(card["losses"]["train_loss_log"])))
    assert card["config"]["model"]["load_in_4bit"]
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "runs" / "q4" / "adapter_model.safetensors")
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b), "LoRA B starts at zero; it must have moved"


def test_resume_continues_without_loss_or_duplication(tiny_model_dir, data):
    tmp_path, _ = data
    from safetensors.torch import load_file

    full = train_sft(tiny_cfg(tiny_model_dir, tmp_path, run="full"))
    run = tmp_path / "runs" / "full"
    want = load_file(run / "adapter_model.safetensors")
    # "kill" the run after its step-2 checkpoint: remove everything written later
    for p in list(run.iterdir()):
        if p.name != "checkpoint-2":
            __import__("shutil").rmtree(p) if p.is_dir() else p.unlink()
    assert find_last_checkpoint(run).name == "checkpoint-2"
    resumed = train_sft(tiny_cfg(tiny_model_dir, tmp_path, "--resume", run="full"))
    assert resumed["resumed_from"].endswith("checkpoint-2") and resumed["global_step"] == 4
    state = json.loads((run / "checkpoint-4" / "trainer_state.json").read_text())
    steps = [h["step"] for h in state["log_history"] if "loss" in h]
    assert steps == [1, 2, 3, 4], steps
    got = load_file(run / "adapter_model.safetensors")
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5)
    assert resumed["losses"]["final_train_loss"] == pytest.approx(full["losses"]["final_train_loss"], rel=1e-4)


def test_resume_without_checkpoint_is_an_error(tiny_model_dir, data):
    tmp_path, _ = data
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        train_sft(tiny_cfg(tiny_model_dir, tmp_path, "--resume", run="never"))


# ------------------------------------------------------------------ truncation
def test_truncation_never_cuts_the_answer_and_is_counted(tiny_model_dir, caplog):
    from factuality.prompts import DEFAULT_TEMPLATES
    from tests.test_prompts import long_example

    cfg_tok = __import__("factuality.modeling").modeling.load_tokenizer(str(tiny_model_dir))
    examples = [long_example(), long_example(answerable=False), make_example(3), long_example(question="why " * 600)]
    max_length = 460  # the short make_example fits whole; the long ones do not
    with caplog.at_level("INFO", logger="factuality.stages.sft"):
        ds, stats = build_dataset(examples, cfg_tok, max_length, DEFAULT_TEMPLATES)
    assert stats.examples == 4 and stats.kept == 3 and stats.too_long == 1, stats
    assert stats.too_long_ids == [examples[3]["id"]]
    assert stats.truncated == 2 and stats.chunks_dropped + stats.chunks_shortened >= 2
    assert "2 with evidence cut" in caplog.text and "1 too long" in caplog.text
    for row, ex in zip(ds, examples[:3]):
        assert len(row["input_ids"]) <= max_length
        answer = [t for t in row["labels"] if t != IGNORE_INDEX]
        assert cfg_tok.decode(answer) == completion_text(ex, cfg_tok), "the whole answer is kept"


def test_merge_adapter_writes_a_plain_model(tiny_model_dir, data):
    tmp_path, _ = data
    card = train_sft(tiny_cfg(tiny_model_dir, tmp_path, "--max-steps", "1", "--merge-adapter", run="m"))
    merged = Path(card["merged_dir"])
    assert (merged / "config.json").exists() and not (merged / "adapter_config.json").exists()
    from factuality.modeling import load_model

    ids = torch.tensor([[5, 6, 7, 8]])
    plain = load_model(str(merged))(input_ids=ids).logits
    with_adapter = load_model(str(tiny_model_dir), adapter_path=tmp_path / "runs" / "m")(input_ids=ids).logits
    torch.testing.assert_close(plain, with_adapter, rtol=1e-4, atol=1e-4)


def test_padding_free_batches_give_the_padded_loss(tiny_model_dir, data):
    """padding_free flattens a batch into one row with position_ids; on sdpa the attention must stay
    per-example (block-diagonal) and the answer-only labels intact, so the loss equals the padded one."""
    from factuality.prompts import DEFAULT_TEMPLATES

    tmp_path, train = data
    losses = {}
    for batching in ("padded", "padding_free"):
        cfg = tiny_cfg(tiny_model_dir, tmp_path, "--batching", batching, per_device_train_batch_size=3)
        tok = tokenizer_for(cfg)
        ds, _ = build_dataset(train[:3], tok, cfg.max_length, DEFAULT_TEMPLATES)
        trainer = build_trainer(cfg, ds, None, tok, save_strategy="no")
        feats = [trainer.train_dataset[i] for i in range(3)]
        batch = trainer.data_collator(feats)
        assert ("attention_mask" in batch) == (batching == "padded")
        n_answer = sum(sum(1 for t in f["labels"] if t != IGNORE_INDEX) for f in feats)
        assert int((batch["labels"] != IGNORE_INDEX).sum()) == n_answer, "every answer token is trained on"
        keys = ("input_ids", "attention_mask", "labels", "position_ids")
        with torch.no_grad():
            losses[batching] = float(trainer.model.eval()(**{k: v for k, v in batch.items() if k in keys}).loss)
    assert losses["padding_free"] == pytest.approx(losses["padded"], rel=1e-4), losses
