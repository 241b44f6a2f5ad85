"""The pipeline's entry point into compression and emulation.

Every stage of :mod:`experiments.pipeline` that depends on rsjax's training
transforms (pruning, sharing), the report, or the crossbar emulator
(``rsjax.kernels``) goes through this module, so the pipeline stays about
stages, checkpoints and files.

Kernels are passed as ``{path: kernel}`` dicts (Dense ``[in, out]`` or Conv
``[kh, kw, cin, cout]``), compressed layers as ``{path: CompressedLayer}``
(rsjax's compressed model format). :func:`export_compressed` writes the
whole model (biases too) as one ``.npz``; :func:`export_rsjax` the crossbar
layers in rsjax's checksummed format.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tempfile
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import rsjax

log = logging.getLogger(__name__)



def _ous(kernel, hw: rsjax.HardwareSpec):
  return rsjax.to_ous(rsjax.to_crossbar_matrix(kernel), hw.block_shape)


def _from_ous(ous, kernel_shape):
  rows = int(np.prod(kernel_shape[:-1]))
  matrix = rsjax.from_ous(ous, (rows, kernel_shape[-1]))
  return rsjax.from_crossbar_matrix(matrix, kernel_shape)


def atomic_write(path: str, payload: bytes | str) -> None:
  """Writes a file so readers see the old or the new one, never half."""
  mode = "wb" if isinstance(payload, bytes) else "w"
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
  try:
    with os.fdopen(fd, mode) as f:
      f.write(payload)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """Nested dicts from ``{'params/conv1/kernel': leaf}`` (see named_leaves)."""
  out: dict[str, Any] = {}
  for path, leaf in flat.items():
    node = out
    *parents, last = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = leaf
  return out


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


SHARE_METHODS = ("paper", "ste")


def parse_layer_k(spec: str) -> list[tuple[str, int]]:
  """``'conv1=1024,head=16'`` -> ``[('conv1', 1024), ('head', 16)]``.

  Each comma-separated ``REGEX=K`` entry gives the layers whose kernel path
  (``'conv1/conv/kernel'``) ``re.search``-es ``REGEX`` their own ``k``; the
  first matching entry wins. The search is unanchored (``conv1`` also
  matches ``stage1_block0/conv1/kernel``), so anchor where it matters:
  ``^conv1/``. A regex cannot hold a comma; the last ``=`` splits. A ``K`` at
  least the layer's column-group count leaves the layer unshared (every
  block stored), as prune-only runs do. Spaces around entries and ``=`` are
  ignored.

  Raises:
    ValueError: naming the entry, for a missing ``=``, a bad regex or a ``K``
      that is not an integer >= 1.
  """
  out = []
  for entry in (e.strip() for e in spec.split(",")):
    if not entry:
      continue
    pattern, sep, k = entry.rpartition("=")
    pattern, k = pattern.strip(), k.strip()
    if not sep or not pattern:
      raise ValueError(f"share.layer_k entry {entry!r} is not REGEX=K")
    try:
      re.compile(pattern)
    except re.error as e:
      raise ValueError(f"share.layer_k entry {entry!r}: bad regex: {e}"
                       ) from None
    try:
      k_int = int(k)
    except ValueError:
      k_int = 0
    if k_int < 1:
      raise ValueError(f"share.layer_k entry {entry!r}: K must be an integer "
                       f">= 1, got {k!r}")
    out.append((pattern, k_int))
  return out


def sharing_rules(paths: Iterable[str], k: int, sparsity: float,
                  layer_k: str = "") -> list[rsjax.Rule]:
  """One :class:`rsjax.Rule` per crossbar layer.

  Args:
    paths: kernel paths within the params tree (``'conv1/kernel'``).
    k: stored blocks per row-block.
    sparsity: the OU pruning fraction; the prune stage already zeroed
      exactly these lowest-norm blocks, so the wrapper's masks pick them and
      keep them zero through sharing, fine-tune and export.
    layer_k: per-layer ``k`` overrides, ``'REGEX=K,...'`` (see
      :func:`parse_layer_k`); '' gives every layer ``k``.

  Raises:
    ValueError: if ``layer_k`` is malformed or one of its entries takes no
      layer (a typo would silently share that layer at ``k``; an entry after
      one that already took its layers would silently do nothing).
  """
  paths = list(paths)
  overrides = parse_layer_k(layer_k)
  used = set()
  rules = []
  for p in paths:
    layer_k_of_p = k
    for i, (pattern, override) in enumerate(overrides):
      if re.search(pattern, p):
        layer_k_of_p = override
        used.add(i)
        break
    rules.append(rsjax.Rule("^" + re.escape(p) + "$", k=layer_k_of_p,
                            sparsity=sparsity))
  unused = [pattern for i, (pattern, _) in enumerate(overrides)
            if i not in used]
  if unused:
    raise ValueError(f"share.layer_k entries {unused} match no crossbar "
                     f"layer (that an earlier entry did not take); layers "
                     f"are {paths}")
  return rules


def sharing_transform(method: str, inner, rules, hw: rsjax.HardwareSpec, *,
                      key, recluster_every: int, lam: float, n_init: int):
  """The optax wrapper of a sharing method around ``inner``.

  ``'paper'``: :func:`rsjax.distance_sharing` (``lam * ||W - Z||^2``,
  re-clustering every ``recluster_every`` steps); ``'ste'``:
  :func:`rsjax.ste_sharing` (forward on Z, straight-through gradient).
  """
  if method == "ste":
    return rsjax.ste_sharing(inner, rules, hw, key=key, n_init=n_init,
                             recluster_every=recluster_every)
  if method == "paper":
    return rsjax.distance_sharing(inner, rules, hw, key=key, lam=lam,
                                  n_init=n_init,
                                  recluster_every=recluster_every)
  raise ValueError(f"share method must be one of {SHARE_METHODS}, got "
                   f"{method!r}")


def finish_sharing(method: str, params, opt_state, *, key, n_init: int):
  """The hard projection ``W := Z`` that ends the sharing stage.

  The paper's loop re-clusters from the final ``W`` first (its ``Z`` was
  fixed since the last re-clustering); STE's ``Z`` already follows ``W``.

  Returns:
    ``(projected params, opt_state)``.
  """
  if method == "paper":
    opt_state = rsjax.recluster(params, opt_state, key, n_init=n_init)
  return rsjax.project(params, opt_state), opt_state


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
  emulated = rk.prepare_linen(model, params, calibration, hw,
                              compressed=dict(layers), key=key, train=False)
  run = jax.jit(lambda x: rk.emulate_linen(model, params, x, emulated,
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
  atomic_write(path, buf.getvalue())


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
  return unflatten(flat), layers, hw


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
