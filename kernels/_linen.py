"""Whole-model emulation and training of Flax Linen models.

The Linen half of :mod:`rsjax.kernels.api` (through
``nn.intercept_methods``); see :mod:`rsjax.kernels.model` for what is
calibrated, folded and emulated.
"""

from __future__ import annotations

from typing import Any, Iterable

from flax import linen as nn

from rsjax._src import hardware
from rsjax.kernels import crossbar
from rsjax.kernels import training as hwaware_lib
from rsjax.kernels import model as model_lib

MAPPED = (nn.Dense, nn.Conv)


def name(mod) -> str:
  """A Linen module's path, ``'a/b'``."""
  return "/".join(str(p) for p in mod.path)


def _unmapped_kind(mod) -> str | None:
  """The class name of a module with its own kernel that isn't mapped.

  ``nn.Einsum``, ``nn.DenseGeneral``, ``nn.ConvTranspose``, ``nn.ConvLocal``
  and any custom module that declares a ``kernel`` param: the emulator
  would run it in float.
  """
  if isinstance(mod, MAPPED):
    return None
  params = mod.variables.get("params", {})
  has_kernel = "kernel" in params and not isinstance(params["kernel"], dict)
  return type(mod).__name__ if has_kernel else None


def calibrate(model: nn.Module, variables, batches: Iterable[Any], *,
              rules: str = r".*", on_unmapped: str = "warn",
              **apply_kwargs) -> model_lib.Calibration:
  """Runs a Linen model on calibration batches and records its layers.

  Args:
    model, variables, batches, rules, on_unmapped: as
      :func:`rsjax.kernels.calibrate`.
    **apply_kwargs: passed to ``model.apply`` (e.g. ``train=False``).

  Returns:
    The :class:`rsjax.kernels.Calibration`.
  """
  stats = model_lib.Stats(rules, "Dense/Conv", on_unmapped)

  def record(next_fun, args, kwargs, ctx):
    mod = ctx.module
    if ctx.method_name != "__call__" or not args:
      return next_fun(*args, **kwargs)
    path = name(mod)
    if isinstance(mod, MAPPED) and stats.matches(f"params/{path}/kernel"):
      p = mod.variables["params"]
      return stats.layer(
          path, args[0], lambda x: next_fun(x, *args[1:], **kwargs),
          kernel=p["kernel"], bias=p.get("bias"),
          conv=mod if isinstance(mod, nn.Conv) else None)
    if isinstance(mod, nn.BatchNorm):
      p, running = mod.variables["params"], mod.variables["batch_stats"]
      stats.batchnorm(args[0], path, mean=running["mean"],
                      var=running["var"], scale=p.get("scale"),
                      offset=p.get("bias"), epsilon=mod.epsilon)
    kind = _unmapped_kind(mod)
    if kind is not None:
      stats.unmapped(path, kind, f"params/{path}/kernel")
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    return stats.record(
        batches, lambda batch: model.apply(variables, batch, **apply_kwargs))


def emulate(model: nn.Module, variables, x, layers, *, key=None,
            **apply_kwargs):
  """``model.apply(variables, x, **apply_kwargs)`` with ``layers`` emulated.

  Args:
    model, variables: the Linen module and its variables.
    x: the input batch.
    layers: from :func:`rsjax.kernels.program`.
    key: read-noise key (one per layer is folded from it).
    **apply_kwargs: passed to ``model.apply``.

  Returns:
    The model output.
  """
  keys = model_lib.layer_keys(layers, key)
  folded = model_lib.folded_batchnorms(layers)

  def run(next_fun, args, kwargs, ctx):
    if ctx.method_name != "__call__" or not args:
      return next_fun(*args, **kwargs)
    path = name(ctx.module)
    if path in layers and isinstance(ctx.module, MAPPED):
      return model_lib.run_layer(layers[path], args[0], keys[path])
    if path in folded and isinstance(ctx.module, nn.BatchNorm):
      return args[0]
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(run):
    return model.apply(variables, x, **apply_kwargs)


def hwaware_apply(model: nn.Module, variables, x, hw: hardware.HardwareSpec,
                  calib: hwaware_lib.HwCalibration, *, key=None, device=None,
                  wires=None, adc=None, per: str = "layer",
                  backward: str = "ste", saturation: dict | None = None,
                  **apply_kwargs):
  """``model.apply(variables, x)`` with the calibrated layers trained on hw.

  Args: as :func:`rsjax.kernels.hwaware`; ``**apply_kwargs`` go to
  ``model.apply`` (``train=True``, ``mutable``...).

  Returns:
    What ``model.apply`` returns.
  """
  hwaware_lib.check_training(calib, hw, backward, per)
  phys = crossbar.physics(hw, device=device, wires=wires, adc_model=adc)
  order = {n: i for i, n in enumerate(sorted(calib.x_scales))}

  def run(next_fun, args, kwargs, ctx):
    mod = ctx.module
    path = name(mod)
    if (ctx.method_name != "__call__" or not args or path not in order
        or not isinstance(mod, MAPPED)):
      return next_fun(*args, **kwargs)
    p = mod.variables["params"]
    conv = model_lib.conv_config(mod) if isinstance(mod, nn.Conv) else None
    return hwaware_lib.run_layer(path, calib, hw, args[0], p["kernel"],
                                 p.get("bias"), conv, order, key, phys, per,
                                 backward, saturation)

  with nn.intercept_methods(run):
    return model.apply(variables, x, **apply_kwargs)
