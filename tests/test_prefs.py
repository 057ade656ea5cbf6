"""make_prefs.py on the tiny random model: the cache's signature, a killed run resumed, the judge's
symmetry, the margin filter, hard candidates, split safety, and pairs TRL's trainers read as they are."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from factuality.candidates import CANDIDATE, plan_generation
from factuality.config import ConfigError, parse_config
from factuality.judge import VERIFIER_WEIGHTS, Judge, verifier_score
from factuality.pairing import Candidate, good_sources, hard_candidates, select_pairs
from factuality.perturb import KINDS
from factuality.prompts import dump_output, gold_output
from factuality.records import EXAMPLE, PREFERENCE, RecordError, read_jsonl, write_jsonl
from factuality.stages.prefs import STAGE, generate_phase, run
from factuality.testing import make_example

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
       "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
SOURCES = ["nq", "hotpotqa", "popqa", "fever"]
TINY = str(ROOT / "configs" / "prefs_tiny.yaml")


def examples_for(split: str, n: int, start: int = 0) -> list[dict]:
    return [make_example(start + i, source=SOURCES[i % 4], answerable=(i % 3 != 2), gold_position=i % 3, split=split)
            for i in range(n)]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("data")
    write_jsonl(d / "train.jsonl", examples_for("train", 12), EXAMPLE)
    write_jsonl(d / "val.jsonl", examples_for("val", 4, start=100), EXAMPLE)
    return {"train": d / "train.jsonl", "val": d / "val.jsonl", "dir": d}


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter with random, non-zero weights over the tiny model (so SFT and base differ)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("sft") / "run"
    torch.manual_seed(1)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def make_cfg(adapter, data, out, tiny_model_dir, argv=(), **kw):
    values = dict(sft_model=str(adapter), data_path=[str(data["train"])], val_path=[str(data["val"])],
                  judge_model=str(tiny_model_dir), output_dir=str(out))
    values.update(kw)
    return parse_config(STAGE.config, ["-c", TINY, *argv], **values)


@pytest.fixture(scope="module")
def generated(adapter, data, tiny_model_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("prefs")
    manifest = generate_phase(make_cfg(adapter, data, out, tiny_model_dir))
    return {"out": out, "manifest": manifest}


# ------------------------------------------------------------------ phase 1: signature and cache
def test_signature_changes_with_every_input_and_only_then(adapter, data, tiny_model_dir, tmp_path):
    def sig(**kw):
        return plan_generation(make_cfg(adapter, data, tmp_path / "out", tiny_model_dir, **kw)).signature

    base = sig()
    # inputs that determine the candidates
    changed = {"max_samples": sig(max_samples=5), "max_val_samples": sig(max_val_samples=2),
               "n_generations": sig(n_generations=1), "max_new_tokens": sig(max_new_tokens=9),
               "temperature": sig(temperature=0.7), "seed": sig(seed=7), "max_input_tokens": sig(max_input_tokens=400),
               "min_chunk_chars": sig(min_chunk_chars=100), "dtype": sig(dtype="bfloat16"),
               "8bit": sig(use_8bit=True), "no val file": sig(val_path=[])}
    edited = tmp_path / "train_edited.jsonl"
    rows = examples_for("train", 12)
    rows[3] = make_example(3, source="nq", answerable=True, gold_position=0, split="train", question="another one")
    write_jsonl(edited, rows, EXAMPLE)
    changed["data content"] = sig(data_path=[str(edited)])
    prompts = tmp_path / "prompts"
    shutil.copytree(adapter / "prompts" if (adapter / "prompts").exists() else ROOT / "prompts", prompts)
    (prompts / "system.txt").write_text((prompts / "system.txt").read_text() + "Be brief.\n")
    changed["templates"] = sig(prompts_dir=str(prompts))
    other_adapter = tmp_path / "adapter2"
    shutil.copytree(adapter, other_adapter)
    weights = other_adapter / "adapter_model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 1                                              # one bit of one LoRA weight
    weights.write_bytes(bytes(blob))
    changed["adapter weights"] = sig(sft_model=str(other_adapter))
    from factuality.testing import make_tiny_model

    other_base = make_tiny_model(tmp_path / "other-base", seed=5)
    changed["base model"] = sig(base_model=str(other_base))
    assert all(s != base for s in changed.values()), {k: s for k, s in changed.items() if s == base}
    assert len(set(changed.values())) == len(changed)
    # options that do not change the candidates
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(data["train"], moved / "train.jsonl")
    same = {"batch_size": sig(batch_size=1), "prefill": sig(prefill="batched"), "decode": sig(decode="generate"),
            "output_dir": plan_generation(make_cfg(adapter, data, tmp_path / "elsewhere", tiny_model_dir)).signature,
            "judge options": sig(judge_batch_size=2, min_margin=0.3, judge_mode="verifiers", output_mode="rich"),
            "top_p when greedy": sig(top_p=0.5), "data file moved": sig(data_path=[str(moved / "train.jsonl")]),
            "progress": sig(progress=True)}
    assert all(s == base for s in same.values()), {k: s for k, s in same.items() if s != base}
    assert sig(temperature=0.7, top_p=0.5) != sig(temperature=0.7)   # top_p counts once sampling


def test_cache_layout_and_reuse(generated, adapter, data, tiny_model_dir, monkeypatch):
    out, manifest = generated["out"], generated["manifest"]
    cache = out / "cache" / manifest["signature"]
    assert sorted(p.name for p in cache.iterdir()) == [".examples.jsonl.sha256", ".generations.jsonl.sha256",
                                                       ".manifest.json.sha256", "examples.jsonl", "generations.jsonl",
                                                       "manifest.json"]
    rows = read_jsonl(cache / "generations.jsonl", CANDIDATE)
    assert len(rows) == 16 * 2 and Counter(r["origin"] for r in rows) == {"sft": 16, "base": 16}
    assert Counter(r["split"] for r in rows) == {"train": 24, "val": 8}
    sft = {r["example_id"]: r["raw_output"] for r in rows if r["origin"] == "sft"}
    base = {r["example_id"]: r["raw_output"] for r in rows if r["origin"] == "base"}
    assert sft != base                                        # the adapter is applied, then disabled
    saved = json.loads((cache / "manifest.json").read_text())
    assert saved["complete"] and saved["payload"]["decoding"]["n_generations"] == 2 and len(saved["data"]) == 2
    import factuality.modeling as modeling

    def no_model(*a, **k):
        raise AssertionError("a complete cache must be reused without loading a model")

    monkeypatch.setattr(modeling, "load_model", no_model)
    again = generate_phase(make_cfg(adapter, data, out, tiny_model_dir, batch_size=3))
    assert again["reused"] and again["signature"] == manifest["signature"]


WRAPPER = '''
import os, runpy, sys, time
import factuality.generation as gen
decode_batch = gen.decode_batch
def slow(*args, **kwargs):
    time.sleep(float(os.environ["SLOW_S"]))
    return decode_batch(*args, **kwargs)
gen.decode_batch = slow
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def test_killed_generation_resumes_to_the_file_an_uninterrupted_run_writes(generated, adapter, data, tiny_model_dir,
                                                                         tmp_path):
    wrapper = tmp_path / "slow.py"
    wrapper.write_text(WRAPPER)
    out = tmp_path / "killed"
    cmd = [sys.executable, str(wrapper), str(ROOT / "make_prefs.py"), "-c", TINY, "--sft-model", str(adapter),
           "--data-path", f"{data['train']},{data['val']}", "--batch-size", "2", "--output-dir", str(out)]
    proc = subprocess.Popen(cmd, env={**ENV, "SLOW_S": "0.4"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    gen_file = out / "cache" / generated["manifest"]["signature"] / "generations.jsonl"
    deadline = time.time() + 240
    lines = 0
    while time.time() < deadline and proc.poll() is None:
        lines = gen_file.read_text().count("\n") if gen_file.exists() else 0
        if lines >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[0].decode()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)                         # mid-generation: between two batches' rows
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    written = gen_file.read_text().count("\n")
    assert 3 <= written < 32
    assert not json.loads(gen_file.with_name("manifest.json").read_text())["complete"]
    with open(gen_file, "a") as f:
        f.write('{"schema_version": 1, "id": "nq:9#ba')        # and a line torn by the kill
    resumed = generate_phase(make_cfg(adapter, data, out, tiny_model_dir, batch_size=3))
    assert resumed["generated_now"] == 32 - written
    reference = generated["out"] / "cache" / generated["manifest"]["signature"] / "generations.jsonl"
    assert gen_file.read_bytes() == reference.read_bytes()
    ids = [r["id"] for r in read_jsonl(gen_file, CANDIDATE)]
    assert len(ids) == len(set(ids)) == 32


def test_sampled_candidates_are_seeded_per_example(adapter, data, tiny_model_dir, tmp_path):
    kw = dict(temperature=0.9, n_generations=2, max_samples=4, max_val_samples=2)
    a = generate_phase(make_cfg(adapter, data, tmp_path / "a", tiny_model_dir, batch_size=4, **kw))
    b = generate_phase(make_cfg(adapter, data, tmp_path / "b", tiny_model_dir, batch_size=1, **kw))
    assert a["origins"] == ["sft", "sft_sample_1", "sft_sample_2", "base"]
    files = [Path(m["cache_dir"]) / "generations.jsonl" for m in (a, b)]
    assert files[0].read_bytes() == files[1].read_bytes()     # batch composition does not change a sample
    rows = read_jsonl(files[0], CANDIDATE)
    by = {(r["example_id"], r["origin"]): r["raw_output"] for r in rows}
    assert any(by[(e, "sft_sample_1")] != by[(e, "sft_sample_2")] for e, _ in by)


# ------------------------------------------------------------------ phase 2: judge and pairs
def test_judge_finds_the_cache_or_says_why(generated, adapter, data, tiny_model_dir, tmp_path):
    empty = tmp_path / "nothing"
    with pytest.raises(FileNotFoundError, match="no generation cache; run `python make_prefs.py --phase generate`"):
        run(make_cfg(adapter, data, empty, tiny_model_dir, phase="judge", judge_mode="verifiers"))
    out = generated["out"]
    with pytest.raises(FileNotFoundError, match=r"no generation cache matches .*--max-samples 3"):
        run(make_cfg(adapter, data, out, tiny_model_dir, phase="judge", judge_mode="verifiers", max_samples=3))
    other = generate_phase(make_cfg(adapter, data, out, tiny_model_dir, max_new_tokens=6))
    # the judge's own command line names no generation option: two caches match
    judge_argv = ["--phase", "judge", "--data-path", f"{data['train']}", "--val-path", f"{data['val']}",
                  "--judge-mode", "verifiers", "--output-dir", str(out), "--progress", "false"]
    assert len(list((out / "cache").glob("*/manifest.json"))) == 2
    with pytest.raises(ConfigError, match=r"2 generation caches match.*--signature or --cache-dir"):
        run(parse_config(STAGE.config, judge_argv))
    picked = run(parse_config(STAGE.config, judge_argv + ["--signature", other["signature"]]))
    assert picked["judge"]["generation_signature"] == other["signature"]
    by_option = run(parse_config(STAGE.config, judge_argv + ["--max-new-tokens", "8"]))
    assert by_option["judge"]["generation_signature"] == generated["manifest"]["signature"]


def test_margin_filter_is_exact():
    def cand(origin, score, text=None, **kw):
        return Candidate(origin=origin, text=text or origin, score=score, verifier=score, **kw)

    cands = [cand("sft", 0.625), cand("base", 0.5), cand("sft_sample_1", 0.5), cand("sft_sample_2", 0.625, "sft"),
             cand("gold", 1.0), cand("perturb:cite_all", 0.875, kind="cite_all", source="gold"),
             cand("perturb:unknown_id", 0.876, kind="unknown_id", source="gold"),
             cand("perturb:refuse_answerable", 1.25, kind="refuse_answerable", source="gold"),
             cand("perturb:filler_padding", 1.0, kind="filler_padding", source="gold")]
    kept, drops = select_pairs(cands, min_margin=0.125, pairs_per_prompt=5)
    got = {(p.chosen.origin, p.rejected.origin): p.margin for p in kept}
    # exactly at the margin is kept; a hair below is not; the margin is chosen - rejected exactly
    assert got == {("sft", "base"): 0.125, ("sft", "sft_sample_1"): 0.125, ("sft_sample_2", "base"): 0.125,
                   ("sft_sample_2", "sft_sample_1"): 0.125, ("gold", "perturb:cite_all"): 0.125}
    assert all(p.margin == p.chosen.score - p.rejected.score >= 0.125 for p in kept)
    assert drops == {("model", "tie"): 1, ("model", "identical"): 1, ("perturb:unknown_id", "near_tie"): 1,
                     ("perturb:refuse_answerable", "perturbation_not_worse"): 1, ("perturb:filler_padding", "tie"): 1}
    kept, drops = select_pairs(cands, min_margin=0.125, pairs_per_prompt=1, hard_min_margin=0.1)
    assert [p.kind for p in kept] == ["model", "perturb:cite_all", "perturb:unknown_id"]
    assert drops[("model", "over_pairs_per_prompt")] == 3


@pytest.fixture(scope="module")
def judge(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from factuality.modeling import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir), padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return {"pairwise": Judge(model, tok, "pairwise", batch_size=3), "pointwise": Judge(model, tok, "pointwise")}


def test_pairwise_judge_is_order_symmetric(judge):
    from factuality.verdicts import apply_judge, judge_requests

    j = judge["pairwise"]
    ex = make_example(0, source="nq")
    x, y = dump_output(gold_output(ex)), '{"answer": "Reba", "citations": ["E3"], "confidence": 0.4}'
    reqs = [("g", ex, ex["evidence"], [x, y]), ("g", ex, ex["evidence"], [y, x])]
    xy, yx = j.score(reqs)
    p_xy, one = j.preference(xy, yx)
    p_yx, _ = j.preference(yx, xy)
    assert p_xy + p_yx == pytest.approx(1.0, abs=1e-12)
    assert abs(one["x_first"] - one["x_second"]) > 1e-4    # one order alone is biased; both orders cancel it
    # a prompt's candidates listed in either order get the same judge scores
    z = '{"answer": "insufficient evidence", "citations": [], "confidence": 0.0}'
    scores = []
    for texts in ([x, y, z], [z, y, x]):
        cands = [Candidate(origin=f"c{i}", text=t) for i, t in enumerate(texts)]
        reqs = judge_requests("pairwise", ex["id"], ex, ex["evidence"], cands)
        logprobs = dict(zip(reqs, j.score(list(reqs.values()))))
        apply_judge(j, "pairwise", cands, logprobs)
        scores.append({c.text: c.judge for c in cands})
    assert scores[0] == pytest.approx(scores[1], abs=1e-9)
    assert sum(scores[0].values()) == pytest.approx(1.5)       # mean preferences of 3 candidates sum to 3/2


def test_pointwise_judge_reads_score_token_probabilities(judge):
    j = judge["pointwise"]
    ex = make_example(1, source="hotpotqa")
    (lp,) = j.score([("g", ex, ex["evidence"], [dump_output(gold_output(ex))])])
    v = j.pointwise(lp)
    assert sum(v.distribution) == pytest.approx(1.0) and 0 < v.mass < 1
    assert v.expected == pytest.approx(sum((i + 1) * p for i, p in enumerate(v.distribution)))
    assert v.score == pytest.approx((v.expected - 1) / 4) and 0 <= v.score <= 1


def test_score_tokens_follow_the_tokenizers_spelling(judge):
    from factuality.judge import POINTWISE_PREFILL, space_before_labels

    class SplitDigits:                                         # writes " 3" as a space then "3" (SmolLM2, Llama-3)
        def encode(self, text, add_special_tokens=False):
            return [ord(ch) for ch in text]

    assert space_before_labels(SplitDigits(), ["1", "2"])
    j = judge["pointwise"]
    assert space_before_labels(j.tok, ["1"]) == (j.space == " ")
    ex = make_example(2)
    assert j.prompt(ex, ex["evidence"], ["x"]).endswith(POINTWISE_PREFILL + j.space)


def test_every_perturbation_kind_is_made_and_worse_than_its_source():
    examples = examples_for("train", 12)
    usage: Counter = Counter()
    made = Counter()
    for ex in examples:
        sft = Candidate(origin="sft", text=dump_output(gold_output(ex)))   # a correct, grounded SFT answer
        sft.verifier, sft.breakdown = verifier_score(ex, sft.text)
        goods = good_sources(ex, [sft])
        assert [g[0] for g in goods] == (["gold", "sft"] if ex["answerable"] else ["gold"])
        texts = {g[0]: g[2] for g in goods}
        for c in hard_candidates(ex, goods, list(KINDS), 50, seed=0, usage=usage):
            made[c.kind] += 1
            src, _ = verifier_score(ex, texts[c.source])
            bad, _ = verifier_score(ex, c.text)
            assert bad < src, (c.kind, ex["id"], c.text)
    assert set(made) == set(KINDS), set(KINDS) - set(made)
    assert verifier_score(examples[0], dump_output(gold_output(examples[0])))[0] == 1.0
    assert set(VERIFIER_WEIGHTS) == {"correct_grounded", "supported", "citation_f1", "refusal_correct", "format_valid"}


def test_hard_candidates_balance_kinds():
    usage: Counter = Counter()
    for ex in examples_for("train", 24):
        hard_candidates(ex, good_sources(ex, []), list(KINDS), 2, seed=3, usage=usage)
    answerable_kinds = [k for k in KINDS if k != "answer_unanswerable"]
    counts = [usage[k] for k in answerable_kinds]
    assert max(counts) - min(counts) <= 1, usage             # 16 answerable examples x 2 spread over 10 kinds


@pytest.fixture(scope="module")
def judged(generated, adapter, data, tiny_model_dir) -> dict:
    cfg = make_cfg(adapter, data, generated["out"], tiny_model_dir, phase="judge", output_mode="rich",
                   min_margin=0.05, hard_pairs_per_prompt=3, judge_rationale_tokens=4)
    result = run(cfg)["judge"]
    return {"stats": result, "path": Path(result["files"]["pairs"])}


def test_pairs_file_contract_statistics_and_splits(judged, data):
    stats, path = judged["stats"], judged["path"]
    rows = read_jsonl(path, PREFERENCE)
    assert path.name.startswith("preferences_") and len(rows) == stats["pairs_kept"] > 0
    assert Counter(r["split"] for r in rows) == stats["pairs_by_split"] and set(stats["pairs_by_split"]) == {"train", "val"}
    saved = json.loads(path.with_name(path.name.replace(".jsonl", ".stats.json")).read_text())
    assert saved["pairs_kept"] == len(rows) and saved["run_card"]["script"].startswith("make_prefs.py")
    for r in rows:
        assert r["margin"] == r["chosen_score"] - r["rejected_score"] >= 0.05
        assert r["prompt"].startswith("<|im_start|>system") and r["prompt"].endswith("<|im_start|>assistant\n")
        assert r["evidence"] and set(r["support_ids"]) <= {c["id"] for c in r["evidence"]}
        d = r["details"]
        assert set(d["chosen"]["verifiers"]) == set(VERIFIER_WEIGHTS) and d["chosen"]["judge"]["method"] == "pointwise"
        assert isinstance(d["chosen"]["rationale"], str) and "parsed" in d["rejected"]
        if r["kind"].startswith("perturb:"):
            assert r["rejected_origin"] == r["kind"] and r["chosen_origin"] in ("gold", "sft")
            assert d["chosen"]["verifier_score"] > d["rejected"]["verifier_score"]
    kept_by_kind = {k: v["kept"] for k, v in stats["by_kind"].items()}
    assert sum(kept_by_kind.values()) == len(rows) == sum(Counter(r["kind"] for r in rows).values())
    assert stats["pairs_dropped"] == sum(stats["dropped_by_reason"].values())
    agree = stats["judge_verifier_agreement"]
    assert agree["all"]["pairs"] > 0 and 0 <= agree["all"]["agreement"] <= 1
    assert 0 <= stats["chosen_verifier_better"] <= 1


def test_pairs_feed_trl_dpo_and_reward_trainers_as_they_are(judged, tiny_model_dir, tmp_path):
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

    from factuality.modeling import load_tokenizer

    ds = load_dataset("json", data_files=str(judged["path"]), split="train")
    first = read_jsonl(judged["path"], PREFERENCE)[0]
    tok = load_tokenizer(str(tiny_model_dir))
    common = dict(per_device_train_batch_size=2, max_steps=1, report_to="none", bf16=False, save_strategy="no",
                  disable_tqdm=True, max_length=2048)
    dpo = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                     args=DPOConfig(output_dir=str(tmp_path / "dpo"), **common), train_dataset=ds, processing_class=tok)
    row = dpo.train_dataset[0]
    assert tok.decode(row["prompt_ids"]) == first["prompt"]                  # no second BOS, nothing cut
    assert tok.decode(row["chosen_ids"]) == first["chosen"] + tok.eos_token  # the trainer appends the end of turn
    assert tok.decode(row["rejected_ids"]) == first["rejected"] + tok.eos_token
    assert torch.isfinite(torch.tensor(dpo.train().training_loss))
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1, dtype=torch.float32)
    rm.config.pad_token_id = tok.pad_token_id
    reward = RewardTrainer(model=rm, args=RewardConfig(output_dir=str(tmp_path / "rm"), **common), train_dataset=ds,
                           processing_class=tok)
    assert tok.decode(reward.train_dataset[0]["chosen_ids"]) == first["prompt"] + first["chosen"] + tok.eos_token
    assert torch.isfinite(torch.tensor(reward.train().training_loss))


def test_test_split_never_becomes_a_pair(adapter, data, tiny_model_dir, tmp_path):
    test_file = tmp_path / "test.jsonl"
    write_jsonl(test_file, examples_for("test", 3), EXAMPLE)
    for phase in ("generate", "judge"):
        with pytest.raises(ConfigError, match="test split never becomes preference pairs"):
            run(make_cfg(adapter, data, tmp_path / "o", tiny_model_dir, data_path=[str(test_file)], val_path=[],
                         phase=phase))
    mixed = tmp_path / "train_mixed.jsonl"
    write_jsonl(mixed, examples_for("train", 3) + [make_example(50, split="test")], EXAMPLE)
    with pytest.raises(RecordError, match=r"train_mixed.jsonl:4: split: 'test'"):
        run(make_cfg(adapter, data, tmp_path / "o", tiny_model_dir, data_path=[str(mixed)], val_path=[]))


def test_config_errors(adapter, data, tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="greedy decoding gives one answer per model"):
        make_cfg(adapter, data, tmp_path, tiny_model_dir, n_generations=3)
    with pytest.raises(ConfigError, match="needs --sft-model"):
        make_cfg(adapter, data, tmp_path, tiny_model_dir, sft_model=None)
    with pytest.raises(ConfigError, match="unknown verifier 'style'"):
        make_cfg(adapter, data, tmp_path, tiny_model_dir, argv=["--verifier-weights", '{"style": 1}'])
    with pytest.raises(ConfigError, match="unknown kind 'nonsense'"):
        make_cfg(adapter, data, tmp_path, tiny_model_dir, perturb_kinds=["nonsense"])


def test_notebook_command_lines_run_as_written(adapter, tiny_model_dir, tmp_path):
    """Step 6 of the notebook, flag for flag (8-bit on a CPU included), with the tiny model's paths."""
    (tmp_path / "data" / "processed").mkdir(parents=True)
    write_jsonl(tmp_path / "data" / "processed" / "train.jsonl", examples_for("train", 4), EXAMPLE)
    generate = ["--phase", "generate", "--sft-model", str(adapter), "--base-model", str(tiny_model_dir),
                "--data-path", "data/processed/train.jsonl", "--max-samples", "600", "--n-generations", "2",
                "--batch-size", "12", "--max-new-tokens", "80", "--max-input-tokens", "1536", "--temperature", "0.0",
                "--use-8bit"]
    judge = ["--phase", "judge", "--judge-model", str(tiny_model_dir), "--data-path", "data/processed/train.jsonl",
             "--max-samples", "600", "--n-generations", "2", "--judge-batch-size", "12", "--min-margin", "0.12",
             "--judge-use-8bit", "--output-mode", "rich"]
    for argv in (generate, judge):
        out = subprocess.run([sys.executable, str(ROOT / "make_prefs.py"), *argv], cwd=tmp_path, env=ENV,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
    assert "make_prefs judge: kept" in out.stdout
    pairs = list((tmp_path / "prefs").glob("preferences_*.jsonl"))
    assert len(pairs) == 1 and read_jsonl(pairs[0], PREFERENCE)
    manifest = json.loads(next((tmp_path / "prefs" / "cache").glob("*/manifest.json")).read_text())
    assert manifest["payload"]["load"]["load_in_8bit"] is True


def test_a_file_in_both_data_and_val_paths_is_refused(tmp_path):
    from factuality.config import ConfigError, parse_config
    from factuality.stages.prefs import PREFS_SPEC

    f = tmp_path / "train.jsonl"
    with pytest.raises(ConfigError, match="is in both --data-path and --val-path"):
        parse_config(PREFS_SPEC, ["--phase", "generate", "--sft-model", "x", "--data-path", str(f), "--val-path", str(f)])


def test_tampered_caches_and_pairs_are_refused_or_recomputed(judged, generated, adapter, data, tiny_model_dir,
                                                            tmp_path, caplog):
    """Issue 24, item 7: the pairs file, the complete generation cache (candidates and evidence) and
    the judge cache are sealed when written: one changed byte in the pairs or the generation cache is
    refused with one line; a changed judge cache is discarded and judged again, to the same pairs."""
    import shutil

    from factuality.records import RecordError, check_seal

    pairs = judged["path"]
    check_seal(pairs)                                             # sealed, and intact
    out = tmp_path / "prefs"
    shutil.copytree(generated["out"], out)
    copy = out / pairs.name
    text = copy.read_text()
    copy.write_text(text.replace('"chosen": "', '"chosen": "X', 1))
    with pytest.raises(RecordError, match=f"{copy.name}: .*edited, damaged or replaced"):
        read_jsonl(copy, PREFERENCE)
    cache = out / "cache" / generated["manifest"]["signature"]
    judge_args = dict(phase="judge", output_mode="rich", min_margin=0.05, hard_pairs_per_prompt=3,
                      judge_rationale_tokens=4)
    for name in ("generations.jsonl", "examples.jsonl"):
        f = cache / name
        pristine = f.read_bytes()
        f.write_bytes(pristine.replace(b'"', b"'", 1) if name == "examples.jsonl" else pristine[:-2] + b" }\n")
        with pytest.raises(RecordError, match=f"{name}: .*edited, damaged or replaced"):
            run(make_cfg(adapter, data, out, tiny_model_dir, **judge_args))
        f.write_bytes(pristine)
    (judge_cache,) = cache.glob("judge_*.jsonl")
    b = bytearray(judge_cache.read_bytes())
    b[-10] = ord("9") if b[-10] != ord("9") else ord("8")
    judge_cache.write_bytes(bytes(b))
    with caplog.at_level("WARNING", logger="factuality.records"):
        again = run(make_cfg(adapter, data, out, tiny_model_dir, **judge_args))["judge"]
    assert "The cache is discarded and computed again" in caplog.text and again["judge"]["scored_now"] > 0
    assert Path(again["files"]["pairs"]).read_bytes() == pairs.read_bytes()


@pytest.mark.parametrize("text", ['{"signature": "x", "comp', '[]', '{"signature": "x", "complete": true}'],
                         ids=["truncated", "a list", "no data"])
def test_a_broken_cache_manifest_is_one_line(generated, adapter, data, tiny_model_dir, tmp_path, text):
    """Issue 24, item 1: a truncated or wrong-shaped cache manifest.json used to end in a traceback
    (a KeyError or AttributeError in the judge phase)."""
    import shutil

    from factuality.records import RecordError, seal_path

    out = tmp_path / "prefs"
    shutil.copytree(generated["out"], out)
    manifest = out / "cache" / generated["manifest"]["signature"] / "manifest.json"
    manifest.write_text(text)
    seal_path(manifest).unlink()          # a hand-written manifest (no seal): its shape is still checked
    with pytest.raises(RecordError, match="manifest.json"):
        run(make_cfg(adapter, data, out, tiny_model_dir, phase="judge", min_margin=0.05,
                     cache_dir=str(manifest.parent)))


def test_overwrite_that_fails_before_a_candidate_keeps_the_old_cache(generated, adapter, data, tiny_model_dir,
                                                                     tmp_path, monkeypatch):
    """Issue 24 (a failed run leaves every output as it was): --overwrite removed the cache before
    the model generated anything; now the old cache is set aside and put back."""
    import shutil

    import factuality.pool as pool

    out = tmp_path / "prefs"
    shutil.copytree(generated["out"], out)
    cache = out / "cache" / generated["manifest"]["signature"]
    before = {p.name: p.read_bytes() for p in cache.iterdir()}

    def fail(*a, **k):
        raise RuntimeError("the model failed to load")
        yield

    monkeypatch.setattr(pool.ModelPool, "batches", fail)
    with pytest.raises(RuntimeError, match="failed to load"):
        generate_phase(make_cfg(adapter, data, out, tiny_model_dir, overwrite=True))
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == before
    assert not list(cache.parent.glob(".*.replaced"))
