"""Argument checks of the emulator, run eagerly outside the jitted paths.

Value checks (ranges) run only on concrete arrays: under a caller's ``jit``
the values are unknown and only dtypes and shapes are checked.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def concrete(x) -> bool:
  """Whether ``x`` has a value here (not a tracer)."""
  return not isinstance(x, jax.core.Tracer)


def check_ints(name, a, lo, hi):
  """Raises unless ``a`` is integer typed with values in ``[lo, hi]``."""
  if not jnp.issubdtype(jnp.result_type(a), jnp.integer):
    raise ValueError(
        f"{name} must be integers, got {jnp.result_type(a)}; quantize floats "
        "first (rsjax.quantize_weights for weights, "
        "rsjax.kernels.quantize_inputs with an activation scale for inputs)")
  if concrete(a) and np.size(a):
    # NumPy, not jnp: under a caller's jit, jnp on constants gives tracers.
    host = np.asarray(a)
    a_lo, a_hi = int(host.min()), int(host.max())
    if a_lo < lo or a_hi > hi:
      raise ValueError(f"{name} must lie in [{lo}, {hi}], got values in "
                       f"[{a_lo}, {a_hi}]")


def check_int32(hw, rows):
  """Raises if int32 shift-and-add could overflow for ``rows`` input rows."""
  num_rb = -(-rows // hw.ou_rows)
  code = min(hw.adc_max, hw.partial_sum_max)
  slices = sum(2 ** (s * hw.cell_bits) for s in range(hw.slices))
  cycles = sum(2 ** (t * hw.dac_bits) * (2**hw.dac_bits - 1)
               for t in range(hw.cycles))
  bound = max(num_rb * code * slices * cycles,
              rows * (2**hw.input_bits - 1) * 2 ** (hw.weight_bits - 1))
  if bound >= 2**31:
    raise ValueError(
        f"{rows} input rows at this precision can overflow the int32 "
        f"shift-and-add (bound {bound}); split the layer's rows")


def number(owner: str, name: str, value, *, low=None, low_open=False,
            allow_inf=False) -> float:
  """``value`` as a Python float, or a ValueError naming ``owner.name``."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(
      value, (int, float, np.integer, np.floating)):
    raise ValueError(f"{owner}.{name} must be a number, got {value!r}")
  value = float(value)
  if math.isnan(value) or (math.isinf(value) and not allow_inf):
    raise ValueError(f"{owner}.{name} must be finite, got {value}")
  if low is not None and (value <= low if low_open else value < low):
    op = ">" if low_open else ">="
    raise ValueError(f"{owner}.{name} must be {op} {low}, got {value}")
  return value
