"""Remote media (cope.media): a local HTTP server and a local S3-compatible server (moto), both started and stopped
here on 127.0.0.1. A remote catalog embeds with the same vectors as the same files read locally; a changed remote
file is embedded again and an unchanged one skipped; a failed download (timeout, HTTP status, too large) is an error
row with its reason, never a hang."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from cope import media
from cope.content import ExtractOptions
from cope.errors import ExtractionError, MissingExtraError
from cope.hashing import file_fingerprint, open_media
from cope.job import embed
from cope.store import ItemStore
from tests.media import make_video, save_image

pytest.importorskip("fsspec")
pytest.importorskip("aiohttp")

FAST = media.RemoteOptions(timeout_s=0.5, total_timeout_s=10, retries=1, backoff_s=0.01, per_host=4)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # do not wait for the slow endpoint's sleepers when the test stops the server
    allow_reuse_address = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hits: dict[tuple[str, str], int] = {}  # (method, path) -> requests
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.flaky: dict[str, int] = {}  # path -> 503 answers left
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request, client_address) -> None:  # clients that hang up early (timeouts, caps)
        pass

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(SimpleHTTPRequestHandler):
    server: _Server

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, directory=str(args[2].root), **kwargs)

    def log_message(self, *args) -> None:  # quiet
        pass

    def _enter(self) -> bool:
        s = self.server
        with s.lock:
            key = (self.command, self.path)
            s.hits[key] = s.hits.get(key, 0) + 1
            s.in_flight += 1
            s.max_in_flight = max(s.max_in_flight, s.in_flight)
            left = s.flaky.get(self.path, 0)
            if left:
                s.flaky[self.path] = left - 1
        if left:
            self.send_error(503, "try again")
            return False
        if self.path.startswith("/slow/"):
            time.sleep(3)  # longer than the client's timeout
        elif self.path.startswith("/busy/"):
            time.sleep(0.2)
        elif self.path.startswith("/stream/"):  # no Content-Length: the size is only known by reading
            data = (self.server.root / self.path.removeprefix("/stream/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(data)
            return False
        self.path = "/" + self.path.split("/", 2)[-1] if self.path.startswith(("/slow/", "/busy/")) else self.path
        return True

    def _leave(self) -> None:
        with self.server.lock:
            self.server.in_flight -= 1

    def do_GET(self) -> None:  # noqa: N802
        try:
            if self._enter():
                super().do_GET()
        finally:
            self._leave()

    def do_HEAD(self) -> None:  # noqa: N802
        try:
            if self._enter():
                super().do_HEAD()
        finally:
            self._leave()


@pytest.fixture
def fast_remote() -> Iterator[media.RemoteOptions]:
    previous = media.current_options()
    yield media.configure(FAST)
    media.configure(previous)


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[_Server]:
    root = tmp_path / "www"
    root.mkdir()
    server = _Server(root)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3(fast_remote: media.RemoteOptions, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, object]]:
    """A moto S3 server on 127.0.0.1 with a bucket ``cope``; the remote options point s3:// at it."""
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    port = _free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        media.configure(fast_remote, storage_options={"s3": {"endpoint_url": endpoint, "key": "testing",
                                                             "secret": "testing"}})
        import s3fs

        fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing", skip_instance_cache=True)
        fs.mkdir("cope")
        yield endpoint, fs
    finally:
        media.configure(fast_remote)
        server.stop()


def _catalog(root: Path) -> dict[str, Path]:
    """Two pictures and a video under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    files = {"a": save_image(root / "a.jpg", fmt="JPEG", size=(80, 60)),
             "b": save_image(root / "b.png", mode="RGBA", size=(40, 40)),
             "v": make_video(root / "v.mp4", n_frames=12)}
    return files


def _manifest(path: Path, prefix: str) -> Path:
    rows = [
        {"domain": "image", "image_id": "a", "uri": f"{prefix}a.jpg", "text": "a red circle"},
        {"domain": "product", "item_id": "p", "title": "two pictures", "images": [f"{prefix}a.jpg", f"{prefix}b.png"]},
        {"domain": "video", "video_id": "v", "uri": f"{prefix}v.mp4", "title": "a moving square"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _vectors(db: Path) -> dict[str, np.ndarray]:
    rows = ItemStore.open(db).read(["item_id", "vector", "image_vector"]).to_pylist()
    return {r["item_id"]: np.asarray(r["vector"]) for r in rows}


def _bump(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    t = time.time() + 60  # Last-Modified has 1-s resolution: make the change visible to a HEAD
    os.utime(path, (t, t))


def test_remote_catalog_has_the_vectors_of_the_local_files(tiny_encoder, tmp_path: Path, http_server: _Server,
                                                             s3: tuple[str, object]) -> None:
    files = _catalog(http_server.root)
    _, fs = s3
    for f in files.values():
        fs.put_file(str(f), f"cope/media/{f.name}")
    local = embed(_manifest(tmp_path / "local.jsonl", f"{http_server.root}/"), tmp_path / "db-local",
                  encoder=tiny_encoder, progress=False)
    over_http = embed(_manifest(tmp_path / "http.jsonl", f"{http_server.url}/"), tmp_path / "db-http",
                      encoder=tiny_encoder, progress=False)
    over_s3 = embed(_manifest(tmp_path / "s3.jsonl", "s3://cope/media/"), tmp_path / "db-s3",
                    encoder=tiny_encoder, progress=False)
    for summary in (local, over_http, over_s3):
        assert (summary.done, summary.failed, summary.invalid) == (3, 0, 0), summary.errors
    want = _vectors(tmp_path / "db-local")
    for db in ("db-http", "db-s3"):
        got = _vectors(tmp_path / db)
        assert sorted(got) == sorted(want) == ["image:a", "product:p", "video:v"]
        for key in want:
            np.testing.assert_allclose(got[key], want[key], atol=1e-5)

    # unchanged remote files: skipped (one HEAD each, no download)
    http_server.hits.clear()
    again = embed(tmp_path / "http.jsonl", tmp_path / "db-http", encoder=tiny_encoder, progress=False)
    assert (again.done, again.skipped) == (0, 3)
    assert {method for method, _ in http_server.hits} == {"HEAD"}, http_server.hits  # the hash's HEADs, no GET
    assert (embed(tmp_path / "s3.jsonl", tmp_path / "db-s3", encoder=tiny_encoder, progress=False).skipped) == 3

    # a changed remote file: the records that read it are embedded again, the others skipped
    _bump(http_server.root / "b.png", (http_server.root / "a.jpg").read_bytes())
    changed = embed(tmp_path / "http.jsonl", tmp_path / "db-http", encoder=tiny_encoder, progress=False)
    assert (changed.done, changed.skipped, changed.failed) == (1, 2, 0)
    fs.pipe_file("cope/media/v.mp4", make_video(tmp_path / "v2.mp4", n_frames=20).read_bytes())
    changed = embed(tmp_path / "s3.jsonl", tmp_path / "db-s3", encoder=tiny_encoder, progress=False)
    assert (changed.done, changed.skipped, changed.failed) == (1, 2, 0)


@pytest.mark.timeout(60)
def test_failed_downloads_are_error_rows_with_their_reason(tiny_encoder, tmp_path: Path, http_server: _Server,
                                                           fast_remote: media.RemoteOptions) -> None:
    _catalog(http_server.root)
    save_image(http_server.root / "big.png", size=(400, 400))  # over the cap set below
    base = http_server.url
    rows = [
        {"domain": "image", "image_id": "ok", "uri": f"{base}/a.jpg"},
        {"domain": "image", "image_id": "slow", "uri": f"{base}/slow/a.jpg"},
        {"domain": "image", "image_id": "gone", "uri": f"{base}/nowhere.jpg"},
        {"domain": "image", "image_id": "big", "uri": f"{base}/big.png"},
        {"domain": "image", "image_id": "big-stream", "uri": f"{base}/stream/big.png"},
        {"domain": "video", "video_id": "big-video", "uri": f"{base}/v.mp4"},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cap = (http_server.root / "a.jpg").stat().st_size + 100
    start = time.monotonic()
    summary = embed(manifest, tmp_path / "db", encoder=tiny_encoder, progress=False,
                    extract=ExtractOptions(max_image_bytes=cap, max_video_bytes=100))
    assert time.monotonic() - start < 30  # timeouts, not hangs: 2 attempts x 0.5 s for the slow one
    assert (summary.done, summary.failed) == (1, 5)
    reasons = {e["record_key"]: e["reason"] for e in ItemStore.open(tmp_path / "db").errors().to_pylist()}
    assert "timeout" in reasons["image:slow"] and "2 attempts" in reasons["image:slow"]
    assert "HTTP 404" in reasons["image:gone"]
    assert f"larger than {cap} bytes" in reasons["image:big"]
    assert f"larger than {cap} bytes (stopped reading" in reasons["image:big-stream"]
    assert "larger than 100 bytes" in reasons["video:big-video"]
    asked = sum(n for (_, path), n in http_server.hits.items() if path == "/nowhere.jpg")
    assert asked <= 3  # a 404 is not retried: the hash's HEAD (and GET), the download's GET


def test_retries_with_backoff_then_gives_up(http_server: _Server, fast_remote: media.RemoteOptions) -> None:
    _catalog(http_server.root)
    url = f"{http_server.url}/a.jpg"
    http_server.flaky["/a.jpg"] = 1
    assert open_media(url).read() == (http_server.root / "a.jpg").read_bytes()  # one 503, then served
    assert http_server.hits[("GET", "/a.jpg")] == 2
    http_server.flaky["/a.jpg"] = 5
    with pytest.raises(ExtractionError, match=r"HTTP 503.*2 attempts"):
        open_media(url)


def test_per_host_concurrency_limit(http_server: _Server, fast_remote: media.RemoteOptions) -> None:
    _catalog(http_server.root)
    media.configure(fast_remote, per_host=2)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        data = list(pool.map(lambda _: media.read_bytes(f"{http_server.url}/busy/a.jpg"), range(8)))
    assert len(set(data)) == 1 and http_server.max_in_flight <= 2


def test_videos_are_downloaded_to_a_temporary_file_that_is_deleted(http_server: _Server, tmp_path: Path,
                                                                   fast_remote: media.RemoteOptions,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from cope.extractors import extract
    from cope.records import VideoRecord

    _catalog(http_server.root)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("COPE_TMPDIR", str(scratch))
    (content,) = extract(VideoRecord(video_id="v", uri=f"{http_server.url}/v.mp4"))
    assert len(content.images) == 8 and content.media_uri.startswith("http://")
    with pytest.raises(ExtractionError, match="no frames|not a readable video") as err:
        extract(VideoRecord(video_id="w", uri=f"{http_server.url}/a.jpg"))
    assert f"{http_server.url}/a.jpg" in str(err.value) and "cope-" not in str(err.value)  # names the URL
    assert list(scratch.iterdir()) == []


def test_fingerprints_follow_the_remote_version(http_server: _Server, fast_remote: media.RemoteOptions) -> None:
    _catalog(http_server.root)
    url = f"{http_server.url}/a.jpg"
    first = file_fingerprint(url)
    assert first.startswith("remote:") and file_fingerprint(url) == first
    _bump(http_server.root / "a.jpg", (http_server.root / "b.png").read_bytes())
    assert file_fingerprint(url) not in (first, "unreachable")
    assert file_fingerprint(f"{http_server.url}/nowhere.jpg") == "unreachable"
    assert file_fingerprint("ftp://example.com/a.jpg") == "unsupported"


def test_a_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    from cope.manifest import check_inputs

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "s3fs" else real(name, *a))
    with pytest.raises(MissingExtraError, match=r"pip install 'cope\[remote\]' \(missing: s3fs\)"):
        open_media("s3://bucket/a.jpg")
    assert file_fingerprint("s3://bucket/a.jpg") == "remote-unavailable"
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"domain": "image", "image_id": "a", "uri": "s3://bucket/a.jpg"}) + "\n")
    with pytest.raises(MissingExtraError, match="remote"):  # before a run: the CLI stops with exit 2
        check_inputs([manifest])
    with pytest.raises(ExtractionError, match="unsupported URI scheme 'ftp://'"):
        media.require("ftp://example.com/a.jpg")


def test_relative_paths_under_a_remote_media_root(http_server: _Server, tmp_path: Path,
                                                  fast_remote: media.RemoteOptions) -> None:
    from cope.manifest import read_manifest

    _catalog(http_server.root)
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,path,caption\na,a.jpg,red\nb,./b.png,blue\n")
    rows = list(read_manifest(manifest, "image", media_root=f"{http_server.url}/"))
    assert [r.record.uri for r in rows] == [f"{http_server.url}/a.jpg", f"{http_server.url}/b.png"]
    assert [r.record.text for r in rows] == ["red", "blue"]
