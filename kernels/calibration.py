"""Calibration: a per-layer ADC range from data, and the state that travels.

:func:`calibrate_adc_range` picks one layer's ADC range for
``adc_mode='calibrated'``; :class:`HwCalibration` holds a model's input
scales and ranges, as hardware-aware training used them, so that a saved
model is emulated with the settings it was tuned to.

Two criteria pick a range from the ideal OU partial sums of sample inputs:

* ``'mse'`` (the default): the range whose conversions err least, each
  squared error weighted by the square of the conversion's place in the
  output (``2^(t dac_bits + s cell_bits)`` for cycle ``t``, slice ``s``).
  A range a little above ``adc_max`` rounds nearly every sum, one at
  ``adc_max`` only clips the rare large ones, and this weighs the two.
* ``'quantile'``: a high quantile of the nonzero sums. It moves in unit
  steps as the weights change, and one step (``adc_max`` to ``adc_max + 1``)
  turns exact small sums into rounded ones: a 4-bit LeNet-5 re-calibrated
  that way during hardware-aware training collapsed from 0.84 to 0.35.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from rsjax._src import hardware
from rsjax._src import quantize
from rsjax.kernels import adc as adc_lib
from rsjax.kernels import checks
from rsjax.kernels import crossbar


METHODS = ("mse", "quantile")


@functools.partial(jax.jit, static_argnames=("hw",))
def _histogram(levels, active, x, hw):
  """``[cycles, slices, p_max + 1]`` counts of each ideal partial sum."""
  num_arrays, num_rb, rows, cols, slices = levels.shape
  xr = jnp.transpose(x.reshape(x.shape[0], num_rb, rows), (1, 0, 2))
  g = levels.astype(jnp.float32).reshape(num_arrays, num_rb, rows,
                                         cols * slices)
  live = jnp.repeat(active, slices, axis=1)[None, :, None, :]
  length = hw.partial_sum_max + 1
  # Column k of g holds slice k % slices: the bin of (slice, sum).
  slice_of = jnp.arange(cols * slices, dtype=jnp.int32) % slices

  def cycle(_, t):
    xt = ((xr >> (t * hw.dac_bits)) & (2**hw.dac_bits - 1)).astype(
        jnp.float32)
    p = jnp.einsum("rmi,arik->armk", xt, g,
                   precision=jax.lax.Precision.HIGHEST).astype(jnp.int32)
    p = jnp.where(jnp.broadcast_to(live, p.shape) > 0, p, 0)
    bins = slice_of[None, None, None, :] * length + p
    return None, jnp.bincount(bins.ravel(), length=slices * length).reshape(
        slices, length)

  _, hist = jax.lax.scan(cycle, None, jnp.arange(hw.cycles, dtype=jnp.int32))
  return hist


def _weighted_errors(hist, hw) -> np.ndarray:
  """Squared conversion error of each candidate range, place-weighted.

  Args:
    hist: ``[cycles, slices, p_max + 1]`` counts (NumPy).
    hw: the hardware.

  Returns:
    ``[candidates]`` float64 errors for ranges ``adc_max ..
    max(p_max, adc_max)``.
  """
  cycles, slices, length = hist.shape
  place = (np.arange(cycles)[:, None] * hw.dac_bits
           + np.arange(slices)[None, :] * hw.cell_bits)
  per_sum = np.tensordot(4.0 ** place, hist.astype(np.float64), axes=2)
  p = np.arange(length, dtype=np.float64)
  top = hw.adc_max
  ranges = np.arange(top, max(hw.partial_sum_max, top) + 1, dtype=np.float64)
  code = np.minimum(np.floor(p[None] * top / ranges[:, None] + 0.5), top)
  err = code * ranges[:, None] / top - p[None]
  return (err**2) @ per_sum


# Float32 partial sums per histogram call (16 MiB): rows go in chunks.
_CHUNK_SUMS = 1 << 22

# The golden ratio's fractional part: offsets that do not repeat with any
# period (an image's width, a batch's stride).
_WEYL = 0.6180339887498949


def sample_rows(n: int, max_rows: int) -> np.ndarray:
  """Indices of at most ``max_rows`` of ``n`` rows, spread over all of them.

  One row from each of ``max_rows`` equal strata, at a low-discrepancy
  offset in its stratum: the patches of a conv's calibration batch come
  from every image and from everywhere in it, not from the first image's
  top rows, and no stride lines up with the image's width.
  """
  if max_rows < 1:
    raise ValueError(f"max_rows must be >= 1, got {max_rows}")
  if n <= max_rows:
    return np.arange(n)
  i = np.arange(max_rows, dtype=np.int64)
  # Integer strata [lo, hi): at least one row each, as n > max_rows.
  lo, hi = i * n // max_rows, (i + 1) * n // max_rows
  return lo + np.floor((i * _WEYL) % 1.0 * (hi - lo)).astype(np.int64)


def calibrate_adc_range(x, w, hw: hardware.HardwareSpec, *,
                        method: str = "mse", quantile: float = 0.999,
                        max_rows: int = 256) -> int:
  """A per-layer ADC range for ``adc_mode='calibrated'`` from sample inputs.

  The ideal OU partial sums of the sample (all cycles, row-blocks, columns
  and slices of stored blocks) decide it, within ``[adc_max, max(p_max,
  adc_max)]``: ``method='mse'`` takes the range of least place-weighted
  squared conversion error (the smallest on a tie), ``'quantile'`` the
  ``quantile`` of the nonzero sums (see the module).

  Args:
    x: ``[..., in_features]`` unsigned int sample inputs (``max_rows``
      of its rows are used, spread over all of them: :func:`sample_rows`).
    w: ``[in_features, out_features]`` signed int weights (the decompressed
      matrix of a shared layer).
    hw: the hardware.
    method: ``'mse'`` or ``'quantile'``.
    quantile: in ``(0, 1]``, for ``method='quantile'``.
    max_rows: sample rows used, to bound the work (the partial sums are
      histogrammed a chunk of rows at a time, so memory stays bounded).

  Returns:
    The range, a Python int.
  """
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  if not 0 < quantile <= 1:
    raise ValueError(f"quantile must be in (0, 1], got {quantile}")
  if getattr(w, "ndim", None) != 2:
    raise ValueError("w must be an [in_features, out_features] crossbar "
                     "matrix")
  checks.check_ints("w", w, -hw.max_weight, hw.max_weight)
  checks.check_ints("x", x, 0, 2**hw.input_bits - 1)
  in_features = w.shape[0]
  x2 = jnp.asarray(x, jnp.int32).reshape(-1, in_features)
  if x2.shape[0] == 0:
    raise ValueError("x has no rows: the range needs sample inputs")
  x2 = x2[sample_rows(x2.shape[0], max_rows)]
  weights = crossbar.prepare(w, hw.replace(adc_mode="clip"), dataflow="direct")
  # Zero rows (padding) only add sums of 0, which no range converts wrongly
  # and the quantile leaves out.
  per_row = weights.cells[..., 0, :, :].size
  chunk = int(min(x2.shape[0], max(1, _CHUNK_SUMS // per_row)))
  rows = -(-x2.shape[0] // chunk) * chunk
  pad = weights.num_row_blocks * hw.ou_rows - in_features
  x2 = jnp.pad(x2, ((0, rows - x2.shape[0]), (0, pad)))
  hist = sum(np.asarray(_histogram(weights.cells, weights.active,
                                   x2[i:i + chunk], hw), np.int64)
             for i in range(0, rows, chunk))
  if method == "mse":
    return hw.adc_max + int(np.argmin(_weighted_errors(hist, hw)))
  hist = hist.sum(axis=(0, 1))[1:]
  total = hist.sum()
  if total == 0:
    return hw.adc_max
  value = int(np.searchsorted(np.cumsum(hist), quantile * total) + 1)
  return int(min(max(value, hw.adc_max), max(hw.partial_sum_max,
                                             hw.adc_max)))


@struct.dataclass
class HwCalibration:
  """Per-layer input scales and ADC ranges for hardware-aware training.

  Attributes:
    x_scales: ``{layer path: float32 scalar}`` input quantization steps.
    adc_ranges: ``{layer path: int32 scalar}`` ADC ranges
      (``adc_mode='calibrated'``), else None.
    signed: the layer paths whose inputs go negative (two unsigned passes).
    hw: the hardware the ranges were calibrated for.
    per: the weight scale the ranges were calibrated with (``'layer'`` or
      ``'column'``).

  It is what a model was trained on: save it with the model
  (``rsjax.save_compressed(..., calibration=calib)``) and the emulator
  programs the model with these scales and ranges
  (:func:`rsjax.kernels.program`'s ``calibration``) instead of calibrating
  afresh.
  """

  x_scales: dict
  adc_ranges: dict | None
  signed: tuple[str, ...] = struct.field(pytree_node=False)
  hw: hardware.HardwareSpec = struct.field(pytree_node=False)
  per: str = struct.field(pytree_node=False, default="layer")

  def to_dict(self) -> dict[str, Any]:
    """Plain JSON values: what :func:`rsjax.save_compressed` stores.

    Scales are float32 values written as Python floats (exact), ranges
    Python ints.
    """
    return {
        "hardware": self.hw.to_dict(), "per": self.per,
        "signed": sorted(self.signed),
        "x_scales": {k: float(v) for k, v in sorted(self.x_scales.items())},
        "adc_ranges": None if self.adc_ranges is None else {
            k: int(v) for k, v in sorted(self.adc_ranges.items())}}

  @classmethod
  def from_dict(cls, fields: Mapping[str, Any]) -> "HwCalibration":
    """The inverse of :meth:`to_dict` (e.g. ``CompressedModel.calibration``).

    Raises:
      ValueError: for missing or unknown keys, or values of the wrong kind.
    """
    if isinstance(fields, cls):
      return fields
    if not isinstance(fields, Mapping):
      raise TypeError(f"a calibration must be a HwCalibration or its "
                      f"to_dict(), got {type(fields).__name__}")
    expected = {"hardware", "per", "signed", "x_scales", "adc_ranges"}
    if set(fields) != expected:
      raise ValueError(f"a calibration has the keys {sorted(expected)}, got "
                       f"{sorted(fields)}")
    x_scales, ranges = fields["x_scales"], fields["adc_ranges"]
    if not isinstance(x_scales, Mapping) or not all(
        isinstance(v, (int, float)) and v > 0 for v in x_scales.values()):
      raise ValueError("a calibration's x_scales must map layer paths to "
                       f"positive numbers, got {x_scales!r:.80}")
    if ranges is not None and (
        not isinstance(ranges, Mapping) or set(ranges) != set(x_scales)
        or not all(isinstance(v, int) and v > 0 for v in ranges.values())):
      raise ValueError("a calibration's adc_ranges must be None or map each "
                       f"layer path to a positive int, got {ranges!r:.80}")
    if not set(fields["signed"]) <= set(x_scales):
      raise ValueError(f"a calibration's signed layers "
                       f"{sorted(set(fields['signed']) - set(x_scales))} "
                       "have no input scale")
    hw = hardware.HardwareSpec.from_dict(fields["hardware"])
    if ranges is None and adc_lib.mode(hw).calibrated:
      raise ValueError("a calibration for adc_mode='calibrated' needs "
                       "adc_ranges")
    if fields["per"] not in quantize.PER:
      raise ValueError(f"a calibration's per must be one of {quantize.PER}, "
                       f"got {fields['per']!r}")
    return cls(
        {k: jnp.float32(v) for k, v in sorted(x_scales.items())},
        None if ranges is None else {
            k: jnp.int32(v) for k, v in sorted(ranges.items())},
        tuple(sorted(fields["signed"])), hw, fields["per"])
