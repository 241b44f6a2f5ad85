"""Compression accounting (docs/compression.md), per layer and in total.

Figures, for a layer with ``R`` row-blocks and ``G`` column groups:

- ``dense_ous = R * G``; ``kept_ous``: non-pruned blocks (pruning alone);
  ``stored_ous = sum_r K_r``, the distinct stored blocks of each row-block.
- ``ou_ratio = dense_ous / stored_ous`` (the headline figure).
- ``index_bits = sum_r G * ceil(log2(K_r + 1))`` (one code means pruned). A
  layer left uncompressed (identity index table, see
  :meth:`CompressedLayer.from_kernel`) needs no table: 0 bits.
- ``bit_ratio = rows*cols*weight_bits /
  (stored_ous*bh*bw*weight_bits + index_bits + 32 * scales)``, one float32
  scale per layer; ``fp32_ratio`` the same at 32 bits a weight, with no scale.
- ``crossbar_ratio``: crossbars for the dense layout over crossbars after each
  row-block's stored blocks are packed into its lowest column groups; a
  crossbar holds ``xbar_rows // ou_rows`` row-blocks and
  ``xbar_cols // ou_cols`` column groups; x2 arrays for differential.
- Per inference (``positions`` crossbar MVMs per inference: the output pixels
  of a conv, 1 for a dense layer): OU activations are one per cycle,
  row-block and column group (x arrays); ADC conversions ``ou_cols`` per
  activation. Given for ``dense``, ``pruned`` (kept blocks) and ``shared``
  (stored blocks: index-and-add converts each once and routes it).
- ``crossbar_ous_<layout>``: the OUs of the layout's busiest crossbar (an OU
  is fixed to its crossbar, so a layer takes as long as that crossbar).
  ``dense`` and ``pruned`` keep the dense placement (``pruned`` counts each
  crossbar's kept blocks); ``shared`` packs each row-block's stored blocks
  into its lowest column groups, so a row tile's first crossbar is its
  fullest. Per layer only: maxima do not add up over layers.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from rsjax._src import compressed as compressed_lib
from rsjax._src import hardware

TOTAL_KEYS = ("dense_ous", "kept_ous", "stored_ous", "index_bits",
              "dense_bits", "compressed_bits", "dense_crossbars",
              "packed_crossbars", "ou_activations_dense",
              "ou_activations_pruned", "ou_activations_shared",
              "adc_conversions_dense", "adc_conversions_pruned",
              "adc_conversions_shared", "weights", "stored_weights")


def _ratio(num: float, den: float) -> float:
  return float(num) / den if den else math.inf


def _ceil_log2(n: np.ndarray) -> np.ndarray:
  """``ceil(log2(n))`` for positive integers, exactly."""
  n = np.asarray(n, np.int64)
  return np.array([int(v - 1).bit_length() if v > 1 else 0 for v in n.ravel()],
                  np.int64).reshape(n.shape)


def layer_report(layer: compressed_lib.CompressedLayer,
                 hw: hardware.HardwareSpec, positions: int = 1
                 ) -> dict[str, Any]:
  """Every figure of docs/compression.md's report for one compressed layer.

  Args:
    layer: the :class:`CompressedLayer`.
    hw: the hardware it maps to; its ``block_shape`` must be the layer's.
    positions: crossbar MVMs per inference (output pixels for a conv).

  Returns:
    A dict of counts and ratios (plain Python numbers).
  """
  if tuple(layer.block_shape) != tuple(hw.block_shape):
    raise ValueError(
        f"layer blocks {tuple(layer.block_shape)} do not match the hardware "
        f"block shape {hw.block_shape}")
  if positions < 1:
    raise ValueError(f"positions must be >= 1, got {positions}")
  index = np.asarray(layer.index)
  num_rows, num_groups = index.shape
  bh, bw = hw.block_shape
  rows, cols = layer.matrix_shape
  stored_r = layer.stored_per_row_block()
  kept_ous = int(np.sum(index >= 0))
  stored_ous = int(stored_r.sum())
  dense_ous = num_rows * num_groups
  if layer.is_identity():
    index_bits = 0
  else:
    index_bits = int(num_groups * _ceil_log2(stored_r + 1).sum())
  weights = rows * cols
  dense_bits = weights * hw.weight_bits
  compressed_bits = stored_ous * bh * bw * hw.weight_bits + index_bits + 32
  fp32_compressed = stored_ous * bh * bw * 32 + index_bits

  rows_per_xbar, groups_per_xbar = hw.ous_per_xbar
  row_tiles = -(-num_rows // rows_per_xbar)
  dense_xbars = row_tiles * -(-num_groups // groups_per_xbar) * hw.arrays
  packed_xbars = 0
  for t in range(row_tiles):
    widest = int(stored_r[t * rows_per_xbar:(t + 1) * rows_per_xbar].max())
    packed_xbars += -(-widest // groups_per_xbar) * hw.arrays

  # The busiest crossbar of each layout, per MVM and input cycle.
  tiles = [(slice(t * rows_per_xbar, (t + 1) * rows_per_xbar),
            slice(c * groups_per_xbar, (c + 1) * groups_per_xbar))
           for t in range(row_tiles)
           for c in range(-(-num_groups // groups_per_xbar))]
  crossbar_ous_dense = max(index[rt, ct].size for rt, ct in tiles)
  crossbar_ous_pruned = max(int(np.sum(index[rt, ct] >= 0))
                            for rt, ct in tiles)
  crossbar_ous_shared = max(
      int(np.minimum(stored_r[rt], groups_per_xbar).sum()) for rt, _ in tiles)

  per_ou = positions * hw.cycles * hw.arrays
  return {
      "kernel_shape": list(layer.kernel_shape),
      "matrix_shape": [rows, cols],
      "row_blocks": num_rows,
      "column_groups": num_groups,
      "positions": positions,
      "weights": weights,
      "stored_weights": stored_ous * bh * bw,
      "dense_ous": dense_ous,
      "kept_ous": kept_ous,
      "stored_ous": stored_ous,
      "index_bits": index_bits,
      "dense_bits": dense_bits,
      "compressed_bits": compressed_bits,
      "ou_ratio": _ratio(dense_ous, stored_ous),
      "prune_ratio": _ratio(dense_ous, kept_ous),
      "bit_ratio": _ratio(dense_bits, compressed_bits),
      "fp32_ratio": _ratio(weights * 32, fp32_compressed),
      "dense_crossbars": dense_xbars,
      "packed_crossbars": packed_xbars,
      "crossbar_ratio": _ratio(dense_xbars, packed_xbars),
      "ou_activations_dense": dense_ous * per_ou,
      "ou_activations_pruned": kept_ous * per_ou,
      "ou_activations_shared": stored_ous * per_ou,
      "adc_conversions_dense": dense_ous * per_ou * hw.ou_cols,
      "adc_conversions_pruned": kept_ous * per_ou * hw.ou_cols,
      "adc_conversions_shared": stored_ous * per_ou * hw.ou_cols,
      "crossbar_ous_dense": crossbar_ous_dense,
      "crossbar_ous_pruned": crossbar_ous_pruned,
      "crossbar_ous_shared": crossbar_ous_shared,
  }


def compression_report(layers: Mapping[str, Any], hw: hardware.HardwareSpec,
                       positions: Mapping[str, int] | None = None
                       ) -> dict[str, Any]:
  """The report's figures (docs/compression.md) per layer and in total.

  Args:
    layers: ``{name: CompressedLayer}``; a plain kernel array counts as an
      uncompressed layer (:meth:`CompressedLayer.from_kernel`).
    hw: the hardware.
    positions: ``{name: crossbar MVMs per inference}``, default 1 each.

  Returns:
    ``{'layers': {name: figures}, 'total': figures, 'headline': 'ou_ratio'}``;
    the total's ratios are taken over the summed counts.
  """
  positions = dict(positions or {})
  unknown = sorted(set(positions) - set(layers))
  if unknown:
    raise ValueError(f"positions given for unknown layers: {unknown}")
  if not layers:
    raise ValueError("compression_report needs at least one layer")
  per_layer = {}
  for name, layer in layers.items():
    if not isinstance(layer, compressed_lib.CompressedLayer):
      layer = compressed_lib.CompressedLayer.from_kernel(layer, hw.block_shape)
    per_layer[name] = layer_report(layer, hw, positions.get(name, 1))
  total = {key: sum(r[key] for r in per_layer.values()) for key in TOTAL_KEYS}
  fp32_compressed = sum(
      r["stored_weights"] * 32 + r["index_bits"] for r in per_layer.values())
  total.update(
      ou_ratio=_ratio(total["dense_ous"], total["stored_ous"]),
      prune_ratio=_ratio(total["dense_ous"], total["kept_ous"]),
      bit_ratio=_ratio(total["dense_bits"], total["compressed_bits"]),
      fp32_ratio=_ratio(total["weights"] * 32, fp32_compressed),
      crossbar_ratio=_ratio(total["dense_crossbars"],
                            total["packed_crossbars"]),
  )
  return {"layers": per_layer, "total": total, "headline": "ou_ratio"}


_COLUMNS = (("layer", None), ("dense_ous", "d"), ("stored_ous", "d"),
            ("ou_ratio", ".2f"), ("bit_ratio", ".2f"), ("fp32_ratio", ".2f"),
            ("crossbar_ratio", ".2f"), ("index_bits", "d"),
            ("adc_conversions_dense", "d"), ("adc_conversions_shared", "d"))


def format_report(report: Mapping[str, Any]) -> str:
  """The report as a fixed-width text table, one row per layer and a total."""
  rows = [[name] + [format(fig[key], fmt) for key, fmt in _COLUMNS[1:]]
          for name, fig in report["layers"].items()]
  rows.append(["TOTAL"] + [format(report["total"][key], fmt)
                           for key, fmt in _COLUMNS[1:]])
  header = [key for key, _ in _COLUMNS]
  widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
  line = lambda cells: "  ".join(
      str(c).ljust(w) if i == 0 else str(c).rjust(w)
      for i, (c, w) in enumerate(zip(cells, widths)))
  out = [line(header), "-" * len(line(header))]
  out += [line(r) for r in rows]
  out.append(f"(headline figure: {report['headline']})")
  return "\n".join(out)
