"""Training samples kept decoded in memory after their first read (issue 18).

Every epoch reads each training image again, and decoding it (a JPEG, the
resize to the size its labels were made at, a CRF shard's gzip) is the same
work every time: only the augmentation after it depends on the epoch.
`DecodedCache` keeps what a dataset decodes for an index, so epochs after the
first decode nothing.

- Shared: the entries live in one anonymous shared memory map, made before the
  DataLoader forks its workers (`psa_core.training.training_loader` asks for
  fork on Linux). Whichever worker decoded an image, every worker finds it
  afterwards; per-worker caches would hit only about 1 / workers of the time
  in the second epoch, since any worker may draw any image.
- Bounded: at most `limit_mb` MB of entries. Nothing is evicted: once the map
  is full, the images left out are decoded from disk every epoch. The map's
  pages are committed as entries fill them, so an unused cache costs nothing.
- Exact: an entry is the arrays the loader returned, in the `.npy` format one
  after the other (no pickle); `get` returns fresh writable arrays of the same
  values, dtype, shape and memory order, so every batch is bit-identical with
  the cache on or off.
- A worker started by spawn or forkserver (macOS, Windows) cannot share the
  map: it gets a cache that is off.
"""

from __future__ import annotations

import io
import logging
import mmap
import multiprocessing
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from psa_core.errors import PsaError

log = logging.getLogger("psa.train")

MB = 2**20

_EMPTY, _FILLING, _READY, _LEFT_OUT = 0, 1, 2, 3
"""Entry states. FILLING: one process is decoding it to store (others decode for
themselves meanwhile); LEFT_OUT: it did not fit, or a store failed: read from disk."""

_LOCK_TIMEOUT_S = 30.0
"""A lock held longer than this means its holder died mid-update (a killed worker):
the others then stop using the cache instead of waiting forever."""

Arrays = tuple[np.ndarray, ...]


class DecodedCache:
    """Decoded arrays per dataset index, shared by the processes that fork after it.

    Args:
        size: indices 0 .. size - 1.
        limit_mb: bytes of entries at most, in MB (2**20 bytes); 0 = off.
    """

    def __init__(self, size: int, limit_mb: float) -> None:
        if not limit_mb >= 0:
            raise PsaError(f"image_cache_mb {limit_mb}: must be >= 0 (0 = off)")
        self.size = int(size)
        self.limit = int(limit_mb * MB)
        self._arena: mmap.mmap | None = None
        if self.limit > 0 and self.size > 0 and hasattr(mmap, "MAP_SHARED"):  # not on Windows
            try:
                arena = _shared_map(self.limit)
                # rows 0 .. size - 1: (state, offset, length); the last: (bytes used, full logged, 0)
                table = _shared_map((self.size + 1) * 3 * 8)
            except OSError as exc:  # e.g. a virtual-memory limit (ulimit -v) below limit_mb
                log.warning(
                    "image cache of %g MB not made (%s): images are decoded every epoch; "
                    "lower image_cache_mb",
                    limit_mb,
                    exc,
                )
                return
            self._arena = arena
            self._table = np.frombuffer(table, dtype=np.int64).reshape(self.size + 1, 3)
            self._lock = multiprocessing.Lock()

    @property
    def enabled(self) -> bool:
        return self._arena is not None

    def get(self, index: int, load: Callable[[int], Arrays]) -> Arrays:
        """`load(index)`, from the cache when an earlier call stored it.

        The first call for an index stores what `load` returns if it fits;
        `load` must give the same arrays every time (a decode, not an augmentation).
        """
        if self._arena is None:
            return load(index)
        row = self._table[index]
        with self._locked() as locked:
            if not locked:
                return load(index)
            state, offset, length = (int(v) for v in row)
            if state == _EMPTY:
                row[0] = _FILLING
        if state == _READY:
            # a READY entry never changes again: read it without the lock
            with memoryview(self._arena) as view:
                return _unpack(view[offset : offset + length])
        arrays = load(index)
        if state == _EMPTY:
            self._store(index, arrays)
        return arrays

    def stats(self) -> tuple[int, int]:
        """(entries stored, bytes they take)."""
        if self._arena is None:
            return 0, 0
        states = self._table[: self.size, 0]
        return int(np.count_nonzero(states == _READY)), int(self._table[self.size, 0])

    def _store(self, index: int, arrays: Arrays) -> None:
        blob = _pack(arrays)
        end = self._table[self.size]
        with self._locked() as locked:
            if not locked:
                return
            offset = int(end[0])
            fits = offset + len(blob) <= self.limit
            if fits:
                end[0] = offset + len(blob)
            else:
                self._table[index, 0] = _LEFT_OUT
                first_miss = not end[1]
                end[1] = 1
        if not fits:
            if first_miss:
                log.info(
                    "image cache full at %.0f MB (%d of %d images): the others are read from "
                    "disk every epoch; raise image_cache_mb to keep them too",
                    self.limit / MB,
                    self.stats()[0],
                    self.size,
                )
            return
        self._arena[offset : offset + len(blob)] = blob
        with self._locked() as locked:
            if locked:
                self._table[index] = (_READY, offset, len(blob))

    @contextmanager
    def _locked(self) -> Iterator[bool]:
        """The lock, held for the block (True); False, unheld, if it is stuck."""
        locked = self._lock.acquire(timeout=_LOCK_TIMEOUT_S)
        if not locked:
            log.warning("image cache lock stuck (a worker died holding it?): cache off")
            self._arena = None
        try:
            yield locked
        finally:
            if locked:
                self._lock.release()

    def __getstate__(self) -> dict[str, object]:
        # Pickled only for a worker started by spawn / forkserver, which cannot map the
        # same memory (a forked one inherits the object): it gets a cache that is off.
        return {"size": self.size, "limit": 0, "_arena": None}


def _pack(arrays: Arrays) -> bytes:
    """The arrays as consecutive `.npy` records behind a count (numeric dtypes only)."""
    out = io.BytesIO()
    out.write(len(arrays).to_bytes(4, "little"))
    for array in arrays:
        np.lib.format.write_array(out, np.asarray(array), allow_pickle=False)
    return out.getvalue()


def _unpack(blob: memoryview) -> Arrays:
    """`_pack`'s arrays back, as new writable arrays."""
    source = io.BytesIO(blob)
    count = int.from_bytes(source.read(4), "little")
    return tuple(np.lib.format.read_array(source, allow_pickle=False) for _ in range(count))


def _shared_map(nbytes: int) -> mmap.mmap:
    """Anonymous memory shared with forked children, committed page by page as written."""
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_NORESERVE", 0)
    return mmap.mmap(-1, nbytes, flags=flags)
