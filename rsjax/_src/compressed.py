"""A compressed layer: codebook, index table and where they came from."""

from __future__ import annotations

import functools
import math
from typing import Sequence

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from rsjax._src import hardware
from rsjax._src import kmeans
from rsjax._src import lowering


@struct.dataclass
class CompressedLayer:
  """One layer after OU-level sharing (a pytree; shapes are static).

  Attributes:
    codebook: ``[R, K, bh, bw]`` float stored blocks per row-block.
    index: ``[R, G]`` int32 ids into ``codebook[r]``; ``-1`` = pruned.
    kernel_shape: the original kernel shape, Dense ``(in, out)`` or Conv
      ``(kh, kw, cin, cout)``.
  """

  codebook: jax.Array
  index: jax.Array
  kernel_shape: tuple[int, ...] = struct.field(pytree_node=False)

  @property
  def matrix_shape(self) -> tuple[int, int]:
    """The crossbar matrix ``(rows, cols)``."""
    return (math.prod(self.kernel_shape[:-1]), self.kernel_shape[-1])

  @property
  def block_shape(self) -> tuple[int, int]:
    return tuple(self.codebook.shape[2:])

  def to_ous(self):
    """The decompressed OU blocks ``[R, G, bh, bw]``."""
    return kmeans.decompress(self.codebook, self.index)

  def to_matrix(self):
    """The decompressed crossbar matrix ``[rows, cols]``."""
    return lowering.from_ous(self.to_ous(), self.matrix_shape)

  def to_kernel(self):
    """The decompressed kernel, in ``kernel_shape``."""
    return lowering.from_crossbar_matrix(self.to_matrix(), self.kernel_shape)

  @classmethod
  def from_kernel(cls, kernel, block_shape) -> "CompressedLayer":
    """An uncompressed layer: every non-zero block stored as itself.

    Its index table is the identity (``-1`` where a block is all zero), which
    hardware needs no table for; the report counts it as 0 index bits.
    """
    kernel = jnp.asarray(kernel)
    codebook, index = _identity_blocks(kernel,
                                       block_shape=_block_shape(block_shape))
    return cls(codebook, index, tuple(int(d) for d in kernel.shape))

  def is_identity(self) -> bool:
    """Whether every non-pruned group ``g`` uses stored block ``g``."""
    index = np.asarray(self.index)
    groups = np.arange(index.shape[1])[None]
    return bool(np.all((index == groups) | (index < 0)))

  def stored_per_row_block(self) -> np.ndarray:
    """``K_r``: distinct non-pruned stored blocks each row-block uses."""
    index = np.asarray(self.index)
    used = np.zeros((index.shape[0], self.codebook.shape[1] + 1), bool)
    np.put_along_axis(used, index + 1, True, axis=1)
    return used[:, 1:].sum(axis=1)


# One compiled program per kernel shape: run op by op, mapping a model's
# dense layers compiled every operation for every layer shape.
@functools.partial(jax.jit, static_argnames=("block_shape",))
def _identity_blocks(kernel, *, block_shape):
  """Blocks ``[R, G, bh, bw]`` of ``kernel`` and the identity index (``-1``
  where a block is all zero, stored as +0)."""
  ous = lowering.to_ous(lowering.to_crossbar_matrix(kernel), block_shape)
  num_rows, num_groups = ous.shape[:2]
  kept = jnp.any(ous != 0, axis=(2, 3))
  index = jnp.where(kept, jnp.arange(num_groups, dtype=jnp.int32)[None], -1)
  index = jnp.broadcast_to(index, (num_rows, num_groups)).astype(jnp.int32)
  return jnp.where(kept[:, :, None, None], ous, jnp.zeros((), ous.dtype)), index


def _block_shape(hw_or_block) -> tuple[int, int]:
  if isinstance(hw_or_block, hardware.HardwareSpec):
    return hw_or_block.block_shape
  return lowering._check_block_shape(hw_or_block)  # pylint: disable=protected-access


def compress_kernel(kernel, hw: hardware.HardwareSpec | Sequence[int], k: int,
                    *, key, **cluster_kwargs) -> CompressedLayer:
  """Lowers, tiles and clusters one kernel (pruned blocks must be zero).

  Args:
    kernel: a Dense ``[in, out]`` or Conv ``[kh, kw, cin, cout]`` kernel.
    hw: a :class:`HardwareSpec` (its ``block_shape`` is used) or a block
      shape ``(bh, bw)``.
    k: stored blocks per row-block (see :func:`cluster_ous`).
    key: a ``jax.random`` key.
    **cluster_kwargs: passed to :func:`cluster_ous` (``n_init``,
      ``codebook_scope``..).

  Returns:
    The :class:`CompressedLayer`.
  """
  matrix = lowering.to_crossbar_matrix(jnp.asarray(kernel))
  ous = lowering.to_ous(matrix, _block_shape(hw))
  codebook, index = kmeans.cluster_ous(ous, k, key=key, **cluster_kwargs)
  return CompressedLayer(codebook, index, tuple(int(d) for d in kernel.shape))
