"""OU activations and ADC conversions per layer (docs/hardware.md, docs/compression.md).

Counted as the core's compression report counts them: per crossbar MVM (one
input vector; a conv makes one per output pixel, ``positions``), one OU
activation per cycle, row-block and column group of ``ou_cols`` cells, times
the arrays (2 for ``differential``); ``ou_cols`` ADC conversions per
activation. ``dense``: every block; ``pruned``: non-zero blocks only;
``shared``: each row-block's distinct stored blocks, converted once and
routed by the index table.
"""

from __future__ import annotations

import numpy as np

from rsjax._src import hardware
from rsjax._src import lowering


def ou_counts(hw: hardware.HardwareSpec, matrix_shape=None, *, index=None,
              positions: int = 1) -> dict[str, int]:
  """Activation and conversion counts of one layer.

  Args:
    hw: the hardware.
    matrix_shape: ``(rows, cols)`` of the crossbar matrix (dense layer).
    index: ``[R, G]`` index table of a shared layer (``-1`` = pruned);
      without it the layer is dense and unpruned.
    positions: crossbar MVMs per inference (output pixels of a conv).

  Returns:
    ``ou_activations_{dense,pruned,shared}`` and
    ``adc_conversions_{dense,pruned,shared}``.
  """
  if index is not None:
    index = np.asarray(index)
    if index.ndim != 2:
      raise ValueError(f"index must be [R, G], got shape {index.shape}")
    num_rb, groups = index.shape
    kept = int(np.sum(index >= 0))
    stored = sum(len(np.unique(row[row >= 0])) for row in index)
  elif matrix_shape is not None:
    num_rb, groups = lowering.grid_shape(tuple(matrix_shape), hw.block_shape)
    kept = stored = num_rb * groups
  else:
    raise ValueError("ou_counts needs matrix_shape or index")
  per = int(positions) * hw.cycles * hw.arrays
  out = {}
  for name, blocks in (("dense", num_rb * groups), ("pruned", kept),
                       ("shared", stored)):
    out[f"ou_activations_{name}"] = blocks * per
    out[f"adc_conversions_{name}"] = blocks * per * hw.ou_cols
  return out


def conv_positions(spatial_out) -> int:
  """Crossbar MVMs of a conv per image: the output pixels ``Ho * Wo``."""
  return int(np.prod(spatial_out))
