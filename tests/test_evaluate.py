"""evaluate_sft.py end to end on the tiny random model with a random LoRA adapter."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import evaluate_sft
from factuality.config import ConfigError, parse_config
from factuality.pool import resolve_models
from factuality.records import RecordError, with_hash, write_jsonl

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_adapter(tiny_model_dir, out: Path, seed: int) -> Path:
    """A LoRA adapter with random (non-zero) weights over the tiny model, saved like train_sft.py does."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"],
                                            init_lora_weights=False, task_type="CAUSAL_LM"))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return random_adapter(tiny_model_dir, tmp_path_factory.mktemp("sft") / "run", seed=0)


@pytest.fixture()
def test_file(tmp_path, examples) -> Path:
    p = tmp_path / "test.jsonl"
    write_jsonl(p, examples)
    return p


def make_cfg(adapter_dir, test_file, out, **kw):
    base = dict(model_path=str(adapter_dir), test_data=str(test_file), compare_baseline=True, batch_size=2,
                max_new_tokens=10, buckets=[300, 400], output=str(out), bootstrap_samples=200, progress=False)
    base.update(kw)
    return parse_config(evaluate_sft.EvalConfig, [], **base)


def read_rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@pytest.fixture()
def full_run(adapter_dir, test_file, tmp_path, capsys):
    res = evaluate_sft.main(make_cfg(adapter_dir, test_file, tmp_path / "eval.json"))
    return res, capsys.readouterr().out


def test_results_file_has_everything(full_run, tmp_path, examples, tiny_model_dir):
    res, printed = full_run
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["metrics"] == res["metrics"] and saved["complete"] is True
    for tag in ("sft", "base"):
        cells = saved["metrics"][tag]
        assert cells["overall"]["n"] == len(examples)
        assert set(cells["by_bucket"]) == {"<=300", "301-400", ">400"}
        assert sum(c["n"] for c in cells["by_bucket"].values()) == len(examples)
        assert set(cells["by_source"]) == {"nq", "hotpotqa", "popqa"}
        m = cells["overall"]["metrics"]
        assert m["format_validity"]["value"] == 0.0         # a random model emits no JSON: scored, not a crash
        assert m["hallucination_rate"]["value"] == 1.0
        assert m["em"]["n"] == 4 and m["refusal_recall"]["n"] == 2
        assert m["format_validity"]["ci"] == [0.0, 0.0]
    for key in ("em", "f1", "hallucination_rate", "citation_correctness", "refusal_precision", "format_validity"):
        assert key in saved["deltas"]
    assert saved["deltas"]["em"] == 0.0 and saved["delta_details"]["overall"]["em"]["ci"] == [0.0, 0.0]
    assert saved["models"]["base"]["name"] == str(tiny_model_dir)  # read from adapter_config.json
    assert saved["inputs"]["test_data"]["sha256"] and saved["signatures"]["sft"] != saved["signatures"]["base"]
    assert saved["versions"]["torch"] and "git_commit" in saved
    rows = read_rows(tmp_path / "eval.predictions.jsonl")
    assert len(rows) == 2 * len(examples)
    assert {r["model_tag"] for r in rows} == {"sft", "base"}
    assert all(r["prompt_tokens"] > 0 and r["parsed"]["valid"] is False for r in rows)
    sft = {r["id"]: r["raw_output"] for r in rows if r["model_tag"] == "sft"}
    base = {r["id"]: r["raw_output"] for r in rows if r["model_tag"] == "base"}
    assert sft != base                                        # the adapter is really applied (and disabled)
    md = (tmp_path / "eval.md").read_text()
    assert "| EM |" in md and "By prompt-length bucket" in md
    assert sorted(p.name for p in (tmp_path / "eval_plots").glob("*.png")) == ["metrics_by_bucket.png",
                                                                           "metrics_by_source.png"]
    assert "Hallucination rate" in printed and "sft-base" in printed   # the delta column of the comparison


def test_rescoring_predictions_without_a_model(full_run, adapter_dir, test_file, tmp_path, monkeypatch):
    res, _ = full_run
    import factuality.modeling as modeling

    def no_model(*a, **k):
        raise AssertionError("--predictions must not load a model")

    monkeypatch.setattr(modeling, "load_model", no_model)
    again = evaluate_sft.main(parse_config(
        evaluate_sft.EvalConfig, ["--predictions", str(tmp_path / "eval.predictions.jsonl"), "--test-data",
                                  str(test_file), "--buckets", "300,400", "--output", str(tmp_path / "re.json"),
                                  "--bootstrap-samples", "200", "--plots", "false"]))
    assert again["metrics"] == res["metrics"]
    assert again["deltas"] == res["deltas"] and again["delta_details"] == res["delta_details"]
    assert again["prompt_length"]["counted_with"] == "prompt_tokens recorded in the predictions file"
    # another system's outputs: only {id, raw_output}; lengths then approximated, and it says so
    ext = tmp_path / "other.jsonl"
    rows = [{"id": r["id"], "raw_output": '{"answer": "Linda Davis", "citations": ["E1"], "confidence": 1}'}
            for r in read_rows(tmp_path / "eval.predictions.jsonl") if r["model_tag"] == "sft"]
    write_jsonl(ext, rows)
    other = evaluate_sft.main(make_cfg(None, test_file, tmp_path / "other.json", predictions=str(ext),
                                       compare_baseline=False))
    assert "approximation" in other["prompt_length"]["counted_with"]
    assert other["metrics"]["sft"]["overall"]["metrics"]["format_validity"]["value"] == 1.0
    assert other["deltas"] == {}


def test_interrupted_run_resumes_without_duplicates(full_run, adapter_dir, test_file, tmp_path, examples):
    res, _ = full_run
    out = tmp_path / "resume" / "eval.json"
    part = evaluate_sft.main(make_cfg(adapter_dir, test_file, out, max_batches=1))
    rows = read_rows(out.with_name("eval.predictions.jsonl"))
    assert part["complete"] is False and len(rows) == 2            # one batch of 2, then stopped
    assert part["coverage"]["sft"] == {"scored": 2, "missing": len(examples) - 2, "left_out": 0}
    with open(out.with_name("eval.predictions.jsonl"), "a") as f:
        f.write('{"schema_version": 1, "id": "nq:3", "model_t')   # a line torn by a kill
    done = evaluate_sft.main(make_cfg(adapter_dir, test_file, out))
    rows = read_rows(out.with_name("eval.predictions.jsonl"))
    keys = [(r["model_tag"], r["id"]) for r in rows]
    assert len(keys) == len(set(keys)) == 2 * len(examples)
    assert done["complete"] is True
    assert done["metrics"] == res["metrics"]                       # same as the uninterrupted run
    # a changed generation setting must not be mixed into the same file
    with pytest.raises(RecordError, match=r"different run \(changed: max_new_tokens\).*--overwrite"):
        evaluate_sft.main(make_cfg(adapter_dir, test_file, out, max_new_tokens=5))
    fresh = evaluate_sft.main(make_cfg(adapter_dir, test_file, out, max_new_tokens=5, overwrite=True,
                                       compare_baseline=False))
    assert len(read_rows(out.with_name("eval.predictions.jsonl"))) == len(examples)
    assert fresh["metrics"]["sft"]["overall"]["metrics"]["output_tokens"]["value"] <= 5


def test_bad_test_line_is_refused_with_its_line_number(adapter_dir, tmp_path, examples):
    p = tmp_path / "test.jsonl"
    lines = [json.dumps(e) for e in examples]
    bad = dict(examples[2])
    bad["answers"] = []
    lines[2] = json.dumps(bad)
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordError, match=r"test\.jsonl:3: answers"):
        evaluate_sft.main(make_cfg(adapter_dir, p, tmp_path / "eval.json"))
    with pytest.raises(ConfigError, match="--model-path"):
        parse_config(evaluate_sft.EvalConfig, [])


def test_config_flags(adapter_dir, tiny_model_dir, tmp_path):
    from factuality.config import build_parser

    assert "--compare-baseline" in build_parser(evaluate_sft.EvalConfig).format_help()  # --help renders
    parse_config(evaluate_sft.EvalConfig, ["-c", "configs/eval_cpu.yaml"])              # the demo config is valid
    cfg = parse_config(evaluate_sft.EvalConfig, ["--model-path", "x", "--attn-impl", "flash2", "--fast",
                                                 "--buckets", "2048,3072"])
    assert cfg.attn_implementation == "flash_attention_2" and cfg.max_new_tokens == 64 and cfg.buckets == [2048, 3072]
    assert resolve_models(str(adapter_dir), None)["base"] == str(tiny_model_dir)
    assert resolve_models(str(adapter_dir), "other/model")["base"] == "other/model"
    from factuality.modeling import EMBEDDED_MODEL

    assert resolve_models(str(tiny_model_dir), None) == {
        "adapter": None, "evaluated": str(tiny_model_dir), "base": EMBEDDED_MODEL, "base_from": "default (embedded)"}


def test_base_and_two_adapters_in_one_run(adapter_dir, tiny_model_dir, test_file, tmp_path, examples, capsys):
    """N systems: one base in memory with two named adapters; every table, summary and plot takes its
    columns from the results (base, sft, dpo) and the comparisons the user lists."""
    dpo_dir = random_adapter(tiny_model_dir, tmp_path / "dpo", seed=1)
    cfg = parse_config(evaluate_sft.EvalConfig, [
        "--systems", f"base,sft={adapter_dir},dpo={dpo_dir}", "--compare", "sft:base,dpo:sft",
        "--test-data", str(test_file), "--batch-size", "2", "--max-new-tokens", "8", "--buckets", "300,400",
        "--bootstrap-samples", "100", "--output", str(tmp_path / "three.json"), "--progress", "false"])
    res = evaluate_sft.main(cfg)
    printed = capsys.readouterr().out
    assert res["tags"] == ["base", "sft", "dpo"] and [c["label"] for c in res["comparisons"]] == ["sft-base", "dpo-sft"]
    rows = read_rows(tmp_path / "three.predictions.jsonl")
    outs = {t: {r["id"]: r["raw_output"] for r in rows if r["model_tag"] == t} for t in res["tags"]}
    assert all(len(v) == len(examples) for v in outs.values())
    assert outs["sft"] != outs["base"], "the sft adapter really applied, the base really bare"
    assert outs["dpo"] != outs["base"], "the dpo adapter really applied"  # (sft and dpo both emit junk bytes here)
    header = next(ln for ln in printed.splitlines() if ln.startswith("metric")).split()
    assert header[:8] == ["metric", "(entailment:", "lexical)", "base", "sft", "dpo", "sft-base", "95%"] and "dpo-sft" in header
    md = (tmp_path / "three.md").read_text()
    md_header = next(ln for ln in md.splitlines() if ln.startswith("| metric"))
    assert [c.strip() for c in md_header.strip("|").split("|")][:4] == ["metric (entailment: lexical)", "base", "sft", "dpo"]
    assert md_header.count("sft-base") == 1 and md_header.count("dpo-sft") == 1
    plots = sorted((tmp_path / "three_plots").glob("*.png"))
    assert plots and all(p.stat().st_size > 0 for p in plots)
    assert res["deltas"] == {k: v["delta"] for k, v in res["comparisons"][0]["overall"].items()}
    # the same systems' rows re-scored without a model give the same figures
    again = evaluate_sft.main(parse_config(evaluate_sft.EvalConfig, [
        "--predictions", str(tmp_path / "three.predictions.jsonl"), "--compare", "sft:base,dpo:sft",
        "--test-data", str(test_file), "--buckets", "300,400", "--bootstrap-samples", "100",
        "--output", str(tmp_path / "again.json"), "--plots", "false"]))
    assert again["metrics"] == res["metrics"] and again["tags"] == res["tags"]


def test_model_pool_gives_each_system_its_own_weights(adapter_dir, tiny_model_dir, tmp_path):
    """One base in memory, adapters by name: each system's logits equal a separately loaded model's."""
    import torch

    from factuality.pool import ModelPool
    from factuality.stages.evaluate import plan_systems
    from factuality.modeling import load_model

    dpo_dir = random_adapter(tiny_model_dir, tmp_path / "dpo", seed=1)
    cfg = parse_config(evaluate_sft.EvalConfig, ["--systems", f"base,sft={adapter_dir},dpo={dpo_dir}"])
    systems, pairs = plan_systems(cfg)
    assert [s["tag"] for s in systems] == ["base", "sft", "dpo"] and pairs == [("sft", "base"), ("dpo", "base")]
    pool, ids, logits = ModelPool(cfg), torch.tensor([[5, 6, 7, 8, 9]]), {}
    adapters = [s for s in systems if s["adapter"]]
    for s in systems:
        model, ctx = pool.context(s, adapters)
        with ctx, torch.no_grad():
            logits[s["tag"]] = model(input_ids=ids).logits
    with torch.no_grad():
        want = {"base": load_model(str(tiny_model_dir))(input_ids=ids).logits,
                "sft": load_model(str(tiny_model_dir), adapter_path=adapter_dir)(input_ids=ids).logits,
                "dpo": load_model(str(tiny_model_dir), adapter_path=dpo_dir)(input_ids=ids).logits}
    for tag in want:
        torch.testing.assert_close(logits[tag], want[tag], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits["sft"], logits["dpo"])


def test_an_evaluation_yaml_with_attn_implementation_eager_evaluates_with_eager(adapter_dir, test_file, tmp_path,
                                                                               monkeypatch):
    """The key used to be accepted and then overwritten by --attn-impl's default (sdpa); it now sets
    --attn-impl (compat.STAGE_ALIASES), and the model the evaluator loads runs eager attention."""
    import factuality.modeling as modeling

    loaded = []
    real = modeling.load_model

    def spy(opts, *args, **kwargs):
        model = real(opts, *args, **kwargs)
        loaded.append((opts.attn_implementation, model.config._attn_implementation))
        return model

    monkeypatch.setattr(modeling, "load_model", spy)
    yaml_path = tmp_path / "eval.yaml"
    yaml_path.write_text(f"model_path: {adapter_dir}\ntest_data: {test_file}\nattn_implementation: eager\n"
                         f"max_new_tokens: 4\nlimit: 2\nbootstrap_samples: 0\nplots: false\nprogress: false\n"
                         f"output: {tmp_path / 'out.json'}\n")
    cfg = parse_config(evaluate_sft.EvalConfig, ["-c", str(yaml_path)])
    results = evaluate_sft.run(cfg)
    assert loaded == [("eager", "eager")]
    assert results["config"]["attn_implementation"] == "eager"


def test_a_second_evaluation_onto_one_output_fails_at_once(adapter_dir, test_file, tmp_path):
    from factuality.testing import claimed_by_another_process

    out = tmp_path / "busy.json"
    with claimed_by_another_process(out):
        with pytest.raises(FileExistsError, match="another run is writing here now"):
            evaluate_sft.run(make_cfg(adapter_dir, test_file, out))
        assert not out.exists() and not Path(f"{out.with_suffix('')}.predictions.jsonl").exists()


def test_constrained_and_selective_columns(adapter_dir, test_file, tmp_path, examples):
    """--constrained holds sft to the answer contract (every output valid, no cited refusal, no
    evidence-id answer) while base runs free; --selective adds sft.sel, fitted on the calibration
    split's own generations (a file of their own) and applied to sft's test rows; the confidence of
    each answer is its token probability."""
    val = tmp_path / "val.jsonl"
    write_jsonl(val, [with_hash(dict(e, id=e["id"] + "-val", split="val")) for e in examples])
    out = tmp_path / "c.json"
    cfg = parse_config(evaluate_sft.EvalConfig, [
        "--systems", f"base,sft={adapter_dir}", "--constrained", "sft", "--selective", "sft",
        "--calibration-data", str(val), "--compare", "sft:base,sft.sel:sft", "--test-data", str(test_file),
        "--batch-size", "2", "--max-new-tokens", "200", "--buckets", "300,400", "--bootstrap-samples", "50",
        "--output", str(out), "--plots", "false", "--progress", "false"])
    res = evaluate_sft.main(cfg)
    assert res["tags"] == ["base", "sft", "sft.sel"]
    rows = read_rows(tmp_path / "c.predictions.jsonl")
    sft = [r for r in rows if r["model_tag"] == "sft"]
    assert len(sft) == len(examples) and all(r["parsed"]["valid"] for r in sft if r["stopped"])
    assert sum(r["stopped"] for r in sft) >= len(sft) // 2
    for r in sft:
        if r["parsed"]["valid"] and not r["parsed"]["refusal"]:
            assert 0 < r["answer_prob"] <= 1 and r["parsed"]["confidence"] == r["answer_prob"]
    assert res["error_types"]["sft"]["cited_refusal"] == res["error_types"]["sft"]["evidence_id_answer"] == 0
    cal = read_rows(tmp_path / "c.calibration.predictions.jsonl")
    assert {r["model_tag"] for r in cal} == {"sft"} and len(cal) == len(examples)
    assert all(r["id"].endswith("-val") for r in cal)
    sel = res["selective"]["sft"]
    assert sel["examples"] == len(examples) and 0 <= sel["threshold"] <= 1
    assert res["signatures"]["sft"] != res["signatures"]["base"]
    md = (tmp_path / "c.md").read_text()
    assert "What the outputs are" in md and "random abstention" in md


def test_calibration_data_must_not_hold_test_examples(adapter_dir, test_file, tmp_path):
    cfg = parse_config(evaluate_sft.EvalConfig, [
        "--systems", f"sft={adapter_dir}", "--selective", "sft", "--calibration-data", str(test_file),
        "--test-data", str(test_file), "--max-new-tokens", "4", "--output", str(tmp_path / "x.json"),
        "--plots", "false", "--progress", "false"])
    with pytest.raises(ConfigError, match="holds test example"):
        evaluate_sft.main(cfg)


@pytest.mark.parametrize("argv,msg", [
    (["--systems", "sft=x", "--selective", "dpo"], "not a system of this run"),
    (["--systems", "sft=x", "--constrained", "sft", "--backend", "vllm"], "transformers backend"),
    (["--systems", "sft=x", "--constrained", "bad tag"], "expected system tags"),
])
def test_constrained_and_selective_options_are_checked(argv, msg, tmp_path):
    with pytest.raises(ConfigError, match=msg):
        cfg = parse_config(evaluate_sft.EvalConfig, argv + ["--output", str(tmp_path / "y.json")])
        evaluate_sft.main(cfg)


def test_signatures_name_the_backend_and_the_constraint(adapter_dir, tmp_path):
    """What decides a system's outputs is in its signature: the generation engine and whether it
    decoded under the answer contract (so a resumed run never mixes such rows)."""
    from factuality.prompts import PromptTemplates
    from factuality.stages.evaluate import plan_systems, system_signatures

    def sigs(*argv):
        cfg = parse_config(evaluate_sft.EvalConfig, ["--systems", f"base,sft={adapter_dir}", *argv,
                                                     "--output", str(tmp_path / "s.json")])
        systems, _ = plan_systems(cfg)
        return system_signatures(cfg, systems, PromptTemplates(), "data", "tok")[1]

    plain = sigs()
    assert sigs("--backend", "vllm")["sft"] != plain["sft"]
    held = sigs("--constrained", "sft")
    assert held["sft"] != plain["sft"] and held["base"] == plain["base"]


def test_overwrite_with_an_adapter_that_fails_to_load_keeps_the_predictions(full_run, adapter_dir, test_file,
                                                                           tmp_path):
    """--overwrite replaces the predictions only once a model generated: a truncated adapter fails
    to load and the old predictions file and its sidecar stay byte for byte (it used to be cut to 0
    bytes); the same command then reruns from the old rows' state."""
    import shutil

    pred = tmp_path / "eval.predictions.jsonl"
    side = Path(f"{pred}.signatures.json")
    before = {p: p.read_bytes() for p in (pred, side)}
    broken = tmp_path / "broken"
    shutil.copytree(adapter_dir, broken)
    w = broken / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(Exception):
        evaluate_sft.run(make_cfg(broken, test_file, tmp_path / "eval.json", overwrite=True))
    assert {p: p.read_bytes() for p in (pred, side)} == before
    assert not list(tmp_path.glob(".eval.predictions.jsonl*"))          # no backup left behind


def test_a_train_split_is_not_scored_as_test_unless_asked(adapter_dir, tmp_path, examples):
    """Issue 24, item 10: --test-data holding training examples is refused (it used to be scored and
    reported as test); --allow-train-split scores them and the results and summary name the split."""
    train = tmp_path / "train.jsonl"
    write_jsonl(train, [with_hash({**e, "split": "train"}) for e in examples])
    with pytest.raises(ConfigError, match="are from the train split"):
        evaluate_sft.run(make_cfg(adapter_dir, train, tmp_path / "e.json"))
    res = evaluate_sft.run(make_cfg(adapter_dir, train, tmp_path / "e.json", allow_train_split=True,
                                    compare_baseline=False, fast=True))
    assert res["inputs"]["test_data"]["splits"] == {"train": len(examples)}
    assert "not only held-out test" in (tmp_path / "e.md").read_text()


def test_output_naming_a_folder_writes_inside_it(adapter_dir, test_file, tmp_path):
    """Issue 24, item 14: --output <a folder> used to write <folder>.json etc. beside the folder."""
    folder = tmp_path / "evals"
    folder.mkdir()
    evaluate_sft.run(make_cfg(adapter_dir, test_file, folder, fast=True, compare_baseline=False))
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "eval_results.json", "eval_results.md", "eval_results.predictions.jsonl",
        "eval_results.predictions.jsonl.signatures.json"]
    assert not list(tmp_path.glob("evals.*"))


def test_a_prediction_rows_scores_see_the_prose_as_the_results_do(examples):
    """Issue 24, item 14: the per-example scores of a prose output were computed without its raw
    text, so the lenient measures read 0 in the predictions file while the results counted them."""
    from factuality.metrics import score_example
    from factuality.predictions import prediction_row

    e = next(x for x in examples if x["answerable"])
    prose = f"Going by the passages, the answer is {e['answers'][0]}."
    row = prediction_row(e, "base", prose, 100, 12, "sig")
    assert row["scores"]["match"] == 1.0
    assert row["scores"] == score_example(e, raw_output=prose, output_tokens=12)
