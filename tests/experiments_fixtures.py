"""Shared fixtures of the experiments tests (imported by them)."""

import gzip
import os

import numpy as np
import pytest

from experiments import data
from experiments import fashion_mnist_files

SUBSET = {"train": 2000, "test": 1000}


def has_fashion_mnist() -> bool:
  return os.path.exists(
      os.path.join(data.FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz"))


def write_idx(path, array):
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  with gzip.open(path, "wb", compresslevel=1) as f:
    f.write(header + np.asarray(array, np.uint8).tobytes())


@pytest.fixture(scope="session")
def fmnist_data_dir(tmp_path_factory):
  """A TFDS data dir with a small real Fashion-MNIST subset.

  The first SUBSET examples of the Debian IDX files, written as IDX files
  again and built with the real builder (whose size check is set to the
  subset), so the whole offline path is exercised in about a second.
  """
  if not has_fashion_mnist():
    pytest.skip("dataset-fashion-mnist is not installed")
  base = tmp_path_factory.getbasetemp()
  source, data_dir = base / "fmnist_idx", base / "tfds_fmnist"
  if not (data_dir / "fashion_mnist_local").exists():
    source.mkdir(exist_ok=True)
    for split, n in SUBSET.items():
      for f in fashion_mnist_files.IDX_FILES[split]:
        write_idx(str(source / f),
                  data.read_idx(os.path.join(data.FASHION_MNIST_DIR, f))[:n])
    with pytest.MonkeyPatch.context() as mp:
      mp.setattr(data, "_SPLIT_SIZES", dict(SUBSET))
      data.build("fashion_mnist", data_dir=str(data_dir),
                   source_dir=str(source))
  return str(data_dir)


def placeholder_idx_dir(path) -> str:
  """A folder with empty IDX file names: enough for mocked TFDS builds
  (tfds.testing.mock_data makes download_and_prepare a no-op), so the mock
  tests do not depend on the Debian package."""
  path.mkdir(parents=True, exist_ok=True)
  for names in fashion_mnist_files.IDX_FILES.values():
    for name in names:
      (path / name).touch()
  return str(path)
