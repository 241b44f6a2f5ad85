"""Hardware-aware training on the emulator: one layer, and the shared parts.

:func:`hwaware_layer` is one layer; :func:`rsjax.kernels.hwaware` and
:func:`rsjax.kernels.calibrate_hwaware` (:mod:`rsjax.kernels.api`) run whole
Linen and NNX models through it.

The forward pass runs every calibrated ``Dense``/``Conv`` (Linen) or
``Linear``/``Conv`` (NNX) through the crossbar emulator with the model's
*current* weights: they are quantized (``weight_bits``, max-abs scale),
programmed (:func:`rsjax.kernels.prepare`, with programming noise and faults
drawn from this step's key) and applied (:func:`rsjax.kernels.apply`) inside
the caller's jitted step. The backward pass is straight-through: the
gradient of the float layer on the clipped inputs, ``clip(x) @ w`` (zero
for inputs clipped at either end of the input range, as PACT and LSQ do).

Shared layers are emulated densely from the decompressed shared matrix,
``rsjax.training_params(params, state)``: the dense emulation of a
decompressed layer equals its index-and-add emulation from the codebooks bit
for bit (zero blocks are never activated; one layer scale, and quantizing
the decompressed matrix per layer equals decompressing the quantized
codebook), so the numbers are those of the shared crossbars, and the
gradient reaches the codebooks through ``training_params``'s
straight-through view (``rsjax.centroid_finetune`` keeps them shared).

BatchNorm stays digital (it is not folded: it trains), biases are added in
float. Input scales and ADC ranges (``adc_mode='calibrated'``) come from
:func:`rsjax.kernels.calibrate_hwaware`, run eagerly outside the step;
call it again every few steps to re-calibrate the ADC
ranges on the current weights and batch, the input scales kept (``'fixed'``)
or raised to the running maximum (``'running_max'``).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp

from rsjax._src import hardware
from rsjax._src import quantize
from rsjax.kernels import adc as adc_lib
from rsjax.kernels import calibration as calibrate_lib
from rsjax.kernels import conv as conv_lib
from rsjax.kernels import crossbar
from rsjax.kernels import model as model_lib
from rsjax.kernels import saturation as saturation_lib

SCALE_UPDATES = ("running_max", "fixed")

# A kept input scale this much below the inputs' peak is reported: below it,
# a batch's peak differs from the calibration's by sampling alone.
_SATURATION_MARGIN = 0.05


class InputSaturationWarning(UserWarning):
  """Layer inputs exceed the input range they are quantized to."""


BACKWARDS = ("ste", "saturation")


HwCalibration = calibrate_lib.HwCalibration


def from_calibration(calib: model_lib.Calibration, hw, *, previous,
                     scales: str, per: str) -> HwCalibration:
  """The :class:`HwCalibration` of a model's recorded statistics.

  Args: as :func:`rsjax.kernels.calibrate_hwaware`.
  """
  if scales not in SCALE_UPDATES:
    raise ValueError(f"scales must be one of {SCALE_UPDATES}, got {scales!r}")
  if previous is not None and not isinstance(previous, HwCalibration):
    raise TypeError(f"previous must be a HwCalibration, got "
                    f"{type(previous).__name__}")
  top = float(2**hw.input_bits - 1)
  x_scales, adc_ranges, signed, short = {}, {}, [], {}
  for name, st in sorted(calib.layers.items()):
    peak = st["max"]
    if previous is not None and name in previous.x_scales:
      old = float(previous.x_scales[name]) * top
      if scales == "fixed" and peak > old * (1.0 + _SATURATION_MARGIN):
        short[name] = (old / top, peak / top)
      peak = old if scales == "fixed" else max(old, peak)
    x_scale = jnp.float32(peak / top if peak > 0 else 1.0)
    x_scales[name] = x_scale
    if st["min"] < 0 or (previous is not None and name in previous.signed):
      signed.append(name)
    if adc_lib.mode(hw).calibrated:
      matrix = jnp.asarray(st["kernel"], jnp.float32).reshape(
          -1, st["kernel"].shape[-1])
      qw, _ = quantize.quantize_weights(matrix, hw.weight_bits, per=per)
      adc_ranges[name] = jnp.int32(
          model_lib.adc_range_from(st, qw, hw, x_scale))
  if short:
    warnings.warn(
        "inputs saturate: with scales='fixed' these layers keep an input "
        "scale below what their inputs now need (layer: kept, needed) "
        + ", ".join(f"{k}: {a:.4g}, {b:.4g}" for k, b_a in short.items()
                    for a, b in [b_a])
        + "; re-calibrate with scales='running_max' (the default)",
        InputSaturationWarning, stacklevel=3)
  return HwCalibration(x_scales, adc_ranges or None, tuple(signed), hw,
                       per)


def hwaware_layer(x, kernel, bias, hw: hardware.HardwareSpec, *, x_scale,
                  signed: bool = False, conv=None, adc_range=None,
                  device=None, wires=None, adc=None, key=None,
                  per: str = "layer", dataflow: str = "auto",
                  backward: str = "ste"):
  """One Dense/Conv layer: emulated forward, straight-through backward.

  Args:
    x: ``[..., in]`` (Dense) or ``[B, H, W, cin]`` (conv) float inputs.
    kernel: ``[in, out]`` or ``[kh, kw, cin, cout]`` float kernel.
    bias: ``[out]`` or None (added digitally).
    hw: the hardware.
    x_scale: the input step; inputs saturate at ``x_scale (2^input_bits -
      1)``.
    signed: inputs may be negative: two unsigned passes
      ``f(relu(x)) - f(relu(-x))``, one programming for both.
    conv: ``(kernel_size, strides, padding, dilation)`` or None.
    adc_range: int32 scalar for ``adc_mode='calibrated'``.
    device: the ReRAM device (:class:`rsjax.kernels.Device`); its random
      programming effects are drawn from ``key`` (a fresh draw per key:
      per step).
    wires: wire resistance (:class:`rsjax.kernels.Wires`), or None.
    adc: the converter's non-linearity (:class:`rsjax.kernels.NonlinearADC`),
      or None.
    key: ``jax.random`` key (required with non-idealities).
    per: weight scale ``'layer'`` or ``'column'``.
    dataflow: as :func:`rsjax.kernels.prepare`.
    backward: ``'ste'``, the gradient of ``clip(x) @ w``, or
      ``'saturation'``, which also drops the terms whose OU partial sums
      saturate the ADC (:func:`rsjax.kernels.saturating_matmul`, of the
      ideal cells; about one direct-dataflow pass more per step).

  Returns:
    float32 output like the float layer's.
  """
  _check_backward(backward)
  x = jnp.asarray(x, jnp.float32)
  if conv is not None:
    x = conv_lib.im2col(x, *conv)
  w = jnp.asarray(kernel, jnp.float32).reshape(-1, kernel.shape[-1])
  x_scale = jax.lax.stop_gradient(jnp.asarray(x_scale, jnp.float32))
  top = x_scale * jnp.float32(2**hw.input_bits - 1)
  x_clip = jnp.clip(x, -top if signed else 0.0, top)
  qw, w_scale = quantize.quantize_weights(jax.lax.stop_gradient(w),
                                          hw.weight_bits, per=per)
  # The integer inputs of each unsigned pass, for the crossbar (and the
  # saturation-aware backward's partial sums).
  xs = jax.lax.stop_gradient(x)
  q_passes = [crossbar.quantize_inputs(jnp.maximum(xs, 0.0), x_scale, hw)]
  if signed:
    q_passes.append(crossbar.quantize_inputs(jnp.maximum(-xs, 0.0), x_scale,
                                             hw))
  if backward == "ste":
    y_float = jnp.matmul(x_clip, w, precision=jax.lax.Precision.HIGHEST)
  else:
    y_float = _saturating(x_clip, w, qw, w_scale, x_scale, hw, q_passes,
                          adc_range)
  k_prog, k_read = (None, None) if key is None else jax.random.split(key)
  weights = crossbar.prepare(qw, hw, adc_range=adc_range, device=device,
                             wires=wires, adc=adc, key=k_prog,
                             dataflow=dataflow)
  pass_keys = (None, None) if k_read is None else jax.random.split(k_read)
  y_int = crossbar.apply(weights, q_passes[0], key=pass_keys[0]).astype(
      jnp.float32)
  if signed:
    y_int = y_int - crossbar.apply(weights, q_passes[1],
                                   key=pass_keys[1]).astype(jnp.float32)
  y_emul = y_int * model_lib.last_axis(x_scale * w_scale, y_int.ndim)
  y = y_float + jax.lax.stop_gradient(y_emul - y_float)
  if bias is not None:
    y = y + jnp.asarray(bias, jnp.float32).reshape((1,) * (y.ndim - 1)
                                                   + (-1,))
  return y


def _saturating(x_clip, w, qw, w_scale, x_scale, hw, q_passes, adc_range):
  """``clip(x) @ w`` with the saturation-aware backward, per input pass."""
  lead, in_features = x_clip.shape[:-1], x_clip.shape[-1]
  x2 = x_clip.reshape(-1, in_features)
  w_units = w / model_lib.last_axis(w_scale, 2)
  parts = (jnp.maximum(x2, 0.0), jnp.maximum(-x2, 0.0))
  y = 0.0
  for sign, part, q in zip((1.0, -1.0), parts, q_passes):
    y = y + sign * saturation_lib.saturating_matmul(
        part / x_scale, w_units, q.reshape(-1, in_features), qw, hw,
        adc_range)
  y = y * model_lib.last_axis(x_scale * w_scale, y.ndim)
  return y.reshape(*lead, -1)


def _check_backward(backward):
  if backward not in BACKWARDS:
    raise ValueError(f"backward must be one of {BACKWARDS}, got "
                     f"{backward!r}")


def check_training(calib, hw, backward, per):
  """Raises for a calibration that does not fit the training's options."""
  _check_backward(backward)
  if not isinstance(calib, HwCalibration):
    raise TypeError(f"calib must be a HwCalibration (from "
                    f"rsjax.kernels.calibrate_hwaware), got "
                    f"{type(calib).__name__}")
  if adc_lib.mode(hw).calibrated and calib.adc_ranges is None:
    raise ValueError("adc_mode='calibrated' needs ADC ranges: calibrate with "
                     "the calibrated hardware")
  if calib.per != per:
    raise ValueError(f"the calibration was made with per={calib.per!r}, the "
                     f"layers run with per={per!r}: calibrate with the same "
                     "weight scale")


def input_saturation(x, x_scale, hw: hardware.HardwareSpec, *,
                     signed: bool = False):
  """The fraction of ``x``'s entries beyond the layer's input range.

  Entries above ``x_scale (2^input_bits - 1)`` (or, for ``signed`` inputs,
  below its negative) are clipped by the DAC: a few is the price of a tight
  scale, a large fraction means the scale no longer fits the inputs.

  Returns:
    A float32 scalar in ``[0, 1]`` (no gradient).
  """
  x = jax.lax.stop_gradient(jnp.asarray(x, jnp.float32))
  top = jnp.asarray(x_scale, jnp.float32) * jnp.float32(2**hw.input_bits - 1)
  beyond = x > top
  if signed:
    beyond = beyond | (x < -top)
  return jnp.mean(beyond.astype(jnp.float32))


def run_layer(name, calib, hw, x, kernel, bias, conv, order, key, phys,
              per, backward, saturation):
  """Layer ``name`` of a model in training, with its calibrated settings.

  ``order`` numbers the calibrated layers, so that each folds its own key
  from the step's; ``phys`` is the :func:`rsjax.kernels.crossbar.physics`
  of the hardware models.
  """
  if saturation is not None:
    saturation[name] = input_saturation(x, calib.x_scales[name], hw,
                                        signed=name in calib.signed)
  layer_key = None if key is None else jax.random.fold_in(key, order[name])
  rng = calib.adc_ranges[name] if adc_lib.mode(hw).calibrated else None
  return hwaware_layer(x, kernel, bias, hw, x_scale=calib.x_scales[name],
                       signed=name in calib.signed, conv=conv, adc_range=rng,
                       **phys.kwargs(), key=layer_key, per=per,
                       backward=backward)
