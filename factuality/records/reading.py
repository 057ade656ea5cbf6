"""Strict reading: every JSONL row validated against its contract when read, a bad row stops the run
with `path:line: field: problem` (or, with a rejects file, is set aside and counted: `Rejects`);
bytes that are not UTF-8 are reported with file, line and byte offset; gzip is read transparently;
a file whose folder holds a run card listing its sha256 is checked against it
(`check_against_run_card`). Nothing is dropped silently."""
from __future__ import annotations

import codecs
import contextlib
import gzip
import json
import os
import re
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .contracts import EXAMPLE, Contract, RecordError, sha256_file
from .files import JsonlAppender


# --------------------------------------------------------------------------------------------
# Bad records: one location type, one rejects-file format, one sink for every reader
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Where:
    """Where a record sits: `file:line` (line-based files) or `file[index]` (JSON arrays)."""

    file: str
    line: int | None = None
    index: int | None = None

    def __str__(self) -> str:
        if self.line is not None:
            return f"{self.file}:{self.line}"
        return f"{self.file}[{self.index}]" if self.index is not None else self.file

    @classmethod
    def parse(cls, text: str) -> Where:
        """The inverse of str(): 'file:line', 'file[index]' or a bare file."""
        m = re.fullmatch(r"(.+):(\d+)", text)
        if m:
            return cls(m.group(1), line=int(m.group(2)))
        m = re.fullmatch(r"(.+)\[(\d+)\]", text)
        return cls(m.group(1), index=int(m.group(2))) if m else cls(text)


REJECT_SCHEMA: dict[str, Any] = {
    "title": "a malformed record set aside (the rejects file of every reader)",
    "type": "object",
    "required": ["where", "file", "line", "field", "problem", "raw"],
    "properties": {
        "where": {"type": "string", "description": "file:line or file[index], as in the error message"},
        "file": {"type": "string"},
        "line": {"type": ["integer", "null"], "description": "1-based line; null in a JSON array file"},
        "index": {"type": "integer", "description": "position in a JSON array file"},
        "byte": {"type": "integer", "description": "file offset of the first byte that is not UTF-8"},
        "field": {"type": "string", "description": "the field at fault, or (line) / (record) / (encoding)"},
        "problem": {"type": "string"},
        "raw": {"type": "string", "description": "the record as read (bytes that are not UTF-8 as \\xNN)"},
    },
}
REJECT = Contract("reject", REJECT_SCHEMA)


def _split_problem(problem: str) -> tuple[str, str]:
    """'field: problem' (Contract.problem's form) -> (field, problem)."""
    m = re.match(r"([\w.\[\]()-]+): (.*)", problem, flags=re.DOTALL)
    return (m.group(1), m.group(2)) if m else ("(record)", problem)


def printable(raw: Any) -> str:
    """A raw record as text for messages and rejects rows: undecodable bytes become \\xNN."""
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "backslashreplace")
    if not isinstance(raw, str):
        raw = json.dumps(raw, ensure_ascii=False, default=str)
    return raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class Rejects:
    """Where malformed records go: by default the first one raises RecordError
    `file:line: field: problem` (plus `hint`); with `path` each is appended there as a REJECT row,
    with `collect=True` each is kept in `items` (for a caller that writes them with its outputs).
    """

    def __init__(self, path: str | os.PathLike | None = None, collect: bool = False, hint: str | None = None):
        self.path, self.collect, self.hint = path, collect, hint
        self.items: list[dict] = []
        self.count = 0
        self._out: JsonlAppender | None = None

    @property
    def raising(self) -> bool:
        return self.path is None and not self.collect

    def report(self, where: Where | str, field_name: str, problem: str, raw: Any = None,
               byte: int | None = None) -> None:
        msg = f"{where}: {field_name}: {problem}"
        if self.raising:
            raise RecordError(f"{msg}; {self.hint}" if self.hint else msg)
        loc = where if isinstance(where, Where) else Where.parse(str(where))
        row = {"where": str(where), "file": loc.file, "line": loc.line, "field": field_name, "problem": problem,
               "raw": printable(raw if raw is not None else "")}
        if loc.index is not None:
            row["index"] = loc.index
        if byte is not None:
            row["byte"] = byte
        self.count += 1
        if self.path is None:
            self.items.append(row)
            return
        if self._out is None:
            self._out = JsonlAppender(self.path, REJECT)
        self._out.write(row)

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


# --------------------------------------------------------------------------------------------
# Strict reading: UTF-8 checked per line, JSONL, JSON, run-card check
# --------------------------------------------------------------------------------------------
def _not_utf8(data: bytes, pos: int, data_offset: int = 0) -> tuple[int, str]:
    """(file offset, problem) for the undecodable byte at data[pos]; `data` starts at `data_offset` in the file."""
    column = pos - (data.rfind(b"\n", 0, pos) + 1) + 1
    offset = data_offset + pos
    return offset, (f"byte 0x{data[pos]:02x} at byte offset {offset} (column {column}) is not UTF-8; "
                    "re-save the file as UTF-8 or re-download it")


GZIP_MAGIC = b"\x1f\x8b"


def refuse_non_file(path: str | os.PathLike) -> None:
    """An input must be a regular file: reading a named pipe waits forever for a writer, a device
    never ends. (A path that does not exist is left to the caller's own message.)"""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a named pipe" if stat.S_ISFIFO(mode) else "not a regular file"
        raise RecordError(f"{path}: is {kind}; give a regular file (copy the data to one first)")


def is_gzip(path: str | os.PathLike) -> bool:
    """Whether a file is gzip-compressed, by its first two bytes (not its name)."""
    refuse_non_file(path)
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


@contextlib.contextmanager
def open_bytes(path: str | os.PathLike) -> Iterator[Any]:
    """A file opened for reading bytes, decompressed when it is gzip (detected by content). A gzip
    stream that is cut short or corrupt is a RecordError naming the file (byte offsets in messages
    about such a file count in the decompressed data)."""
    path = Path(path)
    if not is_gzip(path):
        with open(path, "rb") as f:
            yield f
        return
    try:
        with gzip.open(path, "rb") as f:
            yield f
    except (OSError, EOFError, zlib.error) as e:
        raise RecordError(f"{path}: (gzip): the compressed data is damaged or cut short ({e}); re-download or "
                          "re-compress the file") from None


def read_bytes(path: str | os.PathLike) -> bytes:
    """The whole file, decompressed when it is gzip (`open_bytes`)."""
    with open_bytes(path) as f:
        return f.read()


def decode_lines(path: Path, bad: Rejects) -> Iterator[tuple[int, str | None, bytes]]:
    """(line number, text or None when not UTF-8 (reported to `bad`), raw bytes) of each line
    (of the decompressed data when the file is gzip)."""
    offset = 0
    with open_bytes(path) as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                byte, problem = _not_utf8(raw, e.start, offset)
                bad.report(Where(str(path), lineno), "(encoding)", problem, raw.rstrip(b"\r\n"), byte=byte)
                text = None
            offset += len(raw)
            yield lineno, text, raw


def _require_file(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file; check the path (or run the step that writes it)")
    refuse_non_file(path)


def iter_json_lines(path: str | os.PathLike, bad: Rejects, expected: str = "JSON objects, one a line",
                    allow_empty: bool = False, stats: dict | None = None,
                    skip: Callable[[str], bool] | None = None) -> Iterator[tuple[Where, dict, str]]:
    """(where, object, line) of each non-blank line of a JSONL file: the one JSONL reader.

    A line that is not UTF-8, not JSON or not an object goes to `bad`; blank lines are skipped
    (counted in `stats["blank"]`). A file with no non-blank line is refused unless `allow_empty`,
    with a message that says what was `expected`. `skip(line)`, when given, is asked about each
    decoded non-blank line before it is parsed: a line it answers True for is passed over unparsed
    (a reader that can tell from the start of a line that it does not want the record).
    """
    path = Path(path)
    _require_file(path)
    stats = stats if stats is not None else {}
    stats.setdefault("blank", 0)
    seen_any = False
    for lineno, line, raw in decode_lines(path, bad):
        if line is None:
            seen_any = True
            continue
        if not line.strip():
            stats["blank"] += 1
            continue
        seen_any = True
        if skip is not None and skip(line):
            continue
        where = Where(str(path), lineno)
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            bad.report(where, "(line)", f"not valid JSON ({e.msg} at column {e.colno})", line.rstrip("\r\n"))
            continue
        except RecursionError:
            bad.report(where, "(line)", "JSON nested deeper than can be read", line.rstrip("\r\n")[:200])
            continue
        if not isinstance(rec, dict):
            bad.report(where, "(line)", "a JSON object is expected", line.rstrip("\r\n"))
            continue
        yield where, rec, line
    if not seen_any and not allow_empty:
        raise RecordError(f"{path}: the file is empty (no records); expected {expected}. Check that it was "
                          "written completely (or re-download / rebuild it)")


def _surrogates(obj: Any) -> int:
    """How many undecodable bytes (surrogateescape characters) a decoded JSON value holds."""
    if isinstance(obj, str):
        return sum(1 for ch in obj if "\udc80" <= ch <= "\udcff")
    if isinstance(obj, dict):
        return sum(_surrogates(k) + _surrogates(v) for k, v in obj.items())
    if isinstance(obj, list):
        return sum(_surrogates(v) for v in obj)
    return 0


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


UNDECODABLE = type("Undecodable", (), {"__repr__": lambda self: "UNDECODABLE"})()


def read_json(path: str | os.PathLike, bad: Rejects | None = None, expected: str = "a JSON document") -> Any:
    """A whole JSON file. Not valid JSON -> RecordError `path:line: ...`. Bytes that are not UTF-8:
    RecordError with line and byte offset; for a JSON array with `bad` that collects, the records
    holding them go to `bad` (`path[index]`) and stand as UNDECODABLE at their index. A gzip file is
    decompressed first."""
    path = Path(path)
    _require_file(path)
    data = read_bytes(path)
    bad_offsets: list[int] = []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        if bad is None or bad.raising:
            off, problem = _not_utf8(data, e.start)
            raise RecordError(f"{path}:{_line_of(data, off)}: (encoding): {problem}"
                              + (f"; {bad.hint}" if bad is not None and bad.hint else "")) from None
        view, pos = memoryview(data), e.start
        while True:   # every undecodable byte, in order: each step decodes only up to the next one
            bad_offsets.append(pos)
            pos += 1
            try:
                codecs.utf_8_decode(view[pos:], "strict", True)
                break
            except UnicodeDecodeError as err:
                pos += err.start
        text = data.decode("utf-8", "surrogateescape")
    if not text.strip():
        raise RecordError(f"{path}: the file is empty; expected {expected}. Check that it was written completely "
                          "(or re-download / rebuild it)")
    try:
        obj = json.loads(text)
    except RecursionError:
        raise RecordError(f"{path}: (file): JSON nested deeper than can be read; expected {expected}") from None
    except json.JSONDecodeError as e:
        if bad_offsets:   # an undecodable byte outside any string breaks the JSON itself: say so
            raise RecordError(f"{path}:{_line_of(data, bad_offsets[0])}: (encoding): "
                              f"{_not_utf8(data, bad_offsets[0])[1]}") from None
        raise RecordError(f"{path}:{e.lineno}: (file): not valid JSON ({e.msg}); expected {expected}. Re-download "
                          "or rebuild the file") from None
    if not bad_offsets:
        return obj
    if not isinstance(obj, list):
        raise RecordError(f"{path}:{_line_of(data, bad_offsets[0])}: (encoding): byte offset {bad_offsets[0]} is "
                          "not UTF-8; re-save the file as UTF-8 or re-download it")
    queue = iter(bad_offsets)
    out = []
    for i, rec in enumerate(obj):
        offsets = [o for o in (next(queue, None) for _ in range(_surrogates(rec))) if o is not None]
        if not offsets:
            out.append(rec)
            continue
        bad.report(Where(str(path), index=i), "(encoding)", f"line {_line_of(data, offsets[0])}: "
                   + _not_utf8(data, offsets[0])[1], rec, byte=offsets[0])
        out.append(UNDECODABLE)
    return out


_JSON_WS = " \t\n\r"
ARRAY_CHUNK_BYTES = 1 << 20   # what a streamed JSON array reads at a time (bytes of the decompressed data)


def iter_json_array(path: str | os.PathLike, bad: Rejects | None = None, expected: str = "records",
                    chunk_bytes: int = ARRAY_CHUNK_BYTES) -> Iterator[tuple[int, Any]]:
    """(index, record) of a JSON array file, one record at a time: peak memory is the largest record
    plus `chunk_bytes`, whatever the file's size (a 7.9 GB DPR retriever file streams like a small one).

    Each record is parsed by the `json` module's own decoder (`JSONDecoder.raw_decode` over a window of
    the file), so records are the very objects `json.loads` of the whole file gives. Messages are those
    of `read_json`: not valid JSON -> `path:line: (file): ...`; bytes that are not UTF-8 -> line and byte
    offset, raised, or with `bad` that collects, the record holding them reported as `path[index]` and
    skipped. A file that is not an array is read whole and refused naming its type; an empty array is
    refused. gzip is decompressed as it is read (`open_bytes`)."""
    path = Path(path)
    _require_file(path)
    with open_bytes(path) as f:
        yield from _ArrayStream(path, f, bad, expected, chunk_bytes).records()


_SURROGATE = re.compile("[\udc80-\udcff]")


class _ArrayStream:
    """A window (`buf`) over a JSON array's decoded text, with the line, column and byte offset of
    its first character (undecodable bytes are kept as surrogates, as `read_json` does)."""

    def __init__(self, path: Path, f, bad: Rejects | None, expected: str, chunk_bytes: int):
        self.path, self.f, self.bad, self.expected, self.chunk = path, f, bad, expected, chunk_bytes
        self.what = f"a JSON array of {expected}"
        self.inc = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self.buf, self.eof, self.line, self.col, self.byte = "", False, 1, 0, 0

    def more(self, n: int | None = None) -> bool:
        if self.eof:
            return False
        data = self.f.read(n or self.chunk)
        self.eof = not data
        self.buf += self.inc.decode(data, final=self.eof)
        return True

    def drop(self, upto: int) -> None:
        """Forget buf[:upto], keeping the line / column / byte offset of what is left."""
        gone = self.buf[:upto]
        nbytes = len(gone.encode("utf-8", "surrogateescape"))
        nl = gone.count("\n")
        self.col = len(gone[gone.rfind("\n") + 1:].encode("utf-8", "surrogateescape")) if nl else self.col + nbytes
        self.line += nl
        self.byte += nbytes
        self.buf = self.buf[upto:]

    def not_utf8(self, pos: int) -> tuple[int, int, str]:
        """(line, byte offset, problem) of the undecodable byte at buf[pos]."""
        buf = self.buf
        last = buf.rfind("\n", 0, pos)
        column = len(buf[last + 1:pos].encode("utf-8", "surrogateescape")) + 1 + (self.col if last < 0 else 0)
        offset = self.byte + len(buf[:pos].encode("utf-8", "surrogateescape"))
        return self.line + buf.count("\n", 0, pos), offset, (
            f"byte 0x{ord(buf[pos]) - 0xDC00:02x} at byte offset {offset} (column {column}) is not UTF-8; "
            "re-save the file as UTF-8 or re-download it")

    def invalid(self, msg: str, pos: int):
        m = _SURROGATE.search(self.buf, 0, min(len(self.buf), pos + 1))
        if m:   # an undecodable byte outside any string breaks the JSON itself: say so
            line, _, problem = self.not_utf8(m.start())
            raise RecordError(f"{self.path}:{line}: (encoding): {problem}")
        raise RecordError(f"{self.path}:{self.line + self.buf.count(chr(10), 0, pos)}: (file): not valid JSON ({msg}); "
                          f"expected {self.what}. Re-download or rebuild the file")

    def skip_ws(self, pos: int) -> int:
        """The position of the next non-whitespace character (reading on as needed); len(buf) at the end."""
        while True:
            buf = self.buf
            while pos < len(buf) and buf[pos] in _JSON_WS:
                pos += 1
            if pos < len(buf) or not self.more():
                return pos

    def value(self, pos: int, decoder: json.JSONDecoder) -> tuple[Any, int]:
        """The JSON value at buf[pos] and where it ends, reading on while the window cuts it off."""
        last_error = None
        while True:
            try:
                rec, end = decoder.raw_decode(self.buf, pos)
                if end < len(self.buf) or self.eof:
                    return rec, end
            except RecursionError:
                raise RecordError(f"{self.path}: (file): JSON nested deeper than can be read; expected "
                                  f"{self.what}") from None
            except json.JSONDecodeError as e:
                key = (e.msg, e.pos)   # the same error with more text read: the JSON is wrong, not cut off
                if self.eof or (key == last_error and not e.msg.startswith("Unterminated string")):
                    self.invalid(e.msg, e.pos)
                last_error = key
            self.more(max(self.chunk, len(self.buf) - pos))

    def records(self) -> Iterator[tuple[int, Any]]:
        raising = self.bad is None or self.bad.raising
        pos = self.skip_ws(0)
        if pos >= len(self.buf):
            raise RecordError(f"{self.path}: the file is empty; expected {self.what}. Check that it was written "
                              "completely (or re-download / rebuild it)")
        if self.buf[pos] != "[":   # not an array (or not JSON): the whole-file reader's messages
            whole = read_json(self.path, self.bad, expected=self.what)
            raise RecordError(f"{self.path}: (file): {self.what} is expected, got {type(whole).__name__}")
        pos, index, decoder = self.skip_ws(pos + 1), 0, json.JSONDecoder()
        if pos < len(self.buf) and self.buf[pos] == "]":
            raise RecordError(f"{self.path}: (file): the array is empty (no records); expected {self.expected}. "
                              "Check that it was downloaded completely")
        while True:
            if pos >= len(self.buf):
                self.invalid("Expecting value", pos)
            rec, end = self.value(pos, decoder)
            m = _SURROGATE.search(self.buf, pos, end)
            if m is None:
                yield index, rec
            elif raising:
                line, _, problem = self.not_utf8(m.start())
                hint = f"; {self.bad.hint}" if self.bad is not None and self.bad.hint else ""
                raise RecordError(f"{self.path}:{line}: (encoding): {problem}{hint}")
            else:
                line, offset, problem = self.not_utf8(m.start())
                self.bad.report(Where(str(self.path), index=index), "(encoding)", f"line {line}: {problem}", rec,
                                byte=offset)
            index += 1
            pos = self.skip_ws(end)
            ch = self.buf[pos] if pos < len(self.buf) else ""
            if ch == "]":
                break
            if ch != ",":
                self.invalid("Expecting ',' delimiter", pos)
            pos = self.skip_ws(pos + 1)
            if pos > self.chunk:
                self.drop(pos)
                pos = 0
        pos = self.skip_ws(pos + 1)
        if pos < len(self.buf):
            self.invalid("Extra data", pos)


RUN_CARD_NAME = "run_card.json"


def check_against_run_card(path: str | os.PathLike) -> None:
    """When `path`'s folder holds a run card that lists `path` in its `output_sha256`, the file's
    sha256 must match: a file from another run (or edited by hand) is refused, never mixed in."""
    path = Path(path)
    card_path = path.parent / RUN_CARD_NAME
    if not card_path.is_file():
        return
    card = read_json(card_path, expected="a run card (JSON object)")
    listed = card.get("output_sha256") if isinstance(card, dict) else None
    if not isinstance(listed, dict) or path.name not in listed:
        return
    actual = sha256_file(path)
    if actual != listed[path.name]:
        script = card.get("script") or "the script that wrote it"
        raise RecordError(
            f"{path}: sha256 {actual} differs from {listed[path.name]} recorded in {card_path}; the file does not "
            f"belong to the set of outputs that run card describes (edited, or left by another run). Rebuild the "
            f"folder (run {script} again); to use an edited file on purpose, keep it outside {path.parent}")


def iter_jsonl(
    path: str | os.PathLike,
    contract: Contract | None = None,
    rejects: str | os.PathLike | None = None,
    stats: dict | None = None,
    *,
    unique: tuple[str, ...] | None = None,
    allow_empty: bool | None = None,
) -> Iterator[dict]:
    """Yield the records of a JSONL file, each validated against `contract`.

    A bad line raises RecordError `path:line: field: problem`; with `rejects`, it is written
    there (a REJECT row) instead, and counted in `stats["rejected"]`. Blank lines are skipped
    (counted in `stats["blank"]`). The contract's file rules apply (`unique`, `allow_empty`;
    the keyword arguments override them), and a run card beside the file that lists it must
    hold its sha256 (`check_against_run_card`).
    """
    path = Path(path)
    _require_file(path)
    check_against_run_card(path)
    from .seals import check_seal  # seals read files with this module's read_json

    check_seal(path)
    stats = stats if stats is not None else {}
    stats.setdefault("read", 0)
    stats.setdefault("rejected", 0)
    unique = unique if unique is not None else (contract.unique if contract else ())
    allow_empty = allow_empty if allow_empty is not None else (contract.allow_empty if contract else True)
    expected = contract.describe() if contract else "JSON objects, one a line"
    bad = Rejects(rejects)
    first_line: dict[tuple, int] = {}
    rejected_before = stats["rejected"]
    try:
        for where, rec, line in iter_json_lines(path, bad, expected, allow_empty, stats):
            stats["rejected"] = rejected_before + bad.count
            problem = contract.problem(rec) if contract else None
            if problem is None and unique:
                key = tuple(rec.get(k) for k in unique)
                if key in first_line:
                    what = ", ".join(f"{k}={v!r}" for k, v in zip(unique, key))
                    problem = (f"{unique[-1]}: {what} already appears on line {first_line[key]}; each must be "
                               "unique in the file (remove one of the two lines, or rebuild the file)")
                else:
                    first_line[key] = where.line
            if problem is None:
                stats["read"] += 1
                yield rec
                continue
            bad.report(where, *_split_problem(problem), line.rstrip("\r\n"))
        stats["rejected"] = rejected_before + bad.count
    finally:
        bad.close()


def read_jsonl(path, contract: Contract | None = None, rejects=None, stats: dict | None = None, **rules) -> list[dict]:
    return list(iter_jsonl(path, contract, rejects, stats, **rules))


def read_examples(path, rejects=None, stats: dict | None = None) -> list[dict]:
    """Read processed examples (train/val/test.jsonl), validated against the EXAMPLE contract.

    Refused, each with file, line and field: a file its folder's run card does not describe
    (sha256), an empty file, a repeated id (both lines named), bytes that are not UTF-8 (byte
    offset), and any record that breaks the contract.
    """
    return read_jsonl(path, EXAMPLE, rejects, stats)
