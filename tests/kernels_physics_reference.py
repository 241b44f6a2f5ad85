"""An independent NumPy reference of the real-array models (float64).

Nodal analysis of every OU activation, input by input (the kernels use a
transfer matrix per OU, solved in the current formulation): node voltages
of the row and column wires from Kirchhoff's current law, as a dense
``2 rows cols`` system. Nothing from rsjax.kernels is used.
"""

import numpy as np


def nodal_column_currents(g, v, r_row, r_col, r_row_term=0.0,
                          r_col_term=0.0):
  """Column terminal currents of one OU by nodal analysis.

  Args:
    g: ``[rows, cols]`` cell conductances (units of Gmax).
    v: ``[rows]`` row driver voltages.
    r_row, r_col: wire segment resistances (units of Rmin), > 0.
    r_row_term, r_col_term: terminal resistances.

  Returns:
    ``[cols]`` currents into the columns' virtual grounds.
  """
  rows, cols = g.shape
  n = rows * cols
  u = lambda i, j: i * cols + j          # row-wire node of cell (i, j)
  w = lambda i, j: n + i * cols + j      # column-wire node of cell (i, j)
  a = np.zeros((2 * n, 2 * n))
  b = np.zeros(2 * n)

  def conductance(p, q, c):  # between nodes p and q (q None: to a source)
    a[p, p] += c
    if q is not None:
      a[q, q] += c
      a[p, q] -= c
      a[q, p] -= c

  for i in range(rows):
    for j in range(cols):
      conductance(u(i, j), w(i, j), g[i, j])
    first = 1.0 / (r_row + r_row_term)
    conductance(u(i, 0), None, first)    # to the driver at v[i]
    b[u(i, 0)] += first * v[i]
    for j in range(cols - 1):
      conductance(u(i, j), u(i, j + 1), 1.0 / r_row)
  for j in range(cols):
    for i in range(rows - 1):
      conductance(w(i, j), w(i + 1, j), 1.0 / r_col)
    conductance(w(rows - 1, j), None, 1.0 / (r_col + r_col_term))  # ground
  volts = np.linalg.solve(a, b)
  return volts[[w(rows - 1, j) for j in range(cols)]] / (r_col + r_col_term)


def cell_levels(w, hw):
  """``(arrays, levels [arrays, rows, cols, slices])`` of signed ints."""
  w = np.asarray(w, np.int64)
  b = hw.weight_bits
  if hw.signed == "offset":
    stored = [w + 2 ** (b - 1)]
    signs = [1]
  else:
    stored = [np.maximum(w, 0), np.maximum(-w, 0)]
    signs = [1, -1]
  levels = np.stack([
      np.stack([(s >> (k * hw.cell_bits)) & (2**hw.cell_bits - 1)
                for k in range(hw.slices)], axis=-1) for s in stored])
  return signs, levels


def physical_crossbar(x, w, hw, *, g0, wires=None, iv_gain=1.0,
                      thresholds=None, xbar_slots=True, row_block_offset=0):
  """The output (codes shift-added, less the offset mapping's correction)
  of ``x @ w`` on arrays with ``Gmin = g0`` levels, wire resistance, an I-V gain at
  the read voltage and ADC thresholds (LSB, ``[adc_max]``; None: ideal),
  with a ``clip`` ADC (unit LSB), a 1-bit DAC, and the ``Gmin`` current of
  the driven rows subtracted by an ideal reference.

  ``wires``: ``(r_row, r_col, r_row_term, r_col_term)`` or None; with
  ``xbar_slots`` the OU's place in its crossbar adds the wire crossed to
  reach it to the terminals.
  """
  assert hw.dac_bits == 1 and hw.adc_mode == "clip"
  x = np.asarray(x, np.int64)
  m, k = x.shape
  n = np.asarray(w).shape[1]
  rows = hw.ou_rows
  bw = hw.ou_cols // hw.slices
  nrb, ngr = -(-k // rows), -(-n // bw)
  wp = np.zeros((nrb * rows, ngr * bw), np.int64)
  wp[:k, :n] = w
  xp = np.zeros((m, nrb * rows), np.int64)
  xp[:, :k] = x
  signs, levels = cell_levels(wp, hw)
  # Columns past the matrix's last are left unprogrammed, at Gmin.
  levels[:, :, n:] = 0
  top = 2**hw.cell_bits - 1
  gmax = top + g0
  if thresholds is None:
    thresholds = np.arange(1, hw.adc_max + 1) - 0.5
  out = np.zeros((m, ngr * bw))
  for r in range(nrb):
    rs = slice(r * rows, (r + 1) * rows)
    for gi in range(ngr):
      cs = slice(gi * bw, (gi + 1) * bw)
      if not wp[rs, cs].any():
        continue
      if hw.signed == "offset":
        out[:, cs] -= 2.0 ** (hw.weight_bits - 1) * xp[:, rs].sum(
            axis=1, keepdims=True)
      for a, sign in enumerate(signs):
        # Physical columns: each weight's slices side by side.
        cells = levels[a, rs, cs].reshape(rows, bw * hw.slices)
        g_abs = (cells + g0) / gmax
        for t in range(hw.cycles):
          bits = (xp[:, rs] >> t) & 1
          for row in range(m):
            v = bits[row].astype(np.float64)
            if wires is None:
              cur = (v @ g_abs) * iv_gain
            else:
              r_row, r_col, r_rt, r_ct = wires
              if xbar_slots:
                rb_slot = (r + row_block_offset) % max(hw.xbar_rows // rows, 1)
                cg_slot = gi % max(hw.xbar_cols // hw.ou_cols, 1)
                r_rt = r_rt + r_row * cg_slot * hw.ou_cols
                r_ct = r_ct + r_col * (hw.xbar_rows - (rb_slot + 1) * rows)
              cur = nodal_column_currents(g_abs, v, r_row, r_col, r_rt, r_ct)
            p = cur * gmax - g0 * v.sum()
            code = np.searchsorted(thresholds, p, side="right")
            code = code.reshape(bw, hw.slices)
            for s in range(hw.slices):
              out[row, cs] += sign * code[:, s] * 2.0 ** (t + s * hw.cell_bits)
  return out[:, :n]
