"""Jitted emulation dataflows behind :func:`rsjax.kernels.apply`.

Four ways to get the same numbers (docs/hardware.md, docs/emulator.md):

* ``table``: with ``dac_bits * ou_rows`` small (1-bit DAC, 9-row OUs: 512
  input patterns per row-block), the ADC outputs of every input pattern are
  tabulated once per weight set (``build_table``: codes shift-added over the
  slices, positive minus negative array). The per-input call then is one
  gather of a table row per (row, cycle, row-block) and int32 adds, scanned
  over row-blocks so that one row-block's table stays in cache. Bit-exact.
  A shared layer tabulates each stored block once (index-and-add: one
  conversion per stored block, pattern and slice) and its index table routes
  the tabulated outputs to the output columns once per weight set, so the
  per-input call is the same lookups as a dense layer's.
* ``streamed``: the table dataflow for layers whose whole table is too large
  to keep (a dense VGG layer's is hundreds of MiB): each row-block's table
  is built from the programmed cells inside the call, then looked up for
  every row of the chunk. Building costs ``2^(dac_bits ou_rows)`` partial
  sums per stored column and slice, whatever the batch, so large chunks
  amortise it; still far fewer conversions than ``direct``'s one per row,
  cycle and column for a batch of convolution positions. A shared layer
  tabulates each output column from its stored column's cells (the same
  codes as routing the stored block's, since the ADC is deterministic on
  this path). Bit-exact with ``table``.
* ``direct``: per cycle, all OU partial sums of a chunk of rows as a batched
  float32 matmul (exact small integers), read noise, ADC, shift-and-add. Used
  with read noise (fresh per conversion, so nothing can be tabulated) and
  with more than ``TABLE_MAX_PATTERNS`` input patterns per row-block (e.g.
  16- or 32-row OUs with a 1-bit DAC).
  A dense layer without read noise (e.g. OUs of 16 or 32 rows: too many
  input patterns to tabulate) runs it row-block by row-block over large
  chunks of rows (``direct_dense_apply``): one ``[rows, ou_rows] @
  [ou_rows, A C S]`` matmul per row-block and cycle instead of tiny
  per-chunk batched ones; the same numbers, about twice as fast.
* ``exact``: a lossless ideal ADC makes the crossbar an integer matmul; it is
  computed as float32 matmuls on input digits small enough that every sum is
  an exact float32 integer.

Every path returns ``S``, the int32 sum over cycles, slices, row-blocks (and
arrays, with sign) of ``2^(t dac_bits + s cell_bits) * code``, before the
offset correction and the ADC step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rsjax._src import hardware
from rsjax.kernels import adc

_HIGHEST = jax.lax.Precision.HIGHEST
# Bound the memory of one chunk's intermediates (the 256 MiB budget of the
# benchmark leaves room for inputs, outputs and the table).
_CHUNK_BYTES = 32 << 20
# Row-blocks tabulated together: a cache-sized batch.
_TABLE_CHUNK_BYTES = 2 << 20
# The streamed tables are rebuilt per chunk, so its chunks are larger.
_STREAM_CHUNK_BYTES = 256 << 20


def _weights(hw: hardware.HardwareSpec):
  """int32 ``[arrays]`` signs and ``[slices]`` shifts."""
  sign = jnp.array([1] if hw.arrays == 1 else [1, -1], jnp.int32)
  shift = jnp.arange(hw.slices, dtype=jnp.int32) * hw.cell_bits
  return sign, shift


def _combine(codes, hw):
  """``[A, ..., S]`` codes -> ``[...]`` int32, signed and shift-added."""
  sign, shift = _weights(hw)
  lead = (slice(None),) + (None,) * (codes.ndim - 1)
  shifted = jnp.left_shift(codes, shift[(None,) * (codes.ndim - 1)])
  # int32 sums: with jax_enable_x64 an integer sum would widen to int64.
  return jnp.sum(jnp.sum(shifted, axis=-1, dtype=jnp.int32) * sign[lead[:-1]],
                 axis=0, dtype=jnp.int32)


def num_patterns(hw: hardware.HardwareSpec) -> int:
  """Input patterns one row-block sees per cycle, ``2^(dac_bits ou_rows)``."""
  return 2 ** (hw.dac_bits * hw.ou_rows)


def build_table(cells, hw: hardware.HardwareSpec, adc_range, *,
                ideal: bool = False, adc_model=None,
                signed_sums: bool = False):
  """The per-pattern ADC outputs of programmed cells.

  Args:
    cells: ``[A, R, ou_rows, C, S]`` float32 conductances.
    hw: the hardware.
    adc_range: int32 scalar ADC range.
    ideal: the conductances are the ideal integer levels (no programming
      non-idealities), so a ``clip`` ADC is a plain ``minimum``.
    adc_model: the converter's non-linearity, or None.
    signed_sums: partial sums can be negative (clip them at code 0).

  Returns:
    ``[R, P, C]`` int32: for row-block ``r`` and input pattern ``pat`` (row
    ``i`` gets DAC level ``(pat >> i dac_bits) & (2^dac_bits - 1)``), the
    signed, shift-added ADC codes of the ``C`` stored columns.
  """
  num_arrays, _, rows, cols, slices = cells.shape
  digits = _digits(rows, hw)
  per_block = num_arrays * num_patterns(hw) * cols * slices * 4
  # A few row-blocks at a time: their partial sums and codes stay in cache
  # (batches of 32 MiB made the table 10x slower to build).
  batch = max(1, min(cells.shape[1], _TABLE_CHUNK_BYTES // per_block))
  return jax.lax.map(
      lambda g: _tabulate(g, digits, hw, adc_range, ideal=ideal,
                          adc_model=adc_model, signed_sums=signed_sums),
      jnp.moveaxis(cells, 1, 0), batch_size=batch)


def _digits(rows: int, hw: hardware.HardwareSpec):
  """``[P, rows]`` float32 DAC levels of every input pattern."""
  level = jnp.arange(rows, dtype=jnp.int32) * hw.dac_bits
  return ((jnp.arange(num_patterns(hw), dtype=jnp.int32)[:, None]
           >> level[None]) & (2**hw.dac_bits - 1)).astype(jnp.float32)


def _tabulate(g, digits, hw, adc_range, *, ideal: bool = False,
              adc_model=None, signed_sums: bool = False):
  """One row-block's table: ``g [A, rows, C, S]`` -> ``[P, C]`` int32."""
  num_arrays, rows, cols, slices = g.shape
  # A plain [P, rows] @ [rows, A S C] matmul: its row-major result keeps the
  # table's rows contiguous for the lookups (an einsum straight to
  # [A, P, C, S] let XLA CPU pick a layout that made every gathered row
  # strided, 4x slower in the streamed dataflow). Slices outermost, so the
  # shift-and-add below adds whole [P, C] slabs.
  p = jnp.dot(digits, jnp.transpose(g, (1, 0, 3, 2)).reshape(rows, -1),
              precision=_HIGHEST).reshape(-1, num_arrays * slices, cols)
  top = jnp.float32(hw.adc_max)
  code_max = min(hw.adc_max, hw.partial_sum_max)
  weight_sum = sum(2 ** (s * hw.cell_bits) for s in range(slices))
  if code_max * weight_sum >= 2**24 or adc_model is not None:
    # float32 shift-adds would round, or the thresholds are not uniform.
    codes = adc.codes(jnp.moveaxis(p.reshape(-1, num_arrays, slices, cols),
                                   0, 1), hw, adc_range, adc_model)
    return _combine(jnp.moveaxis(codes, 2, 3), hw)
  if ideal and adc.mode(hw).unit_lsb:
    # Integer sums: adc.codes is min(p, adc_max) exactly, and a lone minimum
    # keeps the fusion fast (floor/clip/casts in it were ~8x slower).
    c = jnp.minimum(p, top)
  else:
    # Without wire resistance sums are >= 0 here (no read noise), so only
    # the top needs clipping.
    c = jnp.minimum(jnp.floor(p * top / adc_range.astype(jnp.float32)
                              + 0.5), top)
    if signed_sums:
      c = jnp.maximum(c, 0.0)
  # Shift-and-add in float32 (exact: every sum is below 2^24), one cast.
  acc = None
  for a in range(num_arrays):
    for s in range(slices):
      term = c[:, a * slices + s] * jnp.float32(2 ** (s * hw.cell_bits))
      term = term if a == 0 else -term  # differential: positive - negative
      acc = term if acc is None else acc + term
  return acc.astype(jnp.int32)


def patterns(x, hw: hardware.HardwareSpec):
  """``[M, R * ou_rows]`` int inputs -> ``[R, M, cycles]`` pattern ids."""
  m = x.shape[0]
  xr = x.reshape(m, -1, hw.ou_rows)
  cyc = (jnp.arange(hw.cycles, dtype=jnp.int32) * hw.dac_bits)
  row = (jnp.arange(hw.ou_rows, dtype=jnp.int32) * hw.dac_bits)
  d = (xr[:, :, None, :] >> cyc[None, None, :, None]) & (2**hw.dac_bits - 1)
  pat = jnp.sum(jnp.left_shift(d, row[None, None, None, :]), axis=-1,
                dtype=jnp.int32)
  return jnp.transpose(pat, (1, 0, 2))


def _lookup(acc, tab, pat, cyc):
  """``acc + sum_t 2^(t dac) tab[pat[:, t]]``: ``[P, C]``, ``[M, T]``.

  A cycle at a time: no ``[M, T, C]`` intermediate (in the streamed
  dataflow, where the table is computed in the same loop, gathering all
  cycles at once was 10x slower).
  """
  for t in range(pat.shape[1]):
    acc = acc + jnp.left_shift(tab.at[pat[:, t]].get(mode="promise_in_bounds"),
                               cyc[t])
  return acc


def table_apply(table, x, hw: hardware.HardwareSpec):
  """``S`` for ``x [M, R * ou_rows]`` by table lookups (see module)."""
  pats = patterns(x, hw)
  cyc = jnp.arange(hw.cycles, dtype=jnp.int32) * hw.dac_bits

  def body(acc, xs):
    return _lookup(acc, *xs, cyc), None

  acc, _ = jax.lax.scan(body, jnp.zeros((x.shape[0], table.shape[2]),
                                        jnp.int32), (table, pats))
  return acc


def streamed_apply(cells, route, active, x, hw: hardware.HardwareSpec,
                   adc_range, *, adc_model=None, signed_sums: bool = False):
  """``S`` for ``x [M, R * ou_rows]``, tabulating row-block by row-block.

  Args:
    cells: ``[A, R, ou_rows, C, S]`` programmed conductances.
    route: ``[R, N]`` stored column per output column (``C`` = pruned) of a
      shared layer, or None for a dense one.
    active: ``[R, N]`` int32, 1 where the block is stored.
    x: the unsigned int inputs.
    hw: the hardware.
    adc_range: int32 scalar ADC range.
    adc_model, signed_sums: as :func:`build_table`.

  Returns:
    ``[M, N]`` int32, equal to :func:`table_apply` on the whole table.
  """
  digits = _digits(cells.shape[2], hw)
  cyc = jnp.arange(hw.cycles, dtype=jnp.int32) * hw.dac_bits
  n = active.shape[1]

  def body(acc, xs):
    g, pat, route_r, active_r = xs
    if route is not None:
      # Each output column tabulates its stored column's cells: the same
      # codes as converting the stored block once and routing them (the ADC
      # is deterministic here), in a table whose rows the lookups read
      # contiguously (routing the table's columns instead left XLA CPU a
      # layout that made the lookups 5x slower).
      g = jnp.take(g, jnp.minimum(route_r, g.shape[2] - 1), axis=2)
    tab = _tabulate(g, digits, hw, adc_range, adc_model=adc_model,
                    signed_sums=signed_sums) * active_r[None, :]
    return _lookup(acc, tab, pat, cyc), None

  rts = active if route is None else route
  acc, _ = jax.lax.scan(body, jnp.zeros((x.shape[0], n), jnp.int32),
                        (jnp.moveaxis(cells, 1, 0), patterns(x, hw), rts,
                         active))
  return acc


def _route_rows(z, route):
  """Index-and-add over row-blocks: ``z [R, M, C]`` -> ``[M, N]``.

  XLA CPU gathers whole rows far faster than single elements, so the
  routing runs on ``[C + 1, M]`` transposes (the last row zero, for pruned
  entries): one contiguous row of M outputs per (row-block, output column).
  """
  num_rb, m, _ = z.shape
  zt = jnp.pad(jnp.transpose(z, (0, 2, 1)), ((0, 0), (0, 1), (0, 0)))

  def body(acc, xs):
    zr, route_r = xs
    return acc + zr.at[route_r].get(mode="promise_in_bounds"), None

  acc, _ = jax.lax.scan(body, jnp.zeros((route.shape[1], m), jnp.int32),
                        (zt, route))
  return jnp.transpose(acc)


def direct_apply(cells, route, active, x, hw: hardware.HardwareSpec,
                 adc_range, read_sigma: float, key, *, read_std=None,
                 adc_model=None):
  """``S`` for ``x [M, R * ou_rows]`` from all partial sums (see module).

  Cycles are shift-added per row-block first, so a shared layer routes once
  per row-block, not once per cycle. Read noise is drawn per conversion:
  ``read_sigma`` on every partial sum, and per cell (``read_std``, like
  ``cells``) as normal noise of std ``sqrt(sum_i d_i^2 read_std_i^2)`` on
  the sum of DAC levels ``d_i``: the distribution of fresh normal noise on
  every cell's conductance.
  """
  num_arrays, num_rb, rows, cols, slices = cells.shape
  m = x.shape[0]
  xr = jnp.transpose(x.reshape(m, num_rb, rows), (1, 0, 2))
  g = cells.reshape(num_arrays, num_rb, rows, cols * slices)
  var = (None if read_std is None else jnp.square(read_std).reshape(g.shape))

  def cycle(acc, t):
    xt = ((xr >> (t * hw.dac_bits)) & (2**hw.dac_bits - 1)).astype(jnp.float32)
    p = jnp.einsum("rmi,arik->armk", xt, g, precision=_HIGHEST)
    if read_sigma or var is not None:
      noise = jax.random.normal(jax.random.fold_in(key, t), p.shape,
                                jnp.float32)
      if var is None:
        p = p + jnp.float32(read_sigma) * noise
      else:
        v = jnp.einsum("rmi,arik->armk", xt * xt, var, precision=_HIGHEST)
        p = p + jnp.sqrt(v + jnp.float32(read_sigma)**2) * noise
    c = adc.codes(p, hw, adc_range, adc_model).reshape(num_arrays, num_rb, m,
                                                       cols, slices)
    return acc + jnp.left_shift(_combine(c, hw), t * hw.dac_bits), None

  z, _ = jax.lax.scan(cycle, jnp.zeros((num_rb, m, cols), jnp.int32),
                      jnp.arange(hw.cycles, dtype=jnp.int32))
  if route is None:
    return jnp.sum(z * active[:, None, :], axis=0, dtype=jnp.int32)
  return _route_rows(z, route)


def direct_dense_apply(cells, active, x, hw: hardware.HardwareSpec,
                       adc_range, *, adc_model=None):
  """``S`` of a dense layer without read noise, row-block by row-block.

  The numbers of :func:`direct_apply` (the same partial sums, ADC and
  shift-adds) for ``route=None, read_sigma=0``, with the row-blocks as the
  outer loop so each step is one large matmul over all rows of the chunk.
  """
  num_arrays, num_rb, rows, cols, slices = cells.shape
  m = x.shape[0]
  xr = jnp.transpose(x.reshape(m, num_rb, rows), (1, 0, 2))

  def body(acc, xs):
    g, x_rb, active_r = xs
    g = jnp.moveaxis(g, 1, 0).reshape(rows, -1)
    for t in range(hw.cycles):
      xt = ((x_rb >> (t * hw.dac_bits)) & (2**hw.dac_bits - 1)).astype(
          jnp.float32)
      p = jnp.dot(xt, g, precision=_HIGHEST).reshape(m, num_arrays, cols,
                                                      slices)
      c = adc.codes(jnp.moveaxis(p, 1, 0), hw, adc_range, adc_model)
      acc = acc + jnp.left_shift(_combine(c, hw) * active_r[None, :],
                                 t * hw.dac_bits)
    return acc, None

  acc, _ = jax.lax.scan(body, jnp.zeros((m, cols), jnp.int32),
                        (jnp.moveaxis(cells, 1, 0), xr, active))
  return acc


def exact_apply(matrix, x, hw: hardware.HardwareSpec):
  """``x @ matrix`` exactly: ``x [M, rows]``, int ``matrix [rows, N]``."""
  rows = x.shape[1]
  wmax = max(hw.max_weight, 1)
  bits = min(4, hw.input_bits)
  # Every partial dot product must stay below 2^24 to be exact in float32.
  chunk = max(1, (2**24 - 1) // ((2**bits - 1) * wmax))
  wf = matrix.astype(jnp.float32)
  acc = jnp.zeros((x.shape[0], matrix.shape[1]), jnp.int32)
  for start in range(0, rows, chunk):
    xs, ws = x[:, start:start + chunk], wf[start:start + chunk]
    for shift in range(0, hw.input_bits, bits):
      digit = ((xs >> shift) & (2**bits - 1)).astype(jnp.float32)
      part = jnp.dot(digit, ws, precision=_HIGHEST).astype(jnp.int32)
      acc = acc + jnp.left_shift(part, shift)
  return acc


def chunk_rows(hw: hardware.HardwareSpec, dataflow: str, num_rb: int,
               cols: int, *, reads: bool = False) -> int:
  """Rows of ``x`` per chunk so one chunk's intermediates fit the budget."""
  if dataflow == "table":
    # Pattern ids and the accumulator; XLA fuses the digit extraction.
    per_row = num_rb * hw.cycles * 4 * 2 + cols * 4 * 2
  elif dataflow == "streamed":
    # Every chunk builds all the tables again: big chunks amortise that.
    # Per row: the chunk of x, its pattern ids, the accumulator and one
    # cycle's lookups; per chunk: one row-block's table being built
    # (partial sums, codes, shift-adds).
    per_row = num_rb * (hw.ou_rows + hw.cycles) * 4 + cols * 4 * 3
    build = 3 * hw.arrays * hw.slices * num_patterns(hw) * cols * 4
    left = max(_STREAM_CHUNK_BYTES - build, 0)
    return int(max(8, min(1 << 16, left // per_row)))
  elif dataflow == "direct":
    # Per-cell read noise adds the variances and the noise.
    per_row = hw.arrays * num_rb * cols * hw.slices * 4 * (5 if reads else 3)
  elif dataflow == "direct_dense":
    # One row-block's partial sums and codes, the accumulator and the rows.
    per_row = (hw.arrays * cols * hw.slices * 4 * 3 + cols * 4 * 2
               + num_rb * hw.ou_rows * 4 * 2)
  else:
    per_row = num_rb * hw.ou_rows * 4 * 3 + cols * 4 * 2
  return int(max(8, min(4096, _CHUNK_BYTES // max(per_row, 1))))


def map_rows(fn, x, rows: int, key=None):
  """``fn(x_chunk, key_chunk)`` over chunks of ``rows`` rows of ``x``."""
  m = x.shape[0]
  if m <= rows:
    return fn(x, key)
  num = -(-m // rows)
  rows = -(-m // num)  # balanced chunks: pad at most num - 1 rows
  xp = jnp.pad(x, ((0, num * rows - m), (0, 0)))
  xs = xp.reshape(num, rows, x.shape[1])
  if key is None:
    out = jax.lax.map(lambda c: fn(c, None), xs)
  else:
    keys = jax.random.split(key, num)
    out = jax.lax.map(lambda a: fn(a[0], a[1]), (xs, keys))
  return out.reshape(num * rows, -1)[:m]
