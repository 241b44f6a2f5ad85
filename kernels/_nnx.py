"""Whole-model emulation and training of Flax NNX models.

The NNX half of :mod:`rsjax.kernels.api` (module swapping); see
:mod:`rsjax.kernels.model` for what is calibrated, folded and emulated.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable

from flax import nnx

from rsjax._src import hardware
from rsjax.kernels import crossbar
from rsjax.kernels import training as hwaware_lib
from rsjax.kernels import model as model_lib

MAPPED = (nnx.Linear, nnx.Conv)


class _Recorder(nnx.Module):
  """Stands in for a layer or BatchNorm during NNX calibration."""

  def __init__(self, inner, name, stats):
    self.inner = inner
    self.name = name
    self.stats = stats

  def __call__(self, x):
    m = self.inner
    if isinstance(m, nnx.BatchNorm):
      self.stats.batchnorm(
          x, self.name, mean=m.mean[...], var=m.var[...],
          scale=None if m.scale is None else m.scale[...],
          offset=None if m.bias is None else m.bias[...], epsilon=m.epsilon)
      return m(x)
    return self.stats.layer(
        self.name, x, m, kernel=m.kernel[...],
        bias=None if m.bias is None else m.bias[...],
        conv=m if isinstance(m, nnx.Conv) else None)


class _Emulated(nnx.Module):
  """An NNX layer replaced by its crossbar emulation."""

  def __init__(self, layer: model_lib.EmulatedLayer, key=None):
    self.layer = nnx.data(layer)
    self.key = None if key is None else nnx.data(key)

  def __call__(self, x):
    return model_lib.run_layer(self.layer, x, self.key)


class _Identity(nnx.Module):

  def __call__(self, x):
    return x


def swap(model, make):
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


def name(path) -> str:
  """An NNX attribute path, ``'a/0/b'``."""
  return "/".join(str(p) for p in path)


def _unmapped_kind(node) -> str | None:
  """The class name of a module with its own kernel that isn't mapped.

  ``nnx.Einsum``, ``nnx.LinearGeneral``, ``nnx.ConvTranspose`` and any
  custom module with a ``kernel`` param: the emulator would run it in float.
  """
  if isinstance(node, MAPPED):
    return None
  kernel = getattr(node, "kernel", None)
  return type(node).__name__ if isinstance(kernel, nnx.Param) else None


def calibrate(model: nnx.Module, batches: Iterable[Any], *,
              rules: str = r".*", on_unmapped: str = "warn", **call_kwargs
              ) -> model_lib.Calibration:
  """Runs an NNX model on calibration batches and records its layers.

  The model is not modified (a clone is calibrated).

  Args:
    model, batches, rules, on_unmapped: as :func:`rsjax.kernels.calibrate`.
    **call_kwargs: passed to the model's call.

  Returns:
    The :class:`rsjax.kernels.Calibration`.
  """
  stats = model_lib.Stats(rules, "Linear/Conv", on_unmapped)
  probe = nnx.clone(model)

  def make(path, node):
    path = name(path)
    if ((isinstance(node, MAPPED) and stats.matches(f"{path}/kernel"))
        or isinstance(node, nnx.BatchNorm)):
      return _Recorder(node, path, stats)
    kind = _unmapped_kind(node)
    if kind is not None:
      stats.unmapped(path, kind, f"{path}/kernel")
    return None

  swap(probe, make)
  return stats.record(batches, lambda batch: probe(batch, **call_kwargs))


def emulate(model: nnx.Module, layers, *, key=None) -> nnx.Module:
  """A copy of ``model`` whose ``layers`` run on the emulator.

  Args:
    model: the NNX model (eval mode).
    layers: from :func:`rsjax.kernels.program`.
    key: read-noise key (folded per layer); a fixed part of the copy.

  Returns:
    The emulated copy; call it like the model (also under ``jax.jit``).
  """
  emulated = nnx.clone(model)
  keys = model_lib.layer_keys(layers, key)
  folded = model_lib.folded_batchnorms(layers)

  def make(path, node):
    path = name(path)
    if path in layers and isinstance(node, MAPPED):
      return _Emulated(layers[path], keys[path])
    if path in folded and isinstance(node, nnx.BatchNorm):
      return _Identity()
    return None

  swap(emulated, make)
  return emulated


class _HwLayer(nnx.Module):
  """Runs a wrapped NNX Linear/Conv on the emulator (its own params)."""

  def __init__(self, inner, run):
    self.inner = inner
    self.run = run

  def __call__(self, x):
    m = self.inner
    conv = model_lib.conv_config(m) if isinstance(m, nnx.Conv) else None
    bias = m.bias[...] if m.bias is not None else None
    return self.run(x, m.kernel[...], bias, conv)


@contextlib.contextmanager
def hwaware(model: nnx.Module, hw: hardware.HardwareSpec,
            calib: hwaware_lib.HwCalibration, *, key=None, device=None,
            wires=None, adc=None, per: str = "layer",
            backward: str = "ste", saturation: dict | None = None):
  """Within the context, ``model``'s calibrated layers run on the emulator.

  The layers are swapped in place and restored on exit, so the params stay
  the model's own (gradients reach them, BatchNorm statistics update).

  Args: as :func:`rsjax.kernels.hwaware`.

  Yields:
    ``model``.
  """
  hwaware_lib.check_training(calib, hw, backward, per)
  phys = crossbar.physics(hw, device=device, wires=wires, adc_model=adc)
  order = {n: i for i, n in enumerate(sorted(calib.x_scales))}
  swapped = {}

  def make(path, node):
    layer = name(path)
    if layer not in order or not isinstance(node, MAPPED):
      return None
    swapped[path] = node
    return _HwLayer(node, lambda x, k, b, c, layer=layer: hwaware_lib.run_layer(
        layer, calib, hw, x, k, b, c, order, key, phys, per, backward,
        saturation))

  swap(model, make)
  try:
    yield model
  finally:
    swap(model, lambda path, node: swapped.get(path)
         if isinstance(node, _HwLayer) else None)
