"""DPO on the tiny random model: only the adapter moves, the reference is the SFT policy (live and
cached), long pairs lose evidence and never an answer, the reward model filters or reweights,
test pairs are refused, a killed run resumes. Tests drive factuality.stages.dpo.run() directly."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from factuality.config import ConfigError, parse_config
from factuality.dpo_pairs import (
    end_of_turn,
    fit_pairs,
    load_pairs,
    rm_filter,
    to_dataset,
)
from factuality.dpo_trainer import (
    WeightedPairSampler,
    build_trainer,
    reference_logps,
    use_cached_reference,
)
from factuality.prompts import (
    DEFAULT_TEMPLATES,
    dump_output,
    gold_output,
    render_prompt,
    tokenize_prompt,
)
from factuality.records import (
    EXAMPLE,
    PREFERENCE,
    SCHEMA_VERSION,
    RecordError,
    write_jsonl,
)
from factuality.stages.dpo import DPO_SPEC, run
from factuality.testing import make_example
from factuality.training import find_last_checkpoint

ROOT = Path(__file__).resolve().parent.parent
TINY_YAML = ROOT / "configs" / "dpo_tiny.yaml"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------ fixtures: an SFT run and pairs
@pytest.fixture(scope="module")
def sft_adapter(tiny_model_dir, tmp_path_factory, one_torch_thread):
    """A real SFT run on the tiny model (4 steps at a large lr, so the adapter differs from the base)."""
    from factuality.stages import sft

    d = tmp_path_factory.mktemp("sft")
    train = [make_example(i, source=s, answerable=(i % 3 != 2), gold_position=i % 3, split="train")
             for i, s in enumerate(["nq", "hotpotqa", "popqa", "fever"] * 2)]
    write_jsonl(d / "train.jsonl", train, EXAMPLE)
    cfg = parse_config(sft.SFT_SPEC, ["-c", str(ROOT / "configs" / "sft_tiny.yaml")], model_name_or_path=str(tiny_model_dir),
                       train_file=str(d / "train.jsonl"), val_file="", output_dir=str(d / "run"), save_strategy="no")
    sft.run(cfg)
    return d / "run"


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from factuality.modeling import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


def make_pair(ex: dict, tok, k: int = 0, split: str = "train", rejected: str | None = None) -> dict:
    """A PREFERENCE record: the gold answer against a perturbed one (wrong answer citing a distractor)."""
    gold = gold_output(ex)
    if rejected is None:
        wrong = [c["id"] for c in ex["evidence"] if c["id"] not in gold["citations"]][-1]
        rejected = dump_output({"answer": "Garth Brooks" if ex["answerable"] else "Reba McEntire",
                                "citations": [wrong], "confidence": 0.9})
    rec = {"schema_version": SCHEMA_VERSION, "id": f"{ex['id']}#{k}", "example_id": ex["id"], "split": split,
           "source": ex["source"], "prompt": render_prompt(ex, tok), "chosen": dump_output(gold), "rejected": rejected,
           "margin": 1.0, "chosen_score": 1.0, "rejected_score": 0.0, "kind": "perturb:answer",
           "chosen_origin": "gold", "rejected_origin": "perturb:answer",
           "evidence": [{"id": c["id"], "title": c["title"], "text": c["text"]} for c in ex["evidence"]],
           "support_ids": sorted({s["chunk_id"] for s in ex["support"]}), "hard_negative_ids": ex["hard_negatives"],
           "answerable": ex["answerable"], "answers": ex["answers"]}
    return PREFERENCE.validate(rec)


def make_pairs(tok, n_train: int = 8, n_val: int = 4) -> list[dict]:
    sources = ["nq", "hotpotqa", "popqa", "fever"]
    train = [make_pair(make_example(i, source=sources[i % 4], answerable=(i % 3 != 2), gold_position=i % 3,
                                    split="train"), tok) for i in range(n_train)]
    val = [make_pair(make_example(100 + i, gold_position=i % 3, split="val"), tok, split="val") for i in range(n_val)]
    return train + val


@pytest.fixture()
def pairs_file(tmp_path, tok):
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, make_pairs(tok), PREFERENCE)
    return path


def dpo_cfg(tiny_model_dir, sft_adapter, tmp_path, *argv, run_name="default", **overrides):
    kw = {"model_name_or_path": str(tiny_model_dir), "sft_adapter": str(sft_adapter),
          "pairs_file": str(tmp_path / "pairs.jsonl"), "ref_cache_dir": str(tmp_path / "refcache"),
          "output_dir": str(tmp_path / "runs" / run_name)}
    kw.update(overrides)
    return parse_config(DPO_SPEC, ["-c", str(TINY_YAML), *argv], **kw)


def trainer_for(cfg, tok, **overrides):
    train, _ = load_pairs(cfg.pairs_file)
    rows, _ = fit_pairs(train, tok, cfg.max_length, DEFAULT_TEMPLATES)
    trainer = build_trainer(cfg, to_dataset(rows), None, tok, save_strategy="no", **overrides)
    return trainer, rows


def seq_logps(model, prompt_ids, completion_ids) -> float:
    """Sum of log p(completion | prompt) by a plain forward pass: the independent reference."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    lp = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0]
    return float(lp[len(prompt_ids) - 1:].sum())


# ------------------------------------------------------------------ configs
@pytest.mark.parametrize("name", ["dpo.yaml", "dpo_cpu.yaml", "dpo_tiny.yaml"])
def test_shipped_configs_parse(name):
    cfg = parse_config(DPO_SPEC, ["-c", str(ROOT / "configs" / name)])
    assert cfg.config_path.endswith(name) and cfg.train.truncation_mode == "keep_start"
    assert cfg.train.bf16 is False or torch.cuda.is_available(), "no bf16 on a CPU"


def test_gpu_recipe_is_qlora_gemma_from_the_sft_adapter():
    cfg = parse_config(DPO_SPEC, ["-c", str(ROOT / "configs" / "dpo.yaml")])
    assert cfg.model_name_or_path == "google/gemma-2-9b" and cfg.load_in_4bit and cfg.dtype == "bfloat16"
    assert cfg.sft_adapter == "checkpoints/sft/gemma2-9b-qlora" and cfg.activation_checkpointing
    assert cfg.loss_type == ["sigmoid"] and cfg.beta == 0.1 and cfg.precompute_ref_log_probs


def test_users_options_reach_dpoconfig():
    cfg = parse_config(DPO_SPEC, ["-c", str(TINY_YAML), "--beta", "0.3", "--loss-type", "ipo", "--label-smoothing",
                                  "0.1", "--ld-alpha", "0.5", "--learning-rate", "1e-5", "--num-train-epochs", "2",
                                  "--load-in-4bit", "--activation-checkpointing", "true", "--use-weighting", "true"])
    t = cfg.train
    assert (t.beta, t.loss_type, t.label_smoothing, t.ld_alpha, t.learning_rate, t.num_train_epochs) == (
        0.3, ["ipo"], 0.1, 0.5, 1e-5, 2)
    assert t.activation_checkpointing and t.use_weighting and cfg.model.load_in_4bit
    cfg = parse_config(DPO_SPEC, ["-c", str(TINY_YAML), "--loss-type", "sigmoid_norm"])
    assert cfg.train.loss_type == ["sigmoid_norm"]


@pytest.mark.parametrize("argv, match", [
    (["--loss-type", "dpo"], r"loss_type 'dpo' is not one of"),
    (["--ld-alpha", "1.5"], r"ld_alpha \(1.5\) must be in \[0, 1\]"),
    (["--lora-r", "4"], r"lora_r: the DPO policy is the SFT adapter itself"),
    (["--label-smoothing", "0.7"], r"--label-smoothing: 0.7 must be <= 0.5"),
    (["--rm-min-gap", "0.5"], r"rm_min_gap needs a reward model"),
    (["--sft-adapter", ""], r"sft_adapter is not set"),
    (["--resume", "--overwrite"], r"contradict"),
])
def test_bad_options_are_clear_errors(argv, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(DPO_SPEC, ["-c", str(TINY_YAML), *argv])
    with pytest.raises(ConfigError, match=r"--rm-mode.*invalid choice: 'sum'"):
        parse_config(DPO_SPEC, ["-c", str(TINY_YAML), "--rm-mode", "sum"])


# ------------------------------------------------------------------ pairs in
def test_test_pair_is_refused(tmp_path, tok):
    pairs = make_pairs(tok, 2, 0) + [make_pair(make_example(50, split="test"), tok, split="test")]
    write_jsonl(tmp_path / "p.jsonl", pairs, PREFERENCE)
    with pytest.raises(RecordError, match=r"p.jsonl: pair 'nq:50#0' is from the test split"):
        load_pairs(tmp_path / "p.jsonl")
    write_jsonl(tmp_path / "q.jsonl", make_pairs(tok, 3, 2), PREFERENCE)
    train, val = load_pairs(tmp_path / "q.jsonl", max_pairs=2, max_val_pairs=0)
    assert [p["split"] for p in train] == ["train"] * 2 and val == []


def test_fitting_cuts_evidence_never_the_question_or_an_answer(tok, caplog):
    from tests.test_prompts import long_example

    long_ans = long_example()
    long_unans = long_example(answerable=False)
    too_long = long_example(question="why " * 600)
    pairs = [make_pair(long_ans, tok), make_pair(long_unans, tok, k=1), make_pair(make_example(3), tok),
             make_pair(too_long, tok, k=2)]
    pairs[3] = dict(pairs[3], id="too-long#0")
    max_length = 460
    assert len(tokenize_prompt(tok, pairs[0]["prompt"])) > max_length, "the long pair must need a cut"
    with caplog.at_level("INFO", logger="factuality.stages.dpo"):
        rows, stats = fit_pairs(pairs, tok, max_length, DEFAULT_TEMPLATES)
    assert (stats.pairs, stats.kept, stats.too_long, stats.truncated) == (4, 3, 1, 2), stats
    assert stats.too_long_ids == ["too-long#0"] and "too-long#0" in caplog.text and "1 too long" in caplog.text
    eot = end_of_turn(tok, DEFAULT_TEMPLATES)
    assert eot == tok.eos_token == "<|im_end|>"
    for row, pair, ex in zip(rows, pairs, [long_ans, long_unans, make_example(3)]):
        assert len(row["prompt_ids"]) + max(len(row["chosen_ids"]), len(row["rejected_ids"])) <= max_length
        assert tok.decode(row["chosen_ids"]) == pair["chosen"] + eot, "the chosen answer is whole"
        assert tok.decode(row["rejected_ids"]) == pair["rejected"] + eot, "the rejected answer is whole"
        prompt = tok.decode(row["prompt_ids"])
        assert prompt.rstrip().endswith("<|im_start|>assistant") and f"Question: {ex['question']}" in prompt
        for cid in json.loads(pair["chosen"])["citations"] + json.loads(pair["rejected"])["citations"]:
            assert f"[{cid}]" in prompt, f"chunk {cid}, cited by an answer, was dropped"
    assert rows[2]["prompt"] == pairs[2]["prompt"], "a pair that fits is left as it was"
    gold_chunk = next(c for c in long_ans["evidence"] if c["id"] == long_ans["support"][0]["chunk_id"])
    assert "Linda Davis" in tok.decode(rows[0]["prompt_ids"]) and gold_chunk["id"] in json.loads(pairs[0]["chosen"])["citations"]


def test_a_prompt_from_other_templates_is_not_cut_blindly(tok):
    from tests.test_prompts import long_example

    pair = make_pair(long_example(), tok)
    pair["prompt"] = pair["prompt"].replace("Question:", "Q:")
    with pytest.raises(RecordError, match=r"pair 'nq:11#0' is longer than max_length, and its prompt is not"):
        fit_pairs([pair], tok, 460, DEFAULT_TEMPLATES)


# ------------------------------------------------------------------ reward model
class LengthScorer:
    """Deterministic stand-in for factuality.rm's reward model: prefers answers naming Linda Davis or refusing."""

    def __init__(self):
        self.calls = 0

    def score(self, prompts, responses):
        assert len(prompts) == len(responses)
        self.calls += 1
        return [2.0 if ("Linda Davis" in r or "insufficient" in r) else (-1.0 if "Garth" in r else 0.5)
                for r in responses]


def test_rm_filter_keeps_or_reweights_by_score_gap(tok):
    from factuality.errors import UserError

    pairs = make_pairs(tok, 6, 0)
    swapped = dict(pairs[0], id="swapped#0", chosen=pairs[0]["rejected"], rejected=pairs[0]["chosen"])
    pairs = pairs + [swapped]
    kept, stats = rm_filter(pairs, LengthScorer(), "filter", batch_size=3)
    assert [p["id"] for p in kept] == [p["id"] for p in pairs[:-1]]
    assert stats["kept"] == 6 and stats["dropped_ids"] == ["swapped#0"] and stats["min_gap"] == 0.0
    kept, stats = rm_filter(pairs, LengthScorer(), "filter", min_gap=2.0)
    want = {p["id"] for p in pairs if "Linda Davis" in p["chosen"] and "Garth" in p["rejected"]}  # gap 3; others 1.5
    assert {p["id"] for p in kept} == want and 0 < len(want) < 6 and stats["min_gap"] == 2.0
    kept, stats = rm_filter(pairs, LengthScorer(), "weight")
    assert len(kept) == 7 and stats["dropped"] == 0
    w = {p["id"]: p["rm_weight"] for p in kept}
    assert w["swapped#0"] < 0.5 < w[pairs[0]["id"]] and abs(w["swapped#0"] + w[pairs[0]["id"]] - 1) < 1e-9

    class Broken:
        def score(self, prompts, responses):
            return [0.0]
    with pytest.raises(UserError, match="returned 1 scores"):
        rm_filter(pairs, Broken())

    class NaNHead:   # a reward head with NaN weights: one error line (issue 24, item 1), not a traceback
        def score(self, prompts, responses):
            return [float("nan")] * len(responses)
    with pytest.raises(UserError, match=r"finite: 0\) .*NaN weights\?"):
        rm_filter(pairs, NaNHead())


def test_weighted_sampler_follows_weights_and_is_reproducible():
    s = WeightedPairSampler([1.0, 0.0, 3.0], seed=7)
    s.set_epoch(2)
    draws = list(s) + [i for _ in range(400) for i in WeightedPairSampler([1.0, 0.0, 3.0], seed=_)]
    assert list(s) == draws[:3] and 1 not in draws
    share = draws.count(2) / len(draws)
    assert 0.7 < share < 0.8, share


# ------------------------------------------------------------------ training
def test_dpo_changes_only_the_adapter_and_the_reference_stays_sft(tiny_model_dir, sft_adapter, tmp_path, pairs_file, tok):
    from factuality.modeling import load_model

    cfg = dpo_cfg(tiny_model_dir, sft_adapter, tmp_path)
    trainer, rows = trainer_for(cfg, tok)
    model = trainer.model
    assert set(model.peft_config) == {"default", "ref"}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    policy = [n for n in before if "lora_" in n and ".default." in n]
    ref = [n for n in before if "lora_" in n and ".ref." in n]
    assert policy and len(ref) == len(policy)
    assert all(model.get_parameter(n).requires_grad for n in policy)
    assert not any(p.requires_grad for n, p in model.named_parameters() if n not in policy)
    for n in policy:  # before training, the policy and the reference are both the SFT adapter
        assert torch.equal(before[n], before[n.replace(".default.", ".ref.")])
    trainer.train()
    after = dict(model.named_parameters())
    assert not [n for n in policy if torch.equal(before[n], after[n].detach())], "every policy LoRA weight moved"
    assert not [n for n in before if n not in policy and not torch.equal(before[n], after[n].detach())], \
        "base weights and the reference adapter are unchanged"
    hist = [h for h in trainer.state.log_history if "rewards/margins" in h]
    assert len(hist) == 4 and all(k in hist[0] for k in ("rewards/chosen", "rewards/rejected", "rewards/accuracies"))
    assert hist[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6), "step 1: policy == reference"
    assert hist[-1]["rewards/margins"] > 0.05, "DPO separates chosen from rejected"

    # the reference log-probs equal those of a separately loaded SFT model (base + SFT adapter) ...
    got = [x for batch in reference_logps(trainer, rows, batch_size=3) for x in batch]
    sft_model = load_model(str(tiny_model_dir), adapter_path=sft_adapter)
    base_model = load_model(str(tiny_model_dir))
    for (pid, c, r), row in zip(got, rows):
        assert pid == row["id"]
        want_c = seq_logps(sft_model, row["prompt_ids"], row["chosen_ids"])
        want_r = seq_logps(sft_model, row["prompt_ids"], row["rejected_ids"])
        assert c == pytest.approx(want_c, abs=2e-3) and r == pytest.approx(want_r, abs=2e-3)
        # ... and not those of the base, which disabling the adapter would have given
        assert abs(c - seq_logps(base_model, row["prompt_ids"], row["chosen_ids"])) > 0.05
    # the cached path gives the same numbers, and a second run reads them instead of computing
    info = use_cached_reference(trainer, cfg, rows, [])
    assert info["train"]["computed"] == len(rows) and trainer.precompute_ref_logps
    cached = trainer.train_dataset["ref_chosen_logps"]
    assert cached == pytest.approx([c for _, c, _ in got], abs=1e-5)
    again, _ = trainer_for(cfg, tok)
    info2 = use_cached_reference(again, cfg, rows, [])
    assert info2["train"]["from_cache"] == len(rows) and info2["train"]["computed"] == 0
    assert info2["train"]["file"] == info["train"]["file"]
    batch = next(iter(again.get_train_dataloader()))
    assert "ref_chosen_logps" in batch, "the trainer reads the cached log-probs from its batches"


def test_run_writes_adapter_card_and_rm_counts(tiny_model_dir, sft_adapter, tmp_path, pairs_file, monkeypatch):
    reward = types.ModuleType("factuality.rm")
    seen = {}

    def load_reward_model(path, trust_remote_code=False):
        seen["path"] = path
        return LengthScorer()
    reward.load_reward_model = load_reward_model
    monkeypatch.setitem(sys.modules, "factuality.rm", reward)
    pairs = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    flipped = dict(pairs[1], id="flipped#0", chosen=pairs[1]["rejected"], rejected=pairs[1]["chosen"])
    write_jsonl(pairs_file, pairs + [flipped], PREFERENCE)

    cfg = dpo_cfg(tiny_model_dir, sft_adapter, tmp_path, "--rm-checkpoint", "rm/best", "--precompute-ref-log-probs",
                  "true", run_name="r1", model_name_or_path=None)
    old_mask = os.umask(0o022)
    try:
        card = run(cfg)
    finally:
        os.umask(old_mask)
    assert seen["path"] == "rm/best"
    rd = tmp_path / "runs" / "r1"
    private = [p for p in rd.rglob("*") if p.is_file() and not p.stat().st_mode & 0o040]
    assert not private, f"outputs not readable by the group under umask 022: {private[:3]}"
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "config.yaml", "run_card.json",
                 "prompts/system.txt"):
        assert (rd / name).exists(), name
    assert not (rd / "ref").exists(), "only the trained adapter is saved"
    saved = json.loads((rd / "run_card.json").read_text())
    rm = saved["pairs"]["reward_model"]
    assert (rm["scored"], rm["kept"], rm["dropped_ids"]) == (9, 8, ["flipped#0"]) and rm["checkpoint"] == "rm/best"
    assert saved["pairs"]["read"] == {"train": 9, "val": 4} and saved["pairs"]["train"]["kept"] == 8
    assert saved["reference"]["mode"] == "cached" and saved["reference"]["cache"]["train"]["pairs"] == 8
    assert saved["base_model"]["loaded_from"] == str(tiny_model_dir), "the base named by the SFT adapter"
    final = saved["rewards"]["final_train"]
    assert set(final) >= {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"}
    assert saved["rewards"]["final_eval"]["rewards/accuracies"] is not None
    assert saved["global_step"] == 4 and card["losses"] == saved["losses"]
    assert set(saved["inputs"]) >= {str(pairs_file), str(sft_adapter / "adapter_model.safetensors")}
    again = parse_config(DPO_SPEC, ["-c", str(rd / "config.yaml")])  # the resolved config loads back
    assert again.beta == cfg.beta and again.model_name_or_path == str(tiny_model_dir) and again.rm_checkpoint == "rm/best"
    from factuality.modeling import load_model

    assert type(load_model(str(tiny_model_dir), adapter_path=rd)).__name__ == "PeftModelForCausalLM"
    from factuality.stages.dpo import summarize

    line = summarize(card)
    assert line.startswith("train_dpo: 4 steps") and "reward model kept 8/9" in line and "accuracy" in line
    with pytest.raises(FileExistsError, match="--resume"):
        run(dpo_cfg(tiny_model_dir, sft_adapter, tmp_path, run_name="r1"))


def test_rm_weight_mode_samples_by_weight(tiny_model_dir, sft_adapter, tmp_path, pairs_file, monkeypatch):
    reward = types.ModuleType("factuality.rm")
    reward.load_reward_model = lambda path, trust_remote_code=False: LengthScorer()
    monkeypatch.setitem(sys.modules, "factuality.rm", reward)
    cfg = dpo_cfg(tiny_model_dir, sft_adapter, tmp_path, "--rm-checkpoint", "rm", "--rm-mode", "weight",
                  "--max-val-pairs", "0", run_name="w", max_steps=1)
    card = run(cfg)
    assert card["pairs"]["reward_model"]["kept"] == 8 and card["pairs"]["reward_model"]["mean_weight"] > 0.5
    assert card["pairs"]["val"] is None and card["rewards"]["final_eval"] is None


def test_resume_continues_without_loss_or_duplication(tiny_model_dir, sft_adapter, tmp_path, pairs_file):
    from safetensors.torch import load_file

    full = run(dpo_cfg(tiny_model_dir, sft_adapter, tmp_path, run_name="full"))
    rd = tmp_path / "runs" / "full"
    want = load_file(rd / "adapter_model.safetensors")
    for p in list(rd.iterdir()):  # "kill" the run after its step-2 checkpoint
        if p.name != "checkpoint-2":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    assert find_last_checkpoint(rd).name == "checkpoint-2"
    resumed = run(dpo_cfg(tiny_model_dir, sft_adapter, tmp_path, "--resume", run_name="full"))
    assert resumed["resumed_from"].endswith("checkpoint-2") and resumed["global_step"] == 4
    state = json.loads((rd / "checkpoint-4" / "trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"] if "loss" in h] == [1, 2, 3, 4]
    got = load_file(rd / "adapter_model.safetensors")
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5)
    assert resumed["losses"]["final_train_loss"] == pytest.approx(full["losses"]["final_train_loss"], rel=1e-4)


def test_resume_from_the_final_checkpoint_trains_no_further_step(tiny_model_dir, sft_adapter, tmp_path, pairs_file):
    """Killed between the final adapter and run_card.json: --resume ends at the same step with the
    same adapter (it used to train step 4 of 3)."""
    from safetensors.torch import load_file

    from factuality.records import KILL_AT_ENV

    mid_epoch = ("--max-steps", "3")          # 4 steps an epoch: the run ends mid epoch, at checkpoint-3
    full = run(dpo_cfg(tiny_model_dir, sft_adapter, tmp_path, *mid_epoch, run_name="full"))
    want = load_file(tmp_path / "runs" / "full" / "adapter_model.safetensors")
    rd = tmp_path / "runs" / "cut"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           KILL_AT_ENV: "dpo:adapter_saved"}
    out = subprocess.run([sys.executable, str(ROOT / "train_dpo.py"), "-c", str(TINY_YAML), *mid_epoch,
                          "--model-name-or-path", str(tiny_model_dir), "--sft-adapter", str(sft_adapter),
                          "--pairs-file", str(pairs_file), "--ref-cache-dir", str(tmp_path / "refcache"),
                          "--output-dir", str(rd)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == -9, out.stderr[-2000:]       # SIGKILL between the final adapter and the run card
    assert (rd / "adapter_model.safetensors").exists() and not (rd / "run_card.json").exists()
    assert find_last_checkpoint(rd).name == "checkpoint-3"
    resumed = run(dpo_cfg(tiny_model_dir, sft_adapter, tmp_path, *mid_epoch, "--resume", run_name="cut"))
    assert resumed["global_step"] == full["global_step"] == 3
    got = load_file(rd / "adapter_model.safetensors")
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_4bit_qlora_dpo_trains_on_cpu(tiny_model_dir, sft_adapter, tmp_path, pairs_file):
    card = run(dpo_cfg(tiny_model_dir, sft_adapter, tmp_path, "--load-in-4bit", "--max-steps", "2",
                       "--max-val-pairs", "0", run_name="q4"))
    assert card["global_step"] == 2 and card["config"]["model"]["load_in_4bit"]
    assert all(torch.isfinite(torch.tensor(card["losses"]["train_loss_log"])))


# ------------------------------------------------------------------ the script
def test_script_errors_are_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "train_dpo.py"), "--sft-adapter", str(tmp_path / "nosft"),
                          "--pairs-file", "p.jsonl"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    lines = [ln for ln in out.stderr.splitlines() if "error:" in ln]
    assert len(lines) == 1 and "nosft: no adapter_config.json here" in lines[0], out.stderr[-2000:]


def test_overwrite_with_a_model_that_fails_to_load_keeps_the_previous_run(tiny_model_dir, sft_adapter, tmp_path,
                                                                          pairs_file):
    import shutil

    run(dpo_cfg(tiny_model_dir, sft_adapter, tmp_path, "--max-steps", "1", run_name="keep"))
    rd = tmp_path / "runs" / "keep"
    before = {p.relative_to(rd): p.read_bytes() for p in rd.rglob("*") if p.is_file()}
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes((broken / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(Exception):
        run(dpo_cfg(tiny_model_dir, sft_adapter, tmp_path, "--max-steps", "1", "--overwrite", run_name="keep",
                    model_name_or_path=str(broken)))
    assert {p.relative_to(rd): p.read_bytes() for p in rd.rglob("*") if p.is_file()} == before


def test_a_pair_whose_answers_are_equal_is_refused_naming_its_line(tmp_path, tok):
    """Such a pair teaches nothing (DPO's loss on it is a constant); the pair contract refuses it."""
    from factuality.records import RecordError

    rows = make_pairs(tok)
    rows[1] = dict(rows[1], rejected=rows[1]["chosen"])
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(RecordError, match=r"pairs.jsonl:2: rejected: equals chosen"):
        load_pairs(path)


def test_a_pair_citing_support_it_does_not_show_is_refused(tmp_path, tok):
    """Issue 24, item 10: support / hard-negative ids must be among the pair's evidence ids (the
    support penalty and the verifiers read them); such pairs used to train silently."""
    from factuality.records import RecordError

    rows = make_pairs(tok)
    assert rows[2].get("evidence")
    rows[2] = dict(rows[2], support_ids=["E99"])
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(RecordError, match=r"pairs.jsonl:3: support_ids: 'E99' is not among the evidence ids"):
        load_pairs(path)


def test_tampered_adapter_and_reference_cache(tiny_model_dir, sft_adapter, tmp_path, pairs_file, caplog):
    """Issue 24, item 7: the DPO run card holds the adapter's sha256 (a changed byte is refused when
    the adapter loads); a changed reference log-prob cache is discarded and computed again, and
    the run trains to the same adapter."""
    from safetensors.torch import load_file

    from factuality.modeling import load_adapter, load_model
    from factuality.records import RecordError

    args = ("--precompute-ref-log-probs", "true", "--max-steps", "2", "--max-val-pairs", "0")
    run(dpo_cfg(tiny_model_dir, sft_adapter, tmp_path, *args, run_name="a"))
    rd = tmp_path / "runs" / "a"
    card = json.loads((rd / "run_card.json").read_text())
    assert set(card["output_sha256"]) >= {"adapter_config.json", "adapter_model.safetensors"}
    w = rd / "adapter_model.safetensors"
    pristine = w.read_bytes()
    b = bytearray(pristine)
    b[-3] ^= 1
    w.write_bytes(bytes(b))
    base = load_model(str(tiny_model_dir))
    with pytest.raises(RecordError, match="adapter_model.safetensors: sha256 .* differs"):
        load_adapter(base, rd)
    w.write_bytes(pristine)

    (cache,) = (tmp_path / "refcache").rglob("*.jsonl")
    text = cache.read_text()
    row = json.loads(text.splitlines()[0])
    row["ref_chosen_logps"] += 1.0
    cache.write_text(json.dumps(row) + "\n" + "\n".join(text.splitlines()[1:]) + "\n")
    with caplog.at_level("WARNING", logger="factuality.records"):
        again = run(dpo_cfg(tiny_model_dir, sft_adapter, tmp_path, *args, run_name="b"))
    assert "The cache is discarded and computed again" in caplog.text
    assert again["reference"]["cache"]["train"]["computed"] > 0
    want, got = load_file(w), load_file(tmp_path / "runs" / "b" / "adapter_model.safetensors")
    for k in want:
        torch.testing.assert_close(got[k], want[k])
