"""Tests for experiments/data.py: offline TFDS builder, sources, batching."""

import gzip
import socket
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments import data
from experiments import fashion_mnist_files
from experiments.configs import default
import experiments_fixtures
# The session fixture, imported so pytest finds it in this module.
from experiments_fixtures import fmnist_data_dir  # noqa: F401

HAS_FMNIST = experiments_fixtures.has_fashion_mnist()


@pytest.fixture
def no_network(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args}")
  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)


_write_idx = experiments_fixtures.write_idx


def test_read_idx_roundtrip(tmp_path):
  x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  _write_idx(str(tmp_path / "x.gz"), x)
  np.testing.assert_array_equal(data.read_idx(str(tmp_path / "x.gz")), x)


def test_read_idx_rejects_truncated(tmp_path):
  path = str(tmp_path / "bad.gz")
  with gzip.open(path, "wb") as f:
    f.write(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"abc")
  with pytest.raises(ValueError, match="payload"):
    data.read_idx(path)


def test_wrong_counts_are_rejected(tmp_path):
  image_file, label_file = fashion_mnist_files.IDX_FILES["test"]
  _write_idx(str(tmp_path / image_file), np.zeros((5, 28, 28)))
  _write_idx(str(tmp_path / label_file), np.zeros((5,)))
  with pytest.raises(ValueError, match="expected"):
    data.read_fashion_mnist_idx(str(tmp_path / image_file),
                                str(tmp_path / label_file), "test")


def test_failed_build_leaves_no_dataset(tmp_path, no_network):
  source = tmp_path / "idx"
  source.mkdir()
  for image_file, label_file in fashion_mnist_files.IDX_FILES.values():
    _write_idx(str(source / image_file), np.zeros((5, 28, 28)))
    _write_idx(str(source / label_file), np.zeros((5,)))
  data_dir = str(tmp_path / "tfds")
  with pytest.raises(ValueError, match="expected"):
    data.build("fashion_mnist", data_dir=data_dir, source_dir=str(source))
  assert not data._builder(data.get_info("fashion_mnist"),
                           data_dir).is_prepared()
  built = tmp_path / "tfds" / "fashion_mnist_local"
  leftovers = [p.name for p in built.iterdir()] if built.exists() else []
  assert not any(name == "1.0.0" for name in leftovers), leftovers


@pytest.mark.parametrize("name", ["cifar10", "imagenet2012"])
def test_missing_dataset_is_fast_clear_error(tmp_path, no_network, name):
  start = time.perf_counter()
  with pytest.raises(data.DatasetNotFoundError, match="download") as err:
    data.load_split(name, "train", data_dir=str(tmp_path))
  assert time.perf_counter() - start < 1.0
  assert "not prepared" in str(err.value)


def test_missing_fashion_mnist_files_is_clear_error(tmp_path, no_network,
                                                   monkeypatch):
  # No Debian folder either (the real one may be installed here).
  monkeypatch.setattr(fashion_mnist_files, "FASHION_MNIST_DIR",
                      str(tmp_path / "debian"))
  start = time.perf_counter()
  with pytest.raises(data.DatasetNotFoundError) as err:
    data.load_split("fashion_mnist", "train", data_dir=str(tmp_path),
                    source_dir=str(tmp_path / "nowhere"), allow_apt=False)
  assert time.perf_counter() - start < 1.0
  assert "download not allowed" in str(err.value)
  for option in ("apt-get install dataset-fashion-mnist",
                 "--config.data.download=True",
                 "--config.data.source_dir=FOLDER"):
    assert option in str(err.value)
  # Nothing a later run could take for a built dataset or a good file.
  assert not any(tmp_path.rglob("*"))


def test_split_kwargs_from_config_and_stored_json():
  config = default.get_config()
  config.data.allow_apt = False
  config.data.image_size = 0
  kwargs = data.split_kwargs(config.data)
  assert kwargs == dict(data_dir=None, download=False,
                        source_dir=data.FASHION_MNIST_DIR, allow_apt=False,
                        image_size=None)
  # A config stored before allow_apt existed, and one with a field since
  # dropped (download_url).
  stored = {"data_dir": "/d", "download": True, "source_dir": "/s",
            "image_size": 64}
  assert data.split_kwargs(stored) == dict(
      data_dir="/d", download=True, source_dir="/s", allow_apt=True,
      image_size=64)
  assert data.split_kwargs({**stored, "download_url": "http://m/"}) == (
      data.split_kwargs(stored))
  assert set(data.split_kwargs(stored)) <= set(
      data.load_split.__code__.co_varnames)


def test_unknown_dataset():
  with pytest.raises(ValueError, match="unknown dataset"):
    data.get_info("mnist3d")


@pytest.mark.parametrize("name", ["fashion_mnist", "cifar10", "imagenet2012"])
def test_mock_data_through_data_source(tmp_path, no_network, name):
  with tfds.testing.mock_data(num_examples=12):
    split = data.load_split(name, "train", data_dir=str(tmp_path),
                            download=True,
                            source_dir=experiments_fixtures.placeholder_idx_dir(
                                tmp_path / "idx"),
                            image_size=32 if name == "imagenet2012" else 0)
  assert len(split) == 12
  images, labels = split.get([0, 5, 3])
  h = 28 if name == "fashion_mnist" else 32
  assert images.shape == (3, h, h, split.info.image_shape[-1])
  assert images.dtype == np.uint8 and labels.dtype == np.int32
  assert np.all(labels < split.info.num_classes)


def test_batch_indices_deterministic_and_epoch_permutation():
  a = [data.batch_indices(10, 3, seed=7, step=s) for s in range(3)]
  b = [data.batch_indices(10, 3, seed=7, step=s) for s in range(3)]
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  epoch = np.concatenate(a)
  assert len(set(epoch.tolist())) == 9  # no repeats within an epoch
  other = data.batch_indices(10, 3, seed=8, step=0)
  assert not np.array_equal(other, a[0])
  with pytest.raises(ValueError, match="exceeds"):
    data.batch_indices(2, 3, seed=0, step=0)


def test_augment_crop_flip():
  images = np.random.default_rng(0).integers(0, 255, (6, 8, 8, 3), np.uint8)
  out = data.augment_crop_flip(images, seed=1, step=2, pad=2)
  assert out.shape == images.shape and out.dtype == np.uint8
  np.testing.assert_array_equal(out,
                                data.augment_crop_flip(images, 1, 2, pad=2))
  assert not np.array_equal(out, data.augment_crop_flip(images, 1, 3, pad=2))
  # pad=0 leaves only the flips: each image is itself or its mirror.
  flipped = data.augment_crop_flip(images, seed=1, step=2, pad=0)
  for x, y in zip(images, flipped):
    assert np.array_equal(x, y) or np.array_equal(x[:, ::-1], y)


def test_eval_batches_cover_split_with_mask():
  info = data.get_info("fashion_mnist")
  split = data.Split(info, 7, np.zeros((7, 28, 28, 1), np.uint8),
                     np.arange(7, dtype=np.int32))
  batches = list(data.eval_batches(split, 4))
  assert [b["image"].shape[0] for b in batches] == [4, 4]
  assert sum(int(b["mask"].sum()) for b in batches) == 7
  np.testing.assert_array_equal(batches[1]["label"][:3], [4, 5, 6])


@pytest.mark.skipif(not HAS_FMNIST, reason="dataset-fashion-mnist missing")
def test_real_fashion_mnist(fmnist_data_dir):
  split = data.load_split("fashion_mnist", "eval", data_dir=fmnist_data_dir)
  assert split.images.shape == (1000, 28, 28, 1)
  assert 0.1 < split.images.mean() / 255 < 0.5
  assert set(np.unique(split.labels)) <= set(range(10))
  batch = data.train_batch(split, 32, seed=0, step=1, augment=False)
  assert batch["image"].dtype == np.float32
  assert abs(float(batch["image"].mean())) < 1.0


def _distinct_split(n):
  info = data.get_info("fashion_mnist")
  images = np.arange(n * 28 * 28, dtype=np.int64).reshape(n, 28, 28, 1)
  return data.Split(info, n, (images * 7 % 251).astype(np.uint8),
                    np.arange(n, dtype=np.int32))


@pytest.mark.parametrize("augment", [False, True])
def test_process_rows_of_a_train_batch_tile_the_whole(augment):
  # Each process of a multi-process run reads its rows of a global batch;
  # together they are exactly the one-process batch, augmentation included.
  split = _distinct_split(24)
  whole = data.train_batch(split, 8, seed=5, step=3, augment=augment)
  parts = [data.train_batch(split, 8, 5, 3, augment, rows=slice(i, i + 2))
           for i in range(0, 8, 2)]
  for k in ("image", "label"):
    np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]),
                                  whole[k])


def test_augment_rows_must_match_the_images():
  images = np.zeros((3, 8, 8, 1), np.uint8)
  with pytest.raises(ValueError, match="rows"):
    data.augment_crop_flip(images, 0, 0, rows=slice(0, 2), batch_size=4)


def test_process_rows_of_eval_batches_tile_the_whole():
  split = _distinct_split(6)
  whole = list(data.eval_batches(split, 4))
  halves = [list(data.eval_batches(split, 4, rows=slice(i, i + 2)))
            for i in (0, 2)]
  assert [b["image"].shape[0] for b in halves[0]] == [2, 2]
  for b, lo, hi in zip(whole, halves[0], halves[1]):
    for k in ("image", "label", "mask"):
      np.testing.assert_array_equal(np.concatenate([lo[k], hi[k]]), b[k])
  # The last batch's second half is padding only.
  assert halves[1][1]["mask"].tolist() == [False, False]
