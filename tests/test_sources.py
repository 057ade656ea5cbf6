"""One reader per raw format, on the real sample records and on small hand-written bad ones."""
from __future__ import annotations

import json

import pytest

from factuality import sources as S
from factuality.raw_inputs import SAMPLE_DIR
from factuality.records import RecordError
from factuality.text import has_answer

RAW = SAMPLE_DIR / "raw"
FIX = SAMPLE_DIR / "fixtures"


def test_hotpotqa_support_spans_are_the_supporting_sentences():
    data = json.loads((RAW / "hotpotqa" / "hotpot_train_sample.json").read_text())
    exs = list(S.read_hotpotqa(RAW / "hotpotqa" / "hotpot_train_sample.json", S.BadRecords()))
    assert len(exs) == len(data) == 60
    for ex, rec in zip(exs, data):
        ctx = dict((t, sents) for t, sents in rec["context"])
        expected = {(t, ctx[t][i].strip()) for t, i in rec["supporting_facts"] if i < len(ctx[t])}
        got = {(c.title, c.text[a:b]) for c, spans in ex.gold for a, b in spans}
        assert got == expected
        assert len(ex.candidates) == len(ctx) - len(ex.gold)
        assert ex.meta["type"] in ("bridge", "comparison")


def test_hotpotqa_malformed_record_names_array_index(tmp_path):
    data = json.loads((RAW / "hotpotqa" / "hotpot_train_sample.json").read_text())[:3]
    data[1]["supporting_facts"] = [["No such title", 0]]
    p = tmp_path / "hotpot.json"
    p.write_text(json.dumps(data))
    with pytest.raises(RecordError, match=r"hotpot\.json\[1\]: supporting_facts: title 'No such title' is not in context"):
        list(S.read_hotpotqa(p, S.BadRecords()))
    bad = S.BadRecords(collect=True)
    assert len(list(S.read_hotpotqa(p, bad))) == 2 and bad.items[0]["where"].endswith("hotpot.json[1]")


def test_fever_claims_and_labels():
    exs = list(S.read_fever_claims(RAW / "fever" / "paper_dev.sample.jsonl", S.BadRecords()))
    assert len(exs) == 300
    labels = [e.label for e in exs]
    assert labels.count("SUPPORTS") == 99 and labels.count("REFUTES") == 115 and labels.count("NOT ENOUGH INFO") == 86
    soul = next(e for e in exs if e.orig_id == "137334")
    assert soul.answers == ["SUPPORTS"] and soul.fever_sets[0] == [("Soul_Food_-LRB-film-RRB-", 0)]
    assert all(not e.fever_sets for e in exs if e.label == "NOT ENOUGH INFO")


def test_fever_malformed_line_is_reported_with_file_and_line(tmp_path):
    lines = (RAW / "fever" / "paper_dev.sample.jsonl").read_text().splitlines()[:5]
    rec = json.loads(lines[3])
    rec["label"] = "MAYBE"
    lines[3] = json.dumps(rec)
    p = tmp_path / "claims.jsonl"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordError, match=r"claims\.jsonl:4: label: 'MAYBE' is not one of"):
        list(S.read_fever_claims(p, S.BadRecords()))


def test_wiki_pages_lines_and_ptb_unescape(tmp_path):
    p = tmp_path / "wiki-001.jsonl"
    lines = "0\tSoul Food is a 1997 American comedy-drama film -LRB- produced by `` Babyface '' Edmonds -RRB- .\tSoul Food\tSoul Food\n1\t\n2\tIt was n't a -LSB- sic -RSB- flop , it 's said ."
    p.write_text(json.dumps({"id": "", "text": "", "lines": ""}) + "\n" +
                 json.dumps({"id": "Soul_Food_-LRB-film-RRB-", "text": "x", "lines": lines}) + "\n")
    sents = list(S.read_wiki_pages(p, S.BadRecords()))
    assert [(s.page, s.sent_id) for s in sents] == [("Soul_Food_-LRB-film-RRB-", 0), ("Soul_Food_-LRB-film-RRB-", 2)]
    assert sents[0].text == 'Soul Food is a 1997 American comedy-drama film (produced by "Babyface" Edmonds).'
    assert sents[1].text == "It wasn't a [sic] flop, it's said."
    assert S.page_title("Soul_Food_-LRB-film-RRB-") == "Soul Food (film)"
    p.write_text(json.dumps({"id": "X", "text": "x", "lines": "zero\tbad row"}) + "\n")
    with pytest.raises(RecordError, match=r"wiki-001\.jsonl:1: lines: row"):
        list(S.read_wiki_pages(p, S.BadRecords()))


def test_fixture_wiki_covers_the_cited_sentences():
    sents = {(s.page, s.sent_id): s.text for s in S.read_wiki_pages(FIX / "fever" / "wiki-pages" / "wiki-fixture-001.jsonl", S.BadRecords())}
    assert sents[("Soul_Food_-LRB-film-RRB-", 0)].endswith("released by Fox 2000 Pictures.")
    assert len(sents) > 150


def test_dpr_gold_passage_and_answer_span():
    exs = list(S.read_dpr(RAW / "nq" / "dpr_nq_dev_sample.json", S.BadRecords()))
    assert len(exs) == 5
    for ex in exs:
        (chunk, [(a, b)]), = ex.gold
        assert has_answer(chunk.text[a:b], ex.answers) and ex.meta["answer_span_found"]
        # over 50 hard negatives each in the file; the first DPR_KEEP_NEGATIVES answer-free ones are kept
        assert len(ex.candidates) == S.dataset("nq").DPR_KEEP_NEGATIVES
        assert not any(has_answer(c.text, ex.answers) for c in ex.candidates)


def test_dpr_malformed_names_index(tmp_path):
    data = json.loads((RAW / "nq" / "dpr_nq_dev_sample.json").read_text())[:2]
    data[1]["answers"] = "Linda Davis"
    p = tmp_path / "dpr.json"
    p.write_text(json.dumps(data))
    with pytest.raises(RecordError, match=r"dpr\.json\[1\]: answers: expected a non-empty list"):
        list(S.read_dpr(p, S.BadRecords()))


def test_nq_open_reader_and_bad_json_line(tmp_path):
    exs = list(S.read_nq_open(RAW / "nq" / "NQ-open.dev.sample.jsonl", S.BadRecords()))
    assert len(exs) == 300 and exs[0].answers == ["14 December 1972 UTC", "December 1972"]
    p = tmp_path / "nq.jsonl"
    p.write_text('{"question": "q1", "answer": ["a"]}\n{"question": "q2", "answer": [}\n')
    with pytest.raises(RecordError, match=r"nq\.jsonl:2: \(line\): not valid JSON"):
        list(S.read_nq_open(p, S.BadRecords()))


def test_popqa_json_list_inside_tsv_cell():
    (ex,) = list(S.read_popqa(RAW / "popqa" / "popQA.header_and_one_row.tsv", S.BadRecords()))
    assert ex.id == "popqa:4222362" and ex.question == "What is George Rankin's occupation?"
    assert ex.answers == ["politician", "political leader", "political figure", "polit.", "pol"]
    assert ex.meta["s_pop"] == 142 and ex.meta["type"] == "occupation"
    fixture = list(S.read_popqa(FIX / "popqa" / "popQA.fixture.tsv", S.BadRecords()))
    assert len(fixture) == 40


def test_popqa_malformed_cell_reported_with_line_and_counted_with_rejects(tmp_path):
    text = (FIX / "popqa" / "popQA.fixture.tsv").read_text().splitlines()
    text[2] = text[2].replace('"[""physicist""', '"[""physicist"" oops')
    p = tmp_path / "popqa.tsv"
    p.write_text("\n".join(text) + "\n")
    with pytest.raises(RecordError, match=r"popqa\.tsv:3: possible_answers: not a JSON list"):
        list(S.read_popqa(p, S.BadRecords()))
    bad = S.BadRecords(collect=True)
    assert len(list(S.read_popqa(p, bad))) == 39 and len(bad.items) == 1 and bad.items[0]["where"].endswith("popqa.tsv:3")


def test_passage_corpus_tsv(tmp_path):
    chunks = list(S.read_passages(FIX / "corpus" / "psgs_w100.fixture.tsv", S.BadRecords()))
    assert len(chunks) > 800 and chunks[0].doc_id.startswith("psg:")
    p = tmp_path / "psgs.tsv"
    p.write_text("id\ttext\ttitle\n1\t\"Aaron Aaron ( or ; \"\"Ahärôn\"\") is a prophet\"\tAaron\n2\tonly two cells\n")
    with pytest.raises(RecordError, match=r"psgs\.tsv:3: \(row\): 2 cells"):
        list(S.read_passages(p, S.BadRecords()))
    p.write_text("pid\ttext\n1\tx\n")
    with pytest.raises(RecordError, match="column 'id' is missing"):
        list(S.read_passages(p, S.BadRecords()))


def test_registry_one_module_per_dataset_with_its_inputs_downloads_and_task():
    from factuality.records import SOURCES
    assert list(S.REGISTRY) == list(SOURCES)
    for name, mod in S.REGISTRY.items():
        assert mod.NAME == name and mod.__name__ == f"factuality.sources.{name}"
        assert set(mod.READERS) <= set(mod.INPUTS) and callable(mod.draft)
        assert mod.DOWNLOADS or name in ("asqa", "qampari", "eli5")   # ALCE's data: one tarball, placed by hand
    assert S.prompt_task("fever") == "claim" and {S.prompt_task(s) for s in ("hotpotqa", "nq", "popqa")} == {"question"}
    assert S.input_globs(["popqa"]) == {"popqa": "popqa/*.tsv", "popqa_json": "popqa/*.json",
                                        "popqa_jsonl": "popqa/*.jsonl", "popqa_gz": "popqa/*.gz", "corpus": "corpus/*.tsv"}
    assert S.dataset("nq").READERS == {"nq_dpr": S.read_nq, "nq_open": S.read_nq, "nq_gz": S.read_nq}
    from factuality import download as D
    assert D.OFFICIAL == {name: list(mod.DOWNLOADS) for name, mod in S.REGISTRY.items()}
    with pytest.raises(ValueError, match="unknown source 'squad'"):
        S.dataset("squad")


def test_register_checks_the_module_protocol():
    import types
    mod = types.ModuleType("factuality.sources.toy")
    mod.NAME, mod.TASK, mod.INPUTS, mod.DOWNLOADS = "toy", "question", {"toy": "toy/*.jsonl"}, []
    mod.READERS = {"toy": lambda path, bad: iter(())}
    with pytest.raises(TypeError, match="draft missing"):
        S.register(mod)
    mod.draft = lambda exs, ctx: []
    mod.TASK = "essay"
    with pytest.raises(TypeError, match="TASK 'essay'"):
        S.register(mod)
    assert "toy" not in S.REGISTRY


def test_bytes_that_are_not_utf8_in_each_raw_format(tmp_path):
    """JSONL, JSON and TSV: file, line and byte offset in the error; with a rejects file, only that record goes."""
    nq = tmp_path / "nq.jsonl"
    nq.write_bytes(b'{"question": "q1", "answer": ["a"]}\n{"question": "q\xff2", "answer": ["b"]}\n'
                   b'{"question": "q3", "answer": ["c"]}\n')
    with pytest.raises(RecordError, match=r"nq\.jsonl:2: \(encoding\): byte 0xff at byte offset 51 \(column 16\) is not UTF-8"):
        list(S.read_nq_open(nq, S.BadRecords()))
    bad = S.BadRecords(collect=True)
    assert [e.question for e in S.read_nq_open(nq, bad)] == ["q1", "q3"]
    assert bad.items[0]["line"] == 2 and bad.items[0]["byte"] == 51 and bad.items[0]["field"] == "(encoding)"

    data = json.loads((RAW / "hotpotqa" / "hotpot_train_sample.json").read_text())[:3]
    text = json.dumps(data, indent=1, ensure_ascii=False).encode()
    q = data[1]["question"].encode()
    hot = tmp_path / "hotpot.json"
    hot.write_bytes(text.replace(q, q[:5] + b"\xc3(" + q[7:]))
    offset = text.index(q) + 5
    line = text[:offset].count(b"\n") + 1
    with pytest.raises(RecordError, match=rf"hotpot\.json:{line}: \(encoding\): byte 0xc3 at byte offset {offset}"):
        list(S.read_hotpotqa(hot, S.BadRecords()))
    bad = S.BadRecords(collect=True)
    assert [e.orig_id for e in S.read_hotpotqa(hot, bad)] == [data[0]["_id"], data[2]["_id"]]
    (row,) = bad.items
    assert row["where"].endswith("hotpot.json[1]") and row["index"] == 1 and row["byte"] == offset
    assert "\\xc3" in row["raw"]

    rows = (FIX / "popqa" / "popQA.fixture.tsv").read_bytes().split(b"\n")
    rows[2] = rows[2].replace(b"physicist", b"physic\xe9ist", 1)
    tsv = tmp_path / "popqa.tsv"
    tsv.write_bytes(b"\n".join(rows))
    with pytest.raises(RecordError, match=r"popqa\.tsv:3: \(encoding\): byte 0xe9 at byte offset \d+ \(column \d+\)"):
        list(S.read_popqa(tsv, S.BadRecords()))
    bad = S.BadRecords(collect=True)
    assert len(list(S.read_popqa(tsv, bad))) == 39 and bad.items[0]["line"] == 3


@pytest.mark.parametrize("reader,content,needle", [
    (S.read_fever_claims, b"", r"claims: the file is empty \(no records\); expected FEVER claims \{id, label, claim, evidence\}"),
    (S.read_nq_open, b"\n\n", r"expected NQ-Open questions"),
    (S.read_hotpotqa, b"[]", r"the array is empty \(no records\); expected HotpotQA records"),
    (S.read_dpr, b"", r"the file is empty; expected a JSON array of DPR retriever records"),
    (S.read_popqa, b"id\tsubj\tprop\tobj\ts_pop\to_pop\tquestion\tpossible_answers\n",
     r"the file has a header but no rows; expected PopQA rows"),
    (S.read_passages, b"", r"the file is empty; expected a DPR passage corpus"),
])
def test_empty_raw_file_is_refused_saying_what_was_expected(tmp_path, reader, content, needle):
    p = tmp_path / "claims"
    p.write_bytes(content)
    with pytest.raises(RecordError, match=needle):
        list(reader(p, S.BadRecords(collect=True)))


# --------------------------------------------------------------------------------------------
# FEVER wiki pages read from the id at the start of a line (fever_wiki_scope: referenced)
# --------------------------------------------------------------------------------------------
def _page(pid, *sents, **kw):
    lines = "\n".join(f"{i}\t{s}\tLink" for i, s in enumerate(sents))
    return json.dumps({"id": pid, "text": " ".join(sents), "lines": lines}, **kw)


TRICKY = ["Say_\"Hi\"_-LRB-song-RRB-", "Caf\u00e9_Society", "Soul_Food_-LRB-film-RRB-", "Back\\slash", "Later_Key",
          "Dup_Wanted", "Spaced", "Emoji_\U0001F600"]


def _tricky_wiki(tmp_path):
    """Wanted and unwanted pages whose ids hold escaped quotes, \\u escapes (and the same id written raw),
    PTB escapes, backslashes, keys in another order, a second "id" key, JSON whitespace."""
    rows = [json.dumps({"id": "", "text": "", "lines": ""})]
    for pid in TRICKY + ["Not_\"Wanted\"", "Caf\u00e9_Other", "Other_-LRB-x-RRB-"]:
        rows.append(_page(pid, f"{pid} is a page .", "It is n't -LRB- really -RRB- one ."))
    rows.append(_page("Caf\u00e9_Society", "Written raw .", ensure_ascii=False))        # same id, raw UTF-8
    rows.append(json.dumps({"text": "x", "lines": "0\tKeys in another order .", "id": "Later_Key"}))
    rows.append(json.dumps({"text": "x", "lines": "0\tUnwanted, keys in another order .", "id": "Nope"}))
    rows.append('{"id": "Unwanted_First", "text": "x", "lines": "0\\tThe last id key wins .", "id": "Dup_Wanted"}')
    rows.append('{"id": "Unwanted_First", "text": "x", "lines": "0\\tEscaped key wins .", "\\u0069d": "Dup_Wanted"}')
    rows.append('{ "id" :  "Spaced" , "lines": "0\\tJSON white space .", "text": "x"}')
    rows.append('{"id": "Spaced"}')                                                 # no lines: reported
    rows.append('{"id": "Soul_Food_-LRB-film-RRB-", "text": "x", "lines": "zero\\tno number"}')   # reported
    rows.append('{"id": 7, "text": "x", "lines": "0\\tA number id ."}')                  # reported
    rows.append('{"id": "Caf\\u00e9_Society", "text": "truncated')                       # wanted, broken: reported
    rows.append("")
    rows.append('["not an object"]')                                                  # reported
    p = tmp_path / "wiki-001.jsonl"
    p.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return p


def _read_both(monkeypatch, path, pages, collect=True):
    from factuality.sources import fever
    fast_bad = S.BadRecords(collect=collect)
    fast = [(s.page, s.sent_id, s.text) for s in S.read_wiki_pages(path, fast_bad, pages)]
    with monkeypatch.context() as m:       # every line parsed in full, as before the id fast path
        m.setattr(fever, "unwanted_page", lambda pages: (lambda line: False))
        full_bad = S.BadRecords(collect=collect)
        full = [(s.page, s.sent_id, s.text) for s in S.read_wiki_pages(path, full_bad, pages)]
    return fast, fast_bad, full, full_bad


def test_wiki_fast_path_reads_and_reports_what_the_full_parse_does(tmp_path, monkeypatch):
    import gzip
    p = _tricky_wiki(tmp_path)
    fast, fast_bad, full, full_bad = _read_both(monkeypatch, p, set(TRICKY))
    assert fast == full and fast_bad.items == full_bad.items
    assert {pg for pg, _, _ in fast} == set(TRICKY)
    assert ("Dup_Wanted", 0, "The last id key wins.") in fast and ("Dup_Wanted", 0, "Escaped key wins.") in fast
    assert [(r["line"], r["field"]) for r in fast_bad.items] == [(19, "lines"), (20, "lines"), (21, "id"), (22, "(line)"),
                                                                 (24, "(line)")]
    gz = tmp_path / "wiki-002.jsonl"                      # gzip input, told by content
    gz.write_bytes(gzip.compress(p.read_bytes()))
    fast_gz, bad_gz, _, _ = _read_both(monkeypatch, gz, set(TRICKY))
    assert fast_gz == fast and [r["problem"] for r in bad_gz.items] == [r["problem"] for r in fast_bad.items]
    for path in (p, gz):                                  # the first error stops the read with the same message
        with pytest.raises(RecordError) as e_fast:
            list(S.read_wiki_pages(path, S.BadRecords(), set(TRICKY)))
        with monkeypatch.context() as m:
            from factuality.sources import fever
            m.setattr(fever, "unwanted_page", lambda pages: (lambda line: False))
            with pytest.raises(RecordError) as e_full:
                list(S.read_wiki_pages(path, S.BadRecords(), set(TRICKY)))
        assert str(e_fast.value) == str(e_full.value) and ":19: lines:" in str(e_fast.value)


def test_wiki_fast_path_passes_over_unwanted_pages_unparsed(tmp_path, monkeypatch):
    """A line of a page no claim cites is passed over from its id: a broken rest of it is not reported
    (the full parse reported it); a line whose start is broken is parsed and reported as before."""
    p = tmp_path / "wiki-001.jsonl"
    p.write_text("\n".join([_page("Wanted", "Kept ."), '{"id": "Unwanted", "text": "cut sh',
                            '{"id": "Unwanted_\\q", "text": "bad escape in the id"}', "\ufeff" + _page("Bom", "x .")]) + "\n")
    fast, fast_bad, full, full_bad = _read_both(monkeypatch, p, {"Wanted"})
    assert fast == full == [("Wanted", 0, "Kept.")]
    assert [r["line"] for r in full_bad.items] == [2, 3, 4] and [r["line"] for r in fast_bad.items] == [3, 4]
    assert S.fever.unwanted_page({"Wanted"})('{"id": "Other", "text": "x"}\n')
    assert not S.fever.unwanted_page({"Wanted"})('{"id": "Wanted", "text": "x"}\n')
    assert S.fever.unwanted_page({"Wanted"})('{"id": "", "text": "", "lines": ""}\n')    # the dump's empty-id page


def test_fever_draft_is_the_same_from_the_fast_path(tmp_path, monkeypatch):
    from factuality.sources import fever
    from factuality.stages.build import BuildConfig
    wiki = FIX / "fever" / "wiki-pages" / "wiki-fixture-001.jsonl"
    claims = RAW / "fever" / "paper_dev.sample.jsonl"
    cfg = BuildConfig(quiet=True, fever_wiki_scope="referenced")

    def drafts():
        bad = S.BadRecords()
        exs = list(S.read_fever_claims(claims, bad))
        out = fever.draft(exs, S.DraftContext(cfg, {"fever_wiki": [wiki, wiki]}, bad))
        return [(d.raw.id, [(c.doc_id, c.title, c.text, sp) for c, sp in d.gold],
                 [(c.doc_id, c.text, s) for c, s in d.negatives], d.answerable, d.unanswerable_reason) for d in out], bad

    fast, fast_bad = drafts()
    with monkeypatch.context() as m:
        m.setattr(fever, "unwanted_page", lambda pages: (lambda line: False))
        full, full_bad = drafts()
    assert fast == full and len(fast) > 200 and fast_bad.dropped == full_bad.dropped
