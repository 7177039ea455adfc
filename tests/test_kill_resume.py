"""A real `cope embed` subprocess killed with SIGKILL mid-way, then re-run: exact row count, no duplicates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cope.store import ItemStore
from tests.conftest import TINY_MODEL
from tests.media import save_image

N = 60

# Test-only slowdown so the kill lands mid-run: every upsert sleeps after committing (the code path is the real one).
_SLOW = """
import time, cope.store.item_store as s
_real = s.ItemStore.upsert
def upsert(self, rows):
    _real(self, rows)
    time.sleep(0.25)
s.ItemStore.upsert = upsert
"""


def _image_catalog(tmp_path: Path, n: int) -> Path:
    """n small images of different sizes, one image record each."""
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(n):
        save_image(tmp_path / "img" / f"{i}.png", size=(40 + i, 40))
        rows.append({"domain": "image", "image_id": f"i{i}", "uri": f"img/{i}.png", "text": f"item {i}"})
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return manifest


@pytest.mark.slow
def test_sigkill_then_rerun_gives_exact_rows(tiny_config_dir: Path, tmp_path: Path) -> None:
    manifest = _image_catalog(tmp_path, N)
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(_SLOW)
    db = tmp_path / "db"
    cmd = [sys.executable, "-m", "cope.cli", "-q", "embed", str(manifest), "--db", str(db), "--model",
           f"open_clip:{TINY_MODEL}", "--batch-size", "4", "--write-every", "4", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "hook"), str(Path.cwd())]),
           "COPE_MODEL_CONFIGS": str(tiny_config_dir)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        written = 0
        while time.time() < deadline and proc.poll() is None:
            try:
                written = ItemStore.open(db).count()
            except Exception:  # table being created
                written = 0
            if written >= 12:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"job ended before it could be killed: {proc.communicate()}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    partial = ItemStore.open(db).count()
    assert 12 <= partial < N, partial

    env.pop("PYTHONPATH")
    env["PYTHONPATH"] = str(Path.cwd())
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"skipped {partial}" in rerun.stdout, rerun.stdout
    ids = ItemStore.open(db).read(["item_id"]).column("item_id").to_pylist()
    assert len(ids) == N and len(set(ids)) == N


# Test-only hook: compaction signals that it started (a marker file), then runs slowly; the code path is the real one.
_SLOW_COMPACT = """
import os, time, cope.store.item_store as s
_real = s.ItemStore.compact
def compact(self, *a, **kw):
    open(os.environ["COPE_TEST_MARKER"], "w").close()
    time.sleep(0.5)
    _real(self, *a, **kw)
    time.sleep(30)
s.ItemStore.compact = compact
"""


@pytest.mark.slow
def test_sigkill_during_compaction_keeps_whole_rows(tiny_config_dir: Path, tmp_path: Path) -> None:
    manifest = _image_catalog(tmp_path, 24)
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(_SLOW_COMPACT)
    db, marker = tmp_path / "db", tmp_path / "compacting"
    cmd = [sys.executable, "-m", "cope.cli", "-q", "embed", str(manifest), "--db", str(db), "--model",
           f"open_clip:{TINY_MODEL}", "--batch-size", "4", "--write-every", "4", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "hook"), str(Path.cwd())]),
           "COPE_MODEL_CONFIGS": str(tiny_config_dir), "COPE_TEST_MARKER": str(marker)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not marker.exists():
            time.sleep(0.05)
        assert marker.exists(), f"compaction never started: {proc.communicate()}"
        time.sleep(0.8)  # inside lance's optimize or just after it
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = ItemStore.open(db).read(["item_id", "vector"]).to_pylist()
    assert len(before) == 24 and len({r["item_id"] for r in before}) == 24
    env["PYTHONPATH"] = str(Path.cwd())
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert "skipped 24" in rerun.stdout, rerun.stdout
    after = {r["item_id"]: r["vector"] for r in ItemStore.open(db).read(["item_id", "vector"]).to_pylist()}
    assert after == {r["item_id"]: r["vector"] for r in before}
