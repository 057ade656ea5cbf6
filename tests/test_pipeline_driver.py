"""pipeline.py's reuse logic with a stand-in runner: a second run reuses every step; a changed
config redoes that step and every step after it; a step's vanished output redoes it."""
from __future__ import annotations

import glob
from pathlib import Path

import pytest

from factuality.config import ConfigError
from factuality.stages.pipeline import PipelineConfig, run, steps_for


@pytest.fixture()
def fake(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ran: list[str] = []
    counter = {"n": 0}

    def runner(argv):
        step = next(s for s in steps_for("cpu") if s.argv[:3] == argv[:3])
        ran.append(step.name)
        counter["n"] += 1
        for pat in step.outputs:  # each step writes one file per output pattern
            p = Path(pat.replace("*", "out"))
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(f"{step.name} {counter['n']}")
        return 0

    for c in ("sft_cpu", "prefs_cpu", "rm_cpu", "dpo_cpu", "eval_pipeline_cpu"):
        Path("configs").mkdir(exist_ok=True)
        Path(f"configs/{c}.yaml").write_text("seed: 1\n")
    return ran, runner


def test_second_run_reuses_everything_and_a_change_redoes_what_follows(fake):
    ran, runner = fake
    first = run(PipelineConfig(state_dir="st"), runner)
    names = [s.name for s in steps_for("cpu")]
    assert ran == names and [r["status"] for r in first["steps"]] == ["ran"] * len(names)
    ran.clear()
    again = run(PipelineConfig(state_dir="st"), runner)
    assert ran == [] and all(r["status"] == "reused" for r in again["steps"])
    Path("configs/rm_cpu.yaml").write_text("seed: 2\n")           # a changed config
    run(PipelineConfig(state_dir="st"), runner)
    assert ran == names[names.index("train_rm"):]
    ran.clear()
    for p in glob.glob("prefs/preferences_*.jsonl"):               # a vanished output
        Path(p).unlink()
    run(PipelineConfig(state_dir="st"), runner)
    assert ran == names[names.index("make_prefs judge"):]


def test_force_and_unknown_steps(fake):
    ran, runner = fake
    run(PipelineConfig(state_dir="st"), runner)
    ran.clear()
    run(PipelineConfig(state_dir="st", force=["train_dpo"]), runner)
    assert ran == ["train_dpo", "evaluate"]
    with pytest.raises(ConfigError, match="no step 'train_ppo'"):
        run(PipelineConfig(state_dir="st", force=["train_ppo"]), runner)


def test_a_failed_step_stops_the_run_and_keeps_what_finished(fake):
    ran, runner = fake

    def failing(argv):
        return 3 if argv[0] == "train_rm.py" else runner(argv)

    with pytest.raises(ConfigError, match="step train_rm failed"):
        run(PipelineConfig(state_dir="st"), failing)
    ran.clear()
    run(PipelineConfig(state_dir="st"), runner)
    assert ran[0] == "train_rm"


def test_a_step_killed_on_its_first_run_resumes_and_force_replaces(fake):
    """A training step killed before it ever finished left a run folder its script will not replace
    without a word: the next pipeline run passes --resume (same inputs), --overwrite when forced."""
    ran, runner = fake
    seen: list[list[str]] = []

    def killed_in_sft(argv):
        seen.append(argv)
        return -9 if argv[0] == "train_sft.py" else runner(argv)

    with pytest.raises(ConfigError, match="step train_sft failed"):
        run(PipelineConfig(state_dir="st"), killed_in_sft)
    assert "--resume" not in seen[-1] and "--overwrite" not in seen[-1]      # a first run: no flag
    seen.clear()

    def record(argv):
        seen.append(argv)
        return runner(argv)

    run(PipelineConfig(state_dir="st"), record)
    sft = next(a for a in seen if a[0] == "train_sft.py")
    assert sft[-1] == "--resume"
    seen.clear()
    run(PipelineConfig(state_dir="st", force=["train_sft"]), record)
    assert next(a for a in seen if a[0] == "train_sft.py")[-1] == "--overwrite"


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"train_sft": 3}'])
def test_a_broken_state_file_is_one_line_with_the_fix(fake, text):
    _, runner = fake
    Path("st").mkdir()
    Path("st/state.json").write_text(text)
    with pytest.raises(ConfigError, match=r"st/state.json: .*delete it"):
        run(PipelineConfig(state_dir="st"), runner)
