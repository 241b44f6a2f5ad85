"""Weights to ReRAM cells: signed mapping, bit slicing and non-idealities.

A signed ``weight_bits`` integer matrix is stored as unsigned cell levels
(docs/hardware.md, docs/emulator.md). ``offset`` stores ``u = w + 2^(b-1)`` in one array and the
digital side subtracts ``2^(b-1) * sum(x)``; ``differential`` stores the
``b-1`` bit magnitudes of the positive and negative parts in two arrays whose
outputs are subtracted. Each stored value is split into ``slices`` cells of
``cell_bits``, least significant first.

Programming (:func:`program_array`) turns ideal levels into the
conductances every dataflow computes with, in units of one cell level above
``Gmin`` (:mod:`rsjax.kernels.devices`): the device's programming error,
faults, drift and I-V nonlinearity, then the wires' IR drop
(:mod:`rsjax.kernels.wires`, which turns each OU's conductances into its
transfer matrix), then the global drift compensation. The result is rounded
to a multiple of ``2^-f`` (:func:`conductance_step`: f = 14-17 bits below
one level for the usual OUs) so that every OU partial sum is an exact
float32 sum: the dataflows add the same terms in different orders and must
give the same ADC codes (a sum landing on a rounding boundary would
otherwise convert differently in each).
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from rsjax._src import hardware
from rsjax.kernels import devices as devices_lib
from rsjax.kernels import wires as wires_lib


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


def conductance_step(hw: hardware.HardwareSpec, gain: float = 1.0) -> float:
  """The grid ``2^-f`` programmed conductances are rounded to.

  Partial sums of up to ``ou_rows`` terms ``DAC level x conductance`` stay
  exact in float32 (24-bit significand) while below
  ``2 * ou_rows * dac_max * 2^cell_bits * gain``, twice the largest ideal
  sum times the largest gain a device model applies.
  """
  bound = 2 * hw.ou_rows * (2**hw.dac_bits - 1) * 2**hw.cell_bits
  bound = int(math.ceil(bound * max(gain, 1.0)))
  return 2.0 ** -(24 - (bound - 1).bit_length())


def _round(g, hw, gain=1.0):
  step = jnp.float32(conductance_step(hw, gain))
  return jnp.round(g / step) * step


def program(levels, hw: hardware.HardwareSpec, device, key):
  """Programmed conductances (float32) of ideal ``levels`` (any shape).

  The device alone, without the wires (:func:`program_array` has both).
  With no (or an ideal) device this is ``levels`` as float32, exactly.

  Args:
    levels: integer cell levels.
    hw: the hardware (for the top level).
    device: a :class:`rsjax.kernels.Device`, or None for ideal cells.
    key: a ``jax.random`` key; required when the device programs at random.

  Returns:
    float32 conductances like ``levels``.
  """
  device = devices_lib.checked(device)
  check(hw, device, None)
  return program_array(levels, hw, device, None, key)[0]


def check(hw: hardware.HardwareSpec, device, wires) -> None:
  """Raises for a combination of models that is not modelled."""
  if device is None or device.iv is None:
    return
  if hw.dac_bits != 1:
    raise ValueError("SinhIV needs dac_bits=1 (one read voltage); a "
                     f"{hw.dac_bits}-bit DAC reads at several voltages")
  if wires is not None and wires.active:
    raise ValueError("I-V nonlinearity with wire resistance is not modelled "
                     "(the network would be nonlinear): use one or the other")


def _gain(device) -> float:
  return 1.0 if device is None or device.iv is None else device.iv.gain


def _device_gain(g, device, hw):
  """The I-V nonlinearity at the read voltage: a gain on the absolute
  conductance, the (linear) ``Gmin`` reference unchanged."""
  if device.iv is None:
    return g
  g0 = jnp.float32(device.g0(hw))
  return (g + g0) * jnp.float32(device.iv.gain) - g0


def program_array(levels, hw: hardware.HardwareSpec, device, wires, key):
  """The conductances every dataflow computes with, and their read noise.

  The combination must pass :func:`check`.

  Args:
    levels: ``[A, R, ou_rows, C, S]`` int cell levels (arrays, row-blocks,
      rows, stored columns, slices); any shape without wires.
    hw: the hardware.
    device: a :class:`rsjax.kernels.Device`, or None for ideal cells.
    wires: :class:`rsjax.kernels.Wires`, or None for ideal wires.
    key: a ``jax.random`` key, required when the device programs at random.

  Returns:
    ``(g, read_std)``: float32 ``g`` like ``levels`` (with wires, each OU's
    transfer matrix) on the :func:`conductance_step` grid, and the
    per-cell read-noise std like it, or None.
  """
  g = jnp.asarray(levels, jnp.float32)
  wired = wires is not None and wires.active
  if (device is None or device.ideal) and not wired:
    return g, None
  device = devices_lib.Device() if device is None else device
  g, comp = device.program(g, hw, key)
  read_std = device.read_std(g, hw)
  if wired:
    g = _transfer(g, device, wires, hw)
  else:
    g = _device_gain(g, device, hw)
  return _round(g * comp, hw, _gain(device)), read_std


def _transfer(g, device, wires, hw):
  """Each OU's transfer matrix (levels above ``Gmin``) with IR drop."""
  num_arrays, num_rb, rows, cols, slices = g.shape
  bw = hw.block_shape[1]
  groups = -(-cols // bw)
  g0 = device.g0(hw)
  top = float(2**hw.cell_bits - 1) + g0
  # Unused columns of the last group hold cells at Gmin: they load the
  # row wires too.
  gp = jnp.pad(g, ((0, 0), (0, 0), (0, 0), (0, groups * bw - cols), (0, 0)))
  ou = gp.reshape(num_arrays, num_rb, rows, groups, bw * slices)
  ou = jnp.transpose(ou, (0, 1, 3, 2, 4))  # [A, R, G, rows, bw S]
  g_abs = (ou + jnp.float32(g0)) / jnp.float32(top)
  row_slots = jnp.arange(num_rb, dtype=jnp.int32)[None, :, None]
  col_slots = jnp.arange(groups, dtype=jnp.int32)[None, None, :]
  t = wires_lib.transfer(g_abs, wires, hw, row_slots=row_slots,
                         col_slots=col_slots)
  # Back to levels; the reference current removes g0 per driven DAC unit.
  t = t * jnp.float32(top) - jnp.float32(g0)
  t = jnp.transpose(t, (0, 1, 3, 2, 4)).reshape(num_arrays, num_rb, rows,
                                                groups * bw, slices)
  return t[:, :, :, :cols]
