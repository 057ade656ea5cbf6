"""Prompt rendering (golden), SFT completion text, evidence-side truncation, prompt_schema.py."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import prompt_schema
from factuality.prompts import (
    OUTPUT_SCHEMA,
    PromptTemplates,
    completion_text,
    fit_evidence,
    gold_target,
    parse_output,
    render_prompt,
    tokenize_prompt,
)
from factuality.testing import make_example

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"  # UPDATE_GOLDEN=1 pytest tests/test_prompts.py rewrites them


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"{path} missing; run UPDATE_GOLDEN=1 pytest {__file__}"
    expected = path.read_text(encoding="utf-8")
    assert text == expected, f"rendered prompt differs from {path} (if the change is intended: UPDATE_GOLDEN=1)"


def fixture_examples():
    return {"question": make_example(7, source="hotpotqa", gold_position=1),
            "claim": make_example(8, source="fever", gold_position=0),
            "refusal": make_example(9, source="nq", answerable=False)}


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from factuality.modeling import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


# ------------------------------------------------------------------ golden prompts
@pytest.mark.parametrize("kind", ["question", "claim", "refusal"])
def test_golden_prompt_chat_template(tok, kind):
    ex = fixture_examples()[kind]
    text = render_prompt(ex, tok)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    golden(f"prompt_chatml_{kind}.txt", text)
    golden(f"completion_chatml_{kind}.txt", completion_text(ex, tok))


@pytest.mark.parametrize("kind", ["question", "claim", "refusal"])
def test_golden_prompt_plain(kind):
    ex = fixture_examples()[kind]
    text = render_prompt(ex, None)
    assert text.startswith("### System:\n") and text.endswith("### Assistant:\n")
    golden(f"prompt_plain_{kind}.txt", text)
    golden(f"target_{kind}.json", gold_target(ex) + "\n")


def test_golden_can_fail(tok, tmp_path, monkeypatch):
    """The golden check is not vacuous: a one-character template change is caught."""
    ex = fixture_examples()["question"]
    changed = PromptTemplates(chunk="[{id}] {title} - {text}")
    with pytest.raises(AssertionError):
        monkeypatch.setattr("tests.test_prompts.UPDATE", False, raising=False)
        assert render_prompt(ex, tok, changed) == (GOLDEN / "prompt_chatml_question.txt").read_text()


def test_system_role_folded_for_templates_without_it(tok):
    """Gemma's template rejects a system turn: the system text goes into the user turn."""
    gemma_like = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
        "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
    tok2 = type(tok).from_pretrained(tok.name_or_path)
    tok2.chat_template = gemma_like
    ex = fixture_examples()["question"]
    text = render_prompt(ex, tok2)
    assert text.count("<start_of_turn>user") == 1 and "Reply with one JSON object" in text
    comp = completion_text(ex, tok2)
    assert comp.startswith(gold_target(ex)) and comp.endswith(tok2.eos_token) and "<end_of_turn>" in comp


# ------------------------------------------------------------------ completion text
def test_completion_is_target_plus_end_of_turn(tok):
    ex = fixture_examples()["question"]
    comp = completion_text(ex, tok)
    assert comp == gold_target(ex) + "<|im_end|>"  # ChatML: the template's end-of-turn IS the eos token
    assert completion_text(ex, None) == gold_target(ex)  # no tokenizer: nothing to append
    json.loads(gold_target(ex))


def test_gold_target_parses_valid(examples):
    for ex in examples:
        ids = [c["id"] for c in ex["evidence"]]
        got = parse_output(gold_target(ex), ids)
        assert got.valid, (ex["id"], got.reason)
        assert got.refusal == (not ex["answerable"])


def test_tokenize_prompt_adds_no_second_bos(tok):
    class FakeTok:
        bos_token = "<s>"

        def __call__(self, text, add_special_tokens):
            return {"input_ids": ([1] if add_special_tokens else []) + [5] * len(text.split())}

    assert tokenize_prompt(FakeTok(), "<s> a b") == [5, 5, 5]
    assert tokenize_prompt(FakeTok(), "a b") == [1, 5, 5]


# ------------------------------------------------------------------ evidence-side truncation
def long_example(answerable=True, n_chunks=6, words=120, gold_position=3, question=None):
    ex = make_example(11, n_chunks=n_chunks, answerable=answerable, gold_position=gold_position, question=question)
    filler = " ".join(f"filler{i}" for i in range(words))
    for c in ex["evidence"]:
        if any(s["chunk_id"] == c["id"] for s in ex["support"]):
            pre, post = f"{filler} ", f" {filler}"
            for s in ex["support"]:  # move the span to the middle of a long chunk
                if s["chunk_id"] == c["id"]:
                    s["start"] += len(pre)
                    s["end"] += len(pre)
            c["text"] = pre + c["text"] + post
        else:
            c["text"] = c["text"] + " " + filler
    from factuality.records import EXAMPLE, with_hash

    return EXAMPLE.validate(with_hash(ex))


def n_prompt_tokens(ex, tok, evidence=None):
    return len(tokenize_prompt(tok, render_prompt(ex, tok, evidence=evidence)))


def test_fit_evidence_no_cut_when_it_fits(tok):
    ex = long_example()
    fit = fit_evidence(ex, tok, n_prompt_tokens(ex, tok))
    assert fit.fits and not fit.truncated and fit.evidence == ex["evidence"]


@pytest.mark.parametrize("shrink", [0.9, 0.6, 0.35, 0.2])
def test_fit_evidence_cuts_non_support_first_and_keeps_the_span(tok, shrink):
    ex = long_example()
    full = n_prompt_tokens(ex, tok)
    budget = int(full * shrink)
    fit = fit_evidence(ex, tok, budget)
    assert fit.fits and fit.truncated
    assert fit.prompt_tokens == n_prompt_tokens(ex, tok, fit.evidence) <= budget
    support = {s["chunk_id"]: ex["evidence"][[c["id"] for c in ex["evidence"]].index(s["chunk_id"])]["text"][s["start"]:s["end"]]
               for s in ex["support"]}
    kept = {c["id"]: c["text"] for c in fit.evidence}
    for cid, span_text in support.items():
        assert cid in kept and span_text in kept[cid], "the support span must survive"
    if set(fit.shortened_ids) & set(support):  # support text is cut only after every other chunk is gone
        assert set(kept) == set(support)
    assert [c["id"] for c in fit.evidence] == [c["id"] for c in ex["evidence"] if c["id"] in kept], "order and ids kept"


def test_fit_evidence_unanswerable_keeps_one_chunk(tok):
    ex = long_example(answerable=False)
    # moderate budget: every chunk shortened to a common head length, none dropped
    budget = n_prompt_tokens(ex, tok, evidence=ex["evidence"][-1:]) + 40
    fit = fit_evidence(ex, tok, budget)
    assert fit.fits and not fit.dropped_ids and len(fit.shortened_ids) == len(ex["evidence"])
    # tight budget: room for about one short chunk -- the rest dropped, one kept (shortened)
    budget = n_prompt_tokens(ex, tok, evidence=[dict(ex["evidence"][0], text="Passage 0 ...")]) + 3
    fit = fit_evidence(ex, tok, budget)
    assert fit.fits and len(fit.evidence) == 1 and fit.prompt_tokens <= budget
    assert fit.shortened_ids == [fit.evidence[0]["id"]] and len(fit.dropped_ids) == len(ex["evidence"]) - 1


def test_fit_evidence_reports_when_impossible(tok):
    ex = long_example(question="why " * 400)
    fit = fit_evidence(ex, tok, 200)
    assert not fit.fits and fit.prompt_tokens > 200


# ------------------------------------------------------------------ prompt_schema.py
def test_validator_table_passes(capsys):
    assert prompt_schema.main(["test"]) == 0
    out = capsys.readouterr().out
    assert f"{len(prompt_schema.CASES)}/{len(prompt_schema.CASES)} cases pass" in out
    names = {c.name for c in prompt_schema.CASES}
    for must in ("valid", "prose around JSON", "code fence", "truncated JSON", "unknown id", "duplicate citations",
                 "refusal with citations", "empty"):
        assert must in names


def test_validator_table_can_fail(capsys):
    wrong = prompt_schema.Case("claims a truncated object is valid", '{"answer": "x", "cit', True)
    assert prompt_schema.run_tests((wrong,)) == 1
    assert "FAIL" in capsys.readouterr().out


def test_save_writes_templates_schema_and_example(tmp_path):
    paths = prompt_schema.save(tmp_path / "prompts")
    names = {p.name for p in paths}
    assert {"system.txt", "user_question.txt", "output_schema.json", "example_prompt.txt", "example_target.json"} <= names
    assert json.loads((tmp_path / "prompts" / "output_schema.json").read_text()) == OUTPUT_SCHEMA
    assert PromptTemplates.from_dir(tmp_path / "prompts") == PromptTemplates()  # round trip
    ex = prompt_schema.example_for_docs()
    assert (tmp_path / "prompts" / "example_prompt.txt").read_text() == render_prompt(ex, None)


def test_committed_prompts_dir_is_current():
    """prompts/ in the repo matches what `prompt_schema.py save` writes now."""
    d = Path(__file__).resolve().parent.parent / "prompts"
    if not (d / "system.txt").exists():
        pytest.skip("prompts/ not generated")
    assert PromptTemplates.from_dir(d) == PromptTemplates()
    assert json.loads((d / "output_schema.json").read_text()) == OUTPUT_SCHEMA
    assert (d / "example_prompt.txt").read_text() == render_prompt(prompt_schema.example_for_docs(), None)


def test_render_command(tmp_path, capsys, tiny_model_dir, examples):
    from factuality.records import EXAMPLE, write_jsonl

    data = tmp_path / "test.jsonl"
    write_jsonl(data, examples, EXAMPLE)
    assert prompt_schema.main(["render", "--data", str(data), "--index", "1", "--model", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert examples[1]["question"] in out and "<|im_start|>assistant" in out and "prompt tokens" in out
    assert gold_target(examples[1]) in out
    assert prompt_schema.main(["render", "--data", str(data), "--index", "99"]) == 2  # one error line, exit 2
    assert "error:" in capsys.readouterr().err


def test_shorten_around_keeps_every_span_and_cuts_between():
    from factuality.prompts import shorten_around

    text = "a" * 100 + "SPAN1" + "b" * 300 + "SPAN2" + "c" * 100
    s1, s2 = text.index("SPAN1"), text.index("SPAN2")
    out = shorten_around(text, [(s2, s2 + 5), (s1, s1 + 5)], 10)
    assert out == "... " + "a" * 10 + "SPAN1" + "b" * 10 + " ... " + "b" * 10 + "SPAN2" + "c" * 10 + " ..."
    assert out.startswith("...") and out.endswith("...") and " ... " in out
    assert shorten_around(text, [(s1, s1 + 5)], 10_000) == text  # a wide window keeps everything


def test_the_target_answer_is_the_alias_its_support_span_holds():
    from factuality.prompts import gold_output
    from factuality.testing import make_example

    ex = make_example(3, source="popqa", answerable=True)
    chunk = next(c for c in ex["evidence"] if c["id"] == ex["support"][0]["chunk_id"])
    span = ex["support"][0]
    shown = chunk["text"][span["start"]:span["end"]]
    # the dataset's first alias is not what the passage says; a later alias is
    ex = {**ex, "answers": ["Some Other Name", shown.upper()]}
    assert gold_output(ex)["answer"] == shown.upper()
    # no alias in the spans: the first alias, as before
    assert gold_output({**ex, "answers": ["Nowhere", "Else"]})["answer"] == "Nowhere"


def test_the_parser_never_raises_on_deep_nesting_and_refuses_a_non_finite_confidence():
    deep = parse_output('{"answer": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert not deep.valid and deep.reason
    assert not parse_output("x " + "{" * 100_000).valid
    nan = parse_output('{"answer": "x", "citations": ["E1"], "confidence": NaN}', ["E1"])
    assert not nan.valid and nan.reason == "schema: confidence: nan is not a finite number"
    assert parse_output('{"answer": "x", "citations": ["E1"], "confidence": 0.5}', ["E1"]).valid
