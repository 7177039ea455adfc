"""One writer per table and one row per item id: repeated ids in a manifest or a batch, racing writer processes
(store-level and a real `cope embed` pair), a SIGKILLed lease holder, and `cope check` finding and repairing
duplicates that older versions left."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from cope.cli import main
from cope.errors import TableBusyError
from cope.store import ItemStore
from cope.store.lease import TableLease
from tests.conftest import TINY_MODEL
from tests.media import save_image

DIM = 4
ROOT = Path(__file__).resolve().parents[1]


def make_rows(ids: list[str], value: float = 0.0, at: dt.datetime | None = None) -> list[dict]:
    """Store rows of a DIM-dim table (no model needed), all with vector ``value``."""
    at = at or dt.datetime.now(dt.timezone.utc)
    return [
        {"item_id": i, "record_key": i, "domain": "product", "source_id": i.split(":")[-1], "slice_start": None,
         "slice_end": None, "vector": [value] * DIM, "image_vector": [value] * DIM, "text_vector": [value] * DIM,
         "has_image": True, "has_text": True, "n_images": 1, "text": f"v{value}", "media_uri": None,
         "content_hash": f"c{value}", "record_hash": f"h{value}", "model_tag": "test", "origin": None,
         "metadata": None, "updated_at": at}
        for i in ids
    ]


def _store(db: Path) -> ItemStore:
    store = ItemStore.open(db)
    store.ensure_table("test", DIM)
    return store


def _ids(db: Path, table: str = "items") -> list[str]:
    return ItemStore.open(db, table).read(["item_id"]).column("item_id").to_pylist()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COPE_LEASE")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**env, **extra}


def _catalog(folder: Path, n: int, name: str = "m.jsonl", start: int = 0, text: str = "item") -> Path:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(start, start + n):
        if not (folder / "img" / f"{i}.png").exists():
            save_image(folder / "img" / f"{i}.png", size=(32 + i, 32))
        rows.append({"domain": "image", "image_id": f"i{i}", "uri": f"img/{i}.png", "text": f"{text} {i}"})
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- repeated ids in one input ------------------------------------------------------------------------------------
def test_upsert_resolves_repeated_ids_last_wins(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = _store(tmp_path / "db")
    rows = make_rows(["product:a", "product:b"], 1.0) + make_rows(["product:a"], 2.0)
    with caplog.at_level(logging.WARNING, logger="cope.store"):
        store.upsert(pa.Table.from_pylist(rows, schema=store.table.schema))
        store.upsert(pa.Table.from_pylist(make_rows(["product:a"] * 2, 3.0), schema=store.table.schema))
    got = dict(zip(*store.read(["item_id", "record_hash"]).to_pydict().values()))
    assert got == {"product:a": "h3.0", "product:b": "h1.0"}
    assert "the last row of each wins (product:a)" in caplog.text


def test_a_table_of_an_older_version_gets_item_id_declared_its_key(tmp_path: Path) -> None:
    import lancedb

    from cope.store.schema import item_schema

    db = tmp_path / "db"
    lancedb.connect(db).create_table("items", schema=item_schema(DIM, "test"))  # as older versions made it
    store = ItemStore.open(db)
    assert not store.primary_key_declared
    store.upsert(pa.Table.from_pylist(make_rows(["product:a"]), schema=store.table.schema))
    assert ItemStore.open(db).primary_key_declared


def test_repeated_record_in_manifest_one_row_warning_clean_rerun(
    tiny_config_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from cope.job import embed

    manifest = _catalog(tmp_path, 3)
    lines = manifest.read_text().splitlines()
    later = json.loads(lines[1]) | {"text": "the later row"}
    manifest.write_text("\n".join([*lines, json.dumps(later)]) + "\n")  # image:i1 twice, different content
    db = tmp_path / "db"
    opts = {"model": f"open_clip:{TINY_MODEL}", "progress": False, "threads": 1}
    with caplog.at_level(logging.WARNING):
        first = embed(manifest, db, **opts)
    assert first.exit_code == 0 and first.done == 3 and first.failed == 0
    assert "image:i1 repeats the record of" in caplog.text and "the later row wins" in caplog.text
    assert sorted(_ids(db)) == ["image:i0", "image:i1", "image:i2"]
    text = ItemStore.open(db).read(["text"], "item_id = 'image:i1'").column("text").to_pylist()
    assert text == ["the later row"]

    # a copy left by an older version (written past the upsert): the re-run repairs it and still skips everything
    store = ItemStore.open(db)
    older = store.read(store.table.schema.names, "item_id = 'image:i0'").to_pylist()[0]
    older["updated_at"] -= dt.timedelta(hours=1)
    store.table.add(pa.Table.from_pylist([older], schema=store.table.schema))
    assert Counter(_ids(db))["image:i0"] == 2
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = embed(manifest, db, **opts)
    assert again.exit_code == 0 and again.done == 0 and again.skipped == 3, again
    assert "stored more than once (image:i0)" in caplog.text
    assert sorted(_ids(db)) == ["image:i0", "image:i1", "image:i2"]


# -- concurrent writers --------------------------------------------------------------------------------------------
_WRITER = """
import datetime as dt, json, sys, time
import pyarrow as pa
from cope.store import ItemStore
db, me, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = ItemStore.open(db)
names = store.table.schema.names
print("ready", flush=True)
sys.stdin.readline()  # all writers start together
waits = 0
for r in range(rounds):
    store = ItemStore.open(db)
    t0 = time.monotonic()
    store.acquire_lease(wait=60, purpose=f"writer {me}")
    waits += time.monotonic() - t0 > 0.02
    for part in range(2):  # two commits per holding, overlapping the other writers' ids
        ids = [f"product:r{r}-{i}" for i in range(me * 4 + part * 6, me * 4 + part * 6 + 12)]
        now = dt.datetime.now(dt.timezone.utc)
        rows = [dict(item_id=i, record_key=i, domain="product", source_id=i, vector=[me] * 4, image_vector=[me] * 4,
                     text_vector=[me] * 4, has_image=True, has_text=True, n_images=1, content_hash="c",
                     record_hash=f"h{me}", model_tag="test", updated_at=now) for i in ids]
        store.upsert(pa.Table.from_pylist([{n: row.get(n) for n in names} for row in rows], schema=store.table.schema))
    time.sleep(0.05)
    store.release_lease()
print(json.dumps({"waits": waits}))
"""


def _start_together(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        line = p.stdout.readline()  # type: ignore[union-attr]
        assert line.strip() == "ready", p.stderr.read()  # type: ignore[union-attr]
    for p in procs:
        p.stdin.write("go\n")  # type: ignore[union-attr]
        p.stdin.flush()  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["file", "table"])
def test_concurrent_writer_processes_keep_ids_unique(tmp_path: Path, kind: str) -> None:
    db = tmp_path / "db"
    _store(db)
    n, rounds = 3, 3
    env = _env(COPE_LEASE=kind, COPE_LEASE_TTL="20")
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(db), str(me), str(rounds)], env=env, cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for me in range(n)]
    _start_together(procs)
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
    waits = sum(json.loads(out.strip().splitlines()[-1])["waits"] for out, _ in outs)
    assert waits >= 1, "no writer ever had to wait: the test did not make them overlap"
    ids = _ids(db)
    expected = {f"product:r{r}-{i}" for r in range(rounds) for i in range(0, (n - 1) * 4 + 6 + 12)}
    assert len(ids) == len(set(ids)) == len(expected) and set(ids) == expected


def test_racing_upserts_without_lease_cannot_duplicate_ids(tmp_path: Path) -> None:
    """The second layer: item_id is the table's primary key, so LanceDB re-runs a merge_insert that raced another
    one inserting the same new ids (writers that hold no lease, such as a Ray run's own tasks)."""
    db = tmp_path / "db"
    _store(db)
    n, rounds = 4, 6
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def write(me: int) -> None:
        store = ItemStore.open(db)
        try:
            for r in range(rounds):
                barrier.wait(30)
                ids = [f"product:{r}-{i}" for i in range(me, me + 10)]
                store.upsert(pa.Table.from_pylist(make_rows(ids, float(me)), schema=store.table.schema))
        except BaseException as e:  # noqa: BLE001  (reported below)
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=write, args=(me,)) for me in range(n)]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    assert not errors, errors
    ids = _ids(db)
    assert len(ids) == len(set(ids)) == rounds * (n - 1 + 10)


_SLOW_LEASE = """
import glob, os, time, cope.store.item_store as s
_dir = os.environ["COPE_TEST_DIR"]
open(os.path.join(_dir, f"started-{os.getpid()}"), "w").close()
_real = s.ItemStore.acquire_lease
def acquire_lease(self, *a, **kw):
    first = self.lease is None
    lease = _real(self, *a, **kw)
    if first:  # test-only: hold the lease until the other run has started and is waiting for it
        deadline = time.time() + 90
        while len(glob.glob(os.path.join(_dir, "started-*"))) < 2 and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(4.0)
    return lease
s.ItemStore.acquire_lease = acquire_lease
"""


@pytest.mark.slow
def test_two_cope_embed_processes_one_writes_the_other_waits(tiny_config_dir: Path, tmp_path: Path) -> None:
    first = _catalog(tmp_path, 10, "a.jsonl", start=0)
    second = _catalog(tmp_path, 10, "b.jsonl", start=5)  # i5..i9 in both
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(_SLOW_LEASE)
    db = tmp_path / "db"
    env = _env(COPE_LEASE_WAIT="120", COPE_MODEL_CONFIGS=str(tiny_config_dir), COPE_TEST_DIR=str(tmp_path / "hook"))
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "hook"), env["PYTHONPATH"]])
    cmd = [sys.executable, "-m", "cope.cli", "-q", "embed", "--db", str(db), "--model", f"open_clip:{TINY_MODEL}",
           "--batch-size", "4", "--write-every", "4", "--threads", "1", "--workers", "1"]
    procs = [subprocess.Popen([*cmd, str(m)], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for m in (first, second)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
    assert any("is being written by cope embed (pid" in err and "waiting up to 120 s" in err for _, err in outs), outs
    ids = _ids(db)
    assert len(ids) == len(set(ids)) == 15


# -- a second writer fails clearly; a killed holder does not block ---------------------------------------------------
_HOLDER = """
import sys, time
from cope.store.lease import TableLease
lease = TableLease.open(sys.argv[1], "items", purpose="holder").acquire()
print("held", flush=True)
time.sleep(300)
"""


def _hold(db: Path, **env: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(db)], env=_env(**env), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # type: ignore[union-attr]
    assert line.strip() == "held", proc.stderr.read()  # type: ignore[union-attr]
    return proc


def test_second_embed_fails_clearly_then_runs_once_the_holder_is_killed(
    tiny_config_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COPE_LEASE_WAIT", raising=False)
    manifest = _catalog(tmp_path, 2)
    db = tmp_path / "db"
    argv = ["-q", "embed", str(manifest), "--db", str(db), "--model", f"open_clip:{TINY_MODEL}", "--threads", "1"]
    holder = _hold(db)
    try:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"table 'items' in {db} is being written by holder (pid {holder.pid} on" in err, err
        assert "COPE_LEASE_WAIT" in err
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    finally:
        holder.kill()
    assert main(argv) == 0  # the kernel dropped the killed holder's lock: no wait at all
    assert sorted(_ids(db)) == ["image:i0", "image:i1"]


def test_killed_table_lease_holder_blocks_only_until_expiry(tmp_path: Path) -> None:
    db = tmp_path / "db"
    ttl = 2.0
    holder = _hold(db, COPE_LEASE="table", COPE_LEASE_TTL=str(ttl))
    try:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    finally:
        holder.kill()
    lease = TableLease.open(db, "items", kind="table", ttl=ttl)
    dead = lease.holder()
    assert dead is not None and dead["pid"] == holder.pid
    with pytest.raises(TableBusyError, match=r"if it was killed, its lease expires at .* \(in \d+ s\)"):
        lease.acquire(wait=0)
    lease.acquire(wait=30)
    try:
        late = time.time() - dead["expires_ms"] / 1000  # taken this long after the dead holder's lease expired
        assert 0 <= late < 3.0, late
        assert lease.holder()["owner"] == lease.owner  # type: ignore[index]
    finally:
        lease.release()
    assert TableLease.open(db, "items", kind="table").holder() is None


def test_table_lease_is_renewed_while_held(tmp_path: Path) -> None:
    lease = TableLease.open(tmp_path / "db", "items", kind="table", ttl=0.6).acquire()
    try:
        time.sleep(1.5)  # past two TTLs: alive only because the holder renews it
        lease.check()
        assert lease.renewals >= 2
        other = TableLease.open(tmp_path / "db", "items", kind="table")
        with pytest.raises(TableBusyError):
            other.acquire(wait=0)
    finally:
        lease.release()


def test_a_run_takes_over_only_its_own_thread_s_leftover_lease(tmp_path: Path) -> None:
    db = tmp_path / "db"
    leftover = TableLease.open(db, "items").acquire()  # e.g. a run that raised in a notebook, kept by its traceback
    with pytest.raises(TableBusyError, match="this process"):
        TableLease.open(db, "items").acquire()  # strict by default
    run = TableLease.open(db, "items").acquire(take_over_own=True)
    assert not leftover.held and run.held
    with pytest.raises(TableBusyError, match="does not hold"):
        leftover.check()
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            TableLease.open(db, "items").acquire(take_over_own=True)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=other_thread)
    t.start()
    t.join(30)
    assert len(errors) == 1 and isinstance(errors[0], TableBusyError)  # a live run of another thread is respected
    run.release()


# -- the audit ---------------------------------------------------------------------------------------------------------
def test_cope_check_finds_and_repairs_duplicates_keeping_the_newest(
    tiny_config_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import cope
    from cope.job import embed

    db = tmp_path / "db"
    assert embed(_catalog(tmp_path, 4), db, model=f"open_clip:{TINY_MODEL}", progress=False, threads=1).done == 4
    store = ItemStore.open(db)
    stored = {r["item_id"]: r for r in store.read(store.table.schema.names).to_pylist()}
    newer = dict(stored["image:i1"], updated_at=stored["image:i1"]["updated_at"] + dt.timedelta(hours=1),
                 vector=[1.0] + [0.0] * (len(stored["image:i1"]["vector"]) - 1))
    older = dict(stored["image:i0"], updated_at=stored["image:i0"]["updated_at"] - dt.timedelta(hours=1),
                 vector=[0.0, 1.0] + [0.0] * (len(stored["image:i0"]["vector"]) - 2))
    tie = dict(stored["image:i2"])  # an exact copy
    store.table.add(pa.Table.from_pylist([newer, older, tie, tie], schema=store.table.schema))  # lancedb add()
    assert len(_ids(db)) == 4 + 4

    assert main(["check", "--db", str(db)]) == 1
    out = capsys.readouterr().out
    assert "3 item ids stored more than once (4 extra rows)" in out and "image:i2 x3" in out, out

    assert main(["check", "--db", str(db), "--repair"]) == 0
    out = capsys.readouterr().out
    assert "removed 4 duplicate rows" in out and "duplicates none" in out, out
    ids = _ids(db)
    assert sorted(ids) == ["image:i0", "image:i1", "image:i2", "image:i3"]
    after = {r["item_id"]: r for r in ItemStore.open(db).read(["item_id", "vector"]).to_pylist()}
    assert after["image:i1"]["vector"] == pytest.approx(newer["vector"])  # the injected row was the newest
    assert after["image:i0"]["vector"] == pytest.approx(stored["image:i0"]["vector"])  # the original was

    found = cope.open(db).similar("image:i1", k=2).to_pandas()
    assert len(found) == 2 and "image:i1" not in set(found["item_id"])
    assert main(["check", "--db", str(db), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["duplicate_ids"] == 0 and report["primary_key"] is True
