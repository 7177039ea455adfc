"""The Ray engine on a real two-node Ray cluster on this machine (two raylets, two object stores, 1 CPU each), driven
through the CLI with ``--address``: the same rows as the local job; and what each stage ships to the workers stays
small (the model loads in the actors, the image transform travels as a small pickle or as a spec)."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from cope.cli import main
from cope.embedding import Pipeline, PipelineSpec
from cope.encoders.base import Encoder
from cope.job import EmbedConfig, embed
from cope.pipeline import EncoderSpec
from cope.store import ItemStore
from tests.conftest import TINY_MODEL
from tests.media import corrupt_file, save_image
from tests.ray_nodes import two_node_cluster

ray = pytest.importorskip("ray")
ray_engine = pytest.importorskip("cope.ray_engine")


@pytest.fixture(scope="module")
def two_nodes(tiny_config_dir: Path):
    """A head and a worker node, 1 CPU each (:func:`tests.ray_nodes.two_node_cluster`); Ray keeps 8 idle workers
    per node, so that on 1-CPU nodes not every task starts a process and imports torch again."""
    if ray.is_initialized():
        ray.shutdown()
    with two_node_cluster(tiny_config_dir, soft_limit=8) as cluster:
        yield cluster


def _rows(db: Path) -> dict[str, dict]:
    cols = ["item_id", "vector", "image_vector", "text_vector", "content_hash", "record_hash", "model_tag",
            "slice_start", "slice_end", "n_images"]
    return {r["item_id"]: r for r in ItemStore.open(db).read(cols).to_pylist()}


@pytest.mark.slow
def test_cli_on_a_two_node_cluster_equals_the_local_job(two_nodes, demo_catalog: Path, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cope.ray_engine")
    corrupt_file(demo_catalog.parent / "media" / "broken-cluster.jpg", "garbage")
    manifest = demo_catalog.parent / "cluster.jsonl"
    manifest.write_text(demo_catalog.read_text() + json.dumps(
        {"domain": "image", "image_id": "broken", "uri": "media/broken-cluster.jpg"}) + "\n")

    db = tmp_path / "cluster"
    rc = main(["-q", "embed", str(manifest), "--db", str(db), "--model", f"open_clip:{TINY_MODEL}",
               "--engine", "ray", "--address", two_nodes.address, "--records-per-task", "4"])
    assert rc == 3  # some failed: the broken image
    assert ray.is_initialized()  # embed_ray connected to the cluster itself (forwarding COPE_MODEL_CONFIGS)
    alive = [n for n in ray.nodes() if n["Alive"]]
    assert len(alive) == 2 and all(n["Resources"].get("CPU") == 1 for n in alive)
    # each node has 1 CPU: the encoder actor (1 CPU) fills one of them, so the extraction tasks (1 CPU) ran on the
    # other one, and their output crossed from one object store to the other
    from ray._private import state

    actor_nodes = {a["Address"]["NodeID"] for a in state.actors().values()
                   if "_EncodeActor" in a.get("ActorClassName", "")}
    assert len(actor_nodes) == 1 and actor_nodes <= {n["NodeID"] for n in alive}

    sizes = [r.stage_bytes for r in caplog.records if hasattr(r, "stage_bytes")]
    assert sizes and set(sizes[0]) == {"extract", "encode", "write"}
    assert all(0 < size < ray_engine.MAX_STAGE_BYTES for size in sizes[0].values()), sizes

    local_db = tmp_path / "local"
    local = embed(manifest, local_db, config=EmbedConfig(model=f"open_clip:{TINY_MODEL}", progress=False))
    assert (local.done, local.failed) == (13, 1)
    a, b = _rows(db), _rows(local_db)
    assert sorted(a) == sorted(b) and len(a) == 15
    for key in a:
        for col in ("content_hash", "record_hash", "model_tag", "slice_start", "slice_end", "n_images"):
            assert a[key][col] == b[key][col], (key, col)
        for col in ("vector", "image_vector", "text_vector"):
            np.testing.assert_allclose(a[key][col], b[key][col], atol=1e-5)
    assert ItemStore.open(db).model_tag == ItemStore.open(local_db).model_tag
    errors = {e["record_key"]: e["stage"] for e in ItemStore.open(db).errors().to_pylist()}
    assert errors == {"image:broken": "extract"}


# -- what the stages ship: no cluster needed --------------------------------------------------------------------


class _HeavyEncoder(Encoder):
    """The tiny encoder plus 4 MB of 'weights', with the base class's ``image_transform`` (its bound method, which
    pickles the whole encoder: what cope-default does, 117 MB there)."""

    def __init__(self, inner: Encoder) -> None:
        self.inner, self.weights = inner, np.ones(1 << 20, np.float32)
        self.dim, self.model_tag, self.image_size = inner.dim, inner.model_tag, inner.image_size

    def preprocess(self, image):
        return self.inner.preprocess(image)

    def encode_image_tensors(self, batch):
        return self.inner.encode_image_tensors(batch)

    def encode_texts(self, texts, batch_size=64):
        return self.inner.encode_texts(texts, batch_size)


class _BigTransform:
    """A stand-alone transform that pickles big (a lookup table)."""

    def __init__(self, inner) -> None:
        self.inner, self.table = inner, np.zeros(1 << 19, np.float32)

    def __call__(self, image):
        return self.inner(image)


@pytest.fixture(scope="module")
def tiny_pipeline(tiny_encoder) -> Pipeline:
    return Pipeline.build(PipelineSpec(encoder=EncoderSpec(name=f"open_clip:{TINY_MODEL}")), encoder=tiny_encoder)


def _extract_stage_bytes(kwargs: dict) -> int:
    return ray_engine.Stage(ray_engine._extract_batch, {"db": "/db", "table": "items", "run": "0" * 32,
                                                        "options_json": "{}", **kwargs}).payload_bytes()


def test_a_small_transform_travels_pickled(tiny_pipeline: Pipeline, tmp_path: Path) -> None:
    kwargs = ray_engine.transform_kwargs(tiny_pipeline)
    assert kwargs["encoder_spec"] is None and len(kwargs["transform"]) <= ray_engine.MAX_INLINE_TRANSFORM_BYTES
    assert _extract_stage_bytes(kwargs) < 16 << 10
    image = save_image(tmp_path / "a.png", size=(96, 64))
    from PIL import Image

    with Image.open(image) as im:
        im = im.convert("RGB")
        expected = tiny_pipeline.encoder.preprocess(im)
        assert ray_engine._transform(**kwargs)(im).equal(expected)


@pytest.mark.parametrize("heavy", ["bound-method", "big-transform"])
def test_a_heavy_transform_travels_as_the_spec_and_is_rebuilt_once(heavy: str, tiny_pipeline: Pipeline,
                                                                   tmp_path: Path, monkeypatch) -> None:
    if heavy == "bound-method":
        encoder = _HeavyEncoder(tiny_pipeline.encoder)
        assert len(pickle.dumps(encoder.image_transform())) > 4 << 20  # what used to travel with every task
    else:
        encoder = tiny_pipeline.encoder
        big = _BigTransform(encoder.image_transform())
        monkeypatch.setattr(encoder, "image_transform", lambda: big)
    pipeline = Pipeline(tiny_pipeline.spec, encoder)
    kwargs = ray_engine.transform_kwargs(pipeline)
    assert kwargs["transform"] is None
    spec = PipelineSpec.model_validate_json(kwargs["encoder_spec"])
    assert spec.encoder_tag == tiny_pipeline.encoder.model_tag and spec.heads is None
    assert _extract_stage_bytes(kwargs) < 16 << 10

    monkeypatch.setattr(ray_engine, "_TRANSFORMS", {})
    image = save_image(tmp_path / "b.png", size=(64, 80))
    from PIL import Image

    with Image.open(image) as im:
        im = im.convert("RGB")
        rebuilt = ray_engine._transform(**kwargs)
        assert rebuilt(im).equal(tiny_pipeline.encoder.preprocess(im))
    assert ray_engine._transform(**kwargs) is rebuilt  # once per worker process


def test_a_stage_over_1_mib_is_refused() -> None:
    with pytest.raises(RuntimeError, match="over 1,048,576 bytes"):
        ray_engine.stage_payloads({"extract": ray_engine.Stage(ray_engine._extract_batch, {"blob": b"x" * (1 << 20)})})


def test_worker_stores_see_other_writers_and_do_not_outlive_their_run(tmp_path: Path, monkeypatch) -> None:
    """A Ray worker process outlives a run; its cached store must neither miss what other tasks committed (the
    skip decision) nor read a table deleted and re-created since an earlier run."""
    import lancedb
    import pyarrow as pa

    db = str(tmp_path / "db")

    def rows(start: int, n: int) -> pa.Table:
        keys = [f"image:i{k}" for k in range(start, start + n)]
        return pa.table({"item_id": keys, "record_key": keys,
                         "vector": pa.array([[0.0, 1.0]] * n, pa.list_(pa.float32(), 2))})

    def create(n: int) -> None:
        shutil.rmtree(db, ignore_errors=True)
        lancedb.connect(db).create_table("items", rows(0, n))

    monkeypatch.setattr(ray_engine, "_STORES", {})
    create(1)
    assert ray_engine._store(db, "items", "run-1").table.count_rows() == 1
    lancedb.connect(db).open_table("items").add(rows(1, 1))  # a writer task in another process
    assert ray_engine._store(db, "items", "run-1").table.count_rows() == 2
    create(3)  # deleted and re-created before the next run
    assert ray_engine._store(db, "items", "run-2").table.count_rows() == 3
