"""Whole-model emulation of Flax Linen models (``nn.intercept_methods``).

See :mod:`rsjax.kernels.model` for what is calibrated, folded and emulated.
"""

from __future__ import annotations

from typing import Any, Iterable

from flax import linen as nn

from rsjax._src import hardware
from rsjax.kernels import model as model_lib


def _linen_name(mod) -> str:
  return "/".join(str(p) for p in mod.path)


def prepare_linen(model: nn.Module, variables, batches: Iterable[Any],
                  hw: hardware.HardwareSpec, *, rules: str = r".*",
                  **kwargs) -> dict[str, model_lib.EmulatedLayer]:
  """Calibrates and programs a Linen model's layers (see module).

  :func:`calibrate_linen`, then :func:`rsjax.kernels.program`.

  Args:
    model: the Linen module.
    variables: its variables (``params``, ``batch_stats``...).
    batches: a few input batches (positional input of ``model.apply``).
    hw: the hardware.
    rules: regex over ``'params/<module path>/kernel'``.
    **kwargs: the programming options of :func:`rsjax.kernels.program`
      (``per``, ``nonideal``, ``key``, ``dataflow``, ``fold_bn``,
      ``compressed`` keyed by module path, ``signed_scheme``,
      ``index_and_add``); any other keyword goes to ``model.apply`` (e.g.
      ``train=False``).

  Returns:
    ``{module path: EmulatedLayer}`` for :func:`emulate_linen`.
  """
  options, apply_kwargs = model_lib.split_options(kwargs)
  calib = calibrate_linen(model, variables, batches, rules=rules,
                          **apply_kwargs)
  return model_lib.program(calib, hw, **options)


def calibrate_linen(model: nn.Module, variables, batches: Iterable[Any], *,
                    rules: str = r".*", **apply_kwargs
                    ) -> model_lib.Calibration:
  """Runs a Linen model on calibration batches and records its layers.

  The first half of :func:`prepare_linen`, for programming one model many
  times with :func:`rsjax.kernels.program` (other hardware, fault seeds)
  without running it again.

  Args:
    model, variables, batches, rules: as :func:`prepare_linen`.
    **apply_kwargs: passed to ``model.apply`` (e.g. ``train=False``).

  Returns:
    The :class:`rsjax.kernels.Calibration`.
  """
  stats = model_lib.Stats(rules, "Dense/Conv")

  def record(next_fun, args, kwargs, ctx):
    mod = ctx.module
    if ctx.method_name != "__call__" or not args:
      return next_fun(*args, **kwargs)
    name = _linen_name(mod)
    if (isinstance(mod, (nn.Dense, nn.Conv))
        and stats.matches(f"params/{name}/kernel")):
      p = mod.variables["params"]
      return stats.layer(
          name, args[0], lambda x: next_fun(x, *args[1:], **kwargs),
          kernel=p["kernel"], bias=p.get("bias"),
          conv=mod if isinstance(mod, nn.Conv) else None)
    if isinstance(mod, nn.BatchNorm):
      p, running = mod.variables["params"], mod.variables["batch_stats"]
      stats.batchnorm(args[0], name, mean=running["mean"],
                      var=running["var"], scale=p.get("scale"),
                      offset=p.get("bias"), epsilon=mod.epsilon)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    return stats.record(
        batches, lambda batch: model.apply(variables, batch, **apply_kwargs))


def emulate_linen(model: nn.Module, variables, x, layers, *, key=None,
                  **apply_kwargs):
  """``model.apply(variables, x)`` with ``layers`` on crossbars.

  Args:
    model, variables: as for :func:`prepare_linen`.
    x: the input batch.
    layers: from :func:`prepare_linen` (or :func:`rsjax.kernels.program`).
    key: read-noise key (one per layer is folded from it).
    **apply_kwargs: passed to ``model.apply``.

  Returns:
    The model output.
  """
  keys = model_lib.layer_keys(layers, key)
  folded = model_lib.folded_batchnorms(layers)

  def emulate(next_fun, args, kwargs, ctx):
    if ctx.method_name != "__call__" or not args:
      return next_fun(*args, **kwargs)
    name = _linen_name(ctx.module)
    if name in layers and isinstance(ctx.module, (nn.Dense, nn.Conv)):
      return model_lib.run_layer(layers[name], args[0], keys[name])
    if name in folded and isinstance(ctx.module, nn.BatchNorm):
      return args[0]
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(emulate):
    return model.apply(variables, x, **apply_kwargs)
