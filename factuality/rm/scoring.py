"""The val pairs and probes as one table of sequences, scored by any reward model (the frozen-head
run, the LoRA run and --validate-only share this), and the training pairs' baseline scores."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..judge import unweighted_verifier_score
from ..penalties import PenaltyOptions, penalty_matrix, weight_vector
from ..prompts import PromptTemplates
from .features import PairIndex, Sequences, Tokens, index_pairs
from .model import RewardModel, head_scores
from .pairs import pair_examples
from .probes import Probe
from .report import ScoredSet


@dataclass
class EvalInputs:
    """The val pairs and probes as one table of sequences, with their gold-side scores."""

    seqs: Sequences
    pairs: PairIndex
    probes: list[Probe]
    probe_rows: list[int]
    length: np.ndarray
    verifier: np.ndarray


def eval_inputs(pairs: Sequence[Mapping], probes: Sequence[Probe], tokens: Tokens,
                examples_by_id: Mapping[str, dict]) -> EvalInputs:
    seqs = Sequences()
    index = index_pairs(pairs, seqs)
    probe_rows = [seqs.add(p.prompt, p.response) for p in probes]
    example_of_row: dict[int, dict] = {}
    for pair, c, r in zip(pairs, index.chosen, index.rejected):
        example_of_row[int(c)] = example_of_row[int(r)] = examples_by_id[pair["example_id"]]
    for p, row in zip(probes, probe_rows):
        example_of_row.setdefault(row, examples_by_id.get(p.example_id))
    length = np.array([len(tokens.response(r)) for r in seqs.responses], dtype=np.float64)
    verifier = np.array([unweighted_verifier_score(example_of_row[i], seqs.responses[i]) if example_of_row.get(i) else np.nan
                         for i in range(len(seqs))])
    return EvalInputs(seqs, index, list(probes), probe_rows, length, verifier)


def baseline_train_set(train_pairs: Sequence[Mapping], templates: PromptTemplates, tokens: Tokens,
                       penalties: PenaltyOptions) -> tuple[ScoredSet, PairIndex]:
    """The training pairs' baseline scores (length, penalties, verifier: no model needed), on which the
    baselines' calibration scales are fitted; learned scores are left at 0 (model rows use scale 1)."""
    seqs = Sequences()
    idx = index_pairs(train_pairs, seqs)
    examples = pair_examples(train_pairs, templates)
    example_of_row: dict[int, dict] = {}
    for pair, c, r in zip(train_pairs, idx.chosen, idx.rejected):
        example_of_row[int(c)] = example_of_row[int(r)] = examples[pair["example_id"]]
    P = penalty_matrix(seqs.prompts, seqs.responses, penalties, templates) @ weight_vector(penalties)
    length = np.array([len(tokens.response(r)) for r in seqs.responses], dtype=np.float64)
    verifier = np.array([unweighted_verifier_score(example_of_row[i], seqs.responses[i]) for i in range(len(seqs))])
    return ScoredSet(np.zeros(len(seqs)), P, None, length, verifier), idx


def score_inputs(rm: RewardModel, ev: EvalInputs, progress: bool | None = None) -> ScoredSet:
    """Every score variant of the eval sequences with a loaded reward model (one feature pass)."""
    untrained = None
    if rm.kind == "head":
        feats = rm.features(ev.seqs.prompts, ev.seqs.responses, progress)
        learned = head_scores(rm.head, feats)
        if rm.init_head is not None:
            untrained = head_scores(rm.init_head, feats)
    else:
        learned = rm.learned_scores(ev.seqs.prompts, ev.seqs.responses, progress)
    return ScoredSet(learned, rm.penalty_totals(ev.seqs.prompts, ev.seqs.responses), untrained, ev.length, ev.verifier)
