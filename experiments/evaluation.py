"""The pipeline's last stages: the exported model, read back and evaluated.

``export`` writes the whole compressed model with
:func:`rsjax.save_compressed`; ``evaluate`` and ``adc_sweep`` read that file
back (:func:`rsjax.load_compressed`) and run it in float, quantized and on
the crossbar emulator (:mod:`rsjax.kernels`). :func:`crossbar_layers` and
:func:`emulated_accuracy` serve the ``hwaware`` stage too.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import rsjax
from rsjax import kernels as rk

from experiments import array as array_lib
from experiments import distributed
from experiments import models as models_lib

log = logging.getLogger(__name__)


def crossbar_layers(run, params) -> dict[str, rsjax.CompressedLayer]:
  """Every Dense/Conv kernel of ``params`` as a ``CompressedLayer``.

  Planned layers are read off their exact values (:func:`rsjax.
  to_compressed`); the others, kept dense, are mapped to crossbars as they
  are (an identity index). Keys are variable paths (``'params/...'``).
  """
  planned = (rsjax.to_compressed(params, rules=run.rules, hw=run.hw)
             if run.recipe.compresses else {})
  leaves = dict(rsjax.named_leaves(params))
  out = {}
  for path in rsjax.kernel_paths(params):
    layer = planned.get(path)
    if layer is None:
      layer = rsjax.CompressedLayer.from_kernel(leaves[path],
                                                run.hw.block_shape)
    out[f"params/{path}"] = layer
  return out


def export(run) -> dict[str, Any]:
  """Writes the whole compressed model (``compressed_model.rsjax.npz``),
  with the hwaware stage's calibration when it ran."""
  variables = run.latest_variables()
  layers = crossbar_layers(run, variables["params"])
  metadata = {"model": run.config.model.name,
              "dataset": run.config.data.name,
              "recipe": run.recipe_json, "provenance": run.provenance}
  calibration = None
  if run.applies("hwaware"):
    with open(run.calibration_file, encoding="utf-8") as f:
      calibration = json.load(f)
  if distributed.is_primary():  # the others read it after the stage
    rsjax.save_compressed(run.model_file, layers, run.hw, metadata=metadata,
                          params=variables, calibration=calibration)
  return {"file": os.path.basename(run.model_file), "layers": list(layers),
          "calibration": calibration is not None}


def load_model(run):
  """``(variables, layers, calibration)`` of the exported model file (jnp
  arrays; the calibration it was trained with on the emulator, or None)."""
  model = rsjax.load_compressed(run.model_file, hw=run.hw)
  variables = jax.tree_util.tree_map(jnp.asarray, model.params)
  return variables, dict(model.layers), model.calibration


def calibration_for(calibration, hw: rsjax.HardwareSpec):
  """The saved ``calibration`` where it fits ``hw`` (else None: calibrate
  from data)."""
  if calibration is None:
    return None
  calib = rk.HwCalibration.from_dict(calibration)
  return calib if calib.hw == hw else None


def calibration_label(run, calibration) -> str:
  """How an emulated accuracy was calibrated, for its results entry."""
  if calibration is not None:
    return "hwaware training (input scales and ADC ranges it ended with)"
  return (f"data: {run.config.eval.calibration_batches} batches of "
          "emulation images")


def quantized(variables, hw: rsjax.HardwareSpec):
  """``variables`` with every kernel quantized to ``hw.weight_bits``.

  One scale per layer, as a stored shared block serves several output
  columns whose integers must agree.
  """
  crossbar = set(rsjax.kernel_paths(variables["params"]))

  def one(keypath, x):
    if rsjax.path_str(keypath) not in crossbar:
      return x
    q, scale = rsjax.quantize_weights(x, hw.weight_bits, per="layer")
    return rsjax.dequantize(q, scale)

  params = jax.tree_util.tree_map_with_path(one, variables["params"])
  return {**variables, "params": params}


def emulated_accuracy(model, variables, layers, hw: rsjax.HardwareSpec,
                      batches: Callable[[], Any], *, key,
                      calibration_batches: int = 2,
                      array_models=None, calibration=None) -> float:
  """Accuracy with every crossbar layer on the emulator.

  Layers run the index-and-add dataflow from their codebooks (one layer
  scale) and index tables; input scales are calibrated on the first
  ``calibration_batches`` of ``batches()``.

  Args:
    model: the Linen model (inference mode).
    variables: its variables (compressed kernels in place).
    layers: ``{'params/...': CompressedLayer}``.
    hw: the hardware, ADC included.
    batches: returns an iterable of batches (``image``, ``label``,
      ``mask``).
    key: for the non-idealities.
    calibration_batches: how many batches calibrate the input scales.
    array_models: ``{'device', 'wires', 'adc'}`` of the real array
      (:func:`experiments.array.models`), or None for the ideal one.
    calibration: the ``rk.HwCalibration`` a hardware-aware training ended
      with (the model is programmed with its scales and ranges, BatchNorm
      digital), or None: calibrated on the batches.
  """
  first = [b["image"] for _, b in zip(range(calibration_batches), batches())]
  plans = rk.program(rk.calibrate(model, first, variables=variables,
                                  train=False),
                     hw, compressed=layers, calibration=calibration, key=key,
                     **(array_models or {}))
  device = (array_models or {}).get("device")
  reads = device is not None and device.reads
  k_read = jax.random.fold_in(key, 1)
  # Read noise is fresh on every read: each batch reads with its own key.
  forward = jax.jit(lambda x, k: rk.emulate(
      model, plans, variables=variables, key=k if reads else None)(
          x, train=False))
  counts = np.zeros(2)  # correct, total
  for i, b in enumerate(batches()):
    # Processes take turns (the counts are summed below): each emulates on
    # its own devices, with the same calibrated plans.
    if i % jax.process_count() != jax.process_index():
      continue
    logits = forward(b["image"], jax.random.fold_in(k_read, i))
    hit = jnp.argmax(logits, -1) == b["label"]
    mask = jnp.asarray(b["mask"], jnp.float32)
    counts += [float(jnp.sum(hit.astype(jnp.float32) * mask)),
               float(jnp.sum(mask))]
  correct, total = distributed.sum_over_processes(counts)
  return float(correct / max(total, 1.0))


def run_emulated(run, variables, layers, hw, key, *,
                 ideal_adc: bool = False, calibration=None) -> float:
  """:func:`emulated_accuracy` of the run's model on its emulation batches,
  on the run's array (``config.array``; ``ideal_adc`` leaves its converter
  ideal, for a lossless reference)."""
  models = array_lib.for_run(run.config, run.key, hw, adc=not ideal_adc)
  return emulated_accuracy(
      run.compress_model, variables, layers, hw, run.emulation_batches,
      key=key, calibration_batches=run.config.eval.calibration_batches,
      array_models=models, calibration=calibration)


def evaluate(run) -> dict[str, Any]:
  """Float, quantized, compressed and emulated accuracy."""
  variables, layers, saved = load_model(run)
  base = run.compress_base()
  model = run.compress_model
  emulated = calibration = None
  if run.config.eval.emulate:
    calibration = calibration_for(saved, run.hw)
    emulated = run_emulated(run, variables, layers, run.hw,
                            jax.random.fold_in(run.key, 2),
                            calibration=calibration)
  else:
    log.info("emulated evaluation skipped: eval.emulate is False")
  return {
      "emulated_calibration": (calibration_label(run, calibration)
                               if run.config.eval.emulate else None),
      "float": run.results("train")["accuracy_float"],
      "quantized": run.evaluate(model, quantized(base, run.hw)),
      "compressed": run.evaluate(model, variables),
      "compressed_quantized": run.evaluate(model,
                                           quantized(variables, run.hw)),
      "emulated": emulated,
  }


def model_report(run, variables, layers) -> dict[str, Any]:
  """:func:`rsjax.compression_report` of the run's model, each layer with
  its crossbar MVMs per inference (a conv's output pixels)."""
  return models_lib.inference_report(run.compress_model, variables, layers,
                                     run.hw, run.info.image_shape)


def adc_sweep(run) -> dict[str, Any]:
  """Emulated accuracy and energy per inference at each of
  ``eval.adc_bits``.

  The energy (:func:`rsjax.hardware_cost`, pJ) is that of the layout the
  model runs in (:attr:`Recipe.layout`: ``shared``, ``pruned`` or
  ``dense``); None at a resolution :class:`rsjax.CostModel` has no ADC
  figure for.
  """
  if not run.config.eval.emulate:
    log.info("ADC-bit sweep skipped: it runs on the crossbar emulator and "
             "eval.emulate is False")
    return {"sweep": [], "skipped": "eval.emulate is False"}
  variables, layers, saved = load_model(run)
  report = model_report(run, variables, layers)
  layout = run.recipe.layout
  sweep = []
  for bits in run.config.eval.adc_bits:
    hw = run.hw.replace(adc_bits=int(bits))
    calibration = calibration_for(saved, hw)
    acc = run_emulated(run, variables, layers, hw,
                       jax.random.fold_in(run.key, 3),
                       calibration=calibration)
    energy = models_lib.inference_energy(report, hw, (layout,))
    energy = None if energy is None else energy[layout]
    log.info("ADC %d bits: accuracy %.4f, %s energy %s pJ", bits, acc,
             layout, "n/a" if energy is None else f"{energy:.4g}")
    sweep.append({"adc_bits": int(bits), "accuracy": acc,
                  "energy_pj": energy, "layout": layout,
                  "calibration": calibration_label(run, calibration)})
  return {"sweep": sweep}
