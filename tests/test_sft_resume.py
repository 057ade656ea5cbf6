"""A real train_sft.py process SIGKILLed right after a mid-epoch checkpoint in epoch 2 resumes to
a bitwise-identical adapter, in every batching mode; --resume of a finished run changes nothing;
an incomplete newest checkpoint is skipped; --overwrite keeps the old run when inputs are bad."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from factuality.config import parse_config
from factuality.records import EXAMPLE, KILL_AT_ENV, write_jsonl
from factuality.stages.sft import SFT_SPEC, run
from factuality.training import find_last_checkpoint
from factuality.testing import make_example

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
       "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture()
def setup(tiny_model_dir, tmp_path):
    train = [make_example(i, source=s, answerable=(i % 3 != 2), gold_position=i % 3, split="train")
             for i, s in enumerate(["nq", "hotpotqa", "popqa", "fever"] * 3)]
    write_jsonl(tmp_path / "train.jsonl", train, EXAMPLE)
    args = ["-c", str(ROOT / "configs" / "sft_tiny.yaml"), "--model-name-or-path", str(tiny_model_dir),
            "--train-file", str(tmp_path / "train.jsonl"), "--val-file", "", "--max-steps", "-1",
            "--num-train-epochs", "2", "--per-device-train-batch-size", "2", "--save-steps", "8",
            "--save-total-limit", "3", "--lr-scheduler-type", "linear"]  # 6 steps/epoch: step 8 is mid epoch 2
    return tmp_path, args


def weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / "adapter_model.safetensors")


@pytest.mark.parametrize("batching", ["group_by_length", "padded", "padding_free", "packed"])
def test_killed_after_mid_epoch_checkpoint_resumes_bitwise(setup, batching):
    tmp_path, args = setup
    args = args + ["--batching", batching]
    full = run(parse_config(SFT_SPEC, args + ["--output-dir", str(tmp_path / "full")]))
    killed = tmp_path / "killed"
    out = subprocess.run([sys.executable, str(ROOT / "train_sft.py"), *args, "--output-dir", str(killed)],
                         env={**ENV, KILL_AT_ENV: "sft:saved:8"}, capture_output=True, text=True, timeout=300)
    assert out.returncode == -9, out.stderr[-2000:]          # SIGKILL, right after checkpoint-8 was saved
    assert find_last_checkpoint(killed).name == "checkpoint-8" and not (killed / "run_card.json").exists()
    resumed = run(parse_config(SFT_SPEC, args + ["--output-dir", str(killed), "--resume"]))
    assert resumed["resumed_from"].endswith("checkpoint-8") and resumed["global_step"] == full["global_step"] == 12
    want, got = weights(tmp_path / "full"), weights(killed)
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), f"{batching}: {k} differs after resume"


def test_resume_of_a_finished_run_changes_nothing(setup):
    tmp_path, args = setup
    args = args + ["--output-dir", str(tmp_path / "r"), "--num-train-epochs", "1"]
    card = run(parse_config(SFT_SPEC, args))
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "r").rglob("*") if p.is_file()}
    again = run(parse_config(SFT_SPEC, args + ["--resume"]))
    assert again["already_finished"] and again["global_step"] == card["global_step"]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "r").rglob("*") if p.is_file()} == before


def test_incomplete_newest_checkpoint_falls_back_to_the_previous_one(setup, caplog):
    tmp_path, args = setup
    run_dir = tmp_path / "r"
    args = args + ["--output-dir", str(run_dir), "--save-steps", "4"]
    run(parse_config(SFT_SPEC, args))
    (run_dir / "run_card.json").unlink()                      # as if killed before the end ...
    (run_dir / "checkpoint-12" / "trainer_state.json").write_text('{"global_ste')   # ... while saving 12
    with caplog.at_level("WARNING", logger="factuality.stages.sft"):
        card = run(parse_config(SFT_SPEC, args + ["--resume"]))
    assert card["resumed_from"].endswith("checkpoint-8") and card["global_step"] == 12
    assert "checkpoint-12 is incomplete" in caplog.text


def test_overwrite_with_bad_input_keeps_the_previous_run(setup):
    tmp_path, args = setup
    run_dir = tmp_path / "r"
    run(parse_config(SFT_SPEC, args + ["--output-dir", str(run_dir), "--num-train-epochs", "1"]))
    before = sorted(p.name for p in run_dir.iterdir())
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x"}\n')
    with pytest.raises(Exception, match="bad.jsonl:1"):
        run(parse_config(SFT_SPEC, args + ["--output-dir", str(run_dir), "--overwrite", "--train-file", str(bad)]))
    assert sorted(p.name for p in run_dir.iterdir()) == before and json.loads((run_dir / "run_card.json").read_text())


def test_outputs_are_readable_by_the_group(setup):
    tmp_path, args = setup
    old = os.umask(0o022)
    try:
        run(parse_config(SFT_SPEC, args + ["--output-dir", str(tmp_path / "r"), "--max-steps", "2"]))
    finally:
        os.umask(old)
    private = [p for p in (tmp_path / "r").rglob("*") if p.is_file() and not p.stat().st_mode & 0o040]
    assert not private, private[:3]
    shutil.rmtree(tmp_path / "r")


def test_an_adapter_swapped_after_the_run_is_refused(setup, tiny_model_dir):
    from factuality.modeling import load_model
    from factuality.records import RecordError

    tmp_path, args = setup
    run_dir = tmp_path / "r"
    card = run(parse_config(SFT_SPEC, args + ["--output-dir", str(run_dir), "--max-steps", "2"]))
    assert set(card["output_sha256"]) >= {"adapter_model.safetensors", "adapter_config.json", "config.yaml"}
    load_model(str(tiny_model_dir), adapter_path=run_dir)       # the set as written loads
    shutil.copy(run_dir / "checkpoint-2" / "adapter_model.safetensors", run_dir / "adapter_model.safetensors")
    ckpt_card = json.loads((run_dir / "checkpoint-2" / "trainer_state.json").read_text())
    assert ckpt_card["global_step"] == 2
    (run_dir / "adapter_model.safetensors").write_bytes((run_dir / "adapter_model.safetensors").read_bytes() + b" ")
    with pytest.raises(RecordError, match="adapter_model.safetensors: sha256 .* differs"):
        load_model(str(tiny_model_dir), adapter_path=run_dir)


def test_overwrite_with_a_model_that_fails_to_load_keeps_the_previous_run(setup, tiny_model_dir):
    """--overwrite replaces the old run only once the new model has loaded: a truncated weights file
    stops the run with the old run in place, byte for byte."""
    tmp_path, args = setup
    run_dir = tmp_path / "r"
    run(parse_config(SFT_SPEC, args + ["--output-dir", str(run_dir), "--max-steps", "2"]))
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(Exception):
        run(parse_config(SFT_SPEC, args + ["--output-dir", str(run_dir), "--overwrite", "--max-steps", "2",
                                           "--model-name-or-path", str(broken)]))
    after = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert after == before


def test_a_second_run_into_the_same_folder_fails_at_once(setup):
    """While one process trains into a run folder, another one started on it stops at once with one
    line (before: both exited 0 and one result was lost); the claim goes with the process."""
    from factuality.testing import claimed_by_another_process

    tmp_path, args = setup
    run_dir = tmp_path / "busy"
    with claimed_by_another_process(run_dir):
        with pytest.raises(FileExistsError, match="another run is writing here now"):
            run(parse_config(SFT_SPEC, args + ["--output-dir", str(run_dir), "--max-steps", "1"]))
        assert not run_dir.exists()
    card = run(parse_config(SFT_SPEC, args + ["--output-dir", str(run_dir), "--max-steps", "1"]))
    assert card["global_step"] == 1


def test_resume_from_the_final_checkpoint_trains_no_further_step(setup):
    """A kill after the final checkpoint and the top-level adapter, before run_card.json: --resume
    finishes the run with the same step count and the same adapter (issue 24, item 5)."""
    tmp_path, args = setup
    args = args + ["--max-steps", "4", "--save-steps", "2"]     # stops mid epoch: checkpoint-4 is the last step
    full = run(parse_config(SFT_SPEC, args + ["--output-dir", str(tmp_path / "full")]))
    cut = tmp_path / "cut"
    out = subprocess.run([sys.executable, str(ROOT / "train_sft.py"), *args, "--output-dir", str(cut)],
                         env={**ENV, KILL_AT_ENV: "sft:adapter_saved"}, capture_output=True, text=True, timeout=300)
    assert out.returncode == -9, out.stderr[-2000:]       # SIGKILL between the final adapter and the run card
    assert (cut / "adapter_model.safetensors").exists() and not (cut / "run_card.json").exists()
    resumed = run(parse_config(SFT_SPEC, args + ["--output-dir", str(cut), "--resume"]))
    assert resumed["global_step"] == full["global_step"] == 4
    want, got = weights(tmp_path / "full"), weights(cut)
    for k in want:
        assert torch.equal(want[k], got[k]), f"{k} differs after resuming from the final checkpoint"
