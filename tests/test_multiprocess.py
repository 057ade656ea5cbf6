"""Several processes, two real ones on CPU (accelerate launch with configs/accelerate/cpu_2proc.yaml;
the ranks find no CUDA and run DDP over gloo), on the tiny random model: the evaluator and
make_prefs' generation split the examples and merge the ranks' parts into exactly what one process
writes; a part left by a rank that died is reused; train_rm (LoRA) and train_dpo end with the same
adapter weights on every rank, equal to the saved ones. The vLLM backend: a clear error where it
cannot run, and its greedy outputs compared with the transformers backend where it can."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from factuality.config import ConfigError, parse_config
from factuality.records import EXAMPLE, PREFERENCE, read_jsonl, write_jsonl
from factuality.testing import make_example

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parent.parent
ACCELERATE_CPU = ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
       "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
SOURCES = ["nq", "hotpotqa", "popqa", "fever"]

# Runs a script after patching transformers.Trainer.train: when training ends, each rank saves its
# trainable parameters to $PROBE_DIR/rank<k>.pt (what the test compares across ranks and with the files).
PROBE = '''
import os, runpy, sys
import torch, transformers
orig = transformers.Trainer.train
def train(self, *a, **k):
    out = orig(self, *a, **k)
    params = {n: p.detach().cpu().clone() for n, p in self.model.named_parameters() if p.requires_grad}
    torch.save(params, os.path.join(os.environ["PROBE_DIR"], "rank%s.pt" % os.environ.get("RANK", "0")))
    return out
transformers.Trainer.train = train
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def launch(script: str, args: list[str], cwd: Path, port: int, probe_dir: Path | None = None, timeout: int = 400):
    """`accelerate launch` of a script with two processes; returns the completed process."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CPU),
           "--main_process_port", str(port)]
    env = dict(ENV)
    if probe_dir is not None:
        probe = cwd / "probe.py"
        probe.write_text(PROBE)
        probe_dir.mkdir(exist_ok=True)
        env["PROBE_DIR"] = str(probe_dir)
        cmd += [str(probe), str(ROOT / script), *args]
    else:
        cmd += [str(ROOT / script), *args]
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out


def examples_for(split: str, n: int, start: int = 0) -> list[dict]:
    return [make_example(start + i, source=SOURCES[i % 4], answerable=(i % 3 != 2), gold_position=i % 3, split=split)
            for i in range(n)]


@pytest.fixture(scope="module")
def world(tiny_model_dir, tmp_path_factory) -> dict:
    """Data files and a LoRA adapter with random, non-zero weights over the tiny model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tmp_path_factory.mktemp("mp")
    write_jsonl(d / "train.jsonl", examples_for("train", 10), EXAMPLE)
    write_jsonl(d / "val.jsonl", examples_for("val", 3, start=100), EXAMPLE)
    write_jsonl(d / "test.jsonl", examples_for("test", 9, start=200), EXAMPLE)
    torch.manual_seed(1)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora).save_pretrained(d / "sft")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(d / "sft")
    return {"dir": d, "model": tiny_model_dir, "adapter": d / "sft"}


# ------------------------------------------------------------------ the evaluator
def eval_args(world, out: Path) -> list[str]:
    return ["--systems", f"base,sft={world['adapter']}", "--test-data", str(world["dir"] / "test.jsonl"),
            "--base-model", str(world["model"]), "--dtype", "float32", "--batch-size", "2", "--max-new-tokens", "8",
            "--buckets", "64,128", "--bootstrap-samples", "0", "--plots", "false", "--progress", "false",
            "--output", str(out / "eval_results.json")]


def rows_of(path: Path) -> list[tuple]:
    return [(r["model_tag"], r["id"], r["raw_output"], r["signature"]) for r in map(json.loads, path.open())]


def test_evaluator_two_processes_write_what_one_writes(world, tmp_path):
    from factuality.stages.evaluate import EvalConfig, run

    one = run(parse_config(EvalConfig, eval_args(world, tmp_path / "one")))
    launch("evaluate_sft.py", eval_args(world, tmp_path / "two"), tmp_path, port=29611)
    pred1 = tmp_path / "one" / "eval_results.predictions.jsonl"
    pred2 = tmp_path / "two" / "eval_results.predictions.jsonl"
    r1, r2 = rows_of(pred1), rows_of(pred2)
    assert len(r2) == 18 and sorted(r2) == sorted(r1), "every (system, example) once, the same outputs"
    ids = [e["id"] for e in read_jsonl(world["dir"] / "test.jsonl", EXAMPLE)]
    assert [(t, i) for t, i, *_ in r2] == [(t, i) for t in ("base", "sft") for i in ids], "merged in input order"
    assert not list((tmp_path / "two").glob("*.part")) and not list((tmp_path / "two").glob("*.done.json"))
    two = json.loads((tmp_path / "two" / "eval_results.json").read_text())
    assert two["complete"] and two["prediction_rows"] == 18
    assert two["metrics"] == one["metrics"] and two["deltas"] == one["deltas"]
    assert {"em", "f1", "hallucination_rate", "citation_correctness"} <= set(two["deltas"]), "the notebook reads these"


def test_a_part_left_by_a_dead_rank_is_reused(world, tmp_path, monkeypatch):
    """A two-process run killed after rank 1 wrote some rows: the next run (one process here) folds
    those rows into the predictions file and generates only the rest."""
    from factuality import generation
    from factuality.stages.evaluate import EvalConfig, run

    run(parse_config(EvalConfig, eval_args(world, tmp_path / "ref")))
    ref = rows_of(tmp_path / "ref" / "eval_results.predictions.jsonl")
    out = tmp_path / "resumed"
    out.mkdir()
    lines = (tmp_path / "ref" / "eval_results.predictions.jsonl").read_text().splitlines(keepends=True)
    sft_lines = [ln for ln in lines if json.loads(ln)["model_tag"] == "sft"]
    part = out / "eval_results.predictions.jsonl.rank1.part"
    part.write_text("".join(sft_lines[5:8]) + sft_lines[8][:40])  # three rows and a line torn by the kill
    generated = []
    real = generation.iter_generate

    def counting(model, tok, prompts, *a, indices=None, **k):
        generated.extend(indices)
        yield from real(model, tok, prompts, *a, indices=indices, **k)

    monkeypatch.setattr(generation, "iter_generate", counting)
    run(parse_config(EvalConfig, eval_args(world, out)))
    assert len(generated) == 18 - 3, "the three finished rows of the dead rank were not generated again"
    assert sorted(rows_of(out / "eval_results.predictions.jsonl")) == sorted(ref)
    assert not part.exists()


def test_rank_parts_merge_in_input_order_and_refuse_a_part_changed_after_its_rank_finished(tmp_path, monkeypatch):
    """RankParts with two ranks played in turn in one process (the barrier a no-op)."""
    from factuality import dist
    from factuality.records import RecordError

    monkeypatch.setattr(dist, "world_size", lambda: 2)
    monkeypatch.setattr(dist, "wait_for_everyone", lambda: None)
    monkeypatch.setattr(dist, "is_main_process", lambda: dist.process_index() == 0)

    def play(target, tamper: bool):
        parts = dist.RankParts(target)
        for rank, ids in ((1, [3, 4, 5]), (0, [0, 1, 2])):
            monkeypatch.setattr(dist, "process_index", lambda rank=rank: rank)
            with parts.open() as out:
                for i in reversed(ids):  # written out of order, as length-sorted batches finish
                    out.write({"id": f"x{i}", "n": i})
            if rank == 1:
                parts.finish()
                if tamper:
                    with open(parts.part(1), "a") as f:
                        f.write('{"id": "x9", "n": 9}\n')
        return parts.merge(order=lambda row: row["n"])

    assert play(tmp_path / "ok.jsonl", tamper=False) == 6
    assert [r["n"] for r in read_jsonl(tmp_path / "ok.jsonl")] == [0, 1, 2, 3, 4, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.jsonl"], "parts and markers removed"
    with pytest.raises(RecordError, match=r"ok2.jsonl.rank1.part: sha256 .* rank 1 recorded when it finished"):
        play(tmp_path / "ok2.jsonl", tamper=True)
    assert not (tmp_path / "ok2.jsonl").exists(), "nothing merged"


# ------------------------------------------------------------------ make_prefs generation
def prefs_args(world, out: Path) -> list[str]:
    d = world["dir"]
    return ["-c", str(ROOT / "configs" / "prefs_tiny.yaml"), "--phase", "generate",
            "--sft-model", str(world["adapter"]), "--base-model", str(world["model"]),
            "--data-path", str(d / "train.jsonl"), "--val-path", str(d / "val.jsonl"), "--output-dir", str(out)]


def test_make_prefs_generation_two_processes_write_what_one_writes(world, tmp_path):
    from factuality.stages.prefs import STAGE, run

    one = run(parse_config(STAGE.config, prefs_args(world, tmp_path / "one")))
    launch("make_prefs.py", prefs_args(world, tmp_path / "two"), tmp_path, port=29612)
    sig = Path(one["generate"]["cache_dir"]).name
    c1, c2 = tmp_path / "one" / "cache" / sig, tmp_path / "two" / "cache" / sig
    assert (c2 / "generations.jsonl").read_bytes() == (c1 / "generations.jsonl").read_bytes()
    assert (c2 / "examples.jsonl").read_bytes() == (c1 / "examples.jsonl").read_bytes()
    assert json.loads((c2 / "manifest.json").read_text())["complete"]
    assert sorted(p.name for p in c2.iterdir()) == [".examples.jsonl.sha256", ".generations.jsonl.sha256",
                                                    ".manifest.json.sha256", "examples.jsonl", "generations.jsonl",
                                                    "manifest.json"]
    assert (c2 / ".generations.jsonl.sha256").read_bytes() == (c1 / ".generations.jsonl.sha256").read_bytes()


def test_make_prefs_judge_refuses_several_processes(world, monkeypatch):
    from factuality.stages.prefs import STAGE, check_prefs

    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = parse_config(STAGE.config, prefs_args(world, world["dir"] / "x"))
    check_prefs(cfg)  # generate: splits across processes
    cfg.phase = "judge"
    with pytest.raises(ConfigError, match="judge runs in one process"):
        check_prefs(cfg)


# ------------------------------------------------------------------ the trainers
def assert_ranks_agree(probe_dir: Path, saved: Path) -> None:
    """Both ranks hold the same trainable weights at the end, and they are the ones saved."""
    import torch
    from safetensors.torch import load_file

    r0, r1 = torch.load(probe_dir / "rank0.pt"), torch.load(probe_dir / "rank1.pt")
    assert r0 and r0.keys() == r1.keys()
    assert all(torch.equal(r0[n], r1[n]) for n in r0), "DDP keeps every rank's adapter identical"
    files = load_file(str(saved))
    lora = [n for n in r0 if "lora_" in n]
    assert lora, "LoRA weights were trained"
    for n in lora:  # PEFT saves `...q_proj.lora_A.weight` for the parameter `...q_proj.lora_A.default.weight`
        assert torch.equal(files[n.replace(".default", "")], r0[n]), n


def test_train_dpo_two_processes_keep_ranks_in_sync(world, tmp_path, tiny_model_dir):
    from factuality.modeling import load_tokenizer
    from tests.test_dpo import make_pairs

    tok = load_tokenizer(str(tiny_model_dir))
    write_jsonl(tmp_path / "pairs.jsonl", make_pairs(tok), PREFERENCE)
    out = tmp_path / "dpo"
    res = launch("train_dpo.py", ["-c", str(ROOT / "configs" / "dpo_tiny.yaml"), "--model-name-or-path",
                                  str(tiny_model_dir), "--sft-adapter", str(world["adapter"]), "--pairs-file",
                                  str(tmp_path / "pairs.jsonl"), "--output-dir", str(out), "--save-strategy", "no",
                                  "--ref-cache-dir", str(tmp_path / "ref")], tmp_path, port=29613,
                 probe_dir=tmp_path / "probe")
    card = json.loads((out / "run_card.json").read_text())
    assert card["world_size"] == 2
    assert_ranks_agree(tmp_path / "probe", out / "adapter_model.safetensors")
    assert res.stdout.count("train_dpo") >= 1


def test_train_rm_lora_two_processes_keep_ranks_in_sync(world, tmp_path, tiny_model_dir):
    from tests.test_rm import make_pairs

    make_pairs(tmp_path, tiny_model_dir, n_train=8, n_val=4)
    out = tmp_path / "rm"
    launch("train_rm.py", ["-c", str(ROOT / "configs" / "rm_tiny.yaml"), "--model-name-or-path", str(tiny_model_dir),
                           "--pairs-path", str(tmp_path / "prefs" / "preferences_test.jsonl"), "--probe-data",
                           str(tmp_path / "data" / "processed" / "val.jsonl"), "--feature-cache-dir",
                           str(tmp_path / "cache"), "--output-dir", str(out), "--use-peft", "true", "--lora-r", "4",
                           "--lora-alpha", "8", "--lora-target-modules", "q_proj,v_proj", "--max-steps", "2",
                           "--save-steps", "2", "--eval-steps", "1", "--max-length", "768",
                           "--max-probe-examples", "2"], tmp_path, port=29614, probe_dir=tmp_path / "probe")
    history = json.loads((out / "training_history.json").read_text())
    assert history["train_losses"] and [m["step"] for m in history["eval_metrics"]] == [1, 2]
    assert_ranks_agree(tmp_path / "probe", out / "final" / "adapter_model.safetensors")


# ------------------------------------------------------------------ vLLM
def test_vllm_backend_is_a_clear_error_where_it_cannot_run(world, tmp_path):
    import importlib.util

    import torch

    from factuality.stages.evaluate import EvalConfig, run
    from factuality.stages.prefs import STAGE
    from factuality.stages.prefs import run as prefs_run

    if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available():
        pytest.skip("vllm and a GPU are here: the backend runs (see the comparison test)")
    with pytest.raises(ConfigError, match=r"--backend vllm: (the vllm package is not installed|no CUDA GPU)"):
        run(parse_config(EvalConfig, eval_args(world, tmp_path / "e") + ["--backend", "vllm"]))
    with pytest.raises(ConfigError, match=r"--backend vllm"):
        prefs_run(parse_config(STAGE.config, prefs_args(world, tmp_path / "p") + ["--backend", "vllm"]))
    assert not (tmp_path / "e").exists() and not (tmp_path / "p").exists(), "nothing written"
    out = subprocess.run([sys.executable, str(ROOT / "evaluate_sft.py"), *eval_args(world, tmp_path / "s"),
                          "--backend", "vllm"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "--backend vllm" in out.stderr


@pytest.mark.skipif(not (shutil.which("nvidia-smi") and __import__("importlib").util.find_spec("vllm")),
                    reason="needs a CUDA GPU and the vllm package")
def test_vllm_greedy_outputs_match_transformers(world):
    from factuality.stages.evaluate import EvalConfig
    from factuality.modeling import load_model, load_tokenizer
    from factuality.prompts import render_prompt
    from factuality.vllm_backend import VllmEngine, compare_backends

    cfg = parse_config(EvalConfig, eval_args(world, world["dir"] / "v") + ["--vllm-gpu-memory-utilization", "0.3"])
    tok = load_tokenizer(str(world["model"]), padding_side="left")
    prompts = [render_prompt(e, tok) for e in read_jsonl(world["dir"] / "test.jsonl", EXAMPLE)]
    model = load_model(cfg).to("cuda")
    got = compare_backends(model, tok, VllmEngine(str(world["model"]), {}, cfg), prompts, max_new_tokens=8)
    assert got["identical"] == got["n"], got["mismatches"]
