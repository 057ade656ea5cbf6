"""All seven stages chained on the tiny model through their run() functions, each contract file
between them read back through its contract: processed examples -> prompts -> SFT adapter ->
candidates -> preference pairs -> reward model -> DPO adapter -> predictions and results."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from factuality.config import parse_config
from factuality.records import EXAMPLE, PREFERENCE, read_examples, read_jsonl, write_jsonl
from factuality.testing import make_example

pytestmark = [pytest.mark.usefixtures("one_torch_thread")]
ROOT = Path(__file__).resolve().parent.parent


def test_seven_stages_chain_on_the_tiny_model(tiny_model_dir, tmp_path, monkeypatch):
    from factuality.stages import build, dpo, evaluate as evaluation, prefs, prompt_schema as prompt_tool, reward, sft
    from factuality.predictions import PREDICTION

    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_model_dir, tmp_path / "tiny")
    tiny = str(tmp_path / "tiny")

    # 1. build_data on the bundled sample -> the processed contract (splits + run card as one set)
    summary = build.run(parse_config(build.BuildConfig, ["--data-dir", str(tmp_path / "data"), "--quiet"]))
    assert summary
    processed = tmp_path / "data" / "processed"
    splits = {s: read_examples(processed / f"{s}.jsonl") for s in ("train", "val", "test")}
    assert all(splits.values()) and not ({e["question"] for e in splits["train"]} & {e["question"] for e in splits["test"]})
    # the chain runs on a small slice: the tiny model's tokenizer is byte-level and the sample's prompts are long
    small = tmp_path / "small"
    picks = {"train": 8, "val": 4, "test": 4}
    for s, n in picks.items():
        write_jsonl(small / f"{s}.jsonl", [e for e in splits[s] if e["source"] != "fever"][:n - 2] +
                    [make_example(900 + i + 10 * len(s), source="fever", split=s) for i in range(2)], EXAMPLE)

    # 2. prompt_schema save -> prompts/ that train_sft reads back
    prompt_tool.run(parse_config(prompt_tool.PromptSchemaConfig, ["save", "--prompts-dir", "prompts"]))
    assert (tmp_path / "prompts" / "system.txt").exists()

    # 3. train_sft -> an adapter with its run card
    card = sft.run(parse_config(sft.SFT_SPEC, [
        "-c", str(ROOT / "configs" / "sft_tiny.yaml"), "--model-name-or-path", tiny, "--train-file",
        str(small / "train.jsonl"), "--val-file", str(small / "val.jsonl"), "--prompts-dir", "prompts",
        "--max-length", "1024", "--output-dir", "runs/sft", "--max-steps", "2"]))
    assert card["global_step"] == 2 and (tmp_path / "runs/sft/adapter_model.safetensors").exists()

    # 4. make_prefs generate + judge -> preference pairs (train and val), no test pair
    common = ["-c", str(ROOT / "configs" / "prefs_tiny.yaml"), "--sft-model", "runs/sft", "--data-path",
              str(small / "train.jsonl"), "--val-path", str(small / "val.jsonl"), "--judge-model", tiny,
              "--max-input-tokens", "1024", "--output-dir", "prefs"]
    prefs.run(parse_config(prefs.PREFS_SPEC, common + ["--phase", "generate"]))
    judged = prefs.run(parse_config(prefs.PREFS_SPEC, common + ["--phase", "judge"]))
    pair_files = list((tmp_path / "prefs").glob("preferences_*.jsonl"))
    assert len(pair_files) == 1, judged
    pairs = read_jsonl(pair_files[0], PREFERENCE)
    assert {p["split"] for p in pairs} == {"train", "val"} and all(p["margin"] >= 0.05 for p in pairs)

    # 5. train_rm on those pairs -> a reward model that loads back on its own, and its report
    rm_card = reward.run(parse_config(reward.RM_SPEC, [
        "-c", str(ROOT / "configs" / "rm_tiny.yaml"), "--model-name-or-path", tiny, "--pairs-path",
        str(pair_files[0]), "--probe-data", str(small / "val.jsonl"), "--output-dir", "runs/rm"]))
    assert rm_card
    history = json.loads((tmp_path / "runs/rm/training_history.json").read_text())
    assert history["train_losses"] and all("roc_auc" in m for m in history["eval_metrics"])
    rm = reward.load_reward_model(tmp_path / "runs/rm/best")
    scores = rm.score([pairs[0]["prompt"]] * 2, [pairs[0]["chosen"], pairs[0]["rejected"]])
    assert len(scores) == 2 and all(isinstance(s, float) for s in scores)

    # 6. train_dpo from the SFT adapter on the pairs, fed by the reward model
    dpo_card = dpo.run(parse_config(dpo.DPO_SPEC, [
        "-c", str(ROOT / "configs" / "dpo_tiny.yaml"), "--model-name-or-path", tiny, "--sft-adapter", "runs/sft",
        "--pairs-file", str(pair_files[0]), "--output-dir", "runs/dpo", "--max-length", "1024",
        "--rm-checkpoint", "runs/rm/best"]))
    assert dpo_card and (tmp_path / "runs/dpo/adapter_model.safetensors").exists()

    # 7. one evaluation of base, SFT and DPO -> predictions (contract) and results with two comparisons
    res = evaluation.run(parse_config(evaluation.EvalConfig, [
        "--systems", "base,sft=runs/sft,dpo=runs/dpo", "--compare", "sft:base,dpo:sft", "--test-data",
        str(small / "test.jsonl"), "--batch-size", "4", "--max-new-tokens", "8", "--bootstrap-samples", "50",
        "--buckets", "512", "--output", "runs/eval/eval_results.json", "--progress", "false", "--plots", "false"]))
    rows = read_jsonl(tmp_path / "runs/eval/eval_results.predictions.jsonl", PREDICTION)
    assert len(rows) == 3 * picks["test"] and res["tags"] == ["base", "sft", "dpo"]
    assert [c["label"] for c in res["comparisons"]] == ["sft-base", "dpo-sft"] and res["complete"]

    # the main job's closing summary reads these very files: the table and the reward model's report
    from factuality.stages.pipeline import final_summary, rm_lines

    rm_report = json.loads((tmp_path / "runs/rm/rm_report.json").read_text())
    lines = rm_lines(rm_report)
    assert "| reward model (penalised) |" in lines and "| flipped_verdict |" in lines
    (tmp_path / "runs/eval-pipeline").mkdir(parents=True)
    shutil.copy(tmp_path / "runs/eval/eval_results.json", tmp_path / "runs/eval-pipeline/eval_results.json")
    shutil.copytree(tmp_path / "runs/rm", tmp_path / "checkpoints/rm/tiny")
    text = final_summary([{"name": "evaluate", "status": "ran", "seconds": 1.0}],
                         {"eval": "runs/eval-pipeline/eval_results.json", "rm": "checkpoints/rm/tiny"})
    assert "dpo" in text and "ROC-AUC" in text and "| evaluate | ran |" in text
