"""The external sink's local outbox: append-only segment files, never the source database.

Layout of the folder (`external.outbox_dir`, default
`external_outbox/<slot>/<sink name>/`):

    <first frame lsn:016x>-<seq:010d>.seg   segments: frames appended, fsync'd per batch
    state                                  delivered position + ledger (atomic rewrite)
    .lock                                  flock of the process that owns the folder

**Frame** (one per `write(batch)`): a header (magic, length, CRC-32 of all
that follows the CRC, the batch's last position, the enqueue time) and the
batch's events grouped by delivery lane. Per lane: a fixed-width metadata
array (position, event id, lane key, lengths), the events' CloudEvent texts
joined by `,` (a request body is `[` + a slice of that + `]`: no Python
object per event on the way out), the CloudEvent ids joined by newline (the
request's `webhook-id` digest is a slice too) and the content ids.

**Durability**: `append` writes a frame, fsyncs the segment (and the folder
when it created the segment) and only then returns the batch's last
position, which the runtime may then acknowledge on the slot. A crash leaves
at worst a torn frame at the tail of the newest segment; `open` cuts it off
(its batch was never acknowledged, so the slot sends it again).

**Delivery**: a feeder thread reads frames in order (from the page cache:
they were just written) and hands each lane its part; lanes POST in order
(one request at a time per lane, content ids hashed onto lanes: per-content
order). A frame is *resolved* when every lane has delivered or dead-lettered
its part. The delivered position (the highest frame such that it and all
before it are resolved) is written to `state` about once a second and at
close; segments wholly at or below it are deleted. After a crash, frames
above the stored delivered position are sent again: duplicates, under the
same ids (at least once).

**Ledger** (what `pulse verify` reads): `state` also holds the event ids of
every resolved frame as ranges of consecutive ids (bigserial ids coalesce:
one range per stretch without gaps), so the accounting of an event id is:
in the dead-letter store, else in the ledger (delivered), else in a segment
above the delivered position (pending), else a finding.

**Bounds**: `outbox_max_bytes` of segments (then `outbox_full`: pause, i.e.
refuse with a transient error so the runtime holds the slot, or
dead-letter), `inflight_max_bytes` of frames in the lanes' memory.

`MemoryLog` is the same frame stream without files, for `pulse consume`
(Kafka is the log there): the sink's position is the delivered one, so the
consumer commits offsets only for acknowledged events.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pulse.arrays import string_bytes, unique_ints
from pulse.errors import TerminalError, TransientError
from pulse.fsutil import fsync_dir, replace_durably, truncate_durably
from pulse.log import get_logger
from pulse.model import ZERO, Position

log = get_logger(__name__)

MAGIC = b"PXF1"
# magic, length of what follows the crc, crc32, last lsn, last seq, enqueued_at, lanes, blocks
HEADER = struct.Struct("<4sIIQIdHH")
_CRC_FROM = 12  # the crc covers the header after it, then the body
BLOCK = struct.Struct("<HIIII")  # lane, events, parts bytes, ce-id bytes, content-id bytes
META = np.dtype([("lsn", "<u8"), ("seq", "<u4"), ("event_id", "<i8"), ("lane_key", "<u4"), ("part_len", "<u4"),
                 ("attrs_len", "<u4"), ("ce_len", "<u2"), ("cid_len", "<u2")])
_SEG = re.compile(r"^([0-9a-f]{16})-(\d{10})\.seg$")
STATE_MAGIC = b"PXS1"
STATE_HEAD = struct.Struct("<4sQIQIQ")  # magic, delivered lsn/seq, appended lsn/seq, ranges


class Encoded(NamedTuple):
    """One event as the outbox keeps it: its CloudEvent text and what delivery needs besides."""

    lsn: int
    seq: int
    event_id: int
    lane_key: int
    content_id: str | None
    ce_id: str
    part: bytes  # the structured CloudEvent JSON: attrs[:-1] + ',"data":' + data + '}'
    attrs_len: int  # len(attrs JSON): data starts at attrs_len - 1 + len(',"data":')


def build_frame(events: Sequence[Encoded], last: Position, enqueued_at: float, lanes: int) -> bytes:
    """The bytes of one frame: the events grouped by lane (`lane_key % lanes`), order kept within a lane."""
    groups: dict[int, list[Encoded]] = {}
    for e in events:
        lane = e.lane_key % lanes
        group = groups.get(lane)
        if group is None:
            groups[lane] = [e]
        else:
            group.append(e)
    body: list[bytes] = []
    for lane in sorted(groups):
        group = groups[lane]
        ce = [e.ce_id.encode() for e in group]
        cid = [(e.content_id or "").encode() for e in group]
        meta = np.array([(e.lsn, e.seq, e.event_id, e.lane_key, len(e.part), e.attrs_len, len(c), len(d))
                         for e, c, d in zip(group, ce, cid)], META)
        parts = b",".join([e.part for e in group])
        ces = b"\n".join(ce)
        cids = b"".join(cid)
        body += [BLOCK.pack(lane, len(group), len(parts), len(ces), len(cids)), meta.tobytes(), parts, ces, cids]
    rest = struct.pack("<QIdHH", last.lsn, last.seq, enqueued_at, lanes, len(groups)) + b"".join(body)
    return MAGIC + struct.pack("<II", len(rest), zlib.crc32(rest)) + rest


def build_frame_columns(cols, last: Position, enqueued_at: float, lanes: int) -> bytes:
    """`build_frame` of `external.columns.EncodedColumns`: the same bytes, without a Python object per event.

    The rows are taken once in lane order (stable: source order within a
    lane); each lane's texts, ids and content ids are then slices of those
    buffers, and the frame is joined once.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(cols)
    lane = cols.lane_key % lanes
    order = np.argsort(lane, kind="stable")
    lane_sorted = lane[order]
    starts = np.flatnonzero(np.r_[True, lane_sorted[1:] != lane_sorted[:-1]]) if n else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], n].astype(np.int64)
    large = pa.large_string()
    take = pa.array(order)
    parts = string_bytes(pc.take(cols.part_sep, take))  # each text followed by ","
    ces = string_bytes(pc.take(pc.binary_join_element_wise(cols.ce_id, pa.scalar("\n", large),
                                                           pa.scalar("", large)), take))
    cids = string_bytes(pc.take(pc.fill_null(cols.content_id, ""), take))
    meta = np.zeros(n, META)
    meta["lsn"], meta["seq"], meta["event_id"] = cols.lsn[order], cols.seq[order], cols.event_id[order]
    meta["lane_key"], meta["attrs_len"] = cols.lane_key[order], cols.attrs_len[order]
    meta["part_len"] = np.diff(parts[1]) - 1
    meta["ce_len"] = np.diff(ces[1]) - 1
    meta["cid_len"] = np.diff(cids[1])
    head = struct.pack("<QIdHH", last.lsn, last.seq, enqueued_at, lanes, len(starts))
    pieces: list = [head]
    size, crc = len(head), zlib.crc32(head)
    for a, b in zip(starts.tolist(), ends.tolist()):
        p = parts[0][parts[1][a]:parts[1][b] - 1]  # without the last separator
        c = ces[0][ces[1][a]:ces[1][b] - 1]
        d = cids[0][cids[1][a]:cids[1][b]]
        block = [BLOCK.pack(int(lane_sorted[a]), b - a, len(p), len(c), len(d)), meta[a:b].tobytes(), p, c, d]
        for x in block:
            crc = zlib.crc32(x, crc)
            size += len(x)
        pieces += block
    return b"".join([MAGIC, struct.pack("<II", size, crc), *pieces])


class Chunk:
    """One lane's events of one frame (shared, read-only): enough to build request bodies from slices."""

    __slots__ = ("frame", "enqueued_at", "meta", "parts", "part_off", "ces", "ce_off", "cids", "cid_off", "nbytes")

    def __init__(self, frame: "FrameInfo", enqueued_at: float, meta: np.ndarray, parts: bytes, ces: bytes,
                 cids: bytes) -> None:
        self.frame = frame
        self.enqueued_at = enqueued_at
        self.meta = meta
        self.parts = parts
        self.ces = ces
        self.cids = cids
        n = len(meta)
        # off[k] = start of event k; off[n] = end + 1 (as if followed by a separator): slice = x[off[i]:off[j] - 1]
        self.part_off = np.zeros(n + 1, np.int64)
        np.cumsum(meta["part_len"].astype(np.int64) + 1, out=self.part_off[1:])
        self.ce_off = np.zeros(n + 1, np.int64)
        np.cumsum(meta["ce_len"].astype(np.int64) + 1, out=self.ce_off[1:])
        self.cid_off = np.zeros(n + 1, np.int64)
        np.cumsum(meta["cid_len"].astype(np.int64), out=self.cid_off[1:])
        self.nbytes = len(parts) + len(ces) + len(cids) + meta.nbytes

    def __len__(self) -> int:
        return len(self.meta)

    def parts_slice(self, i: int, j: int) -> bytes:
        return self.parts[self.part_off[i]:self.part_off[j] - 1]

    def ces_slice(self, i: int, j: int) -> bytes:
        return self.ces[self.ce_off[i]:self.ce_off[j] - 1]

    def event(self, k: int) -> Encoded:
        m = self.meta[k]
        cid = self.cids[self.cid_off[k]:self.cid_off[k + 1]].decode()
        return Encoded(int(m["lsn"]), int(m["seq"]), int(m["event_id"]), int(m["lane_key"]), cid or None,
                       self.ces_slice(k, k + 1).decode(), self.parts_slice(k, k + 1), int(m["attrs_len"]))


class FrameInfo:
    """A frame read by the feeder: how many lanes still owe it, and its event ids (for the ledger)."""

    __slots__ = ("last", "enqueued_at", "open_parts", "event_ids", "events", "nbytes", "segment")

    def __init__(self, last: Position, enqueued_at: float, event_ids: np.ndarray, nbytes: int,
                 segment: Path | None) -> None:
        self.last = last
        self.enqueued_at = enqueued_at
        self.open_parts = 0
        self.event_ids = event_ids
        self.events = len(event_ids)
        self.nbytes = nbytes
        self.segment = segment


def parse_frame(rest: bytes, lanes: int, segment: Path | None) -> tuple[FrameInfo, dict[int, list[Chunk]]]:
    """A frame's body (after magic, length and crc) as per-lane chunks for `lanes` delivery lanes.

    A frame written with another lane count (a restart with a new
    `concurrency`) is regrouped event by event, so that a content id keeps
    one lane from here on.
    """
    lsn, seq, enq, frame_lanes, blocks = struct.unpack_from("<QIdHH", rest, 0)
    off = struct.calcsize("<QIdHH")
    raw: list[tuple[int, np.ndarray, bytes, bytes, bytes]] = []
    for _ in range(blocks):
        lane, n, plen, clen, dlen = BLOCK.unpack_from(rest, off)
        off += BLOCK.size
        meta = np.frombuffer(rest, META, n, off)
        off += meta.nbytes
        parts = rest[off:off + plen]
        off += plen
        ces = rest[off:off + clen]
        off += clen
        cids = rest[off:off + dlen]
        off += dlen
        raw.append((lane, meta, parts, ces, cids))
    ids = np.concatenate([r[1]["event_id"] for r in raw]) if raw else np.empty(0, np.int64)
    info = FrameInfo(Position(lsn, seq), enq, ids, len(rest), segment)
    out: dict[int, list[Chunk]] = {}
    for lane, meta, parts, ces, cids in raw:
        chunk = Chunk(info, enq, meta, parts, ces, cids)
        if frame_lanes == lanes:
            out.setdefault(lane, []).append(chunk)
            continue
        target = meta["lane_key"] % lanes
        for new in np.unique(target):
            events = [chunk.event(int(k)) for k in np.nonzero(target == new)[0]]
            sub = build_frame(events, Position(lsn, seq), enq, lanes)
            _info, parsed = parse_frame(sub[12:], lanes, segment)
            for c in parsed[int(new)]:
                c.frame = info
                out.setdefault(int(new), []).append(c)
    info.open_parts = sum(len(v) for v in out.values())
    return info, out


class Ledger:
    """Event ids resolved (delivered or dead-lettered), as sorted disjoint [start, end] ranges."""

    def __init__(self, ranges: np.ndarray | None = None) -> None:
        self.ranges = ranges if ranges is not None else np.empty((0, 2), np.int64)

    def add(self, ids: np.ndarray) -> None:
        if not len(ids):
            return
        ids = unique_ints(ids)
        breaks = np.nonzero(np.diff(ids) != 1)[0]
        starts = np.concatenate(([ids[0]], ids[breaks + 1]))
        ends = np.concatenate((ids[breaks], [ids[-1]]))
        new = np.stack([starts, ends], axis=1)
        allr = np.concatenate([self.ranges, new]) if len(self.ranges) else new
        allr = allr[np.argsort(allr[:, 0], kind="stable")]
        # merge overlapping or adjacent ranges (few: ids without gaps make one range)
        out_s, out_e = [int(allr[0, 0])], [int(allr[0, 1])]
        for s, e in allr[1:].tolist():
            if s <= out_e[-1] + 1:
                if e > out_e[-1]:
                    out_e[-1] = e
            else:
                out_s.append(s)
                out_e.append(e)
        self.ranges = np.stack([np.array(out_s, np.int64), np.array(out_e, np.int64)], axis=1)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Boolean mask: which of `ids` lie in a range."""
        ids = np.asarray(ids, np.int64)
        if not len(self.ranges):
            return np.zeros(len(ids), bool)
        k = np.searchsorted(self.ranges[:, 0], ids, side="right") - 1
        ok = k >= 0
        kk = np.where(ok, k, 0)
        return ok & (ids <= self.ranges[kk, 1])

    def count(self) -> int:
        return int((self.ranges[:, 1] - self.ranges[:, 0] + 1).sum()) if len(self.ranges) else 0


class OutboxState(NamedTuple):
    delivered: Position
    appended: Position
    ledger: Ledger


def read_state(directory: Path) -> OutboxState:
    path = Path(directory) / "state"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return OutboxState(ZERO, ZERO, Ledger())
    if len(data) < STATE_HEAD.size or data[:4] != STATE_MAGIC:
        raise TerminalError(f"{path} is not an outbox state file",
                            hint=f"restore it, or move the outbox folder {directory} away")
    _m, dl, ds, al, aseq, n = STATE_HEAD.unpack_from(data, 0)
    ranges = np.frombuffer(data, np.int64, n * 2, STATE_HEAD.size).reshape(n, 2).copy()
    return OutboxState(Position(dl, ds), Position(al, aseq), Ledger(ranges))


def write_state(directory: Path, state: OutboxState) -> None:
    ranges = state.ledger.ranges
    data = STATE_HEAD.pack(STATE_MAGIC, state.delivered.lsn, state.delivered.seq, state.appended.lsn,
                           state.appended.seq, len(ranges)) + np.ascontiguousarray(ranges, np.int64).tobytes()
    replace_durably(Path(directory) / "state", data)


class Segment:
    __slots__ = ("path", "first", "last", "size", "frames")

    def __init__(self, path: Path, first: Position) -> None:
        self.path = path
        self.first = first
        self.last = ZERO  # last position of its last whole frame
        self.size = 0  # bytes of whole frames
        self.frames = 0


def segment_name(first: Position) -> str:
    return f"{first.lsn:016x}-{first.seq:010d}.seg"


def scan_segment(path: Path, first: Position, *, repair: bool) -> Segment:
    """A segment's whole frames; with `repair`, cut a torn tail (the newest segment after a crash)."""
    seg = Segment(path, first)
    with open(path, "rb") as fh:
        data = fh.read()
    off = 0
    while off < len(data):
        ok = off + HEADER.size <= len(data) and data[off:off + 4] == MAGIC
        if ok:
            length, crc = struct.unpack_from("<II", data, off + 4)
            end = off + 12 + length
            ok = end <= len(data) and zlib.crc32(data[off + 12:end]) == crc
        if not ok:
            if not repair:
                raise TerminalError(f"outbox segment {path} is damaged at byte {off}",
                                    hint="move the damaged segment away (its events are then missing: `pulse verify` "
                                         "names them and `--repair` sends them again) and start Pulse again")
            log.warning("external.outbox_torn_tail", segment=str(path), at=off, bytes=len(data) - off,
                        note="a write interrupted by a crash; its batch was never acknowledged, so it is read again")
            with open(path, "r+b") as fh:
                truncate_durably(fh, off)
            break
        lsn, seq = struct.unpack_from("<QI", data, off + 12)
        seg.last = Position(lsn, seq)
        seg.frames += 1
        off = end
        seg.size = off
    return seg


def list_segments(directory: Path) -> list[tuple[Path, Position]]:
    out = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        m = _SEG.match(entry.name)
        if m:
            out.append((Path(entry.path), Position(int(m[1], 16), int(m[2]))))
    out.sort(key=lambda x: x[1])
    return out


def frame_ids(directory: Path, above: Position) -> tuple[np.ndarray, float | None]:
    """Event ids in the frames above `above` on disk, and the oldest such frame's enqueue time (epoch seconds).

    Read-only and lock-free (status at open, `pulse verify`): a segment deleted
    meanwhile is skipped (its frames were resolved), a torn tail ends a segment.
    """
    ids: list[np.ndarray] = []
    oldest: float | None = None
    frame_head = struct.Struct("<QIdHH")
    for path, _first in list_segments(directory):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        off = 0
        while off + 12 <= len(data):
            length = struct.unpack_from("<I", data, off + 4)[0]
            rest = memoryview(data)[off + 12:off + 12 + length]
            if len(rest) < length:
                break
            lsn, seq, enq, _lanes, blocks = frame_head.unpack_from(rest, 0)
            if Position(lsn, seq) > above:
                p = frame_head.size
                for _ in range(blocks):
                    _lane, n, plen, clen, dlen = BLOCK.unpack_from(rest, p)
                    p += BLOCK.size
                    ids.append(np.frombuffer(rest, META, n, p)["event_id"].copy())
                    p += n * META.itemsize + plen + clen + dlen
                if blocks:
                    oldest = enq if oldest is None else min(oldest, enq)
            off += 12 + length
    return (np.concatenate(ids) if ids else np.empty(0, np.int64)), oldest


class FrameLog:
    """Where frames wait: segment files (`LocalLog`) or memory (`MemoryLog`). Feeder-side API."""

    durable_on_append = True

    def open(self) -> Position:
        raise NotImplementedError

    def append(self, frame: bytes, last: Position) -> None:
        raise NotImplementedError

    def read_next(self) -> tuple[bytes, Path | None] | None:
        """The next frame after those already read (its body after magic/length/crc), or None when caught up."""
        raise NotImplementedError

    def resolved(self, upto: Position) -> None:
        """Every frame at or below `upto` is delivered or dead-lettered."""

    def bytes(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        pass


class LocalLog(FrameLog):
    """Segment files in a folder owned by one process (flock)."""

    def __init__(self, directory: Path, segment_bytes: int) -> None:
        self.dir = Path(directory)
        self.segment_bytes = segment_bytes
        self.segments: list[Segment] = []
        self._lock_fd: int | None = None
        self._fh = None  # the newest segment, open for append
        self._read_seg = 0  # feeder: index in segments (relative to the list, adjusted on delete)
        self._read_off = 0
        self._read_fh = None
        self._read_path: Path | None = None
        self._mutex = threading.Lock()  # the segment list and sizes
        self._append_lock = threading.Lock()  # the open segment file
        self.state = OutboxState(ZERO, ZERO, Ledger())

    def open(self) -> Position:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TerminalError(f"cannot create the external outbox folder {self.dir}: {exc}",
                                hint="set external.outbox_dir (PULSE_EXTERNAL__OUTBOX_DIR) to a writable folder") from exc
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise TerminalError(f"the external outbox {self.dir} is in use by another Pulse process",
                                hint="stop the other `pulse run`, or give this one its own external.outbox_dir / "
                                     "PULSE_SLOT") from None
        self._lock_fd = fd
        for tmp in self.dir.glob(".tmp-*"):
            tmp.unlink(missing_ok=True)
        self.state = read_state(self.dir)
        found = list_segments(self.dir)
        self.segments = [scan_segment(p, first, repair=(i == len(found) - 1)) for i, (p, first) in enumerate(found)]
        # Drop segments wholly delivered (a crash between the state write and the delete).
        while self.segments and self.segments[0].last <= self.state.delivered and self.segments[0].frames:
            self.segments.pop(0).path.unlink(missing_ok=True)
        top = max([self.state.appended, *(s.last for s in self.segments)])
        self._skip_to = self.state.delivered
        return top

    # -- appending ------------------------------------------------------------------------

    def append(self, frame: bytes, last: Position) -> None:
        with self._append_lock:
            self._append(frame, last)

    def _append(self, frame: bytes, last: Position) -> None:
        created = False
        with self._mutex:
            seg = self.segments[-1] if self.segments else None
            if seg is None or (seg.size and seg.size + len(frame) > self.segment_bytes):
                seg = Segment(self.dir / segment_name(last), last)
                if self._fh is not None:
                    self._fh.close()
                    self._fh = None
                self.segments.append(seg)
                created = True
            if self._fh is None:
                self._fh = open(seg.path, "ab")
        try:
            self._fh.write(frame)
            self._fh.flush()
            os.fsync(self._fh.fileno())
            if created:
                fsync_dir(self.dir)
        except OSError as exc:
            # What was written past seg.size is not a whole frame as far as we know: cut it.
            try:
                self._fh.close()
            finally:
                self._fh = None
            try:
                with open(seg.path, "r+b") as fh:
                    fh.truncate(seg.size)
            except OSError:
                pass
            raise TransientError(f"external outbox: write to {seg.path} failed: {exc}") from exc
        with self._mutex:
            seg.size += len(frame)
            seg.last = last
            seg.frames += 1

    # -- the feeder -------------------------------------------------------------------

    def read_next(self) -> tuple[bytes, Path | None] | None:
        while True:
            with self._mutex:
                if self._read_seg >= len(self.segments):
                    return None
                seg = self.segments[self._read_seg]
                end = seg.size
                newest = self._read_seg == len(self.segments) - 1
            if self._read_path != seg.path:
                if self._read_fh is not None:
                    self._read_fh.close()
                self._read_fh = open(seg.path, "rb")
                self._read_path = seg.path
                self._read_off = 0
            if self._read_off >= end:
                if newest:
                    return None
                self._read_seg += 1
                continue
            fh = self._read_fh
            fh.seek(self._read_off)
            head = fh.read(12)
            length, crc = struct.unpack_from("<II", head, 4)
            rest = fh.read(length)
            if head[:4] != MAGIC or len(rest) != length or zlib.crc32(rest) != crc:
                raise TerminalError(f"outbox segment {seg.path} is damaged at byte {self._read_off}",
                                    hint="move the damaged segment away and start Pulse again; `pulse verify` "
                                         "names the events it held and `--repair` sends them again")
            self._read_off += 12 + length
            lsn, seq = struct.unpack_from("<QI", rest, 0)
            if Position(lsn, seq) <= self._skip_to:
                continue  # resolved before a restart
            return rest, seg.path

    def resolved(self, upto: Position) -> None:
        """Delete segments wholly at or below `upto` (the newest too: the next append starts a new one)."""
        with self._append_lock, self._mutex:
            done = []
            for i, seg in enumerate(self.segments):
                if seg.last > upto or not seg.frames:
                    break
                if i == len(self.segments) - 1:
                    if self._fh is not None:
                        self._fh.close()
                        self._fh = None
                done.append(seg)
            if not done:
                return
            # the feeder is past every frame at or below upto: adjust its index
            self.segments = self.segments[len(done):]
            self._read_seg = max(0, self._read_seg - len(done))
            if self._read_path in {s.path for s in done}:
                if self._read_fh is not None:
                    self._read_fh.close()
                self._read_fh, self._read_path, self._read_off = None, None, 0
        for seg in done:
            seg.path.unlink(missing_ok=True)
        fsync_dir(self.dir)

    def bytes(self) -> int:
        with self._mutex:
            return sum(s.size for s in self.segments)

    def close(self) -> None:
        for fh in (self._fh, self._read_fh):
            if fh is not None:
                fh.close()
        self._fh = self._read_fh = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


class MemoryLog(FrameLog):
    """Frames in memory only: under `pulse consume` the Kafka topic is the durable log."""

    durable_on_append = False

    def __init__(self) -> None:
        self._frames: deque[bytes] = deque()
        self._bytes = 0
        self._mutex = threading.Lock()

    def open(self) -> Position:
        return ZERO

    def append(self, frame: bytes, last: Position) -> None:
        with self._mutex:
            self._frames.append(frame)
            self._bytes += len(frame)

    def read_next(self) -> tuple[bytes, Path | None] | None:
        with self._mutex:
            if not self._frames:
                return None
            frame = self._frames.popleft()
            self._bytes -= len(frame)
        return frame[12:], None

    def bytes(self) -> int:
        return self._bytes


def message_id_of(chunks: Sequence[tuple[Chunk, int, int]]) -> str:
    """webhook-id of a request: the CloudEvent id for one event, `msg_<sha256 of the ids joined by \\n>` else.

    The same digest as `external.delivery.message_id` over the same events.
    """
    n = sum(j - i for _c, i, j in chunks)
    if n == 1:
        c, i, j = chunks[0]
        return c.ces_slice(i, j).decode()
    h = hashlib.sha256()
    first = True
    for c, i, j in chunks:
        if not first:
            h.update(b"\n")
        h.update(c.ces_slice(i, j))
        first = False
    return f"msg_{h.hexdigest()[:32]}"


def now() -> float:
    return time.time()


__all__ = ["Chunk", "Encoded", "FrameInfo", "FrameLog", "Ledger", "LocalLog", "MemoryLog", "build_frame", "frame_ids",
           "list_segments", "message_id_of", "parse_frame", "read_state", "scan_segment", "write_state"]
