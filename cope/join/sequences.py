"""Per-user sequences and user statistics from events sorted by (user, time), batch by batch with Arrow and numpy.

The join streams its sorted result once: every batch goes to ``events.parquet`` and through a
:class:`SequenceBuilder`, which emits each user's last N matched events as parallel lists once the user's rows are
complete (a user whose rows run on into the next batch is carried over: at most N rows plus counters). No second
sort, no second read, no Python loop over events: group bounds come from comparing neighbouring user ids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cope.join.config import DOMAINS
from cope.join.report import UserStats
from cope.join.writers import BackgroundParquetWriter

_LIST_COLUMNS = {"item_ids": "item_id", "domains": "domain", "timestamps": "ts", "product_keys": "product_key",
                 "actions": "action", "weights": "weight"}
_COLUMNS = ["user_id", "part", *dict.fromkeys(_LIST_COLUMNS.values())]
_DOMAIN_SET = pa.array(DOMAINS, pa.string())
_PRODUCT = DOMAINS.index("product")


def sequence_schema(ts_type: pa.DataType, model_tag: str) -> pa.Schema:
    return pa.schema([
        ("user_id", pa.string()), ("n_events", pa.int64()), ("n_domains", pa.int8()), ("length", pa.int32()),
        ("item_ids", pa.list_(pa.string())), ("domains", pa.list_(pa.string())), ("timestamps", pa.list_(ts_type)),
        ("product_keys", pa.list_(pa.string())), ("actions", pa.list_(pa.string())),
        ("weights", pa.list_(pa.float64())), ("model_tag", pa.string()),
    ], metadata={b"cope.model_tag": model_tag.encode()})


def _plain(values: pa.Array) -> pa.Array:
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if pa.types.is_string_view(values.type) or pa.types.is_large_string(values.type):
        values = values.cast(pa.string())
    return values


class SequenceBuilder:
    """Feed batches sorted by (user_id, ts); writes ``sequences.parquet`` and counts users on the way.

    ``sequences.parquet`` has one row per user with a matched event: user_id, n_events (matched event rows in the
    whole history), n_domains (distinct domains among them), length (<= last_n), item_ids, domains, timestamps,
    product_keys, actions, weights (oldest first), model_tag. :meth:`close` returns the :class:`UserStats` over all
    users, matched or not.

    >>> b = SequenceBuilder("sequences.parquet", last_n=50, model_tag="m")  # doctest: +SKIP
    >>> for batch in sorted_events: b.add(batch)  # doctest: +SKIP
    >>> stats = b.close()  # doctest: +SKIP
    """

    def __init__(self, path: str | Path, *, last_n: int, model_tag: str) -> None:
        self.path = Path(path)
        self.last_n = int(last_n)
        self.model_tag = model_tag
        self._writer: BackgroundParquetWriter | None = None
        self._schema: pa.Schema | None = None
        # the user still open at the end of the last batch: its last <= last_n matched rows and its counters
        self._carry: pa.Table | None = None
        self._carry_stats = np.zeros(4, np.int64)  # events, matched rows, has product event, has product key
        self._carry_domains = np.zeros(len(DOMAINS), bool)
        self._events_per_user: list[np.ndarray] = []
        self._stats = np.zeros(5, np.int64)  # users, matched users, multi-domain, with product event, with key
        self.written = 0

    def add(self, batch: pa.RecordBatch | pa.Table) -> None:
        table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
        table = table.select(_COLUMNS)
        if self._schema is None:
            self._schema = sequence_schema(table.schema.field("ts").type, self.model_tag)
        self._process(table, final=False)

    def close(self) -> UserStats:
        """Write the last user, close the file (renamed into place); return the user statistics."""
        if self._carry is not None:
            self._process(None, final=True)
        if self._writer is None:  # no matched event at all: an empty file with the schema
            self._open(self._schema or sequence_schema(pa.timestamp("us", tz="UTC"), self.model_tag))
        assert self._writer is not None
        self._writer.close()
        per_user = np.concatenate(self._events_per_user) if self._events_per_user else np.zeros(0, np.int64)
        users, matched, multi, with_product, with_key = (int(x) for x in self._stats)
        return UserStats(
            users=users, users_matched=matched,
            events_per_user_mean=float(per_user.mean()) if users else 0.0,
            events_per_user_p50=float(np.quantile(per_user, 0.5)) if users else 0.0,
            events_per_user_p90=float(np.quantile(per_user, 0.9)) if users else 0.0,
            events_per_user_max=int(per_user.max()) if users else 0,
            multi_domain_users=multi, multi_domain_share=multi / matched if matched else 0.0,
            users_with_product_events=with_product, users_with_product_key=with_key)

    def _process(self, table: pa.Table | None, *, final: bool) -> None:
        carry = self._carry
        n_carry = carry.num_rows if carry is not None else 0
        if table is None:
            table = carry
        elif carry is not None:
            table = pa.concat_tables([carry, table])
        assert table is not None
        table = table.combine_chunks()
        n = table.num_rows
        if n == 0:
            return
        users = table.column("user_id").chunk(0) if table.column("user_id").num_chunks else pa.array([], pa.string())
        if n > 1:
            change = pc.not_equal(users.slice(1), users.slice(0, n - 1)).to_numpy(zero_copy_only=False)
            starts = np.concatenate([[0], np.flatnonzero(change) + 1]).astype(np.int64)
        else:
            starts = np.zeros(1, np.int64)
        ends = np.append(starts[1:], n)
        own = np.ones(n, bool)
        own[:n_carry] = False  # carried rows were counted when they were read
        matched = table.column("item_id").is_valid().to_numpy(zero_copy_only=False)
        codes = pc.index_in(table.column("domain"), value_set=_DOMAIN_SET).to_numpy(zero_copy_only=False)
        first = (table.column("part").to_numpy(zero_copy_only=False) == 0) & own
        keyed = table.column("product_key").is_valid().to_numpy(zero_copy_only=False) & own

        def per_group(x: np.ndarray) -> np.ndarray:
            return np.add.reduceat(x.astype(np.int64), starts)

        stats = np.stack([per_group(first), per_group(matched & own), per_group((codes == _PRODUCT) & own),
                          per_group(keyed)], axis=1)
        domains = np.stack([per_group(matched & (codes == d)) > 0 for d in range(len(DOMAINS))], axis=1)
        if carry is not None:
            stats[0] += self._carry_stats
            domains[0] |= self._carry_domains
        n_done = len(starts) if final else len(starts) - 1

        # the last N matched rows of each finished user
        cum = np.cumsum(matched)
        stop = int(ends[n_done - 1]) if n_done else 0
        if n_done:
            group_matched_end = np.repeat(cum[ends[:n_done] - 1], (ends - starts)[:n_done])
            keep = np.flatnonzero(matched[:stop] & (group_matched_end - cum[:stop] < self.last_n))
            per_user_matched = stats[:n_done, 1]
            kept = np.minimum(per_group(matched)[:n_done], self.last_n)
            self._write(users, starts[:n_done], table.take(pa.array(keep)), kept, per_user_matched,
                        domains[:n_done].sum(axis=1))
            self._count(stats[:n_done], domains[:n_done])
        if final:
            self._carry = None
            return
        s = int(starts[-1])
        rows = np.flatnonzero(matched[s:]) + s
        rows = rows[-self.last_n:]
        self._carry = table.take(pa.array(rows))
        self._carry_stats = stats[-1].copy()
        self._carry_domains = domains[-1].copy()

    def _open(self, schema: pa.Schema) -> None:
        self._writer = BackgroundParquetWriter(self.path, schema, compression="zstd",
                                               use_dictionary=["domains", "actions", "model_tag"],
                                               write_statistics=["user_id", "n_events", "n_domains"])

    def abort(self) -> None:
        """Discard the partial file (the join failed)."""
        if self._writer is not None:
            self._writer.close(commit=False)

    def _count(self, stats: np.ndarray, domains: np.ndarray) -> None:
        n_domains = domains.sum(axis=1)
        self._events_per_user.append(stats[:, 0].copy())
        self._stats += np.array([len(stats), (stats[:, 1] > 0).sum(), (n_domains > 1).sum(), (stats[:, 2] > 0).sum(),
                                 (stats[:, 3] > 0).sum()], np.int64)

    def _write(self, users: pa.Array, starts: np.ndarray, rows: pa.Table, kept: np.ndarray, n_events: np.ndarray,
               n_domains: np.ndarray) -> None:
        has = kept > 0
        if not has.any():
            return
        offsets = pa.array(np.concatenate([[0], np.cumsum(kept[has])]).astype(np.int32))
        cols = {"user_id": _plain(users.take(pa.array(starts[has]))),
                "n_events": pa.array(n_events[has], pa.int64()), "n_domains": pa.array(n_domains[has], pa.int8()),
                "length": pa.array(kept[has], pa.int32())}
        for out, src in _LIST_COLUMNS.items():
            cols[out] = pa.ListArray.from_arrays(offsets, _plain(rows.column(src).combine_chunks()))
        cols["model_tag"] = pa.array([self.model_tag] * int(has.sum()), pa.string())
        assert self._schema is not None
        if self._writer is None:
            self._open(self._schema)
        assert self._writer is not None
        self._writer.write(pa.table(cols, schema=self._schema))
        self.written += int(has.sum())
