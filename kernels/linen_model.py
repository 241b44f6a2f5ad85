"""Whole-model emulation of Flax Linen models (``nn.intercept_methods``).

See :mod:`rsjax.kernels.model` for what is calibrated, folded and emulated.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from flax import linen as nn
import jax

from rsjax._src import hardware
from rsjax.kernels import model as model_lib


def _linen_name(mod) -> str:
  return "/".join(str(p) for p in mod.path)


def prepare_linen(model: nn.Module, variables, batches: Iterable[Any],
                  hw: hardware.HardwareSpec, *, rules: str = r".*",
                  per: str = "layer", nonideal=None, key=None,
                  dataflow: str = "auto", fold_bn: bool = True,
                  compressed=None, signed_scheme: str = "two_pass",
                  index_and_add: bool = True, **apply_kwargs
                  ) -> dict[str, model_lib.EmulatedLayer]:
  """Calibrates and programs a Linen model's layers (see module).

  Args:
    model: the Linen module.
    variables: its variables (``params``, ``batch_stats``...).
    batches: a few input batches (positional input of ``model.apply``).
    hw: the hardware.
    rules: regex over ``'params/<module path>/kernel'``.
    per: weight scale per ``'layer'`` or ``'column'``.
    nonideal, key, dataflow: as :func:`rsjax.kernels.prepare`.
    fold_bn: fold a BatchNorm that directly follows a layer.
    compressed: ``{path: rsjax.CompressedLayer}`` of shared layers (module
      path, or ``'params/<path>/kernel'``): these run the index-and-add
      dataflow on their codebook, quantized with one layer scale, and index
      table (the module's kernel is not used); their BatchNorm stays digital.
      Calibrate with ``variables`` holding the decompressed kernels, so that
      downstream input scales see the compressed model's activations.
    signed_scheme: how layers with negative inputs are fed: ``'two_pass'``
      or ``'twos_complement'`` (see :class:`rsjax.kernels.EmulatedLayer`).
    index_and_add: False programs the ``compressed`` layers densely
      instead: the same decompressed, quantized matrix and digital
      BatchNorm as index-and-add, on any hardware (the dense layout of the
      same compressed model, e.g. to compare dataflows or to map it onto
      other OU shapes).
    **apply_kwargs: passed to ``model.apply`` (e.g. ``train=False``).

  Returns:
    ``{module path: EmulatedLayer}`` for :func:`emulate_linen`.
  """
  calib = calibrate_linen(model, variables, batches, rules=rules,
                          **apply_kwargs)
  return model_lib.program(
      calib, hw, per=per, nonideal=nonideal, key=key, dataflow=dataflow,
      fold_bn=fold_bn, compressed=compressed, signed_scheme=signed_scheme,
      index_and_add=index_and_add)


def calibrate_linen(model: nn.Module, variables, batches: Iterable[Any], *,
                    rules: str = r".*", **apply_kwargs
                    ) -> model_lib.Calibration:
  """Runs a Linen model on calibration batches and records its layers.

  The first half of :func:`prepare_linen`, for programming one model many
  times with :func:`rsjax.kernels.program` (other hardware, fault seeds)
  without running it again.

  Args:
    model, variables, batches, rules, **apply_kwargs: as
      :func:`prepare_linen`.

  Returns:
    The :class:`rsjax.kernels.Calibration`.
  """
  regex = re.compile(rules)
  stats = model_lib.Stats()

  def record(next_fun, args, kwargs, ctx):
    mod = ctx.module
    if ctx.method_name != "__call__" or not args:
      return next_fun(*args, **kwargs)
    name = _linen_name(mod)
    if (isinstance(mod, (nn.Dense, nn.Conv))
        and regex.search(f"params/{name}/kernel")):
      p = mod.variables["params"]
      conv = None
      if isinstance(mod, nn.Conv):
        conv = model_lib.conv_config(
            mod.kernel_size, mod.strides, mod.padding, mod.kernel_dilation,
            mod.input_dilation, mod.feature_group_count)
      stats.see(name, args[0], {"kernel": p["kernel"],
                                "bias": p.get("bias"), "conv": conv})
      return stats.output(name, next_fun(*args, **kwargs))
    if isinstance(mod, nn.BatchNorm):
      v = mod.variables
      stats.batchnorm(args[0], name, (
          v["params"].get("scale", 1.0), v["params"].get("bias", 0.0),
          v["batch_stats"]["mean"], v["batch_stats"]["var"], mod.epsilon))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    for batch in batches:
      stats.produced.clear()
      stats.alive.clear()
      model.apply(variables, batch, **apply_kwargs)
  if not stats.layers:
    raise ValueError(f"no Dense/Conv layer matched the rules {rules!r}")
  return model_lib.calibration(stats)


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
  order = {name: i for i, name in enumerate(sorted(layers))}
  folded = {layer.folded for layer in layers.values()
            if layer.folded is not None}

  def emulate(next_fun, args, kwargs, ctx):
    if ctx.method_name != "__call__" or not args:
      return next_fun(*args, **kwargs)
    name = _linen_name(ctx.module)
    if name in layers and isinstance(ctx.module, (nn.Dense, nn.Conv)):
      layer_key = (None if key is None
                   else jax.random.fold_in(key, order[name]))
      return model_lib.run_layer(layers[name], args[0], layer_key)
    if name in folded and isinstance(ctx.module, nn.BatchNorm):
      return args[0]
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(emulate):
    return model.apply(variables, x, **apply_kwargs)
