"""Whole-model emulation of Flax NNX models (module swapping).

See :mod:`rsjax.kernels.model` for what is calibrated, folded and emulated.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from flax import nnx
import jax

from rsjax._src import hardware
from rsjax.kernels import model as model_lib


class _Recorder(nnx.Module):
  """Stands in for a layer or BatchNorm during NNX calibration."""

  def __init__(self, inner, name, stats, layer):
    self.inner = inner
    self.name = name
    self.stats = stats
    self.layer = layer

  def __call__(self, x):
    m = self.inner
    if not self.layer:
      self.stats.batchnorm(x, self.name, (
          m.scale[...] if m.scale is not None else 1.0,
          m.bias[...] if m.bias is not None else 0.0,
          m.mean[...], m.var[...], m.epsilon))
      return m(x)
    conv = None
    if isinstance(m, nnx.Conv):
      conv = model_lib.conv_config(m.kernel_size, m.strides, m.padding,
                                   m.kernel_dilation, m.input_dilation,
                                   m.feature_group_count)
    self.stats.see(self.name, x, {
        "kernel": m.kernel[...],
        "bias": m.bias[...] if m.bias is not None else None, "conv": conv})
    return self.stats.output(self.name, m(x))


class _Emulated(nnx.Module):
  """An NNX layer replaced by its crossbar emulation."""

  def __init__(self, layer: model_lib.EmulatedLayer, index: int, key=None):
    self.layer = nnx.data(layer)
    self.index = index
    self.key = None if key is None else nnx.data(key)

  def __call__(self, x):
    key = None if self.key is None else jax.random.fold_in(self.key,
                                                           self.index)
    return model_lib.run_layer(self.layer, x, key)


class _Identity(nnx.Module):

  def __call__(self, x):
    return x


def _swap(model, make):
  """Replaces the modules ``make(path, node)`` returns a substitute for."""
  for path, node in list(nnx.iter_graph(model)):
    if not path or not isinstance(node, nnx.Module):
      continue
    new = make(path, node)
    if new is None:
      continue
    parent = model
    for p in path[:-1]:
      parent = parent[p] if isinstance(p, int) else getattr(parent, p)
    if isinstance(path[-1], int):
      parent[path[-1]] = new
    else:
      setattr(parent, path[-1], new)


def _nnx_name(path) -> str:
  return "/".join(str(p) for p in path)


def prepare_nnx(model: nnx.Module, batches: Iterable[Any],
                hw: hardware.HardwareSpec, *, rules: str = r".*",
                per: str = "layer", nonideal=None, key=None,
                dataflow: str = "auto", fold_bn: bool = True,
                compressed=None, signed_scheme: str = "two_pass",
                index_and_add: bool = True
                ) -> dict[str, model_lib.EmulatedLayer]:
  """Calibrates and programs an NNX model's layers (see module).

  The model is not modified (a clone is calibrated); put it in eval mode.
  Arguments as :func:`rsjax.kernels.prepare_linen`; rules match
  ``'<attribute path>/kernel'``, e.g. ``'conv1/kernel'``, and ``compressed``
  is keyed by attribute path.

  Returns:
    ``{attribute path: EmulatedLayer}`` for :func:`emulate_nnx`.
  """
  return model_lib.program(
      calibrate_nnx(model, batches, rules=rules), hw, per=per,
      nonideal=nonideal, key=key, dataflow=dataflow, fold_bn=fold_bn,
      compressed=compressed, signed_scheme=signed_scheme,
      index_and_add=index_and_add)


def calibrate_nnx(model: nnx.Module, batches: Iterable[Any], *,
                  rules: str = r".*") -> model_lib.Calibration:
  """Runs an NNX model on calibration batches and records its layers.

  The first half of :func:`prepare_nnx` (see
  :func:`rsjax.kernels.calibrate_linen`); the model is not modified.

  Args:
    model, batches, rules: as :func:`prepare_nnx`.

  Returns:
    The :class:`rsjax.kernels.Calibration`.
  """
  regex = re.compile(rules)
  stats = model_lib.Stats()
  probe = nnx.clone(model)

  def make(path, node):
    name = _nnx_name(path)
    if (isinstance(node, (nnx.Linear, nnx.Conv))
        and regex.search(f"{name}/kernel")):
      return _Recorder(node, name, stats, True)
    if isinstance(node, nnx.BatchNorm):
      return _Recorder(node, name, stats, False)
    return None

  _swap(probe, make)
  for batch in batches:
    stats.produced.clear()
    stats.alive.clear()
    probe(batch)
  if not stats.layers:
    raise ValueError(f"no Linear/Conv layer matched the rules {rules!r}")
  return model_lib.calibration(stats)


def emulate_nnx(model: nnx.Module, layers, *, key=None) -> nnx.Module:
  """A copy of ``model`` whose ``layers`` run on the emulator.

  Args:
    model: the NNX model (eval mode).
    layers: from :func:`prepare_nnx` (or :func:`rsjax.kernels.program`).
    key: read-noise key (folded per layer); a fixed part of the copy.

  Returns:
    The emulated copy; call it like the model (also under ``nnx.jit``).
  """
  emulated = nnx.clone(model)
  order = {name: i for i, name in enumerate(sorted(layers))}
  folded = {layer.folded for layer in layers.values()
            if layer.folded is not None}

  def make(path, node):
    name = _nnx_name(path)
    if name in layers and isinstance(node, (nnx.Linear, nnx.Conv)):
      return _Emulated(layers[name], order[name], key)
    if name in folded and isinstance(node, nnx.BatchNorm):
      return _Identity()
    return None

  _swap(emulated, make)
  return emulated
