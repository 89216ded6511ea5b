"""The wire between a supervisor and its sealed worker: length-prefixed ``torch.save`` messages.

A message is a tuple whose first item names it; items are tensors, numbers, strings, None, lists, tuples
and dicts of them. Each side reads with ``torch.load(weights_only=True)``, so a message can carry data but
never code: a worker's plugin cannot make the supervisor run anything by what it sends.
"""
from __future__ import annotations

import io
import os
import struct
from typing import Any

import torch

_HEADER = struct.Struct("<Q")
MAX_MESSAGE = 1 << 36  # 64 GiB: far above any dataset split, far below a garbled length


class ChannelClosed(EOFError):
    """The other side closed the channel (or died)."""


class Channel:
    """One direction-pair of pipe file descriptors: :meth:`send` on ``write_fd``, :meth:`recv` on ``read_fd``."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.reader = os.fdopen(read_fd, "rb", buffering=0)
        self.writer = os.fdopen(write_fd, "wb", buffering=0)

    def send(self, *message: Any) -> None:
        """Write one message."""
        buf = io.BytesIO()
        torch.save(tuple(message), buf)
        data = buf.getbuffer()
        try:
            self.writer.write(_HEADER.pack(len(data)))
            view = memoryview(data)
            while view:
                n = self.writer.write(view)
                view = view[n:]
        except (BrokenPipeError, ValueError) as exc:
            raise ChannelClosed(f"the other side is gone ({exc})") from None

    def _read(self, n: int) -> bytearray:
        out = bytearray(n)
        view, got = memoryview(out), 0
        while got < n:
            k = self.reader.readinto(view[got:])
            if not k:
                raise ChannelClosed("the other side closed the channel")
            got += k
        return out

    def recv(self) -> tuple[Any, ...]:
        """Read one message (a tuple, its first item a string); :class:`ChannelClosed` at end of stream."""
        (n,) = _HEADER.unpack(self._read(_HEADER.size))
        if n > MAX_MESSAGE:
            raise ValueError(f"sealed worker message of {n} bytes: garbled stream")
        message = torch.load(io.BytesIO(self._read(n)), weights_only=True)
        if not isinstance(message, tuple) or not message or not isinstance(message[0], str):
            raise ValueError(f"sealed worker message must be a tuple naming its kind, got {type(message).__name__}")
        return message

    def close(self) -> None:
        """Close both descriptors."""
        for f in (self.reader, self.writer):
            try:
                f.close()
            except OSError:
                pass
