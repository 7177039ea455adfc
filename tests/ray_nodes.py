"""A real two-node Ray cluster on this machine, for the tests and ``benchmarks/bench_ray.py``."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def two_node_cluster(model_configs: str | Path, soft_limit: int = 0) -> Iterator[Any]:
    """A head and a worker node, 1 CPU each (``ray.cluster_utils.Cluster``: the same processes as ``ray start``),
    shut down on exit with the environment put back.

    The nodes run under a private Ray temp dir (``RAY_TMPDIR``), so the cluster's address file never reaches other
    ``ray.init()`` calls on this shared machine, and they start without ``COPE_MODEL_CONFIGS``: ``model_configs``
    (set once the nodes are up) reaches the workers only through the runtime environment ``embed_ray`` forwards.
    ``soft_limit`` > 0 sets Ray's ``num_workers_soft_limit`` on the head (idle worker processes a node keeps; by
    default as many as it has CPUs, here 1: the others are killed after 1 s idle, and the next task pays a new
    process and its torch import, see docs/distributed.md, known constraints).
    """
    import ray
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "COPE_MODEL_CONFIGS")}
    tmp = tempfile.mkdtemp(prefix="cope-rc-", dir="/tmp")  # short: Ray's socket paths live under it
    os.environ["RAY_TMPDIR"] = tmp
    os.environ.pop("COPE_MODEL_CONFIGS", None)
    cluster = Cluster(shutdown_at_exit=True)
    try:
        cluster.add_node(num_cpus=1, include_dashboard=False,
                         **({"_system_config": {"num_workers_soft_limit": soft_limit}} if soft_limit else {}))
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        os.environ["COPE_MODEL_CONFIGS"] = str(model_configs)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(tmp, ignore_errors=True)
