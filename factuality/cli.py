"""The one entry point every script goes through.

    # train_sft.py
    from factuality import cli
    from factuality.stages.sft import STAGE
    if __name__ == "__main__":
        sys.exit(cli.main(STAGE, __doc__))

It parses the stage's config (YAML + CLI, strict), sets up logging (INFO on the main process,
WARNING on the others), runs `stage.run(cfg) -> dict`, prints the stage's summary on the main
process, and turns every expected error (config, record, hash, missing model or file, unknown raw
format, non-UTF-8 input) into one `error: ...` line on stderr with exit code 2 and no traceback.
`--traceback` (or FACTUALITY_DEBUG=1) shows the traceback instead.
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from . import dist
from .errors import is_expected, one_line

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Stage:
    """A script's shape: its config (a dataclass or a config.StageSpec), `run(cfg) -> dict`, and
    an optional `summary(result) -> str` printed at the end on the main process. A result with
    an `exit_code` key sets the exit code (prompt_schema.py test: 1 when a case fails)."""

    name: str
    config: Any
    run: Callable[[Any], dict]
    summary: Callable[[dict], str] | None = None


def setup_logging(debug: bool = False) -> None:
    level = logging.INFO if dist.is_main_process() else logging.WARNING
    root = logging.getLogger()
    if not root.handlers:
        fmt = "%(asctime)s %(name)s: %(message)s"
        if dist.world_size() > 1:
            fmt = f"[rank {os.environ.get('RANK', '?')}] " + fmt
        logging.basicConfig(level=logging.WARNING, format=fmt, datefmt="%H:%M:%S")
    logging.getLogger("factuality").setLevel(logging.DEBUG if debug else level)


def _debug(argv: Sequence[str]) -> bool:
    return "--traceback" in argv or os.environ.get("FACTUALITY_DEBUG", "") not in ("", "0")


def main(stage: Stage, doc: str | None = None, argv: Sequence[str] | None = None) -> int:
    """Run one stage as a command; returns the exit code (0, 2 for an expected error, 130 on ^C)."""
    from .config import parse_config

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug(argv)
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else stage.name
    try:
        setup_logging(debug)
        cfg = parse_config(stage.config, argv, description=doc, prog=prog)
        result = stage.run(cfg)
        if stage.summary is not None and dist.is_main_process():
            text = stage.summary(result)
            if text:
                print(text, flush=True)
        return int(result.get("exit_code", 0)) if isinstance(result, dict) else 0
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted; run the same command again to continue where it stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - expected errors become one line, the rest keep their traceback
        if debug or not is_expected(e):
            raise
        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
