"""One cheap pass over a text event log before DuckDB parses it: its physical lines, whether it has blank lines, and
the lines DuckDB could not read at all.

DuckDB's line-splitting read (used for JSONL and for CSV line numbers) fails a whole file on one byte that is not
UTF-8, without saying which row it was in, and its CSV parser fails a whole file on a carriage return inside a line.
This pass finds such lines (and lines with NUL bytes, which are never part of a text log) and, only then, writes a
copy of the file with those bytes replaced by U+FFFD. DuckDB reads the copy; the join rejects exactly those lines,
with their line numbers, and keeps the rest. The line count is the independent count the parsed rows are checked
against.

Mixed line ends (some lines ending in \\r\\n, others in \\n: logs concatenated from several machines) make DuckDB's
CSV parser fail the whole file and its line-splitting read see an extra blank line after each odd one; such a file
is read from a copy with every \\r\\n turned into \\n (a second pass, for those files only).

The first pass reads 16 MiB blocks into one buffer; a block costs a newline count (numpy), two byte searches and
an ASCII test (a UTF-8 decode only for non-ASCII text). Only files that fail a test are read a second time.
"""

from __future__ import annotations

import codecs
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import duckdb
import numpy as np

from cope.errors import UsageError

BLOCK_BYTES = 16 << 20
MAX_LINE_BYTES = 64 << 20  # a "line" longer than this is not a text log
MAX_BAD_LINES = 10_000  # more than this: the file is not UTF-8 text, say so instead of rejecting it line by line
REPLACEMENT = "\ufffd"

BAD_BYTE_REASONS = ("NUL byte", "carriage return inside a line", "invalid UTF-8")

logger = logging.getLogger(__name__)


class EventLogError(UsageError):
    """An event log cope cannot read completely; the message names the file and, where there is one, the line."""


@dataclass
class TextScan:
    """What one pass over a text file found."""

    path: str  # the file DuckDB is to read: the log itself, or a copy with its bad bytes replaced
    lines: int  # physical lines ("\\n"-terminated; a last line without one counts)
    bad: list[tuple[int, str, str]] = field(default_factory=list)  # (line, reason, the line as text), ascending


def _bad_reason(line: bytes) -> str | None:
    if b"\0" in line:
        return "NUL byte"
    if b"\r" in (line[:-1] if line.endswith(b"\r") else line):  # not the \\r of a \\r\\n line end
        return "carriage return inside a line"
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid UTF-8"
    return None


def _clean(data: bytes, first_line: int, bad: list[tuple[int, str, str]]) -> bytes:
    """``data`` (whole lines) with the bytes of its bad lines replaced; those lines appended to ``bad``."""
    parts = data.split(b"\n")
    for k, line in enumerate(parts):
        reason = _bad_reason(line)
        if reason is None:
            continue
        end = "\r" if line.endswith(b"\r") else ""
        text = line[:len(line) - len(end)].decode("utf-8", "replace").replace("\0", REPLACEMENT)
        text = text.replace("\r", REPLACEMENT)
        parts[k] = (text + end).encode("utf-8")
        bad.append((first_line + k + 1, reason, text[:200]))
    return b"\n".join(parts)


def scan_text(path: str, clean_copy: str | Path, *, block_bytes: int = BLOCK_BYTES,
              max_bad_lines: int | None = None) -> TextScan:
    """Count the lines of ``path`` and find its unreadable lines; with any (or with mixed line ends), write
    ``clean_copy`` and point at it. More than ``max_bad_lines`` (default :data:`MAX_BAD_LINES`) unreadable lines:
    :class:`EventLogError`.

    A first pass counts line breaks and tests each block for NUL, carriage returns and non-ASCII bytes (a UTF-8
    decode only then); only a file that fails a test is read again, line by line, to find and replace its bad lines.

    >>> scan_text("events.csv", "/tmp/clean.csv").lines  # doctest: +SKIP
    """
    newlines = crs = crlf = 0
    suspect = False
    last = b""
    decoder = codecs.getincrementaldecoder("utf-8")()
    buf = bytearray(block_bytes)
    with open(path, "rb", buffering=0) as f:
        while k := f.readinto(buf):
            chunk = buf if k == block_bytes else buf[:k]
            newlines += int(np.count_nonzero(np.frombuffer(chunk, np.uint8) == 10))
            if b"\r" in chunk:
                crs += chunk.count(b"\r")
                crlf += chunk.count(b"\r\n") + (last == b"\r" and chunk[:1] == b"\n")
            if not suspect and b"\0" in chunk:
                suspect = True
            if not suspect and not chunk.isascii():
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError:
                    suspect = True
            last = chunk[-1:]
        if not suspect:
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:  # the file ends inside a multi-byte character
                suspect = True
    del buf
    lines = newlines + (last not in (b"", b"\n"))
    lone_cr = crs - crlf - (last == b"\r")  # a \\r at the very end ends the last line
    bad: list[tuple[int, str, str]] = []
    read = path
    if suspect or lone_cr:
        read = _clean_copy(path, clean_copy, bad, block_bytes, MAX_BAD_LINES if max_bad_lines is None
                           else max_bad_lines)
    if 0 < crlf < newlines:
        logger.info("%s: %d of %d lines end in \\r\\n, the others in \\n; reading a copy with \\n only", path, crlf,
                    newlines)
        _lf_line_ends(read, f"{clean_copy}.lf")
        os.replace(f"{clean_copy}.lf", clean_copy)
        read = str(clean_copy)
    return TextScan(path=read, lines=lines, bad=bad)


def _clean_copy(path: str, clean_copy: str | Path, bad: list[tuple[int, str, str]], block_bytes: int,
                max_bad_lines: int) -> str:
    """Second pass, whole lines at a time: the bad lines into ``bad`` and, if any, a copy with them replaced.
    Returns the file to read."""
    lines, done = 0, 0
    out = None
    try:
        with open(path, "rb") as f:
            carry = b""
            while True:
                chunk = f.read(block_bytes)
                data = carry + chunk if carry else chunk
                if chunk:  # keep whole lines; the rest waits for the next block
                    cut = data.rfind(b"\n") + 1
                    if not cut:
                        if len(data) > MAX_LINE_BYTES:
                            raise EventLogError(f"{path}:{lines + 1}: a line longer than {MAX_LINE_BYTES >> 20} MiB; "
                                                "an event log is text with one record per line")
                        carry = data
                        continue
                    data, carry = data[:cut], data[cut:]
                elif not data:
                    break
                else:
                    carry = b""
                size, n = len(data), data.count(b"\n")
                found = len(bad)
                cleaned = _clean(data, lines, bad)
                if len(bad) > found:
                    data = cleaned
                    if out is None:
                        out = open(clean_copy, "wb")  # noqa: SIM115 - closed below, on every path
                        _copy_prefix(path, out, done)
                if len(bad) > max_bad_lines:
                    first, reason, _ = bad[0]
                    raise EventLogError(
                        f"{path}: more than {max_bad_lines} lines cannot be read (NUL bytes, bytes that are not "
                        f"UTF-8, carriage returns inside lines; the first, line {first}: {reason}); cope reads "
                        "event logs as UTF-8 text with \\n or \\r\\n line ends: convert it (e.g. iconv -f <its "
                        "encoding> -t UTF-8) or check that it is a text log")
                if out is not None:
                    out.write(data)
                lines += n
                done += size
                if not chunk:
                    break
    finally:
        if out is not None:
            out.close()
    return str(clean_copy) if out is not None else path


def _copy_prefix(src: str, out: BinaryIO, n: int) -> None:
    with open(src, "rb") as f:
        while n > 0:
            chunk = f.read(min(n, BLOCK_BYTES))
            if not chunk:
                break
            out.write(chunk)
            n -= len(chunk)


def _lf_line_ends(src: str, dst: str) -> None:
    """Copy ``src`` to ``dst`` with every \\r\\n turned into \\n."""
    with open(src, "rb") as f, open(dst, "wb") as out:
        carry = b""
        while chunk := f.read(BLOCK_BYTES):
            data = carry + chunk
            carry = b"\r" if data.endswith(b"\r") else b""  # its \\n may open the next block
            out.write(data[:len(data) - len(carry)].replace(b"\r\n", b"\n"))
        out.write(carry)


def read_error(path: str, e: duckdb.Error) -> EventLogError:
    """A DuckDB read error as one short line naming the file and, when DuckDB gave one, the line."""
    text = str(e)
    m = re.search(r"on Line: (\d+)", text)
    keep = []
    for ln in text.splitlines():  # DuckDB's own text, less the echoed line and the suggested options
        s = ln.strip()
        if s.startswith("Possible Solution"):
            break
        if s and not s.startswith("Original Line"):
            keep.append(s[:200])
    where = f"{path}:{m.group(1)}" if m else path
    return EventLogError(f"{where}: cannot read it: {' '.join(keep)[:600]}")
