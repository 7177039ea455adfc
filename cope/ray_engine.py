"""The embed job on Ray Data: extraction in CPU tasks, encoding in an actor pool, upserts from Ray tasks.

Same records, hashes, rows, model tag and table as the single-machine job (:mod:`cope.job`); the stages reuse its
functions. The driver streams the manifests and validates rows; everything that touches files or the model runs on
the cluster. Resume works the same way: an extraction task skips records whose content hash is already stored.

Run on a cluster: every node needs ``pip install cope[ray]`` (same versions as the driver) and the media and the
LanceDB directory at the same path (a shared filesystem) or an object-store URI.

Nothing big travels with a stage: each stage is a module-level function or class (pickled by reference) plus a few
small arguments (paths, JSON of the options and the pipeline spec, and the encoder's image transform when it pickles
small, else the spec it is rebuilt from once per worker process). The model loads once per actor. The pickled size
of each stage's callable and arguments is logged at INFO and must stay under :data:`MAX_STAGE_BYTES` (1 MiB).
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
#: the most one stage's callable and its arguments may weigh, pickled (Ray ships them to every worker of the stage)
MAX_STAGE_BYTES = 1 << 20
#: a pickled image transform up to this size travels with the extraction tasks; a bigger one (or the encoder's bound
#: ``preprocess``, which pickles the whole encoder with its weights) is rebuilt from the spec in each worker process
MAX_INLINE_TRANSFORM_BYTES = 64 << 10
_STORES: dict[tuple[str, str], tuple[str, ItemStore]] = {}
_OCR_CACHES: dict[str, Any] = {}
_TRANSFORMS: dict[bytes, Any] = {}


def _store(db: str, table: str, run: str) -> ItemStore:
    """This run's store of a table in this worker process, moved to the table's latest version.

    Worker processes outlive a run (a notebook, a benchmark or a test module runs several in one Ray session), and
    a LanceDB handle does not see other processes' commits by itself. So a handle is opened once per run and
    worker (never reused from an earlier run: that table may have been deleted and re-created since) and checked
    out at the latest version before each batch: the skip decision sees what the writer tasks have committed.
    """
    key = (db, table)
    cached = _STORES.get(key)
    if cached is None or cached[0] != run or not cached[1].exists:
        _STORES[key] = cached = (run, ItemStore.open(db, table))
    else:
        cached[1].table.checkout_latest()
    return cached[1]


def transform_kwargs(pipeline: Pipeline) -> dict[str, Any]:
    """How the extraction tasks get the encoder's preprocessing: ``{"transform": <pickle>}`` when the transform is a
    stand-alone object that pickles small, else ``{"encoder_spec": <pipeline spec JSON, no heads>}``, from which each
    worker process rebuilds the encoder once (checked against the spec's encoder tag) and uses its ``preprocess``."""
    encoder = pipeline.encoder
    transform = encoder.image_transform()
    blob: bytes | None = None
    if getattr(transform, "__self__", None) is not encoder:  # a bound method would pickle the encoder, weights too
        try:
            blob = pickle.dumps(transform, protocol=5)
        except Exception as e:  # not picklable: rebuild it on the workers
            logger.debug("the image transform of %s does not pickle: %s", encoder.model_tag, e)
    if blob is not None and len(blob) <= MAX_INLINE_TRANSFORM_BYTES:
        return {"transform": blob, "encoder_spec": None}
    logger.info("extraction tasks rebuild the image transform of %s from its spec (once per worker process): %s",
                encoder.model_tag, "it is the encoder's own method" if blob is None else f"{len(blob):,} bytes pickled")
    return {"transform": None, "encoder_spec": pipeline.spec.without_heads().model_dump_json()}


def _transform(transform: bytes | None, encoder_spec: str | None) -> Any:
    """The encoder's image transform, once per worker process: unpickled, or rebuilt from the spec (see
    :func:`transform_kwargs`); after the torchvision fix (transforms import torchvision)."""
    key = transform if transform is not None else (encoder_spec or "").encode()
    if key not in _TRANSFORMS:
        from cope._torchvision_fix import ensure_torchvision_importable

        ensure_torchvision_importable()
        if transform is not None:
            _TRANSFORMS[key] = pickle.loads(transform)
        else:
            spec = PipelineSpec.model_validate_json(encoder_spec or "{}")
            _TRANSFORMS[key] = Pipeline.build(spec, device="cpu").encoder.preprocess  # checks the encoder's tag
    return _TRANSFORMS[key]


def _ocr_cache(db: str) -> Any:
    """The database's OCR cache, one per worker process."""
    if db not in _OCR_CACHES:
        from cope.store.ocr_cache import OcrCacheTable

        _OCR_CACHES[db] = OcrCacheTable.open(db)
    return _OCR_CACHES[db]


def _extract_batch(batch: pa.Table, *, db: str, table: str, run: str, options_json: str,
                   transform: bytes | None = None, encoder_spec: str | None = None,
                   remote_json: str | None = None) -> pa.Table:
    """Ray task: hash, skip what is stored (the core's decision), extract, read text in pictures (when the pipeline
    does) and preprocess. One row per record."""
    from cope import media
    from cope.embed_core import hash_records

    if remote_json is not None:  # remote media settings are per process
        media.configure(media.RemoteOptions.model_validate_json(remote_json))
    options = ExtractOptions.model_validate_json(options_json)  # the pipeline's, with the encoder's decode hint
    cache = _ocr_cache(db) if options.ocr else None
    records = [RECORD_ADAPTER.validate_json(r) for r in batch.column("record").to_pylist()]
    origins = batch.column("origin").to_pylist()
    digests = hash_records(records)
    todo = select_todo(_store(db, table, run), records, digests)
    status, payload, errors, ocr_errors = [], [], [], []
    for record, origin, digest, needed in zip(records, origins, digests, todo):
        ocr_error = None
        if not needed:
            status.append("skipped"), payload.append(None), errors.append(None)
        else:
            prepared = prepare_record(record, origin, digest, _transform(transform, encoder_spec), options, cache)
            if prepared.error is not None:
                status.append("failed"), payload.append(None), errors.append(prepared.error)
            else:
                prepared.tensors = [[t.numpy() for t in per] for per in prepared.tensors]  # plain arrays travel well
                status.append("todo"), payload.append(pickle.dumps(prepared, protocol=5)), errors.append(None)
                ocr_error = "; ".join(f"{c.item_id}: {c.ocr_error}" for c in prepared.contents if c.ocr_error) or None
        ocr_errors.append(ocr_error)
    if cache is not None:
        cache.flush()
    return pa.table({"record_key": [r.record_key for r in records], "origin": origins, "status": status,
                     "stage": ["extract" if s == "failed" else None for s in status],
                     "error": errors, "ocr_error": pa.array(ocr_errors, pa.string()),
                     "payload": pa.array(payload, pa.binary())})


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
                         "status": status, "stage": stages, "error": errors, "ocr_error": batch.column("ocr_error"),
                         "rows": pa.array(rows_out, pa.binary()), "n_images": n_images})


def _write_batch(batch: pa.Table, *, db: str, table: str, run: str, tag: str) -> pa.Table:
    """Ray task: upsert the rows of whole records (a live stream's slices stay in one commit), record failures."""
    store = _store(db, table, run)
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
    # written without their OCR part: recorded after the rows (an upsert clears the errors of its records)
    ocr_failed = [s == "done" and e is not None for s, e in zip(status, batch.column("ocr_error").to_pylist())]
    store.record_errors([error_row(k, o, "ocr", e, tag) for k, o, e, bad in zip(
        batch.column("record_key").to_pylist(), batch.column("origin").to_pylist(),
        batch.column("ocr_error").to_pylist(), ocr_failed) if bad])
    return pa.table({"status": status, "n_items": n_items, "n_images": batch.column("n_images"),
                     "error": batch.column("error"), "origin": batch.column("origin"), "ocr_failed": ocr_failed})


@dataclass
class Stage:
    """One ``map_batches`` stage: the callable Ray ships to its workers, its keyword arguments (``fn_kwargs``, or
    ``fn_constructor_kwargs`` for the actor class) and its resource requests."""

    fn: Callable[..., Any] | type
    kwargs: dict[str, Any]
    resources: dict[str, Any] = field(default_factory=dict)

    def payload_bytes(self) -> int:
        """Pickled size (Ray's cloudpickle) of the callable plus its arguments: what travels to each worker."""
        from ray import cloudpickle

        return len(cloudpickle.dumps(self.fn)) + len(cloudpickle.dumps(self.kwargs))


def stage_payloads(stages: dict[str, Stage]) -> dict[str, int]:
    """The pickled size of each stage; refuses a stage over :data:`MAX_STAGE_BYTES` (a bug: nothing big belongs in
    a closure, models load in the actors)."""
    sizes = {name: stage.payload_bytes() for name, stage in stages.items()}
    logger.info("Ray stage payloads (pickled callable + arguments): %s",
                ", ".join(f"{name} {size:,} B" for name, size in sizes.items()), extra={"stage_bytes": sizes})
    if over := {name: size for name, size in sizes.items() if size > MAX_STAGE_BYTES}:
        raise RuntimeError(f"Ray stage payloads over {MAX_STAGE_BYTES:,} bytes: {over}")
    return sizes


def _stages(core: EmbedCore, config: EmbedConfig, db: str, *, actors: int, cpus_per_actor: float,
            gpus_per_actor: float, cpus_per_task: float) -> dict[str, Stage]:
    """extract (CPU tasks) -> encode (actor pool, one model each) -> write (tasks), with their arguments."""
    import ray

    device = config.device if gpus_per_actor == 0 else ("cuda" if config.device == "cpu" else config.device)
    # Ray fuses a task stage into the next actor stage when their resources are equal; extraction must stay in its
    # own tasks, in parallel with the model, so equal CPU-only requests get a remote-args function (never fused)
    extract_args: dict[str, Any] = {"num_cpus": cpus_per_task}
    if gpus_per_actor == 0 and cpus_per_task == cpus_per_actor:
        extract_args = {"ray_remote_args_fn": lambda: {"num_cpus": cpus_per_task}}
    run = uuid.uuid4().hex  # worker processes keep a store per run (see _store)
    extract_kw = {"db": db, "table": config.table, "run": run,
                  "options_json": core.pipeline.extract_options.model_dump_json(), **transform_kwargs(core.pipeline),
                  "remote_json": config.remote.model_dump_json() if config.remote is not None else None}
    actor_kw = {"spec_json": core.spec.model_dump_json(), "db": db, "device": device, "threads": config.threads,
                "batch_size": config.batch_size, "text_batch_size": config.text_batch_size}
    return {
        "extract": Stage(_extract_batch, extract_kw, extract_args),
        "encode": Stage(_EncodeActor, actor_kw, {"compute": ray.data.ActorPoolStrategy(size=actors),
                                                 "num_cpus": cpus_per_actor, "num_gpus": gpus_per_actor}),
        "write": Stage(_write_batch, {"db": db, "table": config.table, "run": run, "tag": core.tag}, {"num_cpus": 0.5}),
    }


def _pipeline(ray: Any, items: list[dict], n_blocks: int, per_task: int, stages: dict[str, Stage]) -> Any:
    """read -> extract -> encode -> write, each stage in batches of ``per_task`` records."""
    extract, encode, write = stages["extract"], stages["encode"], stages["write"]
    return (
        ray.data.from_items(items, override_num_blocks=n_blocks)
        .map_batches(extract.fn, batch_size=per_task, batch_format="pyarrow", fn_kwargs=extract.kwargs,
                     **extract.resources)
        .map_batches(encode.fn, batch_size=per_task, batch_format="pyarrow", fn_constructor_kwargs=encode.kwargs,
                     **encode.resources)
        .map_batches(write.fn, batch_size=per_task, batch_format="pyarrow", fn_kwargs=write.kwargs,
                     **write.resources)
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

    ``address`` is a running cluster's (``ray://head:10001``, ``head:6379``, ``auto``). When Ray is not initialised
    yet, it is initialised here with the driver's ``COPE_*``, ``HF_*``, ``TRANSFORMERS_*`` and ``OMP_NUM_THREADS``
    variables in the job's runtime environment (so they reach every worker, on every node); the connection stays
    open for later runs in this process (``ray.shutdown()`` closes it).

    >>> embed_ray(["catalog.jsonl"], "/shared/cope.lancedb", EmbedConfig(), actors=4, gpus_per_actor=1)  # doctest: +SKIP
    """
    import ray

    from cope import media
    from cope.manifest import check_inputs

    db = resolve_db(db)
    paths = [p.resolve() for p in manifest_paths(manifests)]
    if config.remote is not None:
        media.configure(config.remote)
    check_inputs(paths, config.manifest_options())  # a usage error before any model loads
    core = EmbedCore.open(db, config)  # builds the pipeline once here: its tag and dim, checked before any work
    core.ensure_table()
    if not ray.is_initialized():
        env = {k: v for k, v in os.environ.items() if k.startswith(_FORWARDED_ENV)}
        env.setdefault("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "0"))
        ray.init(address=address, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False,
                 runtime_env={"env_vars": env})
    stages = _stages(core, config, db, actors=actors, cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor,
                     cpus_per_task=cpus_per_task)
    stage_payloads(stages)
    core.release_pipeline()  # the driver needs no model from here on
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
                ds = _pipeline(ray, items, n_blocks, records_per_task, stages)
            for out in _stream(ds):
                for status, n_items, n_images, error, origin, ocr_failed in zip(*(out.column(c).to_pylist() for c in (
                    "status", "n_items", "n_images", "error", "origin", "ocr_failed"))
                ):
                    if status == "done":
                        core.done(1, n_items, n_images)
                        core.summary.ocr_failed += int(bool(ocr_failed))
                    elif status == "skipped":
                        core.skipped()
                    else:  # already in the errors table (written by the task)
                        core.fail("", origin, "extract", error, buffered=False)
                bar.update(out.num_rows)
    return core.finish(time.perf_counter() - start)
