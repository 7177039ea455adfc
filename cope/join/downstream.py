"""Do joined sequences help? Next-product prediction from a user's history, cross-domain vs product-only.

For each user whose last matched product-domain event has earlier history, the target is that product; the
history is everything before it. A user's profile is the recency-weighted mean of the history's vectors (all
domains, or product-domain events only); candidates are all products in the store, ranked by cosine to the profile.
Hit-rate@k is the share of users whose target is in the top k. A user without product-domain history counts as a
miss for the product-only variant (that is the sparsity the join removes); a popularity ranking is the floor.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cope.join.join import open_store
from cope.join.links import _matrix
from cope.join.profiles import recency_pairs_sql, register_vectors, weighted_sums
from cope.join.sql import arrow_table, connect, lit
from cope.vectors import l2_normalize

logger = logging.getLogger(__name__)


@dataclass
class HitRate:
    k: int
    users: int  # users with a target and some history
    cross_domain: float  # hit-rate@k from all-domain history
    product_only: float  # hit-rate@k from product-domain history (no history: a miss)
    product_only_users: int  # users with any product-domain history
    product_only_on_those: float  # hit-rate@k of product-only among those users
    popularity: float  # hit-rate@k of the k most bought products

    def __str__(self) -> str:
        return (f"next-product hit-rate@{self.k} over {self.users} users: cross-domain history {self.cross_domain:.3f}, "
                f"product-only history {self.product_only:.3f} ({self.product_only_users} users have any; "
                f"{self.product_only_on_those:.3f} on them), popularity {self.popularity:.3f}")


def next_product_hit_rate(events: str | Path, db: str | Path, *, k: int = 10, table: str = "items",
                          half_life_hours: float = 72.0, vector_column: str = "vector",
                          memory_limit: str = "1.5GiB", threads: int | None = None,
                          temp_dir: str | Path | None = None) -> HitRate:
    """Hit-rate@k of next-product prediction on a joined ``events.parquet`` (see the module doc).

    >>> print(next_product_hit_rate("joined/events.parquet", "./cope.lancedb", k=10))  # doctest: +SKIP
    """
    store = open_store(db, table)
    tmp = Path(tempfile.mkdtemp(prefix=".cope-hitrate-", dir=temp_dir or Path(events).parent))
    con = connect(memory_limit, threads, tmp)
    try:
        ev = f"read_parquet({lit(str(events))})"
        con.execute(f"""
            CREATE TEMP TABLE targets AS
            SELECT user_id, arg_max(product_key, (ts, source, line)) AS target, max(ts) AS t_target
            FROM {ev} WHERE domain = 'product' AND item_id IS NOT NULL AND product_key IS NOT NULL
            GROUP BY user_id""")
        con.execute(f"""
            CREATE TEMP TABLE hist AS
            SELECT e.user_id, e.item_id, e.domain, e.product_key, e.ts, e.weight, e.slice_share
            FROM {ev} e JOIN targets t USING (user_id) WHERE e.item_id IS NOT NULL AND e.ts < t.t_target""")
        con.execute("DELETE FROM targets WHERE user_id NOT IN (SELECT DISTINCT user_id FROM hist)")
        targets = arrow_table(con, "SELECT user_id, target FROM targets ORDER BY user_id")
        products = store.read(["source_id", vector_column], "domain = 'product'").sort_by("source_id")
        keys = products.column("source_id").combine_chunks()
        pmat = l2_normalize(_matrix(products.column(vector_column))).T.copy()
        target_idx = pc.index_in(targets.column("target"), value_set=keys).to_numpy(zero_copy_only=False)
        target_idx = target_idx.astype(np.float64)  # NaN: a target product without a vector (always a miss)
        per_chunk = max(1, (64 << 20) // max(pmat.shape[1], 1))  # score at most 64M user x product cells at once
        matrix = register_vectors(con, store, "SELECT DISTINCT item_id FROM hist ORDER BY item_id", vector_column)
        n = targets.num_rows
        target_users = targets.column("user_id").combine_chunks()

        def hits(where: str) -> np.ndarray:
            found = np.zeros(n, bool)
            pairs = recency_pairs_sql(f"SELECT * FROM hist {where}", half_life_hours)
            for users, sums, _, _ in weighted_sums(con, pairs, matrix):
                pos = pc.index_in(users.cast(pa.string()), value_set=target_users).to_numpy(zero_copy_only=False)
                pos = pos.astype(np.int64)
                profiles = l2_normalize(sums)
                for a in range(0, len(pos), per_chunk):
                    scores = profiles[a:a + per_chunk] @ pmat
                    kk = min(k, scores.shape[1])
                    top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
                    tgt = target_idx[pos[a:a + per_chunk]]
                    found[pos[a:a + per_chunk]] = (top == tgt[:, None]).any(axis=1) & ~np.isnan(tgt)
            return found

        cross = hits("")
        prod = hits("WHERE domain = 'product'")
        with_prod = con.execute("SELECT count(DISTINCT user_id) FROM hist WHERE domain = 'product'").fetchall()[0][0]
        popular = [r[0] for r in con.execute(  # most frequent products in the histories (targets left out)
            f"SELECT product_key, count(*) AS c FROM hist WHERE domain = 'product' AND product_key IS NOT NULL "
            f"GROUP BY 1 ORDER BY c DESC, 1 LIMIT {int(k)}").fetchall()]
        pop_hit = pc.sum(pc.is_in(targets.column("target"), value_set=pa.array(popular, pa.string()))).as_py() or 0
        result = HitRate(k=k, users=n, cross_domain=float(cross.mean()) if n else 0.0,
                         product_only=float(prod.mean()) if n else 0.0, product_only_users=int(with_prod),
                         product_only_on_those=float(prod.sum() / with_prod) if with_prod else 0.0,
                         popularity=pop_hit / n if n else 0.0)
        logger.info("%s", result)
        return result
    finally:
        con.close()
        shutil.rmtree(tmp, ignore_errors=True)
