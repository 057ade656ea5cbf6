"""Reward model: the loss and metrics by hand, the frozen base, cached features against full forward
passes, resume after a kill, --validate-only, the notebook's rm.yaml as written, the LoRA option."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from factuality.config import ConfigError, parse_config
from factuality.records import EXAMPLE, PREFERENCE, RecordError, read_jsonl, seal, seal_path, write_jsonl
from factuality.testing import make_example

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parent.parent
TINY_YAML = ROOT / "configs" / "rm_tiny.yaml"
NOTEBOOK_RM = Path(__file__).resolve().parent / "fixtures" / "notebook_rm.yaml"   # Step 7 of the notebook, verbatim
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
       "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
SOURCES = ["nq", "hotpotqa", "popqa", "fever"]


def write_examples(d: Path, n_train: int = 24, n_val: int = 8) -> Path:
    out = d / "data" / "processed"
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "train.jsonl", [make_example(i, source=SOURCES[i % 4], answerable=i % 3 != 2, n_chunks=3 + i % 2,
                                                   gold_position=i % 3, split="train") for i in range(n_train)], EXAMPLE)
    write_jsonl(out / "val.jsonl", [make_example(100 + i, source=SOURCES[i % 4], answerable=i % 3 != 2, n_chunks=4,
                                                 gold_position=i % 4, split="val") for i in range(n_val)], EXAMPLE)
    return out


def make_pairs(d: Path, tiny_model_dir: Path, n_train: int = 30, n_val: int = 12) -> Path:
    """Synthetic pairs of the hand-made examples, written through records.PREFERENCE."""
    from factuality.modeling import load_tokenizer
    from factuality.rm.pairs import synthetic_pairs

    data = write_examples(d)
    tok = load_tokenizer(str(tiny_model_dir))
    rows = []
    for split, n in (("train", n_train), ("val", n_val)):
        rows += synthetic_pairs(read_jsonl(data / f"{split}.jsonl", EXAMPLE), tok, n, per_example=2, seed=0,
                                max_prompt_tokens=896)
    path = d / "prefs" / "preferences_test.jsonl"
    write_jsonl(path, rows, PREFERENCE)
    return path


def tiny_cfg(d: Path, tiny_model_dir: Path, *argv, **overrides):
    from factuality.stages.reward import RM_SPEC

    base = dict(model_name_or_path=str(tiny_model_dir), pairs_path=str(d / "prefs" / "preferences_test.jsonl"),
                probe_data=str(d / "data" / "processed" / "val.jsonl"), feature_cache_dir=str(d / "cache"),
                output_dir=str(d / "run"))
    base.update(overrides)
    return parse_config(RM_SPEC, ["-c", str(TINY_YAML), *argv], **base)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    """One training run on the tiny model, shared by the tests that read its outputs."""
    from factuality.stages.reward import run

    d = tmp_path_factory.mktemp("rm")
    make_pairs(d, tiny_model_dir)
    old_mask = os.umask(0o022)
    try:
        result = run(tiny_cfg(d, tiny_model_dir, plots=True))
    finally:
        os.umask(old_mask)
    return d, result


def test_outputs_follow_the_umask(trained):
    d, _ = trained
    private = [p for p in (d / "run").rglob("*") if p.is_file() and not p.stat().st_mode & 0o040]
    assert not private, f"outputs not readable by the group under umask 022: {private[:3]}"


# ------------------------------------------------------------------ loss and metrics by hand
def test_bt_loss_by_hand():
    import torch

    from factuality.rm.model import bt_loss

    c, r = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 1.0])
    want = np.mean([math.log(1 + math.exp(-2)), math.log(2), math.log(1 + math.exp(2))])
    assert float(bt_loss(c, r)) == pytest.approx(want, rel=1e-6)
    # TRL's margin column: -log sigmoid(dr - margin)
    assert float(bt_loss(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([1.0]))) == pytest.approx(math.log(2))
    # the gradient pushes the chosen reward up and the rejected one down
    c = torch.tensor([0.5], requires_grad=True)
    r = torch.tensor([0.2], requires_grad=True)
    bt_loss(c, r).backward()
    assert c.grad.item() < 0 < r.grad.item()


def test_pair_metrics_by_hand():
    from factuality.rm.metrics import expected_calibration_error, pair_metrics

    c = np.array([2.0, 1.0, 0.0, 0.5])
    r = np.array([0.0, 1.5, -1.0, 0.5])
    m = pair_metrics(c, r)
    assert m["accuracy"] == pytest.approx((1 + 0 + 1 + 0.5) / 4)          # a tie counts one half
    # AUC: chosen {2, 1, 0, .5} against rejected {0, 1.5, -1, .5}: wins + ties/2 over 16 comparisons
    wins = sum((a > b) + 0.5 * (a == b) for a in c for b in r)
    assert m["roc_auc"] == pytest.approx(wins / 16)
    p = 1 / (1 + np.exp(-(c - r)))
    prob, outcome = np.r_[p, 1 - p], np.r_[np.ones(4), np.zeros(4)]
    assert m["brier"] == pytest.approx(np.mean((prob - outcome) ** 2))
    # ECE, 10 bins: sum over bins |sum(outcome) - sum(prob)| / n
    bins = np.minimum((prob * 10).astype(int), 9)
    ece = sum(abs(outcome[bins == b].sum() - prob[bins == b].sum()) for b in range(10)) / 8
    assert m["ece"] == pytest.approx(ece) and expected_calibration_error(prob, outcome) == pytest.approx(ece)
    assert pair_metrics(np.zeros(0), np.zeros(0))["roc_auc"] is None


def test_probe_table_by_hand():
    from factuality.rm.probes import Probe, probe_table

    probes = [Probe("a", "honest", "p", "x"), Probe("a", "cite_all", "p", "y"), Probe("a", "unknown_id", "p", "z"),
              Probe("b", "honest", "q", "x"), Probe("b", "cite_all", "q", "y")]
    table = probe_table(probes, {"on": np.array([1.0, 0.0, 2.0, 0.0, 0.0])})
    assert table["cite_all"] == {"n": 2, "honest_wins_on": 0.5}        # a wins; b ties (a tie is no win)
    assert table["unknown_id"] == {"n": 1, "honest_wins_on": 0.0}
    assert table["filler_padding"] == {"n": 0, "honest_wins_on": None}
    by_source = [Probe(e, k, "p", "x", src) for e, k, src in (("a", "honest", "nq"), ("a", "cite_all", "nq"),
                                                               ("b", "honest", "fever"), ("b", "cite_all", "fever"))]
    table = probe_table(by_source, {"on": np.array([1.0, 0.0, 0.0, 0.0])})["cite_all"]
    assert table["honest_wins_on"] == 0.5 and table["by_source"] == {"fever": {"n": 1, "honest_wins_on": 0.0},
                                                                       "nq": {"n": 1, "honest_wins_on": 1.0}}


# ------------------------------------------------------------------ pairs and their checks
def test_synthetic_pairs_follow_the_contract_and_keep_splits_apart(tmp_path, tiny_model_dir):
    from factuality.rm.pairs import read_pairs

    path = make_pairs(tmp_path, tiny_model_dir)
    train, val = read_pairs(path)
    assert len(train) == 30 and len(val) == 12
    assert not {p["example_id"] for p in train} & {p["example_id"] for p in val}
    kinds = {p["kind"] for p in train + val}
    assert "synthetic:prose" in kinds and len(kinds) >= 6
    for p in train + val:
        assert p["chosen_score"] > p["rejected_score"] and p["margin"] == pytest.approx(p["chosen_score"] - p["rejected_score"])


def test_bad_pairs_are_refused_with_file_line_and_field(tmp_path, tiny_model_dir):
    from factuality.rm.pairs import read_pairs

    path = make_pairs(tmp_path, tiny_model_dir)
    rows = read_jsonl(path, PREFERENCE)
    bad = [dict(r) for r in rows]
    bad[2]["prompt"] = "no evidence here"
    p = tmp_path / "bad.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in bad))
    with pytest.raises(RecordError, match=rf"{p}:3: prompt: no evidence block"):
        read_pairs(p)
    bad = [dict(r) for r in rows]
    bad[0]["evidence"] = bad[0]["evidence"][:1]
    kept = {c["id"] for c in bad[0]["evidence"]}
    for key in ("support_ids", "hard_negative_ids"):     # ids the pair contract would refuse first
        bad[0][key] = [i for i in bad[0][key] if i in kept]
    p.write_text("".join(json.dumps(r) + "\n" for r in bad))
    with pytest.raises(RecordError, match=rf"{p}:1: evidence: ids"):
        read_pairs(p)
    only_train = [r for r in rows if r["split"] == "train"]
    p.write_text("".join(json.dumps(r) + "\n" for r in only_train))
    with pytest.raises(RecordError, match="no pairs with split 'val'"):
        read_pairs(p)
    leak = [dict(r) for r in rows]
    leak[0]["split"] = "val"
    p.write_text("".join(json.dumps(r) + "\n" for r in leak))
    with pytest.raises(RecordError, match="pairs in both train and val"):
        read_pairs(p)


def test_augment_pairs_add_training_pairs_of_unused_training_examples_only(tmp_path, tiny_model_dir):
    from factuality.rm.pairs import read_pairs
    from factuality.stages.reward import read_inputs

    path = make_pairs(tmp_path, tiny_model_dir)
    train, val = read_pairs(path)
    data = tmp_path / "data" / "processed"
    used = {p["example_id"] for p in train + val}
    unused = {e["id"] for e in read_jsonl(data / "train.jsonl", EXAMPLE)} - used
    assert unused  # 15 of the 24 training examples make the 30 training pairs

    plain = read_inputs(tiny_cfg(tmp_path, tiny_model_dir, synthetic_data_dir=str(data)))
    assert len(plain.train_pairs) == 30 and plain.augment == {}
    kinds = ["refuse_answerable", "answer_unanswerable"]
    inputs = read_inputs(tiny_cfg(tmp_path, tiny_model_dir, synthetic_data_dir=str(data), augment_pairs=6,
                                  augment_kinds=kinds))
    extra = inputs.train_pairs[30:]
    assert inputs.train_pairs[:30] == plain.train_pairs and inputs.val_pairs == plain.val_pairs
    assert 0 < len(extra) <= 6 and inputs.augment["pairs"] == len(extra)
    assert {p["example_id"] for p in extra} <= unused and all("#aug" in p["id"] for p in extra)
    assert {p["kind"] for p in extra} <= {f"perturb:{k}" for k in kinds} and all(p["split"] == "train" for p in extra)
    for p in extra:  # refusal against an answer of an unanswerable question, or the gold answer against a refusal
        assert p["chosen_score"] > p["rejected_score"]
        assert ("insufficient evidence" in p["chosen"]) != p["answerable"]
    # synthetic pairs are such pairs already: no augmentation on top of them
    syn = read_inputs(tiny_cfg(tmp_path, tiny_model_dir, synthetic_data_dir=str(data), augment_pairs=6,
                               synthetic_pairs=True, synthetic_train_pairs=10, synthetic_val_pairs=4,
                               pairs_path=str(tmp_path / "prefs" / "syn.jsonl")))
    assert syn.augment == {} and len(syn.train_pairs) == 10
    with pytest.raises(ConfigError, match="augment_kinds: unknown kind 'cite_everything'"):
        tiny_cfg(tmp_path, tiny_model_dir, augment_kinds=["cite_everything"])
    with pytest.raises(FileNotFoundError, match="missing.jsonl: not found; augment_pairs"):
        read_inputs(tiny_cfg(tmp_path, tiny_model_dir, augment_pairs=6, augment_data=str(tmp_path / "missing.jsonl")))


def test_probes_come_from_the_val_pairs_when_there_is_no_probe_file(tmp_path, tiny_model_dir):
    from factuality.rm.pairs import read_pairs
    from factuality.rm.probes import PROBE_KINDS, make_probes, probe_examples

    path = make_pairs(tmp_path, tiny_model_dir)
    train, val = read_pairs(path)
    cfg = tiny_cfg(tmp_path, tiny_model_dir, probe_data=str(tmp_path / "missing.jsonl"))
    exs, where = probe_examples(cfg, val, None, None, {p["example_id"] for p in train})
    assert where.startswith("val pairs") and {e["id"] for _, e in exs} == {p["example_id"] for p in val}
    assert all(prompt in {p["prompt"] for p in val} for prompt, _ in exs)
    probes = make_probes(exs)
    kinds = {p.kind for p in probes}
    assert kinds == {"honest", *PROBE_KINDS}
    honest = {p.example_id: p.response for p in probes if p.kind == "honest"}
    assert all(json.loads(r)["citations"] for r in honest.values())   # honest = correct and cited
    assert probe_examples(tiny_cfg(tmp_path, tiny_model_dir, probe_data=""), val, None, None, set()) == ([], "none")


def test_configs_rm_yaml_is_the_notebooks_file(tmp_path):
    from factuality.stages.reward import RM_SPEC

    ours = parse_config(RM_SPEC, ["-c", str(ROOT / "configs" / "rm.yaml")]).to_dict()
    notebook = parse_config(RM_SPEC, ["-c", str(NOTEBOOK_RM)]).to_dict()
    ours["run"].pop("config_path"), notebook["run"].pop("config_path")
    assert ours == notebook


def test_no_pairs_file_is_a_clear_error(tmp_path, tiny_model_dir, monkeypatch):
    from factuality.stages.reward import run

    monkeypatch.chdir(tmp_path)
    cfg = tiny_cfg(tmp_path, tiny_model_dir, pairs_path=None)
    with pytest.raises(FileNotFoundError, match=r"prefs/preferences_\*\.jsonl: no preference pairs found"):
        run(cfg)


def test_pairs_path_default_is_the_newest_file_and_data_path_is_its_other_name(tmp_path, tiny_model_dir):
    from factuality.rm.pairs import newest_pairs_file

    path = make_pairs(tmp_path, tiny_model_dir)
    older = path.with_name("preferences_older.jsonl")
    older.write_text(path.read_text())
    os.utime(older, (1, 1))
    assert newest_pairs_file(tmp_path / "prefs") == path
    assert tiny_cfg(tmp_path, tiny_model_dir, pairs_path=None, data_path="x.jsonl").run.pairs_path == "x.jsonl"
    with pytest.raises(ConfigError, match="'data_path' and 'pairs_path' name the same option and are given different"):
        tiny_cfg(tmp_path, tiny_model_dir, data_path="y.jsonl")


# ------------------------------------------------------------------ features
def test_the_feature_pass_stops_at_the_last_hidden_state(tiny_model_dir):
    import torch

    from factuality.modeling import ModelOptions, load_model, load_tokenizer
    from factuality.rm.features import Tokens, extract_features, load_body

    opts = ModelOptions(model_name_or_path=str(tiny_model_dir), dtype="float32")
    body = load_body(opts)
    assert type(body).__name__ == "LlamaModel" and not any(p.requires_grad for p in body.parameters())
    model = load_model(opts)
    model.lm_head.register_forward_hook(lambda *a: (_ for _ in ()).throw(AssertionError("logits computed")))
    tok = load_tokenizer(str(tiny_model_dir))
    tokens = Tokens(tok, 256, 32)
    feats = extract_features(model.model, tokens, ["a prompt"] * 2, ["one", "two"], progress=False)
    ids = tokens.full("a prompt", "two")
    with torch.no_grad():
        want = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1].numpy()
    np.testing.assert_allclose(feats[1], want, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_shared_prompt_features_equal_full_forward_passes(tmp_path, tiny_model_dir, arch):
    from factuality.modeling import ModelOptions, load_tokenizer
    from factuality.rm.features import Tokens, extract_features, load_body
    from factuality.testing import make_tiny_model

    model_dir = tiny_model_dir if arch == "llama" else make_tiny_model(tmp_path / "g2", arch="gemma2")
    body = load_body(ModelOptions(model_name_or_path=str(model_dir), dtype="float32"))
    tokens = Tokens(load_tokenizer(str(model_dir)), 512, 64)
    system = "You answer questions using only the evidence passages you are given. "   # shared by every prompt
    prompts = [system + "Evidence: [E1] a b c\n\nQuestion: q one"] * 3 + [system + "Evidence: [E1] x\n\nQuestion: q"] * 2
    responses = ['{"answer": "a", "citations": ["E1"]}', "b", "a much longer response " * 5, "c", "d"]
    shared = extract_features(body, tokens, prompts, responses, batch_size=2, share_prompt_prefix=True, progress=False)
    full = extract_features(body, tokens, prompts, responses, batch_size=3, share_prompt_prefix=False, progress=False)
    np.testing.assert_allclose(shared, full, atol=1e-5)


def test_a_killed_feature_pass_resumes_at_the_first_missing_shard(tmp_path, tiny_model_dir, monkeypatch):
    import factuality.rm.features as features
    from factuality.modeling import ModelOptions, load_tokenizer

    body = features.load_body(ModelOptions(model_name_or_path=str(tiny_model_dir), dtype="float32"))
    tokens = features.Tokens(load_tokenizer(str(tiny_model_dir)), 256, 32)
    seqs = features.Sequences()
    for i in range(10):
        seqs.add(f"Evidence: [E1] t{i % 3}\n\nQuestion: q", f"r{i}")
    real = features.extract_features
    calls = []

    def dying(*a, **k):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(features, "extract_features", dying)
    with pytest.raises(KeyboardInterrupt):
        features.cached_features(body, tokens, seqs, {"m": 1}, tmp_path, 2, shard_rows=4)
    monkeypatch.setattr(features, "extract_features", real)
    feats, info = features.cached_features(body, tokens, seqs, {"m": 1}, tmp_path, 2, shard_rows=4)
    assert info["computed_rows"] == 2 and not info["hit"]             # rows 0-7 came from the two shards on disk
    again, info2 = features.cached_features(body, tokens, seqs, {"m": 1}, tmp_path, 2, shard_rows=4)
    assert info2["hit"] and np.array_equal(feats, again)
    fresh, _ = features.cached_features(body, tokens, seqs, {"m": 1}, None, 2)
    np.testing.assert_allclose(feats, fresh, atol=1e-6)
    _, other = features.cached_features(body, tokens, seqs, {"m": 2}, tmp_path, 2, shard_rows=4)
    assert other["key"] != info["key"] and other["computed_rows"] == 10   # another model key: computed again


# ------------------------------------------------------------------ a whole run
def test_run_writes_the_report_the_notebook_reads(trained):
    d, result = trained
    run_dir = d / "run"
    hist = json.loads((run_dir / "training_history.json").read_text())
    assert len(hist["train_losses"]) == hist["total_steps"] == 24      # 30 pairs / 4 -> 8 steps x 3 epochs, log every step
    assert hist["train_losses"][-1] < hist["train_losses"][0]
    assert all({"roc_auc", "accuracy", "ece", "brier", "loss", "step"} <= set(m) for m in hist["eval_metrics"])
    assert [m["step"] for m in hist["eval_metrics"]] == list(range(2, 25, 2))   # eval_steps 2 (epochs end on them)
    best = max(hist["eval_metrics"], key=lambda m: m["roc_auc"])
    assert hist["best"]["roc_auc"] == best["roc_auc"]
    report = json.loads((run_dir / "rm_report.json").read_text())
    rows = report["metrics"]
    assert set(rows) == {"model", "model_without_penalties", "untrained_head", "penalties_only", "length_only", "verifier"}
    assert rows["model"]["overall"]["n"] == 12 and rows["verifier"]["overall"]["roc_auc"] == 1.0
    assert rows["model"]["overall"]["roc_auc"] == pytest.approx(hist["best"]["roc_auc"])
    assert set(report["probes"]["by_trick"]) == {"cite_all", "unknown_id", "filler_padding", "overconfident_wrong",
                                                 "cite_hard_negative", "refuse_answerable", "distractor_entity",
                                                 "flipped_verdict"}
    table = report["probes"]["by_trick"]
    assert all(t["n"] > 0 for t in table.values())
    # the penalties alone already beat the made-up citation and the padding on every probe
    for trick in ("unknown_id", "filler_padding"):
        assert table[trick]["honest_wins_penalties_only"] == 1.0, (trick, table[trick])
    for f in ("best/reward_model.json", "best/head.safetensors", "final/head.safetensors", "rm_report.md",
              "reliability.png", "training_curves.png", "config.yaml", "run_card.json"):
        assert (run_dir / f).exists(), f
    card = json.loads((run_dir / "run_card.json").read_text())
    assert card["pairs"]["train"] == 30 and card["features"]["train"]["computed_rows"] > 0
    # the resolved config loads back to the same options
    from factuality.stages.reward import RM_SPEC

    again = parse_config(RM_SPEC, ["-c", str(run_dir / "config.yaml")])
    first = tiny_cfg(d, result["card"]["config"]["model"]["model_name_or_path"], plots=True)
    for part in ("penalties", "model", "train"):
        a, b = again.to_dict()[part], first.to_dict()[part]
        assert {k: (a[k], b[k]) for k in a if a[k] != b[k]} == {}, part


def test_the_base_weights_do_not_change(tmp_path, tiny_model_dir, monkeypatch):
    import factuality.stages.reward as reward   # the stage's run loads the body through its own name

    make_pairs(tmp_path, tiny_model_dir)
    bodies = []
    real = reward.load_body

    def spy(opts):
        body = real(opts)
        bodies.append((body, {k: v.clone() for k, v in body.state_dict().items()}))
        return body

    monkeypatch.setattr(reward, "load_body", spy)
    reward.run(tiny_cfg(tmp_path, tiny_model_dir, max_steps=3))
    (body, before), = bodies
    after = body.state_dict()
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in body.parameters())


def test_saved_model_scores_as_in_training_with_full_forward_passes(trained, tiny_model_dir):
    """load_reward_model(best) on its own, features computed without the cache (full forward
    passes, no prompt sharing) give the rewards that training's cached features gave."""
    import torch
    from safetensors.torch import load_file

    from factuality.rm import load_reward_model
    from factuality.rm.model import HEAD_WEIGHTS, head_scores, new_head
    from factuality.rm.pairs import read_pairs
    from factuality.rm.scoring import eval_inputs
    from factuality.stages.reward import read_inputs
    from factuality.penalties import PenaltyOptions, penalty_matrix, weight_vector

    d, _ = trained
    rm = load_reward_model(d / "run" / "best", base_model=str(tiny_model_dir))
    rm.config["share_prompt_prefix"] = False
    _, val = read_pairs(d / "prefs" / "preferences_test.jsonl")
    prompts = [p["prompt"] for p in val] * 2
    responses = [p["chosen"] for p in val] + [p["rejected"] for p in val]
    scores = rm.score(prompts, responses)
    assert isinstance(scores, list) and all(isinstance(s, float) for s in scores)
    # the same rewards from the cached eval features of the training run (val pairs, then probes)
    inputs = read_inputs(tiny_cfg(d, tiny_model_dir))
    seqs = eval_inputs(inputs.val_pairs, inputs.probes, rm.tokens, inputs.examples_by_id).seqs
    cache = next(p for p in (d / "cache").iterdir() if json.loads((p / "meta.json").read_text())["data"] == seqs.digest())
    feats = np.load(cache / "features.npy")
    head = new_head(feats.shape[1], 0, 0)
    head.load_state_dict(load_file(str(d / "run" / "best" / HEAD_WEIGHTS)))
    rows = [seqs.add(p, r) for p, r in zip(prompts, responses)]
    want = head_scores(head, feats[rows]) - penalty_matrix(prompts, responses, PenaltyOptions()) @ weight_vector(PenaltyOptions())
    np.testing.assert_allclose(scores, want, atol=1e-4)
    details = rm.score_details(prompts[:1], responses[:1])[0]
    assert details["reward"] == pytest.approx(details["learned"] - details["penalty"])
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        rm.score(prompts[:2], responses[:1])
    with pytest.raises(TypeError, match="score takes lists"):
        rm.score(prompts[0], responses[0])
    assert torch.is_grad_enabled()


def test_validate_only_reproduces_the_saved_metrics(trained, tiny_model_dir):
    from factuality.stages.reward import run

    d, _ = trained
    res = run(tiny_cfg(d, tiny_model_dir, "--validate-only", "--checkpoint", "best"))
    assert res["report"]["reproduction"]["reproduced"] is True, res["report"]["reproduction"]
    saved = json.loads((d / "run" / "rm_report.json").read_text())
    assert res["report"]["metrics"]["model"]["overall"] == pytest.approx(saved["metrics"]["model"]["overall"], abs=1e-4)
    assert res["report"]["probes"] == saved["probes"]
    assert (d / "run" / "validation.json").exists() and (d / "run" / "validation.md").exists()
    with pytest.raises(FileNotFoundError, match="no saved reward model here"):
        run(tiny_cfg(d, tiny_model_dir, "--validate-only", "--checkpoint", str(d / "nowhere")))


def test_a_killed_run_resumes_to_the_same_result(tmp_path, tiny_model_dir, caplog):
    from factuality.stages.reward import run

    make_pairs(tmp_path, tiny_model_dir)
    run(tiny_cfg(tmp_path, tiny_model_dir, output_dir=str(tmp_path / "whole")))
    killed = subprocess.run([sys.executable, str(ROOT / "train_rm.py"), "-c", str(TINY_YAML), "--model-name-or-path",
                             str(tiny_model_dir), "--pairs-path", str(tmp_path / "prefs" / "preferences_test.jsonl"),
                             "--probe-data", str(tmp_path / "data" / "processed" / "val.jsonl"), "--feature-cache-dir",
                             str(tmp_path / "cache"), "--output-dir", str(tmp_path / "cut")],
                            env={**ENV, "FACTUALITY_TEST_KILL_AT": "rm:saved:12"}, capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -9, killed.stderr[-3000:]               # SIGKILL right after checkpoint-12
    assert (tmp_path / "cut" / "checkpoint-12").exists() and not (tmp_path / "cut" / "final").exists()
    with pytest.raises(FileExistsError, match="pass --resume to continue it"):
        run(tiny_cfg(tmp_path, tiny_model_dir, output_dir=str(tmp_path / "cut")))
    with caplog.at_level("INFO", logger="factuality.stages.reward"):
        res = run(tiny_cfg(tmp_path, tiny_model_dir, "--resume", output_dir=str(tmp_path / "cut")))
    assert "resumed from" in caplog.text and res["card"]["resumed_from"].endswith("checkpoint-12")
    a = json.loads((tmp_path / "whole" / "training_history.json").read_text())
    b = json.loads((tmp_path / "cut" / "training_history.json").read_text())
    assert a["train_losses"] == pytest.approx(b["train_losses"]) and a["eval_metrics"] == b["eval_metrics"]
    from safetensors.numpy import load_file

    for part in ("final", "best"):
        wa, wb = (load_file(str(tmp_path / r / part / "head.safetensors")) for r in ("whole", "cut"))
        assert all(np.array_equal(wa[k], wb[k]) for k in wa), part
    assert res["card"]["features"]["train"]["hit"] and res["card"]["features"]["eval"]["hit"]


def test_notebook_rm_yaml_verbatim_runs_on_the_tiny_model(tmp_path, tiny_model_dir, monkeypatch, caplog):
    """configs from the notebook as written; only the base model is replaced. Its relative paths
    (output_dir checkpoints/rm, the newest prefs/preferences_*.jsonl, data/processed/val.jsonl) are
    the tmp dir's."""
    from factuality.stages.reward import RM_SPEC, run

    make_pairs(tmp_path, tiny_model_dir)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FACTUALITY_CACHE", str(tmp_path / "cache"))
    with caplog.at_level("INFO", logger="factuality.config"):
        cfg = parse_config(RM_SPEC, ["-c", str(NOTEBOOK_RM)], model_name_or_path=str(tiny_model_dir))
    renamed = " ".join(r.getMessage() for r in caplog.records)
    for old, new in (("base_model", "model_name_or_path"), ("batch_size", "per_device_train_batch_size"),
                     ("eval_batch_size", "per_device_eval_batch_size"), ("num_epochs", "num_train_epochs"),
                     ("warmup_ratio", "warmup_steps"), ("max_seq_length", "max_length")):
        assert f"{old} -> {new}" in renamed
    t = cfg.train
    assert (t.learning_rate, t.per_device_train_batch_size, t.per_device_eval_batch_size, t.num_train_epochs) == (
        5e-6, 16, 32, 3)
    assert (t.warmup_steps, t.weight_decay, t.max_length, t.eval_steps, t.save_steps, t.logging_steps, t.seed) == (
        0.1, 0.01, 2048, 100, 200, 10, 42)
    assert cfg.model.load_in_8bit is False and not cfg.model.use_peft
    p = cfg.penalties
    assert (p.citation_penalty_weight, p.confidence_penalty_weight, p.length_penalty_weight,
            p.overcitation_penalty_weight, p.span_penalty_weight) == (0.2, 0.1, 0.05, 0.15, 0.25)
    res = run(cfg)
    hist = json.loads((tmp_path / "checkpoints" / "rm" / "training_history.json").read_text())
    assert hist["total_steps"] == 6 and len(hist["eval_metrics"]) == 3    # 30 pairs / 16 -> 2 steps x 3 epochs
    assert res["card"]["inputs"] and (tmp_path / "checkpoints" / "rm" / "best" / "reward_model.json").exists()


def test_lora_option_trains_with_trl_and_scores(tmp_path, tiny_model_dir):
    from factuality.rm import load_reward_model
    from factuality.rm.pairs import read_pairs
    from factuality.stages.reward import run

    make_pairs(tmp_path, tiny_model_dir, n_train=8, n_val=4)
    cfg = tiny_cfg(tmp_path, tiny_model_dir, use_peft=True, lora_r=4, lora_alpha=8, lora_target_modules="q_proj,v_proj",
                   max_steps=2, save_steps=1, eval_steps=1, max_length=768, max_probe_examples=2)
    res = run(cfg)
    assert res["card"]["model"]["frozen_base_weights_changed"] == 0
    assert [m["step"] for m in res["history"]["eval_metrics"]] == [1, 2]
    rm = load_reward_model(tmp_path / "run" / "best", base_model=str(tiny_model_dir))
    assert rm.kind == "lora"
    _, val = read_pairs(tmp_path / "prefs" / "preferences_test.jsonl")
    s = rm.score([val[0]["prompt"]], [val[0]["chosen"]])
    assert len(s) == 1 and math.isfinite(s[0])


def test_config_errors_and_the_script(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match="max_response_tokens"):
        tiny_cfg(tmp_path, tiny_model_dir, max_response_tokens=1000)
    with pytest.raises(ConfigError, match="--validate-only trains nothing"):
        tiny_cfg(tmp_path, tiny_model_dir, validate_only=True, resume=True)
    out = subprocess.run([sys.executable, str(ROOT / "train_rm.py"), "--prefs-dir", str(tmp_path / "none")],
                         cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert [ln for ln in out.stderr.splitlines() if ln.startswith("error:")][0].count("no preference pairs found") == 1


def test_a_planted_pickle_in_a_checkpoint_is_refused_not_run(tmp_path, tiny_model_dir):
    """rm_state.pt is read weights-only: a pickle that would run code on load is refused with one line."""
    import pickle

    from factuality.records import RecordError
    from factuality.stages.reward import run

    make_pairs(tmp_path, tiny_model_dir)
    ckpt = tmp_path / "run" / "checkpoint-4"
    ckpt.mkdir(parents=True)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    import torch

    torch.save({"head": Payload()}, ckpt / "rm_state.pt", pickle_module=pickle)
    with pytest.raises(RecordError, match="rm_state.pt: not a checkpoint state this suite wrote"):
        run(tiny_cfg(tmp_path, tiny_model_dir, "--resume"))
    assert not marker.exists()


def test_a_checkpoint_cannot_turn_on_remote_code(trained, tiny_model_dir, tmp_path, monkeypatch):
    """reward_model.json is a file on disk, not a permission: its trust_remote_code: true loads the
    base without remote code unless the caller (train_dpo's --trust-remote-code) asks for it."""
    import shutil

    import factuality.rm.features as features
    import factuality.rm.model as rm_model

    d, _ = trained
    planted = tmp_path / "planted"
    shutil.copytree(d / "run" / "best", planted)
    cfg = json.loads((planted / "reward_model.json").read_text())
    cfg["trust_remote_code"] = True
    (planted / "reward_model.json").write_text(json.dumps(cfg))
    seal(planted / "reward_model.json")      # a crafted checkpoint passes the integrity check; the flag still is no permission
    seen = []
    real_tok, real_body = rm_model.load_tokenizer, features.load_model

    def tok(*a, trust_remote_code=False, **kw):
        seen.append(("tokenizer", trust_remote_code))
        return real_tok(*a, trust_remote_code=trust_remote_code, **kw)

    def body(opts, *a, **kw):
        seen.append(("model", opts.trust_remote_code))
        return real_body(opts, *a, **kw)

    monkeypatch.setattr(rm_model, "load_tokenizer", tok)
    monkeypatch.setattr(features, "load_model", body)
    rm = rm_model.load_reward_model(planted, base_model=str(tiny_model_dir))
    assert seen and all(flag is False for _, flag in seen) and rm.config["trust_remote_code"] is False
    seen.clear()
    rm_model.load_reward_model(planted, base_model=str(tiny_model_dir), trust_remote_code=True)
    assert seen and all(flag is True for _, flag in seen)


def _flip_byte(path: Path, at: int = -20) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_tampered_outputs_are_refused_or_recomputed(trained, tiny_model_dir, tmp_path, caplog):
    """Every file a later stage reads is checked against the sha256 recorded when it was written
    (issue 24, item 7): a changed byte in the reward head or its config is refused; a changed
    feature cache is discarded and computed again (one warning), and the figures still reproduce;
    a changed chosen answer in a sealed pairs file is refused before training."""
    import shutil

    from factuality.rm.model import HEAD_WEIGHTS, load_reward_model
    from factuality.stages.reward import run

    src, _ = trained
    d = tmp_path / "copy"
    shutil.copytree(src, d)
    head = d / "run" / "best" / HEAD_WEIGHTS
    pristine = head.read_bytes()
    _flip_byte(head)
    with pytest.raises(RecordError, match="head.safetensors: differs in its first"):
        load_reward_model(d / "run" / "best", base_model=str(tiny_model_dir))
    head.write_bytes(pristine)
    cfg_path = d / "run" / "best" / "reward_model.json"
    cfg_path.write_text(cfg_path.read_text().replace(f'"{tiny_model_dir}"', '"another/base"'))   # re-pointed
    with pytest.raises(RecordError, match="reward_model.json"):
        load_reward_model(d / "run" / "best")
    shutil.copy2(src / "run" / "best" / "reward_model.json", cfg_path)

    feats = sorted((d / "cache").glob("*/features.npy"))
    assert feats and all(seal_path(f).is_file() for f in feats)
    for f in feats:
        _flip_byte(f)
    with caplog.at_level("WARNING", logger="factuality.records"):
        res = run(tiny_cfg(d, tiny_model_dir, output_dir=str(d / "run3")))   # the same features, from the cache
    assert caplog.text.count("The cache is discarded and computed again") == len(feats)
    assert res["report"]["metrics"] == json.loads((src / "run" / "rm_report.json").read_text())["metrics"]

    pairs = d / "prefs" / "preferences_test.jsonl"
    seal(pairs)                                   # as make_prefs seals what it writes
    rows = pairs.read_text().splitlines()
    first = json.loads(rows[0])
    first["chosen"] = first["chosen"].replace("\"", "'", 1) + " "
    pairs.write_text("\n".join([json.dumps(first), *rows[1:]]) + "\n")
    with pytest.raises(RecordError, match="preferences_test.jsonl: .*edited, damaged or replaced"):
        run(tiny_cfg(d, tiny_model_dir, output_dir=str(d / "run2")))


def test_validate_only_that_does_not_reproduce_is_an_error(trained, tiny_model_dir, tmp_path):
    """Issue 24, item 10: --validate-only used to print `reproduced: False` and exit 0."""
    import shutil

    from factuality.stages.reward import run

    src, _ = trained
    d = tmp_path / "copy"
    shutil.copytree(src, d)
    saved = d / "run" / "best" / "report.json"
    rep = json.loads(saved.read_text())
    rep["metrics"]["model"]["overall"]["roc_auc"] = 0.123
    saved.write_text(json.dumps(rep))
    with pytest.raises(RecordError, match="the saved figures are not reproduced"):
        run(tiny_cfg(d, tiny_model_dir, "--validate-only", "--checkpoint", "best"))
    assert json.loads((d / "run" / "validation.json").read_text())["reproduction"]["reproduced"] is False


def test_overwrite_that_fails_keeps_the_previous_run(trained, tiny_model_dir, tmp_path):
    """Issue 24, item 2: --overwrite removed best/ and the report before the features were in hand;
    a feature cache path that is a regular file now fails with the old run byte for byte."""
    import shutil

    from factuality.stages.reward import run

    src, _ = trained
    d = tmp_path / "copy"
    shutil.copytree(src, d)
    before = {p.relative_to(d / "run"): p.read_bytes() for p in (d / "run").rglob("*") if p.is_file()}
    (tmp_path / "not-a-folder").write_text("x")
    with pytest.raises((FileExistsError, NotADirectoryError)):
        run(tiny_cfg(d, tiny_model_dir, "--overwrite", feature_cache_dir=str(tmp_path / "not-a-folder")))
    assert {p.relative_to(d / "run"): p.read_bytes() for p in (d / "run").rglob("*") if p.is_file()} == before


def test_pairs_naming_examples_the_data_lacks_are_reported(tmp_path, tiny_model_dir, caplog):
    """Issue 24, item 10: pairs of another build (example ids the data files lack) trained silently;
    probes and augment pairs leave the pairs' examples out by id, so they could hold the same questions."""
    from factuality.stages.reward import read_inputs

    path = make_pairs(tmp_path, tiny_model_dir)
    rows = read_jsonl(path, PREFERENCE)
    foreign = [dict(r, example_id="nq:elsewhere-" + r["example_id"]) for r in rows[:3]] + rows[3:]
    write_jsonl(path, foreign, PREFERENCE)
    with caplog.at_level("WARNING", logger="factuality.stages.reward"):
        inputs = read_inputs(tiny_cfg(tmp_path, tiny_model_dir, synthetic_data_dir=str(tmp_path / "data" / "processed")))
    assert inputs.sources()["pairs_with_unknown_example_ids"] == 3
    assert f"3 of {len(rows)} pairs name example ids" in caplog.text
    write_jsonl(path, rows, PREFERENCE)
    again = read_inputs(tiny_cfg(tmp_path, tiny_model_dir, synthetic_data_dir=str(tmp_path / "data" / "processed")))
    assert again.sources()["pairs_with_unknown_example_ids"] == 0
