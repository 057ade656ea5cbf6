"""Build the grounded-QA corpus: raw FEVER / HotpotQA / NQ / PopQA -> data/processed/{train,val,test}.jsonl

    python build_data.py                                              # the bundled sample (data/sample)
    python build_data.py --data-dir data --seed 42 --accept-new-hash  # your raw files under data/raw
    python build_data.py -c configs/data.yaml --num-distractors 4 --rejects data/rejects.jsonl
    python build_data.py download --data-dir data --sources fever,hotpotqa,nq,popqa

Every option and why it exists: configs/data.yaml, and the help of factuality.stages.build.BuildConfig
(`python build_data.py -h`; `python build_data.py download -h` for the downloader).
"""
import sys

from factuality import cli as entry
from factuality.stages.build import STAGE as BUILD
from factuality.config import parse_config
from factuality.download import STAGE as DOWNLOAD


def _pick(argv: list[str]) -> tuple[entry.Stage, list[str]]:
    return (DOWNLOAD, argv[1:]) if argv[:1] == ["download"] else (BUILD, argv)


def cli(argv: list[str] | None = None) -> dict:
    """Run from Python (tests, notebooks): errors raise instead of exiting."""
    stage, rest = _pick(list(sys.argv[1:] if argv is None else argv))
    return stage.run(parse_config(stage.config, rest, description=__doc__))


def main(argv: list[str] | None = None) -> int:
    stage, rest = _pick(list(sys.argv[1:] if argv is None else argv))
    return entry.main(stage, __doc__, rest)


if __name__ == "__main__":
    sys.exit(main())
