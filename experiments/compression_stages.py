"""ADAPTER: the pipeline's single entry point into compression and emulation.

Every stage of :mod:`experiments.pipeline` that depends on rsjax's training
transforms (pruning, sharing), the report, or the crossbar emulator
(``rsjax.kernels``) calls a function of this module and nothing else. The
bodies here are minimal working implementations built on what rsjax exports
today (lowering, OU tiling, ``compress_kernel``, ``quantize_weights``); they
are meant to be replaced by the dedicated APIs without touching the pipeline.
Keep the signatures.

Kernels are passed as ``{path: kernel}`` dicts (Dense ``[in, out]`` or Conv
``[kh, kw, cin, cout]``), compressed layers as ``{path: CompressedLayer}``
(rsjax's compressed model format). The export (:func:`export_compressed`)
is a plain ``.npz`` until rsjax's own compressed-model file format replaces
it here.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import rsjax

log = logging.getLogger(__name__)

_HIGHEST = jax.lax.Precision.HIGHEST
# Recorded in the results: which sharing algorithm produced them.
SHARE_IMPLEMENTATION = "adapter: one-shot k-means + projected fine-tune"


def _ous(kernel, hw: rsjax.HardwareSpec):
  return rsjax.to_ous(rsjax.to_crossbar_matrix(kernel), hw.block_shape)


def _from_ous(ous, kernel_shape):
  rows = int(np.prod(kernel_shape[:-1]))
  matrix = rsjax.from_ous(ous, (rows, kernel_shape[-1]))
  return rsjax.from_crossbar_matrix(matrix, kernel_shape)


def prune(kernels: Mapping[str, jax.Array], hw: rsjax.HardwareSpec,
          ratio: float) -> dict[str, jax.Array]:
  """Zeroes the fraction ``ratio`` of OU blocks of smallest L2 norm per layer.

  Args:
    kernels: ``{path: kernel}``.
    hw: the hardware; its ``block_shape`` is the OU weight block.
    ratio: in ``[0, 1)``; ``floor(ratio * blocks)`` blocks of each layer are
      zeroed (at least one block survives).

  Returns:
    ``{path: pruned kernel}`` (all-zero blocks are pruned for the sharing
    stage and the hardware alike).
  """
  if not 0.0 <= ratio < 1.0:
    raise ValueError(f"prune ratio must be in [0, 1), got {ratio}")
  out = {}
  for path, kernel in kernels.items():
    ous = _ous(jnp.asarray(kernel), hw)
    norms = jnp.sqrt(jnp.sum(ous * ous, axis=(2, 3))).reshape(-1)
    n_prune = min(int(ratio * norms.shape[0]), norms.shape[0] - 1)
    keep = jnp.ones(norms.shape, bool)
    if n_prune:
      keep = keep.at[jnp.argsort(norms)[:n_prune]].set(False)
    keep = keep.reshape(ous.shape[:2])
    ous = jnp.where(keep[:, :, None, None], ous, jnp.zeros((), ous.dtype))
    out[path] = _from_ous(ous, tuple(kernel.shape))
  return out


def share(kernels: Mapping[str, jax.Array], hw: rsjax.HardwareSpec, k: int,
          *, key, method: str = "paper", n_init: int = 4
          ) -> dict[str, rsjax.CompressedLayer]:
  """OU-level weight sharing: k-means of each row-block's blocks.

  This minimal version clusters once (``rsjax.compress_kernel``) for both
  methods; the paper loop (regularised training + re-clustering) and the
  STE variant replace it with the training-transforms API.

  Args:
    kernels: ``{path: kernel}``, pruned blocks all zero.
    hw: the hardware.
    k: stored blocks per row-block.
    key: a ``jax.random`` key.
    method: ``'paper'`` or ``'ste'``.
    n_init: k-means restarts.

  Returns:
    ``{path: CompressedLayer}``.
  """
  if method not in ("paper", "ste"):
    raise ValueError(f"share method must be 'paper' or 'ste', got {method!r}")
  log.info("sharing (%s requested): one-shot k-means per row-block, k=%d; "
           "the fine-tune stage then trains the shared structure", method, k)
  keys = jax.random.split(key, max(len(kernels), 1))
  return {path: rsjax.compress_kernel(kernel, hw, k, key=sub, n_init=n_init)
          for (path, kernel), sub in zip(sorted(kernels.items()), keys)}


def _cluster_means(ous, index, num_slots: int):
  """Per row-block means of the blocks assigned to each stored block."""
  onehot = jax.nn.one_hot(index, num_slots, dtype=ous.dtype)  # -1 -> zeros
  sums = jnp.einsum("rgk,rgij->rkij", onehot, ous, precision=_HIGHEST)
  counts = jnp.sum(onehot, axis=1)
  means = sums / jnp.maximum(counts, 1.0)[:, :, None, None]
  return onehot, means


def project(kernels: Mapping[str, jax.Array],
            layers: Mapping[str, rsjax.CompressedLayer],
            hw: rsjax.HardwareSpec) -> dict[str, jax.Array]:
  """Re-imposes the shared structure: each block := its cluster's mean.

  Assignments stay fixed (no re-clustering); pruned blocks stay zero. Pure
  and jit-able: the fine-tune step applies it after every update.

  Args:
    kernels: ``{path: kernel}`` for every path of ``layers``.
    layers: the compressed layers giving each block's assignment.
    hw: the hardware.

  Returns:
    ``{path: projected kernel}``.
  """
  out = {}
  for path, layer in layers.items():
    kernel = kernels[path]
    ous = _ous(kernel, hw)
    onehot, means = _cluster_means(ous, layer.index, layer.codebook.shape[1])
    ous = jnp.einsum("rgk,rkij->rgij", onehot, means, precision=_HIGHEST)
    out[path] = _from_ous(ous, tuple(kernel.shape))
  return out


def to_compressed(kernels: Mapping[str, jax.Array],
                  layers: Mapping[str, rsjax.CompressedLayer],
                  hw: rsjax.HardwareSpec) -> dict[str, rsjax.CompressedLayer]:
  """The compressed layers of fine-tuned kernels (same index tables)."""
  out = {}
  for path, layer in layers.items():
    ous = _ous(kernels[path], hw)
    _, means = _cluster_means(ous, layer.index, layer.codebook.shape[1])
    out[path] = rsjax.CompressedLayer(means.astype(layer.codebook.dtype),
                                      layer.index, layer.kernel_shape)
  return out


def quantize(kernels: Mapping[str, jax.Array], hw: rsjax.HardwareSpec
             ) -> dict[str, jax.Array]:
  """Kernels quantized to ``hw.weight_bits`` (one scale per layer), in float.

  A per-layer scale because a stored shared block serves several output
  columns (see ``rsjax.quantize_weights``).
  """
  out = {}
  for path, kernel in kernels.items():
    q, scale = rsjax.quantize_weights(kernel, hw.weight_bits, per="layer")
    out[path] = rsjax.dequantize(q, scale)
  return out


def emulated_accuracy(model, params,
                      layers: Mapping[str, rsjax.CompressedLayer],
                      hw: rsjax.HardwareSpec,
                      batches: Callable[[], Iterable[Mapping[str, Any]]],
                      *, enabled: bool, key,
                      calibration_batches: int = 2) -> float | None:
  """Accuracy with every crossbar layer run on the emulator.

  Dense/Conv layers of ``layers`` run the index-and-add dataflow from their
  codebook (quantized with one layer scale) and index table; every other
  Dense/Conv layer runs as a dense crossbar. Input scales are calibrated on
  the first ``calibration_batches`` batches.

  Args:
    model: the BN-free Flax model.
    params: its ``{'params': ...}`` (compressed layers written back).
    layers: the compressed layers to emulate (index-and-add).
    hw: the hardware, including ``adc_bits``/``adc_mode``.
    batches: a callable returning an iterable of eval batches (``image``,
      ``label``, ``mask``).
    enabled: whether emulation is asked for.
    key: a ``jax.random`` key for non-idealities.
    calibration_batches: batches used to calibrate the input scales.

  Returns:
    The accuracy, or ``None`` when not ``enabled``.
  """
  if not enabled:
    return None
  from rsjax import kernels as rk  # pylint: disable=g-import-not-at-top
  calibration = [b["image"] for _, b in zip(range(calibration_batches),
                                            batches())]
  plans = rk.prepare_linen(model, params, calibration, hw,
                           compressed=dict(layers), key=key, train=False)
  run = jax.jit(lambda x: rk.emulate_linen(model, params, x, plans,
                                           train=False))
  correct = total = 0.0
  for b in batches():
    hit = (jnp.argmax(run(b["image"]), -1) == b["label"]).astype(jnp.float32)
    mask = jnp.asarray(b["mask"], jnp.float32)
    correct += float(jnp.sum(hit * mask))
    total += float(jnp.sum(mask))
  return correct / max(total, 1.0)


def compression_report(layers: Mapping[str, rsjax.CompressedLayer],
                       hw: rsjax.HardwareSpec,
                       positions: Mapping[str, int] | None
                       ) -> dict[str, Any] | None:
  """``rsjax.compression_report`` if rsjax has it yet, else ``None``.

  Returns:
    ``{'layers': {path: figures}, 'total': figures, ...}`` or ``None``.
  """
  report_fn = getattr(rsjax, "compression_report", None)
  if report_fn is None:
    return None
  return report_fn(dict(layers), hw, dict(positions) if positions else None)


def export_compressed(path: str, params, layers: Mapping[
    str, rsjax.CompressedLayer], hw: rsjax.HardwareSpec) -> None:
  """Writes the compressed model atomically as one ``.npz``.

  Per compressed layer ``PATH::codebook``, ``PATH::index``,
  ``PATH::kernel_shape``; every other parameter (biases) under its path;
  the hardware under ``::hardware`` (JSON). Paths are
  ``'params/conv1/conv/kernel'`` style.
  """
  arrays = {}
  for p, layer in layers.items():
    arrays[f"{p}::codebook"] = np.asarray(layer.codebook)
    arrays[f"{p}::index"] = np.asarray(layer.index)
    arrays[f"{p}::kernel_shape"] = np.asarray(layer.kernel_shape, np.int64)
  for p, x in rsjax.named_leaves(params):
    if p not in layers:
      arrays[p] = np.asarray(x)
  arrays["::hardware"] = np.asarray(json.dumps(hw.to_dict()))
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  # Temp file + os.replace: a reader sees the old file or the new, never half.
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                             prefix=".tmp-")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(buf.getvalue())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def load_compressed(path: str):
  """The inverse of :func:`export_compressed`.

  Returns:
    ``(params, layers, hw)``: the nested ``{'params': ...}`` with every
    compressed kernel decompressed, the ``{path: CompressedLayer}`` and the
    :class:`rsjax.HardwareSpec`.
  """
  with np.load(path) as f:
    items = {k: f[k] for k in f.files}
  hw = rsjax.HardwareSpec.from_dict(json.loads(str(items.pop("::hardware"))))
  layers, flat = {}, {}
  for k, v in items.items():
    if k.endswith("::codebook"):
      p = k[:-len("::codebook")]
      layers[p] = rsjax.CompressedLayer(
          jnp.asarray(v), jnp.asarray(items[f"{p}::index"]),
          tuple(int(d) for d in items[f"{p}::kernel_shape"]))
    elif "::" not in k:
      flat[k] = jnp.asarray(v)
  for p, layer in layers.items():
    flat[p] = layer.to_kernel()
  params: dict[str, Any] = {}
  for p, x in flat.items():
    node = params
    *parents, last = p.split("/")
    for name in parents:
      node = node.setdefault(name, {})
    node[last] = x
  return params, layers, hw


def export_rsjax(path: str, layers: Mapping[str, rsjax.CompressedLayer],
                 hw: rsjax.HardwareSpec, metadata: Mapping[str, Any]
                 ) -> bool:
  """The compressed layers in rsjax's own format, if rsjax has it yet.

  ``rsjax.save_compressed`` stores the crossbar layers only (codebooks,
  packed index tables, quantized codebooks), not biases: the full model is
  in :func:`export_compressed`'s file.

  Returns:
    Whether the file was written (False: rsjax has no ``save_compressed``).
  """
  save_fn = getattr(rsjax, "save_compressed", None)
  if save_fn is None:
    return False
  save_fn(path, dict(layers), hw, metadata=dict(metadata))
  return True
