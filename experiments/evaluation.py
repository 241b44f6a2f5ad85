"""The pipeline's last stages: the exported model, read back and evaluated.

``evaluate`` and ``adc_sweep`` read the file the ``export`` stage wrote
(:func:`rsjax.load_compressed`) and run it in float, quantized and on the
crossbar emulator (:mod:`rsjax.kernels`), through :class:`Emulation`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import rsjax
from rsjax import kernels as rk

from experiments import distributed
from experiments import models as models_lib

log = logging.getLogger(__name__)


def crossbar_layers(params, rules, hw: rsjax.HardwareSpec
                    ) -> dict[str, rsjax.CompressedLayer]:
  """Every crossbar kernel of ``params`` as a ``CompressedLayer``, keyed by
  variable path (``'params/...'``): the planned ones (``rules``; None: no
  compression) read off their exact values, the others as they are
  (:func:`rsjax.to_compressed` with ``dense_fallback``)."""
  layers = rsjax.to_compressed(params, rules=rules, hw=hw,
                               dense_fallback=True)
  return {f"params/{path}": layer for path, layer in layers.items()}


def load_model(path: str, hw: rsjax.HardwareSpec):
  """``(variables, layers, calibration)`` of an exported model file (jnp
  arrays; the calibration it was trained with on the emulator, or None)."""
  model = rsjax.load_compressed(path, hw=hw)
  variables = jax.tree_util.tree_map(jnp.asarray, model.params)
  return variables, dict(model.layers), model.calibration


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


class Emulation:
  """A model on the crossbar emulator: calibrated once, programmed for any
  hardware, run batch by batch.

  The programmed plans are an argument of the one jitted forward, so every
  programming of one hardware (fault seeds, another array, a training's
  calibration) reuses its compilation. The pipeline's evaluation, ADC sweep
  and ``hwaware`` stage and the study's sweeps all emulate through it.

  Args:
    model: the Linen model (run in inference mode).
    variables: its variables (compressed kernels in place).
    layers: ``{'params/...': CompressedLayer}`` (:func:`crossbar_layers`).
    calibration_images: the batches that calibrate the input scales (on
      first use).
  """

  def __init__(self, model, variables, layers, calibration_images):
    self.model, self.variables, self.layers = model, variables, layers
    self._images = list(calibration_images)
    self._calibration = None
    # logits(plans, images, key=None): the emulated logits of images
    # (key: fresh read noise).
    self.logits = jax.jit(lambda plans, x, key=None: rk.emulate(
        model, plans, variables=variables, key=key)(x, train=False))

  @property
  def calibration(self) -> rk.Calibration:
    """The data calibration (:func:`rsjax.kernels.calibrate`), run once."""
    if self._calibration is None:
      self._calibration = rk.calibrate(self.model, self._images,
                                       variables=self.variables, train=False)
    return self._calibration

  def program(self, hw: rsjax.HardwareSpec, *, key=None, calibration=None,
              **options):
    """:func:`rsjax.kernels.program` of the model on ``hw``.

    Args:
      hw: the hardware, ADC included.
      key: for the programming non-idealities.
      calibration: the ``rk.HwCalibration`` a hardware-aware training ended
        with (its scales and ranges, BatchNorm digital), or None: the data
        calibration.
      **options: ``index_and_add``, ``dataflow``, ``device``, ``wires``,
        ``adc`` of :func:`rsjax.kernels.program`.
    """
    return rk.program(self.calibration, hw, compressed=self.layers,
                      calibration=calibration, key=key, **options)


def emulated_accuracy(emulation: Emulation, hw: rsjax.HardwareSpec,
                      batches: Callable[[], Any], *, key,
                      array_models=None, calibration=None) -> float:
  """Accuracy with every crossbar layer on the emulator.

  Args:
    emulation: the model (:class:`Emulation`).
    hw: the hardware, ADC included.
    batches: returns an iterable of batches (``image``, ``label``,
      ``mask``); on several processes they take turns.
    key: for the non-idealities.
    array_models: ``{'device', 'wires', 'adc'}`` of the real array
      (:func:`experiments.array.models`), or None for the ideal one.
    calibration: see :meth:`Emulation.program`.
  """
  models = array_models or {}
  plans = emulation.program(hw, key=key, calibration=calibration, **models)
  device = models.get("device")
  reads = device is not None and device.reads
  k_read = jax.random.fold_in(key, 1)
  counts = np.zeros(2)  # correct, total
  for i, b in enumerate(batches()):
    # Processes take turns (the counts are summed below): each emulates on
    # its own devices, with the same calibrated plans.
    if i % jax.process_count() != jax.process_index():
      continue
    # Read noise is fresh on every read: each batch reads with its own key.
    logits = emulation.logits(
        plans, b["image"], jax.random.fold_in(k_read, i) if reads else None)
    hit = jnp.argmax(logits, -1) == b["label"]
    mask = jnp.asarray(b["mask"], jnp.float32)
    counts += [float(jnp.sum(hit.astype(jnp.float32) * mask)),
               float(jnp.sum(mask))]
  correct, total = distributed.sum_over_processes(counts)
  return float(correct / max(total, 1.0))


@dataclasses.dataclass(frozen=True)
class EmulationSetup:
  """How a run emulates: on which images, calibrated how, on which array.

  Attributes:
    batches: returns an iterable of the emulation batches (``image``,
      ``label``, ``mask``).
    calibration_batches: how many of them calibrate the input scales (the
      ``hwaware`` stage: how many training batches).
    array: ``(hw, adc=True) -> {'device', 'wires', 'adc'}``, the run's real
      array (:func:`experiments.array.models`); ``adc=False`` leaves its
      converter ideal, for a lossless reference.
  """

  batches: Callable[[], Iterable[Mapping[str, Any]]]
  calibration_batches: int
  array: Callable[..., dict[str, Any]]

  def emulation(self, model, variables, layers) -> Emulation:
    """``model`` on the emulator, calibrated on the first
    ``calibration_batches`` emulation batches."""
    images = [b["image"] for _, b in zip(range(self.calibration_batches),
                                         self.batches())]
    return Emulation(model, variables, layers, images)

  def accuracy(self, emulation: Emulation, hw: rsjax.HardwareSpec, key, *,
               ideal_adc: bool = False, calibration=None) -> float:
    """:func:`emulated_accuracy` on the emulation batches and the array."""
    return emulated_accuracy(emulation, hw, self.batches, key=key,
                             array_models=self.array(hw, adc=not ideal_adc),
                             calibration=calibration)

  def label(self, calibration) -> str:
    """How an emulated accuracy was calibrated, for its results entry."""
    if calibration is not None:
      return "hwaware training (input scales and ADC ranges it ended with)"
    return f"data: {self.calibration_batches} batches of emulation images"

  def file_accuracy(self, emulation: Emulation, hw: rsjax.HardwareSpec, key,
                    saved) -> tuple[float, str]:
    """:meth:`accuracy` and its :meth:`label`, with a model file's ``saved``
    calibration where it fits ``hw`` (else calibrated from data)."""
    calib = None if saved is None else rk.HwCalibration.from_dict(saved)
    calib = calib if calib is not None and calib.hw == hw else None
    return (self.accuracy(emulation, hw, key, calibration=calib),
            self.label(calib))


def evaluate(path: str, *, model, base, hw: rsjax.HardwareSpec, accuracy,
             emulator: EmulationSetup | None, key) -> dict[str, Any]:
  """Quantized, compressed and emulated accuracy of the exported model.

  Args:
    path: the model file (:func:`rsjax.save_compressed`).
    model: its model; ``base``: the float variables it was compressed from.
    hw: the hardware.
    accuracy: ``(model, variables) -> test accuracy``.
    emulator: how to emulate, or None: no emulated accuracy.
    key: for the emulator's non-idealities.
  """
  variables, layers, saved = load_model(path, hw)
  emulated = label = None
  if emulator is not None:
    emulated, label = emulator.file_accuracy(
        emulator.emulation(model, variables, layers), hw, key, saved)
  else:
    log.info("emulated evaluation skipped: eval.emulate is False")
  return {
      "emulated_calibration": label,
      "quantized": accuracy(model, quantized(base, hw)),
      "compressed": accuracy(model, variables),
      "compressed_quantized": accuracy(model, quantized(variables, hw)),
      "emulated": emulated,
  }


def adc_sweep(path: str, *, model, hw: rsjax.HardwareSpec, adc_bits,
              layout: str, image_shape, emulator: EmulationSetup | None,
              key) -> dict[str, Any]:
  """Emulated accuracy and energy per inference of the exported model at
  each of ``adc_bits``.

  The energy (:func:`rsjax.hardware_cost`, pJ) is that of ``layout``, the
  layout the model runs in (:attr:`experiments.recipe.Recipe.layout`:
  ``shared``, ``pruned`` or ``dense``); None at a resolution
  :class:`rsjax.CostModel` has no ADC figure for. ``emulator`` None skips
  the sweep.
  """
  if emulator is None:
    log.info("ADC-bit sweep skipped: it runs on the crossbar emulator and "
             "eval.emulate is False")
    return {"sweep": [], "skipped": "eval.emulate is False"}
  variables, layers, saved = load_model(path, hw)
  report = models_lib.inference_report(model, variables, layers, hw,
                                       image_shape)
  em = emulator.emulation(model, variables, layers)
  sweep = []
  for bits in adc_bits:
    hw_bits = hw.replace(adc_bits=int(bits))
    acc, label = emulator.file_accuracy(em, hw_bits, key, saved)
    energy = models_lib.inference_energy(report, hw_bits, (layout,))
    energy = None if energy is None else energy[layout]
    log.info("ADC %d bits: accuracy %.4f, %s energy %s pJ", bits, acc,
             layout, "n/a" if energy is None else f"{energy:.4g}")
    sweep.append({"adc_bits": int(bits), "accuracy": acc,
                  "energy_pj": energy, "layout": layout,
                  "calibration": label})
  return {"sweep": sweep}
