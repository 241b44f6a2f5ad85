"""Per-layer OU block operations that training is built from (all jittable).

Every function takes a kernel in its own shape (Dense ``[in, out]`` or Conv
``[kh, kw, cin, cout]``) and a :class:`rsjax.LayerPlan` (static), and works on
its ``[R, G, bh, bw]`` OU blocks. Masks are ``[R, G]`` bool, True = kept.
Codebooks ``[R, K, bh, bw]`` and indices ``[R, G]`` int32 (``-1`` pruned) are
in the format of :func:`rsjax.cluster_ous`.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from rsjax._src import kmeans
from rsjax._src import lowering
from rsjax._src import rules as rules_lib
from rsjax._src import scores

_HIGHEST = jax.lax.Precision.HIGHEST


def kernel_to_ous(kernel, plan: rules_lib.LayerPlan):
  return lowering.to_ous(lowering.to_crossbar_matrix(kernel), plan.block_shape)


def ous_to_kernel(ous, plan: rules_lib.LayerPlan):
  return lowering.from_crossbar_matrix(
      lowering.from_ous(ous, plan.matrix_shape), plan.kernel_shape)


def apply_mask(kernel, mask, plan: rules_lib.LayerPlan):
  """Zeros the pruned blocks (``where``, so kept weights are bit-exact)."""
  keep = ous_to_kernel(
      jnp.broadcast_to(mask[:, :, None, None],
                       mask.shape + tuple(plan.block_shape)), plan)
  return jnp.where(keep, kernel, jnp.zeros((), kernel.dtype))


def ou_blocks(kernel, plan: rules_lib.LayerPlan, grad=None) -> scores.OuBlocks:
  """The :class:`rsjax.OuBlocks` a pruning score ranks: ``kernel``'s blocks
  (and ``grad``'s, if given) in float32, with their real cell counts."""
  def blocks(x):
    return kernel_to_ous(x.astype(jnp.float32), plan)
  cells = jnp.sum(blocks(jnp.ones(plan.kernel_shape, jnp.float32)),
                  axis=(2, 3))
  return scores.OuBlocks(blocks(kernel),
                         None if grad is None else blocks(grad), cells)


def block_rms(kernel, plan: rules_lib.LayerPlan):
  """``[R, G]`` root-mean-square of each block over its real (unpadded) cells
  (the ``'rms'`` pruning score)."""
  return scores.rms(ou_blocks(kernel, plan))


def recluster(kernel, mask, key, plan: rules_lib.LayerPlan, *, n_init: int,
              max_iter: int, codebook_scope: str = "row_block"):
  """k-means of the kept blocks: ``(codebook [R, K, bh, bw], index [R, G])``.

  Runs :func:`rsjax.cluster_ous`'s core: in NumPy for concrete arrays, else
  compiled (one call per layer, or part of the caller's compiled step).
  """
  ous = kernel_to_ous(apply_mask(kernel, mask, plan), plan)
  return _cluster_layer(ous, key, plan, kernel.dtype, n_init=n_init,
                        max_iter=max_iter, codebook_scope=codebook_scope)


def _cluster_layer(ous, key, plan, dtype, *, n_init, max_iter,
                   codebook_scope):
  codebook, index = kmeans.cluster_ous(
      ous, plan.k, key=key, n_init=n_init, max_iter=max_iter,
      codebook_scope=codebook_scope)
  return codebook.astype(dtype), index


def masked_ous(kernels, masks, plans):
  """``{path: [R, G, bh, bw]}`` blocks of each kernel, pruned ones zero."""
  return {p: kernel_to_ous(apply_mask(kernels[p], masks[p], lp)
                           if lp.pruned else kernels[p], lp)
          for p, lp in plans.items()}


def recluster_many(kernels, masks, plans, key, *, n_init: int, max_iter: int,
                   codebook_scope: str = "row_block"):
  """:func:`recluster` of many layers, batched into few k-means calls
  (:func:`cluster_many` of their :func:`masked_ous`)."""
  return cluster_many(masked_ous(kernels, masks, plans), plans, key,
                      {p: kernels[p].dtype for p in plans}, n_init=n_init,
                      max_iter=max_iter, codebook_scope=codebook_scope)


def cluster_many(ous, plans, key, dtypes, *, n_init: int, max_iter: int,
                 codebook_scope: str = "row_block"):
  """k-means of many layers' kept blocks, batched into few calls.

  Layers with the same ``k`` and block shape are clustered in one call (with
  ``codebook_scope='row_block'``): their row-blocks are stacked, each padded
  with all-zero blocks up to the widest layer's column groups, which k-means
  treats as pruned. One k-means per group instead of one per layer keeps the
  training step's compile time and the re-clustering's launch count low.
  NumPy arrays (and a concrete key) are clustered on the host, compiling
  nothing.

  Args:
    ous: ``{path: [R, G, bh, bw]}`` blocks of the shared layers, pruned ones
      zero (:func:`masked_ous`).
    plans: their ``{path: LayerPlan}``.
    key: a ``jax.random`` key (or k-means seed words:
      :func:`rsjax._src.kmeans.fold_in`).
    dtypes: ``{path: dtype}`` of the codebooks.
    n_init, max_iter, codebook_scope: k-means settings.

  Returns:
    ``{path: (codebook [R, min(k, G), bh, bw], index [R, G])}``.
  """
  host = kmeans.on_host(key, *ous.values())
  xp = np if host else jnp
  out = {}
  if codebook_scope != "row_block":
    for i, p in enumerate(plans):
      out[p] = _cluster_layer(ous[p], kmeans.fold_in(key, i, xp), plans[p],
                              dtypes[p], n_init=n_init, max_iter=max_iter,
                              codebook_scope=codebook_scope)
    return out
  groups = {}
  for p, lp in plans.items():
    groups.setdefault((lp.k, tuple(lp.block_shape)), []).append(p)
  for gi, ((k, (bh, bw)), members) in enumerate(groups.items()):
    width = max(plans[p].grid[1] for p in members)
    x = _stack_rows([xp.asarray(ous[p], np.float32).reshape(
        *ous[p].shape[:2], bh * bw) for p in members], width, xp)
    n_trials = 2 + int(math.log(max(min(k, width), 1)))
    codebook, index = kmeans.cluster(
        x, kmeans.fold_in(key, gi, xp), k=k, n_init=n_init,
        max_iter=max_iter, codebook_scope=codebook_scope, n_trials=n_trials)
    start = 0
    for p in members:
      lp = plans[p]
      num_rows, num_groups = lp.grid
      cb = codebook[start:start + num_rows, :lp.slots]
      out[p] = (kmeans.to_device(cb.reshape(num_rows, lp.slots, bh, bw).astype(
          dtypes[p])), kmeans.to_device(index[start:start + num_rows,
                                              :num_groups]))
      start += num_rows
  return out


def centroid_means(kernel, index, plan: rules_lib.LayerPlan):
  """Codebook of member means for fixed assignments (the Lloyd update).

  A slot with no members (its blocks were pruned since the last
  re-clustering) gets zero; no index points at it.
  """
  return centroid_means_many({"": kernel}, {"": index}, {"": plan})[""]


def centroid_means_many(kernels, indices, plans):
  """:func:`centroid_means` of many layers: those with the same slots and
  block shape stacked into one product (padded with pruned groups), so a
  training step compiles a few ops, not a few per layer."""
  groups = {}
  for p, lp in plans.items():
    groups.setdefault((lp.slots, tuple(lp.block_shape)), []).append(p)
  out = {}
  for (slots, (bh, bw)), members in groups.items():
    width = max(plans[p].grid[1] for p in members)
    x = _stack_rows([kernel_to_ous(kernels[p], plans[p]).astype(
        jnp.float32).reshape(*plans[p].grid, bh * bw) for p in members],
                    width, jnp)
    index = _stack_rows([indices[p] for p in members], width, jnp, -1)
    onehot = jax.nn.one_hot(index, slots, dtype=jnp.float32)  # -1 -> 0s
    sums = jnp.einsum("rgk,rgd->rkd", onehot, x, precision=_HIGHEST)
    means = sums / jnp.maximum(jnp.sum(onehot, axis=1), 1.0)[:, :, None]
    start = 0
    for p in members:
      rows = plans[p].grid[0]
      out[p] = means[start:start + rows].reshape(rows, slots, bh, bw).astype(
          kernels[p].dtype)
      start += rows
  return out


def _stack_rows(arrays, width: int, xp, fill=0):
  """``[R_i, G_i, ...]`` arrays padded with ``fill`` to ``G = width`` and
  stacked along the rows."""
  return xp.concatenate([xp.pad(
      a, ((0, 0), (0, width - a.shape[1])) + ((0, 0),) * (a.ndim - 2),
      constant_values=fill) for a in arrays])


def reduce_to_centroids(grad, index, plan: rules_lib.LayerPlan,
                        reduce: str = "sum"):
  """Member block gradients gathered into ``[R, K, bh, bw]`` per centroid.

  ``'sum'`` is the exact chain rule when every member equals its centroid;
  ``'mean'`` divides by the member count.
  """
  g = kernel_to_ous(grad, plan)
  num_rows, num_groups, bh, bw = g.shape
  onehot = jax.nn.one_hot(index, plan.slots, dtype=g.dtype)
  out = jnp.einsum("rgk,rgd->rkd", onehot,
                   g.reshape(num_rows, num_groups, bh * bw), precision=_HIGHEST)
  if reduce == "mean":
    out = out / jnp.maximum(jnp.sum(onehot, axis=1), 1.0)[:, :, None]
  elif reduce != "sum":
    raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
  return out.reshape(num_rows, plan.slots, bh, bw)


def shared_kernel(codebook, index, plan: rules_lib.LayerPlan):
  """Z: every block replaced by its centroid, pruned blocks zero (exact)."""
  return ous_to_kernel(kmeans.decompress(codebook, index), plan)


def exact_codebook(kernel, plan: rules_lib.LayerPlan, slots: int | None = None):
  """Codebook and index of an already shared kernel, without k-means.

  Blocks that are bit-identical get one entry, so ``shared_kernel`` of the
  result rebuilds ``kernel`` exactly. All-zero blocks are pruned (``-1``).

  Args:
    kernel: the kernel.
    plan: its layer plan.
    slots: codebook entries per row-block (default ``G``, room for all).

  Returns:
    ``(codebook [R, slots, bh, bw], index [R, G], unique [R])`` where
    ``unique`` counts the distinct kept blocks per row-block (entries beyond
    ``slots`` are lost; check ``unique <= slots``).
  """
  ous = kernel_to_ous(kernel, plan)
  num_rows, num_groups, bh, bw = ous.shape
  slots = num_groups if slots is None else slots
  x = ous.reshape(num_rows, num_groups, bh * bw)
  valid = jnp.any(x != 0, axis=-1)
  same = jnp.all(x[:, :, None, :] == x[:, None, :, :], axis=-1)
  first = jnp.argmax(same, axis=-1).astype(jnp.int32)
  unique = jnp.sum(valid & (first == jnp.arange(num_groups)[None]), axis=-1)
  codebook, index = kmeans._compact(  # pylint: disable=protected-access
      first, valid, x, slots)
  return codebook.reshape(num_rows, slots, bh, bw), index, unique


# One compiled program: run op by op on concrete kernels (reading a
# trained model off), the comparisons compiled for every layer shape.
@functools.partial(jax.jit, static_argnames=("plan_items",))
def exact_codebooks(kernels, *, plan_items):
  """:func:`exact_codebook` of many layers at their plans' ``slots``.

  Returns:
    ``{path: (codebook, index, most)}``, ``most`` the largest ``unique`` of
    the layer's row-blocks (more than ``slots``: not shared to ``k``).
  """
  out = {}
  for p, lp in plan_items:
    codebook, index, unique = exact_codebook(kernels[p], lp, lp.slots)
    out[p] = (codebook, index, jnp.max(unique))
  return out


def compact(codebook, index):
  """Renumbers used entries ``0..K_r-1`` in order of first use, zeros the rest.

  Needed after pruning drops all members of an entry between re-clusterings.
  """
  num_rows, slots, bh, bw = codebook.shape
  table = codebook.reshape(num_rows, slots, bh * bw)
  new_cb, new_index = kmeans._compact(  # pylint: disable=protected-access
      jnp.maximum(index, 0), index >= 0, table, slots)
  return new_cb.reshape(codebook.shape), new_index
