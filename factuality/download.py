"""Download the raw datasets from their official URLs into `{data_dir}/raw/<layout>`.

The URLs and target paths are each dataset module's `DOWNLOADS` (factuality/sources/<name>.py).
Each file is streamed to a temp file beside its target and renamed into place only when complete
(gunzip / unzip happen on the temp copy first), so an interrupted download never leaves a file
that looks whole; the temp files of an interrupted download are removed by the next one. Existing files are kept unless `--force`. The files then go through the same
sha256 manifest check as any raw input: the first build after a download needs
`--accept-new-hash`.

    python build_data.py download --data-dir data --sources fever,hotpotqa,nq,popqa
"""
from __future__ import annotations

import gzip
import os
import shutil
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from . import sources
from .errors import UserError
from .records import DEFAULT_SOURCES, SOURCES, atomic_open
from .sources import RemoteFile

OFFICIAL: dict[str, list[RemoteFile]] = {name: sources.downloads(name) for name in sources.REGISTRY}


@dataclass
class DownloadConfig:
    data_dir: str = field(default="data", metadata={"help": "files go to {data_dir}/raw/<source>/..."})
    sources: list[str] = field(default_factory=lambda: list(DEFAULT_SOURCES), metadata={
        "help": "datasets to fetch, comma separated (fever,hotpotqa,nq,popqa); nq and popqa share the "
                "13 GB DPR passage corpus psgs_w100.tsv"})
    mirror: str | None = field(default=None, metadata={
        "help": "base URL of a mirror holding the same file names (e.g. http://host/datasets/); replaces each "
                "official URL's folder"})
    force: bool = field(default=False, metadata={"help": "download again even when the target exists"})
    timeout_s: float = field(default=60.0, metadata={"gt": 0, "help": "socket timeout per read, seconds"})
    quiet: bool = field(default=False, metadata={"help": "no progress bars"})

    def validate(self) -> None:
        bad = [s for s in self.sources if s not in OFFICIAL]
        if bad:
            raise ValueError(f"sources: unknown source {bad[0]!r}; choose from {', '.join(OFFICIAL)}")
        by_hand = [s for s in self.sources if not OFFICIAL[s]]
        if by_hand:
            raise ValueError(f"sources: {by_hand[0]!r} has no single-file download (ALCE ships its data as one "
                             f"tarball, Trust-Eval through its own tool): place its JSON files under "
                             f"{self.data_dir}/raw/{by_hand[0]}/ and run build_data.py --sources {by_hand[0]}")


class DownloadError(UserError, RuntimeError):
    """A download that failed: the message names the URL, the reason and what to do (one error line)."""


def _url(rf: RemoteFile, mirror: str | None) -> str:
    if not mirror:
        return rf.url
    return mirror.rstrip("/") + "/" + rf.url.rsplit("/", 1)[1]


def fetch(url: str, dest: Path, timeout_s: float = 60.0, quiet: bool = False) -> Path:
    """Stream `url` to a temp file in dest's folder, then rename it to `dest` (records.atomic_open)."""
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "factuality-build-data/0.1"})
        with atomic_open(dest, "wb") as out, urllib.request.urlopen(req, timeout=timeout_s) as resp:
            total = resp.headers.get("Content-Length")
            with tqdm(total=int(total) if total else None, unit="B", unit_scale=True, desc=dest.name,
                      disable=quiet, leave=False) as bar:
                while block := resp.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
            if total and out.tell() != int(total):
                raise DownloadError(f"{url}: got {out.tell()} of {total} bytes; the connection was cut, run again")
    except DownloadError:
        raise
    except Exception as e:
        raise DownloadError(f"{url}: download failed ({type(e).__name__}: {e}); check the network or pass "
                            "--mirror with a reachable copy") from e
    return dest


def _gunzip(src: Path, dest: Path) -> None:
    with atomic_open(dest, "wb") as out, gzip.open(src, "rb") as f:
        shutil.copyfileobj(f, out, 1 << 20)


def _unzip(src: Path, dest_dir: Path) -> list[Path]:
    """Extract into a temp folder beside dest_dir, then move each member into place."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = dest_dir / ".unzip.tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)   # left by an interrupted unzip
    tmp_dir.mkdir()
    out = []
    try:
        with zipfile.ZipFile(src) as z:
            members = [i for i in z.infolist() if not i.is_dir()]
            for info in members:          # every name checked before anything is extracted
                name = Path(info.filename)
                if name.is_absolute() or ".." in name.parts or info.filename.startswith(("/", "\\")):
                    raise DownloadError(f"{src}: unsafe member path {info.filename!r} (it would be written outside "
                                        f"{dest_dir}); nothing was extracted: get the archive from a trusted copy")
            for info in members:
                z.extract(info, tmp_dir)
            for p in sorted(tmp_dir.rglob("*")):
                if p.is_file():
                    target = dest_dir / p.relative_to(tmp_dir)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(p, target)
                    out.append(target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out


def download_sources(raw_dir: str | Path, sources, mirror: str | None = None, force: bool = False,
                     timeout_s: float = 60.0, quiet: bool = False) -> list[Path]:
    """Fetch every official file of `sources` into raw_dir; returns the files written or kept."""
    raw_dir = Path(raw_dir)
    done: dict[str, list[Path]] = {}
    for source in sources:
        for rf in OFFICIAL[source]:
            if rf.dest in done:
                continue
            target = raw_dir / rf.dest
            marker = target / f".{rf.url.rsplit('/', 1)[1]}.complete" if rf.unpack == "unzip" else target
            if marker.exists() and not force:
                done[rf.dest] = [target]
                if not quiet:
                    print(f"kept {target} (exists; --force to fetch again)")
                continue
            url = _url(rf, mirror)
            if not quiet:
                print(f"downloading {url} -> {target}")
            if rf.unpack == "none":
                done[rf.dest] = [fetch(url, target, timeout_s, quiet)]
                continue
            target_dir = target if rf.unpack == "unzip" else target.parent
            packed = target_dir / f".{rf.url.rsplit('/', 1)[1]}.download"   # the packed file, removed below
            try:
                fetch(url, packed, timeout_s, quiet)
                if rf.unpack == "gunzip":
                    _gunzip(packed, target)
                    done[rf.dest] = [target]
                else:
                    done[rf.dest] = _unzip(packed, target)
                    marker.write_text(url + "\n")
            except (OSError, zipfile.BadZipFile, EOFError) as e:
                raise DownloadError(f"{url}: could not unpack ({type(e).__name__}: {e}); run again") from e
            finally:
                if packed.exists():
                    packed.unlink()
    files = sorted({p for ps in done.values() for p in ps})
    if not quiet:
        print(f"{len(files)} raw file(s) under {raw_dir}; next: python build_data.py --data-dir "
              f"{raw_dir.parent} --accept-new-hash (records their sha256)")
    return files


def main(cfg: DownloadConfig) -> dict:
    files = download_sources(Path(cfg.data_dir) / "raw", cfg.sources, cfg.mirror, cfg.force, cfg.timeout_s, cfg.quiet)
    return {"files": [str(p) for p in files], "raw_dir": str(Path(cfg.data_dir) / "raw")}


def _stage():
    from .cli import Stage

    return Stage("build_data download", DownloadConfig, main,
                 lambda r: f"downloaded {len(r['files'])} files under {r['raw_dir']}")


STAGE = _stage()
