"""Counting every open of the files of a directory, by anyone (pyarrow's C++ readers included): the
kernel's inotify ``IN_OPEN`` events, read through libc (Linux)."""

from __future__ import annotations

import ctypes
import os
import struct
from collections import Counter
from pathlib import Path

IN_OPEN = 0x00000020
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)


class OpenCounter:
    """``with OpenCounter(directory) as opens: ...`` then ``opens.counts()``: opens per file name."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self._fd = -1
        self._counts: Counter = Counter()

    def __enter__(self) -> OpenCounter:
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0 or self._libc.inotify_add_watch(self._fd, str(self.directory).encode(), IN_OPEN) < 0:
            raise OSError(ctypes.get_errno(), "inotify unavailable")
        return self

    def __exit__(self, *exc) -> None:
        self._drain()
        os.close(self._fd)
        self._fd = -1

    def _drain(self) -> None:
        while self._fd >= 0:
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return
            pos = 0
            while pos < len(data):
                _, mask, _, size = _EVENT.unpack_from(data, pos)
                name = data[pos + _EVENT.size : pos + _EVENT.size + size].rstrip(b"\0").decode()
                if mask & IN_OPEN and name:
                    self._counts[name] += 1
                pos += _EVENT.size + size

    def counts(self) -> Counter:
        """Opens per file name seen so far."""
        self._drain()
        return Counter(self._counts)
