"""Raw formats: file detection, checksums, and one raw-record iterator per file format.

Each raw iterator yields ``(file, line_or_row, record_or_None, raw_handle, error_or_None)``;
text formats report 1-based line numbers, Parquet 1-based rows. The line splitter here is
the one the writers use too, so the readers' and writers' line numbers agree.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import hashlib
import json
import os
import zlib
from functools import partial
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Optional

import numpy as np

from ..errors import InputError, ResourceError, ThresherError
from .schema import DataError, file_error

FORMATS = ("jsonl", "json", "parquet", "csv", "hf")
_EXT = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
}
_GZIP_MAGIC = b"\x1f\x8b"
_BOM = "\ufeff"


def _ext_format(path: Path) -> Optional[str]:
    """Format of one file from its extension (``.gz`` stripped), or None."""
    name = path.name.lower().removesuffix(".gz")
    return _EXT.get(os.path.splitext(name)[1])


def detect_format(path: Path) -> str:
    """Format from the extension (``.gz`` stripped) or, for folders, the HF dataset markers.

    A folder whose files have different formats is refused (naming two of them)."""
    if path.is_dir():
        if (
            (path / "dataset_info.json").exists()
            or (path / "state.json").exists()
            or (path / "dataset_dict.json").exists()
        ):
            return "hf"
        files = data_files(path)
        if not files:
            raise InputError(
                "folder holds no .jsonl/.json/.parquet/.csv files and is not a saved HF dataset", file=path
            )
        check_one_format(path, files)
        return detect_format(files[0])
    fmt = _ext_format(path)
    if fmt is None:
        raise InputError(
            f"cannot tell the format from the extension; pass format= one of {list(FORMATS)} (--format)", file=path
        )
    return fmt


def check_one_format(folder: Path, files: list[Path]) -> None:
    """Refuse a folder that mixes formats (``a.jsonl`` beside ``b.csv``): name one file of each."""
    first: dict[str, Path] = {}
    for f in files:
        first.setdefault(_ext_format(f) or "?", f)
    if len(first) > 1:
        (fa, pa), (fb, pb) = list(first.items())[:2]
        raise InputError(
            f"folder mixes data formats: {pa.relative_to(folder)} is {fa}, {pb.relative_to(folder)} "
            f"is {fb}; put one format in a folder",
            file=folder,
        )


def data_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    out = []
    for p in sorted(path.rglob("*")):
        if p.is_file() and _ext_format(p) is not None and not p.name.startswith("."):
            out.append(p)
    return out


def _is_gz(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


@contextlib.contextmanager
def _read_errors(path: Path, where: Callable[[], Optional[int]] = lambda: None) -> Iterator[None]:
    """Turn the OS and codec errors of reading ``path`` into one-line Input/ResourceErrors.

    ``where()``: the last line read so far (for a gzip stream that ends early)."""
    try:
        yield
    except ThresherError:
        raise
    except PermissionError:
        raise ResourceError(f"{path}: permission denied (cannot read it)") from None
    except gzip.BadGzipFile as exc:
        raise InputError(f"not a gzip file ({exc}); rename it without .gz if it is plain text", file=path) from None
    except (EOFError, zlib.error) as exc:
        last = where()
        after = f" after line {last}" if last else ""
        raise InputError(f"truncated or corrupt gzip data{after} ({exc})", file=path) from None
    except IsADirectoryError:
        raise InputError("is a folder, expected a file", file=path) from None
    except OSError as exc:
        raise ResourceError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _open_binary(path: Path) -> IO[bytes]:
    if _is_gz(path):
        return gzip.open(path, "rb")  # type: ignore[return-value]  # a GzipFile reads bytes
    return open(path, "rb")


def _decode_line(raw: bytes, path: Path, lineno: int, bom: bool = True) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"not valid UTF-8 text (byte {exc.start + 1} of the line: {exc.reason}); re-encode the file as UTF-8",
            file=path,
            line=lineno,
        ) from None
    return text[1:] if bom and lineno == 1 and text.startswith(_BOM) else text


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw bytes) of a text file, optionally gzipped; lines end at ``\\n``.

    The one line splitter of the readers and the writers (so their line numbers agree)."""
    lineno = 0
    with _read_errors(path, lambda: lineno), _open_binary(path) as fh:
        for raw in fh:
            lineno += 1
            yield lineno, raw


def _range_lines(path: Path, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """(line number counted from 1 at ``start``, raw bytes) of the lines of an uncompressed text file
    that start in the byte range [start, end); ``start`` is the first byte of a line."""
    lineno = 0
    with _read_errors(path, lambda: lineno), open(path, "rb") as fh:
        fh.seek(start)
        pos = start
        for raw in fh:
            if pos >= end:
                return
            lineno += 1
            pos += len(raw)
            yield lineno, raw


def count_lines(path: Path, block: int = 1 << 22) -> int:
    """Lines of a text file, optionally gzipped, as :func:`_raw_lines` numbers them (a last line without
    a newline counts); a scan of the bytes, nothing is parsed."""
    n, last = 0, b"\n"
    with _read_errors(path, lambda: n), _open_binary(path) as fh:
        for chunk in iter(partial(fh.read, block), b""):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


def _after_skip(fh: IO[bytes], start: int, block: int) -> Iterator[bytes]:
    """The raw lines of ``fh`` after its first ``start`` lines (skipped by counting newlines in blocks)."""
    seen, buf = 0, b""
    while seen < start:
        chunk = fh.read(block)
        if not chunk:
            return
        n = chunk.count(b"\n")
        if seen + n < start:
            seen += n
            continue
        pos = -1
        for _ in range(start - seen):
            pos = chunk.index(b"\n", pos + 1)
        seen, buf = start, chunk[pos + 1 :]
    parts = buf.split(b"\n")
    tail = parts.pop()  # the start of a line that goes on in the next read
    yield from (p + b"\n" for p in parts)
    more = fh.readline()
    if tail or more:
        yield tail + more
    yield from fh


def line_range(path: Path, start: int, end: int, block: int = 1 << 22) -> Iterator[tuple[int, bytes]]:
    """(line number in the file, raw bytes) of lines ``start+1 .. end`` of a text file, optionally
    gzipped (a gzip stream is read from its beginning; the skipped lines are only counted)."""
    lineno = start
    with _read_errors(path, lambda: lineno), _open_binary(path) as fh:
        for raw in _after_skip(fh, start, block):
            if lineno >= end:
                return
            lineno += 1
            yield lineno, raw


def _cut_after(chunk: bytes, pos: int, need: int) -> int:
    """The index just after the ``need``-th newline of ``chunk`` at or after ``pos`` (it exists)."""
    for _ in range(need):
        pos = chunk.index(b"\n", pos) + 1
    return pos


def line_blocks(path: Path, lines: int, block: int = 1 << 22) -> Iterator[tuple[int, int, bytes]]:
    """``(start, end, raw bytes of lines start+1 .. end)`` of a text file, optionally gzipped, in blocks
    of ``lines`` lines (the last one possibly fewer), numbered as :func:`count_lines` counts them; one
    pass over the stream (a gzip file is decompressed once), nothing is parsed."""
    first, have, pending = 0, 0, []  # the current block: its first line, its newlines so far, its pieces
    with _read_errors(path, lambda: first + have), _open_binary(path) as fh:
        for chunk in iter(partial(fh.read, block), b""):
            pos = 0
            while True:
                need, avail = lines - have, chunk.count(b"\n", pos)
                if avail < need:
                    have += avail
                    pending.append(chunk[pos:])
                    break
                end = _cut_after(chunk, pos, need)
                pending.append(chunk[pos:end])
                yield first, first + lines, b"".join(pending)
                first, have, pending, pos = first + lines, 0, [], end
    rest = b"".join(pending)
    if rest:
        yield first, first + have + (not rest.endswith(b"\n")), rest


def line_boundaries(path: Path, step: int) -> list[int]:
    """Byte offsets of line starts about ``step`` bytes apart, from 0 to the file size (an
    uncompressed file; one seek and one line read per boundary, nothing is parsed)."""
    size = path.stat().st_size
    cuts = [0]
    with _read_errors(path), open(path, "rb") as fh:
        while cuts[-1] + step < size:
            fh.seek(cuts[-1] + step - 1)
            fh.readline()  # to the end of the line that holds byte cut+step-1: the next line starts after it
            nxt = fh.tell()
            if nxt >= size:
                break
            cuts.append(nxt)
    return cuts + [size]


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, decoded text with its line ending); a UTF-8 BOM on line 1 is dropped."""
    for lineno, raw in _raw_lines(path):
        yield lineno, _decode_line(raw, path, lineno)


def _text_chunks(path: Path, size: int) -> Iterator[str]:
    """The decoded text in chunks of about ``size`` bytes; invalid UTF-8 names its line."""
    dec = codecs.getincrementaldecoder("utf-8")()
    newlines = 0
    first = True
    with _read_errors(path, lambda: newlines), _open_binary(path) as fh:
        while True:
            block = fh.read(size)
            try:
                text = dec.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                line = newlines + exc.object[: exc.start].count(b"\n") + 1
                raise InputError(
                    f"not valid UTF-8 text ({exc.reason}); re-encode the file as UTF-8", file=path, line=line
                ) from None
            newlines += block.count(b"\n")
            if first and text:
                text, first = text.removeprefix(_BOM), False
            if text:
                yield text
            if not block:
                return


def _sha256(f: Path) -> str:
    h = hashlib.sha256()
    with _read_errors(f), open(f, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_checksum(path: Path) -> str:
    """sha256 of a file; for a folder, sha256 over (relative path, file sha256) of every file in it."""
    path = Path(path)
    if path.is_file():
        return _sha256(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}\0{_sha256(f)}\n".encode())
    return h.hexdigest()


# ------------------------------------------------------------------ raw records
# Each raw iterator yields (file, line_or_row, record_or_None, raw_handle, error_or_None).


def _iter_jsonl(path: Path, lines: Optional[Iterator[tuple[int, bytes]]] = None, bom: bool = True):
    """Records of a JSON Lines file (``lines``: numbered raw lines of a part of it, see :func:`_range_lines`;
    ``bom``: whether line 1 is the file's first line, where a UTF-8 BOM is dropped)."""
    for lineno, raw in lines if lines is not None else _raw_lines(path):
        try:
            text = _decode_line(raw, path, lineno, bom).rstrip("\r\n")
        except InputError as exc:
            yield path, lineno, None, None, exc
            continue
        if not text.strip():
            continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as exc:
            yield (
                path,
                lineno,
                None,
                text,
                DataError(f"malformed JSON ({exc.msg} at column {exc.colno})", file=path, line=lineno),
            )
            continue
        yield path, lineno, rec, text, None


def _value_end(buf: str, pos: int) -> Optional[int]:
    """Index of the ``,`` or ``]`` that ends the (malformed) array element starting at ``pos``."""
    depth, in_str, esc = 0, False, False
    for i in range(pos, len(buf)):
        ch = buf[i]
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            if depth == 0:
                return i if ch == "]" else None
            depth -= 1
        elif ch == "," and depth == 0:
            return i
    return None


class _ArrayScanner:
    """Walks the elements of a top-level JSON array over a stream of text chunks."""

    def __init__(self, path: Path, chunks: Iterator[str]) -> None:
        self.path, self.chunks = path, chunks
        self.buf, self.pos, self.line, self.eof = "", 0, 1, False
        self.dec = json.JSONDecoder()

    def fill(self) -> bool:
        more = next(self.chunks, "")
        if not more:
            self.eof = True
            return False
        self.buf = self.buf[self.pos :] + more
        self.pos = 0
        return True

    def next_char(self, seps: str) -> Optional[str]:
        """Skip whitespace (and ``seps``); the next character, or None at the end of the file."""
        while True:
            buf = self.buf
            while self.pos < len(buf) and buf[self.pos] in " \t\r\n" + seps:
                if buf[self.pos] == "\n":
                    self.line += 1
                self.pos += 1
            if self.pos < len(buf):
                return buf[self.pos]
            if not self.fill():
                return None

    def element(self) -> tuple[Any, Optional[DataError]]:
        """Decode the element at ``pos``: (record, None), or (None, error) after skipping a bad one."""
        rec, err = None, None
        while True:
            try:
                rec, end = self.dec.raw_decode(self.buf, self.pos)
                break
            except json.JSONDecodeError as exc:
                if not self.eof and self.fill():
                    continue
                at = self.line + self.buf.count("\n", self.pos, exc.pos)
                err = DataError(
                    f"malformed JSON in the record starting here ({exc.msg} at line {at})",
                    file=self.path,
                    line=self.line,
                )
                stop = _value_end(self.buf, self.pos)
                if stop is None:  # cannot find where the bad record ends: nothing after it can be read
                    err.skippable = False
                    raise err from None
                end = stop
                break
        self.line += self.buf.count("\n", self.pos, end)
        self.pos = end
        return rec, err


def _iter_json_array(path: Path, chunk: int = 1 << 20):
    """Stream the objects of a top-level JSON array without loading the whole file."""
    sc = _ArrayScanner(path, _text_chunks(path, chunk))
    c = sc.next_char("")
    if c is None:
        raise file_error("empty file: no JSON array", file=path, line=sc.line)
    if c != "[":
        raise file_error("expected a JSON array of objects ('[' ...), or use a .jsonl file", file=path, line=sc.line)
    sc.pos += 1
    yield from _array_elements(sc, whole=True)


def _array_elements(sc: _ArrayScanner, whole: bool):
    """The elements after ``sc.pos`` up to the closing ``]``, or (not ``whole``: a part of the array)
    up to the end of the text, which must then be the closing ``]``."""
    while True:
        c = sc.next_char(",")
        if c is None:
            if not whole:
                return
            raise file_error("unterminated JSON array (missing ']')", file=sc.path, line=sc.line)
        if c == "]":
            return
        start = sc.line
        rec, err = sc.element()
        yield sc.path, start, rec, rec, err


def _iter_json_elements(path: Path, raw: bytes, newlines: int):
    """Records of a part of a JSON array (the bytes of one range of :func:`json_array_cuts`, which
    follow ``newlines`` newlines of the file), walked as :func:`_iter_json_array` walks the file:
    the same records, lines and errors."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = newlines + raw[: exc.start].count(b"\n") + 1
        raise InputError(
            f"not valid UTF-8 text ({exc.reason}); re-encode the file as UTF-8", file=path, line=line
        ) from None
    sc = _ArrayScanner(path, iter([text]))
    sc.line = newlines + 1
    yield from _array_elements(sc, whole=False)


# ------------------------------------------------------------------ JSON array cuts
# A JSON array cut between its top-level elements without parsing it: one vectorised pass over the
# bytes (numpy) finds the strings, the bracket depth and the top-level commas; wherever that rule
# could disagree with the sequential reader (:class:`_ArrayScanner`), it gives up (None).

_BOM_BYTES = _BOM.encode("utf-8")
_WS = b" \t\r\n"
_DELTA = np.zeros(256, dtype=np.int64)
_DELTA[list(b"[{")], _DELTA[list(b"]}")] = 1, -1
_IS_WS = np.zeros(256, dtype=bool)
_IS_WS[list(_WS)] = True


def _array_start(head: bytes) -> Optional[int]:
    """Offset of the opening ``[`` in ``head``, the file's first bytes (an optional BOM, whitespace,
    ``[``, as :func:`_iter_json_array` expects); -1 when something else comes first; None when more
    bytes are needed."""
    if len(head) < len(_BOM_BYTES) and _BOM_BYTES.startswith(head):
        return None
    rest = head[len(_BOM_BYTES) if head.startswith(_BOM_BYTES) else 0 :].lstrip(_WS)
    if not rest:
        return None
    return len(head) - len(rest) if rest[:1] == b"[" else -1


def _events(a: np.ndarray) -> np.ndarray:
    """Offsets of the bytes the scan follows: quotes, backslashes, brackets and commas."""
    b = a & 0xDF  # '{' and '}' as '[' and ']'
    m = b == 0x5B
    m |= b == 0x5D
    m |= a == 0x22
    m |= a == 0x5C
    m |= a == 0x2C
    return np.flatnonzero(m)


def _escaped(s: np.ndarray, k: np.ndarray, run0: int, size: int) -> tuple[np.ndarray, int]:
    """Per event of a block (offsets ``s``, bytes ``k``): whether it is a quote preceded by an odd run
    of backslashes (``run0``: the run that ended the previous block); and the run that ends this one."""
    n = len(s)
    idx = np.arange(n)
    isb = k == 92
    adj = np.zeros(n, dtype=bool)
    adj[1:] = isb[:-1] & (np.diff(s) == 1)  # the byte before the event is a backslash of this block
    first = np.maximum.accumulate(np.where(adj & isb, 0, idx))  # where each backslash's run starts
    run = idx - first + 1 + np.where(s[first] == 0, run0, 0)  # a run from the block's start goes on from run0
    before = np.zeros(n, dtype=np.int64)
    before[1:] = np.where(adj[1:], run[:-1], 0)
    if n and s[0] == 0:
        before[0] = run0
    tail = int(run[-1]) if n and isb[-1] and s[-1] == size - 1 else 0
    return (k == 34) & (before % 2 == 1), tail


def _all_ws(a: np.ndarray, data: bytes, lo: np.ndarray, hi: np.ndarray) -> bool:
    """Whether the byte ranges [lo, hi) of the block hold only whitespace."""
    length = hi - lo
    for j in range(8):  # short gaps (a newline and some indentation) by gathering their j-th bytes
        m = length > j
        if not m.any():
            return True
        if not _IS_WS[a[lo[m] + j]].all():
            return False
    return all(not data[x + 8 : y].strip(_WS) for x, y in zip(lo[length > 8].tolist(), hi[length > 8].tolist()))


class _ArrayCuts:
    """The one pass of :func:`json_array_cuts` after the opening ``[``, block by block: the string
    and depth state carried from block to block, the cuts made so far, and whether the rule the
    scan follows can be trusted (``unsafe``: no)."""

    def __init__(self, start: int, newlines: int, rows: int, step: Optional[int]) -> None:
        self.rows, self.step = rows, step
        self.base, self.nl = start, newlines  # offset and newlines before the next block
        self.depth, self.in_str, self.run, self.gap = 1, 0, 0, True  # gap: between top-level elements
        self.since, self.last = 0, start  # separators since the last cut, the last cut's offset
        self.cuts: list = [(start, newlines)]  # split starts: (offset, newlines before it)
        self.close: Optional[int] = None
        self.unsafe = False

    def scan(self, data: bytes) -> None:
        """Follow one block: strings, depth, top-level gaps (whitespace only), separators, the closing ``]``."""
        a = np.frombuffer(data, dtype=np.uint8)
        s = _events(a)
        k = a[s]
        esc, self.run = _escaped(s, k, self.run, len(a))
        quote = (k == 34) & ~esc
        after = (self.in_str + np.cumsum(quote)) % 2  # inside a string after each event
        out = (after - quote) % 2 == 0  # the event is outside a string (a quote: an opening one)
        if (out & (k == 92)).any():  # a backslash outside a string: the quote rule above does not hold
            self.unsafe = True
            return
        depth = self.depth + np.cumsum(np.where(out, _DELTA[k], 0))
        zero = np.flatnonzero(depth <= 0)
        end = len(a)
        if zero.size:  # the closing bracket: it must be a ']' (a '}' there is fatal to the reader)
            z = int(zero[0])
            self.unsafe, self.close = k[z] != 93, self.base + int(s[z])
            s, k, depth, after, out, end = s[:z], k[:z], depth[:z], after[:z], out[:z], int(s[z])
        gap = (depth == 1) & (after == 0)
        first = [0, s[0] if len(s) else end] if self.gap else [0, 0]  # the gap the block starts in
        lo = np.append(np.int64(first[0]), s[gap] + 1)
        hi = np.append(np.int64(first[1]), np.append(s[1:], end)[gap])
        if not _all_ws(a, data, lo, hi):  # a number, a literal or garbage at the top level
            self.unsafe = True
            return
        self._cut(data, s[(k == 44) & out & (depth == 1)])
        if len(s):
            self.depth, self.in_str, self.gap = int(depth[-1]), int(after[-1]), bool(gap[-1])
        self.base, self.nl = self.base + len(a), self.nl + data.count(b"\n")

    def _cut(self, data: bytes, seps: np.ndarray) -> None:
        """Cut after every ``rows``-th separator, or (``step``) after the first one ``step`` bytes past the last cut."""
        if self.step is None:
            idx = np.arange(self.rows - self.since - 1, len(seps), self.rows)
            self.since = len(seps) - int(idx[-1]) - 1 if len(idx) else self.since + len(seps)
            at = seps[idx].tolist()
        else:
            at, i = [], int(np.searchsorted(seps, self.last + self.step - self.base))
            while i < len(seps):
                at.append(int(seps[i]))
                i = int(np.searchsorted(seps, seps[i] + 1 + self.step))
        prev, nl = 0, self.nl
        for c in at:
            nl += data.count(b"\n", prev, c)
            prev, self.last = c, self.base + c + 1
            self.cuts.append((self.last, nl))

    def splits(self) -> list[tuple[int, int, int]]:
        assert self.close is not None
        ends = [c for c, _ in self.cuts[1:]] + [self.close + 1]
        return [(a, b, nl) for (a, nl), b in zip(self.cuts, ends)]


def json_array_cuts(path: Path, rows: int, step: Optional[int] = None,
                    block: int = 1 << 22) -> Optional[list[tuple[int, int, int]]]:  # fmt: skip
    """A JSON array file (optionally gzipped) cut between its top-level elements, in one streaming
    pass over its (decompressed) bytes, nothing parsed: ``(start, end, newlines before start)`` byte
    ranges that run from just after the opening ``[`` to just after the closing one, each ending with
    the comma after its last element (the last one with the ``]``), about ``rows`` elements each (or,
    ``step``: about ``step`` bytes). None when the file cannot be cut so that each range, walked as
    :class:`_ArrayScanner` walks the file, gives the local reader's records, lines and errors: not an
    array, not UTF-8, unreadable, unterminated, a backslash outside a string, a ``}`` closing the
    array, anything but whitespace and commas between top-level values (a top-level number could be
    read differently at the local reader's chunk ends)."""
    dec = codecs.getincrementaldecoder("utf-8")()
    head, st = b"", None
    try:
        with _read_errors(path), _open_binary(path) as fh:
            for data in iter(partial(fh.read, block), b""):
                dec.decode(data)  # not UTF-8: left to the local reader (it raises when it reads that chunk)
                if st is None:
                    head += data
                    at = _array_start(head)
                    if at is None:
                        continue
                    if at < 0:
                        return None
                    st, data = _ArrayCuts(at + 1, head.count(b"\n", 0, at), rows, step), head[at + 1 :]
                if st.close is None:
                    st.scan(data)
                if st.unsafe:
                    return None
            dec.decode(b"", final=True)
    except (ThresherError, UnicodeDecodeError):
        return None
    return st.splits() if st is not None and st.close is not None else None


def byte_range(path: Path, start: int, end: int) -> bytes:
    """Bytes [start, end) of an uncompressed file."""
    with _read_errors(path), open(path, "rb") as fh:
        fh.seek(start)
        return fh.read(end - start)


def byte_ranges(path: Path, bounds: list[int], block: int = 1 << 22) -> Iterator[bytes]:
    """The bytes of a file (optionally gzipped: of its decompressed stream) between consecutive
    ``bounds`` (increasing offsets), range by range as they are read: one pass over the stream."""
    pos, i, pending = 0, 0, []
    with _read_errors(path), _open_binary(path) as fh:
        for data in iter(partial(fh.read, block), b""):
            end = pos + len(data)
            while i + 1 < len(bounds):
                lo, hi = max(bounds[i], pos), min(bounds[i + 1], end)
                if lo < hi:
                    pending.append(data[lo - pos : hi - pos])
                if bounds[i + 1] > end:
                    break
                yield b"".join(pending)
                pending, i = [], i + 1
            pos = end
    if i + 1 < len(bounds):
        raise InputError(f"the file ended at byte {pos} while it was cut (changed since?)", file=path)


CSV_FIELD_LIMIT = 1 << 30  # the longest CSV field read (Python's default, 128 KiB, is shorter than real texts)


def _csv_reader(lines: Any, path: Path) -> Any:
    """Python's csv reader over text lines, with the file's delimiter and fields up to ``CSV_FIELD_LIMIT``
    characters (the limit is process-wide: only ever raised here, never lowered)."""
    if csv.field_size_limit() < CSV_FIELD_LIMIT:
        csv.field_size_limit(CSV_FIELD_LIMIT)
    return csv.reader(lines, delimiter=csv_delimiter(path))


def csv_delimiter(path: Path) -> str:
    """``\t`` for a ``.tsv`` (or ``.tsv.gz``) file, else ``,``."""
    return "\t" if Path(path).name.lower().removesuffix(".gz").endswith(".tsv") else ","


def _iter_csv(path: Path, lines: Optional[Iterator[tuple[int, bytes]]] = None, header: Optional[tuple] = None,
              bom: bool = True, line0: int = 0):  # fmt: skip
    """Records of a CSV/TSV file, or of a part of it: ``lines`` (numbered raw lines that start at a
    record, see :func:`csv_blocks`; the first is line ``line0 + 1``), ``header`` (the file's field
    names, when the part does not start with them) and ``bom`` (whether line 1 is the file's first
    line). A record's line is the line it starts on."""
    src = _text_lines(path) if lines is None else ((n, _decode_line(raw, path, n, bom)) for n, raw in lines)
    reader = _csv_reader((text for _, text in src), path)
    fields = list(header) if header is not None else next(reader, None)
    if fields is None:
        return
    for start, cells in _csv_rows(reader, path, line0):  # after the header's lines (none when it was given)
        if not cells:  # a blank line: no record (as csv.DictReader)
            continue
        rec = dict(zip(fields, cells))  # as csv.DictReader: missing cells are None, extra ones under None
        if len(cells) > len(fields):
            rec[None] = cells[len(fields) :]  # type: ignore[index]
            yield path, start, None, rec, DataError("row has more cells than the header", file=path, line=start)
        else:
            rec.update((f, None) for f in fields[len(cells) :])
            yield path, start, rec, rec, None


def _csv_rows(reader: Any, path: Path, line0: int) -> Iterator[tuple[int, list]]:
    """``(line the record starts on, cells)`` of the reader's rows (a blank line is a row of no cells);
    a record the reader refuses (``csv.Error``: a field over ``csv.field_size_limit()``...) is a
    DataError at its line (the rest of the file cannot be trusted)."""
    while True:
        start = line0 + reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(f"unreadable CSV record ({exc})", file=path, line=start) from None
        yield start, cells


def csv_header(path: Path) -> Optional[tuple]:
    """The field names of a CSV/TSV file (its first record), or None when it has none."""
    reader = _csv_reader((text for _, text in _text_lines(path)), path)
    first = next(reader, None)
    return tuple(first) if first is not None else None


def csv_blocks(path: Path, rows: int, keep: bool = False) -> Iterator[tuple[int, int, int, int, bytes]]:
    """Blocks of about ``rows`` records of a CSV/TSV file (optionally gzipped), cut only between
    records: ``(a, b, start, end, data)``, lines a+1..b and bytes [start, end) of the (decompressed)
    text, and those bytes when ``keep`` (else ``b""``); the header is in the first block.

    A quoted field may hold line breaks, so a line start is not always a record start: the lines go
    through Python's csv reader (the workers' parser, same dialect), which asks for a line only to
    finish the record it is reading; where it returns a record, the next record starts. Nothing else
    is done with the records. A line the reader refuses (``csv.Error``) ends the cutting: the rest is
    one block, and the worker that reads it reports the error at its line."""
    lineno = pos = 0
    pending: list = []

    def lines() -> Iterator[str]:
        nonlocal lineno, pos
        with _read_errors(path, lambda: lineno), _open_binary(path) as fh:
            for raw in fh:
                lineno += 1
                pos += len(raw)
                if keep:
                    pending.append(raw)
                yield raw.decode("utf-8", errors="replace")  # only the record structure matters here

    a = start = n = 0
    text = lines()
    reader = _csv_reader(text, path)
    try:
        for _ in reader:
            n += 1
            if n >= rows:
                yield a, lineno, start, pos, b"".join(pending)
                a, start, n = lineno, pos, 0
                pending.clear()
    except csv.Error:
        for _ in text:  # the rest, uncut
            pass
    if pos > start:
        yield a, lineno, start, pos, b"".join(pending)


def open_parquet(path: Path) -> Any:
    """A ``pyarrow.parquet.ParquetFile``; an unreadable file is one InputError naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with _read_errors(path):
        try:
            return pq.ParquetFile(path)
        except pa.ArrowException as exc:
            raise InputError(f"not a readable Parquet file ({exc})", file=path) from None


def _check_file(f: Path) -> None:
    """Readable, not empty, and a real gzip stream when named ``.gz`` (checked before any scoring)."""
    with _read_errors(f), open(f, "rb") as fh:
        head = fh.read(2)
    if not head:
        raise file_error("empty file", file=f)
    if _is_gz(f) and head != _GZIP_MAGIC:
        raise InputError("not a gzip file (no gzip header); rename it without .gz if it is plain text", file=f)
