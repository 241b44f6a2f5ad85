"""Tests for experiments/fashion_mnist_files.py: the sources of the IDX
files, offline as docs/data.md ("How the tests provide data") says."""

import gzip
import hashlib
import http.server
import os
import subprocess
import threading

import numpy as np
import pytest
import tensorflow_datasets as tfds

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
# SHA-256 of the decompressed upstream files, which Debian's (other .gz
# bytes: a rewritten gzip header) must match.
CONTENT_SHA256 = {
    "train-images-idx3-ubyte.gz":
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz":
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz":
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz":
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


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
  """The synthetic split sizes in place of the real ones, and no Debian
  folder (the real one may be installed here)."""
  monkeypatch.setattr(data, "_SPLIT_SIZES", dict(SIZES))
  monkeypatch.setattr(fmf, "FASHION_MNIST_DIR", str(tmp_path / "debian"))


def _serve_from(monkeypatch, url):
  """Downloads come from ``url``, checked against the served files' size
  and SHA-256."""
  monkeypatch.setattr(data.FashionMnistLocal, "url_infos", {
      url + name: tfds.download.checksums.UrlInfo(
          size=tfds.core.units.Size(len(body)),
          checksum=hashlib.sha256(body).hexdigest(), filename=name)
      for name, body in FILES.items()})


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


def _assert_served_examples(split, tfds_split):
  """``split`` holds exactly the served examples (TFDS shuffles the order)."""
  image_file, label_file = fmf.IDX_FILES[tfds_split]
  served = {ARRAYS[image_file][i].tobytes(): ARRAYS[label_file][i]
            for i in range(SIZES[tfds_split])}
  got = {split.images[i, ..., 0].tobytes(): split.labels[i]
         for i in range(len(split))}
  assert len(split) == SIZES[tfds_split] and got == served


def _load(split, data_dir, source_dir, download=True):
  return data.load_split("fashion_mnist", split, data_dir=str(data_dir),
                         source_dir=str(source_dir), allow_apt=False,
                         download=download)


def test_good_download_builds_the_served_examples(server, synthetic,
                                                  monkeypatch, tmp_path):
  _serve_from(monkeypatch, server.url)
  data_dir = str(tmp_path / "tfds")
  for split, tfds_split in (("train", "train"), ("eval", "test")):
    _assert_served_examples(_load(split, data_dir, tmp_path / "nowhere"),
                            tfds_split)
  # Each file fetched once; the eval split read the dataset built for train.
  assert sorted(server.requests) == sorted(fmf.FILE_NAMES)
  # The same files from a local folder build the same examples, in order.
  local = _load("train", tmp_path / "tfds2", _write_files(tmp_path / "idx"),
                download=False)
  downloaded = _load("train", data_dir, tmp_path / "nowhere", download=False)
  np.testing.assert_array_equal(local.images, downloaded.images)
  np.testing.assert_array_equal(local.labels, downloaded.labels)


@pytest.mark.parametrize("mode", ["corrupt", "truncate"])
def test_bad_download_is_refused_leaving_no_dataset(
    server, synthetic, monkeypatch, tmp_path, mode):
  _serve_from(monkeypatch, server.url)
  data_dir = str(tmp_path / "tfds")
  server.modes["t10k-images-idx3-ubyte.gz"] = [mode]
  # Other bytes fail TFDS's checksum; a transfer that breaks off, the
  # response's length (requests' ChunkedEncodingError, an OSError).
  refused = (tfds.download.download_manager.NonMatchingChecksumError
             if mode == "corrupt" else OSError)
  with pytest.raises(refused):
    data.build("fashion_mnist", data_dir=data_dir, download=True,
               source_dir=str(tmp_path / "nowhere"), allow_apt=False)
  assert not data.FashionMnistLocal(data_dir=data_dir).is_prepared()
  assert not os.path.exists(os.path.join(data_dir, "fashion_mnist_local",
                                         "1.0.0"))
  # No file under a real name that a later run could take for a good one:
  # it downloads the refused file again, and builds.
  _assert_served_examples(_load("eval", data_dir, tmp_path / "nowhere"),
                          "test")
  assert server.requests.count("t10k-images-idx3-ubyte.gz") == 2


def test_http_error_is_refused_without_retry(server, synthetic, monkeypatch,
                                             tmp_path):
  _serve_from(monkeypatch, server.url + "missing/")
  with pytest.raises(tfds.download.DownloadError, match="404"):
    data.build("fashion_mnist", data_dir=str(tmp_path / "tfds"),
               download=True, source_dir=str(tmp_path / "nowhere"),
               allow_apt=False)
  # No file asked for twice (the others may be cut short by the first).
  assert server.requests and len(set(server.requests)) == len(server.requests)


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
                       allow_apt=allow_apt, run=fake, euid=euid)
  assert fake.calls == []


# Which source supplies the files when several could, in the order given
# (None: TFDS downloads them).
@pytest.mark.parametrize("have,used", [
    ({"folder", "debian", "apt", "download"}, "folder"),
    ({"debian", "apt", "download"}, "debian"),
    ({"apt", "download"}, "apt"),
    ({"apt_fails", "download"}, "download"),
    ({"download"}, "download"),
])
def test_source_order(monkeypatch, synthetic, tmp_path, have, used):
  monkeypatch.setattr(apt.shutil, "which", lambda name: "/usr/bin/apt-get")
  folder = str(tmp_path / "idx")
  if "folder" in have:
    _write_files(folder)
  if "debian" in have:
    _write_files(fmf.FASHION_MNIST_DIR)
  fake = FakeApt(fmf.FASHION_MNIST_DIR,
                 failures=2 if "apt_fails" in have else 0)
  allow_apt = any(h.startswith("apt") for h in have)
  got = fmf.find_idx_files(folder, str(tmp_path / "tfds"),
                           allow_apt=allow_apt, download="download" in have,
                           run=fake, euid=0)
  expected = {"folder": folder, "debian": fmf.FASHION_MNIST_DIR,
              "apt": fmf.FASHION_MNIST_DIR, "download": None}[used]
  assert got == expected
  assert bool(fake.calls) == (used in ("apt", "download") and allow_apt)


def test_tfds_checksums_cover_the_four_files():
  assert sorted(info.filename for info in fmf.URL_INFOS.values()) == sorted(
      fmf.FILE_NAMES)


@pytest.mark.skipif(not experiments_fixtures.has_fashion_mnist(),
                    reason="dataset-fashion-mnist missing")
@pytest.mark.parametrize("name", fmf.FILE_NAMES)
def test_debian_files_match_the_upstream_content(name):
  # Debian's .gz bytes are not upstream's (TFDS's checksum), their content
  # must be.
  path = os.path.join(fmf.FASHION_MNIST_DIR, name)
  with open(path, "rb") as f:
    body = f.read()
  (info,) = [i for i in fmf.URL_INFOS.values() if i.filename == name]
  assert hashlib.sha256(body).hexdigest() != info.checksum
  assert hashlib.sha256(gzip.decompress(body)).hexdigest() == (
      CONTENT_SHA256[name])
