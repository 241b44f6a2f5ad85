"""An independent NumPy crossbar reference written from docs/hardware.md.

Explicit loops over row-blocks, column groups, cycles, arrays and slices with
exact Python/NumPy integers; nothing from rsjax.kernels is used.
"""

import numpy as np


def adc_range(hw, calibrated=None):
  full = max(hw.partial_sum_max, hw.adc_max)
  if hw.adc_mode == "clip":
    return hw.adc_max
  if hw.adc_mode == "scale":
    return full
  return int(min(max(calibrated, hw.adc_max), full))


def crossbar(x, w, hw, calibrated=None):
  """Returns ``(codes_sum, correction, step)``: y = codes_sum*step - corr."""
  x = np.asarray(x, np.int64)
  w = np.asarray(w, np.int64)
  m, k = x.shape
  n = w.shape[1]
  rows = hw.ou_rows
  bw = hw.ou_cols // hw.slices
  nrb, ngr = -(-k // rows), -(-n // bw)
  xp = np.zeros((m, nrb * rows), np.int64)
  xp[:, :k] = x
  wp = np.zeros((nrb * rows, ngr * bw), np.int64)
  wp[:k, :n] = w
  b = hw.weight_bits
  if hw.signed == "offset":
    arrays = [(1, wp + 2 ** (b - 1))]
  else:
    arrays = [(1, np.maximum(wp, 0)), (-1, np.maximum(-wp, 0))]
  rng = adc_range(hw, calibrated)
  codes = np.zeros((m, ngr * bw), np.int64)
  corr = np.zeros((m, ngr * bw), np.int64)
  for r in range(nrb):
    rs = slice(r * rows, (r + 1) * rows)
    for g in range(ngr):
      cs = slice(g * bw, (g + 1) * bw)
      if not wp[rs, cs].any():
        continue  # a zero (pruned) block is never stored nor activated
      for t in range(hw.cycles):
        xt = (xp[:, rs] >> (t * hw.dac_bits)) & (2**hw.dac_bits - 1)
        for sign, stored in arrays:
          for s in range(hw.slices):
            cell = (stored[rs, cs] >> (s * hw.cell_bits)) & (
                2**hw.cell_bits - 1)
            p = xt @ cell
            assert p.min() >= 0 and p.max() <= hw.partial_sum_max
            code = np.minimum((2 * p * hw.adc_max + rng) // (2 * rng),
                              hw.adc_max)
            codes[:, cs] += sign * code * 2 ** (t * hw.dac_bits +
                                                s * hw.cell_bits)
      if hw.signed == "offset":
        corr[:, cs] += 2 ** (b - 1) * xp[:, rs].sum(axis=1, keepdims=True)
  return codes[:, :n], corr[:, :n], rng / hw.adc_max


def crossbar_output(x, w, hw, calibrated=None):
  codes, corr, step = crossbar(x, w, hw, calibrated)
  if hw.adc_mode == "clip":
    return codes - corr
  return codes * step - corr


def crossbar_output_signed(x, w, hw, calibrated=None):
  """Two's complement inputs: ``u`` cycles minus ``2^input_bits`` times one
  extra cycle of the sign bits."""
  x = np.asarray(x, np.int64)
  u = x % 2**hw.input_bits
  msb = u >> (hw.input_bits - 1)
  codes_u, corr_u, step = crossbar(u, w, hw, calibrated)
  one = hw.replace(input_bits=hw.dac_bits)
  codes_m, corr_m, _ = crossbar(msb, w, one, calibrated)
  codes = codes_u - 2**hw.input_bits * codes_m
  corr = corr_u - 2**hw.input_bits * corr_m
  if hw.adc_mode == "clip":
    return codes - corr
  return codes * step - corr
