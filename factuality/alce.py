"""ALCE's measures (princeton-nlp/ALCE, `eval.py`), from its rules, on any entailment checker.

An ALCE item is `{question, output, docs: [{title, text}], qa_pairs? (ASQA), claims? (ELI5),
answers? (QAMPARI: a list of alias lists)}`; `output` is free text citing documents inline as
`[1]`, `[2]` (1-based positions in `docs`). ALCE's rules, as its eval.py applies them:

- Output: stripped and cut at the first newline (`prepare_output`).
- Citations removed (`remove_citations`): " [n" and "[n" deleted, then " |" and every "]".
- Sentences: NLTK's Punkt `sent_tokenize` (English model). NLTK needs its `punkt_tab` data,
  which is a download; `split_sentences` is our rule-based stand-in, equal to Punkt on
  ordinary prose (break after . ! ? and any closing quotes or brackets, before whitespace; no
  break after a known abbreviation or a one-letter initial). QAMPARI: the output split at commas,
  each piece prefixed with the question.
- citation recall (`citation_rec`): per output, the share of its sentences whose cited documents,
  joined ("Title: t\\ntext" each, newline-separated), entail the sentence (citations removed). A
  sentence with no citation, or with any citation out of range, scores 0. Only the first three
  citations of a sentence count (`at_most_citations`, taken after the range check). As in ALCE,
  `[0]` becomes index -1, the last document.
- citation precision (`citation_prec`): per output, (sum over sentences of the citations judged
  needed) / (number of citations counted). A sentence with one citation contributes its recall
  (1 or 0); one with several that is entailed jointly contributes, per citation, 1 unless the
  citation alone does not entail it AND the other citations (with that one removed once) do;
  one with several that is not entailed contributes 0. An output with no counted citation scores 0.
- Outputs with no sentence at all are left out of both means.
- str_em / str_hit (ASQA): per output, the share of qa_pairs one of whose short answers occurs
  (normalised: lowercase, punctuation, articles, whitespace) in the output (citations removed);
  str_hit = 1 when all do.
- claims_nli (ELI5): per output, the share of its claims entailed by the whole output (citations
  removed) as premise.
- qampari_prec / rec / rec_top5 / f1 / f1_top5 (QAMPARI): the comma-separated predictions
  (normalised) against the gold alias lists.
Every measure is reported x 100, as ALCE reports it.

The entailment checker is any `entailment.EntailmentChecker`; a hypothesis is entailed when its
probability is >= entailment.THRESHOLD (ALCE: the TRUE model decodes "1").
"""
from __future__ import annotations

import re
import string
from typing import Callable, Mapping, Sequence

import numpy as np

AT_MOST_CITATIONS = 3

# Abbreviations after which Punkt (trained on English) does not break a sentence.
ABBREVIATIONS = frozenset("""mr mrs ms dr prof sr jr st mt ft vs etc e.g i.e u.s u.k inc ltd co corp no vol
pp jan feb mar apr jun jul aug sep sept oct nov dec gen col lt sgt rev approx est dept univ""".split())
_CLOSERS = "\"')]}’”"
_END = re.compile(r"[.!?]+[" + re.escape(_CLOSERS) + r"]*$")

Entails = Callable[[str, str], bool]


def normalize_answer(s: str) -> str:
    """SQuAD normalisation, as ALCE's utils.normalize_answer (lowercase, punctuation, articles, spaces)."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def remove_citations(text: str) -> str:
    return re.sub(r"\[\d+", "", re.sub(r" \[\d+", "", text)).replace(" |", "").replace("]", "")


def prepare_output(text: str) -> str:
    """ALCE's preprocessing of an output: stripped, first line only, <|im_end|> removed."""
    return text.strip().split("\n")[0].replace("<|im_end|>", "")


def _is_abbreviation(token: str) -> bool:
    core = token.rstrip(_CLOSERS).rstrip(".").lstrip("\"'([{‘“").lower()
    if not core:
        return False
    if len(core) == 1 and core.isalpha():
        return True                         # an initial: "J. K. Rowling"
    return core in ABBREVIATIONS or core.replace(".", "") in {a.replace(".", "") for a in ABBREVIATIONS if "." in a}


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` (module docstring); whitespace inside a sentence is kept as written."""
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    out, start = [], None
    for k, (a, b) in enumerate(spans):
        if start is None:
            start = a
        token = text[a:b]
        last = k == len(spans) - 1
        if last or (_END.search(token) and not (token.rstrip(_CLOSERS).endswith(".") and _is_abbreviation(token))
                    and not token.rstrip(_CLOSERS).endswith("...")):
            out.append(text[start:b])
            start = None
    return out


def citation_refs(sentence: str) -> list[int]:
    """0-based document indices a sentence cites, in order, duplicates kept (ALCE: `[n` -> n - 1)."""
    return [int(r[1:]) - 1 for r in re.findall(r"\[\d+", sentence)]


def format_document(doc: Mapping) -> str:
    return "Title: %s\n%s" % (doc["title"], doc["sent"] if "sent" in doc else doc["text"])


def _sentences(item: Mapping, qampari: bool) -> list[str]:
    if qampari:
        return [item["question"] + " " + x.strip() for x in item["output"].rstrip().rstrip(".").rstrip(",").split(",")]
    return split_sentences(item["output"])


def citation_scores(item: Mapping, entails: Entails, at_most_citations: int | None = AT_MOST_CITATIONS,
                    qampari: bool = False, needed: Callable | None = None) -> dict | None:
    """{"recall", "precision", "sentences", "citations"} of one output (fractions, not x 100), or None
    when it has no sentence. `needed(item, ref, psg, others)` may veto an over-citation (Trust-Eval)."""
    sents = _sentences(item, qampari)
    if not sents:
        return None
    docs = item["docs"]
    entail = entail_prec = total = 0
    for sent in sents:
        target = remove_citations(sent).strip()
        ref = citation_refs(sent)
        if not ref or any(r >= len(docs) for r in ref):
            entail_prec += 0
            continue
        if at_most_citations is not None:
            ref = ref[:at_most_citations]
        total += len(ref)
        joint = entails("\n".join(format_document(docs[r]) for r in ref), target)
        entail += int(joint)
        if joint and len(ref) > 1:
            for psg in ref:
                if entails(format_document(docs[psg]), target):
                    entail_prec += 1
                    continue
                others = list(ref)
                others.remove(psg)
                rest = entails("\n".join(format_document(docs[r]) for r in others), target)
                if rest and (needed is None or not needed(item, ref, psg, others)):
                    continue                      # psg was not needed: an over-citation
                entail_prec += 1
        else:
            entail_prec += int(joint)
    return {"recall": entail / len(sents), "precision": entail_prec / total if total else 0.0,
            "sentences": len(sents), "citations": total}


def entailment_pairs(item: Mapping, at_most_citations: int | None = AT_MOST_CITATIONS,
                     qampari: bool = False) -> list[tuple[str, str]]:
    """Every (premise, hypothesis) `citation_scores` and `claims_recall` may ask about one output, so a
    checker can score them in batches first (a superset: the leave-one-out passages of every
    sentence with several citations)."""
    out = []
    docs = item.get("docs") or []
    for sent in (_sentences(item, qampari) if docs else []):
        ref = citation_refs(sent)
        if not ref or any(r >= len(docs) for r in ref):
            continue
        ref = ref[:at_most_citations] if at_most_citations is not None else ref
        target = remove_citations(sent).strip()
        out.append(("\n".join(format_document(docs[r]) for r in ref), target))
        if len(ref) > 1:
            for psg in ref:
                others = list(ref)
                others.remove(psg)
                out.append((format_document(docs[psg]), target))
                out.append(("\n".join(format_document(docs[r]) for r in others), target))
    if item.get("claims"):
        out += [(remove_citations(item["output"]), c) for c in item["claims"]]
    return out


def exact_presence(short_answers: Sequence[str], context: str) -> bool:
    ctx = normalize_answer(context)
    return any(normalize_answer(a) in ctx for a in short_answers)


def str_em(item: Mapping) -> tuple[float, float]:
    """(str_em, str_hit) of one ASQA output (citations removed first)."""
    out = remove_citations(item["output"])
    found = [exact_presence(qa["short_answers"], out) for qa in item["qa_pairs"]]
    share = float(np.mean(found))
    return share, float(share == 1)


def claims_recall(item: Mapping, entails: Entails) -> float:
    """Share of an ELI5 output's claims the output (citations removed) entails."""
    out = remove_citations(item["output"])
    return sum(int(entails(out, c)) for c in item["claims"]) / len(item["claims"])


def qampari_scores(item: Mapping, cot: bool = False) -> dict:
    o = item["output"]
    if cot:
        o = ":".join(o.split(":")[1:]) if ":" in o else ""
    preds = [p for p in (normalize_answer(x.strip()) for x in remove_citations(o).rstrip().rstrip(".").rstrip(",")
                         .split(",")) if p]
    answers = [[normalize_answer(x) for x in ans] for ans in item["answers"]]
    flat = [a for group in answers for a in group]
    hits = sum(any(x in preds for x in group) for group in answers)
    prec = sum(p in flat for p in preds) / len(preds) if preds else 0.0
    rec = hits / len(answers)
    rec5 = min(5, hits) / min(5, len(answers))
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    f1_5 = 2 * prec * rec5 / (prec + rec5) if prec + rec5 else 0.0
    return {"num_preds": len(preds), "qampari_prec": prec, "qampari_rec": rec, "qampari_rec_top5": rec5,
            "qampari_f1": f1, "qampari_f1_top5": f1_5}


def alce_measures(items: Sequence[Mapping], entails: Entails, at_most_citations: int | None = AT_MOST_CITATIONS,
                  qampari: bool = False, prepare: bool = True) -> dict:
    """ALCE's report over outputs (module docstring); x 100 like ALCE, None where no output counts."""
    items = [{**it, "output": prepare_output(it["output"])} if prepare else it for it in items]
    res: dict = {"n": len(items)}
    if not items:
        return res
    res["length"] = float(np.mean([len(remove_citations(it["output"]).split()) for it in items]))
    if all(it.get("qa_pairs") for it in items):
        em = [str_em(it) for it in items]
        res["str_em"] = 100 * float(np.mean([e for e, _ in em]))
        res["str_hit"] = 100 * float(np.mean([h for _, h in em]))
    if qampari and all(it.get("answers") for it in items):
        q = [qampari_scores(it) for it in items]
        res["num_preds"] = float(np.mean([x["num_preds"] for x in q]))
        for k in ("qampari_prec", "qampari_rec", "qampari_rec_top5", "qampari_f1", "qampari_f1_top5"):
            res[k] = 100 * float(np.mean([x[k] for x in q]))
    if all(it.get("claims") for it in items):
        res["claims_nli"] = 100 * float(np.mean([claims_recall(it, entails) for it in items]))
    if all(it.get("docs") is not None for it in items):
        cs = [c for c in (citation_scores(it, entails, at_most_citations, qampari) for it in items) if c is not None]
        res["citation_rec"] = 100 * float(np.mean([c["recall"] for c in cs])) if cs else None
        res["citation_prec"] = 100 * float(np.mean([c["precision"] for c in cs])) if cs else None
    return res
