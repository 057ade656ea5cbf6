"""Entailment checkers (factuality/entailment.py) on tiny random models of both kinds, their disk
cache, and what changes when a checker replaces the lexical rule."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import evaluate_sft
from factuality.config import ConfigError, parse_config
from factuality.entailment import (
    EntailmentCacheError,
    EntailmentChecker,
    LexicalEntailment,
    make_checker,
    support_checker,
)
from factuality.metrics import lexical_support, score_example
from factuality.records import seal_path, write_jsonl
from factuality.testing import make_example, make_tiny_nli_model, make_tiny_true_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Constant(EntailmentChecker):
    """A stub: the same probability for every pair (counts its calls)."""

    def __init__(self, p: float, contradiction: float | None = None, **kw):
        self.p, self.c, self.calls = p, contradiction, 0
        self.spec = f"stub:{p}"
        self.has_contradiction = contradiction is not None
        super().__init__(**kw)

    def _score(self, pairs, kind):
        self.calls += len(pairs)
        return [self.p if kind == "entail" else self.c] * len(pairs)


@pytest.fixture(scope="module")
def nli_dir(tmp_path_factory) -> Path:
    return make_tiny_nli_model(tmp_path_factory.mktemp("nli") / "tiny-nli")


@pytest.fixture(scope="module")
def true_dir(tmp_path_factory) -> Path:
    return make_tiny_true_model(tmp_path_factory.mktemp("true") / "tiny-true")


PAIRS = [("The song was recorded by Reba McEntire and Linda Davis in 1993.", "Linda Davis sang it."),
         ("Paris is the capital of France.", "Berlin is the capital of France."),
         ("Paris is the capital of France.", "Linda Davis sang it.")]


def test_nli_checker_reads_the_entailment_label_from_the_config(nli_dir):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    checker = make_checker(f"nli:{nli_dir}")
    assert checker.entail_index == 2 and checker.contra_index == 0   # ENTAILMENT is last in the tiny config
    got = checker.probabilities(PAIRS)
    tok = AutoTokenizer.from_pretrained(nli_dir)
    model = AutoModelForSequenceClassification.from_pretrained(nli_dir).eval()
    for (p, h), value in zip(PAIRS, got):
        with torch.no_grad():
            probs = model(**tok(p, h, return_tensors="pt")).logits.softmax(-1)[0]
        assert value == pytest.approx(float(probs[2]), abs=1e-5)
        assert checker.contradiction(p, h) == pytest.approx(float(probs[0]), abs=1e-5)
    assert len(set(round(v, 6) for v in got)) > 1, "a real model gives different pairs different scores"
    # batched (padded) scoring gives each pair the number it gets alone
    single = make_checker(f"nli:{nli_dir}", batch_size=1).probabilities(PAIRS)
    assert got == pytest.approx(single, abs=1e-5)
    assert checker.describe()["entailment_label"] == "ENTAILMENT"


def test_nli_model_without_an_entailment_label_is_refused(tmp_path):
    path = make_tiny_nli_model(tmp_path / "bad", id2label={0: "LABEL_0", 1: "LABEL_1"})
    with pytest.raises(ConfigError, match="entailment label"):
        make_checker(f"nli:{path}")


def test_true_checker_reads_the_first_decoded_token(true_dir):
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    checker = make_checker(f"true:{true_dir}")
    got = checker.probabilities(PAIRS)
    tok = AutoTokenizer.from_pretrained(true_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(true_dir).eval()
    one, zero = tok.convert_tokens_to_ids("1"), tok.convert_tokens_to_ids("0")
    for (p, h), value in zip(PAIRS, got):
        enc = tok(f"premise: {p} hypothesis: {h}", return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc, decoder_input_ids=torch.tensor([[model.config.decoder_start_token_id]])).logits[0, 0]
        expect = torch.softmax(logits[[one, zero]], -1)[0]
        assert value == pytest.approx(float(expect), abs=1e-5)
    assert checker.contradiction(*PAIRS[0]) is None   # no contradiction label: REFUTES goes through negation


def test_disk_cache_is_reused_and_a_tampered_cache_is_computed_again(tmp_path, caplog):
    first = Constant(0.9, cache_dir=tmp_path)
    assert first.probabilities(PAIRS) == [0.9] * 3 and first.calls == 3
    first.probabilities(PAIRS)
    assert first.calls == 3, "scored pairs come from the cache"
    first.save()
    again = Constant(0.9, cache_dir=tmp_path)
    assert again.probabilities(PAIRS) == [0.9] * 3 and again.calls == 0, "read back from disk"
    cache = first.cache_path
    data = json.loads(cache.read_text())
    data["scores"] = {k: 0.0 for k in data["scores"]}
    cache.write_text(json.dumps(data))
    with caplog.at_level("WARNING", logger="factuality.records"):
        third = Constant(0.9, cache_dir=tmp_path)
    assert "The cache is discarded and computed again" in caplog.text and not cache.exists()
    assert third.probabilities(PAIRS) == [0.9] * 3 and third.calls == 3, "the tampered scores were not used"
    third.save()
    cache.write_text(cache.read_text())                  # unchanged bytes: still sealed
    assert Constant(0.9, cache_dir=tmp_path).probabilities(PAIRS) == [0.9] * 3
    seal_path(cache).unlink()
    with pytest.raises(EntailmentCacheError, match="without its seal"):
        Constant(0.9, cache_dir=tmp_path)


def test_lexical_checker_keeps_todays_rule():
    lex = make_checker("lexical")
    assert isinstance(lex, LexicalEntailment) and support_checker(lex) is lexical_support
    assert lex("Reba McEntire and Linda Davis", "Linda Davis") == 1.0
    assert lex("Reba McEntire", "Linda Davis") == 0.0
    with pytest.raises(ConfigError, match="expected lexical"):
        make_checker("roberta")


def test_a_checker_that_says_no_changes_every_citation_measure():
    ex = make_example(0)
    out = '{"answer": "Linda Davis", "citations": ["E2"], "confidence": 0.9}'
    lexical = score_example(ex, raw_output=out)
    no = score_example(ex, raw_output=out, checker=support_checker(Constant(0.0)))
    yes = score_example(ex, raw_output=out, checker=support_checker(Constant(1.0)))
    assert lexical["hallucination_rate"] == 0.0 and yes["hallucination_rate"] == 0.0
    assert no["hallucination_rate"] == 1.0
    assert lexical["grounded_citation_precision"] == 1.0 and no["grounded_citation_precision"] == 0.0


def test_fever_verdicts_are_judged_by_entailment_only_with_a_checker():
    ex = make_example(0, source="fever", question="Linda Davis sang with Reba McEntire.")
    sup = '{"answer": "SUPPORTS", "citations": ["E2"], "confidence": 0.9}'
    ref = '{"answer": "REFUTES", "citations": ["E2"], "confidence": 0.9}'
    # lexical: any verdict citing a chunk is "supported" (it cannot judge verdicts)
    assert score_example(ex, raw_output=sup)["hallucination_rate"] == 0.0
    assert score_example(ex, raw_output=ref)["hallucination_rate"] == 0.0
    entails = support_checker(Constant(1.0, contradiction=0.0))
    assert score_example(ex, raw_output=sup, checker=entails)["hallucination_rate"] == 0.0
    assert score_example(ex, raw_output=ref, checker=entails)["hallucination_rate"] == 1.0
    contradicts = support_checker(Constant(0.0, contradiction=1.0))
    assert score_example(ex, raw_output=sup, checker=contradicts)["hallucination_rate"] == 1.0
    assert score_example(ex, raw_output=ref, checker=contradicts)["hallucination_rate"] == 0.0


def test_penalties_use_the_configured_checker(monkeypatch):
    from factuality import entailment
    from factuality.penalties import PenaltyOptions, compute_penalties
    from factuality.prompts import render_prompt

    ex = make_example(0)
    prompt = render_prompt(ex, None)
    out = '{"answer": "Linda Davis", "citations": ["E2"], "confidence": 0.9}'
    assert compute_penalties(prompt, out).support == 1.0
    monkeypatch.setitem(entailment._LOADED, ("nli:stub-no", False), support_checker(Constant(0.0)))
    opts = PenaltyOptions(entailment="nli:stub-no")
    vals = compute_penalties(prompt, out, opts)
    assert vals.support == 0.0 and vals.values["span"] == 1.0
    with pytest.raises(ConfigError):
        PenaltyOptions(entailment="bogus")


def test_evaluate_with_a_tiny_nli_model_records_it_and_scores_differently(nli_dir, tmp_path):
    exs = [make_example(i, answerable=True) for i in range(4)]
    test = tmp_path / "test.jsonl"
    write_jsonl(test, exs)
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps({"id": e["id"], "raw_output": json.dumps(
        {"answer": "Linda Davis", "citations": ["E2"], "confidence": 0.9})}) + "\n" for e in exs))

    def run(spec, name):
        cfg = parse_config(evaluate_sft.EvalConfig, [], predictions=str(preds), test_data=str(test),
                           output=str(tmp_path / name), bootstrap_samples=0, plots=False, progress=False,
                           buckets=[300, 400], entailment=spec)
        return evaluate_sft.main(cfg)

    lex = run("lexical", "lex.json")
    nli = run(f"nli:{nli_dir}", "nli.json")
    m_lex, m_nli = lex["metrics"]["sft"]["overall"]["metrics"], nli["metrics"]["sft"]["overall"]["metrics"]
    assert m_lex["hallucination_rate"]["value"] == 0.0
    assert m_nli["hallucination_rate"]["value"] == 1.0   # the random model gives P(entailment) < 0.5 here
    assert m_nli["grounded_citation_f1"]["value"] < m_lex["grounded_citation_f1"]["value"]
    saved = json.loads((tmp_path / "nli.json").read_text())
    assert saved["entailment"]["spec"] == f"nli:{nli_dir}" and saved["entailment"]["cache"]
    assert Path(saved["entailment"]["cache"]).exists()
    assert f"metric (entailment: nli:{nli_dir})" in (tmp_path / "nli.md").read_text()
    # ALCE's and Trust-Eval's citation measures go through the same checker
    assert lex["published"]["alce"]["sft"]["nq"]["citation_rec"] == 100.0
    assert nli["published"]["alce"]["sft"]["nq"]["citation_rec"] == 0.0
    assert nli["published"]["trust_eval"]["sft"]["nq"]["answered_citation_f1"] == 0.0


def test_remote_code_is_not_run_unless_asked(tmp_path, nli_dir):
    """A model whose config points at its own code: loading it without --trust-remote-code is one
    clear error, and the code never runs."""
    import shutil

    from factuality.modeling import ModelLoadError

    model = tmp_path / "custom"
    shutil.copytree(nli_dir, model)
    marker = tmp_path / "ran.txt"
    (model / "modeling_custom.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    cfg = json.loads((model / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "modeling_custom.CustomConfig",
                       "AutoModelForSequenceClassification": "modeling_custom.CustomModel"}
    cfg["model_type"] = "custom-nli"
    (model / "config.json").write_text(json.dumps(cfg))
    with pytest.raises((ModelLoadError, ConfigError)):
        make_checker(f"nli:{model}")
    assert not marker.exists()


def test_a_flipped_fever_verdict_loses_its_support_only_with_a_checker(monkeypatch):
    from factuality import entailment
    from factuality.penalties import PenaltyOptions, compute_penalties
    from factuality.prompts import render_prompt

    ex = make_example(0, source="fever", question="Linda Davis sang a duet with Reba McEntire.")
    prompt = render_prompt(ex, None)
    sup = '{"answer": "SUPPORTS", "citations": ["E2"], "confidence": 0.9}'
    ref = '{"answer": "REFUTES", "citations": ["E2"], "confidence": 0.9}'
    lex = PenaltyOptions()
    assert compute_penalties(prompt, sup, lex).support == compute_penalties(prompt, ref, lex).support > 0
    monkeypatch.setitem(entailment._LOADED, ("nli:stub-entails", False),
                        support_checker(Constant(1.0, contradiction=0.0)))
    opts = PenaltyOptions(entailment="nli:stub-entails")
    assert compute_penalties(prompt, sup, opts).support > 0
    assert compute_penalties(prompt, ref, opts).support == 0.0   # the flipped verdict is now unsupported


def test_make_prefs_verifiers_use_the_checker():
    from factuality.judge import verifier_score

    ex = make_example(0)
    out = '{"answer": "Linda Davis", "citations": ["E2"], "confidence": 0.9}'
    lexical, _ = verifier_score(ex, out)
    no, parts = verifier_score(ex, out, checker=support_checker(Constant(0.0)))
    assert no < lexical and parts["supported"] == 0.0
