"""Saving a whole compressed model to one file and loading it back bit-exact.

The file is a NumPy ``.npz`` archive (readable with ``np.load`` alone; the
byte-level description is ``docs/format.md``):

- ``__meta__``: UTF-8 JSON: format name and version, the hardware spec, user
  metadata, per layer its name, kernel shape, grid and dtypes, the model's
  variables tree (or null), whose leaves name the array that holds them,
  and (version 3) the calibration a hardware-aware training ran with: input
  scales and ADC ranges per layer, with their hardware.
- per layer ``i``: ``L{i}.codebook`` (the float codebook; bfloat16 is kept as
  its raw 16 bits), ``L{i}.codebook_q`` (integers at ``weight_bits``, one
  layer scale, as the hardware stores them), ``L{i}.scale``,
  ``L{i}.index_packed`` (each row-block's codes ``index + 1`` bit-packed at
  ``ceil(log2(max code + 1))`` bits, LSB first) and ``L{i}.index_widths``.
- per stored parameter ``j``: ``P{j}``, every leaf of the tree
  except the compressed kernels, which are rebuilt from their layer.
- ``__sha256__``: a digest of the metadata and every array, checked on load,
  so a damaged or edited file is an error, never a silently wrong model.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, BinaryIO, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from rsjax._src import compressed as compressed_lib
from rsjax._src import hardware
from rsjax._src import lowering
from rsjax._src import model_file
from rsjax._src import paths
from rsjax._src import quantize

FORMAT = "rsjax-compressed"
VERSION = 2
# A file with a calibration: version 2 plus the ``calibration`` entry.
CALIBRATED_VERSION = 3
READABLE_VERSIONS = (2, 3)


@dataclasses.dataclass(frozen=True)
class CompressedModel:
  """What :func:`load_compressed` returns.

  Attributes:
    layers: ``{name: CompressedLayer}`` with the saved float codebooks.
    hw: the hardware spec the model was compressed for.
    quantized: ``{name: (codebook_q, scale)}``: integer codebooks at
      ``hw.weight_bits`` and their float32 layer scale.
    metadata: the user metadata saved with it.
    params: the whole variables tree as nested dicts (string keys) of NumPy
      arrays, each compressed kernel decompressed from its float codebook;
      ``None`` for a file saved without ``params``.
    calibration: the input scales and ADC ranges the model was trained
      with on the emulator (``HwCalibration.to_dict()``), or None. The
      emulator programs the model with them when given this
      ``CompressedModel`` (``rsjax.kernels.program``'s ``compressed``).
  """

  layers: dict[str, compressed_lib.CompressedLayer]
  hw: hardware.HardwareSpec
  quantized: dict[str, tuple[np.ndarray, np.ndarray]]
  metadata: dict[str, Any]
  params: dict[str, Any] | None = None
  calibration: dict[str, Any] | None = None


def _param_leaves(params) -> list[tuple[tuple[str, ...], str, Any]]:
  """``[(keys, path, leaf)]``; ``path`` as :func:`rsjax.named_leaves`."""
  flat, _ = jax.tree_util.tree_flatten_with_path(params)
  out, seen = [], set()
  for keypath, leaf in flat:
    if (keypath and isinstance(keypath[-1], jax.tree_util.GetAttrKey) and
        keypath[-1].name == "value"):  # an NNX Variable's value: no name
      keypath = keypath[:-1]
    keys = tuple(paths._key_name(k) for k in keypath)  # pylint: disable=protected-access
    path = "/".join(keys)
    if not keys:
      raise TypeError("params must be a tree (nested dicts or an NNX State) "
                      f"of arrays, got a {type(params).__name__}")
    if path in seen:
      raise ValueError(f"params holds the path {path!r} twice (keys that "
                       "are equal as strings)")
    seen.add(path)
    out.append((keys, path, leaf))
  return out


def _encode_params(params, layers: Mapping[str, Any],
                   arrays: dict[str, np.ndarray]) -> dict[str, Any]:
  """The tree's JSON (leaves ``[array name, dtype]``); fills ``arrays``."""
  leaves = _param_leaves(params)
  by_path = {path: leaf for _, path, leaf in leaves}
  for name in layers:
    if name not in by_path:
      kernel_paths = [p for p, x in by_path.items() if np.ndim(x) >= 2]
      near = [p for p in kernel_paths if p.endswith("/" + name)]
      raise ValueError(
          f"layer {name!r} is not a path in params"
          + (f" (did you mean {near[0]!r}?)" if near else "")
          + f"; its kernel paths are {kernel_paths}")
  layer_ids = {name: i for i, name in enumerate(layers)}
  tree: dict[str, Any] = {}
  num_stored = 0
  for keys, path, leaf in leaves:
    if path in layer_ids:
      shape = tuple(np.shape(leaf))
      if shape != tuple(layers[path].kernel_shape):
        raise ValueError(
            f"params leaf {path!r} has shape {shape}, its compressed layer "
            f"the kernel shape {tuple(layers[path].kernel_shape)}")
      dtype = np.dtype(leaf.dtype if hasattr(leaf, "dtype")
                       else np.asarray(leaf).dtype)
      spec = [f"L{layer_ids[path]}", dtype.name]
    else:
      try:
        stored, dtype_name = model_file.to_storable(np.asarray(leaf))
      except TypeError as e:
        raise TypeError(
            f"params leaf {path!r} ({type(leaf).__name__}) is not a numeric "
            f"array ({e}); store a PRNG key as jax.random.key_data(key)"
        ) from e
      spec = [f"P{num_stored}", dtype_name]
      arrays[spec[0]] = stored
      num_stored += 1
    node = tree
    for key in keys[:-1]:
      node = node.setdefault(key, {})
    node[keys[-1]] = spec
  return tree


def save_compressed(path: str | os.PathLike,
                    layers: Mapping[str, compressed_lib.CompressedLayer],
                    hw: hardware.HardwareSpec,
                    metadata: Mapping[str, Any] | None = None,
                    *, params=None, calibration=None) -> None:
  """Writes a compressed model to ``path`` (atomically: never half a file).

  Args:
    path: the file; ``.npz`` is not appended. Its directory must exist.
    layers: ``{path: CompressedLayer}``, e.g. from :func:`to_compressed`.
    hw: the hardware spec (its ``block_shape`` must match every layer).
    metadata: JSON-serialisable extra information (model name, accuracy..);
      NumPy and JAX scalars and arrays are stored as Python numbers and lists.
    params: the model's whole variables tree (Linen ``{'params': ...,
      'batch_stats': ...}`` or an NNX ``State``), for a file that holds the
      whole model. The leaf at each layer's path is not stored: it is rebuilt
      from the layer on load, so it must have the layer's kernel shape.
    calibration: the ``rsjax.kernels.HwCalibration`` a hardware-aware
      training ran with (or its ``to_dict()``), so that the loaded model is
      emulated with the input scales and ADC ranges it was tuned to.

  Raises:
    ValueError: no layers (and no ``params``), a layer for other hardware,
      a layer name that is not a path of ``params`` or of another shape.
    TypeError: a layer that is not a ``CompressedLayer``, metadata that is
      not JSON-serialisable, a ``params`` leaf that is not a numeric array.
    FileNotFoundError: the directory of ``path`` does not exist.
  """
  if not layers and params is None:
    raise ValueError("save_compressed needs at least one layer or params")
  user_metadata = model_file.jsonable(dict(metadata or {}), "metadata")
  arrays: dict[str, np.ndarray] = {}
  layer_meta = []
  for i, (name, layer) in enumerate(layers.items()):
    if not isinstance(layer, compressed_lib.CompressedLayer):
      raise TypeError(f"layer {name!r} is not a CompressedLayer but a "
                      f"{type(layer).__name__}")
    if tuple(layer.block_shape) != hw.block_shape:
      raise ValueError(
          f"layer {name!r} has blocks {tuple(layer.block_shape)}, the "
          f"hardware {hw.block_shape}")
    codebook, dtype = model_file.to_storable(np.asarray(layer.codebook))
    q, scale = quantize.quantize_weights(layer.codebook, hw.weight_bits)
    packed, widths = model_file.pack_index(np.asarray(layer.index))
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
  tree = None if params is None else _encode_params(params, layers, arrays)
  meta = {"format": FORMAT, "version": VERSION, "hardware": hw.to_dict(),
          "metadata": user_metadata, "layers": layer_meta, "params": tree}
  if calibration is not None:
    if hasattr(calibration, "to_dict"):
      calibration = calibration.to_dict()
    meta["calibration"] = model_file.jsonable(calibration, "calibration")
    # A reader that knows no calibration would drop it without a word.
    meta["version"] = CALIBRATED_VERSION
  meta_bytes = json.dumps(meta, sort_keys=True).encode()
  arrays["__meta__"] = np.frombuffer(meta_bytes, np.uint8)
  arrays["__sha256__"] = np.frombuffer(
      model_file.digest(meta_bytes, arrays).encode(), np.uint8)
  model_file.write_npz(path, arrays)


def _decode_layers(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                   saved_hw: hardware.HardwareSpec):
  """``(layers, quantized, kernels)`` from a checksum-verified file."""
  layers, quantized, kernels = {}, {}, []
  for i, info in enumerate(meta["layers"]):
    codebook = model_file.from_storable(arrays[f"L{i}.codebook"],
                                        info["codebook_dtype"])
    num_rows, num_groups = info["grid"]
    index = model_file.unpack_index(arrays[f"L{i}.index_packed"],
                         arrays[f"L{i}.index_widths"], num_groups)
    kernel_shape = tuple(int(d) for d in info["kernel_shape"])
    rows = int(np.prod(kernel_shape[:-1]))
    expected = (num_rows, info["slots"]) + saved_hw.block_shape
    if (codebook.shape != expected or index.shape != (num_rows, num_groups) or
        lowering.grid_shape((rows, kernel_shape[-1]), saved_hw.block_shape)
        != (num_rows, num_groups) or index.max(initial=-1) >= info["slots"]):
      raise ValueError(f"layer {info['name']!r} is inconsistent")
    # Decompressed in NumPy (compressed_lib.CompressedLayer on NumPy arrays):
    # reading a file compiles nothing.
    kernels.append(compressed_lib.CompressedLayer(
        codebook, index, kernel_shape).to_kernel())
    layers[info["name"]] = compressed_lib.CompressedLayer(
        jnp.asarray(codebook), jnp.asarray(index), kernel_shape)
    quantized[info["name"]] = (arrays[f"L{i}.codebook_q"].astype(np.int32),
                               arrays[f"L{i}.scale"])
  return layers, quantized, kernels


def _decode_tree(node, arrays: Mapping[str, np.ndarray],
                 kernels: list[np.ndarray]):
  if isinstance(node, dict):
    return {key: _decode_tree(child, arrays, kernels)
            for key, child in node.items()}
  source, dtype_name = node
  if source.startswith("L"):
    return kernels[int(source[1:])].astype(np.dtype(dtype_name))
  if not source.startswith("P"):
    raise ValueError(f"a params leaf names {source!r}")
  return model_file.from_storable(arrays[source], dtype_name)


def load_compressed(path: str | os.PathLike | BinaryIO,
                    hw: hardware.HardwareSpec | None = None
                    ) -> CompressedModel:
  """Reads a file written by :func:`save_compressed`, bit-exact.

  Args:
    path: the file (format version 2 or 3), or a binary file object.
    hw: if given, the hardware the caller expects; a file for another spec
      is an error.

  Returns:
    The :class:`CompressedModel`; its ``params`` is ``None`` for a file
    saved without ``params``.

  Raises:
    FileNotFoundError: no file at ``path``.
    ValueError: the file is damaged (truncated, corrupted, edited), not an
      rsjax compressed model, of a newer format version, or for another hardware spec than
      ``hw``. Every message names ``path``.
  """
  data, path = model_file.read_source(path)
  arrays = model_file.read_npz(data, path)
  if "__meta__" not in arrays or "__sha256__" not in arrays:
    raise model_file.damaged(path, "it has no rsjax metadata")
  meta_bytes = arrays.pop("__meta__").tobytes()
  digest = arrays.pop("__sha256__").tobytes()
  arrays_and_meta = {**arrays, "__meta__": np.frombuffer(meta_bytes, np.uint8)}
  if model_file.digest(meta_bytes, arrays_and_meta).encode() != digest:
    raise model_file.damaged(path, "its SHA-256 checksum does not match")
  try:
    meta = json.loads(meta_bytes.decode("utf-8"))
    file_format, version = meta.get("format"), meta.get("version")
  except Exception as e:  # pylint: disable=broad-except
    raise model_file.damaged(path, f"unreadable metadata ({e})") from e
  if file_format != FORMAT:
    raise model_file.damaged(path, f"its format is {file_format!r}")
  if version not in READABLE_VERSIONS:
    newer = (isinstance(version, int) and not isinstance(version, bool)
             and version > max(READABLE_VERSIONS))
    raise ValueError(
        f"{path} has format version {version!r}; this rsjax reads versions "
        f"{READABLE_VERSIONS}"
        + (" (a newer rsjax may read it)" if newer else
           " (version 1, before whole-model files, was never released)"
           if version == 1 else ""))
  try:
    saved_hw = hardware.HardwareSpec.from_dict(meta["hardware"])
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{path} holds an invalid hardware spec: {e}") from e
  if hw is not None and hw != saved_hw:
    raise ValueError(
        f"{path} was compressed for {saved_hw}, not the expected {hw}")
  try:
    layers, quantized, kernels = _decode_layers(meta, arrays, saved_hw)
    tree = meta["params"]
    params = None if tree is None else _decode_tree(tree, arrays, kernels)
    user_metadata = dict(meta["metadata"])
    calibration = meta.get("calibration") if version >= 3 else None
    if version >= 3 and not isinstance(calibration, dict):
      raise ValueError("a version-3 file without its calibration")
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
        f"{path} passes its checksum but is inconsistent (not written by "
        f"save_compressed?): {type(e).__name__}: {e}") from e
  return CompressedModel(layers, saved_hw, quantized, user_metadata, params,
                         calibration)
