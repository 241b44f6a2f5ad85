"""Saving a compressed model to one file and loading it back bit-exact.

The file is a NumPy ``.npz`` archive (readable with ``np.load`` alone):

- ``__meta__``: UTF-8 JSON: format name and version, the hardware spec, user
  metadata, and per layer its name, kernel shape, grid and dtypes.
- per layer ``i``: ``L{i}.codebook`` (the float codebook; bfloat16 is kept as
  its raw 16 bits), ``L{i}.codebook_q`` (integers at ``weight_bits``, one
  layer scale, as the hardware stores them), ``L{i}.scale``,
  ``L{i}.index_packed`` (each row-block's codes ``index + 1`` bit-packed at
  ``ceil(log2(max code + 1))`` bits, LSB first) and ``L{i}.index_widths``.
- ``__sha256__``: a digest of the metadata and every array, checked on load,
  so a corrupted or edited file is an error, never a silently wrong model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import zipfile
import zlib
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from rsjax._src import compressed as compressed_lib
from rsjax._src import hardware
from rsjax._src import lowering
from rsjax._src import quantize

FORMAT = "rsjax-compressed"
VERSION = 1


@dataclasses.dataclass(frozen=True)
class CompressedModel:
  """What :func:`load_compressed` returns.

  Attributes:
    layers: ``{name: CompressedLayer}`` with the saved float codebooks.
    hw: the hardware spec the model was compressed for.
    quantized: ``{name: (codebook_q, scale)}``: integer codebooks at
      ``hw.weight_bits`` and their float32 layer scale.
    metadata: the user metadata saved with it.
  """

  layers: dict[str, compressed_lib.CompressedLayer]
  hw: hardware.HardwareSpec
  quantized: dict[str, tuple[np.ndarray, np.ndarray]]
  metadata: dict[str, Any]


def pack_index(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Bit-packs an index table ``[R, G]`` (``-1`` = pruned).

  Returns:
    ``(packed uint8, widths [R] uint8)``: row ``r`` uses ``widths[r]`` bits a
    code, the least bits that hold its largest code ``index + 1``.
  """
  codes = np.asarray(index, np.int64) + 1
  if codes.size and codes.min() < 0:
    raise ValueError("index values must be >= -1")
  widths = np.array([int(m).bit_length() for m in codes.max(axis=1)]
                    if codes.shape[1] else [0] * codes.shape[0], np.uint8)
  max_width = int(widths.max()) if widths.size else 0
  bits = (codes[:, :, None] >> np.arange(max_width)) & 1
  mask = np.arange(max_width)[None, None, :] < widths[:, None, None]
  flat = bits[np.broadcast_to(mask, bits.shape)].astype(np.uint8)
  return np.packbits(flat, bitorder="little"), widths


def unpack_index(packed: np.ndarray, widths: np.ndarray,
                 num_groups: int) -> np.ndarray:
  """The inverse of :func:`pack_index`: ``[R, G]`` int32."""
  widths = np.asarray(widths, np.int64)
  max_width = int(widths.max()) if widths.size else 0
  total = int(widths.sum()) * num_groups
  flat = np.unpackbits(np.asarray(packed, np.uint8), bitorder="little")
  if flat.size < total or flat.size - total >= 8:
    raise ValueError(
        f"packed index holds {flat.size} bits, expected {total} (+ padding)")
  mask = np.arange(max_width)[None, None, :] < widths[:, None, None]
  mask = np.broadcast_to(mask, (widths.size, num_groups, max_width))
  bits = np.zeros(mask.shape, np.int64)
  bits[mask] = flat[:total]
  codes = np.sum(bits << np.arange(max_width), axis=-1)
  return (codes - 1).astype(np.int32)


def _codebook_to_numpy(codebook) -> tuple[np.ndarray, str]:
  dtype = jnp.result_type(codebook)
  array = np.asarray(codebook)
  if dtype == jnp.bfloat16:  # npz has no bfloat16: keep the raw bits.
    return array.view(np.uint16), "bfloat16"
  return array, str(array.dtype)


def _codebook_from_numpy(array: np.ndarray, dtype: str):
  if dtype == "bfloat16":
    return jnp.asarray(array.view(jnp.bfloat16))
  return jnp.asarray(array.astype(np.dtype(dtype), copy=False))


def _digest(meta_bytes: bytes, arrays: Mapping[str, np.ndarray]) -> str:
  h = hashlib.sha256(meta_bytes)
  for name in sorted(arrays):
    a = np.ascontiguousarray(arrays[name])
    h.update(f"{name}|{a.dtype.str}|{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def save_compressed(path: str | os.PathLike,
                    layers: Mapping[str, compressed_lib.CompressedLayer],
                    hw: hardware.HardwareSpec,
                    metadata: Mapping[str, Any] | None = None) -> None:
  """Writes a compressed model to ``path`` (atomically: never half a file).

  Args:
    path: the file; ``.npz`` is not appended.
    layers: ``{name: CompressedLayer}``.
    hw: the hardware spec (its ``block_shape`` must match every layer).
    metadata: JSON-serialisable extra information (model name, accuracy..).
  """
  if not layers:
    raise ValueError("save_compressed needs at least one layer")
  arrays: dict[str, np.ndarray] = {}
  layer_meta = []
  for i, (name, layer) in enumerate(layers.items()):
    if not isinstance(layer, compressed_lib.CompressedLayer):
      raise ValueError(f"layer {name!r} is not a CompressedLayer")
    if tuple(layer.block_shape) != hw.block_shape:
      raise ValueError(
          f"layer {name!r} has blocks {tuple(layer.block_shape)}, the "
          f"hardware {hw.block_shape}")
    codebook, dtype = _codebook_to_numpy(layer.codebook)
    q, scale = quantize.quantize_weights(layer.codebook, hw.weight_bits)
    packed, widths = pack_index(np.asarray(layer.index))
    arrays.update({
        f"L{i}.codebook": codebook,
        f"L{i}.codebook_q": np.asarray(q).astype(
            np.int8 if hw.weight_bits <= 8 else np.int16),
        f"L{i}.scale": np.asarray(scale, np.float32),
        f"L{i}.index_packed": packed,
        f"L{i}.index_widths": widths,
    })
    layer_meta.append({"name": name, "kernel_shape": list(layer.kernel_shape),
                       "grid": list(layer.index.shape),
                       "slots": int(layer.codebook.shape[1]),
                       "codebook_dtype": dtype})
  meta = {"format": FORMAT, "version": VERSION, "hardware": hw.to_dict(),
          "metadata": dict(metadata or {}), "layers": layer_meta}
  meta_bytes = json.dumps(meta, sort_keys=True).encode()
  arrays["__meta__"] = np.frombuffer(meta_bytes, np.uint8)
  arrays["__sha256__"] = np.frombuffer(
      _digest(meta_bytes, arrays).encode(), np.uint8)
  path = os.fspath(path)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                             suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez_compressed(f, **arrays)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _read_arrays(path: str) -> dict[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as npz:
      return {name: npz[name] for name in npz.files}
  except FileNotFoundError:
    raise
  except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError,
          KeyError) as e:
    raise ValueError(
        f"{path} is truncated, corrupted or not an rsjax compressed model: "
        f"{e}") from e


def load_compressed(path: str | os.PathLike,
                    hw: hardware.HardwareSpec | None = None
                    ) -> CompressedModel:
  """Reads a file written by :func:`save_compressed`, bit-exact.

  Args:
    path: the file.
    hw: if given, the hardware the caller expects; a file for another spec
      is an error.

  Returns:
    The :class:`CompressedModel`.

  Raises:
    ValueError: the file is truncated, corrupted, of another format or
      version, inconsistent, or for another hardware spec than ``hw``.
  """
  path = os.fspath(path)
  arrays = _read_arrays(path)
  if "__meta__" not in arrays or "__sha256__" not in arrays:
    raise ValueError(f"{path} is not an rsjax compressed model (no metadata)")
  meta_bytes = arrays.pop("__meta__").tobytes()
  digest = arrays.pop("__sha256__").tobytes().decode("ascii", "replace")
  if _digest(meta_bytes, {**arrays, "__meta__": np.frombuffer(
      meta_bytes, np.uint8)}) != digest:
    raise ValueError(f"{path} is corrupted: its checksum does not match")
  meta = json.loads(meta_bytes)
  if meta.get("format") != FORMAT:
    raise ValueError(f"{path} is not an rsjax compressed model")
  if meta.get("version") != VERSION:
    raise ValueError(
        f"{path} has format version {meta.get('version')}, this rsjax reads "
        f"version {VERSION}")
  saved_hw = hardware.HardwareSpec.from_dict(meta["hardware"])
  if hw is not None and hw != saved_hw:
    raise ValueError(
        f"{path} was compressed for {saved_hw}, not the expected {hw}")
  layers, quantized = {}, {}
  for i, info in enumerate(meta["layers"]):
    codebook = _codebook_from_numpy(arrays[f"L{i}.codebook"],
                                    info["codebook_dtype"])
    num_rows, num_groups = info["grid"]
    index = unpack_index(arrays[f"L{i}.index_packed"],
                         arrays[f"L{i}.index_widths"], num_groups)
    kernel_shape = tuple(info["kernel_shape"])
    rows = int(np.prod(kernel_shape[:-1]))
    expected = (num_rows, info["slots"]) + saved_hw.block_shape
    if (codebook.shape != expected or index.shape != (num_rows, num_groups) or
        lowering.grid_shape((rows, kernel_shape[-1]), saved_hw.block_shape)
        != (num_rows, num_groups) or index.max(initial=-1) >= info["slots"]):
      raise ValueError(f"{path}: layer {info['name']!r} is inconsistent")
    layers[info["name"]] = compressed_lib.CompressedLayer(
        codebook, jnp.asarray(index), kernel_shape)
    quantized[info["name"]] = (arrays[f"L{i}.codebook_q"].astype(np.int32),
                               arrays[f"L{i}.scale"])
  return CompressedModel(layers, saved_hw, quantized, meta["metadata"])
