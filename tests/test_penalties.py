"""Anti-gaming penalties: every penalty on hand-computed cases, its range, and the prompt parser."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from factuality.penalties import (PENALTIES, PenaltyOptions, PromptFormatError, claim_relevance, compute_penalties,
                                  content_words, invalid_citation_penalty, overcitation_penalty, parse_prompt,
                                  penalty_matrix, weight_vector)
from factuality.perturb import perturbations
from factuality.prompts import PromptTemplates, dump_output, gold_output, render_prompt
from factuality.testing import make_example, make_tiny_tokenizer


def out(answer, citations, confidence=0.9) -> str:
    return json.dumps({"answer": answer, "citations": citations, "confidence": confidence})


@pytest.fixture(scope="module")
def tok():
    return make_tiny_tokenizer()


@pytest.fixture()
def qa(tok):
    """4 chunks, the answer (Linda Davis) in E2 only."""
    ex = make_example(0, source="nq", n_chunks=4, gold_position=1)
    return render_prompt(ex, tok)


# ------------------------------------------------------------------ the prompt, read back
@pytest.mark.parametrize("chat", [True, False], ids=["chat-template", "plain"])
@pytest.mark.parametrize("source", ["nq", "fever"])
def test_parse_prompt_recovers_evidence_and_question(tok, chat, source):
    ex = make_example(3, source=source, n_chunks=4, gold_position=2)
    view = parse_prompt(render_prompt(ex, tok if chat else None))
    assert view.ids == ["E1", "E2", "E3", "E4"]
    assert view.question == ex["question"] and view.claim == (source == "fever")
    for shown, chunk in zip(view.evidence, ex["evidence"]):
        assert shown["text"] == f"{chunk['title']}: {chunk['text']}"


def test_parse_prompt_handles_titles_with_colons_and_gaps_in_ids(tok):
    ex = make_example(1, n_chunks=3)
    ex["evidence"][0]["title"] = "Star Wars: Episode IV"
    ex["evidence"] = [ex["evidence"][0], ex["evidence"][2]]           # E2 cut to fit: ids E1, E3
    view = parse_prompt(render_prompt(ex, tok))
    assert view.ids == ["E1", "E3"] and view.evidence[0]["text"].startswith("Star Wars: Episode IV: Passage 0")


def test_parse_prompt_with_custom_templates(tok):
    t = PromptTemplates(question="Passages:\n{evidence}\n---\nQ: {question}", chunk="<{id}> {title} | {text}")
    ex = make_example(2, n_chunks=3)
    view = parse_prompt(render_prompt(ex, tok, t), t)
    assert view.ids == ["E1", "E2", "E3"] and view.question == ex["question"]


def test_a_prompt_in_another_format_is_refused():
    with pytest.raises(PromptFormatError, match="no evidence block"):
        parse_prompt("Who wrote Hamlet?")


# ------------------------------------------------------------------ each penalty, by hand
def test_invalid_citation_is_the_share_of_unknown_ids():
    ids = ["E1", "E2", "E3", "E4"]
    assert invalid_citation_penalty([], ids) == 0.0
    assert invalid_citation_penalty(["E2"], ids) == 0.0
    assert invalid_citation_penalty(["E2", "E9"], ids) == 0.5
    assert invalid_citation_penalty(["E7", "E9", "E2", "E2"], ids) == pytest.approx(2 / 3)   # duplicates count once
    assert invalid_citation_penalty(["E9"], ids) == 1.0


def test_overcitation_costs_chunks_beyond_the_needed_ones_and_a_bridge():
    ids = ["E1", "E2", "E3", "E4", "E5"]
    assert overcitation_penalty([], ids, ["E2"]) == 0.0
    assert overcitation_penalty(["E2"], ids, ["E2"]) == 0.0
    assert overcitation_penalty(["E2", "E4"], ids, ["E2"]) == 0.0        # answer passage + a bridge
    assert overcitation_penalty(["E1", "E2", "E4"], ids, ["E2"]) == pytest.approx(1 / 3)   # (3 - 1 - 1) / (5 - 1 - 1)
    assert overcitation_penalty(ids, ids, ["E2"]) == 1.0                  # every chunk
    assert overcitation_penalty(ids, ids, ["E2", "E3"]) == 1.0            # (5 - 2 - 1) / (5 - 2 - 1)
    assert overcitation_penalty(["E2", "E3"], ["E2", "E3"], ["E2"]) == 0.0   # two chunks: the other may be a bridge
    assert overcitation_penalty(ids, ids, []) == 1.0                      # nothing needed (unsupported): 4 extra of 4
    assert overcitation_penalty(["E2", "E9"], ids, ["E2"]) == 0.0         # an unknown id is no chunk (citation penalty)


def test_needed_chunks(tok):
    from factuality.penalties import needed_chunks
    from factuality.prompts import parse_output

    ex = make_example(0, source="nq", n_chunks=4, gold_position=1)
    ex["evidence"][3]["text"] = "Linda Davis also sang alone."                 # the answer in two chunks
    view = parse_prompt(render_prompt(ex, tok))
    assert needed_chunks(view, parse_output(out("Linda Davis", ["E2"]))) == ["E2", "E4"]
    assert needed_chunks(view, parse_output(out("Garth Brooks", ["E2"]))) == []
    assert needed_chunks(view, parse_output(out("insufficient evidence", []))) == []
    claim = make_example(1, source="fever", n_chunks=3, gold_position=2)
    claim["question"] = "The duet was recorded by Reba McEntire."
    view = parse_prompt(render_prompt(claim, tok))
    assert needed_chunks(view, parse_output(out("REFUTES", ["E1"]))) == ["E3"]   # the chunk most about the claim


def test_penalties_of_hand_made_responses(qa):
    cases = {
        # response: (citation, overcitation, confidence, length, span)
        out("Linda Davis", ["E2"], 0.9): (0, 0, 0, 0, 0),
        out("Linda Davis", ["E1"], 0.8): (0, 0, 0.8, 0, 1),             # cites a chunk without the answer
        out("Linda Davis", ["E1", "E2", "E3", "E4"], 1.0): (0, 1, 0, 0, 0),
        out("Linda Davis", ["E1", "E2", "E3"], 1.0): (0, 0.5, 0, 0, 0),         # (3 - 1 - 1) / (4 - 1 - 1)
        out("Linda Davis", ["E1", "E2"], 1.0): (0, 0, 0, 0, 0),                 # a bridge chunk is free
        out("Linda Davis", ["E2", "E7"], 0.9): (0.5, 0, 0, 0, 0),
        out("Linda Davis", [], 0.6): (0, 0, 0.6, 0, 1),                 # an answer citing nothing is unsupported
        out("Garth Brooks", ["E2"], 1.0): (0, 0, 1, 0, 1),              # not in the cited chunk
        out("insufficient evidence", [], 1.0): (0, 0, 0, 0, 0),         # a refusal claims nothing
        "The answer is Linda Davis.": (0, 0, 1, 0, 1),                   # prose: no answer field, confidence 1
        json.dumps({"answer": "Linda Davis", "citations": ["E2"]}): (0, 0, 0, 0, 0),   # no confidence, supported
        json.dumps({"answer": "Garth Brooks", "citations": ["E2"]}): (0, 0, 1, 0, 1),  # no confidence counts as 1
    }
    for response, want in cases.items():
        got = compute_penalties(qa, response).values
        assert tuple(got[k] for k in PENALTIES) == pytest.approx(want), (response, got)


def test_length_penalty_is_free_up_to_the_limit_then_linear(qa):
    opts = PenaltyOptions(max_answer_words=4)
    for words, want in ((4, 0.0), (5, 0.25), (6, 0.5), (8, 1.0), (30, 1.0)):
        answer = " ".join(["Linda"] * words)
        assert compute_penalties(qa, out(answer, ["E2"]), opts).values["length"] == want, words
    prose = "word " * 18                          # no answer field: the response's words count
    assert compute_penalties(qa, prose, PenaltyOptions(max_answer_words=12)).values["length"] == 0.5


def test_confidence_is_clipped_and_scaled_by_missing_support(qa):
    assert compute_penalties(qa, out("Garth Brooks", ["E2"], 7.0)).values["confidence"] == 1.0
    assert compute_penalties(qa, out("Garth Brooks", ["E2"], -1)).values["confidence"] == 0.0
    assert compute_penalties(qa, out("Garth Brooks", ["E2"], 0.25)).values["confidence"] == 0.25


def test_a_verdict_citing_a_chunk_that_is_not_about_the_claim(tok):
    ex = make_example(5, source="fever", n_chunks=3, gold_position=1)
    ex["question"] = "The duet was recorded by Reba McEntire."
    prompt = render_prompt(ex, tok)
    # content words: duet, recorded, reba, mcentire; E2 holds all 4, E1 / E3 none
    assert content_words(ex["question"]) == {"duet", "recorded", "reba", "mcentire"}
    right = compute_penalties(prompt, out("SUPPORTS", ["E2"], 1.0)).values
    wrong = compute_penalties(prompt, out("SUPPORTS", ["E3"], 1.0)).values
    assert right["span"] == 0 and right["confidence"] == 0
    assert wrong["span"] == 1 and wrong["confidence"] == 1
    # partial relevance: the cited chunk holds 1 of the 4 words the best chunk holds
    assert claim_relevance("duet recorded reba mcentire", ["Reba"], ["Reba", "duet recorded by Reba McEntire"]) == 0.25
    assert claim_relevance("the of", ["x"], ["y"]) == 1.0            # no content words: nothing to prefer


def test_every_penalty_stays_in_its_range_on_every_perturbation(tok):
    rng = random.Random(0)
    rows = []
    for i in range(12):
        ex = make_example(i, source=["nq", "hotpotqa", "popqa", "fever"][i % 4], answerable=i % 3 != 2,
                          n_chunks=2 + i % 4, gold_position=i % 2)
        prompt = render_prompt(ex, tok)
        for _, bad in perturbations(ex, gold_output(ex), seed=i):
            rows.append((prompt, dump_output(bad)))
        rows.append((prompt, "".join(rng.choice("{}[]\":, abcE1") for _ in range(40))))   # garbage never raises
    m = penalty_matrix([p for p, _ in rows], [r for _, r in rows])
    assert m.shape == (len(rows), 5) and m.min() >= 0 and m.max() <= 1


def test_the_gold_answer_costs_nothing_and_each_probe_trick_costs_something(tok):
    for i, source in enumerate(["nq", "hotpotqa", "popqa"]):
        ex = make_example(i, source=source, n_chunks=4, gold_position=i % 4)
        prompt = render_prompt(ex, tok)
        gold = gold_output(ex)
        assert compute_penalties(prompt, dump_output(gold)).total(PenaltyOptions()) == 0
        for kind, bad in perturbations(ex, gold, kinds=["cite_all", "unknown_id", "filler_padding",
                                                        "overconfident_wrong", "cite_hard_negative",
                                                        "distractor_entity"], seed=i):
            assert compute_penalties(prompt, dump_output(bad)).total(PenaltyOptions()) > 0, (kind, bad)


def test_weights_and_total():
    opts = PenaltyOptions()
    assert list(weight_vector(opts)) == [0.2, 0.15, 0.1, 0.05, 0.25]   # PENALTIES order
    assert PENALTIES == ("citation", "overcitation", "confidence", "length", "span")
    values = dict(zip(PENALTIES, [0.5, 1.0, 1.0, 0.0, 1.0]))
    from factuality.penalties import PenaltyValues

    assert PenaltyValues(values, 0.0).total(opts) == pytest.approx(0.1 + 0.15 + 0.1 + 0.25)
    assert PenaltyValues(values, 0.0).total(PenaltyOptions(0, 0, 0, 0, 0)) == 0


def test_mismatched_lengths_are_refused(qa):
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        penalty_matrix([qa, qa], ["x"])
    assert penalty_matrix([], []).shape == (0, 5) and np.isfinite(penalty_matrix([qa], ["x"])).all()
