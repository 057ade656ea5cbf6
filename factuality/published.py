"""Our examples and outputs as ALCE / Trust-Eval items, and their measures beside ours.

`as_item(example, raw_output)` turns one (example, output) into the item alce.py and trusteval.py
score:
- `output`: text with inline citations `[n]`, n the 1-based position of the cited chunk in the
  evidence shown (ALCE's convention). A JSON output with `statements` becomes one sentence per
  statement, "<text> [n][m]."; one without becomes "<answer> [n][m]."; a refusal becomes its
  answer without citations. A text that holds no JSON object (an ALCE / Trust-Eval output file
  read by `--predictions`) is taken as written.
- `docs`: the evidence shown, `{title, text, answers_found}`. `answers_found` is the file's own
  when the example came from an ALCE / Trust-Eval data file (`meta.answers_found`, per doc id), else one flag:
  1 for the gold support chunks of an answerable example (keyed by the chunk's `doc_id`).
- `qa_pairs` (one per alias list of `meta.answer_groups`: ASQA's short answers, QAMPARI's answers;
  else one pair of the example's answers), `claims` (ELI5, `meta.claims`), `answers`
  (Trust-Eval's gold list: those alias lists, or the claims).
- `refusal`: our refusal rule (prompts.is_refusal on the JSON answer) for a JSON output; for
  free text, Trust-Eval's fuzzy rule decides (trusteval.is_refusal).
FEVER examples are left out: neither benchmark scores verdicts.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Mapping, Sequence

from . import alce, trusteval
from .prompts import parse_output


def _cites(ids: Sequence[str], position: Mapping[str, int]) -> str:
    return "".join(f"[{position[c]}]" for c in ids if c in position)


def output_text(example: Mapping, raw_output: str) -> tuple[str, bool | None]:
    """(ALCE-style text, refusal or None when the text is free and Trust-Eval's rule decides)."""
    position = {c["id"]: i + 1 for i, c in enumerate(example["evidence"])}
    parsed = parse_output(raw_output, list(position))
    if parsed.answer is None and not parsed.statements:
        return (raw_output or "").strip(), None
    if parsed.refusal:
        return parsed.answer or "", True
    parts = parsed.statements or [{"text": parsed.answer or "", "citations": parsed.citations}]
    sents = []
    for st in parts:
        text = st["text"].strip().rstrip(".")
        cites = _cites(st["citations"], position)
        sents.append(f"{text} {cites}." if cites else f"{text}.")
    return " ".join(sents), False


def as_item(example: Mapping, raw_output: str) -> dict:
    meta = example.get("meta") or {}
    text, refusal = output_text(example, raw_output)
    gold = {s["chunk_id"] for s in example.get("support", [])}
    found = meta.get("answers_found") if isinstance(meta.get("answers_found"), dict) else {}
    docs = []
    for c in example["evidence"]:
        flags = found.get(c.get("doc_id")) or [int(bool(example["answerable"]) and c["id"] in gold)]
        docs.append({"title": c.get("title") or "", "text": c["text"], "answers_found": list(flags)})
    item = {"id": example["id"], "question": example["question"], "output": text, "docs": docs, "refusal": refusal}
    if meta.get("claims"):
        item["claims"] = list(meta["claims"])
        item["answers"] = [[c] for c in meta["claims"]]
    else:
        groups = meta.get("answer_groups") or [list(example["answers"])]
        item["qa_pairs"] = [{"short_answers": list(g)} for g in groups]
        item["answers"] = [list(g) for g in groups]
    n = len(item["answers"])
    for d in docs:   # a flag list per document, one flag per gold answer
        d["answers_found"] = (d["answers_found"] + [0] * n)[:n]
    return item


def prep(item: Mapping) -> dict:
    """The item as ALCE scores it (its output cut at the first line); Trust-Eval scores it as it is."""
    return {**item, "output": alce.prepare_output(item["output"])}


def published_measures(examples: Sequence[Mapping], rows_by_tag: Mapping[str, Mapping[str, Mapping]],
                       checker) -> dict:
    """{"alce": {tag: {source: measures}}, "trust_eval": {tag: {source: measures}}} over the QA
    examples every tag has, per source (a source is one benchmark's setting: str-em or claims).
    `checker`: an entailment.EntailmentChecker (its pairs are scored in batches first), or a
    function (premise, hypothesis) -> bool."""
    entails = checker.entails if hasattr(checker, "entails") else checker
    out: dict = {"alce": {}, "trust_eval": {}}
    tags = [t for t, rows in rows_by_tag.items() if rows]
    shared = [e for e in examples if e.get("source") != "fever" and all(e["id"] in rows_by_tag[t] for t in tags)]
    for tag in tags:
        by_source: dict[str, list[dict]] = defaultdict(list)
        for e in shared:
            by_source[e["source"]].append(as_item(e, rows_by_tag[tag][e["id"]]["raw_output"]))
        out["alce"][tag], out["trust_eval"][tag] = {}, {}
        if hasattr(checker, "probabilities"):   # batched first; the measures then read the cache
            pairs = [p for source, items in by_source.items() for it in items
                     for p in alce.entailment_pairs(prep(it), qampari=source == "qampari")]
            pairs += [p for source, items in by_source.items() for it in items
                      for p in alce.entailment_pairs(it, qampari=source == "qampari")]
            checker.probabilities(list(dict.fromkeys(pairs)))
        for source, items in by_source.items():
            claims = all(it.get("claims") for it in items)
            out["alce"][tag][source] = alce.alce_measures(items, entails, qampari=source == "qampari")
            kind = "cm" if claims else ("em5" if source == "qampari" else "em")
            out["trust_eval"][tag][source] = trusteval.trust_eval_measures(items, entails, kind=kind)
    return out


# --------------------------------------------------------------------------------------------
# Their output files, read by evaluate_sft.py --predictions
# --------------------------------------------------------------------------------------------
def is_their_output_file(path) -> bool:
    """A JSON document (not JSONL) holding `data: [{question, output, ...}]` or such an array: ALCE's
    and Trust-Eval's output files."""
    import json
    from pathlib import Path

    from .records import refuse_non_file

    path = Path(path)
    if not path.is_file():
        refuse_non_file(path)   # a named pipe or a folder: one error line, never a wait for a writer
        return False            # missing: the JSONL reader names it
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline()
        try:
            obj = json.loads(first)   # JSONL (one object a line), or their file written on one line
        except RecursionError:
            return False              # the JSONL reader reports it, with its line
        except ValueError:
            if not first.lstrip().startswith(("{", "[")):
                return False
            try:
                obj = json.loads(first + f.read())
            except (ValueError, RecursionError):
                return False
    items = obj.get("data") if isinstance(obj, dict) else obj
    return isinstance(items, list) and bool(items) and isinstance(items[0], dict) and "output" in items[0]


def _key(question: str) -> str:
    return " ".join(question.lower().split())


def read_their_outputs(path, examples: Sequence[Mapping], tag: str) -> dict[str, dict[str, dict]]:
    """{tag: {example id: row}} from an ALCE / Trust-Eval output file. Items are matched to the test
    examples by question; each inline citation [n] (n-th document of the item) is renumbered to the
    position of the same document (title and text) in the example's evidence, and one the example
    does not show becomes out of range (ALCE then scores its sentence 0)."""
    import json
    import re

    from .records import RecordError

    from pathlib import Path

    obj = json.loads(Path(path).read_text(encoding="utf-8"))
    items = obj.get("data") if isinstance(obj, dict) else obj
    by_q = {_key(e["question"]): e for e in examples}
    rows: dict[str, dict] = {}
    for i, it in enumerate(items):
        for field in ("question", "output"):
            if not isinstance(it.get(field), str):
                raise RecordError(f"{path}[{i}]: {field}: missing or not a string; expected ALCE's output items "
                                  f"{{question, output, docs}}")
        ex = by_q.get(_key(it["question"]))
        if ex is None:
            raise RecordError(f"{path}[{i}]: question: {it['question'][:60]!r} is not a question of the test data; "
                              f"score against the test file built (build_data.py --sources asqa|qampari|eli5) from "
                              f"the data these outputs answer")
        if ex["id"] in rows:
            raise RecordError(f"{path}[{i}]: question: {it['question'][:60]!r} appears twice")
        where = {(c.get("title") or "", c["text"].strip()): n for n, c in enumerate(ex["evidence"], start=1)}
        by_doc = {c.get("doc_id"): n for n, c in enumerate(ex["evidence"], start=1)}
        orig = (ex.get("meta") or {}).get("original_id")
        docs = it.get("docs") or []
        out_of_range = len(ex["evidence"]) + 1

        def renumber(m, docs=docs, where=where, by_doc=by_doc, orig=orig, out_of_range=out_of_range):
            n = int(m.group(1))
            if not 1 <= n <= len(docs) or not isinstance(docs[n - 1], dict):
                return f"[{out_of_range}"
            d = docs[n - 1]
            # the document id the build gave it (alce_format: its own id, else <question id>:doc<index>),
            # else the same title and text
            doc_id = str(d["id"]) if d.get("id") not in (None, "") else f"{orig}:doc{n - 1}"
            pos = by_doc.get(doc_id) or where.get(((d.get("title") or ""), str(d.get("text", "")).strip()))
            return f"[{pos or out_of_range}"

        rows[ex["id"]] = {"id": ex["id"], "raw_output": re.sub(r"\[(\d+)", renumber, it["output"]), "model_tag": tag}
    return {tag: rows}
