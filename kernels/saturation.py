"""A straight-through backward that sees the ADC saturate.

The plain straight-through backward of :func:`rsjax.kernels.hwaware_layer`
differentiates ``x @ w`` as if every OU partial sum converted exactly. On a
small ADC many do not: a partial sum above the ADC range converts to the top
code, and a small change of the weights or inputs behind it changes nothing.
:func:`saturating_matmul` has the float product's value and a backward that
drops those terms.

The product of an input integer ``x`` and a stored weight value ``v`` is a
sum of terms ``2^(dac c) x_c * 2^(cell s) v_s`` over input cycles ``c`` and
cell slices ``s``, and each term reaches the output through one OU partial
sum ``p[c, g, s, n]`` (row-block ``g``, column ``n``). The backward keeps a
term where its partial sum converted without saturating (``p <= range``, the
ADC's range) and spreads the derivative of ``x`` and ``v`` over their digits
in proportion to the digits' values (``2^(dac c) x_c / x``, ``2^(cell s) v_s
/ v``; evenly where the value is 0). Where nothing saturates this is the
plain straight-through gradient exactly.

The cost is that of the direct dataflow's partial sums, computed one input
cycle at a time (``B x G x slices x N`` floats live), once in the backward.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rsjax._src import hardware
from rsjax.kernels import adc as adc_lib
from rsjax.kernels import cells as cells_lib

# Bytes of one chunk's backward intermediates (see _array_grads).
_CHUNK_BYTES = 64 << 20


def _float_arrays(w, w_int, hw: hardware.HardwareSpec):
  """Per stored array (as :func:`rsjax.kernels.cells.signed_to_cells`
  orders them): ``(float values, output sign, d values / d w)``."""
  if hw.signed == "offset":
    return [(w + 2 ** (hw.weight_bits - 1), 1.0, 1.0)]
  # Differential: w = pos - neg; at w = 0 each array takes half.
  half = 0.5 * (w_int == 0).astype(jnp.float32)
  return [(jnp.maximum(w, 0.0), 1.0, (w_int > 0).astype(jnp.float32) + half),
          (jnp.maximum(-w, 0.0), -1.0,
           -((w_int < 0).astype(jnp.float32) + half))]


def _array_grads(x, x_int, levels, v, g, hw, top):
  """Masked ``(d/dx, d/dv)`` of ``sum(g * (x @ v))`` for one array.

  The DAC levels of ``x_int`` and the array's cell ``levels`` (``[in, N,
  slices]``) decide which partial sums saturate; ``x`` spread over the
  cycles and ``v`` over the slices (by the digits' values) are what is
  differentiated, so that with nothing saturated this is exactly
  ``(g v^T, x^T g)``.
  """
  rows, (in_features, out_features) = hw.ou_rows, v.shape
  num_rb = -(-in_features // rows)
  pad = num_rb * rows - in_features
  cells = levels.astype(jnp.float32)
  valued = cells * jnp.asarray(
      2.0 ** (hw.cell_bits * np.arange(hw.slices)), jnp.float32)[None, None]
  total = jnp.sum(valued, axis=-1, keepdims=True)  # the stored integers
  v_share = jnp.where(total > 0, valued / jnp.maximum(total, 1.0),
                      1.0 / hw.slices)
  # [G, R, N * S]: row-blocks lead, so every product below is one batched
  # matmul without transposes (about 2x faster on a CPU than [B, G, ...]).
  blocked = lambda a: jnp.pad(a, ((0, pad), (0, 0), (0, 0))).reshape(
      num_rb, rows, out_features * hw.slices)
  cells_g = blocked(cells)
  v_parts_g = blocked(v_share * v[..., None])
  num_b = x.shape[0]
  # Rows of x per chunk, so that one cycle's partial sums and masked
  # cotangents (three [G, rows, N * S] float32 arrays) stay within budget.
  chunk = int(min(num_b, max(8, _CHUNK_BYTES // (
      3 * 4 * num_rb * out_features * hw.slices))))
  num_chunks = -(-num_b // chunk)

  def chunked(a):  # [B, in] -> [chunks, G, chunk rows, R]
    a = jnp.pad(a, ((0, num_chunks * chunk - num_b), (0, pad)))
    return a.reshape(num_chunks, chunk, num_rb, rows).transpose(0, 2, 1, 3)

  g_chunks = jnp.pad(g, ((0, num_chunks * chunk - num_b), (0, 0))).reshape(
      num_chunks, chunk, out_features)
  batched = lambda lhs, rhs, contract: jax.lax.dot_general(
      lhs, rhs, (contract, ((0,), (0,))), precision=jax.lax.Precision.HIGHEST)

  def one_chunk(gv, t):
    x_c, xi_c, g_c = t  # [G, rows, R] floats and ints; [rows, N]
    g_c = jnp.broadcast_to(g_c[:, :, None], g_c.shape + (hw.slices,))
    g_c = g_c.reshape(1, chunk, out_features * hw.slices)
    x_total = xi_c.astype(jnp.float32)

    def cycle(carry, c):
      gv, dx = carry
      shift = c * hw.dac_bits
      lev = ((xi_c >> shift) & (2**hw.dac_bits - 1)).astype(jnp.float32)
      # The cycle's share of x: its digit's value (evenly where x_int = 0).
      share = jnp.where(x_total > 0,
                        lev * jnp.exp2(shift.astype(jnp.float32))
                        / jnp.maximum(x_total, 1.0), 1.0 / hw.cycles)
      p = batched(lev, cells_g, ((2,), (1,)))  # [G, rows, N * S]
      gm = jnp.where(p <= top, g_c, 0.0)  # the kept terms
      gv = gv + batched(share * x_c, gm, ((1,), (1,)))  # [G, R, N * S]
      dx = dx + share * batched(gm, v_parts_g, ((2,), (2,)))  # [G, rows, R]
      return (gv, dx), None

    (gv, dx), _ = jax.lax.scan(cycle, (gv, jnp.zeros_like(x_c)),
                               jnp.arange(hw.cycles, dtype=jnp.int32))
    return gv, dx

  # Padded rows have x = 0 and g = 0: they add nothing to d/dv.
  gv, d_x = jax.lax.scan(one_chunk, jnp.zeros(cells_g.shape, jnp.float32),
                         (chunked(x), chunked(x_int), g_chunks))
  d_x = d_x.transpose(0, 2, 1, 3).reshape(num_chunks * chunk, -1)[
      :num_b, :in_features]
  d_v = jnp.sum(gv.reshape(-1, out_features, hw.slices)[:in_features]
                * v_share, axis=-1)
  return d_x, d_v


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def saturating_matmul(x, w, x_int, w_int, hw: hardware.HardwareSpec,
                      adc_range=None):
  """``x @ w`` whose backward drops the terms of saturated partial sums.

  Args:
    x: ``[B, in]`` float inputs in units of the input step (``x_int`` as a
      differentiable float, e.g. ``clip(x) / x_scale``), non-negative.
    w: ``[in, N]`` float weights in units of the weight step.
    x_int: ``[B, in]`` the inputs as the crossbar receives them (int,
      ``[0, 2^input_bits)``): the partial sums are theirs.
    w_int: ``[in, N]`` the quantized weights the crossbar stores (int).
    hw: the hardware (its ADC decides what saturates).
    adc_range: int32 scalar for ``adc_mode='calibrated'``, else None.

  Returns:
    ``[B, N]`` float32 ``x @ w``.
  """
  del x_int, w_int, adc_range
  return jnp.matmul(x, w, precision=jax.lax.Precision.HIGHEST)


def _fwd(x, w, x_int, w_int, hw, adc_range):
  y = saturating_matmul(x, w, x_int, w_int, hw, adc_range)
  return y, (x, w, x_int, w_int, adc_range)


def _bwd(hw, res, g):
  x, w, x_int, w_int, adc_range = res
  x_int = jnp.asarray(x_int, jnp.int32)
  w_int = jnp.asarray(w_int, jnp.int32)
  g = jnp.asarray(g, jnp.float32)
  top = adc_lib.resolve_range(hw, adc_range).astype(jnp.float32)
  d_x = jnp.zeros(x.shape, jnp.float32)
  d_w = jnp.zeros(w.shape, jnp.float32)
  levels = cells_lib.signed_to_cells(w_int, hw)  # [arrays, in, N, slices]
  for array, (v, sign, dv_dw) in enumerate(_float_arrays(w, w_int, hw)):
    gx, gv = _array_grads(x, x_int, levels[array], v, g, hw, top)
    d_x = d_x + sign * gx
    d_w = d_w + sign * gv * dv_dw
  if hw.signed == "offset":
    # The digital offset subtraction, -2^(b-1) sum(x), is exact.
    d_x = d_x - 2.0 ** (hw.weight_bits - 1) * jnp.sum(g, axis=-1,
                                                      keepdims=True)
  return d_x, d_w, None, None, None


saturating_matmul.defvjp(_fwd, _bwd)
