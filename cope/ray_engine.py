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

from cope.job import EmbedConfig, EmbedSummary, _Prepared, encode_prepared, model_spec, prepare_record
from cope.manifest import read_manifest
from cope.records import RECORD_ADAPTER
from store import ItemStore

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


def _extract_batch(batch: pa.Table, *, db: str, config_json: str, transform: bytes, image_size: int) -> pa.Table:
    """Ray task: hash, skip what is stored, extract and preprocess. One output row per input record."""
    from cope.hashing import record_hash

    config = EmbedConfig.model_validate_json(config_json)
    options = config.extract.model_copy(update={"image_size": image_size})
    records = [RECORD_ADAPTER.validate_json(r) for r in batch.column("record").to_pylist()]
    origins = batch.column("origin").to_pylist()
    digests = [record_hash(r) for r in records]
    stored = _store(db, config.table).stored_hashes([r.record_key for r in records])
    status, payload, errors = [], [], []
    for record, origin, digest in zip(records, origins, digests):
        if stored.get(record.record_key) == {digest}:
            status.append("skipped"), payload.append(None), errors.append(None)
            continue
        prepared = prepare_record(record, origin, digest, _transform(transform), options)
        if prepared.error is not None:
            status.append("failed"), payload.append(None), errors.append(prepared.error)
        else:
            prepared.tensors = [[t.numpy() for t in per] for per in prepared.tensors]  # plain arrays travel well
            status.append("todo"), payload.append(pickle.dumps(prepared, protocol=5)), errors.append(None)
    return pa.table({"record_key": [r.record_key for r in records], "origin": origins, "status": status,
                     "error": errors, "payload": pa.array(payload, pa.binary())})


class _EncodeActor:
    """Ray actor: one model per actor; encodes the records of a batch together and returns their store rows."""

    def __init__(self, encoder_spec: dict, config_json: str, model_tag: str, device: str, threads: int | None) -> None:
        from cope.encoders import create_encoder

        self.config = EmbedConfig.model_validate_json(config_json)
        options = dict(encoder_spec["options"], device=device, **({"threads": threads} if threads else {}))
        self.encoder = create_encoder(encoder_spec["model"], **options)
        self.model_tag = model_tag
        if f"{self.encoder.model_tag};{self.config.fusion.tag}" != model_tag:
            raise RuntimeError(f"worker built {self.encoder.model_tag!r}, driver expects {model_tag!r}: "
                               "install the same cope, model files and versions on every node")

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        status = batch.column("status").to_pylist()
        errors = batch.column("error").to_pylist()
        payload = batch.column("payload").to_pylist()
        todo = [i for i, s in enumerate(status) if s == "todo"]
        prepared: list[_Prepared] = []
        for i in todo:
            p = pickle.loads(payload[i])
            p.tensors = [[torch.from_numpy(t) for t in per] for per in p.tensors]
            prepared.append(p)
        rows_out: list[bytes | None] = [None] * len(status)
        n_images = [0] * len(status)
        if prepared:
            try:
                rows, _ = encode_prepared(self.encoder, prepared, self.config, self.model_tag)
            except Exception as e:  # the whole batch fails together, like in the single-machine job
                logger.exception("encoding failed")
                for i in todo:
                    status[i], errors[i] = "failed", f"encode: {type(e).__name__}: {e}"
            else:
                by_record: dict[str, list[dict]] = {}
                for row in rows:
                    by_record.setdefault(row["record_key"], []).append(row)
                for i, p in zip(todo, prepared):
                    rows_out[i] = pickle.dumps(by_record.get(p.record.record_key, []), protocol=5)
                    n_images[i] = p.n_images
        return pa.table({"record_key": batch.column("record_key"), "origin": batch.column("origin"),
                         "status": status, "error": errors, "rows": pa.array(rows_out, pa.binary()),
                         "n_images": n_images})


def _write_batch(batch: pa.Table, *, db: str, table: str, model_tag: str) -> pa.Table:
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
    if rows:
        store.upsert(pa.Table.from_pylist(rows, schema=store.table.schema))
    failures = [{"record_key": k, "origin": o, "stage": "extract" if not (e or "").startswith("encode:") else "encode",
                 "reason": e, "model_tag": model_tag}
                for k, o, s, e in zip(batch.column("record_key").to_pylist(), batch.column("origin").to_pylist(),
                                      status, batch.column("error").to_pylist()) if s == "failed"]
    store.record_errors(failures)
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
    """Run the embed job on Ray (local when ``address`` is None). Same table and rows as :func:`cope.job.embed`.

    >>> embed_ray(["catalog.jsonl"], "/shared/cope.lancedb", EmbedConfig(), actors=4, gpus_per_actor=1)  # doctest: +SKIP
    """
    import ray

    from cope.encoders import create_encoder

    db = str(db) if "://" in str(db) else str(Path(db).resolve())
    paths = [Path(m).resolve() for m in manifests]
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"manifest not found: {p}")
    options = {"pretrained": config.pretrained} if config.pretrained else {}
    encoder_spec = {"model": config.model, "options": options}
    probe = create_encoder(config.model, device="cpu", threads=1, **options)  # tag and dim, checked before any work
    model_tag = f"{probe.model_tag};{config.fusion.tag}"
    store = ItemStore.open(db, config.table, model_tag=model_tag, dim=probe.dim)
    store.ensure_table(model_tag, probe.dim, model_spec(config))
    store.clear_manifest_errors([str(p) for p in paths])
    device = config.device if gpus_per_actor == 0 else ("cuda" if config.device == "cpu" else config.device)
    transform, image_size = pickle.dumps(probe.image_transform()), probe.image_size
    del probe

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
    summary = EmbedSummary(model_tag=model_tag)
    config_json = config.model_dump_json()
    start = time.perf_counter()
    rows = itertools.chain.from_iterable(read_manifest(p, config.default_domain) for p in paths)
    show = config.progress if config.progress is not None else logger.isEnabledFor(logging.INFO)
    invalid: list[dict] = []
    with tqdm(unit="rec", desc="embed[ray]", disable=not show, dynamic_ncols=True) as bar:
        while chunk := list(itertools.islice(rows, chunk_records)):
            items = []
            for row in chunk:
                if row.record is None:
                    summary.invalid += 1
                    invalid.append({"record_key": f"manifest:{row.where}", "origin": row.where, "stage": "manifest",
                                    "reason": row.error or "invalid row", "model_tag": model_tag})
                    if len(summary.errors) < 20:
                        summary.errors.append(f"{row.where}: {row.error}")
                else:
                    items.append({"record": row.record.model_dump_json(), "origin": row.where})
            bar.update(len(chunk) - len(items))
            if not items:
                continue
            n_blocks = max(1, len(items) // records_per_task)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*ray_remote_args_fn.*")
                ds = _pipeline(
                    ray, items, n_blocks, records_per_task, extract_args, actors, cpus_per_actor, gpus_per_actor,
                    {"db": db, "config_json": config_json, "transform": transform, "image_size": image_size},
                    {"encoder_spec": encoder_spec, "config_json": config_json, "model_tag": model_tag,
                     "device": device, "threads": config.threads},
                    {"db": db, "table": config.table, "model_tag": model_tag},
                )
            for out in _stream(ds):
                for status, n_items, n_images, error, origin in zip(
                    *(out.column(c).to_pylist() for c in ("status", "n_items", "n_images", "error", "origin"))
                ):
                    if status == "done":
                        summary.done += 1
                        summary.items += n_items
                        summary.images += n_images
                    elif status == "skipped":
                        summary.skipped += 1
                    else:
                        summary.failed += 1
                        if len(summary.errors) < 20:
                            summary.errors.append(f"{origin}: {error}")
                bar.update(out.num_rows)
    store = ItemStore.open(db, config.table)
    store.record_errors(invalid)
    summary.seconds = time.perf_counter() - start
    if config.compact and summary.done:
        store.compact()
    logger.info("%s", summary)
    return summary
