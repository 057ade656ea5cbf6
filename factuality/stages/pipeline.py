"""The main job: the seven scripts in order, each as its own command, reusing what is up to date.

    python pipeline.py                      # the embedded defaults: bundled sample, SmolLM2-135M, CPU
    python pipeline.py --force train_dpo    # redo one step (and every step after it)
    python pipeline.py --dry-run            # say what would run and what is reused

Each step is the command a user would type (its own process, its own progress bars and run card).
A step is skipped when its *key* matches the last successful run's: the sha256 of its command
line, of every config file and input file it names, of the outputs of the steps it reads from, and
of the package source; and when the files it wrote still have the hashes recorded then. Anything
else redoes the step and every step after it. State: `<state_dir>/state.json` (written after each
step, so a killed pipeline resumes at the step it was in: each script resumes on its own).

It ends with one table: base / SFT / DPO on the test split (the headline measures with intervals
and the deltas), the reward model's ROC-AUC and gaming probes, and the time of each step.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import yaml

from ..config import ConfigError
from ..records import atomic_write_json, atomic_write_text, sha256_file, sha256_json

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
PRESETS_FILE = ROOT / "configs" / "presets.yaml"


@dataclass
class Step:
    """One command of the pipeline. `outputs` are globs (relative to the working dir) of what it
    writes and later steps read; `reads` names the earlier steps whose outputs it depends on."""

    name: str
    argv: list[str]
    outputs: list[str]
    reads: list[str] = field(default_factory=list)
    redo_flag: str | None = "--overwrite"   # what the script needs to replace an earlier run of itself
    resume_flag: str | None = "--resume"    # what it needs to continue a run of itself that was killed


@dataclass
class PipelineConfig:
    """Options of pipeline.py."""

    preset: str = field(default="cpu", metadata={
        "help": "a section of --presets: cpu (the embedded model on the bundled sample, minutes on a laptop), gpu "
                "(the notebook's Gemma-2 recipes), tiny (the test configs on a tiny random model: a smoke test of "
                "the chain in about two minutes; its numbers mean nothing)"})
    presets: str = field(default=str(PRESETS_FILE), metadata={
        "help": "the presets file: each preset's config per step and its run folders (configs/presets.yaml)"})
    force: list[str] = field(default_factory=list, metadata={
        "help": "steps to redo even when up to date (and every step after the first of them); 'all' for everything"})
    only: list[str] = field(default_factory=list, metadata={"help": "run only these steps (their inputs must exist)"})
    dry_run: bool = field(default=False, metadata={"help": "print what would run and what would be reused, run nothing"})
    state_dir: str = field(default="runs/pipeline", metadata={"help": "where the step keys, logs and the summary go"})
    python: str = field(default=sys.executable, metadata={"help": "interpreter for the steps", "cli": False})


PRESET_STEPS = ("train_sft", "make_prefs", "train_rm", "train_dpo", "evaluate")   # the steps a preset configures
FLAG_STEPS = ("build_data", *PRESET_STEPS)   # the steps a preset may give more flags
RUN_FOLDERS = ("sft", "rm", "dpo", "eval")


def load_presets(path: str | os.PathLike = PRESETS_FILE) -> dict[str, dict]:
    """{name: preset} of the presets file (configs/presets.yaml), each checked: a config for every
    configurable step and every run folder named."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the presets: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{path}: expected a mapping of preset name -> {{configs, runs}}")
    for name, preset in data.items():
        where = f"{path}: {name}"
        if not isinstance(preset, dict):
            raise ConfigError(f"{where}: expected a mapping with configs: and runs:")
        for key, needed in (("configs", PRESET_STEPS), ("runs", RUN_FOLDERS)):
            given = preset.get(key)
            missing = [k for k in needed if not isinstance(given, dict) or not given.get(k)]
            if missing:
                raise ConfigError(f"{where}: {key}.{missing[0]} is missing; name it (see the cpu preset)")
        unknown = sorted(set(preset) - {"about", "configs", "runs", "model", "flags"})
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: about, configs, runs, model, flags)")
        flags = preset.get("flags") or {}
        if not isinstance(flags, dict) or any(k not in FLAG_STEPS or not isinstance(v, list) for k, v in flags.items()):
            raise ConfigError(f"{where}: flags: expected step: [flag, value, ...] for steps of {', '.join(FLAG_STEPS)}")
    return data


def steps_for(preset: str, presets: Mapping[str, dict] | None = None) -> list[Step]:
    """The main job's steps under one preset: its configs, its run folders passed to every step that
    writes or reads them, its model and extra flags."""
    presets = load_presets() if presets is None else presets
    if preset not in presets:
        raise ConfigError(f"no preset {preset!r}; presets ({PRESETS_FILE.name}): {', '.join(presets)}")
    p = presets[preset]
    c, runs, model = p["configs"], p["runs"], p.get("model")
    sft_dir, rm_dir, dpo_dir, eval_out = (runs[k] for k in RUN_FOLDERS)

    def flags(step: str) -> list[str]:
        return [str(a) for a in (p.get("flags") or {}).get(step, [])]

    model_flags = ["--model-name-or-path", model] if model else []
    prefs_args = ["-c", c["make_prefs"], "--sft-model", sft_dir, *(["--judge-model", model] if model else []),
                  *flags("make_prefs")]   # both phases read the same config and must compute the same signatures
    steps = [
        Step("build_data", ["build_data.py", *flags("build_data")], ["data/processed/*.jsonl", "data/processed/run_card.json"],
             redo_flag=None, resume_flag=None),
        Step("prompt_schema", ["prompt_schema.py", "save", "--prompts-dir", "prompts"], ["prompts/*"], redo_flag=None, resume_flag=None),
        Step("train_sft", ["train_sft.py", "-c", c["train_sft"], *model_flags, "--output-dir", sft_dir,
                           *flags("train_sft")],
             [f"{sft_dir}/adapter_*", f"{sft_dir}/run_card.json"], reads=["build_data", "prompt_schema"]),
        Step("make_prefs generate", ["make_prefs.py", "--phase", "generate", *prefs_args],
             # not prefs/cache/*/*: the judge phase adds its own cache there, which is no output of this step
             [f"prefs/cache/*/{f}" for f in ("manifest.json", "examples.jsonl", "generations.jsonl")],
             reads=["build_data", "train_sft"], redo_flag=None, resume_flag=None),
        Step("make_prefs judge", ["make_prefs.py", "--phase", "judge", *prefs_args],
             ["prefs/preferences_*.jsonl"], reads=["make_prefs generate"], redo_flag=None, resume_flag=None),
        Step("train_rm", ["train_rm.py", "-c", c["train_rm"], *model_flags, "--synthetic-pairs", "false",
                          "--pairs-path", "{prefs}", "--output-dir", rm_dir, *flags("train_rm")],
             [f"{rm_dir}/best/*", f"{rm_dir}/*.json"], reads=["make_prefs judge"]),
        Step("train_dpo", ["train_dpo.py", "-c", c["train_dpo"], *model_flags, "--pairs-file", "{prefs}",
                           "--sft-adapter", sft_dir, "--rm-checkpoint", f"{rm_dir}/best", "--output-dir", dpo_dir,
                           *flags("train_dpo")],
             [f"{dpo_dir}/adapter_*", f"{dpo_dir}/run_card.json"], reads=["make_prefs judge", "train_sft", "train_rm"]),
        Step("evaluate", ["evaluate_sft.py", "-c", c["evaluate"], "--overwrite",
                          "--systems", f"base,sft={sft_dir},dpo={dpo_dir}", "--output", eval_out, *flags("evaluate")],
             [f"{Path(eval_out).parent}/*.json"], reads=["train_sft", "train_dpo"], redo_flag=None,
             resume_flag=None),
    ]
    if model:
        make = f"from factuality.testing import make_tiny_model; make_tiny_model({model!r})"
        steps.insert(0, Step("tiny_model", ["-c", make], [f"{model}/*"], redo_flag=None, resume_flag=None))
        for s in steps[1:]:
            if s.name in ("train_sft", "make_prefs generate", "make_prefs judge", "train_rm", "train_dpo"):
                s.reads.append("tiny_model")
    return steps


# --------------------------------------------------------------------------------------------
# Keys: what determines a step's result
# --------------------------------------------------------------------------------------------
def _files(patterns: list[str]) -> list[Path]:
    out: list[Path] = []
    for pat in patterns:
        out += [Path(p) for p in sorted(glob.glob(pat)) if Path(p).is_file()]
    return out


def hash_files(patterns: list[str]) -> dict[str, str]:
    return {str(p): sha256_file(p) for p in _files(patterns)}


def source_hash() -> str:
    """sha256 of the package source and the scripts: a code change redoes every step."""
    files = sorted(ROOT.glob("factuality/**/*.py")) + sorted(ROOT.glob("*.py"))
    return sha256_json({str(p.relative_to(ROOT)): sha256_file(p) for p in files})


def _named_files(argv: list[str]) -> list[str]:
    """Files the command line names (config files and paths that exist)."""
    return [a for a in argv if Path(a).is_file()]


PLACEHOLDERS = {"{prefs}": "prefs/preferences_*.jsonl"}  # the judge phase's file (its name holds its signature)


def resolve(arg: str) -> str:
    """A placeholder of a later step's command line: the newest file the earlier step wrote."""
    if arg not in PLACEHOLDERS:
        return arg
    files = [f for f in glob.glob(PLACEHOLDERS[arg]) if "synthetic" not in f]
    if not files:
        raise ConfigError(f"no file matches {PLACEHOLDERS[arg]}: the step that writes it has not run")
    return max(files, key=os.path.getmtime)


def step_key(step: Step, state: dict, code: str) -> str:
    return sha256_json({
        "argv": step.argv,
        "files": {p: sha256_file(p) for p in _named_files(step.argv)},
        "upstream": {r: state.get(r, {}).get("outputs") for r in step.reads},
        "code": code,
    })


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def _fmt_s(s: float) -> str:
    return f"{s:.0f}" if s >= 10 else f"{s:.1f}"


def run(cfg: PipelineConfig, runner: Callable[[list[str]], int] | None = None) -> dict:
    """Run (or reuse) every step; returns {"steps": [{name, status, seconds}], "summary": text}."""
    presets = load_presets(cfg.presets)
    steps = steps_for(cfg.preset, presets)
    names = [s.name for s in steps]
    for n in list(cfg.force) + list(cfg.only):
        if n != "all" and n not in names:
            raise ConfigError(f"no step {n!r}; steps: {', '.join(names)}")
    state_dir = Path(cfg.state_dir)
    state_path = state_dir / "state.json"
    state = read_state(state_path)
    code = source_hash()
    forced_from = min((names.index(n) for n in cfg.force if n in names), default=None)
    if "all" in cfg.force:
        forced_from = 0
    runner = runner or (lambda argv: subprocess.call([cfg.python, *argv], cwd=os.getcwd()))
    report: list[dict] = []
    redo_rest = False
    for i, step in enumerate(steps):
        if cfg.only and step.name not in cfg.only:
            continue
        key = step_key(step, state, code)
        prev = state.get(step.name, {})
        current = prev.get("key") == key and prev.get("outputs") and hash_files(step.outputs) == prev["outputs"]
        forced = forced_from is not None and i >= forced_from
        redo = redo_rest or forced or not current
        if not redo:
            log.info("[%d/%d] %s: up to date (reused)", i + 1, len(steps), step.name)
            report.append({"name": step.name, "status": "reused", "seconds": prev.get("seconds")})
            continue
        redo_rest = True  # whatever reads this step's outputs is redone too
        argv = [a if cfg.dry_run else resolve(a) for a in step.argv] + rerun_flags(step, prev, key, forced)
        print(f"\n=== [{i + 1}/{len(steps)}] {step.name}: python {' '.join(argv)}", flush=True)
        if cfg.dry_run:
            report.append({"name": step.name, "status": "would run", "seconds": None})
            continue
        state[step.name] = {**prev, "attempt": key}   # a kill from here on leaves the attempt on record
        atomic_write_json(state_path, state)
        t0 = time.time()
        rc = runner(argv)
        seconds = time.time() - t0
        if rc != 0:
            raise ConfigError(f"step {step.name} failed (exit {rc}); fix what it said above and run pipeline.py "
                              f"again: finished steps are reused")
        key = step_key(step, state, code)  # inputs it created itself (none today) count from now on
        state[step.name] = {"key": key, "outputs": hash_files(step.outputs), "seconds": round(seconds, 1),
                            "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        atomic_write_json(state_path, state)
        report.append({"name": step.name, "status": "ran", "seconds": round(seconds, 1)})
    summary = final_summary(report, presets[cfg.preset]["runs"]) if not cfg.dry_run else ""
    if summary:
        atomic_write_text(state_dir / "summary.md", summary + "\n")
    return {"steps": report, "summary": summary}


def read_state(path: Path) -> dict:
    """The pipeline's state file: {step: {key, outputs, seconds, finished[, attempt]}}; one that is not
    such a mapping is refused with the fix (delete it: every step then runs again)."""
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not readable state ({' '.join(str(e).split())[:120]}); delete it to run every "
                          f"step again") from None
    if not isinstance(state, dict) or not all(isinstance(v, dict) for v in state.values()):
        raise ConfigError(f"{path}: not the pipeline's state (a mapping of step -> record); delete it to run every "
                          f"step again")
    return state


def rerun_flags(step: Step, prev: Mapping, key: str, forced: bool) -> list[str]:
    """What a step that runs again needs: --resume when its last attempt, with these very inputs, was
    killed before it ever finished (the script continues from its newest checkpoint); --overwrite
    when it replaces an earlier finished run, or when forced; nothing for a first run."""
    killed_first_run = "attempt" in prev and "key" not in prev
    if killed_first_run and prev["attempt"] == key and not forced and step.resume_flag:
        return [step.resume_flag]
    if step.redo_flag and (prev or forced):
        return [step.redo_flag]
    return []


def _read_json(pattern: str) -> dict | None:
    files = sorted(glob.glob(pattern), key=os.path.getmtime)
    return json.loads(Path(files[-1]).read_text(encoding="utf-8")) if files else None


def final_summary(report: list[dict], runs: Mapping[str, str]) -> str:
    """The table of base / SFT / DPO, the reward model's AUC and probes, and the step times."""
    from ..report import format_comparison_table, format_error_types

    parts: list[str] = []
    results = _read_json(runs["eval"])
    if results:
        parts += ["## Base, SFT and DPO on the test split (headline measures; 95% intervals of the deltas)", "",
                  format_comparison_table(results, markdown=True), ""]
        if results.get("error_types"):
            parts += ["## What each system's outputs are (factuality/error_types.py)", "",
                      format_error_types(results, markdown=True), ""]
    rm = _read_json(f"{runs['rm']}/rm_report.json")
    if rm:
        parts += ["## Reward model (held-out pairs)", "", rm_lines(rm), ""]
    rows = ["| step | status | seconds |", "|---|---|---:|"]
    total = 0.0
    for r in report:
        s = r.get("seconds")
        total += s or 0
        rows.append(f"| {r['name']} | {r['status']} | {'' if s is None else _fmt_s(s)} |")
    rows.append(f"| total | | {_fmt_s(total)} |")
    parts += ["## Steps", "", *rows]
    return "\n".join(parts)


def rm_lines(rm: dict) -> str:
    """The reward model's report (train_rm.py's rm_report.json) as Markdown: ROC-AUC, accuracy and
    calibration of the model and its baselines on held-out pairs, then the gaming probes."""
    from ..rm.report import heldout_table, probe_summary

    probes = probe_summary(rm)
    return "\n".join(heldout_table(rm) + (["", *probes] if probes else []))


def summarize(result: dict) -> str:
    return "\n" + result["summary"] if result.get("summary") else ""


def _stage():
    from ..cli import Stage

    return Stage("pipeline", PipelineConfig, run, summarize)


STAGE = _stage()
