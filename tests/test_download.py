"""Download code with the network faked: a local http.server on 127.0.0.1 serving sample files."""
from __future__ import annotations

import gzip
import http.server
import io
import shutil
import threading
import urllib.request
import zipfile
from functools import partial

import pytest

from factuality import download as D
from factuality.raw_inputs import SAMPLE_DIR, HashMismatch
from factuality.stages.build import BuildConfig, build

RAW, FIX = SAMPLE_DIR / "raw", SAMPLE_DIR / "fixtures"


@pytest.fixture()
def mirror(tmp_path):
    """Serve the sample under the official file names (gz / zip where the originals are)."""
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(RAW / "hotpotqa/hotpot_train_sample.json", site / "hotpot_train_v1.1.json")
    shutil.copy(RAW / "fever/paper_dev.sample.jsonl", site / "paper_dev.jsonl")
    with zipfile.ZipFile(site / "wiki-pages.zip", "w") as z:
        z.write(FIX / "fever/wiki-pages/wiki-fixture-001.jsonl", "wiki-pages/wiki-001.jsonl")
    (site / "biencoder-nq-dev.json.gz").write_bytes(gzip.compress((RAW / "nq/dpr_nq_dev_sample.json").read_bytes()))
    shutil.copy(RAW / "nq/NQ-open.dev.sample.jsonl", site / "NQ-open.dev.jsonl")
    (site / "psgs_w100.tsv.gz").write_bytes(gzip.compress((FIX / "corpus/psgs_w100.fixture.tsv").read_bytes()))
    shutil.copy(FIX / "popqa/popQA.fixture.tsv", site / "popQA.tsv")
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", requests
    server.shutdown()
    server.server_close()


def test_official_urls():
    urls = {rf.url for rfs in D.OFFICIAL.values() for rf in rfs}
    assert "http://curtis.ml.cmu.edu/datasets/hotpot/hotpot_train_v1.1.json" in urls
    assert "https://fever.ai/download/fever/paper_dev.jsonl" in urls
    assert "https://fever.ai/download/fever/wiki-pages.zip" in urls
    assert "https://dl.fbaipublicfiles.com/dpr/data/retriever/biencoder-nq-dev.json.gz" in urls
    assert "https://raw.githubusercontent.com/AlexTMallen/adaptive-retrieval/main/data/popQA.tsv" in urls
    assert any(u.endswith("nq_open/NQ-open.dev.jsonl") for u in urls)
    assert any(u.endswith("psgs_w100.tsv.gz") for u in urls)


def test_download_all_then_build_needs_accept(mirror, tmp_path):
    url, requests = mirror
    data = tmp_path / "data"
    files = D.download_sources(data / "raw", ["fever", "hotpotqa", "nq", "popqa"], mirror=url, quiet=True)
    raw = data / "raw"
    assert (raw / "nq/biencoder-nq-dev.json").read_bytes() == (RAW / "nq/dpr_nq_dev_sample.json").read_bytes()
    assert (raw / "corpus/psgs_w100.tsv").read_bytes() == (FIX / "corpus/psgs_w100.fixture.tsv").read_bytes()
    assert (raw / "fever/wiki-pages/wiki-001.jsonl").exists() and raw / "popqa/popQA.tsv" in files
    assert requests.count("/psgs_w100.tsv.gz") == 1          # shared by nq and popqa, fetched once
    assert not [p for p in raw.rglob("*") if p.name.endswith((".part", ".tmp", ".download")) or ".unzip" in str(p)]
    with pytest.raises(HashMismatch, match="new raw input"):
        build(BuildConfig(data_dir=str(data), quiet=True))
    summary = build(BuildConfig(data_dir=str(data), quiet=True, accept_new_hash=True))
    assert summary["total"] > 300 and not summary["bundled_sample"]
    assert (data / "raw_manifest.json").exists()
    # a second download keeps the files (no request) unless forced
    n = len(requests)
    D.download_sources(data / "raw", ["popqa"], mirror=url, quiet=True)
    assert len(requests) == n


def test_failed_download_leaves_no_file(mirror, tmp_path):
    url, _ = mirror
    with pytest.raises(D.DownloadError, match="404"):
        D.fetch(url + "missing.json", tmp_path / "x" / "missing.json", quiet=True)
    assert list((tmp_path / "x").iterdir()) == []


def test_truncated_stream_is_an_error(monkeypatch, tmp_path):
    class Resp(io.BytesIO):
        headers = {"Content-Length": "100"}

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    monkeypatch.setattr(urllib.request, "urlopen", lambda req, timeout=None: Resp(b"only forty bytes of the promised hundred"))
    dest = tmp_path / "raw" / "popqa" / "popQA.tsv"
    with pytest.raises(D.DownloadError, match="got 40 of 100 bytes"):
        D.download_sources(tmp_path / "raw", ["popqa"], quiet=True)
    assert not dest.exists() and not list(dest.parent.iterdir())


def test_cli_download_subcommand(mirror, tmp_path):
    import _data_helpers  # noqa: F401  (puts the repo root on sys.path)

    import build_data
    url, _ = mirror
    out = build_data.cli(["download", "--data-dir", str(tmp_path / "d"), "--sources", "hotpotqa", "--mirror", url, "--quiet"])
    assert out["files"] == [str(tmp_path / "d/raw/hotpotqa/hotpot_train_v1.1.json")]


def test_download_errors_are_one_line(mirror, tmp_path, capsys):
    """Issue 24, item 1: an unreachable mirror and a bad --timeout-s used to end in a traceback."""
    import _data_helpers  # noqa: F401

    import build_data
    url, _ = mirror
    cases = [(["--mirror", "http://127.0.0.1:9/x/"], "popQA.tsv: download failed"),
             (["--mirror", url, "--timeout-s", "0"], "--timeout-s: 0.0 must be > 0"),
             (["--mirror", url, "--timeout-s", "-1"], "--timeout-s: -1.0 must be > 0")]
    for extra, needle in cases:
        rc = build_data.main(["download", "--data-dir", str(tmp_path / "d"), "--sources", "popqa", "--quiet", *extra])
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert rc == 2 and "Traceback" not in err and len(lines) == 1 and needle in lines[0], err[-1500:]


def test_a_zip_slip_member_is_refused_before_anything_is_extracted(tmp_path):
    bad = tmp_path / "wiki-pages.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("wiki-pages/ok.jsonl", "{}\n")
        z.writestr("../../escaped.txt", "x")
    dest = tmp_path / "raw" / "fever"
    with pytest.raises(D.DownloadError, match="unsafe member path '../../escaped.txt'.*nothing was extracted"):
        D._unzip(bad, dest)
    assert not list(dest.rglob("*")) and not (tmp_path / "escaped.txt").exists()
