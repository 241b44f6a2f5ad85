"""Datasets through TensorFlow Datasets, read without TensorFlow, and their
numpy batches: see docs/data.md, and docs/multihost.md for the rows each
process reads."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from experiments import fashion_mnist_files

FASHION_MNIST_DIR = fashion_mnist_files.FASHION_MNIST_DIR
DatasetNotFoundError = fashion_mnist_files.DatasetNotFoundError
_SPLIT_SIZES = {"train": 60_000, "test": 10_000}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the models and the input pipeline need to know about a dataset
  (``mean`` and ``std`` are per channel of ``x / 255``)."""

  name: str
  tfds_name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  train_split: str = "train"
  eval_split: str = "test"
  in_memory: bool = True
  how_to_get: str = ""


DATASETS = {
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist", tfds_name="fashion_mnist_local", num_classes=10,
        image_shape=(28, 28, 1), mean=(0.2860,), std=(0.3530,),
        how_to_get=fashion_mnist_files.HOW_TO_GET),
    "cifar10": DatasetInfo(
        name="cifar10", tfds_name="cifar10", num_classes=10,
        image_shape=(32, 32, 3), mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        how_to_get=(
            "On a machine with internet, either rerun with "
            "--config.data.download=True, or run `tfds build cifar10 "
            "--file_format=array_record --data_dir=DATA_DIR` there and copy "
            "DATA_DIR/cifar10 to the same place on this machine. Building "
            "needs TensorFlow installed (TFDS encodes the images with it); "
            "reading the built dataset does not.")),
    "imagenet2012": DatasetInfo(
        name="imagenet2012", tfds_name="imagenet2012", num_classes=1000,
        image_shape=(224, 224, 3), mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225), eval_split="validation", in_memory=False,
        how_to_get=(
            "ImageNet needs a manual download: put ILSVRC2012_img_train.tar "
            "and ILSVRC2012_img_val.tar in DATA_DIR/downloads/manual and "
            "rerun with --config.data.download=True (or `tfds build "
            "imagenet2012 --file_format=array_record --data_dir=DATA_DIR`).")),
}


def get_info(name: str) -> DatasetInfo:
  """The :class:`DatasetInfo` of a dataset name used in configs."""
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
  return DATASETS[name]


# --- Fashion-MNIST from local IDX files --------------------------------------


def read_idx(path: str) -> np.ndarray:
  """Reads a (gzipped) IDX file of unsigned bytes into an array."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
    raise ValueError(f"{path} is not an IDX file of unsigned bytes")
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big")
                for i in range(ndim))
  offset = 4 + 4 * ndim
  if len(data) - offset != int(np.prod(shape)):
    raise ValueError(f"{path}: header says {shape}, the payload size differs")
  return np.frombuffer(data, np.uint8, offset=offset).reshape(shape)


def read_fashion_mnist_idx(image_path: str, label_path: str, split: str):
  """Images ``[N, 28, 28, 1]`` uint8 and labels ``[N]`` of one split, from
  any source, checked (docs/data.md, "Verification")."""
  images, labels = read_idx(image_path), read_idx(label_path)
  n = _SPLIT_SIZES[split]
  if images.shape != (n, 28, 28) or labels.shape != (n,):
    raise ValueError(
        f"Fashion-MNIST {split} ({image_path}) has images {images.shape} and "
        f"labels {labels.shape}, expected ({n}, 28, 28) and ({n},)")
  if labels.max() > 9:
    raise ValueError(f"Fashion-MNIST {split} labels exceed 9")
  return images[..., None], labels


class FashionMnistLocal(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST built from the IDX files in ``idx_dir``, or downloaded
  by TFDS when it is None."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Built from the IDX files, Tensor features."}
  # What downloads are checked against (TFDS's checksums of its own
  # fashion_mnist), in place of a checksums file next to this code.
  url_infos = fashion_mnist_files.URL_INFOS
  idx_dir: str | None = None

  def _info(self) -> tfds.core.DatasetInfo:
    # Tensor, not Image, features: decoding needs neither TensorFlow nor PIL.
    return tfds.core.DatasetInfo(
        builder=self,
        description="Fashion-MNIST (Xiao et al. 2017), from its IDX files.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("image", "label"),
        homepage="https://github.com/zalandoresearch/fashion-mnist",
    )

  def _split_generators(self, dl_manager):
    if self.idx_dir is None:
      paths = dl_manager.download(
          {info.filename: url for url, info in self.url_infos.items()})
    else:
      paths = {f: os.path.join(self.idx_dir, f)
               for f in fashion_mnist_files.FILE_NAMES}
    return {split: self._generate_examples(
                *(os.fspath(paths[f]) for f in files), split)
            for split, files in fashion_mnist_files.IDX_FILES.items()}

  def _generate_examples(self, image_path, label_path, split):
    images, labels = read_fashion_mnist_idx(image_path, label_path, split)
    for i in range(labels.shape[0]):
      yield i, {"image": images[i], "label": int(labels[i])}


# --- Builders and sources ----------------------------------------------------


def _builder(info: DatasetInfo, data_dir: str | None):
  if info.name == "fashion_mnist":
    return FashionMnistLocal(data_dir=data_dir, file_format="array_record")
  return tfds.builder(info.tfds_name, data_dir=data_dir,
                      file_format="array_record")


def build(name: str, *, data_dir: str | None = None, download: bool = False,
          source_dir: str = FASHION_MNIST_DIR, allow_apt: bool = True):
  """A prepared TFDS builder for ``name``; never a hanging download.

  Args:
    name: a key of :data:`DATASETS`.
    data_dir: the TFDS data dir (default TFDS's).
    download: whether a missing dataset may be downloaded (Fashion-MNIST's
      files only when no folder and no apt-get supplied them).
    source_dir: the folder of the Fashion-MNIST IDX files.
    allow_apt: whether Fashion-MNIST's Debian package may be installed with
      apt-get (as root) when no local folder holds the files.

  Returns:
    The builder, prepared in ``array_record`` format.

  Raises:
    DatasetNotFoundError: the dataset is missing and may not be fetched.
  """
  info = get_info(name)
  builder = _builder(info, data_dir or None)
  if builder.is_prepared():
    return builder
  data_dir = os.fspath(builder.data_dir_root)
  if info.name == "fashion_mnist":
    builder.idx_dir = fashion_mnist_files.find_idx_files(
        source_dir, data_dir, allow_apt=allow_apt, download=download)
  elif not download:
    raise DatasetNotFoundError(
        f"dataset {info.tfds_name!r} is not prepared in {data_dir} (looked "
        f"for {builder.data_path}), and downloads are off. "
        f"{info.how_to_get.replace('DATA_DIR', data_dir)}")
  builder.download_and_prepare(file_format="array_record")
  return builder


def split_kwargs(data_config) -> dict[str, Any]:
  """The :func:`load_split` keyword arguments of a ``config.data`` or of its
  stored JSON dict (docs/data.md, "From a config")."""
  get = data_config.get
  return dict(data_dir=get("data_dir") or None,
              download=bool(get("download", False)),
              source_dir=get("source_dir") or FASHION_MNIST_DIR,
              allow_apt=bool(get("allow_apt", True)),
              image_size=get("image_size") or None)


def _read(source, indices) -> list[dict[str, Any]]:
  try:
    return source.__getitems__(list(indices))
  except TypeError:
    # tfds.testing.mock_data's __getitems__ is not bound to its source; the
    # per-item path reads the same records.
    return [source[int(i)] for i in indices]


def _center_square_resize(image: np.ndarray, size: int) -> np.ndarray:
  """Center-crops to a square and resizes (nearest) to ``size x size``."""
  h, w = image.shape[:2]
  s = min(h, w)
  top, left = (h - s) // 2, (w - s) // 2
  idx = (np.arange(size) * s) // size
  return image[top + idx][:, left + idx]


@dataclasses.dataclass
class Split:
  """One split: ``get(indices) -> (images uint8 [B,H,W,C], labels int32)``.

  Small datasets are held in memory (``images``/``labels`` set); large ones
  read their records on demand from the TFDS data source.
  """

  info: DatasetInfo
  size: int
  images: np.ndarray | None = None
  labels: np.ndarray | None = None
  source: Any = None

  def __len__(self) -> int:
    return self.size

  def get(self, indices) -> tuple[np.ndarray, np.ndarray]:
    indices = np.asarray(indices)
    if self.images is not None:
      return self.images[indices], self.labels[indices]
    return _records_to_arrays(self.info, _read(self.source, indices))


def _records_to_arrays(info: DatasetInfo, records):
  h, w, c = info.image_shape
  images = np.empty((len(records), h, w, c), np.uint8)
  for i, r in enumerate(records):
    image = np.asarray(r["image"], np.uint8)
    if image.ndim == 2:
      image = image[..., None]
    if image.shape[:2] != (h, w):
      image = _center_square_resize(image, h)
    images[i] = image[..., :c]
  labels = np.asarray([int(r["label"]) for r in records], np.int32)
  return images, labels


def load_split(name: str, split: str, *, data_dir: str | None = None,
               download: bool = False, source_dir: str = FASHION_MNIST_DIR,
               allow_apt: bool = True, limit: int | None = None,
               image_size: int | None = None) -> Split:
  """Opens one split of a dataset.

  Args:
    name: a key of :data:`DATASETS`.
    split: ``'train'`` or ``'eval'`` (mapped to the dataset's TFDS split).
    data_dir, download, source_dir, allow_apt: see :func:`build`.
    limit: keep only the first ``limit`` examples (tests, quick runs).
    image_size: square side for datasets with variable-size images
      (ImageNet); default the dataset's.
  """
  info = get_info(name)
  if image_size and image_size != info.image_shape[0]:
    info = dataclasses.replace(
        info, image_shape=(image_size, image_size, info.image_shape[2]))
  tfds_split = {"train": info.train_split, "eval": info.eval_split}[split]
  builder = build(name, data_dir=data_dir, download=download,
                  source_dir=source_dir, allow_apt=allow_apt)
  source = builder.as_data_source(split=tfds_split)
  size = len(source) if limit is None else min(limit, len(source))
  if not info.in_memory:
    return Split(info, size, source=source)
  images = np.empty((size, *info.image_shape), np.uint8)
  labels = np.empty((size,), np.int32)
  chunk = 8192
  for start in range(0, size, chunk):
    stop = min(size, start + chunk)
    images[start:stop], labels[start:stop] = _records_to_arrays(
        info, _read(source, range(start, stop)))
  return Split(info, size, images, labels)


# --- Batching, augmentation, normalisation -----------------------------------


def batch_indices(num_examples: int, batch_size: int, seed: int,
                  step: int) -> np.ndarray:
  """The example ids of training batch ``step``, as docs/data.md "Batches"
  says; an epoch's last incomplete batch is dropped so all have one shape."""
  per_epoch = num_examples // batch_size
  if per_epoch < 1:
    raise ValueError(
        f"batch size {batch_size} exceeds the {num_examples} examples")
  epoch, pos = divmod(step, per_epoch)
  perm = _permutation(num_examples, seed, epoch)
  return perm[pos * batch_size:(pos + 1) * batch_size]


@functools.lru_cache(maxsize=2)
def _permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  # Cached: a 60k permutation per step would cost about as much as a step.
  perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
  perm.flags.writeable = False
  return perm


def augment_crop_flip(images: np.ndarray, seed: int, step: int,
                      pad: int = 4, *, rows: slice | None = None,
                      batch_size: int | None = None) -> np.ndarray:
  """Random crop (zero-pad ``pad``) and horizontal flip, seeded by step.

  ``images`` are uint8 ``[B, H, W, C]``; with ``rows``, those rows of a batch
  of ``batch_size``, which get the crops and flips they get in the whole.
  """
  rng = np.random.default_rng([seed, step, 1])
  b, h, w, _ = images.shape
  total = b if batch_size is None else batch_size
  rows = slice(0, total) if rows is None else rows
  dy = rng.integers(0, 2 * pad + 1, total)[rows]
  dx = rng.integers(0, 2 * pad + 1, total)[rows]
  flip = (rng.random(total) < 0.5)[rows]
  if dy.shape[0] != b:
    raise ValueError(f"rows {rows} of a batch of {total} are not the "
                     f"{b} images given")
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  rows_y = dy[:, None] + np.arange(h)[None]
  cols = dx[:, None] + np.arange(w)[None]
  out = padded[np.arange(b)[:, None, None], rows_y[:, :, None],
               cols[:, None, :]]
  out[flip] = out[flip, :, ::-1]
  return out


def normalize(images: np.ndarray, info: DatasetInfo) -> np.ndarray:
  """uint8 ``[B,H,W,C]`` to float32 standardised per channel."""
  mean = np.asarray(info.mean, np.float32)
  std = np.asarray(info.std, np.float32)
  return (images.astype(np.float32) / 255.0 - mean) / std


def train_batch(split: Split, batch_size: int, seed: int, step: int,
                augment: bool, rows: slice | None = None
                ) -> dict[str, np.ndarray]:
  """Training batch ``step``: ``{'image': float32, 'label': int32}``.

  With ``rows`` (a slice of ``range(batch_size)``), only those rows of it
  are read.
  """
  indices = batch_indices(len(split), batch_size, seed, step)
  if rows is not None:
    indices = indices[rows]
  images, labels = split.get(indices)
  if augment:
    images = augment_crop_flip(images, seed, step, rows=rows,
                               batch_size=batch_size)
  return {"image": normalize(images, split.info), "label": labels}


def eval_batches(split: Split, batch_size: int, rows: slice | None = None
                 ) -> Iterator[dict[str, np.ndarray]]:
  """The whole split in order, the last batch zero-padded with ``mask``.

  Every batch has ``batch_size`` rows so one compiled step serves them all
  (and a batch divides evenly across devices); with ``rows`` (a slice of
  ``range(batch_size)``) only those rows of each are read and yielded.
  """
  rows = slice(0, batch_size) if rows is None else rows
  lo, hi, _ = rows.indices(batch_size)
  for start in range(0, len(split), batch_size):
    stop = min(len(split), start + hi)
    first = min(start + lo, stop)
    images, labels = split.get(np.arange(first, stop))
    n = stop - first
    images = normalize(images, split.info)
    if n < hi - lo:
      images = np.pad(images, ((0, hi - lo - n), (0, 0), (0, 0), (0, 0)))
      labels = np.pad(labels, (0, hi - lo - n))
    yield {"image": images, "label": labels, "mask": np.arange(hi - lo) < n}
