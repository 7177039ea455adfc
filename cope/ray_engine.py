"""The embed job on Ray Data: extraction in CPU tasks, encoding in an actor pool, upserts from Ray tasks.

Same records, hashes, rows, model tag and table as the single-machine job (:mod:`cope.job`); the stages reuse its
functions. The driver streams the manifests and validates rows; everything that touches files or the model runs on
the cluster. Resume works the same way: an extraction task skips records whose content hash is already stored.

Run on a cluster: every node needs ``pip install cope[ray]`` (same versions as the driver) and the media and the
LanceDB directory at the same path (a shared filesystem) or an object-store URI.
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm.auto import tqdm

from cope.content import ExtractOptions
from cope.embed_core import (
    EmbedConfig,
    EmbedCore,
    EmbedSummary,
    error_row,
    manifest_paths,
    resolve_db,
    select_todo,
    write_rows,
)
from cope.embedding import Pipeline, Prepared, prepare_record
from cope.pipeline import PipelineSpec
from cope.records import RECORD_ADAPTER
from cope.store import ItemStore

logger = logging.getLogger(__name__)

_FORWARDED_ENV = ("COPE_", "HF_", "TRANSFORMERS_", "OMP_NUM_THREADS")
_STORES: dict[tuple[str, str], ItemStore] = {}
_TRANSFORMS: dict[bytes, Any] = {}


def _store(db: str, table: str) -> ItemStore:
    """One open store per worker process and table (reopened if the table appeared since)."""
    key = (db, table)
    if key not in _STORES or not _STORES[key].exists:
        _STORES[key] = ItemStore.open(db, table)
    return _STORES[key]


def _transform(blob: bytes) -> Any:
    """Unpickle the encoder's image transform once per worker, after the torchvision fix (it imports torchvision)."""
    if blob not in _TRANSFORMS:
        from cope._torchvision_fix import ensure_torchvision_importable

        ensure_torchvision_importable()
        _TRANSFORMS[blob] = pickle.loads(blob)
    return _TRANSFORMS[blob]


def _extract_batch(batch: pa.Table, *, db: str, table: str, options_json: str, transform: bytes) -> pa.Table:
    """Ray task: hash, skip what is stored (the core's decision), extract and preprocess. One row per record."""
    from cope.embed_core import hash_records

    options = ExtractOptions.model_validate_json(options_json)  # the pipeline's, with the encoder's decode hint
    records = [RECORD_ADAPTER.validate_json(r) for r in batch.column("record").to_pylist()]
    origins = batch.column("origin").to_pylist()
    digests = hash_records(records)
    todo = select_todo(_store(db, table), records, digests)
    status, payload, errors = [], [], []
    for record, origin, digest, needed in zip(records, origins, digests, todo):
        if not needed:
            status.append("skipped"), payload.append(None), errors.append(None)
            continue
        prepared = prepare_record(record, origin, digest, _transform(transform), options)
        if prepared.error is not None:
            status.append("failed"), payload.append(None), errors.append(prepared.error)
        else:
            prepared.tensors = [[t.numpy() for t in per] for per in prepared.tensors]  # plain arrays travel well
            status.append("todo"), payload.append(pickle.dumps(prepared, protocol=5)), errors.append(None)
    return pa.table({"record_key": [r.record_key for r in records], "origin": origins, "status": status,
                     "stage": ["extract" if s == "failed" else None for s in status],
                     "error": errors, "payload": pa.array(payload, pa.binary())})


class _EncodeActor:
    """Ray actor: one pipeline (model and heads) per actor; encodes the records of a batch together."""

    def __init__(self, spec_json: str, db: str, device: str, threads: int | None, batch_size: int,
                 text_batch_size: int) -> None:
        spec = PipelineSpec.model_validate_json(spec_json)
        self.pipeline = Pipeline.build(spec, db=db, device=device, threads=threads)  # checks the encoder's tag
        self.batch_size, self.text_batch_size = batch_size, text_batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        status = batch.column("status").to_pylist()
        stages = batch.column("stage").to_pylist()
        errors = batch.column("error").to_pylist()
        payload = batch.column("payload").to_pylist()
        todo = [i for i, s in enumerate(status) if s == "todo"]
        prepared: list[Prepared] = []
        for i in todo:
            p = pickle.loads(payload[i])
            p.tensors = [[torch.from_numpy(t) for t in per] for per in p.tensors]
            prepared.append(p)
        rows_out: list[bytes | None] = [None] * len(status)
        n_images = [0] * len(status)
        if prepared:
            try:
                rows = self.pipeline.encode(prepared, self.batch_size, self.text_batch_size)
            except Exception as e:  # the whole batch fails together, like in the single-machine job
                logger.exception("encoding failed")
                for i in todo:
                    status[i], stages[i], errors[i] = "failed", "encode", f"{type(e).__name__}: {e}"
            else:
                by_record: dict[str, list[dict]] = {}
                for row in rows:
                    by_record.setdefault(row["record_key"], []).append(row)
                for i, p in zip(todo, prepared):
                    assert p.record is not None
                    rows_out[i] = pickle.dumps(by_record.get(p.record.record_key, []), protocol=5)
                    n_images[i] = p.n_images
        return pa.table({"record_key": batch.column("record_key"), "origin": batch.column("origin"),
                         "status": status, "stage": stages, "error": errors,
                         "rows": pa.array(rows_out, pa.binary()), "n_images": n_images})


def _write_batch(batch: pa.Table, *, db: str, table: str, tag: str) -> pa.Table:
    """Ray task: upsert the rows of whole records (a live stream's slices stay in one commit), record failures."""
    store = _store(db, table)
    status = batch.column("status").to_pylist()
    rows: list[dict] = []
    n_items = [0] * len(status)
    for i, blob in enumerate(batch.column("rows").to_pylist()):
        if status[i] == "todo" and blob is not None:
            record_rows = pickle.loads(blob)
            rows.extend(record_rows)
            n_items[i] = len(record_rows)
            status[i] = "done"
    write_rows(store, rows)
    store.record_errors([
        error_row(k, o, st or "extract", e, tag)
        for k, o, s, st, e in zip(*(batch.column(c).to_pylist() for c in ("record_key", "origin", "status", "stage",
                                                                          "error")))
        if s == "failed"
    ])
    return pa.table({"status": status, "n_items": n_items, "n_images": batch.column("n_images"),
                     "error": batch.column("error"), "origin": batch.column("origin")})


def _pipeline(ray: Any, items: list[dict], n_blocks: int, per_task: int, extract_args: dict, actors: int,
              cpus_per_actor: float, gpus_per_actor: float, extract_kw: dict, actor_kw: dict, write_kw: dict) -> Any:
    """read -> extract (CPU tasks) -> encode (actor pool, one model each) -> upsert (tasks)."""
    return (
        ray.data.from_items(items, override_num_blocks=n_blocks)
        .map_batches(_extract_batch, batch_size=per_task, batch_format="pyarrow", fn_kwargs=extract_kw,
                     **extract_args)
        .map_batches(_EncodeActor, batch_size=per_task, batch_format="pyarrow",
                     compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus_per_actor,
                     num_gpus=gpus_per_actor, fn_constructor_kwargs=actor_kw)
        .map_batches(_write_batch, batch_size=per_task, batch_format="pyarrow", num_cpus=0.5, fn_kwargs=write_kw)
    )


def _stream(ds: Any) -> Any:
    """Execute the dataset, streaming its (small) status batches to the driver."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args_fn.*")
        yield from ds.iter_batches(batch_format="pyarrow", batch_size=None)


def embed_ray(
    manifests: Sequence[str | Path],
    db: str | Path,
    config: EmbedConfig,
    *,
    address: str | None = None,
    actors: int = 1,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    cpus_per_task: float = 1.0,
    records_per_task: int = 64,
    chunk_records: int = 50_000,
) -> EmbedSummary:
    """Run the embed job on Ray (local when ``address`` is None). Same table and rows as :func:`cope.job.embed`,
    heads included.

    >>> embed_ray(["catalog.jsonl"], "/shared/cope.lancedb", EmbedConfig(), actors=4, gpus_per_actor=1)  # doctest: +SKIP
    """
    import ray

    db = resolve_db(db)
    paths = [p.resolve() for p in manifest_paths(manifests)]
    core = EmbedCore.open(db, config)  # builds the pipeline once here: its tag and dim, checked before any work
    core.ensure_table()
    spec_json = core.spec.model_dump_json()
    transform = pickle.dumps(core.pipeline.encoder.image_transform())
    options_json = core.pipeline.extract_options.model_dump_json()
    core.release_pipeline()  # the driver needs no model from here on
    device = config.device if gpus_per_actor == 0 else ("cuda" if config.device == "cpu" else config.device)

    if not ray.is_initialized():
        env = {k: v for k, v in os.environ.items() if k.startswith(_FORWARDED_ENV)}
        env.setdefault("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "0"))
        ray.init(address=address, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False,
                 runtime_env={"env_vars": env})
    # Ray fuses a task stage into the next actor stage when their resources are equal; extraction must stay in its
    # own tasks, in parallel with the model, so equal CPU-only requests get a remote-args function (never fused)
    extract_args: dict[str, Any] = {"num_cpus": cpus_per_task}
    if gpus_per_actor == 0 and cpus_per_task == cpus_per_actor:
        extract_args = {"ray_remote_args_fn": lambda: {"num_cpus": cpus_per_task}}
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    start = time.perf_counter()
    rows = core.manifest_rows(paths)
    with tqdm(unit="rec", desc="embed[ray]", disable=not core.show_progress(), dynamic_ncols=True) as bar:
        while chunk := list(itertools.islice(rows, chunk_records)):
            valid = core.valid(chunk)
            items = [{"record": row.record.model_dump_json(), "origin": row.where} for row in valid]  # type: ignore[union-attr]
            bar.update(len(chunk) - len(items))
            if not items:
                continue
            n_blocks = max(1, len(items) // records_per_task)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*ray_remote_args_fn.*")
                ds = _pipeline(
                    ray, items, n_blocks, records_per_task, extract_args, actors, cpus_per_actor, gpus_per_actor,
                    {"db": db, "table": config.table, "options_json": options_json, "transform": transform},
                    {"spec_json": spec_json, "db": db, "device": device, "threads": config.threads,
                     "batch_size": config.batch_size, "text_batch_size": config.text_batch_size},
                    {"db": db, "table": config.table, "tag": core.tag},
                )
            for out in _stream(ds):
                for status, n_items, n_images, error, origin in zip(
                    *(out.column(c).to_pylist() for c in ("status", "n_items", "n_images", "error", "origin"))
                ):
                    if status == "done":
                        core.done(1, n_items, n_images)
                    elif status == "skipped":
                        core.skipped()
                    else:  # already in the errors table (written by the task)
                        core.fail("", origin, "extract", error, buffered=False)
                bar.update(out.num_rows)
    return core.finish(time.perf_counter() - start)
