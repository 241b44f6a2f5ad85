"""Tests for experiments/fashion_mnist_files.py: the sources of the IDX files.

Nothing here touches the internet: downloads come from a small HTTP server on
127.0.0.1 serving synthetic IDX files, apt-get is a fake runner.
"""

import gzip
import hashlib
import http.server
import os
import socket
import subprocess
import threading
import time

import numpy as np
import pytest

from experiments import apt
from experiments import data
from experiments import fashion_mnist_files as fmf
import experiments_fixtures

SIZES = {"train": 20, "test": 10}


def _arrays():
  rng = np.random.default_rng(0)
  out = {}
  for split, n in SIZES.items():
    image_file, label_file = fmf.IDX_FILES[split]
    out[image_file] = rng.integers(0, 256, (n, 28, 28), np.uint8)
    out[label_file] = rng.integers(0, 10, (n,), np.uint8)
  return out


def _gz(array, level=9) -> bytes:
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  return gzip.compress(header + array.tobytes(), compresslevel=level, mtime=0)


ARRAYS = _arrays()
FILES = {name: _gz(a) for name, a in ARRAYS.items()}
CHECKSUMS = {
    name: fmf.Checksum(hashlib.md5(body).hexdigest(),
                       hashlib.sha256(gzip.decompress(body)).hexdigest())
    for name, body in FILES.items()}


class _Handler(http.server.BaseHTTPRequestHandler):
  """Serves FILES; ``server.modes[name]`` breaks a file on purpose."""

  def do_GET(self):  # noqa: N802 (http.server's name)
    name = self.path.rsplit("/", 1)[-1]
    self.server.requests.append(name)
    if name not in FILES or self.path != f"/data/{name}":
      self.send_error(404)
      return
    body = FILES[name]
    modes = self.server.modes.get(name, [])
    mode = modes.pop(0) if modes else "good"
    self.send_response(200)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    if mode == "corrupt":
      body = body[:len(body) // 2] + bytes([body[len(body) // 2] ^ 0xFF]) + (
          body[len(body) // 2 + 1:])
    elif mode == "truncate":
      body = body[:len(body) // 2]
      self.close_connection = True
    self.wfile.write(body)

  def log_message(self, *args):
    pass


@pytest.fixture
def server():
  srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
  srv.requests, srv.modes = [], {}
  thread = threading.Thread(target=srv.serve_forever, args=(0.05,),
                            daemon=True)
  thread.start()
  srv.url = f"http://127.0.0.1:{srv.server_address[1]}/data/"
  yield srv
  srv.shutdown()
  srv.server_close()


@pytest.fixture
def synthetic(monkeypatch, tmp_path):
  """The synthetic files' checksums and split sizes in place of the real
  ones, and no Debian folder (the real one may be installed here)."""
  for name, checksum in CHECKSUMS.items():
    monkeypatch.setitem(fmf.CHECKSUMS, name, checksum)
  monkeypatch.setattr(data, "_SPLIT_SIZES", dict(SIZES))
  monkeypatch.setattr(fmf, "FASHION_MNIST_DIR", str(tmp_path / "debian"))
  monkeypatch.setattr(fmf, "RETRY_WAIT_S", 0.0)


class FakeApt:
  """Stands in for subprocess.run: records commands, can fail installs."""

  def __init__(self, debian_dir, failures=0):
    self.debian_dir, self.failures, self.calls = debian_dir, failures, []

  def __call__(self, cmd, **kwargs):
    self.calls.append((cmd, kwargs))
    if cmd[1] == "install":
      if self.failures:
        self.failures -= 1
        return subprocess.CompletedProcess(
            cmd, 100, "", "E: Unable to locate package dataset-fashion-mnist")
      _write_files(self.debian_dir)
    return subprocess.CompletedProcess(cmd, 0, "", "")


def _write_files(folder):
  os.makedirs(folder, exist_ok=True)
  for name, body in FILES.items():
    with open(os.path.join(folder, name), "wb") as f:
      f.write(body)
  return str(folder)


def _closed_port_url():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  return f"http://127.0.0.1:{port}/"


def _leftovers(data_dir):
  """Files a later run could mistake for a built dataset or a good file."""
  out = []
  for root, _, files in os.walk(data_dir):
    out += [os.path.join(root, f) for f in files]
  return out


def _assert_served_examples(split, tfds_split):
  """``split`` holds exactly the served examples (TFDS shuffles the order)."""
  image_file, label_file = fmf.IDX_FILES[tfds_split]
  served = {ARRAYS[image_file][i].tobytes(): ARRAYS[label_file][i]
            for i in range(SIZES[tfds_split])}
  got = {split.images[i, ..., 0].tobytes(): split.labels[i]
         for i in range(len(split))}
  assert len(split) == SIZES[tfds_split] and got == served


def _load(split, data_dir, source_dir, url):
  return data.load_split("fashion_mnist", split, data_dir=str(data_dir),
                         source_dir=str(source_dir), allow_apt=False,
                         download_url=url)


def test_good_download_builds_the_served_examples(server, synthetic, tmp_path):
  data_dir = str(tmp_path / "tfds")
  for split, tfds_split in (("train", "train"), ("eval", "test")):
    _assert_served_examples(
        _load(split, data_dir, tmp_path / "nowhere", server.url), tfds_split)
  # Each file fetched once; the eval split read the dataset built for train.
  assert sorted(server.requests) == sorted(fmf.FILE_NAMES)
  assert sorted(os.listdir(fmf.download_dir(data_dir))) == sorted(
      fmf.FILE_NAMES)
  # The same files from a local folder build the same examples, in order.
  local = _load("train", tmp_path / "tfds2", _write_files(tmp_path / "idx"),
                "")
  downloaded = _load("train", data_dir, tmp_path / "nowhere", "")
  np.testing.assert_array_equal(local.images, downloaded.images)
  np.testing.assert_array_equal(local.labels, downloaded.labels)


@pytest.mark.parametrize("mode", ["corrupt", "truncate"])
def test_bad_download_is_retried_then_refused_leaving_nothing(
    server, synthetic, tmp_path, mode):
  data_dir = str(tmp_path / "tfds")
  server.modes["t10k-images-idx3-ubyte.gz"] = [mode] * 3
  with pytest.raises(data.DatasetNotFoundError,
                     match="refused after 3 attempts") as err:
    data.build("fashion_mnist", data_dir=data_dir,
                 source_dir=str(tmp_path / "nowhere"), allow_apt=False,
                 download_url=server.url)
  reason = "checksum mismatch|not a complete gzip" if mode == "corrupt" else (
      "transfer broke off|not a complete gzip")
  assert any(r in str(err.value) for r in reason.split("|"))
  assert server.requests.count("t10k-images-idx3-ubyte.gz") == 3
  leftovers = _leftovers(data_dir)
  assert not any("t10k-images" in f or f.endswith(".part")
                 for f in leftovers), leftovers
  assert not os.path.exists(os.path.join(data_dir, "fashion_mnist_local"))
  # A later run with a working server completes the set and builds.
  _assert_served_examples(
      _load("eval", data_dir, tmp_path / "nowhere", server.url), "test")


def test_one_broken_transfer_is_retried(server, synthetic, tmp_path):
  server.modes["train-labels-idx1-ubyte.gz"] = ["truncate"]
  fmf.download(server.url, str(tmp_path / "dl"), retry_wait_s=0)
  assert server.requests.count("train-labels-idx1-ubyte.gz") == 2
  assert sorted(os.listdir(tmp_path / "dl")) == sorted(fmf.FILE_NAMES)


def test_http_error_is_refused_without_retry(server, synthetic, tmp_path):
  with pytest.raises(fmf.DownloadError, match="HTTP 404"):
    fmf.download(server.url + "missing/", str(tmp_path / "dl"),
                 retry_wait_s=0)
  assert len(server.requests) == 1


def test_server_down_fails_fast_with_the_three_options(synthetic, tmp_path):
  start = time.perf_counter()
  with pytest.raises(data.DatasetNotFoundError) as err:
    data.build("fashion_mnist", data_dir=str(tmp_path / "tfds"),
                 source_dir=str(tmp_path / "nowhere"), allow_apt=False,
                 download_url=_closed_port_url())
  assert time.perf_counter() - start < 3.0
  message = str(err.value)
  assert "download failed: cannot reach" in message
  for option in ("apt-get install dataset-fashion-mnist",
                 "--config.data.download_url",
                 "--config.data.source_dir=FOLDER"):
    assert option in message
  assert _leftovers(str(tmp_path / "tfds")) == []


def test_silent_server_fails_within_the_timeout(tmp_path):
  with socket.socket() as listener:  # accepts connections, never answers
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
    start = time.perf_counter()
    with pytest.raises(fmf.DownloadError, match="no answer .* in 0.3 s"):
      fmf.download(url, str(tmp_path), timeout_s=0.3, retry_wait_s=0)
    assert time.perf_counter() - start < 1.5


def test_behind_a_proxy_the_proxy_name_is_looked_up(monkeypatch):
  looked_up = []
  monkeypatch.setattr(socket, "getaddrinfo",
                      lambda host, port: looked_up.append((host, port)))
  monkeypatch.setenv("http_proxy", "http://proxy.internal:3128")
  monkeypatch.delenv("no_proxy", raising=False)
  monkeypatch.delenv("NO_PROXY", raising=False)
  fmf._resolve("http://fashion.invalid/x", timeout_s=1)
  assert looked_up == [("proxy.internal", 3128)]


def test_hanging_name_lookup_is_cut_short(monkeypatch, tmp_path):
  monkeypatch.setattr(socket, "getaddrinfo", lambda *a: time.sleep(5))
  start = time.perf_counter()
  with pytest.raises(fmf.DownloadError, match="did not resolve"):
    fmf.download("http://fashion.invalid/", str(tmp_path), timeout_s=0.2)
  assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("allow_apt,euid,which,reason", [
    (False, 0, "/usr/bin/apt-get", "allow_apt=False"),
    (True, 1000, "/usr/bin/apt-get", "not running as root"),
    (True, 0, None, "no apt-get"),
])
def test_apt_not_tried(monkeypatch, synthetic, tmp_path, allow_apt, euid,
                       which, reason):
  monkeypatch.setattr(apt.shutil, "which", lambda name: which)
  fake = FakeApt(fmf.FASHION_MNIST_DIR)
  with pytest.raises(data.DatasetNotFoundError, match=reason):
    fmf.find_idx_files(str(tmp_path / "nowhere"), str(tmp_path / "tfds"),
                       allow_apt=allow_apt, download_url="", run=fake,
                       euid=euid)
  assert fake.calls == []


# Which source supplies the files when several could, in the order given.
@pytest.mark.parametrize("have,used", [
    ({"folder", "cache", "apt", "server"}, "folder"),
    ({"cache", "apt", "server"}, "cache"),
    ({"debian", "apt", "server"}, "debian"),
    ({"apt", "server"}, "apt"),
    ({"apt_fails", "server"}, "server"),
    ({"server"}, "server"),
])
def test_source_order(server, monkeypatch, synthetic, tmp_path, have, used):
  monkeypatch.setattr(apt.shutil, "which", lambda name: "/usr/bin/apt-get")
  folder, data_dir = str(tmp_path / "idx"), str(tmp_path / "tfds")
  if "folder" in have:
    _write_files(folder)
  if "cache" in have:
    _write_files(fmf.download_dir(data_dir))
  if "debian" in have:
    _write_files(fmf.FASHION_MNIST_DIR)
  fake = FakeApt(fmf.FASHION_MNIST_DIR,
                 failures=2 if "apt_fails" in have else 0)
  url = server.url if "server" in have else ""
  allow_apt = any(h.startswith("apt") for h in have)
  got = fmf.find_idx_files(folder, data_dir, allow_apt=allow_apt,
                           download_url=url, run=fake, euid=0)
  expected = {"folder": folder, "cache": fmf.download_dir(data_dir),
              "debian": fmf.FASHION_MNIST_DIR, "apt": fmf.FASHION_MNIST_DIR,
              "server": fmf.download_dir(data_dir)}[used]
  assert got == expected
  assert fmf.missing_files(got) == []
  assert bool(fake.calls) == (used in ("apt", "server") and allow_apt)
  assert bool(server.requests) == (used == "server")


def test_verify_accepts_published_or_same_content(tmp_path):
  name = "t10k-labels-idx1-ubyte.gz"
  path = str(tmp_path / name)
  with open(path, "wb") as f:  # another compression of the same content
    f.write(_gz(ARRAYS[name], level=1))
  assert hashlib.md5(open(path, "rb").read()).hexdigest() != (
      CHECKSUMS[name].gz_md5)
  assert fmf.verify_gz(path, CHECKSUMS[name]) is None
  other = fmf.Checksum("0" * 32, "0" * 64)
  assert "checksum mismatch" in fmf.verify_gz(path, other)
  with open(path, "wb") as f:
    f.write(FILES[name][:-9])
  assert "not a complete gzip" in fmf.verify_gz(path, CHECKSUMS[name])


@pytest.mark.skipif(not experiments_fixtures.has_fashion_mnist(),
                    reason="dataset-fashion-mnist missing")
@pytest.mark.parametrize("name", fmf.FILE_NAMES)
def test_debian_files_match_the_published_content(name):
  # Debian's .gz bytes are not upstream's, their content must be.
  path = os.path.join(fmf.FASHION_MNIST_DIR, name)
  with open(path, "rb") as f:
    assert hashlib.md5(f.read()).hexdigest() != fmf.CHECKSUMS[name].gz_md5
  assert fmf.verify_gz(path, fmf.CHECKSUMS[name]) is None


def test_attempts_must_be_positive(tmp_path):
  with pytest.raises(ValueError, match="attempts must be at least 1, got 0"):
    fmf.download("http://127.0.0.1:1/", str(tmp_path), attempts=0)
