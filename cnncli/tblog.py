"""TensorBoard event files for a run, written by hand: each epoch's metrics.csv values as scalars, so
`tensorboard --logdir runs` shows the curves with neither tensorflow nor tensorboard installed. Not
a general protobuf or TensorBoard writer: scalars only.
"""

# TensorBoard event files for a run, written by hand: each epoch's metrics.csv values as scalars
# (train/loss, train/acc, val/loss, val/acc, lr) at the epoch's step, so `tensorboard --logdir runs`
# shows the curves, as Lightning's default logger does, with neither tensorflow nor tensorboard installed.
# The file is TFRecord framing (length, masked CRC-32C) around Event protobufs (wall_time = 1,
# step = 2, file_version = 3, summary = 5, session_log = 7; Summary.Value tag = 1, simple_value = 2;
# SessionLog status = 1, START = 1). A resumed run's file opens with a SessionLog START one step past
# its checkpoint's: TensorBoard then drops the points of the run's earlier files from that step on
# (epochs after a best.npz it resumed from, which it trains again), as PyTorch's purge_step does.

from __future__ import annotations

import math
import os
import socket
import struct
import time
from pathlib import Path

SCALARS = (("train_loss", "train/loss"), ("train_acc", "train/acc"), ("val_loss", "val/loss"),
           ("val_acc", "val/acc"), ("lr", "lr"))


def _crc32c_table() -> list:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum TFRecord uses."""
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1                       # int64 as protobuf encodes it (two's complement)
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    key = _varint(number << 3 | wire)
    if wire == 2:                            # length-delimited
        return key + _varint(len(payload)) + payload
    return key + payload


def event(wall_time: float, step: int = 0, scalars=None, file_version: str | None = None,
          start: bool = False) -> bytes:
    """One serialized Event: a file_version header, a Summary of (tag, value) scalars at `step`, or
    (start) a SessionLog START at `step`."""
    body = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
    if file_version is not None:
        body += _field(3, 2, file_version.encode())
    if start:
        body += _field(7, 2, _field(1, 0, _varint(1)))
    if scalars:
        values = b"".join(_field(1, 2, _field(1, 2, tag.encode()) + _field(2, 5, struct.pack("<f", value)))
                          for tag, value in scalars)
        body += _field(5, 2, values)
    return body


def record(data: bytes) -> bytes:
    """TFRecord framing: uint64 length, its masked CRC, the data, the data's masked CRC."""
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc(header)) + data + struct.pack("<I", masked_crc(data))


class EventLog:
    """An events.out.tfevents.* file in a run folder, created on the first write and appended to
    (a resumed run starts a file of its own; TensorBoard reads them together). resumed_at: the global
    step of the checkpoint a resumed run goes on from (the points after it are dropped), else None."""

    def __init__(self, run_dir: Path, resumed_at: int | None = None):
        self.path = Path(run_dir) / (f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
                                     f".{os.getpid()}.cnncli")
        self._started = False
        self.resumed_at = resumed_at

    def epoch(self, row: dict) -> None:
        """The finite values of a metrics.csv row as scalars at its step."""
        scalars = [(tag, float(row[key])) for key, tag in SCALARS
                   if isinstance(row.get(key), (int, float)) and math.isfinite(row[key])]
        with open(self.path, "ab") as f:
            if not self._started:
                f.write(record(event(time.time(), file_version="brain.Event:2")))
                if self.resumed_at is not None:
                    f.write(record(event(time.time(), self.resumed_at + 1, start=True)))
                self._started = True
            f.write(record(event(time.time(), int(row["step"]), scalars)))


def read_records(path) -> list:
    """The data of every record of a TFRecord file, each CRC checked (ValueError on a bad one)."""
    out, raw, i = [], Path(path).read_bytes(), 0
    while i < len(raw):
        header = raw[i:i + 8]
        (n,) = struct.unpack("<Q", header)
        (crc,) = struct.unpack("<I", raw[i + 8:i + 12])
        data = raw[i + 12:i + 12 + n]
        (dcrc,) = struct.unpack("<I", raw[i + 12 + n:i + 16 + n])
        if crc != masked_crc(header) or dcrc != masked_crc(data):
            raise ValueError(f"{path}: bad CRC in the record at byte {i}")
        out.append(data)
        i += 16 + n
    return out
