"""A table of bad inputs across the scripts: each exits 2 with one `error:` line that names the
input, prints no traceback, and leaves every output as it was.

The scripts are driven in-process through their entry point (`main(argv)`, the same code path as
the command line, without a Python start-up per case); tests/test_stage_shape.py runs a handful
as real subprocesses."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

import build_data
import prompt_schema
from factuality import cli
from factuality.stages.evaluate import STAGE as EVAL
from factuality.records import EXAMPLE, write_jsonl
from factuality.stages.sft import STAGE as SFT
from factuality.testing import make_example

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample"


def _sft(argv):
    return cli.main(SFT, "train_sft", argv)


def _eval(argv):
    return cli.main(EVAL, "evaluate_sft", argv)


SCRIPTS = {"build_data": build_data.main, "train_sft": _sft, "evaluate_sft": _eval, "prompt_schema": prompt_schema.main}


def _write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))


def _edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    fn(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def _edit_first_line(path: Path, fn) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[0])
    fn(row)
    lines[0] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


HOTPOT = "raw/hotpotqa/hotpot_train_sample.json"
FEVER = "raw/fever/paper_dev.sample.jsonl"
NQ_OPEN = "raw/nq/NQ-open.dev.sample.jsonl"
POPQA = "raw/popqa/popQA.fixture.tsv"
B = ["--data-dir", "{d}", "--accept-new-hash", "--quiet"]  # past the hash check, into the readers

# (script, argv, prepare(d) -> None, what the one error line must contain)
CASES = [
    # ---- build_data: raw files in each dataset's format, and options
    ("build_data", B + ["--sources", "hotpotqa"], lambda d: _write(d / HOTPOT, '[{"_id": "x", "question": '), "hotpot_train_sample.json"),
    ("build_data", B + ["--sources", "hotpotqa"], lambda d: _edit_json(d / HOTPOT, lambda a: a[0].pop("question")), "question"),
    ("build_data", B + ["--sources", "hotpotqa"], lambda d: _edit_json(d / HOTPOT, lambda a: a[0].update(answer=[1])), "answer"),
    ("build_data", B + ["--sources", "hotpotqa"], lambda d: _write(d / HOTPOT, b'[{"question": "caf\xe9"}]'), "hotpot_train_sample.json"),
    ("build_data", B + ["--sources", "hotpotqa"], lambda d: _write(d / HOTPOT, "[]"), "hotpot_train_sample.json"),
    ("build_data", B + ["--sources", "fever"], lambda d: _write(d / FEVER, "{not json}\n"), "paper_dev.sample.jsonl:1"),
    ("build_data", B + ["--sources", "fever"], lambda d: _edit_first_line(d / FEVER, lambda r: r.update(label="MAYBE")), "label"),
    ("build_data", B + ["--sources", "fever"], lambda d: _write(d / FEVER, ""), "paper_dev.sample.jsonl"),
    ("build_data", B + ["--sources", "fever"], lambda d: _write(d / FEVER, b'{"id": 1, "claim": "\xff\xfe"}\n'), "paper_dev.sample.jsonl:1"),
    ("build_data", B + ["--sources", "nq"], lambda d: _edit_first_line(d / NQ_OPEN, lambda r: r.update(answer="x")), "answer"),
    ("build_data", B + ["--sources", "popqa"], lambda d: _write(d / POPQA, "id\tsubj\n1\tx\n"), "popQA.fixture.tsv"),
    ("build_data", B + ["--sources", "hotpotqa"], lambda d: _edit_json(d / HOTPOT, lambda a: a[0].update(supporting_facts="x")), "supporting_facts"),
    ("build_data", ["--data-dir", "{d}", "--quiet"], lambda d: (d / NQ_OPEN).unlink(), "NQ-open.dev.sample.jsonl"),
    ("build_data", ["--data-dir", "{d}", "--quiet"], lambda d: _edit_first_line(d / NQ_OPEN, lambda r: r.update(question="changed")), "NQ-open.dev.sample.jsonl"),
    ("build_data", B + ["--split-fractions", "0.5,0.2"], None, "split"),
    ("build_data", B + ["--num-distractors", "-1"], None, "num_distractors"),
    ("build_data", B + ["--sources", "fever,nosuch"], None, "nosuch"),
    ("build_data", ["-c", "{d}/empty.yaml"], lambda d: _write(d / "empty.yaml", ""), "empty.yaml"),
    ("build_data", ["-c", "{d}/bad.yaml"], lambda d: _write(d / "bad.yaml", "seeds: 3\n"), "bad.yaml: unknown key 'seeds'"),
    ("build_data", ["-c", "{d}/bad.yaml"], lambda d: _write(d / "bad.yaml", "seed: true\n"), "bad.yaml: seed"),
    # ---- train_sft: data files and options
    ("train_sft", ["--train-file", "{d}/nosuch.jsonl"], None, "nosuch.jsonl"),
    ("train_sft", ["--train-file", "{d}/t.jsonl"], lambda d: _write(d / "t.jsonl", "{oops\n"), "t.jsonl:1"),
    ("train_sft", ["--train-file", "{d}/t.jsonl"], lambda d: _write(d / "t.jsonl", '{"id": "a"}\n'), "t.jsonl:1"),
    ("train_sft", ["--train-file", "{d}/t.jsonl"], lambda d: _dup(d / "t.jsonl"), "t.jsonl:2"),
    ("train_sft", ["--train-file", "{d}/t.jsonl"], lambda d: _write(d / "t.jsonl", ""), "t.jsonl"),
    ("train_sft", ["--train-file", "{d}/t.jsonl"], lambda d: _write(d / "t.jsonl", b'{"id": "\xff"}\n'), "t.jsonl:1"),
    ("train_sft", ["--train-file", "{d}/ex/train.jsonl", "--val-file", "{d}/v.jsonl"], lambda d: _write(d / "v.jsonl", "[]\n"), "v.jsonl:1"),
    ("train_sft", ["--learning-rate", "-1"], None, "--learning-rate"),
    ("train_sft", ["--per-device-train-batch-size", "0"], None, "--per-device-train-batch-size"),
    ("train_sft", ["--max-steps", "true"], None, "--max-steps"),
    ("train_sft", ["--lora-r", "-2"], None, "--lora-r"),
    ("train_sft", ["--batching", "sorted"], None, "sorted"),
    ("train_sft", ["--lora-rnak", "8"], None, "--lora-rnak"),
    ("train_sft", ["--max-samples", "-1"], None, "--max-samples"),
    ("train_sft", ["--train-file", "{d}/ex/train.jsonl", "--val-file", "", "--model-name-or-path", "{d}/no-model"], None, "no-model"),
    ("train_sft", ["--train-file", "{d}/ex/train.jsonl", "--output-dir", "{d}/never", "--resume"], None, "never"),
    ("train_sft", ["-c", "{d}/s.yaml"], lambda d: _write(d / "s.yaml", "lora:\n  rank: 8\n"), "s.yaml: unknown key 'rank'"),
    # ---- evaluate_sft: test data, predictions, options
    ("evaluate_sft", ["--predictions", "{d}/p.jsonl", "--test-data", "{d}/nosuch.jsonl"], lambda d: _preds(d, 1), "nosuch.jsonl"),
    ("evaluate_sft", ["--predictions", "{d}/p.jsonl", "--test-data", "{d}/empty.jsonl"], lambda d: (_preds(d, 1), _write(d / "empty.jsonl", "")), "empty.jsonl"),
    ("evaluate_sft", ["--predictions", "{d}/p.jsonl", "--test-data", "{d}/ex/test.jsonl"], lambda d: _write(d / "p.jsonl", ""), "p.jsonl"),
    ("evaluate_sft", ["--predictions", "{d}/p.jsonl", "--test-data", "{d}/ex/test.jsonl"], lambda d: _preds(d, 2, dup=True), "already appears on line 1"),
    ("evaluate_sft", ["--predictions", "{d}/p.jsonl", "--test-data", "{d}/ex/test.jsonl"], lambda d: _write(d / "p.jsonl", '{"id": "nope", "raw_output": "x"}\n'), "nope"),
    ("evaluate_sft", ["--predictions", "{d}/p.jsonl", "--test-data", "{d}/ex/test.jsonl"], lambda d: _write(d / "p.jsonl", '{"id": "x"}\n'), "p.jsonl:1"),
    ("evaluate_sft", ["--predictions", "{d}/p.jsonl", "--limit", "-1"], lambda d: _preds(d, 1), "--limit"),
    ("evaluate_sft", ["--predictions", "{d}/p.jsonl", "--bootstrap-samples", "-5"], lambda d: _preds(d, 1), "--bootstrap-samples"),
    ("evaluate_sft", ["--predictions", "{d}/p.jsonl", "--ci-level", "1.5"], lambda d: _preds(d, 1), "--ci-level"),
    ("evaluate_sft", ["--predictions", "{d}/p.jsonl", "--test-data", "{d}/ex/test.jsonl", "--compare", "dpo:sft"], lambda d: _preds(d, 1), "dpo"),
    ("evaluate_sft", ["--predictions", "{d}/p.jsonl", "--test-data", "{d}/ex/test.jsonl", "--buckets", "300,200"], lambda d: _preds(d, 1), "300"),
    ("evaluate_sft", ["--systems", "sft"], None, "--systems 'sft'"),
    ("evaluate_sft", ["--model-path", "{d}/no-adapter", "--test-data", "{d}/ex/test.jsonl", "--base-model", "{d}/no-base"], None, "no-"),
    # ---- prompt_schema
    ("prompt_schema", ["render", "--data", "{d}/nosuch.jsonl"], None, "nosuch.jsonl"),
    ("prompt_schema", ["render", "--data", "{d}/ex/test.jsonl", "--index", "99"], None, "--index 99"),
    ("prompt_schema", ["render", "--data", "{d}/ex/test.jsonl", "--id", "nope"], None, "nope"),
    ("prompt_schema", ["parse"], None, "parse needs the model output"),
    ("prompt_schema", ["bogus"], None, "bogus"),
    # ---- numbers outside what numpy / torch take, and non-finite numbers (used to end in a traceback or NaN weights)
    ("build_data", B + ["--seed", "-1"], None, "--seed: -1 must be >= 0"),
    ("build_data", B + ["--split-fractions", "nan,0.5,0.5"], None, "--split-fractions: nan is not a finite number"),
    ("train_sft", ["--seed", "99999999999999999999"], None, "--seed"),
    ("train_sft", ["--learning-rate", "inf"], None, "--learning-rate: inf is not a finite number"),
    ("train_sft", ["--num-train-epochs", "inf"], None, "--num-train-epochs: inf is not a finite number"),
    ("evaluate_sft", ["--predictions", "{d}/p.jsonl", "--seed", "-5"], lambda d: _preds(d, 1), "--seed: -5 must be >= 0"),
    ("build_data", B + ["--rejects", "{d}/raw"], None, "is a folder; name a file"),
    # ---- data hygiene
    ("train_sft", ["--train-file", "{d}/ex/train.jsonl", "--val-file", "{d}/ex/train.jsonl"], None, "is the training file"),
    # ---- a named pipe as input (used to wait forever for a writer)
    ("train_sft", ["--train-file", "{d}/pipe.jsonl"], lambda d: os.mkfifo(d / "pipe.jsonl"), "pipe.jsonl: is a named pipe"),
    ("evaluate_sft", ["--predictions", "{d}/pipe.jsonl", "--test-data", "{d}/ex/test.jsonl"], lambda d: os.mkfifo(d / "pipe.jsonl"), "pipe.jsonl: is a named pipe"),
    ("prompt_schema", ["render", "--data", "{d}/pipe.jsonl"], lambda d: os.mkfifo(d / "pipe.jsonl"), "pipe.jsonl: is a named pipe"),
    ("build_data", B + ["--max-examples-per-source", "0"], None, "--max-examples-per-source: 0 must be >= 1"),
    ("build_data", B + ["--n-threads", "-5"], None, "--n-threads: -5 must be >= -1"),
    ("evaluate_sft", ["--predictions", "{d}/p.jsonl", "--temperature", "-1"], lambda d: _preds(d, 1), "--temperature: -1.0 must be > 0"),
    ("evaluate_sft", ["--predictions", "{d}/p.jsonl", "--top-p", "7"], lambda d: _preds(d, 1), "--top-p: 7.0 must be <= 1"),
    # ---- a broken JSON list in a list option (used to end in a JSONDecodeError traceback); integers read exactly
    ("train_sft", ["--lora-target-modules", "[q_proj"], None, "--lora-target-modules: '[q_proj' is not a list"),
    ("evaluate_sft", ["--predictions", "{d}/p.jsonl", "--buckets", "[1,"], lambda d: _preds(d, 1), "--buckets: '[1,' is not a list"),
    ("prompt_schema", ["render", "--data", "{d}/ex/test.jsonl", "--index", "99999999999999999999999"], None, "--index 99999999999999999999999 is out of range"),
    ("train_sft", ["--max-steps", "1e30"], None, "--max-steps: '1e30' is not a whole number written exactly"),
    # ---- a key given twice, input nested deeper than Python's recursion limit (used to end in a traceback)
    ("train_sft", ["-c", "{d}/c.yaml"], lambda d: _write(d / "c.yaml", "seed: 1\nlearning_rate: 0.1\nseed: 2\n"), "key 'seed' is given twice (lines 1 and 3)"),
    ("train_sft", ["-c", "{d}/c.yaml"], lambda d: _write(d / "c.yaml", "seed: " + "[" * 6000 + "]" * 6000 + "\n"), "YAML nested deeper than can be read"),
    ("evaluate_sft", ["--predictions", "{d}/p.jsonl", "--test-data", "{d}/ex/test.jsonl"], lambda d: _write(d / "p.jsonl", '{"id": ' + "[" * 100000 + "]" * 100000 + "}\n"), "p.jsonl:1: (line): JSON nested deeper"),
]


def _dup(path: Path) -> None:
    ex = make_example(0)
    _write(path, json.dumps(ex) + "\n" + json.dumps(ex) + "\n")


def _preds(d: Path, n: int, dup: bool = False) -> None:
    ids = [json.loads(x)["id"] for x in (d / "ex/test.jsonl").read_text().splitlines()][:n]
    rows = [{"id": i, "raw_output": '{"answer": "x", "citations": ["E1"], "confidence": 0.5}'} for i in ids]
    if dup:
        rows.append(rows[0])
    _write(d / "p.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A data dir with the bundled sample's raw files (fixtures merged into raw/), built once, so
    every case starts from real outputs and a real manifest that a failed run must leave as they are."""
    d = tmp_path_factory.mktemp("bad") / "w"
    shutil.copytree(SAMPLE / "raw", d / "raw")
    shutil.copytree(SAMPLE / "fixtures", d / "raw", dirs_exist_ok=True)
    assert build_data.main(["--data-dir", str(d), "--accept-new-hash", "--quiet"]) == 0
    exs = [make_example(i, split=s) for i, s in enumerate(["train"] * 6 + ["test"] * 3)]
    write_jsonl(d / "ex" / "train.jsonl", exs[:6], EXAMPLE)
    write_jsonl(d / "ex" / "test.jsonl", exs[6:], EXAMPLE)
    return d


@pytest.fixture()
def workdir(template, tmp_path, monkeypatch):
    d = tmp_path / "w"
    shutil.copytree(template, d)
    monkeypatch.chdir(d)  # defaults such as checkpoints/sft/default land here, so "untouched" covers them
    return d


def test_the_table_is_large_and_covers_every_script():
    assert len(CASES) >= 40 and {c[0] for c in CASES} == set(SCRIPTS)


@pytest.mark.parametrize("script, argv, prepare, needle", CASES,
                         ids=[f"{c[0]}-{i}-{c[3][:30]}" for i, c in enumerate(CASES)])
def test_bad_input_gives_one_line_and_changes_nothing(workdir, capsys, script, argv, prepare, needle):
    if prepare is not None:
        prepare(workdir)
    before = _snapshot(workdir)
    rc = SCRIPTS[script]([a.replace("{d}", str(workdir)) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err[-1500:]
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err[-1500:]
    assert needle in lines[0], lines[0]
    assert _snapshot(workdir) == before, "a failed run changed files"


def _alias_bomb() -> str:
    names = "abcdefghi"
    levels = ['&a ["x","x","x","x","x","x","x","x","x"]']
    levels += [f"&{names[i]} [" + ",".join([f"*{names[i - 1]}"] * 9) + "]" for i in range(1, 9)]
    return "seed: [" + ", ".join(levels) + "]\n"   # 9 levels: about 387 million strings if expanded


@pytest.mark.parametrize("text", ["seed: " + "x" * 2_000_000 + "\n", _alias_bomb()], ids=["2MB-value", "alias-bomb"])
def test_an_error_line_stays_short_whatever_the_input(workdir, capsys, text):
    _write(workdir / "c.yaml", text)
    rc = SCRIPTS["train_sft"](["-c", str(workdir / "c.yaml")])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc == 2 and len(lines) == 1 and "c.yaml: seed" in lines[0]
    assert len(lines[0]) <= len("error: ") + 500, len(lines[0])


def test_os_errors_read_as_a_path_a_reason_and_a_fix():
    """Issue 24, item 14: OS errors used to print as a raw `[Errno N] ...`."""
    import errno

    from factuality.errors import one_line

    assert one_line(FileNotFoundError(errno.ENOENT, "No such file or directory", "x.json")) == \
        "x.json: No such file or directory; check the path (or run the step that writes it)"
    assert one_line(OSError(errno.ENOSPC, "No space left on device")) == \
        "No space left on device; free disk space and rerun the same command (it resumes)"
    assert "[Errno" not in one_line(PermissionError(errno.EACCES, "Permission denied", "/root/x", None, "/y"))
    assert one_line(FileNotFoundError("runs/sft: no adapter here; train first")) == "runs/sft: no adapter here; train first"


@pytest.fixture(scope="module")
def model_files(tiny_model_dir, tmp_path_factory) -> dict:
    """A tiny base model and a LoRA adapter over it, saved as the training scripts save them."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False, task_type="CAUSAL_LM"))
    model.save_pretrained(d / "adapter")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(d / "adapter")
    exs = [make_example(i, split=s) for i, s in enumerate(["train"] * 6 + ["test"] * 2)]
    write_jsonl(d / "train.jsonl", exs[:6], EXAMPLE)
    write_jsonl(d / "test.jsonl", exs[6:], EXAMPLE)
    return {"base": Path(tiny_model_dir), "adapter": d / "adapter", "data": d}


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


BROKEN_MODEL_CASES = [   # (what is broken, script, needle): each used to end in a traceback (issue 24, item 1)
    ("tokenizer.json", "train_sft", "cannot load the tokenizer (JSONDecodeError"),
    ("model.safetensors", "train_sft", "cannot load the model weights (SafetensorError"),
    ("adapter_model.safetensors", "evaluate_sft", "adapter_model.safetensors: not a readable safetensors file"),
    ("adapter_config.json", "evaluate_sft", "adapter_config.json:"),
    ("no adapter weights", "evaluate_sft", "adapter_config.json but no adapter_model.safetensors"),
    ("max_length", "train_sft", "train: no example fits max_length 70"),
]


@pytest.mark.parametrize("broken, script, needle", BROKEN_MODEL_CASES, ids=[c[0] for c in BROKEN_MODEL_CASES])
def test_broken_model_files_give_one_line(model_files, tmp_path, capsys, monkeypatch, broken, script, needle):
    monkeypatch.chdir(tmp_path)
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    shutil.copytree(model_files["base"], base)
    shutil.copytree(model_files["adapter"], adapter)
    if broken == "no adapter weights":
        (adapter / "adapter_model.safetensors").unlink()
    elif broken in ("tokenizer.json", "model.safetensors"):
        _truncate(base / broken, 200)
    elif broken != "max_length":
        _truncate(adapter / broken, 40)
    data = model_files["data"]
    if script == "train_sft":
        argv = ["-c", str(ROOT / "configs" / "sft_tiny.yaml"), "--model-name-or-path", str(base), "--train-file",
                str(data / "train.jsonl"), "--val-file", "", "--output-dir", str(tmp_path / "out")]
        argv += ["--max-length", "70"] if broken == "max_length" else []
    else:
        argv = ["--model-path", str(adapter), "--base-model", str(base), "--test-data", str(data / "test.jsonl"),
                "--output", str(tmp_path / "out" / "e.json"), "--max-new-tokens", "4", "--fast"]
    rc = SCRIPTS[script](argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc == 2 and "Traceback" not in err and len(lines) == 1, err[-1500:]
    assert needle in lines[0], lines[0]


@pytest.mark.parametrize("bad_id", ["../x", "\u04151", "E1 ", "e1", "1"])
def test_evidence_ids_follow_the_output_schemas_pattern(tmp_path, bad_id):
    """Issue 24, item 9: examples accepted any evidence id while citations must match ^E[0-9]+$, so
    data with ids like `../x` or a Cyrillic `Е1` trained on targets the output schema calls invalid."""
    from factuality.records import RecordError, read_examples, with_hash

    ex = make_example(0)
    old = ex["evidence"][0]["id"]
    ex["evidence"][0]["id"] = bad_id
    ex["support"] = [dict(s, chunk_id=bad_id) if s["chunk_id"] == old else s for s in ex["support"]]
    ex["hard_negatives"] = [bad_id if h == old else h for h in ex["hard_negatives"]]
    path = tmp_path / "test.jsonl"
    _write(path, json.dumps(with_hash(ex)) + "\n")
    with pytest.raises(RecordError, match=r"test.jsonl:1: evidence\[0\]\.id"):
        read_examples(path)
