"""Downloads against a real HTTP server on 127.0.0.1: resume, checksum, offline; no mocked network."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import TINY, run_cli
from datafiles import write_ag_news
from rnnsweep.data.download import DownloadError, fetch


class Files(BaseHTTPRequestHandler):
    """Serves `files` with Range support; `cut` closes the connection after that many body bytes,
    once per path, as a dropped connection would."""

    files: dict[str, bytes] = {}
    cut: dict[str, int] = {}
    requests: list[tuple[str, str | None]] = []

    def do_GET(self):  # noqa: N802 - the http.server API
        self.requests.append((self.path, self.headers.get("Range")))
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        cut = self.cut.pop(self.path, None)
        self.wfile.write(body[start:cut] if cut is not None else body[start:])
        if cut is not None:
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Files.files, Files.cut, Files.requests = {}, {}, []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield Files, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_download_writes_the_verified_file(server, tmp_path):
    files, url = server
    files.files["/train.csv"] = b"x" * 3_000_000
    dest = fetch(f"{url}/train.csv", tmp_path / "train.csv", md5=md5(b"x" * 3_000_000), progress=False)
    assert dest.read_bytes() == b"x" * 3_000_000
    assert not (tmp_path / "train.csv.part").exists()
    fetch(f"{url}/train.csv", dest, md5=None, progress=False)  # already there: no second request
    assert len(files.requests) == 1


def test_an_interrupted_download_resumes_where_it_stopped(server, tmp_path):
    files, url = server
    body = bytes(range(256)) * 20_000
    files.files["/big.csv"] = body
    files.cut["/big.csv"] = 1_500_000
    dest = tmp_path / "big.csv"
    with pytest.raises(DownloadError, match="cut after 1500000 .*run again to resume"):
        fetch(f"{url}/big.csv", dest, md5=md5(body), progress=False)
    assert not dest.exists() and (tmp_path / "big.csv.part").stat().st_size == 1_500_000
    fetch(f"{url}/big.csv", dest, md5=md5(body), progress=False)
    assert dest.read_bytes() == body
    assert files.requests[-1] == ("/big.csv", "bytes=1500000-")


def test_a_corrupted_download_is_deleted_and_reported(server, tmp_path):
    files, url = server
    files.files["/train.csv"] = b"corrupted"
    with pytest.raises(DownloadError, match=r"MD5 is .*, expected 0{32}; deleted it"):
        fetch(f"{url}/train.csv", tmp_path / "train.csv", md5="0" * 32, progress=False)
    assert list(tmp_path.iterdir()) == [tmp_path / "train.csv.lock"]


def test_http_errors_name_the_url(server, tmp_path):
    _, url = server
    with pytest.raises(DownloadError, match=r"/missing.csv: HTTP 404"):
        fetch(f"{url}/missing.csv", tmp_path / "m.csv", md5=None, progress=False)


def ag_news_overrides(url: str, root: Path, sums: dict[str, str]) -> list[str]:
    return [
        "data=ag_news", f"data.root={root}", f"data.train_url={url}/train.csv", f"data.test_url={url}/test.csv",
        f"data.train_md5={sums['train']}", f"data.test_md5={sums['test']}",
        *[o for o in TINY if not o.startswith(("data.train_size", "data.test_size"))],
    ]


@pytest.mark.slow
def test_ag_news_downloads_into_its_root_and_trains(server, tmp_path):
    files, url = server
    fixture = write_ag_news(tmp_path / "fixture", train=400, test=80)
    sums = {}
    for split in ("train", "test"):
        files.files[f"/{split}.csv"] = (fixture / f"{split}.csv").read_bytes()
        sums[split] = md5(files.files[f"/{split}.csv"])
    files.cut["/train.csv"] = 5_000  # the first attempt is cut off
    root = tmp_path / "ag"
    args = ag_news_overrides(url, root, sums) + ["hydra.run.dir=run"]
    first = run_cli(args, cwd=tmp_path)
    assert first.returncode == 2 and "run again to resume it" in first.stderr.strip().splitlines()[-1]
    second = run_cli(args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert (root / "train.csv").read_bytes() == files.files["/train.csv"]
    assert ("/train.csv", "bytes=5000-") in files.requests
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "completed" and record["data"]["test"] == 80


def test_offline_ag_news_says_where_to_put_the_files(tmp_path):
    with socket.socket() as s:  # a port nobody listens on: connection refused, as offline
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = tmp_path / "ag"
    res = run_cli(ag_news_overrides(f"http://127.0.0.1:{port}", root, {"train": "0" * 32, "test": "0" * 32}),
                  cwd=tmp_path)
    line = res.stderr.strip().splitlines()[-1]
    assert res.returncode != 0 and line.startswith("rnnsweep: error: ")
    assert "cannot download" in line and f"put AG News's train.csv and test.csv (from http://127.0.0.1:{port}" in line
    assert str(root) in line
    assert not (root / "train.csv").exists()
