"""One writer per table: a lease held by a run (``cope embed``, ``cope check --repair``) while it writes.

Two kinds, chosen by the database's location (``COPE_LEASE=file|table`` overrides it):

* ``file`` (local folders): an OS lock (``fcntl.flock``) on ``<db>/_cope_leases/<table>.lock``. The kernel drops it
  when the holder exits or is killed (``kill -9`` included), so nothing expires and nothing is renewed. The file
  says who holds it (host, pid, since) for the message a second writer gets. On a shared filesystem it is as good
  as that filesystem's ``flock`` (Linux NFS clients honour it across hosts; some FUSE and cluster filesystems only
  with locking enabled at mount time, others not at all: use ``COPE_LEASE=table`` there).
* ``table`` (object stores: ``s3://``, ``gs://``, ``az://``): a one-row Lance table ``<db>/_cope_leases/<table>``
  (owner, host, pid, since, expiry). Taking it is one conditional update (``owner = ''`` or expired), which Lance
  commits with a put-if-absent of the next version, so of two writers racing for it exactly one wins; the holder
  renews the expiry every ``ttl / 3`` seconds from a background thread. A holder killed with ``kill -9`` blocks
  others until its expiry (``COPE_LEASE_TTL``, default 60 s). It relies on the hosts' clocks agreeing to well under
  the TTL and on the store's put-if-absent (S3 since 2024, GCS, Azure; S3-compatible stores without
  ``If-None-Match`` need Lance's ``s3+ddb://`` commit store, like any concurrent Lance writer).

A second writer fails at once with :class:`~cope.errors.TableBusyError` naming the holder, or waits up to ``wait``
seconds (``COPE_LEASE_WAIT``) for it.

>>> import tempfile
>>> db = tempfile.mkdtemp()
>>> with TableLease.open(db, "items", kind="file") as lease:
...     other = TableLease.open(db, "items", kind="file")
...     try:
...         other.acquire()
...     except TableBusyError as e:
...         print("busy:", "is being written by" in str(e))
busy: True
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Literal

from cope.errors import TableBusyError, UsageError
from cope.sql import sql_str

logger = logging.getLogger(__name__)

LEASE_DIR = "_cope_leases"
DEFAULT_TTL = 60.0
LeaseKind = Literal["file", "table"]

# leases held in this process, per (db, table), for ``acquire(take_over_own=True)``
_HELD: dict[tuple[str, str], weakref.ReferenceType[TableLease]] = {}
_HELD_LOCK = threading.Lock()


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"{name} must be a number of seconds, not {raw!r}") from None
    if value < 0:
        raise UsageError(f"{name} must be >= 0, not {raw!r}")
    return value


def _local(uri: str) -> str | None:
    """The folder of a local database (a path or a ``file://`` URI), None for an object store."""
    if uri.startswith("file://"):
        return uri[len("file://"):]
    return None if "://" in uri else uri


def lease_kind(uri: str) -> LeaseKind:
    """``file`` for a local folder, ``table`` for an object store URI; ``COPE_LEASE`` overrides it (every writer
    of a table must use the same kind: a file lease and a table lease do not see each other)."""
    forced = os.environ.get("COPE_LEASE", "").strip().lower()
    if forced:
        if forced not in ("file", "table"):
            raise UsageError(f"COPE_LEASE must be 'file' or 'table', not {forced!r}")
        if forced == "file" and _local(uri) is None:
            raise UsageError(f"COPE_LEASE=file needs a local folder; {uri} is not one")
        return forced  # type: ignore[return-value]
    return "file" if _local(uri) is not None else "table"


def _ms(t: float) -> str:
    return dt.datetime.fromtimestamp(t / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


class TableLease(ABC):
    """The right to write one table, held by one run. ``acquire`` -> (write, ``check``) -> ``release``.

    The run's own workers (the Ray writer tasks of a ``cope embed --engine ray`` driver) write under their
    driver's lease: they do not take one themselves.
    """

    kind: ClassVar[LeaseKind]

    def __init__(self, uri: str, table: str, *, purpose: str = "cope", ttl: float | None = None) -> None:
        self.uri = str(uri)
        self.table = table
        self.purpose = purpose
        self.ttl = _env_float("COPE_LEASE_TTL", DEFAULT_TTL) if ttl is None else float(ttl)
        if self.ttl <= 0:
            raise UsageError("the lease TTL must be > 0 seconds")
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.held = False
        self._thread: int | None = None
        self._finalizer: weakref.finalize | None = None

    # -- the interface -------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, uri: str | os.PathLike[str], table: str, *, kind: LeaseKind | None = None, purpose: str = "cope",
             ttl: float | None = None) -> TableLease:
        """A (not yet acquired) lease on ``table`` in the database ``uri``, of ``kind`` (default by location)."""
        uri = str(uri)
        kind = kind or lease_kind(uri)
        impl = FileLease if kind == "file" else LanceLease
        return impl(uri, table, purpose=purpose, ttl=ttl)

    def acquire(self, wait: float | None = None, *, take_over_own: bool = False) -> TableLease:
        """Take the lease, waiting up to ``wait`` seconds (default ``COPE_LEASE_WAIT``, 0) for its holder.

        Raises :class:`TableBusyError` naming the holder when it is still held after that. ``take_over_own``
        (a run's lease: one thread runs one run at a time) first releases a lease on the same table that an earlier
        run of this thread (or of a thread that ended) left held, e.g. one that raised in a notebook, whose
        traceback keeps its lease alive.
        """
        if self.held:
            return self
        wait = _env_float("COPE_LEASE_WAIT", 0.0) if wait is None else wait
        if take_over_own:
            self._take_over_own()
        deadline = time.monotonic() + wait
        announced = False
        delay = 0.05
        while True:
            if self._try_acquire():
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise TableBusyError(self._busy_message(wait))
            if not announced:
                logger.warning("table %r in %s is being written by %s; waiting up to %.0f s for it", self.table,
                               self.uri, self._describe(self.holder()), wait)
                announced = True
            time.sleep(min(delay, left))
            delay = min(delay * 2, 1.0)
        self.held = True
        self._thread = threading.get_ident()
        with _HELD_LOCK:
            _HELD[(self.uri, self.table)] = weakref.ref(self)
        self._finalizer = weakref.finalize(self, type(self)._release_resources, *self._finalizer_args())
        self._started()
        logger.debug("lease on %r in %s taken by %s (%s)", self.table, self.uri, self.owner, self.kind)
        return self

    def release(self) -> None:
        """Give the lease up (idempotent). Runs at the latest when the lease is garbage-collected or at exit."""
        if not self.held:
            return
        self.held = False
        with _HELD_LOCK:
            ref = _HELD.get((self.uri, self.table))
            if ref is not None and ref() is self:
                del _HELD[(self.uri, self.table)]
        if self._finalizer is not None:
            self._finalizer()  # releases once, from here or from the garbage collector, never twice
        logger.debug("lease on %r in %s released by %s", self.table, self.uri, self.owner)

    def check(self) -> None:
        """Raise :class:`TableBusyError` when this lease was lost (expired and taken by another writer)."""
        if not self.held:
            raise TableBusyError(f"this run does not hold the write lease on table {self.table!r} in {self.uri}")

    def __enter__(self) -> TableLease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    @abstractmethod
    def holder(self) -> dict[str, Any] | None:
        """Who holds the lease now (owner, host, pid, purpose, since; expires for ``table`` leases), or None."""

    # -- the parts each kind implements --------------------------------------------------------------------------
    @abstractmethod
    def _try_acquire(self) -> bool: ...

    def _started(self) -> None:  # noqa: B027  (optional hook)
        pass

    @abstractmethod
    def _finalizer_args(self) -> tuple[Any, ...]: ...

    @staticmethod
    @abstractmethod
    def _release_resources(*args: Any) -> None: ...

    # -- helpers ---------------------------------------------------------------------------------------------------
    def _info(self) -> dict[str, Any]:
        return {"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(), "purpose": self.purpose,
                "since_ms": int(time.time() * 1000)}

    def _take_over_own(self) -> None:
        """Release a lease on the same table left behind by an earlier run of this thread (or of a dead thread)."""
        with _HELD_LOCK:
            ref = _HELD.get((self.uri, self.table))
        old = ref() if ref is not None else None
        if old is None or old is self or not old.held:
            return
        alive = {t.ident for t in threading.enumerate()}
        if old._thread == threading.get_ident() or old._thread not in alive:
            logger.info("releasing the lease on %r left by an earlier run in this process", self.table)
            old.release()

    def _describe(self, info: dict[str, Any] | None) -> str:
        if not info:
            return "another writer"
        text = f"{info.get('purpose') or 'cope'} (pid {info.get('pid')} on {info.get('host')}"
        if info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
            text += ", this process"
        if info.get("since_ms"):
            text += f", since {_ms(info['since_ms'])}"
        return text + ")"

    def _busy_message(self, waited: float) -> str:
        info = self.holder()
        msg = f"table {self.table!r} in {self.uri} is being written by {self._describe(info)}"
        if waited:
            msg += f"; still held after waiting {waited:.0f} s"
        msg += ". One writer per table: wait for that run to finish"
        if self.kind == "table" and info and info.get("expires_ms"):
            left = max(0.0, info["expires_ms"] / 1000 - time.time())
            msg += (f"; if it was killed, its lease expires at {_ms(info['expires_ms'])} (in {left:.0f} s)")
        return msg + ". Set COPE_LEASE_WAIT=SECONDS to wait for it, or write to another --table."


class FileLease(TableLease):
    """An ``flock`` on ``<db>/_cope_leases/<table>.lock`` (local folders); dropped by the kernel when its process
    ends, however it ends."""

    kind = "file"

    def __init__(self, uri: str, table: str, **kw: Any) -> None:
        local = _local(str(uri))
        if local is None:
            raise UsageError(f"a file lease needs a local folder, not {uri}")
        super().__init__(str(Path(local).resolve()), table, **kw)
        self.path = Path(self.uri) / LEASE_DIR / f"{table}.lock"
        self._fd: int | None = None

    def _try_acquire(self) -> bool:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        for attempt in range(3):  # a reader's holder() probe holds a shared lock for microseconds
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == 2:
                    os.close(fd)
                    return False
                time.sleep(0.01)
            except OSError as e:  # ENOLCK, ENOSYS: a filesystem without flock
                os.close(fd)
                raise TableBusyError(f"cannot lock {self.path} ({e.strerror}): this filesystem does not support "
                                     "flock; set COPE_LEASE=table (for every writer of the table) to use a lease "
                                     "table instead") from e
        try:
            if os.fstat(fd).st_ino != os.stat(self.path).st_ino:  # the file was replaced while we locked it
                os.close(fd)
                return False
        except FileNotFoundError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self._info()).encode(), 0)
        self._fd = fd
        return True

    def _finalizer_args(self) -> tuple[Any, ...]:
        return (self._fd,)

    @staticmethod
    def _release_resources(fd: int | None) -> None:  # type: ignore[override]
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the last descriptor drops the flock

    def release(self) -> None:
        super().release()
        self._fd = None

    def check(self) -> None:
        super().check()
        try:
            same = self._fd is not None and os.fstat(self._fd).st_ino == os.stat(self.path).st_ino
        except OSError:
            same = False
        if not same:
            raise TableBusyError(f"the lock file {self.path} was removed while this run held it; another writer "
                                 "may have started, so this run stops. Re-run it.")

    def holder(self) -> dict[str, Any] | None:
        import fcntl

        if self.held:
            return self._info()
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            raw = os.pread(fd, 4096, 0)
            if not raw:  # released (a holder empties the file before it unlocks it)
                return None
            try:  # the file names a holder: alive, unless its lock is free (it was killed)
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                try:
                    return json.loads(raw)
                except ValueError:
                    return {}
            return None
        finally:
            os.close(fd)


_LEASE_FIELDS = ("name", "owner", "host", "pid", "purpose", "since_ms", "expires_ms")


class LanceLease(TableLease):
    """A one-row Lance table ``<db>/_cope_leases/<table>`` taken by a conditional update and renewed by its holder
    (object stores); a killed holder's lease expires after ``ttl`` seconds."""

    kind = "table"

    def __init__(self, uri: str, table: str, **kw: Any) -> None:
        super().__init__(uri, table, **kw)
        base = self.uri.rstrip("/")
        self.lease_uri = f"{base}/{LEASE_DIR}" if "://" in base else str(Path(base).resolve() / LEASE_DIR)
        self._tbl: Any = None
        self._stop = threading.Event()
        self._lost: str | None = None
        self.expires_ms = 0
        self.renewals = 0

    # -- the lease table ------------------------------------------------------------------------------------------
    def _table(self, create: bool = True) -> Any:
        if self._tbl is None:
            import pyarrow as pa

            from cope.store.lancedb_import import lancedb

            if not create:
                try:
                    db = lancedb.connect(self.lease_uri, read_consistency_interval=dt.timedelta(0))
                    self._tbl = db.open_table(self.table)
                except Exception:  # no lease table yet: nobody ever held it
                    return None
                return self._tbl
            if "://" not in self.lease_uri:
                Path(self.lease_uri).mkdir(parents=True, exist_ok=True)
            db = lancedb.connect(self.lease_uri, read_consistency_interval=dt.timedelta(0))  # always the latest
            schema = pa.schema([
                pa.field("name", pa.string(), nullable=False), pa.field("owner", pa.string(), nullable=False),
                pa.field("host", pa.string()), pa.field("pid", pa.int64()), pa.field("purpose", pa.string()),
                pa.field("since_ms", pa.int64(), nullable=False), pa.field("expires_ms", pa.int64(), nullable=False),
            ])
            free = pa.Table.from_pylist([{"name": self.table, "owner": "", "host": None, "pid": None,
                                          "purpose": None, "since_ms": 0, "expires_ms": 0}], schema=schema)
            try:  # created with its single row in one commit (version 1 is written once), so never two rows
                self._tbl = db.create_table(self.table, data=free, mode="create")
            except Exception:  # it exists (or another writer just created it)
                self._tbl = db.open_table(self.table)
        return self._tbl

    def holder(self) -> dict[str, Any] | None:
        tbl = self._table(create=False)
        if tbl is None:
            return None
        rows = tbl.search().select(list(_LEASE_FIELDS)).limit(None).to_arrow().to_pylist()
        if not rows:
            return None
        row = rows[0]
        if not row["owner"] or row["expires_ms"] < int(time.time() * 1000):
            return None
        return row

    def _try_acquire(self) -> bool:
        self._table()  # created with its free row the first time
        if self.holder() is not None:  # a read first: no commit while somebody holds it
            return False
        info = self._info()
        expires = info["since_ms"] + int(self.ttl * 1000)
        values = {**{k: info[k] for k in ("owner", "host", "pid", "purpose", "since_ms")}, "expires_ms": expires}
        # the condition is evaluated again if a concurrent commit touched the row: one winner
        res = self._table().update(
            where=f"name = {sql_str(self.table)} AND (owner = '' OR expires_ms < {info['since_ms']})", values=values
        )
        if getattr(res, "rows_updated", 0) != 1:
            return False
        self.expires_ms = expires
        self._lost = None
        self._stop = threading.Event()  # one per holding: a renewer of an earlier holding stops on its own
        return True

    def _started(self) -> None:
        t = threading.Thread(target=_renew_loop, args=(weakref.ref(self), self._stop, self.ttl / 3),
                             name=f"cope-lease-{self.table}", daemon=True)
        t.start()

    def renew(self) -> bool:
        """Push the expiry ``ttl`` seconds ahead; False (and the lease is lost) when another owner holds it now."""
        now = int(time.time() * 1000)
        res = self._table().update(
            where=f"name = {sql_str(self.table)} AND owner = {sql_str(self.owner)}",
            values={"expires_ms": now + int(self.ttl * 1000)},
        )
        if getattr(res, "rows_updated", 0) != 1:
            self._lost = "another writer took it over after it expired"
            return False
        self.expires_ms = now + int(self.ttl * 1000)
        self.renewals += 1
        return True

    def check(self) -> None:
        super().check()
        if self._lost is None and self.expires_ms and time.time() * 1000 > self.expires_ms:
            try:  # late (the renewing thread starved or the store was unreachable): still ours if nobody took it
                self.renew()
            except Exception as e:
                self._lost = f"it expired and could not be renewed: {type(e).__name__}: {e}"
        if self._lost is not None:
            raise TableBusyError(f"this run lost its write lease on table {self.table!r} in {self.uri} "
                                 f"({self._lost}); it stops so that two runs do not write at once. Re-run it.")

    def _finalizer_args(self) -> tuple[Any, ...]:
        return (self._table(), self.table, self.owner, self._stop)

    @staticmethod
    def _release_resources(tbl: Any, table: str, owner: str, stop: threading.Event) -> None:  # type: ignore[override]
        stop.set()
        try:
            tbl.update(where=f"name = {sql_str(table)} AND owner = {sql_str(owner)}",
                       values={"owner": "", "expires_ms": 0})
        except Exception:  # the lease then simply expires
            logger.warning("could not release the write lease on %r; it expires by itself", table, exc_info=True)
            return
        try:  # every acquire/renew/release is a version of the lease table: drop the old ones now and then
            if tbl.version % 32 == 0:
                tbl.optimize(cleanup_older_than=dt.timedelta(minutes=5))
        except Exception:
            logger.debug("lease table cleanup failed", exc_info=True)


def _renew_loop(ref: weakref.ReferenceType[LanceLease], stop: threading.Event, every: float) -> None:
    while not stop.wait(every):
        lease = ref()
        if lease is None or not lease.held:
            return
        try:
            if not lease.renew():
                if not stop.is_set():  # not just released while this renewal ran
                    logger.error("lost the write lease on %r in %s: %s", lease.table, lease.uri, lease._lost)
                return
        except Exception:  # a network hiccup: try again next time; check() notices an expiry
            logger.warning("renewing the write lease on %r failed; retrying", lease.table, exc_info=True)
        finally:
            del lease


__all__ = ["DEFAULT_TTL", "LEASE_DIR", "FileLease", "LanceLease", "TableBusyError", "TableLease", "lease_kind"]
