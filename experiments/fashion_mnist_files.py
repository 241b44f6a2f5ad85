"""Where the Fashion-MNIST IDX files come from: a folder, apt-get, a TFDS
download or an error, in that order (docs/data.md, steps 1-4)."""

from __future__ import annotations

import logging
import os
import subprocess

import tensorflow_datasets as tfds

from experiments import apt

log = logging.getLogger(__name__)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
APT_PACKAGE = "dataset-fashion-mnist"
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FILE_NAMES = tuple(f for pair in IDX_FILES.values() for f in pair)
# Upstream's URLs with their size and SHA-256, as TFDS's own fashion_mnist
# builder downloads them (read from TFDS's file: loading that builder's
# checksums through the builder needs the optional importlib_resources).
URL_INFOS = tfds.download.checksums.load_url_infos(
    tfds.core.tfds_path() / "url_checksums" / "fashion_mnist.txt")

HOW_TO_GET = (
    "Get the four Fashion-MNIST IDX files in one of three ways: (1) install "
    f"the Debian/Ubuntu package: `sudo apt-get install {APT_PACKAGE}` (or run "
    "as root with --config.data.allow_apt=True, the default, to have it "
    "installed for you); (2) on a machine with internet, rerun with "
    "--config.data.download=True (TFDS downloads and verifies them); (3) copy "
    "the four *-ubyte.gz files into a folder and pass "
    "--config.data.source_dir=FOLDER.")


class DatasetNotFoundError(FileNotFoundError):
  """A dataset is not prepared and may not be downloaded."""


def missing_files(folder: str) -> list[str]:
  """The IDX file names that ``folder`` lacks."""
  return [f for f in FILE_NAMES
          if not os.path.isfile(os.path.join(folder, f))]


def find_idx_files(source_dir: str, data_dir: str, *, allow_apt: bool = True,
                   download: bool = False,
                   run: apt.Runner = subprocess.run,
                   euid: int | None = None,
                   apt_get: str | None = None) -> str | None:
  """The folder holding the four IDX files, or None to download them.

  Args:
    source_dir: the configured IDX folder, tried first.
    data_dir: the TFDS data dir (named in the error).
    allow_apt: whether ``apt-get`` may install :data:`APT_PACKAGE`.
    download: whether the files may be downloaded when no folder has them.
    run: the command runner for ``apt-get`` (tests pass a fake).
    euid, apt_get: see :func:`experiments.apt.unavailable` (tests).

  Raises:
    DatasetNotFoundError: no folder has the files and ``download`` is off.
  """
  for folder in (source_dir, FASHION_MNIST_DIR):
    if not missing_files(folder):
      return folder
  tried = [f"{source_dir} lacks {', '.join(missing_files(source_dir))}"]
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
  if download:
    log.info("Fashion-MNIST: %s; downloading the IDX files", "; ".join(tried))
    return None
  raise DatasetNotFoundError(
      f"fashion_mnist is not prepared in {data_dir} and no source supplied "
      f"its IDX files. Tried: {'; '.join(tried)}; download not allowed "
      f"(--config.data.download=False). {HOW_TO_GET}")
