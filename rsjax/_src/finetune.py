"""The centroid fine-tune: assignments fixed, the centroids trained.

The last stage after :func:`rsjax.ste_sharing` or
:func:`rsjax.distance_sharing` and :func:`rsjax.project`: each shared
kernel's codebook becomes the trainable parameter, so the model stays
exactly shared (at most ``k`` distinct blocks per row-block, the same index
table and pruned set) while its accuracy recovers.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from rsjax._src import blockops
from rsjax._src import pruning
from rsjax._src import rules as rules_lib
from rsjax._src import validate
from rsjax._src.pruning import LayerState
from rsjax._src.sharing import FinetuneState


def centroid_finetune(inner: optax.GradientTransformation, rules, hw, *,
                      reduce: str = "sum") -> optax.GradientTransformation:
  """Trains the centroids with the assignments fixed.

  ``init`` takes params that are already shared (:func:`project` them
  first): the codebook is read off the bit-identical blocks, all-zero
  blocks are pruned, so sparsity and assignments carry over exactly. The
  inner optimizer runs on a tree like the params with each shared kernel
  replaced by its codebook; a centroid's gradient is its members' block
  gradients, summed (``reduce='sum'``, the exact gradient of the shared
  model) or averaged (``'mean'``: every centroid moves at the rate of a
  single weight whatever its member count). Non-shared leaves train as
  usual, pruned blocks stay zero.

  The params stay exactly shared: each update lands every member of a
  centroid on the stored centroid bit for bit (after
  ``optax.apply_updates``), so ``params`` equal
  ``rsjax.to_compressed(params, state)`` decompressed, and
  :func:`rsjax.training_params` of them. This holds while the params passed
  to ``update`` are the previous step's ``optax.apply_updates`` result (not
  modified in between).

  Args:
    inner: any optax optimizer.
    rules, hw: as for the sharing stage (the same ``k``).
    reduce: ``'sum'`` or ``'mean'``.

  Returns:
    An ``optax.GradientTransformation`` with :class:`FinetuneState`; run the
    model on :func:`training_params`.

  Raises:
    ValueError: ``reduce`` not ``'sum'`` or ``'mean'``; in ``init``, on
      concrete params with more than ``k`` distinct blocks in a row-block
      (not projected) or with NaN or inf weights (naming the path); in
      ``update``, ``updates`` or ``params`` that lack a kernel path of the
      state or differ in shape.
    TypeError: in ``init``, a non-floating planned kernel.
  """
  if reduce not in ("sum", "mean"):
    raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")

  def codebook_tree(params, layers):
    return pruning.map_planned(
        lambda p, x: layers[p].codebook if layers[p].codebook is not None
        else x, params, pruning.plans_of(layers))

  def init(params):
    plan = rules_lib.make_plan(params, rules, hw)
    validate.check_kernels(params, plan, "centroid_finetune.init")
    read = _read_layers(pruning.kernels_of(params, plan),
                        plan_items=tuple(plan.items()))
    layers = {}
    for p, lp in plan.items():
      mask, codebook, index, most = read[p]
      if most is not None and not isinstance(most, jax.core.Tracer) and int(
          most) > lp.slots:
        raise ValueError(
            f"{p}: a row-block has {int(most)} distinct blocks, more than "
            f"k={lp.k}; project() the params before fine-tuning")
      layers[p] = LayerState(mask, codebook, index, lp)
    return FinetuneState(jnp.zeros((), jnp.int32), layers,
                         inner.init(codebook_tree(params, layers)))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("centroid_finetune needs params in update()")
    layers = state.layers
    plan = pruning.plans_of(layers)
    validate.check_update(updates, params, plan, "centroid_finetune.update")
    masks = pruning.masks_of(layers)

    def to_codebook_grad(p, g):
      s = layers[p]
      if s.codebook is None:
        return blockops.apply_mask(g, s.mask, s.plan)
      return blockops.reduce_to_centroids(g, s.index, s.plan, reduce).astype(
          s.codebook.dtype)

    grads = pruning.map_planned(to_codebook_grad, updates, plan)
    tree = codebook_tree(params, layers)
    cb_updates, inner_state = inner.update(grads, state.inner_state, tree)
    new_cb = pruning.kernels_of(optax.apply_updates(tree, cb_updates), plan)
    # Each member of a centroid holds the old centroid's bits and gets the
    # same step, materialised once (the barrier: no fused or FMA-contracted
    # recomputation may differ between its uses), so after
    # ``optax.apply_updates`` every member is ``old + step``, bit for bit
    # the stored centroid. (``p + (new - p)`` need not round to ``new``.)
    steps = {p: jax.lax.optimization_barrier(
        (new_cb[p] - s.codebook).astype(s.codebook.dtype))
             for p, s in layers.items() if s.codebook is not None}

    def to_param_update(p, u):
      s = layers[p]
      if s.codebook is None:
        return u
      return blockops.shared_kernel(steps[p], s.index, s.plan)

    updates = pruning.map_planned(to_param_update, cb_updates, plan)
    updates = pruning.masked_updates(updates, params, masks, plan)
    layers = {p: (s.replace(codebook=(s.codebook + steps[p]).astype(
        s.codebook.dtype)) if s.codebook is not None else s)
              for p, s in layers.items()}
    return updates, FinetuneState(state.count + 1, layers, inner_state)

  return optax.GradientTransformation(init, update)


# One compiled program: run op by op on concrete params (an init outside
# jit), reading a model's codebooks compiled every operation for every
# layer shape.
@functools.partial(jax.jit, static_argnames=("plan_items",))
def _read_layers(kernels, *, plan_items):
  """``{path: (mask, codebook, index, most distinct blocks of a row-block)}``
  (the last three None for a layer that is not shared)."""
  shared = blockops.exact_codebooks(kernels, plan_items=tuple(
      (p, lp) for p, lp in plan_items if lp.shared))
  return {p: (jnp.any(blockops.kernel_to_ous(kernels[p], lp) != 0,
                      axis=(2, 3)), *shared.get(p, (None, None, None)))
          for p, lp in plan_items}
