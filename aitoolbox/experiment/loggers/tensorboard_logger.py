"""TensorBoard event files, written directly.

``SummaryWriter.add_scalar`` builds a protobuf per value and checksums it in pure Python (~30 µs
a scalar), far more than a training step of a small model. Scalars are the hot path here, so this
logger encodes their ``Event`` records itself: one event per step holding every scalar of that
step (``Event{wall_time, step, summary{value{tag, simple_value}}}``), framed as TFRecords (length,
masked CRC-32C of the length, data, masked CRC-32C of the data). The tag bytes are encoded once
per tag; the CRC comes from ``google-crc32c`` (C) when installed, else from tensorboard's own
pure-Python one. A block of steps is laid out with numpy; its CRCs are computed record by record
(in one ``map`` over the records when the C CRC is there) and masked with numpy. Anything else
(the hyperparameters' text summary) goes through tensorboard's protobuf classes. TensorBoard,
``EventAccumulator`` and ``tf.data`` read the files as usual.
"""
from __future__ import annotations

import json
import os
import socket
import struct
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import numpy as np

from aitoolbox.experiment.loggers.base import (ExperimentLogger, columns_to_rows, flatten_params, resolve_folder,
                                               rows_to_columns)
from aitoolbox.utils.optional import import_optional

_UINT64, _UINT32 = struct.Struct("<Q").pack, struct.Struct("<I").pack
_EVENT_HEAD = struct.Struct("<BdB").pack  # Event.wall_time (field 1, double), then the key of step (field 2)
_file_counter = 0


def _varint(value: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative int (the short cases without a loop)."""
    if value < 0x80:
        return bytes((value,))
    if value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    if value < 0x200000:
        return bytes((value & 0x7F | 0x80, value >> 7 & 0x7F | 0x80, value >> 14))
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _crc_functions() -> tuple:
    """``(masked, raw)``: the masked CRC-32C of TFRecords, and the plain CRC-32C from
    ``google_crc32c`` when installed (None without it)."""
    try:
        import google_crc32c
    except ImportError:
        module = import_optional("tensorboard.compat.tensorflow_stub.pywrap_tensorflow", "tensorboard",
                                 "TensorBoardLogger")
        return module.masked_crc32c, None
    value = google_crc32c.value

    def masked_crc32c(data: bytes) -> int:
        crc = value(data)
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    return masked_crc32c, value


def _masked(crcs: np.ndarray) -> np.ndarray:
    """TFRecord's mask of ``uint32`` CRCs (rotated right by 15 bits, plus a constant), wrapping as uint32."""
    return ((crcs >> np.uint32(15)) | (crcs << np.uint32(17))) + np.uint32(0xA282EAD8)


class EventFileWriter:
    """Appends TFRecord-framed ``Event`` records to one ``events.out.tfevents.*`` file.

    Args:
        folder: where the file is created.
    """

    def __init__(self, folder: str):
        global _file_counter
        _file_counter += 1
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{_file_counter}"
        self.path = os.path.join(folder, name)
        self._file = open(self.path, "ab")
        self._crc, self._raw_crc = _crc_functions()
        self._headers: Dict[int, bytes] = {}
        self._tags: Dict[str, bytes] = {}
        self._summaries: Dict[tuple, Callable[..., bytes]] = {}
        # the first record says which format version the file speaks
        self.write_records([self._event_prefix(time.time(), 0) + b"\x1a" + _len_prefixed(b"brain.Event:2")])
        self.flush()

    def _record(self, data: bytes) -> bytes:
        header = self._headers.get(len(data))
        if header is None:
            length = _UINT64(len(data))
            header = self._headers[len(data)] = length + _UINT32(self._crc(length))
        return header + data + _UINT32(self._crc(data))

    @staticmethod
    def _event_prefix(wall_time: float, step: int) -> bytes:
        return _EVENT_HEAD(0x09, wall_time, 0x10) + _varint(step)

    def _tag(self, tag: str) -> bytes:
        """``Summary.Value`` up to its float: field 1 (the value message) and its tag."""
        encoded = self._tags.get(tag)
        if encoded is None:
            raw = tag.encode("utf-8")
            body = b"\x0a" + _varint(len(raw)) + raw + b"\x15"
            encoded = self._tags[tag] = b"\x0a" + _varint(len(body) + 4) + body
        return encoded

    def scalar_event(self, step: int, wall_time: float, tags: Sequence[str],
                     values: Sequence[Optional[float]]) -> bytes:
        """The record of one step's scalars (``tags`` a tuple; values None are left out)."""
        if None in values:
            tags, values = zip(*[(t, v) for t, v in zip(tags, values) if v is not None]) or ((), ())
        packer = self._summaries.get(tags)
        if packer is None:
            packer = self._summaries[tags] = self._summary_packer(tags)
        return self._record(_EVENT_HEAD(0x09, wall_time, 0x10) + _varint(step) + packer(*values))

    def scalar_block(self, steps: Sequence[int], wall_times: Sequence[float], tags: Sequence[str], values) -> bytes:
        """The records of many steps at once: ``values`` an ``(n, len(tags))`` float array, nothing missing.

        The records of steps whose varint has the same width have the same layout, so they are
        laid out together in one ``uint8`` array (a template row, then the time, step, value
        columns written with numpy); only the CRCs are computed record by record.
        """
        n = len(steps)
        steps = np.asarray(steps, dtype=np.int64) if isinstance(steps, np.ndarray) else \
            np.frombuffer(struct.pack(f"<{n}q", *steps), dtype="<i8")
        widths = np.ones(n, dtype=np.int64)
        for shift in range(7, 64, 7):
            widths += steps >= (1 << shift)
        cuts = [0, *(np.flatnonzero(np.diff(widths)) + 1).tolist(), n]
        wall_times, values = _float64s(wall_times), np.asarray(values, dtype="<f4")
        return b"".join(self._same_width_block(steps[lo:hi], wall_times[lo:hi], values[lo:hi], tags, int(widths[lo]))
                        for lo, hi in zip(cuts[:-1], cuts[1:]))

    def _same_width_block(self, steps, wall_times, values, tags: Sequence[str], width: int) -> bytes:
        n, tag_bytes = len(steps), [self._tag(t) for t in tags]
        summary = b"".join(e + bytes(4) for e in tag_bytes)
        data = b"\x09" + bytes(8) + b"\x10" + bytes(width) + b"\x2a" + _varint(len(summary)) + summary
        header = self._record(data)[:12]  # length and its CRC: the same for every record here
        rows = np.tile(np.frombuffer(header + data + bytes(4), dtype=np.uint8), (n, 1))
        rows[:, 13:21] = wall_times.view(np.uint8).reshape(n, 8)  # after the header and the 0x09 key
        for j in range(width):  # the step's varint bytes, after the 0x10 key
            rows[:, 22 + j] = ((steps >> (7 * j)) & 0x7F) | (0x80 if j < width - 1 else 0)
        offset = 12 + len(data) - len(summary)
        for i, encoded in enumerate(tag_bytes):
            offset += len(encoded)
            rows[:, offset:offset + 4] = np.ascontiguousarray(values[:, i]).view(np.uint8).reshape(n, 4)
            offset += 4
        flat, size = rows.tobytes(), rows.shape[1]  # bytes: what the C CRC takes
        records = [flat[start:start + len(data)] for start in range(12, n * size, size)]
        if self._raw_crc is not None:
            crcs = _masked(np.fromiter(map(self._raw_crc, records), dtype=np.uint32, count=n))
        else:
            crcs = np.fromiter(map(self._crc, records), dtype=np.uint32, count=n)
        rows[:, -4:] = crcs.astype("<u4").view(np.uint8).reshape(n, 4)
        return rows.tobytes()

    def _summary_packer(self, tags: Sequence[str]) -> Callable[..., bytes]:
        """``values -> summary field bytes`` for these tags: one ``struct`` call per step."""
        encoded = [self._tag(t) for t in tags]
        length = sum(len(e) + 4 for e in encoded)
        fmt = struct.Struct("<" + "".join(f"{len(e)}sf" for e in encoded)).pack
        head = b"\x2a" + _varint(length)
        if not encoded:
            return lambda: head
        return lambda *values: head + fmt(*[x for pair in zip(encoded, values) for x in pair])

    def write_records(self, events: Sequence[bytes], framed: bool = False) -> None:
        """Append events (``framed``: already TFRecord records)."""
        self._file.write(b"".join(events if framed else [self._record(e) for e in events]))

    def write_summary(self, summary, step: int) -> None:
        """Append a tensorboard ``Summary`` protobuf as an event at ``step``."""
        data = summary.SerializeToString()
        self.write_records([self._event_prefix(time.time(), step) + b"\x2a" + _len_prefixed(data)])

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def _float64s(values: Sequence[float]) -> np.ndarray:
    """``values`` as a float64 array (a list of Python floats through ``struct``, in C: a fraction
    of numpy's per-element conversion). Raises ``struct.error`` at a None."""
    if isinstance(values, np.ndarray):
        return values.astype("<f8", copy=False)
    return np.frombuffer(struct.pack(f"<{len(values)}d", *values), dtype="<f8")


def _len_prefixed(data: bytes) -> bytes:
    return _varint(len(data)) + data


class TensorBoardLogger(ExperimentLogger):
    """Scalars into TensorBoard event files (``<experiment>/tensorboard/`` by default).

    Args:
        save_dir: the folder of the event files; None: ``tensorboard/`` in the experiment folder.
        epoch_as_step: plot the per-epoch values against the epoch index (as aitoolbox 1.8's
            TensorBoard callbacks did) instead of the number of batches trained.
        epoch_tag: ``name -> tag`` of a per-epoch value; None: the history name itself.
        summary_writer_kwargs: arguments of the ``SummaryWriter`` that :attr:`summary_writer` opens.

    Raises:
        ImportError: (at :meth:`setup`) tensorboard is not installed.
    """

    name = "TensorBoard"
    needs_folder = True

    def __init__(self, save_dir: Optional[str] = None, epoch_as_step: bool = False,
                 epoch_tag: Optional[Callable[[str], str]] = None,
                 summary_writer_kwargs: Optional[Mapping[str, Any]] = None):
        self.save_dir = None if save_dir is None else os.path.expanduser(os.fspath(save_dir))
        self.epoch_as_step = epoch_as_step
        self.epoch_tag = epoch_tag
        self.folder: Optional[str] = None
        self.writer: Optional[EventFileWriter] = None
        self.summary_writer_kwargs = dict(summary_writer_kwargs or {})
        self._summary_writer = None

    @property
    def summary_writer(self):
        """A ``torch.utils.tensorboard.SummaryWriter`` on the same folder (opened on first use), for
        what this logger does not write itself: histograms, images, graphs ..."""
        if self._summary_writer is None:
            writer_class = import_optional("torch.utils.tensorboard", "tensorboard", type(self).__name__).SummaryWriter
            self._summary_writer = writer_class(log_dir=self.folder, **self.summary_writer_kwargs)
        return self._summary_writer

    def setup(self, experiment_dir: Optional[str]) -> None:
        import_optional("tensorboard", "tensorboard", type(self).__name__)
        self.folder = resolve_folder(self, self.save_dir, experiment_dir, "tensorboard")
        self.writer = EventFileWriter(self.folder)

    def log_steps(self, names: Sequence[str], steps: Sequence[int], wall_times: Sequence[float],
                  rows: Sequence[Sequence[Optional[float]]]) -> None:
        self.log_columns(names, steps, wall_times, rows_to_columns(rows, len(names)))

    def log_columns(self, names: Sequence[str], steps: Sequence[int], wall_times: Sequence[float],
                    columns: Sequence[Sequence[Optional[float]]]) -> None:
        names, n = tuple(names), len(steps)
        values = None
        if len(columns) == len(names) and n > 1:
            try:
                values = np.stack([_float64s(column) for column in columns], axis=1)
            except (struct.error, TypeError, ValueError):  # a missing value (None)
                values = None
        if values is not None:
            self.writer.write_records([self.writer.scalar_block(steps, wall_times, names, values)], framed=True)
        else:  # record by record, leaving the missing values out
            event = self.writer.scalar_event
            self.writer.write_records([event(s, t, names, row) for s, t, row in
                                       zip(steps, wall_times, columns_to_rows(columns, n))], framed=True)
        self.writer.flush()

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.log_steps(list(metrics), [step], [time.time()], [list(metrics.values())])

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        """One scalar (``SummaryWriter.add_scalar``'s signature)."""
        self.log_metrics({tag: float(value)}, step)

    def log_epoch_metrics(self, metrics: Mapping[str, float], step: int, epoch: int) -> None:
        tag = self.epoch_tag or (lambda name: name)
        self.log_metrics({tag(name): value for name, value in metrics.items()}, epoch if self.epoch_as_step else step)

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        text = import_optional("torch.utils.tensorboard.summary", "tensorboard", type(self).__name__).text
        rows = "\n".join(f"| {name} | {json.dumps(value, default=str)} |"
                         for name, value in flatten_params(params).items())
        self.writer.write_summary(text("hyperparams", "| name | value |\n|---|---|\n" + rows), 0)
        self.writer.flush()

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()
        if self._summary_writer is not None:
            self._summary_writer.flush()

    def finalize(self, status: str = "success") -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self._summary_writer is not None:
            self._summary_writer.close()
            self._summary_writer = None
