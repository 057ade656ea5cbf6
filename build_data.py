"""Build the grounded-QA corpus: raw FEVER / HotpotQA / NQ / PopQA -> data/processed/{train,val,test}.jsonl

    python build_data.py                                              # the bundled sample (data/sample)
    python build_data.py --data-dir data --seed 42 --accept-new-hash  # your raw files under data/raw
    python build_data.py -c configs/data.yaml --num-distractors 4 --rejects data/rejects.jsonl
    python build_data.py download --data-dir data --sources fever,hotpotqa,nq,popqa

Every option and why it exists: configs/data.yaml, and the help of factuality.build.BuildConfig
(`python build_data.py -h`; `python build_data.py download -h` for the downloader).
"""
from __future__ import annotations

import sys

from factuality.build import BuildConfig, main
from factuality.config import parse_config
from factuality.download import DownloadConfig
from factuality.download import main as download_main


def cli(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "download":
        return download_main(parse_config(DownloadConfig, argv[1:], description="Download the raw datasets."))
    return main(parse_config(BuildConfig, argv, description=__doc__.splitlines()[0]))


if __name__ == "__main__":
    cli()
