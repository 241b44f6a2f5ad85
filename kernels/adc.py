"""The OU analog-to-digital converter (docs/hardware.md, docs/emulator.md).

Every mode is one uniform ADC with ``adc_max = 2^adc_bits - 1`` codes over a
*range*: the partial sum that maps to the top code. An analog partial sum
``p`` converts to ``code = min(floor(p * adc_max / range + 1/2), adc_max)``
(negative noisy sums to 0); its value is ``code * range / adc_max``.

* ``clip``: ``range = adc_max``, a unit LSB that saturates:
  ``min(p, adc_max)``.
* ``scale``: ``range = p_max``, the full partial-sum range with a coarse LSB:
  ``round(p / d) * d``, ``d = p_max / adc_max``. Where the ADC has more codes
  than partial-sum values (``adc_max >= p_max``) the LSB stays one unit, so a
  lossless ADC is exact in every mode.
* ``calibrated``: ``range`` is a per-layer integer taken from data
  (:func:`rsjax.kernels.calibrate_adc_range`: by default the range of least
  place-weighted squared conversion error on the layer's partial sums),
  within ``[adc_max, max(p_max, adc_max)]``: fine steps where sums are
  common, saturation above.

Rounding is half-up. For integer ``p`` the code is exact in float32: the
quotient of two small integers lands on a half-integer only when it is one.
"""

from __future__ import annotations

import jax.numpy as jnp

from rsjax._src import hardware


def full_range(hw: hardware.HardwareSpec) -> int:
  """The largest meaningful range, ``max(p_max, adc_max)``."""
  return max(hw.partial_sum_max, hw.adc_max)


def resolve_range(hw: hardware.HardwareSpec, adc_range=None):
  """The ADC range of a layer as an int32 scalar.

  Args:
    hw: the hardware; ``hw.adc_mode`` picks the range.
    adc_range: the calibrated range (``'calibrated'`` only; required there).
      A Python int or an integer scalar array; clamped to
      ``[adc_max, max(p_max, adc_max)]``.

  Returns:
    An int32 scalar array.
  """
  if hw.adc_mode == "clip":
    if adc_range is not None:
      raise ValueError("adc_range is only used with adc_mode='calibrated'")
    return jnp.int32(hw.adc_max)
  if hw.adc_mode == "scale":
    if adc_range is not None:
      raise ValueError("adc_range is only used with adc_mode='calibrated'")
    return jnp.int32(full_range(hw))
  if adc_range is None:
    raise ValueError(
        "adc_mode='calibrated' needs a per-layer adc_range (an int partial "
        "sum mapped to the top ADC code); get one from data with "
        "rsjax.kernels.calibrate_adc_range")
  value = jnp.asarray(adc_range)
  if value.shape != () or not jnp.issubdtype(value.dtype, jnp.integer):
    raise ValueError(
        f"adc_range must be an integer scalar, got {value.dtype} "
        f"{value.shape}")
  return jnp.clip(value.astype(jnp.int32), hw.adc_max, full_range(hw))


def codes(p, hw: hardware.HardwareSpec, adc_range):
  """ADC codes (int32) of float32 partial sums ``p``.

  Args:
    p: float32 analog partial sums (any shape).
    hw: the hardware.
    adc_range: the int32 scalar from :func:`resolve_range`.

  Returns:
    int32 codes in ``[0, adc_max]``, like ``p``.
  """
  top = jnp.float32(hw.adc_max)
  # The product first, then the division: exact for integer p (see module).
  q = jnp.floor(p * top / adc_range.astype(jnp.float32) + 0.5)
  return jnp.clip(q, 0.0, top).astype(jnp.int32)


def output_dtype(hw: hardware.HardwareSpec):
  """int32 for ``clip`` (a unit LSB), float32 for the scaled modes."""
  return jnp.int32 if hw.adc_mode == "clip" else jnp.float32

