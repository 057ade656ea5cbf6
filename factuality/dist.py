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


def gather_object(obj) -> list:
    """`obj` of every process, in rank order (accelerate's gather_object); [obj] in one process."""
    if world_size() == 1:
        return [obj]
    from accelerate.utils import gather_object as gather

    state()
    return list(gather([obj]))


def split_between_processes(items):
    """This process's share of `items`: a contiguous slice, in order (accelerate's
    `PartialState.split_between_processes`); the shares of all ranks, concatenated, are `items`."""
    items = list(items)
    if world_size() == 1:
        return items
    with state().split_between_processes(items) as part:
        return list(part)


class RankParts:
    """One JSONL output written by several processes: each rank appends to its own part file
    (`<name>.rank<k>.part`, records.JsonlAppender: fsynced per line, a torn last line cut on
    reopen), then the main process checks each part against the hash its rank recorded when it
    finished and appends the rows to the target in input order.

        parts = RankParts(path, CONTRACT)
        parts.fold_leftovers()          # parts of a run that died join the target (main; others wait)
        with parts.open() as out: ...   # one process: the target itself; several: this rank's part
        parts.merge(order=lambda row: ...)

    A rank that dies leaves its part: the next run (any number of processes) folds its finished
    rows into the target before deciding what is left to do, so nothing finished is redone.
    """

    def __init__(self, target, contract=None, key=lambda row: row["id"]):
        from pathlib import Path

        self.target, self.contract, self.key = Path(target), contract, key  # key(row): what must not repeat

    def part(self, rank: int):
        return self.target.with_name(f"{self.target.name}.rank{rank}.part")

    def marker(self, rank: int):
        return self.target.with_name(f"{self.target.name}.rank{rank}.done.json")

    def leftovers(self) -> list:
        return sorted(self.target.parent.glob(f"{self.target.name}.rank*.part"))

    def _rows(self, path) -> list[dict]:
        from .records import JsonlAppender, read_jsonl

        JsonlAppender(path, self.contract).close()  # cuts a line torn by a kill before it is read
        return read_jsonl(path, self.contract, allow_empty=True) if path.stat().st_size else []

    def _append(self, rows: list[dict]) -> None:
        from .records import JsonlAppender, RecordError

        have = {self.key(r) for r in self._rows(self.target)} if self.target.exists() else set()
        with JsonlAppender(self.target, self.contract) as out:
            for r in rows:
                if self.key(r) in have:
                    raise RecordError(f"{self.target}: row {self.key(r)!r} is already there and in a rank's part; "
                                      f"the output was mixed: rerun with --overwrite")
                have.add(self.key(r))
                out.write(r)

    def fold_leftovers(self) -> int:
        """Main process: rows of parts left by an earlier run (a rank died, or the run was killed)
        that the target lacks are appended to it, and the parts removed; the others wait.
        Returns the number of rows folded in."""
        folded = 0
        if is_main_process():
            have = {self.key(r) for r in self._rows(self.target)} if self.target.exists() else set()
            for part in self.leftovers():
                rows = [r for r in self._rows(part) if self.key(r) not in have]
                self._append(rows)
                have.update(self.key(r) for r in rows)
                folded += len(rows)
                part.unlink()
                done = part.with_name(part.name[:-len(".part")] + ".done.json")
                if done.exists():
                    done.unlink()
        wait_for_everyone()
        return folded

    def open(self):
        """The JsonlAppender this process writes to."""
        from .records import JsonlAppender

        if world_size() == 1:
            return JsonlAppender(self.target, self.contract)
        self.marker(process_index()).unlink(missing_ok=True)
        return JsonlAppender(self.part(process_index()), self.contract)

    def finish(self) -> None:
        """This rank is done: record its part's sha256 and row count beside it."""
        from .records import atomic_write_json, sha256_file

        rank = process_index()
        part = self.part(rank)
        if not part.exists():
            part.touch()
        atomic_write_json(self.marker(rank), {"rank": rank, "world_size": world_size(), "sha256": sha256_file(part),
                                              "rows": len(self._rows(part))})

    def merge(self, order=None) -> int:
        """Every rank: `finish`; main: check each part against what its rank recorded, append all
        rows to the target sorted by `order(row)` (input order), remove the parts. Returns the
        number of rows merged (0 with one process: the rows went to the target)."""
        import json

        from .records import RecordError, sha256_file

        if world_size() == 1:
            return 0
        self.finish()
        wait_for_everyone()
        merged = 0
        if is_main_process():
            rows: list[dict] = []
            for r in range(world_size()):
                part, marker = self.part(r), self.marker(r)
                if not marker.exists():
                    raise RecordError(f"{marker}: rank {r} did not record its part; rerun to finish it")
                mark = json.loads(marker.read_text(encoding="utf-8"))
                got = sha256_file(part)
                if got != mark["sha256"]:
                    raise RecordError(f"{part}: sha256 {got[:12]} is not the {mark['sha256'][:12]} rank {r} recorded "
                                      f"when it finished; the part changed since: rerun with --overwrite")
                part_rows = self._rows(part)
                if len(part_rows) != mark["rows"]:
                    raise RecordError(f"{part}: {len(part_rows)} rows where rank {r} wrote {mark['rows']}")
                rows += part_rows
            if order is not None:
                rows.sort(key=order)
            self._append(rows)
            merged = len(rows)
            for r in range(world_size()):
                self.part(r).unlink()
                self.marker(r).unlink()
        wait_for_everyone()
        return merged
