"""Weights to ReRAM cells: signed mapping, bit slicing and non-idealities.

A signed ``weight_bits`` integer matrix is stored as unsigned cell levels
(docs/hardware.md, docs/emulator.md). ``offset`` stores ``u = w + 2^(b-1)`` in one array and the
digital side subtracts ``2^(b-1) * sum(x)``; ``differential`` stores the
``b-1`` bit magnitudes of the positive and negative parts in two arrays whose
outputs are subtracted. Each stored value is split into ``slices`` cells of
``cell_bits``, least significant first.

Non-idealities act on the programmed conductances, in units of one cell level
(level ``v`` of a cell conducts ``v`` units; level 0 conducts nothing):

* programming variation: every cell gets ``g = max(v + program_sigma * e, 0)``,
  ``e ~ N(0, 1)`` i.i.d. (a zero-level cell may then leak a little), rounded
  to a multiple of ``2^-f`` (:func:`conductance_step`: f = 14-17 bits below
  one level for the usual OUs) so that every OU partial sum is an exact
  float32 sum: the dataflows add the same terms in different orders and
  must give the same ADC codes (a sum landing on a rounding boundary would
  otherwise convert differently in each);
* stuck-at faults: with probability ``stuck_at_0`` a cell is stuck at level 0
  (high resistance), with ``stuck_at_1`` at the top level ``2^cell_bits - 1``
  (low resistance); a stuck cell has no programming variation;
* read noise: ``p + read_sigma * e`` on every OU partial sum before its ADC
  conversion (units of one cell level times one DAC level), fresh per
  conversion.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from rsjax._src import hardware


@dataclasses.dataclass(frozen=True)
class Nonideal:
  """Device non-idealities; all zero (the default) is the ideal crossbar.

  Attributes:
    program_sigma: std of the additive programming error, in cell levels.
    stuck_at_0: probability that a cell is stuck at level 0.
    stuck_at_1: probability that a cell is stuck at the top level.
    read_sigma: std of the read noise added to each OU partial sum.
  """

  program_sigma: float = 0.0
  stuck_at_0: float = 0.0
  stuck_at_1: float = 0.0
  read_sigma: float = 0.0

  def __post_init__(self):
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      if isinstance(value, (bool, np.bool_)) or not isinstance(
          value, (int, float, np.integer, np.floating)):
        raise ValueError(f"Nonideal.{f.name} must be a number, got {value!r}")
      # A Python float: equal models hash equal (it is a static jit arg).
      value = float(value)
      object.__setattr__(self, f.name, value)
      if value < 0:
        raise ValueError(f"Nonideal.{f.name} must be >= 0, got {value}")
    if self.stuck_at_0 + self.stuck_at_1 > 1:
      raise ValueError("Nonideal.stuck_at_0 + stuck_at_1 must be <= 1")

  @property
  def programs(self) -> bool:
    """Whether the stored conductances differ from the ideal levels."""
    return bool(self.program_sigma or self.stuck_at_0 or self.stuck_at_1)

  @property
  def reads(self) -> bool:
    """Whether partial sums get read noise (rules out tabulated ADC outputs)."""
    return bool(self.read_sigma)


def slice_levels(u, hw: hardware.HardwareSpec):
  """Splits unsigned stored values into cell levels, least significant first.

  Args:
    u: integer array of unsigned stored values, ``< 2^stored_bits``.
    hw: the hardware.

  Returns:
    ``u.shape + (slices,)`` int32 levels in ``[0, 2^cell_bits)``.
  """
  shifts = jnp.arange(hw.slices, dtype=jnp.int32) * hw.cell_bits
  mask = 2**hw.cell_bits - 1
  u = jnp.asarray(u, jnp.int32)[..., None]
  return (u >> shifts.reshape((1,) * (u.ndim - 1) + (-1,))) & mask


def signed_to_cells(w, hw: hardware.HardwareSpec):
  """Cell levels of a signed integer matrix under ``hw.signed``.

  Args:
    w: ``[..., cols]`` int weights in ``[-max_weight, max_weight]``.
    hw: the hardware.

  Returns:
    ``[arrays, ..., cols, slices]`` int32 levels: one array for ``offset``,
    positive then negative array for ``differential``.
  """
  w = jnp.asarray(w, jnp.int32)
  if hw.signed == "offset":
    stored = (w + 2 ** (hw.weight_bits - 1))[None]
  else:
    stored = jnp.stack([jnp.maximum(w, 0), jnp.maximum(-w, 0)])
  return slice_levels(stored, hw)


def conductance_step(hw: hardware.HardwareSpec) -> float:
  """The grid ``2^-f`` programmed conductances are rounded to.

  Partial sums of up to ``ou_rows`` terms ``DAC level x conductance`` stay
  exact in float32 (24-bit significand) while below
  ``2 * ou_rows * dac_max * 2^cell_bits``, twice the largest ideal sum.
  """
  bound = 2 * hw.ou_rows * (2**hw.dac_bits - 1) * 2**hw.cell_bits
  return 2.0 ** -(24 - (bound - 1).bit_length())


def program(levels, hw: hardware.HardwareSpec, nonideal: Nonideal | None,
            key):
  """Programmed conductances (float32) of ideal ``levels`` (any shape).

  With no (or all-zero) non-idealities this is ``levels`` as float32, exactly.

  Args:
    levels: integer cell levels.
    hw: the hardware (for the top level).
    nonideal: the device model, or None for ideal cells.
    key: a ``jax.random`` key; required when ``nonideal.programs``.

  Returns:
    float32 conductances like ``levels``.
  """
  g = jnp.asarray(levels, jnp.float32)
  if nonideal is None or not nonideal.programs:
    return g
  if key is None:
    raise ValueError("programming non-idealities need an explicit key")
  k_var, k_fault = jax.random.split(key)
  if nonideal.program_sigma:
    e = jax.random.normal(k_var, g.shape, jnp.float32)
    g = jnp.maximum(g + jnp.float32(nonideal.program_sigma) * e, 0.0)
    step = jnp.float32(conductance_step(hw))
    g = jnp.round(g / step) * step
  if nonideal.stuck_at_0 or nonideal.stuck_at_1:
    u = jax.random.uniform(k_fault, g.shape, jnp.float32)
    top = jnp.float32(2**hw.cell_bits - 1)
    g = jnp.where(u < nonideal.stuck_at_0, jnp.float32(0.0), g)
    g = jnp.where((u >= nonideal.stuck_at_0)
                  & (u < nonideal.stuck_at_0 + nonideal.stuck_at_1), top, g)
  return g
