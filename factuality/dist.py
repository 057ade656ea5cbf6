"""Process state for multi-process runs (`accelerate launch`, `torchrun`), through accelerate.

One process (no WORLD_SIZE, or WORLD_SIZE=1) never imports accelerate; several use accelerate's
`PartialState`, the same singleton the Trainer uses, so every rank agrees on who is main:

    if dist.is_main_process(): prepare the run folder
    dist.wait_for_everyone()          # the others wait until it exists
"""
from __future__ import annotations

import contextlib
import os


def world_size() -> int:
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def state():
    """accelerate's PartialState (a process-wide singleton): on a machine without CUDA, several
    processes are MULTI_CPU ranks over gloo, as `accelerate launch --cpu` makes them."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    return world_size() == 1 or state().is_main_process


def process_index() -> int:
    return 0 if world_size() == 1 else state().process_index


def wait_for_everyone() -> None:
    if world_size() > 1:
        state().wait_for_everyone()


@contextlib.contextmanager
def main_process_first():
    """The main process runs the block first (e.g. writes a cache); the others then run it."""
    if world_size() == 1:
        yield
        return
    with state().main_process_first():
        yield
