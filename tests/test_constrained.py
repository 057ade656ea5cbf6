"""Constrained decoding (factuality/constrained.py), answer-token confidence (confidence.py), the
output types (error_types.py) and the balanced SFT mix: each checked on what it must allow and
what it must rule out."""
import json
import math

import pytest

from factuality.confidence import answer_probability, answer_value_span
from factuality.constrained import MAX_ANSWER_CHARS, AnswerParser, ContractConstraint
from factuality.error_types import ERROR_TYPES, count_types, error_type, is_evidence_id
from factuality.metrics import score_example
from factuality.prompts import REFUSAL_ANSWER, parse_output
from factuality.stages.sft import balanced_mix
from factuality.testing import make_tiny_tokenizer

IDS = ["E1", "E2", "E3"]


def walk(text: str, ids=IDS) -> AnswerParser:
    p = AnswerParser(ids)
    for ch in text:
        p = p.add_character(ch)
    return p


@pytest.mark.parametrize("text", [
    '{"answer": "Paris", "citations": ["E2"], "confidence": 1.0}',
    '{"answer": "Paris", "citations": ["E1", "E3"], "confidence": 0.25}',
    f'{{"answer": "{REFUSAL_ANSWER}", "citations": [], "confidence": 0.0}}',
    '{"answer": "Emma \\"Em\\" Stone", "citations": ["E1"], "confidence": 0}',
    '{"answer": "E", "citations": ["E1"], "confidence": 1}',
    '{"answer": "Eiffel", "citations": ["E3"], "confidence": 0.999}',
])
def test_contract_accepts_valid_outputs(text):
    assert walk(text).can_end()
    parsed = parse_output(text, IDS)
    assert parsed.valid, parsed.reason


@pytest.mark.parametrize("prefix,bad", [
    (f'{{"answer": "{REFUSAL_ANSWER}", "citations": [', '"'),        # a refusal cites nothing
    ('{"answer": "Paris", "citations": [', "]"),                        # an answer cites at least one id
    ('{"answer": "Paris", "citations": ["', "4"),                      # only ids that were shown
    ('{"answer": "Paris", "citations": ["E', "4"),
    ('{"answer": "Paris", "citations": ["E1", "E', "1"),               # each id once
    ('{"answer": "E', "3"),                                            # never an evidence id as the answer
    ('{"answer": "', '"'),                                             # never an empty answer
    ('{"answer": "Paris", "citations": ["E1"], "confidence": ', "2"),  # confidence in [0, 1]
    ('{"answer": "Paris", "citations": ["E1"], "confidence": 1.', "5"),
    ("", "["),
])
def test_contract_rules_out(prefix, bad):
    p = walk(prefix)
    assert bad not in p.get_allowed_characters()
    with pytest.raises(ValueError):
        p.add_character(bad)


def test_answer_length_is_bounded():
    p = walk('{"answer": "' + "a" * MAX_ANSWER_CHARS)
    assert p.get_allowed_characters() == '"'


@pytest.fixture(scope="module")
def tok():
    return make_tiny_tokenizer()


def test_token_masks_follow_the_contract(tok):
    """Every token of a valid output is allowed at its step, the end only when the object is
    closed; after a refusal only the empty list may follow, after an answer only a quote."""
    c = ContractConstraint(tok, [IDS])
    for text in ['{"answer": "Paris", "citations": ["E2"], "confidence": 1.0}',
                 f'{{"answer": "{REFUSAL_ANSWER}", "citations": [], "confidence": 0.0}}']:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        enf = c.enforcer(0)
        for k in range(len(ids)):
            allowed = c.allowed(enf, ids[:k])
            assert ids[k] in allowed, (text, tok.decode(ids[:k]))
            assert tok.eos_token_id not in allowed
        assert c.allowed(enf, ids) == [tok.eos_token_id]

    def next_texts(prefix):
        ids = tok(prefix, add_special_tokens=False)["input_ids"]
        enf = c.enforcer(0)
        for k in range(len(ids)):
            assert ids[k] in c.allowed(enf, ids[:k])
        return {tok.decode([t]) for t in c.allowed(enf, ids)}

    assert all(t.startswith("]") for t in next_texts(f'{{"answer": "{REFUSAL_ANSWER}", "citations": ['))
    assert all(t.startswith('"') for t in next_texts('{"answer": "Paris", "citations": ['))


def test_constrained_generation_is_always_valid(tiny_model_dir):
    """A random model, free, writes no valid output; held to the contract, every output is valid."""
    import torch
    from transformers import AutoModelForCausalLM

    from factuality.generation import iter_generate
    from factuality.modeling import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir), padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    prompts = [f"question {i}" for i in range(6)]
    ids = [["E1", "E2"], ["E1"], ["E1", "E2", "E3"], ["E2"], ["E1", "E4"], ["E1", "E2"]]
    free = [g for b in iter_generate(model, tok, prompts, batch_size=3, max_new_tokens=40, progress=False) for g in b]
    held = [g for b in iter_generate(model, tok, prompts, batch_size=3, max_new_tokens=400, progress=False,
                                     constraint=ContractConstraint(tok, ids)) for g in b]
    assert not any(parse_output(g.text, ids[g.index]).valid for g in free)
    for g in held:
        parsed = parse_output(g.text, ids[g.index])
        assert parsed.valid, (g.text, parsed.reason)
        assert set(parsed.citations) <= set(ids[g.index])
        assert len(g.token_logprobs) == g.output_tokens == len(g.token_ids)


def test_answer_probability_reads_the_answer_tokens(tok):
    text = '{"answer": "Paris", "citations": ["E2"], "confidence": 1.0}'
    ids = tok(text, add_special_tokens=False)["input_ids"]
    start, end = answer_value_span(text)
    assert text[start:end] == 'Paris"'
    logps = [-0.1 * (k + 1) for k in range(len(ids))]
    # the tokens overlapping 'Paris"' and nothing else
    prev, want = 0, 0.0
    for k in range(len(ids)):
        stop = len(tok.decode(ids[:k + 1]))
        if stop > start and prev < end:
            want += logps[k]
        prev = stop
    assert answer_probability(tok, ids, logps, text) == pytest.approx(math.exp(want))
    assert answer_probability(tok, ids, None, text) is None
    assert answer_probability(tok, ids, logps, "no answer here") is None


EX = {"id": "q1", "source": "nq", "answerable": True, "answers": ["Paris"], "question": "capital of France?",
      "evidence": [{"id": "E1", "title": "France", "text": "Paris is the capital of France."},
                   {"id": "E2", "title": "Spain", "text": "Madrid is the capital of Spain."}],
      "support": [{"chunk_id": "E1", "start": 0, "end": 5}]}
NO = dict(EX, id="q2", answerable=False, answers=[], support=[])


@pytest.mark.parametrize("example,output,kind", [
    (EX, {"answer": "Paris", "citations": ["E1"]}, "correct_grounded"),
    (EX, {"answer": "Paris", "citations": ["E2"]}, "correct_ungrounded"),
    (EX, {"answer": "Madrid", "citations": ["E2"]}, "wrong_supported"),
    (EX, {"answer": "Lyon", "citations": ["E1"]}, "wrong_unsupported"),
    (EX, {"answer": "E1", "citations": ["E1"]}, "evidence_id_answer"),
    (EX, {"answer": REFUSAL_ANSWER, "citations": []}, "refused_answerable"),
    (EX, {"answer": REFUSAL_ANSWER, "citations": ["E1"]}, "cited_refusal"),
    (NO, {"answer": REFUSAL_ANSWER, "citations": []}, "refusal_ok"),
    (NO, {"answer": "Paris", "citations": ["E1"]}, "answered_unanswerable"),
    (EX, None, "unreadable"),
])
def test_error_types(example, output, kind):
    raw = "I think so." if output is None else json.dumps({**output, "confidence": 0.5})
    parsed = parse_output(raw, ["E1", "E2"])
    assert error_type(example, parsed, score_example(example, raw_output=raw, parsed=parsed)) == kind


def test_count_types_is_complete_and_strict():
    counts = count_types(["refusal_ok", "refusal_ok", "unreadable"])
    assert list(counts) == list(ERROR_TYPES) and counts["refusal_ok"] == 2 and sum(counts.values()) == 3
    with pytest.raises(ValueError):
        count_types(["nonsense"])
    assert is_evidence_id("E12") and is_evidence_id("[E3].") and not is_evidence_id("E3 Stadium")


def test_balanced_mix_takes_every_group_in_turn():
    rows = ([{"id": f"f{i}", "source": "fever", "answerable": True} for i in range(10)]
            + [{"id": f"n{i}", "source": "fever", "answerable": False} for i in range(10)]
            + [{"id": f"q{i}", "source": "nq", "answerable": True} for i in range(3)])
    got = balanced_mix(rows, 9)
    assert [r["id"] for r in got] == ["f0", "n0", "q0", "f1", "n1", "q1", "f2", "n2", "q2"]
    assert len(balanced_mix(rows, None)) == len(rows) and len(balanced_mix(rows, 100)) == len(rows)
