"""Where the Fashion-MNIST IDX files come from, in a fixed order.

:func:`find_idx_files` returns a folder holding the four ``*-ubyte.gz`` files,
trying in turn:

1. the configured folder (``source_dir``), then files an earlier run
   downloaded, then the Debian package's folder if it is installed;
2. installing the Debian package ``dataset-fashion-mnist`` with ``apt-get``
   (only as root, with ``apt-get`` present, and allowed);
3. downloading the files over HTTP from ``download_url`` (standard library
   only, short timeouts, every file verified before it is put in place);
4. otherwise a :class:`DatasetNotFoundError` naming the three ways to get
   the files and why each failed here.

Every source yields the same bytes once decompressed: Debian's files carry
upstream's deflate streams under a rewritten gzip header (no file name, a
2020 time stamp), so their ``.gz`` checksums differ from the published ones
while their contents match. A file is therefore accepted when either its
``.gz`` MD5 is the published one or its decompressed SHA-256 is the
content's.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.client
import logging
import os
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from typing import Mapping

from experiments import apt

log = logging.getLogger(__name__)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
# Upstream's mirror (the one TFDS uses); plain HTTP is all it serves, the
# checksums below are what make a download trustworthy.
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
APT_PACKAGE = "dataset-fashion-mnist"
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FILE_NAMES = tuple(f for pair in IDX_FILES.values() for f in pair)
# Seconds to wait for a connection (and for each read) before giving up: a
# machine without internet often hangs on outside connections.
TIMEOUT_S = 10.0
# Tries per file when a transfer breaks off or fails verification, and the
# pause between them.
ATTEMPTS = 3
RETRY_WAIT_S = 1.0
_CHUNK = 1 << 20


class DatasetNotFoundError(FileNotFoundError):
  """A dataset is not prepared and may not be downloaded."""


class DownloadError(DatasetNotFoundError):
  """A download failed or its bytes were refused."""


@dataclasses.dataclass(frozen=True)
class Checksum:
  """What a good IDX ``.gz`` file hashes to.

  Attributes:
    gz_md5: MD5 of the ``.gz`` file as published by upstream (the TFDS
      checksum file's SHA-256 of the same files agrees).
    content_sha256: SHA-256 of the decompressed IDX file, the same for the
      upstream and the Debian files.
  """

  gz_md5: str
  content_sha256: str


CHECKSUMS = {
    "train-images-idx3-ubyte.gz": Checksum(
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train-labels-idx1-ubyte.gz": Checksum(
        "25c81989df183df01b3e8a0aad5dffbe",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "t10k-images-idx3-ubyte.gz": Checksum(
        "bef4ecab320f06d8554ea6380940ec79",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "t10k-labels-idx1-ubyte.gz": Checksum(
        "bb300cfdad3c16e7a12a480ee83cd310",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}

HOW_TO_GET = (
    "Get the four Fashion-MNIST IDX files in one of three ways: (1) install "
    f"the Debian/Ubuntu package: `sudo apt-get install {APT_PACKAGE}` (or run "
    "as root with --config.data.allow_apt=True, the default, to have it "
    "installed for you); (2) give this machine internet access (files come "
    f"from {FASHION_MNIST_URL}), or set --config.data.download_url to a "
    "mirror serving the four files; (3) copy the four *-ubyte.gz files into "
    "a folder and pass --config.data.source_dir=FOLDER.")


def missing_files(folder: str) -> list[str]:
  """The IDX file names that ``folder`` lacks (all of them if no folder)."""
  return [f for f in FILE_NAMES
          if not os.path.isfile(os.path.join(folder, f))]


def download_dir(data_dir: str) -> str:
  """Where downloaded IDX files are kept: ``DATA_DIR/downloads/...``."""
  return os.path.join(data_dir, "downloads", "fashion_mnist")


def verify_gz(path: str, checksum: Checksum) -> str | None:
  """Why ``path`` is not the good file, or None when it is.

  Args:
    path: a ``.gz`` IDX file.
    checksum: what it should hash to.

  Returns:
    None when the ``.gz`` MD5 or the decompressed SHA-256 matches; otherwise
    a sentence naming what differs.
  """
  md5 = hashlib.md5()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      md5.update(chunk)
  if md5.hexdigest() == checksum.gz_md5:
    return None
  sha = hashlib.sha256()
  try:
    with gzip.open(path, "rb") as f:
      for chunk in iter(lambda: f.read(_CHUNK), b""):
        sha.update(chunk)
  except (OSError, EOFError, zlib.error) as e:
    # gzip's own CRC and length trailer catch truncation and corruption.
    return f"not a complete gzip file ({e})"
  if sha.hexdigest() == checksum.content_sha256:
    return None
  return (f"checksum mismatch: .gz MD5 {md5.hexdigest()} (published "
          f"{checksum.gz_md5}), content SHA-256 {sha.hexdigest()} (expected "
          f"{checksum.content_sha256})")


# --- HTTP --------------------------------------------------------------------


def _resolve(url: str, timeout_s: float) -> None:
  """Fails within ``timeout_s`` when the host name does not resolve.

  urllib's timeout does not cover the name lookup, which can hang far
  longer on a machine cut off from outside. Behind a proxy (``http_proxy``)
  the proxy's name is the one looked up here.
  """
  parts = urllib.parse.urlsplit(url)
  proxy = urllib.request.getproxies().get(parts.scheme)
  if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
    parts = urllib.parse.urlsplit(proxy if "://" in proxy
                                  else f"http://{proxy}")
  outcome: dict[str, BaseException] = {}

  def lookup():
    try:
      socket.getaddrinfo(parts.hostname, parts.port or 80)
    except OSError as e:
      outcome["error"] = e

  thread = threading.Thread(target=lookup, daemon=True)
  thread.start()
  thread.join(timeout_s)
  if thread.is_alive():
    raise DownloadError(f"{parts.hostname} did not resolve in {timeout_s:g} s")
  if "error" in outcome:
    raise DownloadError(f"cannot reach {parts.hostname}: {outcome['error']}")


def _fetch(url: str, path: str, timeout_s: float) -> None:
  """Writes the body of ``url`` to ``path``.

  Raises:
    DownloadError: the server cannot be reached, does not answer or answers
      with an error (retrying would not help).
    OSError, http.client.HTTPException: the transfer broke off (retry).
  """
  try:
    response = urllib.request.urlopen(url, timeout=timeout_s)
  except urllib.error.HTTPError as e:
    if e.code >= 500:
      raise ConnectionError(f"HTTP {e.code} from {url}") from e
    raise DownloadError(f"HTTP {e.code} {e.reason} for {url}") from e
  except urllib.error.URLError as e:
    raise DownloadError(f"cannot reach {url}: {e.reason}") from e
  except TimeoutError as e:
    # Connected but no answer: a filtering proxy or a dead server, where
    # retrying would only multiply the wait.
    raise DownloadError(f"no answer from {url} in {timeout_s:g} s") from e
  with response, open(path, "wb") as out:
    expected = response.headers.get("Content-Length")
    received = 0
    for chunk in iter(lambda: response.read(_CHUNK), b""):
      out.write(chunk)
      received += len(chunk)
  if expected is not None and received != int(expected):
    raise http.client.IncompleteRead(b"", int(expected) - received)


def download(base_url: str, dest_dir: str, *,
             checksums: Mapping[str, Checksum] = CHECKSUMS,
             timeout_s: float = TIMEOUT_S, attempts: int = ATTEMPTS,
             retry_wait_s: float | None = None) -> str:
  """Downloads the four IDX files into ``dest_dir``, each verified.

  A file is written to a temporary name in ``dest_dir`` and renamed into
  place only once complete and verified, so ``dest_dir`` never holds a
  partial or unverified file under a real name. Files already there and
  verified are kept.

  Args:
    base_url: a URL the file names are appended to.
    dest_dir: the folder for the files (created).
    checksums: file name to :class:`Checksum`.
    timeout_s: connection and read timeout in seconds.
    attempts: tries per file when a transfer breaks off or fails
      verification.
    retry_wait_s: seconds between tries (default :data:`RETRY_WAIT_S`).

  Returns:
    ``dest_dir``.

  Raises:
    DownloadError: a file could not be fetched or failed verification
      ``attempts`` times.
  """
  if attempts < 1:
    raise ValueError(f"attempts must be at least 1, got {attempts}")
  if not base_url.endswith("/"):
    base_url += "/"
  os.makedirs(dest_dir, exist_ok=True)
  _resolve(base_url, timeout_s)
  for name in FILE_NAMES:
    path = os.path.join(dest_dir, name)
    if os.path.isfile(path) and verify_gz(path, checksums[name]) is None:
      continue
    url = base_url + name
    problem = ""
    for attempt in range(1, attempts + 1):
      fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part",
                                 dir=dest_dir)
      os.close(fd)
      try:
        start = time.perf_counter()
        _fetch(url, tmp, timeout_s)
        problem = verify_gz(tmp, checksums[name])
        if problem is None:
          os.replace(tmp, path)
          log.info("Fashion-MNIST: downloaded %s (%d bytes, %.1f s), "
                   "checksum verified", url, os.path.getsize(path),
                   time.perf_counter() - start)
          break
      except (OSError, http.client.HTTPException) as e:
        if isinstance(e, DownloadError):
          raise
        problem = f"transfer broke off ({e!r})"
      finally:
        if os.path.exists(tmp):
          os.remove(tmp)
      log.warning("Fashion-MNIST: %s, attempt %d of %d: %s", url, attempt,
                  attempts, problem)
      if attempt < attempts:
        time.sleep(RETRY_WAIT_S if retry_wait_s is None else retry_wait_s)
    else:
      raise DownloadError(
          f"{url} refused after {attempts} attempts: {problem}")
  return dest_dir


# --- The order of sources ----------------------------------------------------


def find_idx_files(source_dir: str, data_dir: str, *, allow_apt: bool = True,
                   download_url: str = FASHION_MNIST_URL,
                   run: apt.Runner = subprocess.run,
                   euid: int | None = None,
                   apt_get: str | None = None,
                   checksums: Mapping[str, Checksum] = CHECKSUMS,
                   timeout_s: float = TIMEOUT_S) -> str:
  """A folder holding the four Fashion-MNIST IDX files (see module doc).

  Args:
    source_dir: the configured IDX folder, tried first.
    data_dir: the TFDS data dir; downloads go to :func:`download_dir`.
    allow_apt: whether ``apt-get`` may install :data:`APT_PACKAGE`.
    download_url: base URL of the files; ``''`` turns downloading off.
    run: the command runner for ``apt-get`` (tests pass a fake).
    euid, apt_get: see :func:`experiments.apt.unavailable` (tests).
    checksums: what downloaded files must hash to.
    timeout_s: network timeout in seconds.

  Returns:
    The folder.

  Raises:
    DatasetNotFoundError: no source supplied the files; the message says
      what was tried and the three ways to get them.
  """
  tried = []
  cache = download_dir(data_dir)
  if not missing_files(source_dir):
    return source_dir
  tried.append(f"{source_dir} lacks {', '.join(missing_files(source_dir))}")
  if not missing_files(cache) and all(
      verify_gz(os.path.join(cache, f), checksums[f]) is None
      for f in FILE_NAMES):
    log.info("Fashion-MNIST: using the files downloaded to %s", cache)
    return cache
  if source_dir != FASHION_MNIST_DIR and not missing_files(FASHION_MNIST_DIR):
    log.info("Fashion-MNIST: %s; using %s", tried[0], FASHION_MNIST_DIR)
    return FASHION_MNIST_DIR
  log.info("Fashion-MNIST: %s", tried[0])

  reason = (apt.unavailable(euid=euid, apt_get=apt_get) if allow_apt
            else "disabled by --config.data.allow_apt=False")
  if reason is None:
    try:
      apt.install(APT_PACKAGE, run, apt_get=apt_get or "apt-get")
      if not missing_files(FASHION_MNIST_DIR):
        return FASHION_MNIST_DIR
      reason = (f"{APT_PACKAGE} installed but {FASHION_MNIST_DIR} lacks "
                f"{', '.join(missing_files(FASHION_MNIST_DIR))}")
    except apt.AptError as e:
      reason = str(e)
    log.warning("Fashion-MNIST: %s", reason)
  tried.append(f"apt-get: {reason}")

  if download_url:
    log.info("Fashion-MNIST: downloading the IDX files from %s to %s",
             download_url, cache)
    try:
      return download(download_url, cache, checksums=checksums,
                      timeout_s=timeout_s)
    except DownloadError as e:
      tried.append(f"download failed: {e}")
      log.warning("Fashion-MNIST: %s", tried[-1])
  else:
    tried.append("download not tried (--config.data.download_url='')")
  raise DatasetNotFoundError(
      "fashion_mnist is not prepared in "
      f"{data_dir} and no source supplied its IDX files. Tried: "
      f"{'; '.join(tried)}. {HOW_TO_GET}")
