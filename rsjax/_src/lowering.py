"""Lowering kernels to crossbar matrices and tiling them into OU blocks.

A crossbar matrix has one row per input (wordline) and one column per output
(bitline). A Dense kernel ``[in, out]`` is already one. A Conv kernel
``[kh, kw, cin, cout]`` (Flax/HWIO layout) becomes ``[kh * kw * cin, cout]``
with rows in ``(kh, kw, cin)`` order, ``cin`` fastest: the emulator's im2col
(``rsjax.kernels``) builds its patches in that same order.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np


def _check_kernel(kernel) -> None:
  if kernel.ndim not in (2, 4):
    raise ValueError(
        "expected a Dense kernel [in, out] or a Conv kernel "
        f"[kh, kw, cin, cout], got a {kernel.ndim}-D array of shape "
        f"{tuple(kernel.shape)}")


def to_crossbar_matrix(kernel):
  """Lowers a Dense ``[in, out]`` or Conv ``[kh, kw, cin, cout]`` kernel.

  Args:
    kernel: a 2-D or 4-D array.

  Returns:
    The ``[rows, cols]`` crossbar matrix (rows in ``(kh, kw, cin)`` order).
  """
  _check_kernel(kernel)
  return kernel.reshape(-1, kernel.shape[-1])


def from_crossbar_matrix(matrix, kernel_shape: Sequence[int]):
  """The inverse of :func:`to_crossbar_matrix` for a kernel of that shape."""
  kernel_shape = tuple(int(d) for d in kernel_shape)
  if len(kernel_shape) not in (2, 4):
    raise ValueError(
        f"kernel_shape must have 2 or 4 dimensions, got {kernel_shape}")
  rows = int(np.prod(kernel_shape[:-1]))
  if matrix.shape != (rows, kernel_shape[-1]):
    raise ValueError(
        f"a crossbar matrix of shape {tuple(matrix.shape)} cannot be a kernel "
        f"of shape {kernel_shape} (needs ({rows}, {kernel_shape[-1]}))")
  return matrix.reshape(kernel_shape)


def _check_block_shape(block_shape) -> tuple[int, int]:
  try:
    bh, bw = (int(b) for b in block_shape)
  except (TypeError, ValueError):
    raise ValueError(
        f"block_shape must be two positive ints, got {block_shape!r}"
    ) from None
  if bh < 1 or bw < 1:
    raise ValueError(f"block_shape must be positive, got {(bh, bw)}")
  return bh, bw


def grid_shape(shape: Sequence[int], block_shape) -> tuple[int, int]:
  """Row-blocks R and column groups G covering a ``[rows, cols]`` matrix."""
  bh, bw = _check_block_shape(block_shape)
  rows, cols = shape
  return (-(-rows // bh), -(-cols // bw))


def to_ous(matrix, block_shape):
  """Tiles a crossbar matrix into OU weight blocks, zero-padding the edges.

  Args:
    matrix: ``[rows, cols]``.
    block_shape: ``(bh, bw)``, e.g. ``HardwareSpec.block_shape``.

  Returns:
    ``[R, G, bh, bw]`` with ``R = ceil(rows / bh)``, ``G = ceil(cols / bw)``;
    ``ous[r, g]`` is ``matrix[r*bh:(r+1)*bh, g*bw:(g+1)*bw]``.
  """
  if matrix.ndim != 2:
    raise ValueError(
        f"to_ous expects a 2-D crossbar matrix, got shape {matrix.shape}; "
        "lower kernels with to_crossbar_matrix first")
  bh, bw = _check_block_shape(block_shape)
  r, g = grid_shape(matrix.shape, (bh, bw))
  xp = np if isinstance(matrix, np.ndarray) else jnp
  padded = xp.pad(matrix, ((0, r * bh - matrix.shape[0]),
                           (0, g * bw - matrix.shape[1])))
  return padded.reshape(r, bh, g, bw).transpose(0, 2, 1, 3)


def from_ous(ous, shape: Sequence[int]):
  """The inverse of :func:`to_ous`: reassembles and crops to ``shape``."""
  if ous.ndim != 4:
    raise ValueError(f"from_ous expects [R, G, bh, bw], got {ous.shape}")
  r, g, bh, bw = ous.shape
  rows, cols = (int(d) for d in shape)
  if grid_shape((rows, cols), (bh, bw)) != (r, g):
    raise ValueError(
        f"OU grid {(r, g)} of {(bh, bw)} blocks does not tile a matrix of "
        f"shape {(rows, cols)}")
  matrix = ous.transpose(0, 2, 1, 3).reshape(r * bh, g * bw)
  return matrix[:rows, :cols]
