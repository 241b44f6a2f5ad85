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

Each mode is a range rule object (:func:`mode`: :class:`ClipADC`,
:class:`ScaleADC`, :class:`CalibratedADC`); the kernels ask it, not the
mode's name. A real converter's thresholds are not evenly spaced: :class:`NonlinearADC`
moves each of the ``adc_max`` code transitions by its integral
non-linearity (INL, in LSB) and all of them by an offset. The digital side
still reads code ``k`` as ``k`` LSB: the errors are not known to it.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from rsjax._src import hardware


@dataclasses.dataclass(frozen=True)
class NonlinearADC:
  """An ADC with integral non-linearity and offset (any ``adc_mode``).

  Transition ``k`` (from code ``k - 1`` to ``k``, ``k = 1 .. adc_max``) sits
  at ``k - 1/2 + inl[k - 1] + offset`` LSB of the mode's uniform scale:
  ``NonlinearADC()`` is the ideal converter, bit for bit. The DNL of code
  ``k`` (its width minus one LSB) is ``inl[k] - inl[k - 1]``.

  Attributes:
    inl: ``adc_max`` INL values in LSB, one per transition, or ``()`` for
      none.
    offset: offset of every transition, in LSB.
  """

  inl: tuple = ()
  offset: float = 0.0

  def __post_init__(self):
    try:
      inl = tuple(float(v) for v in np.asarray(self.inl, np.float64).ravel())
    except (TypeError, ValueError) as e:
      raise ValueError(f"NonlinearADC.inl must be numbers, got "
                       f"{self.inl!r}") from e
    if not all(math.isfinite(v) for v in inl):
      raise ValueError("NonlinearADC.inl must be finite")
    if any(b - a <= -1 for a, b in zip(inl, inl[1:])):
      raise ValueError("NonlinearADC.inl must keep the transitions in order "
                       "(every DNL > -1 LSB)")
    object.__setattr__(self, "inl", inl)
    if isinstance(self.offset, (bool, np.bool_)) or not isinstance(
        self.offset, (int, float, np.integer, np.floating)) or not (
            math.isfinite(float(self.offset))):
      raise ValueError(f"NonlinearADC.offset must be a finite number, got "
                       f"{self.offset!r}")
    object.__setattr__(self, "offset", float(self.offset))

  @classmethod
  def from_dnl(cls, dnl, offset: float = 0.0) -> "NonlinearADC":
    """From the DNL of codes ``1 .. adc_max - 1`` (LSB; ``adc_max - 1``
    values): transition 1 at ``1/2``, each next one a code width on."""
    dnl = np.asarray(dnl, np.float64).ravel()
    if np.any(dnl <= -1):
      raise ValueError("NonlinearADC.from_dnl: a DNL <= -1 LSB is a missing "
                       "code's negative width")
    return cls(inl=tuple(np.concatenate([[0.0], np.cumsum(dnl)])),
               offset=offset)

  @classmethod
  def random(cls, key, hw: hardware.HardwareSpec, *, dnl_sigma: float,
             offset_sigma: float = 0.0) -> "NonlinearADC":
    """A converter with normal DNL of std ``dnl_sigma`` LSB (clipped above
    -0.9 LSB: no missing codes) and a normal offset, drawn from ``key``."""
    if dnl_sigma < 0 or offset_sigma < 0:
      raise ValueError("NonlinearADC.random: dnl_sigma and offset_sigma "
                       "must be >= 0")
    k_dnl, k_off = jax.random.split(key)
    dnl = np.asarray(jax.random.normal(k_dnl, (hw.adc_max - 1,)),
                     np.float64) * dnl_sigma
    offset = float(jax.random.normal(k_off, ())) * offset_sigma
    return cls.from_dnl(np.maximum(dnl, -0.9), offset=offset)

  def check(self, hw: hardware.HardwareSpec) -> None:
    """Raises unless the INL has one value per transition of ``hw``'s ADC."""
    if self.inl and len(self.inl) != hw.adc_max:
      raise ValueError(f"NonlinearADC.inl has {len(self.inl)} values, the "
                       f"{hw.adc_bits}-bit ADC has {hw.adc_max} transitions")

  def thresholds(self, hw: hardware.HardwareSpec):
    """``[adc_max]`` float32 transitions in LSB."""
    k = np.arange(1, hw.adc_max + 1, dtype=np.float64) - 0.5 + self.offset
    if self.inl:
      k = k + np.asarray(self.inl, np.float64)
    return jnp.asarray(k, jnp.float32)


def full_range(hw: hardware.HardwareSpec) -> int:
  """The largest meaningful range, ``max(p_max, adc_max)``."""
  return max(hw.partial_sum_max, hw.adc_max)


@dataclasses.dataclass(frozen=True)
class ClipADC:
  """``adc_mode='clip'``: a unit LSB, ``range = adc_max``; saturates."""

  name = "clip"
  unit_lsb = True  # codes are partial sums: the output stays an integer
  calibrated = False

  def range(self, hw: hardware.HardwareSpec, adc_range=None):
    _no_range(self, adc_range)
    return jnp.int32(hw.adc_max)


@dataclasses.dataclass(frozen=True)
class ScaleADC:
  """``adc_mode='scale'``: the full partial-sum range, ``max(p_max,
  adc_max)``, with a coarse LSB."""

  name = "scale"
  unit_lsb = False
  calibrated = False

  def range(self, hw: hardware.HardwareSpec, adc_range=None):
    _no_range(self, adc_range)
    return jnp.int32(full_range(hw))


@dataclasses.dataclass(frozen=True)
class CalibratedADC:
  """``adc_mode='calibrated'``: a per-layer integer range from data
  (:func:`rsjax.kernels.calibrate_adc_range`), clamped to ``[adc_max,
  max(p_max, adc_max)]``."""

  name = "calibrated"
  unit_lsb = False
  calibrated = True

  def range(self, hw: hardware.HardwareSpec, adc_range=None):
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


def _no_range(mode, adc_range):
  if adc_range is not None:
    raise ValueError(f"adc_range is only used with adc_mode='calibrated', "
                     f"not {mode.name!r}")


# The range rule of each ``HardwareSpec.adc_mode``: every branch on the mode
# is a method or attribute of these objects.
MODES = {m.name: m for m in (ClipADC(), ScaleADC(), CalibratedADC())}


def mode(hw: hardware.HardwareSpec):
  """The range rule (:class:`ClipADC`, :class:`ScaleADC` or
  :class:`CalibratedADC`) of ``hw.adc_mode``."""
  return MODES[hw.adc_mode]


def resolve_range(hw: hardware.HardwareSpec, adc_range=None):
  """The ADC range of a layer as an int32 scalar.

  Args:
    hw: the hardware; ``hw.adc_mode`` picks the range rule (:func:`mode`).
    adc_range: the calibrated range (``'calibrated'`` only; required there).
      A Python int or an integer scalar array; clamped to
      ``[adc_max, max(p_max, adc_max)]``.

  Returns:
    An int32 scalar array.
  """
  return mode(hw).range(hw, adc_range)


def codes(p, hw: hardware.HardwareSpec, adc_range,
          model: NonlinearADC | None = None):
  """ADC codes (int32) of float32 partial sums ``p``.

  Args:
    p: float32 analog partial sums (any shape).
    hw: the hardware.
    adc_range: the int32 scalar from :func:`resolve_range`.
    model: the converter's non-linearity, or None for the ideal one.

  Returns:
    int32 codes in ``[0, adc_max]``, like ``p``.
  """
  top = jnp.float32(hw.adc_max)
  # The product first, then the division: exact for integer p (see module).
  q = p * top / adc_range.astype(jnp.float32)
  if model is not None:
    # The number of transitions at or below q.
    t = model.thresholds(hw)
    return jnp.searchsorted(t, q.ravel(), side="right").astype(
        jnp.int32).reshape(q.shape)
  return jnp.clip(jnp.floor(q + 0.5), 0.0, top).astype(jnp.int32)


def output_dtype(hw: hardware.HardwareSpec):
  """int32 for ``clip`` (a unit LSB), float32 for the scaled modes."""
  return jnp.int32 if mode(hw).unit_lsb else jnp.float32

