"""COPE training: labels, losses, heads, checkpoints, re-projection, the CLI, and one run through the embed job.

Most tests use a synthetic table (per-product latent + per-domain linear distortion + noise, written straight into
LanceDB), on which untrained vectors retrieve across domains poorly and trained heads well.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from cope.pipeline import PipelineSpec
from cope.store import ItemStore
from cope.store.item_store import StoreMismatchError
from cope.training import (
    CopeHeads,
    HeadsConfig,
    HeadsMismatchError,
    HeadsProjector,
    TrainConfig,
    fit,
    format_comparison,
    labels_from_pairs,
    load_heads,
    load_item_vectors,
    mean_metrics,
    multi_domain_info_nce,
    project,
    read_labels,
    reproject,
    split_products,
)
from cope.training.synthetic import SYNTHETIC_TAG, make_synthetic_store

FAST = {"dim": 32, "lr": 1e-3, "epochs": 60, "patience": 15, "threads": 1, "progress": False}


@pytest.fixture(scope="module")
def synth_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("synth") / "db"
    make_synthetic_store(db, n_products=120, items_per_domain=2, seed=3)
    return db


@pytest.fixture(scope="module")
def trained(synth_db: Path):
    return fit(synth_db, seed=0, **FAST)


@pytest.fixture(scope="module")
def checkpoint(trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained.save(tmp_path_factory.mktemp("ckpt") / "heads")


# -- labels and split --------------------------------------------------------------------------------------------
def test_labels_from_files(tmp_path: Path) -> None:
    csv = tmp_path / "labels.csv"
    csv.write_text("item_id,product_key,domain\nproduct:1,007,text\nimage:a,007,main\nvideo:v,008,\n")
    labels = read_labels(csv)
    assert labels.product_key == {"product:1": "007", "image:a": "007", "video:v": "008"}  # "007" stays a string
    assert labels.domain == {"product:1": "text", "image:a": "main"}

    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text('{"item_a": "video:v1", "item_b": "product:p1"}\n{"item_a": "live:l:0-10", "item_b": "video:v1"}\n'
                     '{"item_a": "video:v2", "item_b": "product:p2"}\n')
    pairs = read_labels(jsonl)
    assert pairs.product_key["live:l:0-10"] == pairs.product_key["product:p1"] == "pair:live:l:0-10"
    assert pairs.product_key["video:v2"] != pairs.product_key["video:v1"]

    parquet = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"item_id": ["a", "b"], "product_id": [1, 1]}), parquet)
    assert read_labels(parquet).product_key == {"a": "1", "b": "1"}

    bad = tmp_path / "bad.csv"
    bad.write_text("id,key\nx,y\n")
    with pytest.raises(ValueError, match="item_id and product_key"):
        read_labels(bad)
    conflict = tmp_path / "conflict.csv"
    conflict.write_text("item_id,product_key\nx,1\nx,2\n")
    with pytest.raises(ValueError, match="two product keys"):
        read_labels(conflict)
    with pytest.raises(FileNotFoundError):
        read_labels(tmp_path / "missing.csv")


def test_labels_from_pairs_are_stable() -> None:
    a = labels_from_pairs([("b", "a"), ("c", "b")])
    b = labels_from_pairs([("c", "b"), ("a", "b")])
    assert a.product_key == b.product_key == {"a": "pair:a", "b": "pair:a", "c": "pair:a"}


def test_split_is_by_product_and_reproducible() -> None:
    keys = [f"p{i}" for i in range(50)]
    s1 = split_products(keys, val_fraction=0.1, test_fraction=0.2, seed=1)
    s2 = split_products(reversed(keys), val_fraction=0.1, test_fraction=0.2, seed=1)
    assert s1 == s2
    assert not (s1.train & s1.test) and not (s1.train & s1.val) and not (s1.val & s1.test)
    assert len(s1.test) == 10 and len(s1.val) == 5 and len(s1.train) == 35
    with pytest.raises(ValueError, match="too few"):
        split_products(keys[:5], val_fraction=0.2, test_fraction=0.4)


# -- losses and heads --------------------------------------------------------------------------------------------
def test_info_nce_prefers_aligned_pairs() -> None:
    torch.manual_seed(0)
    base = torch.nn.functional.normalize(torch.randn(6, 16), dim=1)
    index = torch.tensor([[0, 6, 11], [1, 7, -1], [2, 8, 12], [3, -1, 13], [4, 9, 14], [5, 10, 15]])
    aligned = torch.cat([base, base[[0, 1, 2, 4, 5]], base[[0, 2, 3, 4, 5]]])
    shuffled = torch.nn.functional.normalize(torch.randn(16, 16), dim=1)
    t = torch.tensor(0.05)
    good, n_pairs = multi_domain_info_nce(aligned, index, t)
    bad, _ = multi_domain_info_nce(shuffled, index, t)
    assert n_pairs == 3 and float(good) < 0.01 < float(bad)
    # one product with both domains: no negative, the pair is skipped
    _, n = multi_domain_info_nce(aligned, torch.tensor([[0, 6], [1, -1]]), t)
    assert n == 0


def test_heads_fusion_masks_missing_parts_and_rejects_unknown_domains() -> None:
    heads = CopeHeads(HeadsConfig(base_model_tag="m", input_dim=8, dim=4, domains=["product", "video"]))
    x = torch.nn.functional.normalize(torch.randn(2, 8), dim=1)
    zeros = torch.zeros(2, 8)
    yes, no = torch.ones(2, dtype=torch.bool), torch.zeros(2, dtype=torch.bool)
    dom = heads.domain_indices(["product", "video"])
    image_only = heads(x, zeros, yes, no, dom)
    assert torch.allclose(image_only, heads(x, torch.randn(2, 8), yes, no, dom))  # absent text is ignored
    assert torch.allclose(image_only.norm(dim=1), torch.ones(2))
    with pytest.raises(ValueError, match="no head for domain 'live'"):
        heads.domain_indices(["live"])
    with_default = CopeHeads(HeadsConfig(base_model_tag="m", input_dim=8, dim=4, domains=["product", "video"],
                                         default_domain="video"))
    assert with_default.domain_indices(["live"]).tolist() == [1]


# -- training ------------------------------------------------------------------------------------------------------
def test_training_lifts_heldout_cross_domain_recall(trained) -> None:
    before, after = mean_metrics(trained.before), mean_metrics(trained.after)
    assert len(trained.after) == 6  # product/video/live: every directed pair
    assert before["R@1"] < 0.35
    assert after["R@1"] > 0.8 and after["R@1"] > before["R@1"] + 0.4
    for key, r in trained.after.items():
        assert r.recall[1] > trained.before[key].recall[1], key
    # the report evaluates products never seen in training
    held_out = trained.split.test
    assert held_out and not (held_out & trained.split.train) and not (held_out & trained.split.val)
    assert "product->video" in format_comparison(trained.before, trained.after)
    assert trained.history and all(h.val for h in trained.history)


def test_training_is_deterministic_with_a_seed(synth_db: Path, trained) -> None:
    again = fit(synth_db, seed=0, **FAST)
    assert again.heads.fingerprint == trained.heads.fingerprint
    for (k, a), b in zip(trained.heads.state_dict().items(), again.heads.state_dict().values()):
        assert torch.equal(a, b), k
    other = fit(synth_db, seed=1, **{**FAST, "epochs": 2})
    assert other.heads.fingerprint != trained.heads.fingerprint


def test_cosface_and_options_train(synth_db: Path) -> None:
    result = fit(synth_db, seed=0, **{**FAST, "epochs": 3, "cosface_weight": 0.5, "learn_temperature": False,
                                      "label_smoothing": 0.1, "shared_projection": False, "hidden": 8,
                                      "init": "random", "center": True, "val_fraction": 0.0})
    assert result.best_epoch == 3 and len(result.history) == 3
    assert result.history[-1].temperature == pytest.approx(0.05)
    with pytest.raises(ValueError):
        TrainConfig(not_an_option=1)


# -- checkpoints ---------------------------------------------------------------------------------------------------
def test_checkpoint_round_trip(trained, checkpoint: Path, synth_db: Path) -> None:
    assert {p.name for p in checkpoint.iterdir()} >= {"heads.safetensors", "config.json", "eval.json"}
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["heads"]["base_model_tag"] == SYNTHETIC_TAG and config["fingerprint"] == trained.heads.fingerprint
    report = json.loads((checkpoint / "eval.json").read_text())
    assert set(report["after"]) == {f"{a}->{b}" for a, b in trained.after}
    assert report["mean_after"]["R@1"] == pytest.approx(mean_metrics(trained.after)["R@1"])

    loaded = load_heads(checkpoint, model_tag=SYNTHETIC_TAG, dim=64)
    assert loaded.fingerprint == trained.heads.fingerprint
    data = load_item_vectors(ItemStore.open(synth_db))
    np.testing.assert_array_equal(project(loaded, data), project(trained.heads, data))
    assert load_heads(checkpoint / "heads.safetensors").fingerprint == loaded.fingerprint


def test_loading_refuses_another_base_model(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(HeadsMismatchError, match="trained on vectors of model 'synthetic/latent-v1'"):
        load_heads(checkpoint, model_tag="open_clip/ViT-B-32/other", dim=64)
    with pytest.raises(HeadsMismatchError, match="dim 64"):
        load_heads(checkpoint, model_tag=SYNTHETIC_TAG, dim=512)
    other_db = tmp_path / "other"
    make_synthetic_store(other_db, n_products=10, model_tag="another-model/v1")
    with pytest.raises(HeadsMismatchError):
        reproject(other_db, checkpoint, "items_cope", progress=False)
    with pytest.raises(FileNotFoundError, match="cope train --out"):
        load_heads(tmp_path)


def test_tampered_checkpoint_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "config.json").write_text((checkpoint / "config.json").read_text())
    state = load_file(str(checkpoint / "heads.safetensors"))
    state["fusion"] = state["fusion"] + 1
    save_file(state, str(copy / "heads.safetensors"))
    with pytest.raises(ValueError, match="fingerprint"):
        load_heads(copy)


# -- re-projection -------------------------------------------------------------------------------------------------
def test_reproject_writes_a_new_table_with_its_own_tag(synth_db: Path, checkpoint: Path, trained) -> None:
    summary = reproject(synth_db, checkpoint, "items_cope", progress=False)
    src, dst = ItemStore.open(synth_db), ItemStore.open(synth_db, "items_cope")
    assert summary.rows == src.count() == dst.count()
    assert dst.model_tag == f"{SYNTHETIC_TAG};heads={trained.heads.fingerprint}" and dst.dim == 32
    assert PipelineSpec.from_metadata(dst.metadata) is None  # the synthetic source records no pipeline
    rows = dst.read(["item_id", "vector", "image_vector", "text_vector", "model_tag"]).to_pylist()
    by_id = {r["item_id"]: r for r in rows}
    data = load_item_vectors(src)
    expected = project(trained.heads, data)
    got = np.array([by_id[i]["vector"] for i in data.item_ids], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    assert {r["model_tag"] for r in rows} == {dst.model_tag}
    # again: idempotent upsert, same rows
    reproject(synth_db, checkpoint, "items_cope", progress=False)
    assert ItemStore.open(synth_db, "items_cope").count() == summary.rows
    with pytest.raises(ValueError, match="source table"):
        reproject(synth_db, checkpoint, "items", progress=False)
    # a table of other vectors is never mixed into
    make_synthetic_store(synth_db, table="occupied", n_products=3, model_tag="something-else")
    with pytest.raises(StoreMismatchError):
        reproject(synth_db, checkpoint, "occupied", progress=False)


def test_projector_rows_match_table(synth_db: Path, checkpoint: Path) -> None:
    src = ItemStore.open(synth_db)
    projector = HeadsProjector.load(checkpoint, model_tag=src.model_tag, dim=src.dim)
    table = src.read(src.table.schema.names).slice(0, 7)
    as_table = projector.project_table(table)
    as_rows = projector.project_rows(table.to_pylist())
    np.testing.assert_allclose(np.array([r["vector"] for r in as_rows]),
                               np.array(as_table.column("vector").to_pylist()), atol=1e-6)
    assert {r["model_tag"] for r in as_rows} == {projector.model_tag}
    # text-only items have zero image vectors, and the reverse
    for row, base in zip(as_rows, table.to_pylist()):
        assert (np.abs(row["image_vector"]).sum() > 0) == base["has_image"]
        assert (np.abs(row["text_vector"]).sum() > 0) == base["has_text"]


# -- CLI -----------------------------------------------------------------------------------------------------------
@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch):
    import cope.cli

    monkeypatch.setattr(cope.cli, "COMMANDS", list(dict.fromkeys([*cope.cli.COMMANDS, "train", "reproject"])))
    return cope.cli.main


def test_cli_train_and_reproject(cli, synth_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "ckpt"
    code = cli(["-q", "train", "--db", str(synth_db), "--out", str(out), "--dim", "32", "--lr", "1e-3",
                "--epochs", "40", "--threads", "1", "--seed", "0"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "product->live" in text and "mean" in text and (out / "eval.json").exists()
    assert cli(["-q", "reproject", "--db", str(synth_db), "--heads", str(out), "--table", "cli_cope"]) == 0
    assert ItemStore.open(synth_db, "cli_cope").dim == 32
    # user errors: a message, exit code 2, no traceback
    assert cli(["-q", "reproject", "--db", str(synth_db), "--heads", str(tmp_path / "nope"), "--table", "x"]) == 2
    assert "cope train --out" in capsys.readouterr().err


def test_cli_defaults_match_train_config() -> None:
    import argparse

    from cope.commands import train as train_cmd

    parser = argparse.ArgumentParser()
    train_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["train", "--db", "x", "--out", "y"])
    defaults = TrainConfig()
    for flag, field in [("dim", "dim"), ("epochs", "epochs"), ("batch_products", "batch_products"), ("lr", "lr"),
                        ("weight_decay", "weight_decay"), ("temperature", "temperature"), ("init", "init"),
                        ("label_smoothing", "label_smoothing"), ("cosface_weight", "cosface_weight"),
                        ("cosface_margin", "cosface_margin"), ("cosface_scale", "cosface_scale"),
                        ("val_fraction", "val_fraction"), ("test_fraction", "test_fraction"),
                        ("patience", "patience"), ("monitor", "monitor"), ("seed", "seed"), ("hidden", "hidden"),
                        ("projection_lr_scale", "projection_lr_scale"), ("dropout", "dropout")]:
        assert getattr(args, flag) == getattr(defaults, field), flag
    assert args.center == defaults.center and (not args.fixed_temperature) == defaults.learn_temperature
    assert (not args.per_domain_projection) == defaults.shared_projection


# -- end to end through the embed job ------------------------------------------------------------------------------
def test_end_to_end_with_the_embed_job(tmp_path: Path, tiny_config_dir: Path) -> None:
    from cope.demo import make_demo_catalog
    from cope.job import embed

    manifest = make_demo_catalog(tmp_path / "demo", n_products=8, video_frames=4)
    db = tmp_path / "db"
    summary = embed(manifest, db, model="open_clip:cope-tiny-16", progress=False, threads=1)
    assert summary.failed == 0
    store = ItemStore.open(db)
    ids = store.read(["item_id", "metadata"]).to_pylist()
    # labels: metadata.product_key for pages, photos and videos; live slices i -> product i from a pairs file
    pairs = tmp_path / "pairs.csv"
    lines = ["item_id,product_key"]
    for row in ids:
        key = json.loads(row["metadata"] or "{}").get("product_key")
        if key:
            lines.append(f"{row['item_id']},{key}")
        elif row["item_id"].startswith("live:"):
            start = float(row["item_id"].rsplit(":", 1)[1].split("-")[0])
            lines.append(f"{row['item_id']},p{int(start // 10):03d}")
    pairs.write_text("\n".join(lines) + "\n")
    result = fit(db, pairs=pairs, seed=0, dim=8, epochs=5, val_fraction=0.0, test_fraction=0.25, threads=1,
                 progress=False)
    assert set(result.heads.config.domains) == {"product", "image", "video", "live"}
    assert result.after and result.heads.config.base_model_tag == store.model_tag
    ckpt = result.save(tmp_path / "heads")
    reproject(db, ckpt, "items_cope", progress=False)
    projected = ItemStore.open(db, "items_cope")
    assert projected.count() == store.count() and projected.dim == 8
    assert projected.model_tag == f"{store.model_tag};heads={result.heads.fingerprint}"
