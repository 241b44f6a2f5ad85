"""Whole-model emulation of Flax NNX models (module swapping).

See :mod:`rsjax.kernels.model` for what is calibrated, folded and emulated.
"""

from __future__ import annotations

from typing import Any, Iterable

from flax import nnx

from rsjax._src import hardware
from rsjax.kernels import model as model_lib


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
                hw: hardware.HardwareSpec, *, rules: str = r".*", **options
                ) -> dict[str, model_lib.EmulatedLayer]:
  """Calibrates and programs an NNX model's layers (see module).

  :func:`calibrate_nnx`, then :func:`rsjax.kernels.program`. The model is
  not modified (a clone is calibrated); put it in eval mode.

  Args:
    model: the NNX model.
    batches: a few input batches.
    hw: the hardware.
    rules: regex over ``'<attribute path>/kernel'``, e.g. ``'conv1/kernel'``.
    **options: the programming options of :func:`rsjax.kernels.program`
      (``compressed`` keyed by attribute path).

  Returns:
    ``{attribute path: EmulatedLayer}`` for :func:`emulate_nnx`.

  Raises:
    TypeError: for a keyword that is not a programming option.
  """
  options, unknown = model_lib.split_options(options)
  if unknown:
    raise TypeError(f"prepare_nnx got unknown keyword arguments "
                    f"{sorted(unknown)}")
  return model_lib.program(calibrate_nnx(model, batches, rules=rules), hw,
                           **options)


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
  stats = model_lib.Stats(rules, "Linear/Conv")
  probe = nnx.clone(model)

  def make(path, node):
    name = _nnx_name(path)
    if ((isinstance(node, (nnx.Linear, nnx.Conv))
         and stats.matches(f"{name}/kernel"))
        or isinstance(node, nnx.BatchNorm)):
      return _Recorder(node, name, stats)
    return None

  _swap(probe, make)
  return stats.record(batches, probe)


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
  keys = model_lib.layer_keys(layers, key)
  folded = model_lib.folded_batchnorms(layers)

  def make(path, node):
    name = _nnx_name(path)
    if name in layers and isinstance(node, (nnx.Linear, nnx.Conv)):
      return _Emulated(layers[name], keys[name])
    if name in folded and isinstance(node, nnx.BatchNorm):
      return _Identity()
    return None

  _swap(emulated, make)
  return emulated
