"""One module per dataset, each holding all that the suite knows about it.

A dataset module `factuality/sources/<name>.py` defines:
- `NAME`: the source name (the `source` field and id prefix of its examples);
- `TASK`: what the prompt asks, "question" (the answer is a span) or "claim" (the answer is a
  verdict: SUPPORTS / REFUTES / NOT ENOUGH INFO);
- `INPUTS`: {role: glob under a raw root} for every raw file it reads (all are hash-checked);
- `READERS`: {role: reader(path, bad) -> Iterator[RawExample]} for the roles that hold its
  questions (at least one such file must exist for the source to be built);
- `DOWNLOADS`: the official `RemoteFile`s (`python build_data.py download`);
- `draft(examples, ctx) -> list[Draft]`: gold chunks with spans and ranked hard negatives.

The registry maps name -> module for every name in `records.SOURCES` (the suite's datasets). A
new dataset is one new module plus its name in `SOURCES`; `register(module)` also adds one at run
time (its examples must still pass the contract). Any other name is a dataset of one's own
(`own.py`: retrieval results in the ctxs format, or a knowledge base plus question/answer pairs,
read from `<raw root>/<name>/`); `source_module(name)` gives either kind.

Formats shared by several datasets live in their own modules: `corpus.py` (the DPR passage
corpus), `ctxs.py` (retrieval results `{question, answers, ctxs}`, read by nq, popqa and own
datasets). A dataset that publishes several formats tells them apart by content
(`base.read_by_content` over its list of `Format`s); a file in none of them is one error naming
the file and the formats that would have matched.

Every reader checks each raw record's fields. A malformed record goes to `BadRecords.report`,
which raises `file:line: field: problem` (JSONL/TSV) or `file[index]: field: problem` (JSON
arrays), or, when the run was given a rejects file, keeps it to be written there and counted.
Nothing is dropped silently: records that are well formed but cannot be used (e.g. a DPR question
with no positive passage) are counted in `dropped` by reason.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from ..records import SOURCES
from . import own
from .base import (
    BadRecords,
    Chunk,
    Draft,
    DraftContext,
    Format,
    RawExample,
    RemoteFile,
    Retrieved,
    answer_variants,
    filter_candidates,
    find_span,
    short_hash,
)
from .corpus import PASSAGE_COLUMNS, read_passages
from .ctxs import read_ctxs
from .fever import (
    FEVER_LABELS,
    WikiSentence,
    page_title,
    read_fever_claims,
    read_wiki_pages,
    unescape_ptb,
)
from .hotpotqa import paragraph_chunk, read_hotpotqa
from .nq import read_dpr, read_nq, read_nq_open
from .popqa import POPQA_COLUMNS, read_popqa, read_popqa_ctxs

REQUIRED = ("NAME", "TASK", "INPUTS", "READERS", "DOWNLOADS", "draft")
TASKS = ("question", "claim")

REGISTRY: dict[str, ModuleType] = {}


def register(module: ModuleType) -> ModuleType:
    """Add a dataset module to the registry after checking it defines the protocol above."""
    missing = [a for a in REQUIRED if not hasattr(module, a)]
    if missing:
        raise TypeError(f"{module.__name__}: a dataset module must define {', '.join(REQUIRED)}; "
                        f"{', '.join(missing)} missing")
    if module.TASK not in TASKS:
        raise TypeError(f"{module.__name__}: TASK {module.TASK!r} is not one of {TASKS}")
    unknown = [r for r in module.READERS if r not in module.INPUTS]
    if unknown:
        raise TypeError(f"{module.__name__}: READERS role {unknown[0]!r} has no glob in INPUTS")
    REGISTRY[module.NAME] = module
    return module


for _name in SOURCES:
    register(importlib.import_module(f"{__name__}.{_name}"))


def dataset(name: str) -> ModuleType:
    """The module of a registered source."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown source {name!r}; choose from {', '.join(REGISTRY)}") from None


def source_module(name: str) -> ModuleType:
    """The module of a registered dataset, else the module of a dataset of one's own (`own.module`)."""
    return REGISTRY[name] if name in REGISTRY else own.module(name)


def build_order(sources) -> list[str]:
    """The suite's datasets in SOURCES order, then one's own in the order given (duplicates go to the first)."""
    return [s for s in SOURCES if s in sources] + list(dict.fromkeys(s for s in sources if s not in SOURCES))


def input_globs(sources) -> dict[str, str]:
    """{role: glob} of every raw file the given sources read (shared roles, like the corpus, once)."""
    out: dict[str, str] = {}
    for s in sources:
        out.update(source_module(s).INPUTS)
    return out


def downloads(source: str) -> list[RemoteFile]:
    return list(dataset(source).DOWNLOADS)


def prompt_task(source: str) -> str:
    """"claim" when the source's examples state a claim to verify, else "question"."""
    return source_module(source).TASK


__all__ = [
    "REGISTRY", "register", "dataset", "source_module", "build_order", "input_globs", "downloads", "prompt_task",
    "BadRecords", "Chunk", "Draft", "DraftContext", "Format", "RawExample", "RemoteFile", "Retrieved", "WikiSentence",
    "answer_variants", "filter_candidates", "find_span", "short_hash", "page_title", "unescape_ptb",
    "paragraph_chunk", "read_hotpotqa", "read_fever_claims", "read_wiki_pages", "read_dpr", "read_nq_open",
    "read_popqa", "read_popqa_ctxs", "read_nq", "read_ctxs", "read_passages", "own", "FEVER_LABELS", "POPQA_COLUMNS", "PASSAGE_COLUMNS",
]
