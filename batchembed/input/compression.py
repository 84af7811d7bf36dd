"""Compressed inputs as plain byte streams: decompressed while read, never whole in memory or on disk.

gzip, zstd and bz2 go through pyarrow's own codecs (``pyarrow.CompressedInputStream``, in C++); xz,
which pyarrow's wheels do not build, goes through Python's ``lzma`` wrapped as a pyarrow file. Both
read the compressed bytes in blocks as the reader above asks for them, so memory stays at a block or
two whatever the file's size. A truncated or damaged file surfaces as ``OSError``/``EOFError``/
``lzma.LZMAError`` at the point where it ends; ``decompress_error`` turns that into one clear line.
"""

from __future__ import annotations

import io
import lzma

import pyarrow as pa

#: What a truncated or damaged compressed file raises while it is read.
DECOMPRESS_ERRORS = (OSError, EOFError, lzma.LZMAError)


def decompressed(raw, codec: str | None):
    """``raw`` (a path, or a pyarrow/Python binary stream) as a stream of its decompressed bytes.

    Without ``codec`` a path is returned as it is (pyarrow readers open it themselves).
    """
    if codec is None:
        return raw
    if codec == "xz":
        return pa.PythonFile(lzma.LZMAFile(raw), mode="r")  # a path or a binary stream
    if isinstance(raw, str):
        raw = pa.OSFile(raw, "rb")
    return pa.CompressedInputStream(raw, codec)


def binary_lines(stream) -> io.BufferedReader:
    """A pyarrow input stream as a Python binary file whose lines can be iterated (for error scans)."""
    if isinstance(stream, str):
        return open(stream, "rb")
    return io.BufferedReader(stream, buffer_size=1 << 20)


#: How each codec's data starts, and the file suffix that names it.
MAGIC = {
    "gzip": (b"\x1f\x8b", "gz"),
    "zstd": (b"\x28\xb5\x2f\xfd", "zst"),
    "bz2": (b"BZh", "bz2"),
    "xz": (b"\xfd7zXZ\x00", "xz"),
}


def decompress_error(
    path: object, codec: str, exc: BaseException, rows: int | None = None, head: bytes | None = None
) -> str:
    """The message for a compressed input that cannot be read to its end (truncated or damaged), or that is
    not ``codec`` data at all (``head``: its first bytes, when known)."""
    magic, suffix = MAGIC.get(codec, (b"", codec))
    if head and magic and not head.startswith(magic):
        looks = (
            "plain text" if head.decode("utf-8", "ignore").isprintable() or head[:1] in (b"{", b"[") else "other data"
        )
        return (
            f"{path}: not {codec} data, although its name ends in .{suffix} (it starts like {looks}); rename it "
            f"without .{suffix} if it is not compressed, or compress it with {codec}"
        )
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    after = f" after {rows:,} rows" if rows else ""
    return (
        f"{path}: the {codec} data ends early or is damaged{after} ({detail}); "
        "the file is truncated or corrupt: copy it again (rows already committed are kept)"
    )
