"""One stage shape: strict configs over the libraries' dataclasses, the notebook's files as
written, one error line per expected error, and rank-safe runs with two real processes."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from factuality.config import ConfigError, coerce, fields_of, load_yaml, parse_config
from factuality.records import EXAMPLE, write_jsonl
from factuality.stages.sft import SFT_SPEC
from factuality.testing import make_example

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
NOTEBOOK_SFT = FIXTURES / "notebook_sft_gemma2.yaml"   # Step 4 of the notebook, byte for byte
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
       "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def write_data(d: Path, n_train: int = 12) -> None:
    (d / "data" / "processed").mkdir(parents=True, exist_ok=True)
    train = [make_example(i, source=s, answerable=(i % 3 != 2), gold_position=i % 3, split="train")
             for i, s in enumerate((["nq", "hotpotqa", "popqa", "fever"] * 8)[:n_train])]
    val = [make_example(100 + i, gold_position=i % 3, split="val") for i in range(4)]
    write_jsonl(d / "data" / "processed" / "train.jsonl", train, EXAMPLE)
    write_jsonl(d / "data" / "processed" / "val.jsonl", val, EXAMPLE)


# ------------------------------------------------------------------ configs
def test_notebook_sft_yaml_is_read_with_one_line_per_renamed_key(caplog):
    with caplog.at_level("INFO", logger="factuality.config"):
        cfg = parse_config(SFT_SPEC, ["-c", str(NOTEBOOK_SFT)])
    assert cfg.model.model_name_or_path == "google/gemma-2-9b" and cfg.model.load_in_4bit
    assert (cfg.model.lora_r, cfg.model.lora_alpha, cfg.model.lora_dropout) == (16, 32, 0.05)
    assert len(cfg.model.lora_target_modules) == 7 and cfg.model.attn_implementation == "eager"
    assert (cfg.train.per_device_train_batch_size, cfg.train.gradient_accumulation_steps) == (1, 64)
    assert (cfg.train.learning_rate, cfg.train.num_train_epochs, cfg.train.max_length) == (1.5e-5, 2, 2048)
    assert cfg.train.warmup_steps == 0.03 and cfg.train.output_dir == "checkpoints/sft/gemma2-9b"
    assert (cfg.run.train_file, cfg.run.val_file, cfg.run.max_val_samples) == (
        "data/processed/train.jsonl", "data/processed/val.jsonl", 500)
    assert cfg.run.prompts_dir is None  # template: default = the built-in templates
    renamed = [r.getMessage() for r in caplog.records if "renamed" in r.getMessage()]
    for old, new in (("model_name", "model_name_or_path"), ("lora.r", "lora_r"), ("max_seq_length", "max_length"),
                     ("warmup_ratio", "warmup_steps"), ("train_path", "train_file"), ("template", "prompts_dir")):
        assert sum(f"{old} -> {new}" in m for m in renamed) == 1, (old, renamed)


def test_notebook_sft_yaml_verbatim_trains_the_tiny_model(tiny_model_dir, tmp_path, monkeypatch):
    write_data(tmp_path)
    monkeypatch.chdir(tmp_path)  # its data paths are relative: data/processed/{train,val}.jsonl
    from factuality.stages.sft import run

    cfg = parse_config(SFT_SPEC, ["-c", str(NOTEBOOK_SFT)], model_name_or_path=str(tiny_model_dir),
                       output_dir=str(tmp_path / "out"))
    card = run(cfg)
    assert card["global_step"] == 2  # 12 examples, 1 x 64 per step -> 1 step/epoch, 2 epochs
    assert card["config"]["model"]["load_in_4bit"] and (tmp_path / "out" / "adapter_model.safetensors").exists()
    saved = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(tiny_model_dir)


def test_every_sftconfig_field_is_reachable_from_yaml(tmp_path):
    from trl import SFTConfig

    spec = SFT_SPEC.get()
    known = {n for p in spec.parts for n in fields_of(p.cls)}
    lib = fields_of(SFTConfig)
    assert set(lib) <= known
    values = {}
    for name, f in lib.items():
        default = f.default if f.default is not dataclasses.MISSING else None
        if default is None or dataclasses.is_dataclass(default):
            continue
        values[name] = getattr(default, "value", default)
    path = tmp_path / "all.yaml"
    path.write_text(yaml.safe_dump(values))
    flat = load_yaml(path, known)
    for name, value in flat.items():
        assert coerce(value, lib[name].type, name) == values[name], name
    # options that the old hand-copied list could not reach, set for real and built into SFTConfig
    extra = tmp_path / "extra.yaml"
    extra.write_text("gradient_checkpointing_kwargs: {use_reentrant: false}\nreport_to: [tensorboard]\n"
                     "log_level: warning\nddp_find_unused_parameters: false\npush_to_hub: false\n"
                     "lr_scheduler_kwargs: {min_lr_rate: 0.1}\nlr_scheduler_type: cosine_with_min_lr\n"
                     "neftune_noise_alpha: 5\nmax_steps: 3\n")
    cfg = parse_config(SFT_SPEC, ["-c", str(extra), "--save-strategy", "no", "--adam-beta2", "0.95"])
    assert cfg.train.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert cfg.train.report_to == ["tensorboard"] and cfg.train.log_level == "warning"
    assert cfg.train.ddp_find_unused_parameters is False and cfg.train.neftune_noise_alpha == 5
    assert cfg.train.lr_scheduler_kwargs == {"min_lr_rate": 0.1} and cfg.train.adam_beta2 == 0.95
    assert cfg.train.max_steps == 3 and str(getattr(cfg.train.save_strategy, "value", cfg.train.save_strategy)) == "no"


@pytest.mark.parametrize("text, match", [
    ("lora_rank: 8\n", r"unknown key 'lora_rank'; did you mean 'lora_r'\?"),
    ("learning_rat: 0.1\n", r"unknown key 'learning_rat'; did you mean 'learning_rate'\?"),
    ("max_steps: true\n", r"max_steps: True is not a number"),
    ("learning_rate: -0.001\n", r"learning_rate: -0.001 must be > 0"),
    ("per_device_train_batch_size: 0\n", r"per_device_train_batch_size: 0 must be >= 1"),
    ("lora_r: -4\n", r"lora_r: -4 must be >= 1"),
    ("max_samples: -1\n", r"max_samples: -1 must be >= 1"),
    ("", r"the config file is empty"),
    ("lr_scheduler_type: cosinus\n", r"lr_scheduler_type: 'cosinus' is not one of"),
])
def test_bad_values_name_file_and_key(tmp_path, text, match):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        parse_config(SFT_SPEC, ["-c", str(p)])
    assert str(p) in str(e.value)


def test_saved_run_config_loads_back_to_the_same_options(tiny_model_dir, tmp_path):
    from factuality.stages.sft import SFT_TRAIN_DEFAULTS
    from factuality.training import flat_config

    cfg = parse_config(SFT_SPEC, ["-c", str(ROOT / "configs" / "sft_cpu.yaml"), "--neftune-noise-alpha", "5"])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(flat_config(cfg, SFT_TRAIN_DEFAULTS)))
    again = parse_config(SFT_SPEC, ["-c", str(path)])
    a, b = again.to_dict(), cfg.to_dict()
    assert a["run"].pop("config_path") == str(path) and b["run"].pop("config_path").endswith("sft_cpu.yaml")
    for part in a:
        diff = {k: (a[part][k], b[part][k]) for k in a[part] if a[part][k] != b[part][k]}
        assert not diff, (part, diff)


# ------------------------------------------------------------------ expected errors: one line, exit 2
ERROR_CASES = [
    (["build_data.py", "--sources", "nosuch"], "unknown source 'nosuch'"),
    (["build_data.py", "--seed", "seven"], "--seed: 'seven' is not a valid int"),
    (["build_data.py", "-c", "missing.yaml"], "missing.yaml: config file not found"),
    (["train_sft.py", "--train-file", "nosuch.jsonl"], "nosuch.jsonl: train file not found"),
    (["train_sft.py", "--lora-rnak", "8"], "unknown option --lora-rnak; did you mean --lora-r"),
    (["train_sft.py", "--learning-rate", "-1"], "--learning-rate: -1.0 must be > 0"),
    (["train_sft.py", "--model-name-or-path", "./no/such/model", "--train-file", "{train}"], "no such local model"),
    (["evaluate_sft.py", "--predictions", "nosuch.jsonl", "--test-data", "{train}", "--allow-train-split"], "nosuch.jsonl"),
    (["evaluate_sft.py", "--predictions", "nosuch.jsonl", "--test-data", "{train}"], "are from the train split"),
    (["evaluate_sft.py"], "pass --model-path"),
    (["evaluate_sft.py", "--systems", "dpo", "--test-data", "{train}"], "--systems 'dpo': expected tag=path"),
    (["prompt_schema.py", "render", "--data", "nosuch.jsonl"], "nosuch.jsonl"),
    (["prompt_schema.py", "parse"], "parse needs the model output"),
]


@pytest.mark.parametrize("argv, needle", ERROR_CASES, ids=[" ".join(a) for a, _ in ERROR_CASES])
def test_expected_errors_exit_2_with_one_line(tmp_path, argv, needle):
    write_data(tmp_path)
    argv = [a.format(train=tmp_path / "data" / "processed" / "train.jsonl") for a in argv]
    out = subprocess.run([sys.executable, str(ROOT / argv[0]), *argv[1:]], cwd=tmp_path, env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    lines = [ln for ln in out.stderr.splitlines() if "error:" in ln]
    assert len(lines) == 1 and needle in lines[0], out.stderr[-2000:]


def test_traceback_switch_shows_the_traceback(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "train_sft.py"), "--train-file", "nosuch.jsonl", "--traceback"],
                         cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "Traceback (most recent call last)" in out.stderr


# ------------------------------------------------------------------ several processes
PROBE = '''
import hashlib, os, runpy, sys
import trl
orig = trl.SFTTrainer.training_step
def step(self, model, inputs, *a, **k):
    h = hashlib.sha256(inputs["input_ids"].cpu().numpy().tobytes()).hexdigest()[:16]
    with open(os.path.join(os.environ["PROBE_DIR"], "rank%s.txt" % os.environ["RANK"]), "a") as f:
        f.write(h + "\\n")
    return orig(self, model, inputs, *a, **k)
trl.SFTTrainer.training_step = step
sys.argv = [sys.argv[1]] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def test_two_processes_write_one_run_and_see_different_batches(tiny_model_dir, tmp_path):
    write_data(tmp_path, n_train=16)
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    (tmp_path / "probes").mkdir()
    out_dir = tmp_path / "run"
    shutil.copytree(tiny_model_dir, tmp_path / "tiny")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561",
           str(probe), str(ROOT / "train_sft.py"), "-c", str(ROOT / "configs" / "sft_tiny.yaml"),
           "--model-name-or-path", str(tmp_path / "tiny"), "--val-file", "", "--output-dir", str(out_dir)]
    out = subprocess.run(cmd, cwd=tmp_path, env={**ENV, "PROBE_DIR": str(tmp_path / "probes")},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = [p for p in tmp_path.rglob("run_card.json")]
    assert runs == [out_dir / "run_card.json"], runs
    assert len(list(tmp_path.rglob("adapter_model.safetensors"))) == 1 + len(list(out_dir.glob("checkpoint-*")))
    card = json.loads((out_dir / "run_card.json").read_text())
    assert card["world_size"] == 2 and card["effective_batch"] == 4 and card["global_step"] == 4
    r0 = (tmp_path / "probes" / "rank0.txt").read_text().split()
    r1 = (tmp_path / "probes" / "rank1.txt").read_text().split()
    assert len(r0) == len(r1) == 4 and not set(r0) & set(r1), "each rank trains on its own share of the batches"
    assert out.stdout.count("train_sft: 4 steps") == 1, "the summary is printed once, by the main process"
    assert "[rank 1]" not in out.stderr.replace("WARNING", ""), "rank 1 logs nothing at INFO"
