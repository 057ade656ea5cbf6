"""Nothing lost, nothing mixed: vanished inputs, killed builds, bad bytes, empty files, repeated ids.

The kill tests run the build in a real subprocess that SIGKILLs itself at a named step of its
output commit (records.fault_point, FACTUALITY_TEST_KILL_AT); the steps are listed by tracing a
complete run, so every step the build passes is hit, in both commit modes (an atomic exchange of
folders, and the two-rename fallback of platforms without one).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _data_helpers import REPO, copy_sample_raw, load_all

from factuality.raw_inputs import HashMismatch
from factuality.stages.build import BuildConfig, build, question_key
from factuality.records import (
    KILL_AT_ENV,
    TRACE_ENV,
    RecordError,
    read_examples,
    sha256_file,
)

SPLIT_FILES = ("train.jsonl", "val.jsonl", "test.jsonl")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


def leftovers(folder: Path) -> list[str]:
    """Temp folders beside the output folder and temp files in it (what a killed commit leaves)."""
    beside = [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]
    inside = [p.name for p in folder.iterdir() if p.name.startswith(".")] if folder.exists() else []
    return beside + inside


def assert_consistent_set(out: Path) -> list[dict]:
    """Every split matches the run card (read_examples checks it) and no question is in two splits."""
    card = json.loads((out / "run_card.json").read_text())
    assert set(card["output_sha256"]) == set(SPLIT_FILES)
    recs = [r for name in SPLIT_FILES for r in read_examples(out / name)]
    split_of: dict[str, str] = {}
    for r in recs:
        assert split_of.setdefault(question_key(r["question"]), r["split"]) == r["split"], r["id"]
    assert card["total"] == len(recs)
    return recs


# --------------------------------------------------------------------------------------------
# A raw file that vanished
# --------------------------------------------------------------------------------------------
def test_deleted_raw_file_is_refused_and_outputs_stay_untouched(tmp_path):
    data = tmp_path / "data"
    copy_sample_raw(data / "raw")
    full = build(BuildConfig(data_dir=str(data), quiet=True, accept_new_hash=True))
    assert full["total"] == 398
    before, manifest = snapshot(data / "processed"), (data / "raw_manifest.json").read_bytes()
    gone = data / "raw/nq/NQ-open.dev.sample.jsonl"
    gone.unlink()
    with pytest.raises(HashMismatch) as err:
        build(BuildConfig(data_dir=str(data), quiet=True))
    msg = str(err.value)
    assert str(gone) in msg and "missing" in msg and "--accept-new-hash" in msg and "nothing was written" in msg
    assert snapshot(data / "processed") == before and (data / "raw_manifest.json").read_bytes() == manifest
    # a build of other sources does not read the file: not refused
    assert build(BuildConfig(data_dir=str(data), out_dir=str(tmp_path / "popqa"), sources=["popqa"], quiet=True))["total"] > 0
    # accepting the deletion drops it from the manifest and builds without it
    smaller = build(BuildConfig(data_dir=str(data), quiet=True, accept_new_hash=True))
    assert smaller["total"] == 320 and smaller["manifest_updated"]
    assert "raw/nq/NQ-open.dev.sample.jsonl" not in json.loads((data / "raw_manifest.json").read_text())["files"]
    # every raw file gone: still the user's data (their manifest says so), not a silent fall-back to the sample
    for p in (data / "raw").rglob("*"):
        if p.is_file():
            p.unlink()
    with pytest.raises(HashMismatch, match="missing"):
        build(BuildConfig(data_dir=str(data), quiet=True))


def test_deleted_file_of_the_bundled_sample_is_refused(tmp_path, monkeypatch):
    import shutil

    import factuality.raw_inputs as B
    sample = tmp_path / "sample"
    shutil.copytree(B.SAMPLE_DIR, sample)
    monkeypatch.setattr(B, "SAMPLE_DIR", sample)
    (sample / "raw/nq/NQ-open.dev.sample.jsonl").unlink()
    with pytest.raises(HashMismatch, match=r"raw/nq/NQ-open\.dev\.sample\.jsonl: listed in .*raw_manifest\.json"):
        build(BuildConfig(data_dir=str(tmp_path / "d"), quiet=True))
    assert not (tmp_path / "d").exists()


# --------------------------------------------------------------------------------------------
# Killed builds: old set or new set, never a mix
# --------------------------------------------------------------------------------------------
def run_build(kw: dict, env: dict) -> subprocess.CompletedProcess:
    code = ("import json, sys; from factuality.stages.build import BuildConfig, build; "
            "build(BuildConfig(quiet=True, **json.loads(sys.argv[1])))")
    return subprocess.run([sys.executable, "-c", code, json.dumps(kw)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env}, timeout=120)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Raw v1 with its seed-42 corpus (the old set), and the raw v2 seed-7 corpus a killed run would write."""
    root = tmp_path_factory.mktemp("kill")
    v1 = root / "v1"
    copy_sample_raw(v1 / "raw")
    old = dict(data_dir=str(v1), out_dir=str(root / "old"), sources=["popqa"], accept_new_hash=True)
    build(BuildConfig(quiet=True, **old))
    v2 = root / "v2"
    copy_sample_raw(v2 / "raw")
    change_raw(v2)
    build(BuildConfig(quiet=True, data_dir=str(v2), out_dir=str(root / "new"), sources=["popqa"], seed=7,
                      accept_new_hash=True, rejects=str(root / "new_rejects.jsonl")))
    return root, v1


def change_raw(data: Path) -> None:
    tsv = data / "raw/popqa/popQA.fixture.tsv"
    lines = tsv.read_text().splitlines()
    tsv.write_text("\n".join(lines[:3] + [lines[3].replace('"[""', '"[oops')] + lines[4:]) + "\n")


def points(kw: dict, env: dict, tmp: Path) -> list[str]:
    trace = tmp / "trace.txt"
    res = run_build(kw, {**env, TRACE_ENV: str(trace)})
    assert res.returncode == 0, res.stderr
    return trace.read_text().split()


@pytest.mark.parametrize("mode", ["exchange", "two_renames"])
def test_build_killed_at_every_step_leaves_old_or_new_set(corpora, tmp_path, mode):
    root, v1 = corpora
    env = {"FACTUALITY_NO_RENAME_EXCHANGE": "1"} if mode == "two_renames" else {}
    old_set, new_set = snapshot(root / "old"), snapshot(root / "new")
    old_manifest = (v1 / "raw_manifest.json").read_bytes()

    def fresh(name: str) -> tuple[Path, dict]:
        """A copy of raw v1 + its seed-42 set, then raw changed: the killed run is a seed-7 rebuild that
        accepts the change and sets rejects aside."""
        data = tmp_path / name / "data"
        copy_sample_raw(data / "raw")
        (data / "raw_manifest.json").write_bytes(old_manifest)
        out = data / "processed"
        out.mkdir()
        for f, b in old_set.items():
            (out / f).write_bytes(b)
        change_raw(data)
        kw = dict(data_dir=str(data), sources=["popqa"], seed=7, accept_new_hash=True,
                  rejects=str(tmp_path / name / "rejects.jsonl"))
        return data, kw

    data, kw = fresh("trace")
    steps = points(kw, env, tmp_path)
    assert steps[:4] == [f"build:wrote:{f}" for f in (*SPLIT_FILES, "run_card.json")]
    assert {"set:ready", "set:swapped", "set:committed"} <= set(steps)
    assert ("set:old_aside" in steps) == (mode == "two_renames")
    assert sum(s.startswith("set:placed:") for s in steps) == 2      # the rejects file and the manifest
    if mode == "two_renames":   # the steps before and after the swap are the same in both modes
        steps = steps[steps.index("set:ready"):steps.index("set:swapped") + 1]
    outcomes = {}
    for i, step in enumerate(steps):
        data, kw = fresh(f"kill{i}")
        out = data / "processed"
        res = run_build(kw, {**env, KILL_AT_ENV: step})
        assert res.returncode == -9, (step, res.returncode, res.stderr[-2000:])
        # what a reader sees right after the kill: one whole set (after the recovery any writer runs first)
        from factuality.records import recover_dir
        from factuality.stages.build import outside_outputs
        if not out.exists():
            assert mode == "two_renames" and step == "set:old_aside"
        recover_dir(out, outside_outputs(BuildConfig(**kw)))   # the build's own outputs outside the set
        got = {f: b for f, b in snapshot(out).items() if f in new_set}
        split_bytes = {f: got[f] for f in SPLIT_FILES}
        is_old = split_bytes == {f: old_set[f] for f in SPLIT_FILES} and got["run_card.json"] == old_set["run_card.json"]
        is_new = split_bytes == {f: new_set[f] for f in SPLIT_FILES}
        assert is_old != is_new, step
        assert_consistent_set(out)
        card = json.loads((out / "run_card.json").read_text())
        assert card["config"]["seed"] == (7 if is_new else 42)
        outcomes[step] = "new" if is_new else "old"
        assert not leftovers(out), (step, leftovers(out))
        # the manifest follows the committed set: a plain rebuild (no --accept-new-hash) agrees
        manifest = json.loads((data / "raw_manifest.json").read_text())["files"]
        tsv = "raw/popqa/popQA.fixture.tsv"
        assert manifest[tsv] == card["inputs"][tsv] and (manifest[tsv] == sha256_file(data / tsv)) == is_new
        if is_new:
            (row,) = [json.loads(x) for x in (tmp_path / f"kill{i}" / "rejects.jsonl").read_text().splitlines()]
            assert row["where"].endswith("popQA.fixture.tsv:4") and row["field"] == "possible_answers"
            build(BuildConfig(quiet=True, **{**kw, "accept_new_hash": False}))
        else:
            with pytest.raises(HashMismatch):
                build(BuildConfig(quiet=True, **{**kw, "accept_new_hash": False}))
            assert snapshot(out) == old_set
    assert outcomes["set:ready"] == "old" and outcomes["set:swapped"] == "new"
    assert outcomes[steps[0]] == "old" and outcomes[steps[-1]] == "new"


def test_reader_refuses_a_split_from_another_run(tmp_path):
    """train.jsonl from a seed-7 build dropped into a seed-42 set: the run card no longer matches it."""
    a = build(BuildConfig(data_dir=str(tmp_path / "d"), out_dir=str(tmp_path / "a"), sources=["popqa"], quiet=True))
    build(BuildConfig(data_dir=str(tmp_path / "d"), out_dir=str(tmp_path / "b"), sources=["popqa"], seed=7, quiet=True))
    card = json.loads(Path(a["run_card"]).read_text())
    assert card["output_sha256"] == {f: sha256_file(tmp_path / "a" / f) for f in SPLIT_FILES}
    (tmp_path / "a/train.jsonl").write_bytes((tmp_path / "b/train.jsonl").read_bytes())
    with pytest.raises(RecordError, match=r"a/train\.jsonl: sha256 \w+ differs from \w+ recorded in .*run_card\.json.*"
                                          r"Rebuild the folder \(run build_data\.py again\)"):
        read_examples(tmp_path / "a/train.jsonl")
    read_examples(tmp_path / "a/val.jsonl")   # the files the card still describes read fine
    # outside the set's folder the file is no one's: read as it is
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/train.jsonl").write_bytes((tmp_path / "a/train.jsonl").read_bytes())
    assert read_examples(tmp_path / "mine/train.jsonl")


def test_leftovers_of_a_killed_old_style_build_are_removed(tmp_path):
    """Temp files of per-file renames (what a killed build used to leave) and temp folders beside."""
    out = tmp_path / "processed"
    build(BuildConfig(data_dir=str(tmp_path / "d"), out_dir=str(out), sources=["popqa"], quiet=True))
    (out / ".train.jsonl.k2j_9x0a.tmp").write_text("half")
    (tmp_path / ".processed.abcd1234.tmp").mkdir()
    (out / "NOTES.md").write_text("kept: not an output of the build")
    build(BuildConfig(data_dir=str(tmp_path / "d"), out_dir=str(out), sources=["popqa"], seed=7, quiet=True))
    assert not leftovers(out) and (out / "NOTES.md").read_text().startswith("kept")
    assert_consistent_set(out)


def test_outputs_are_readable_by_the_group_per_umask(tmp_path):
    old = os.umask(0o002)
    try:
        out = tmp_path / "processed"
        rejects = tmp_path / "rejects.jsonl"
        data = tmp_path / "data"
        copy_sample_raw(data / "raw")
        change_raw(data)
        build(BuildConfig(data_dir=str(data), out_dir=str(out), sources=["popqa"], quiet=True, accept_new_hash=True,
                          rejects=str(rejects)))
        modes = {p.name: p.stat().st_mode & 0o777 for p in [out, *out.iterdir(), rejects, data / "raw_manifest.json"]}
        assert set(modes.values()) <= {0o664, 0o775} and modes["processed"] == 0o775, modes
    finally:
        os.umask(old)
    assert load_all(out)


def test_empty_claims_file_and_repeated_raw_id_stop_the_build(tmp_path):
    data = tmp_path / "data"
    copy_sample_raw(data / "raw")
    claims = data / "raw/fever/paper_dev.sample.jsonl"
    lines = claims.read_text().splitlines()
    claims.write_text("")
    cfg = dict(data_dir=str(data), sources=["fever"], quiet=True, accept_new_hash=True)
    with pytest.raises(RecordError, match=r"paper_dev\.sample\.jsonl: the file is empty \(no records\); expected FEVER claims"):
        build(BuildConfig(**cfg))
    twin = json.loads(lines[0])
    twin["claim"] = "A different claim under the same id."
    claims.write_text("\n".join(lines + [json.dumps(twin)]) + "\n")
    with pytest.raises(RecordError, match=rf"paper_dev\.sample\.jsonl:{len(lines) + 1}: id: '{twin['id']}' was already "
                                          r"read at raw/fever/paper_dev\.sample\.jsonl:1 with another question"):
        build(BuildConfig(**cfg))
    assert not (data / "processed").exists() and not (data / "raw_manifest.json").exists()
    summary = build(BuildConfig(**cfg, rejects=str(tmp_path / "rejects.jsonl")))
    assert summary["rejected"] == 1 and len({r["id"] for r in load_all(data / "processed")}) == summary["total"]


def test_rejects_file_inside_the_output_folder_is_one_of_the_set(tmp_path):
    data = tmp_path / "data"
    copy_sample_raw(data / "raw")
    change_raw(data)
    out = data / "processed"
    build(BuildConfig(data_dir=str(data), sources=["popqa"], quiet=True, accept_new_hash=True,
                      rejects=str(out / "rejects.jsonl")))
    card = json.loads((out / "run_card.json").read_text())
    assert card["output_sha256"]["rejects.jsonl"] == sha256_file(out / "rejects.jsonl")
    assert sorted(p.name for p in out.iterdir()) == ["rejects.jsonl", "run_card.json", *sorted(SPLIT_FILES)]


def test_a_planted_pending_file_writes_nowhere(tmp_path):
    """A committed set's `.pending/*.dest` names where a file goes after the commit; a destination the
    build does not write itself (a planted one) is dropped: no path is taken from a file on disk."""
    data = tmp_path / "data"
    copy_sample_raw(data / "raw")
    build(BuildConfig(data_dir=str(data), accept_new_hash=True, quiet=True))
    pending = data / "processed" / ".pending"
    pending.mkdir()
    (pending / "0000").write_text("planted\n")
    victim = tmp_path / "elsewhere" / "victim.txt"
    (pending / "0000.dest").write_text(str(victim))
    build(BuildConfig(data_dir=str(data), quiet=True))
    assert not victim.exists() and not pending.exists()
