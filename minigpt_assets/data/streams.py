"""Byte streams of local files, decompressed as they are read: multi-member gzip and multi-frame zstd in bounded
chunks (a stream that ends inside a member or frame raises `TruncatedFile`), split into lines. The jsonl
reader of `sources.py` reads its files through `file_lines`."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Iterable, Iterator

READ_CHUNK = 256 << 10  # bytes read at a time (compressed or plain)
MAX_OUT_CHUNK = 1 << 20  # most decompressed bytes produced from one gzip or zstd step


class TruncatedFile(EOFError):
    """A compressed stream ended in the middle of a frame or member."""


def gzip_chunks(f) -> Iterator[bytes]:
    """Decompressed chunks of a (multi-member) gzip stream, each at most MAX_OUT_CHUNK bytes.

    Raises TruncatedFile when the stream ends inside a member, zlib.error when it is corrupt.
    """
    d = zlib.decompressobj(zlib.MAX_WBITS | 16)
    started = False  # whether the current member has received input
    while data := f.read(READ_CHUNK):
        while data:
            out = d.decompress(data, MAX_OUT_CHUNK)
            started = True
            if out:
                yield out
            if d.unconsumed_tail:
                data = d.unconsumed_tail
            elif d.eof:
                data = d.unused_data
                if data and not data.strip(b"\x00"):
                    data = b""  # zero padding after the last member
                d, started = zlib.decompressobj(zlib.MAX_WBITS | 16), False
            else:
                data = b""
    if started and not d.eof:
        raise TruncatedFile("gzip stream ended before the end-of-stream marker")


_ZSTD_MAGIC = 0xFD2FB528


def zstd_complete(f) -> str | None:
    """Walk the frame and block headers of a zstd file (seeking over block bodies, so this reads almost nothing)
    and say where it is cut short, or None when every frame is complete."""
    size = f.seek(0, os.SEEK_END)
    pos = 0

    def read(n: int) -> bytes:
        f.seek(pos)
        return f.read(n)

    while pos < size:
        head = read(4)
        if len(head) < 4:
            return f"cut inside a frame header at byte {pos}"
        magic = struct.unpack("<I", head)[0]
        if 0x184D2A50 <= magic <= 0x184D2A5F:  # skippable frame
            raw = read(8)
            if len(raw) < 8:
                return f"cut inside a skippable frame at byte {pos}"
            pos += 8 + struct.unpack("<I", raw[4:])[0]
            if pos > size:
                return "cut inside a skippable frame"
            continue
        if magic != _ZSTD_MAGIC:
            return f"not a zstd frame at byte {pos}"
        desc = read(5)
        if len(desc) < 5:
            return f"cut inside a frame header at byte {pos}"
        fhd = desc[4]
        single = (fhd >> 5) & 1
        fcs = {0: single, 1: 2, 2: 4, 3: 8}[fhd >> 6]
        pos += 5 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + fcs
        checksum = (fhd >> 2) & 1
        while True:
            bh = read(3)
            if len(bh) < 3:
                return "cut inside a block header"
            v = bh[0] | bh[1] << 8 | bh[2] << 16
            last, btype, bsize = v & 1, (v >> 1) & 3, v >> 3
            if btype == 3:
                return f"reserved block type at byte {pos}"
            pos += 3 + (1 if btype == 1 else bsize)
            if pos > size:
                return "cut inside a block"
            if last:
                break
        pos += 4 * checksum
        if pos > size:
            return "cut inside a frame checksum"
    return None


def zstd_chunks(f) -> Iterator[bytes]:
    """Decompressed chunks of a (multi-frame) zstd stream, bounded; TruncatedFile if the last frame is incomplete."""
    import zstandard

    problem = zstd_complete(f)
    f.seek(0)
    reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True, closefd=False)
    while out := reader.read(MAX_OUT_CHUNK):
        yield out
    if problem:
        raise TruncatedFile(f"zstd stream {problem}")


def lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Split a chunk stream on b"\\n"; an unfinished last line is yielded only if the stream ends cleanly."""
    pending: list[bytes] = []
    for data in chunks:
        parts = data.split(b"\n")
        if len(parts) == 1:
            pending.append(data)
            continue
        first = parts[0]
        if pending:
            pending.append(first)
            first = b"".join(pending)
            pending = []
        yield first
        yield from parts[1:-1]
        if parts[-1]:
            pending.append(parts[-1])
    if pending:
        yield b"".join(pending)


def raw_chunks(f) -> Iterator[bytes]:
    while data := f.read(READ_CHUNK):
        yield data


def file_lines(path: Path) -> Iterator[bytes]:
    """Lines (without b"\\n") of a plain, .gz or .zst file, by file ending."""
    name = path.name.lower()
    with open(path, "rb") as f:
        if name.endswith(".gz"):
            yield from lines(gzip_chunks(f))
        elif name.endswith((".zst", ".zstd")):
            yield from lines(zstd_chunks(f))
        else:
            yield from lines(raw_chunks(f))


def stream_errors() -> tuple[type[BaseException], ...]:
    import zstandard

    return (EOFError, zlib.error, zstandard.ZstdError)
