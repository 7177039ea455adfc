"""The exploration notebook runs top to bottom headless on a small generated catalog; its helpers work alone."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "explore_cross_domain.ipynb"


@pytest.mark.slow
def test_notebook_runs_headless(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    # the kernel inherits this environment: a tmp folder, the tiny model, the generated catalog, no hub, Agg
    for key in [k for k in os.environ if k.startswith("COPE_NOTEBOOK_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("COPE_NOTEBOOK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("COPE_NOTEBOOK_MODEL", "open_clip:cope-tiny-16")
    monkeypatch.setenv("COPE_NOTEBOOK_DATA", "demo")
    monkeypatch.setenv("COPE_NOTEBOOK_PRODUCTS", "6")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    # the kernel must be this interpreter (the project's venv), whatever kernelspecs the machine has
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pngs = [o for o in outputs if "data" in o and "image/png" in o["data"]]
    assert len(pngs) >= 2, "the neighbour grid and the 2-D map"
    summary = nb.cells[-1].outputs[-1]["data"]["text/plain"]
    assert "'items': 21" in summary and "'live'" in summary and "same_product_mean" in summary
    assert "'heads_table': 'items_cope'" in summary, "the heads table is built and searched"
    assert len(pngs) >= 4, "the neighbour grid, the 2-D map by domain and by category, the before/after map"
    assert (tmp_path / "work" / "cope.lancedb").is_dir(), "the notebook writes only under COPE_NOTEBOOK_DIR"


@pytest.fixture(scope="module")
def small_db(demo_catalog: Path, tmp_path_factory: pytest.TempPathFactory):
    from cope.api import open_db
    from cope.job import embed

    path = tmp_path_factory.mktemp("nb") / "cope.lancedb"
    embed(demo_catalog, path, model="open_clip:cope-tiny-16", progress=False)
    return open_db(path)


def test_thumbnails_of_every_domain(small_db) -> None:
    from cope.notebook_utils import thumbnail

    rows = small_db.table.search().select(["domain", "media_uri", "slice_start", "slice_end"]).limit(None).to_arrow()
    seen = set()
    for r in rows.to_pylist():
        im = thumbnail(r["media_uri"], slice_start=r["slice_start"], slice_end=r["slice_end"], size=48)
        assert max(im.size) <= 48 and im.getextrema() != ((200, 200),) * 3, r
        seen.add(r["domain"])
    assert seen == {"product", "image", "video", "live"}
    assert thumbnail(None).size == (128, 128) and thumbnail("/no/such.jpg").getpixel((0, 0)) == (200, 200, 200)


def test_pca_and_same_product(small_db) -> None:
    pytest.importorskip("pandas")
    from cope.notebook_utils import catalog_frame, pca_2d, same_product_at_k

    xy = pca_2d(np.random.default_rng(0).standard_normal((10, 5)))
    assert xy.shape == (10, 2) and abs(xy[:, 0].mean()) < 1e-9 and xy[:, 0].var() >= xy[:, 1].var()
    df = catalog_frame(small_db)
    assert len(df) == small_db.table.count_rows() and df["vector"].iloc[0].shape == (16,)
    sp = same_product_at_k(small_db, df, k=2)
    labelled = df[df["product_key"].notna()]
    assert set(sp["query"]) == set(labelled["domain"]) >= {"product", "image", "video"}
    assert sp["same_product@2"].between(0, 1).all() and (sp["queries"] >= 1).all()
    pv = sp[(sp["query"] == "product") & (sp["target"] == "video")]
    assert pv["queries"].item() == 4  # every product has a video in the demo


def test_figures_render_headless(small_db) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    pytest.importorskip("pandas")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cope.notebook_utils import catalog_frame, domain_map, neighbour_grid

    fig = neighbour_grid(small_db, ["product:p000", "live:live-001:0-10"], k=3)
    assert len(fig.axes) == 8
    plt.close(fig)
    fig = domain_map(catalog_frame(small_db))
    assert fig.axes[0].get_legend() is not None
    plt.close(fig)


def test_magento_manifest(tmp_path: Path, shared_data: Path) -> None:
    from cope.manifest import read_manifest
    from cope.notebook_utils import magento_manifest

    path = magento_manifest(shared_data, tmp_path / "m.jsonl", limit=5)
    rows = list(read_manifest(path))
    assert rows and all(r.record is not None for r in rows), [r.error for r in rows if r.record is None]
    assert {r.record.domain for r in rows} == {"product", "image"}
    assert all(r.record.metadata.get("product_key") for r in rows)
