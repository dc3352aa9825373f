"""Downloads against a local HTTP server and file:// URLs: checksums, failures, nothing half-written."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import socket
import threading

import numpy as np
import pytest

from fewshot.data import mnist, omniglot
from fewshot.data.download import download, ensure_files
from fewshot.errors import DataError


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/truncated":
            # Promises 1000 bytes, sends 10, hangs up.
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path, monkeypatch):
    """``(folder, base URL)`` of an HTTP server on 127.0.0.1 serving ``folder``."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    folder = tmp_path / "served"
    folder.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_port}/"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def dead_url() -> str:
    """A URL on a local port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/file.bin"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_good_file_is_saved(server, tmp_path):
    folder, url = server
    payload = bytes(range(256)) * 1000
    (folder / "file.bin").write_bytes(payload)
    dest = tmp_path / "out" / "file.bin"
    assert download(url + "file.bin", dest, md5(payload), progress=False) == dest
    assert dest.read_bytes() == payload


def test_file_url_works(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"hello")
    dest = tmp_path / "out" / "copy.bin"
    download(source.as_uri(), dest, md5(b"hello"), progress=False)
    assert dest.read_bytes() == b"hello"


def test_md5_mismatch_leaves_nothing_behind(server, tmp_path):
    folder, url = server
    (folder / "file.bin").write_bytes(b"tampered")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"file\.bin downloaded from .* has MD5 .*, expected 0{32}"):
        download(url + "file.bin", out / "file.bin", "0" * 32, progress=False)
    assert list(out.iterdir()) == []


def test_md5_mismatch_through_ensure_files_is_not_reported_as_missing(server, tmp_path):
    folder, url = server
    (folder / "file.bin").write_bytes(b"tampered")
    with pytest.raises(DataError, match="MD5"):
        ensure_files(tmp_path / "out", {"file.bin": (url + "file.bin", "0" * 32)}, dataset="toy")
    assert not (tmp_path / "out" / "file.bin").exists()


def test_truncated_download_leaves_nothing_behind(server, tmp_path):
    _, url = server
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"closed after 10 of 1000 bytes"):
        download(url + "truncated", out / "file.bin", None, progress=False)
    assert list(out.iterdir()) == []


def test_http_404_is_a_data_error(server, tmp_path):
    _, url = server
    with pytest.raises(DataError, match=r"could not download .*missing\.bin .*place the file at"):
        download(url + "missing.bin", tmp_path / "missing.bin", progress=False)
    assert not (tmp_path / "missing.bin").exists()


def test_unreachable_url_says_where_to_put_the_files(dead_url, tmp_path, monkeypatch):
    monkeypatch.delenv("FEWSHOT_OFFLINE", raising=False)
    folder = tmp_path / "toy"
    files = {"a.bin": (dead_url, None), "b.bin": (dead_url + "2", None)}
    with pytest.raises(DataError) as info:
        ensure_files(folder, files, dataset="toy")
    message = str(info.value)
    assert "a.bin, b.bin not found in" in message and str(folder) in message
    assert "Put them there" in message and dead_url in message
    assert list(folder.iterdir()) == []


def test_offline_mode_does_not_download(server, tmp_path, monkeypatch):
    folder, url = server
    (folder / "file.bin").write_bytes(b"data")
    monkeypatch.setenv("FEWSHOT_OFFLINE", "1")
    with pytest.raises(DataError, match="FEWSHOT_OFFLINE is set"):
        ensure_files(tmp_path / "out", {"file.bin": (url + "file.bin", None)}, dataset="toy")


def test_present_files_are_taken_without_checksum(dead_url, tmp_path):
    (tmp_path / "mine.bin").write_bytes(b"my own copy")
    paths = ensure_files(tmp_path, {"mine.bin": (dead_url, "0" * 32)}, dataset="toy")
    assert paths == [tmp_path / "mine.bin"] and paths[0].read_bytes() == b"my own copy"


def test_load_omniglot_downloads_through_ensure_files(server, tmp_root, fake_omniglot, monkeypatch):
    folder, url = server
    written = fake_omniglot(folder)
    archives = {name: (url + name, md5(written[name].read_bytes()))
                for name in ("images_background.zip", "images_evaluation.zip")}
    monkeypatch.setattr(omniglot, "ARCHIVES", archives)
    monkeypatch.setattr(omniglot, "SPLIT_URL", url + "splits/vinyals/")
    dataset = omniglot.load_omniglot(tmp_root)
    assert {s: len(c) for s, c in dataset.splits.items()} == {"train": 12, "val": 8, "test": 8, "trainval": 20}
    for name, path in written.items():
        assert (tmp_root / "omniglot" / name).read_bytes() == path.read_bytes()


def test_load_omniglot_refuses_a_corrupt_download(server, tmp_root, fake_omniglot, monkeypatch):
    folder, url = server
    fake_omniglot(folder)
    archives = {name: (url + name, "0" * 32) for name in ("images_background.zip", "images_evaluation.zip")}
    monkeypatch.setattr(omniglot, "ARCHIVES", archives)
    with pytest.raises(DataError, match=r"images_background\.zip downloaded from .* has MD5"):
        omniglot.load_omniglot(tmp_root)
    assert not list((tmp_root / "omniglot").iterdir())


def test_load_mnist_downloads_file_urls(tmp_path, tmp_root, monkeypatch):
    served = tmp_path / "mirror"
    served.mkdir()
    files = {}
    shapes = {"train-images-idx3-ubyte.gz": (4, 28, 28), "train-labels-idx1-ubyte.gz": (4,),
              "t10k-images-idx3-ubyte.gz": (2, 28, 28), "t10k-labels-idx1-ubyte.gz": (2,)}
    for name, shape in shapes.items():
        values = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape) % 10
        header = bytes([0, 0, 8, len(shape)]) + np.asarray(shape, dtype=">u4").tobytes()
        data = gzip.compress(header + values.tobytes())
        (served / name).write_bytes(data)
        files[name] = ((served / name).as_uri(), md5(data))
    monkeypatch.setattr(mnist, "FILES", files)
    dataset = mnist.load_mnist(tmp_root)
    assert len(dataset.images) == 6 and sorted(p.name for p in (tmp_root / "mnist").iterdir()) == sorted(files)
