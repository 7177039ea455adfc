"""Doctest fixtures: runnable examples in the library's docstrings get a tiny model and a small embedded catalog."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import TINY_MODEL, tiny_config_dir  # noqa: F401, F811  (a fixture, for doctests)


@pytest.fixture(scope="session")
def doctest_catalog(tmp_path_factory: pytest.TempPathFactory, tiny_config_dir: Path) -> Path:  # noqa: F811
    """A product page, an image and a video, the same red ball: ``product:p1``, ``image:i1``, ``video:v1``."""
    from tests.media import make_video, save_image

    root = tmp_path_factory.mktemp("doctest")
    save_image(root / "ball.jpg")
    make_video(root / "ball.mp4")
    rows = [
        {"domain": "product", "item_id": "p1", "title": "a red ball", "images": ["ball.jpg"]},
        {"domain": "image", "image_id": "i1", "uri": "ball.jpg", "text": "red ball photo"},
        {"domain": "video", "video_id": "v1", "uri": "ball.mp4", "title": "unboxing the red ball"},
    ]
    catalog = root / "catalog.jsonl"
    catalog.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return catalog


@pytest.fixture(autouse=True)
def _doctest_names(request: pytest.FixtureRequest, doctest_namespace: dict) -> None:
    if not isinstance(request.node, pytest.DoctestItem):
        return
    catalog = request.getfixturevalue("doctest_catalog")
    db_dir = catalog.parent / "cope.lancedb"
    if not db_dir.exists():
        from cope.job import embed

        embed(catalog, db_dir, model=f"open_clip:{TINY_MODEL}", progress=False)
    new_db = request.getfixturevalue("tmp_path") / "new.lancedb"
    doctest_namespace.update(catalog=str(catalog), db_dir=str(db_dir), new_db=str(new_db),
                             TINY_MODEL=f"open_clip:{TINY_MODEL}")
