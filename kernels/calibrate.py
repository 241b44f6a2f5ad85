"""A per-layer ADC range from data, for ``adc_mode='calibrated'``."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rsjax._src import hardware
from rsjax.kernels import checks
from rsjax.kernels import crossbar


@functools.partial(jax.jit, static_argnames=("hw",))
def _histogram(levels, active, x, hw):
  """Counts of each ideal partial-sum value over all conversions of ``x``."""
  num_arrays, num_rb, rows, cols, slices = levels.shape
  xr = jnp.transpose(x.reshape(x.shape[0], num_rb, rows), (1, 0, 2))
  g = levels.astype(jnp.float32).reshape(num_arrays, num_rb, rows,
                                         cols * slices)
  live = jnp.repeat(active, slices, axis=1)[None, :, None, :]

  def cycle(hist, t):
    xt = ((xr >> (t * hw.dac_bits)) & (2**hw.dac_bits - 1)).astype(
        jnp.float32)
    p = jnp.einsum("rmi,arik->armk", xt, g,
                   precision=jax.lax.Precision.HIGHEST).astype(jnp.int32)
    p = jnp.where(jnp.broadcast_to(live, p.shape) > 0, p, 0)
    return hist + jnp.bincount(p.ravel(), length=hw.partial_sum_max + 1), None

  hist, _ = jax.lax.scan(cycle, jnp.zeros((hw.partial_sum_max + 1,),
                                          jnp.int32),
                         jnp.arange(hw.cycles, dtype=jnp.int32))
  return hist


def calibrate_adc_range(x, w, hw: hardware.HardwareSpec, *,
                        quantile: float = 0.999,
                        max_rows: int = 256) -> int:
  """A per-layer ADC range for ``adc_mode='calibrated'`` from sample inputs.

  The range is the ``quantile`` of the layer's nonzero ideal OU partial sums
  over the sample (all cycles, row-blocks, columns and slices of stored
  blocks), clamped to ``[adc_max, max(p_max, adc_max)]``: the ADC resolves
  the common sums and saturates only the rare large ones.

  Args:
    x: ``[..., in_features]`` unsigned int sample inputs (the first
      ``max_rows`` rows are used).
    w: ``[in_features, out_features]`` signed int weights (the decompressed
      matrix of a shared layer).
    hw: the hardware.
    quantile: in ``(0, 1]``.
    max_rows: sample rows used, to bound memory.

  Returns:
    The range, a Python int.
  """
  if not 0 < quantile <= 1:
    raise ValueError(f"quantile must be in (0, 1], got {quantile}")
  if getattr(w, "ndim", None) != 2:
    raise ValueError("w must be an [in_features, out_features] crossbar "
                     "matrix")
  checks.check_ints("w", w, -hw.max_weight, hw.max_weight)
  checks.check_ints("x", x, 0, 2**hw.input_bits - 1)
  in_features = w.shape[0]
  x2 = jnp.asarray(x, jnp.int32).reshape(-1, in_features)[:max_rows]
  weights = crossbar.prepare(w, hw.replace(adc_mode="clip"), dataflow="direct")
  pad = weights.num_row_blocks * hw.ou_rows - in_features
  hist = np.asarray(_histogram(weights.cells, weights.active,
                               jnp.pad(x2, ((0, 0), (0, pad))), hw))[1:]
  total = hist.sum()
  if total == 0:
    return hw.adc_max
  value = int(np.searchsorted(np.cumsum(hist), quantile * total) + 1)
  return int(min(max(value, hw.adc_max), max(hw.partial_sum_max,
                                             hw.adc_max)))
