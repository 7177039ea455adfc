"""A Parquet writer on its own thread: the join's Python side encodes two files while it fetches the next batch.

pyarrow releases the GIL while it encodes and compresses, so on two cores the events file, the sequences file and
the DuckDB fetch overlap. Writes go through a small bounded queue (memory stays at a few batches); an error in the
thread is raised again by :meth:`BackgroundParquetWriter.close`. The file appears, renamed from ``<name>.tmp``, only
when everything was written.
"""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

_DONE = object()


class BackgroundParquetWriter:
    """``write(batch_or_table)`` from the caller, encoding on a worker thread; ``close()`` waits and renames.

    >>> w = BackgroundParquetWriter("out.parquet", schema, compression="zstd")  # doctest: +SKIP
    >>> w.write(batch); w.close()  # doctest: +SKIP
    """

    def __init__(self, path: str | Path, schema: pa.Schema, *, queue_size: int = 3, **options: Any) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self._writer = pq.ParquetWriter(self.tmp, schema, **options)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"write-{self.path.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if self._error is not None:
                continue  # drain after a failure so the producer never blocks
            try:
                if isinstance(item, pa.RecordBatch):
                    self._writer.write_batch(item, row_group_size=1 << 20)
                else:
                    self._writer.write_table(item, row_group_size=1 << 20)
            except BaseException as e:  # noqa: BLE001 - re-raised in close()
                self._error = e

    def write(self, data: pa.RecordBatch | pa.Table) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(data)

    def close(self, *, commit: bool = True) -> None:
        """Wait for the queue, close the file and move it into place (``commit=False``: discard it)."""
        self._queue.put(_DONE)
        self._thread.join()
        self._writer.close()
        if self._error is not None or not commit:
            self.tmp.unlink(missing_ok=True)
            if self._error is not None:
                raise self._error
            return
        os.replace(self.tmp, self.path)
