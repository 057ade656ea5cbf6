"""Writing that leaves nothing half-written: one file to a temp file beside the target renamed over
it (`atomic_open`), a set of files that belong together (a build's splits and run card) into a temp
folder swapped in with one rename (`atomic_dir`, an atomic exchange where the kernel has one), so a
kill leaves the old set or the new one, and the next writer removes the leftovers. JSONL written
validated (`write_jsonl`) or appended and fsynced line by line (`JsonlAppender`, for resumable
outputs). Files get the user's umask, never private temp-file modes. `fault_point` names each step
of a commit so tests can kill a real run there."""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import logging
import os
import re
import secrets
import shutil
import signal
import string
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from .contracts import Contract

# --------------------------------------------------------------------------------------------
# Fault injection (tests): kill the process at a named step of a multi-file write
# --------------------------------------------------------------------------------------------
KILL_AT_ENV = "FACTUALITY_TEST_KILL_AT"     # =<step name>: SIGKILL this process when it reaches that step
TRACE_ENV = "FACTUALITY_TEST_TRACE"         # =<file>: append the name of every step reached (to list them)


def fault_point(name: str) -> None:
    """A named step of an output commit. Does nothing unless a test set the environment above."""
    trace = os.environ.get(TRACE_ENV)
    if trace:
        with open(trace, "a", encoding="utf-8") as f:
            f.write(name + "\n")
    if os.environ.get(KILL_AT_ENV) == name:
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


# --------------------------------------------------------------------------------------------
# Atomic writing: one file (atomic_open), a set of files (atomic_dir)
# --------------------------------------------------------------------------------------------
# Temp names: `.{target name}.{8 random chars}{suffix}` beside the target, so leftovers of a killed
# run are recognised (and removed) by the next writer of the same target and by no one else.
_TOKEN_CHARS = string.ascii_lowercase + string.digits
_TMP, _NEW, _OLD = ".tmp", ".new", ".old"


def _temp_path(target: Path, suffix: str) -> Path:
    return target.parent / f".{target.name}.{''.join(secrets.choice(_TOKEN_CHARS) for _ in range(8))}{suffix}"


def _leftovers(target: Path, suffixes: tuple[str, ...]) -> list[Path]:
    pattern = re.compile(rf"\.{re.escape(target.name)}\.[{_TOKEN_CHARS}]{{8}}({'|'.join(map(re.escape, suffixes))})")
    if not target.parent.is_dir():
        return []
    return sorted(p for p in target.parent.iterdir() if pattern.fullmatch(p.name))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):   # not every platform / file system lets a folder be fsynced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def apply_umask(root: str | os.PathLike) -> None:
    """Give every file and folder under `root` the mode a plain open/mkdir would (0o666 / 0o777
    less the umask): libraries that save through private temp files leave 0o600 behind."""
    mask = os.umask(0)
    os.umask(mask)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            p = os.path.join(dirpath, name)
            full = 0o777 if os.stat(p).st_mode & 0o111 else 0o666  # executables keep their x bits
            os.chmod(p, full & ~mask)
        for name in dirnames:
            p = os.path.join(dirpath, name)
            os.chmod(p, 0o777 & ~mask)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temp file beside `path`; on clean exit fsync and rename it over `path`.

    On an exception the temp file is removed and `path` is left as it was; temp files left by a
    killed earlier write of the same `path` are removed first. The file gets the mode a plain
    `open` would give (0o666 less the umask), not mkstemp's private 0o600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in _leftovers(path, (_TMP,)):
        _remove(stale)
    while True:
        tmp = _temp_path(path, _TMP)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def json_text(obj: Any) -> str:
    """The JSON form of every JSON file this suite writes (indented, UTF-8, trailing newline)."""
    return json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json_text(obj))


_libc = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2 RENAME_EXCHANGE, macOS renamex_np
    RENAME_SWAP). False where the platform or file system has no such call (then two renames)."""
    global _libc
    if os.environ.get("FACTUALITY_NO_RENAME_EXCHANGE"):   # tests: take the two-rename path
        return False
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        except OSError:
            _libc = False
    if not _libc:
        return False
    src, dst = os.fsencode(a), os.fsencode(b)
    if hasattr(_libc, "renameat2"):
        rc = _libc.renameat2(-100, src, -100, dst, 2)        # AT_FDCWD, RENAME_EXCHANGE
    elif hasattr(_libc, "renamex_np"):
        rc = _libc.renamex_np(src, dst, 2)                   # RENAME_SWAP
    else:
        return False
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, getattr(errno, "EOPNOTSUPP", errno.ENOTSUP)):
        return False
    raise OSError(err, os.strerror(err), str(b))


log = logging.getLogger(__name__)
PENDING_DIR = ".pending"   # inside a committed set: files to place outside it, right after the commit


_STAGED: dict[str, set[str]] = {}   # temp set folder -> the destinations this process staged into it


def stage_outside(set_dir: str | os.PathLike, dest: str | os.PathLike, data: str | bytes) -> None:
    """Part of a set that lives outside its folder (e.g. the raw-hash manifest): written to `dest`
    right after the set is committed, and by the next `recover_dir` when a kill came in between
    (only to a destination that run names itself: `allowed`)."""
    pending = Path(set_dir) / PENDING_DIR
    pending.mkdir(exist_ok=True)
    n = len(list(pending.glob("*.dest")))
    (pending / f"{n:04d}").write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    (pending / f"{n:04d}.dest").write_text(str(Path(dest).resolve()), encoding="utf-8")
    _STAGED.setdefault(str(Path(set_dir).resolve()), set()).add(str(Path(dest).resolve()))


def _place_pending(target: Path, allowed: Iterable[str | os.PathLike]) -> None:
    """Write the files a committed set places outside itself, each only where the running code
    says it may go (`allowed`): a destination read from the folder is data, never a write target
    on its own (a planted `.pending/*.dest` naming any path is dropped with a warning)."""
    pending = target / PENDING_DIR
    if not pending.is_dir():
        return
    ok = {str(Path(a).resolve()) for a in allowed}
    for dest_file in sorted(pending.glob("*.dest")):
        data_file = dest_file.with_suffix("")
        named = dest_file.read_text(encoding="utf-8", errors="replace")
        if named not in ok:
            log.warning("%s: names %s, which this run does not write; dropped (a file planted in the folder, or "
                        "left by a run with other outputs)", dest_file, named[:300])
        elif data_file.exists():
            dest = Path(named)
            atomic_write_bytes(dest, data_file.read_bytes())
            fault_point(f"set:placed:{dest.name}")
        data_file.unlink(missing_ok=True)
        dest_file.unlink()
    shutil.rmtree(pending, ignore_errors=True)


def recover_dir(target: str | os.PathLike, allowed: Iterable[str | os.PathLike] = ()) -> None:
    """Finish or undo what a killed `atomic_dir` commit of `target` left, so `target` holds one whole set.

    A complete new set waiting beside an absent target (killed between the two renames of the
    fallback swap) is moved in; an old set put aside is restored when nothing replaced it, else
    removed; unfinished temp folders and temp files are removed; files the committed set still
    had to place outside itself are placed, where `allowed` (the caller's own outputs) lists them.
    """
    target = _real(target)
    if not target.exists():
        ready = _leftovers(target, (_NEW,)) or _leftovers(target, (_OLD,))
        if ready:
            os.rename(ready[0], target)
            _fsync_dir(target.parent)
    for stale in _leftovers(target, (_TMP, _NEW, _OLD)):
        _remove(stale)
    if target.is_dir():
        for stale in target.iterdir():   # temp files of per-file atomic writes killed inside the set
            if re.fullmatch(r"\..+\.[a-z0-9_]{8}\.tmp", stale.name) and stale.is_file():
                stale.unlink()
        _place_pending(target, allowed)


def _real(target: str | os.PathLike) -> Path:
    """A folder reached through a symlink is replaced where it really is (the link stays a link)."""
    target = Path(target)
    return target.resolve() if target.is_symlink() else target


def _link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:   # a file system without hard links
        shutil.copy2(src, dst, follow_symlinks=False)


def _carry_over(old: Path, new: Path) -> None:
    """Entries of the old folder that the new set does not write are kept (hard links: no copy)."""
    for entry in old.iterdir():
        dst = new / entry.name
        if dst.exists() or dst.is_symlink() or entry.name == PENDING_DIR:
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), dst)
        elif entry.is_dir():
            shutil.copytree(entry, dst, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, dst)
    shutil.copymode(old, new)


def _commit_dir(tmp: Path, target: Path) -> None:
    for root, _, files in os.walk(tmp):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))
    if not target.exists():
        fault_point("set:ready")
        os.rename(tmp, target)
    else:
        if not target.is_dir():
            raise FileExistsError(f"{target}: exists and is not a folder; the outputs are a folder of files. "
                                  "Move it away or choose another output folder")
        _carry_over(target, tmp)
        fault_point("set:ready")
        if _exchange(tmp, target):          # tmp now holds the old set
            fault_point("set:swapped")
            _remove(tmp)
        else:
            new = _temp_path(target, _NEW)
            os.rename(tmp, new)             # complete: recover_dir moves it in if killed below
            fault_point("set:new_ready")
            old = _temp_path(target, _OLD)
            os.rename(target, old)
            fault_point("set:old_aside")
            os.rename(new, target)
            fault_point("set:swapped")
            _remove(old)
    _fsync_dir(target.parent)
    fault_point("set:committed")


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, allowed: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Write a set of files as one: yields an empty temp folder beside `target` to write into.

    On clean exit every file in it is fsynced and the folder replaces `target` in one atomic
    rename (an exchange with the old folder where the platform has one; elsewhere two renames
    that `recover_dir` completes after a kill). Entries of the old `target` that the new set does
    not write are kept (hard-linked across). Files given to `stage_outside` are placed after the
    commit. On an exception the temp folder is removed and `target` is left as it was. Leftovers
    of a killed earlier commit are cleaned up first (`recover_dir`, with `allowed`). One writer per target.

        with atomic_dir("data/processed") as tmp:
            (tmp / "train.jsonl").write_text(...)
            write_run_card(tmp / "run_card.json", card)    # lists each file's sha256
    """
    target = _real(target)
    recover_dir(target, allowed)
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = _temp_path(target, _TMP)
        try:
            os.mkdir(tmp, 0o777)            # the umask decides who may read it, as for any new folder
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        _commit_dir(tmp, target)
    except BaseException:
        _STAGED.pop(str(tmp.resolve()), None)
        _remove(tmp)
        raise
    _place_pending(target, {*map(str, allowed), *_STAGED.pop(str(tmp.resolve()), set())})


_CLAIMS: dict[str, tuple[int, Path, list[Path]]] = {}   # target -> (lock fd, lock file, folders made for it)


def claim(target: str | os.PathLike) -> None:
    """Claim the right to write `target` (a run folder, a results file) while this process runs it:
    an exclusive lock on `.<name>.lock` beside it. A second process that claims the same target
    fails at once with one line instead of both writing and one result being lost. `release` (or
    the end of the process: a killed run leaves at most an empty lock file) gives it back and
    removes the lock file and the folders made for it, so a run that fails leaves nothing behind.
    A claim this process already holds is kept."""
    import fcntl

    key = str(Path(target).resolve())
    if key in _CLAIMS:
        return
    lock = Path(key).parent / f".{Path(key).name}.lock"
    made = [d for d in [lock.parent, *lock.parent.parents] if not d.exists()]
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise FileExistsError(f"{target}: another run is writing here now (it holds {lock}); wait for it to finish, "
                              f"or choose another output") from None
    _CLAIMS[key] = (fd, lock, made)


def release(target: str | os.PathLike) -> None:
    held = _CLAIMS.pop(str(Path(target).resolve()), None)
    if held is None:
        return
    fd, lock, made = held
    lock.unlink(missing_ok=True)   # while still held: a later claim creates a fresh lock file
    os.close(fd)
    for d in made:                 # deepest first; only folders the claim made and nothing else filled
        try:
            d.rmdir()
        except OSError:
            break


def releasing_claims(run: Callable) -> Callable:
    """A stage's run that gives back the claims it took when it returns or fails (a later run in the
    same process, or another process after it, may then write there)."""
    import functools

    @functools.wraps(run)
    def wrapper(*args, **kwargs):
        before = set(_CLAIMS)
        try:
            return run(*args, **kwargs)
        finally:
            for key in set(_CLAIMS) - before:
                release(key)

    return wrapper


def dumps_line(rec: dict) -> str:
    return json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n"


def write_jsonl(path: str | os.PathLike, records: Iterable[dict], contract: Contract | None = None) -> int:
    """Validate (when a contract is given) and atomically write records; returns the count.

    Validation happens before anything is renamed into place: a bad record leaves `path` as it was.
    """
    n = 0
    with atomic_open(path) as f:
        for n, rec in enumerate(records, start=1):
            if contract is not None:
                contract.validate(rec, where=f"{path}: record {n} (id={rec.get('id')!r})")
            f.write(dumps_line(rec))
    return n


class JsonlAppender:
    """Append-only JSONL for resumable runs: each line is flushed and fsynced as it is written.

    A line torn by a kill (no trailing newline) is cut off on reopen, so a resumed run never
    reads half a record.
    """

    def __init__(self, path: str | os.PathLike, contract: Contract | None = None):
        self.path = Path(path)
        self.contract = contract
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):
                keep = data.rfind(b"\n") + 1
                with open(self.path, "r+b") as f:
                    f.truncate(keep)
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, rec: dict) -> None:
        self.write_many([rec])

    def write_many(self, recs: Sequence[dict]) -> None:
        """Validate every record, then append them with one flush and fsync (a batch of results)."""
        if self.contract is not None:
            for rec in recs:
                self.contract.validate(rec, where=f"{self.path}: id={rec.get('id')!r}")
        self._f.write("".join(dumps_line(rec) for rec in recs))
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


