"""Converts an old experiments ``compressed_model.npz`` to rsjax's format.

  python -m experiments.convert_legacy OLD.npz NEW.npz

Before ``rsjax.save_compressed`` held a whole model, the pipeline wrote its
own unchecked ``.npz``: per compressed layer ``PATH::codebook``,
``PATH::index`` and ``PATH::kernel_shape``, every other parameter under its
path (``params/conv1/bias``, ``batch_stats/...``) and the hardware as JSON
under ``::hardware``. :func:`convert` reads such a file and writes the same
model (the float codebooks and index tables unchanged, the other parameters
bit for bit) as an rsjax version-2 file, which ``rsjax.load_compressed``
reads with its checksum.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import rsjax

_SUFFIXES = ("::codebook", "::index", "::kernel_shape")


def _array(value: np.ndarray) -> np.ndarray:
  # NumPy writes a bfloat16 array as 2-byte void ('<V2'): its raw bits.
  return value.view(ml_dtypes.bfloat16) if value.dtype == np.dtype("V2") else value


def read_legacy(path: str):
  """``(params, layers, hw)`` of an old experiments file.

  Returns:
    The nested variables tree (``{'params': ...}``, compressed kernels
    decompressed), the ``{path: CompressedLayer}`` and the hardware spec.

  Raises:
    ValueError: ``path`` is not such a file, or it is damaged.
  """
  try:
    with np.load(path, allow_pickle=False) as f:
      items = {name: f[name] for name in f.files}
    hw = rsjax.HardwareSpec.from_dict(json.loads(str(items.pop("::hardware"))))
    layers, flat = {}, {}
    for name, value in items.items():
      if name.endswith("::codebook"):
        p = name[:-len("::codebook")]
        layers[p] = rsjax.CompressedLayer(
            jnp.asarray(_array(value)),
            jnp.asarray(items[f"{p}::index"].astype(np.int32)),
            tuple(int(d) for d in items[f"{p}::kernel_shape"]))
      elif not name.endswith(_SUFFIXES):
        flat[name] = _array(value)
  except FileNotFoundError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
        f"{path} is not a readable experiments compressed_model.npz "
        f"(PATH::codebook entries and '::hardware'): "
        f"{type(e).__name__}: {e}") from e
  for p, layer in layers.items():
    flat[p] = np.asarray(layer.to_kernel())
  params: dict[str, Any] = {}
  for p, leaf in flat.items():
    node = params
    *parents, last = p.split("/")
    for key in parents:
      node = node.setdefault(key, {})
    node[last] = leaf
  return params, layers, hw


def convert(old_path: str, new_path: str,
            metadata: Mapping[str, Any] | None = None) -> None:
  """Writes the model of an old experiments file in rsjax's format.

  Args:
    old_path: a ``compressed_model.npz`` written by the old
      ``experiments.compression_stages.export_compressed``.
    new_path: the rsjax file to write (``rsjax.load_compressed`` reads it;
      its ``params`` is the whole model).
    metadata: stored with it, besides ``converted_from`` (the old file's
      name).
  """
  params, layers, hw = read_legacy(old_path)
  rsjax.save_compressed(
      new_path, layers, hw,
      {"converted_from": os.path.basename(old_path), **(metadata or {})},
      params=params)


def _main(argv):
  if len(argv) != 3:
    raise SystemExit("usage: python -m experiments.convert_legacy OLD.npz "
                     "NEW.npz")
  convert(argv[1], argv[2])
  print(f"wrote {argv[2]}")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  app.run(_main)
