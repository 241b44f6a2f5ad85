"""Training for OU-level sharing: the paper's loop, STE sharing, fine-tune.

Three optax wrappers, each around any optax optimizer, with the codebooks,
assignments, pruning masks and step count in their state
(``state.layers[path]`` is a :class:`LayerState`):

* :func:`distance_sharing`, the paper's loop: the gradient of
  ``lam(step) * ||W - Z||^2`` is added to the task gradient, ``Z`` stays
  fixed between re-clusterings every ``recluster_every`` steps; at the end
  :func:`project` makes ``W := Z``.
* :func:`ste_sharing`: the model runs on ``Z`` (via :func:`training_params`)
  and the gradient goes straight through to the latent dense ``W`` (the
  params). ``Z`` follows ``W`` every step with fixed assignments (centroid =
  member mean) and the assignments are re-clustered every
  ``recluster_every`` steps.
* :func:`rsjax.centroid_finetune` (``finetune.py``): assignments fixed,
  the optimizer trains the centroids on the member gradients, summed (the
  exact chain rule, as Deep Compression does; the default) or averaged.

Re-clustering is a ``lax.cond`` inside the compiled update, the batched
k-means of :func:`rsjax.cluster_ous` over all row-blocks at once. Every
wrapper takes the pruning rules and a :class:`rsjax.PruneSchedule` too, and
keeps pruned blocks exactly zero in W, Z, the codebooks and the index.

A training loop needs one change, the forward pass on
``training_params(params, opt_state)``:

  tx = rsjax.ste_sharing(optax.adam(1e-3), rules, hw, key=key)
  opt_state = tx.init(params)
  loss = lambda p, s, x, y: task_loss(apply(rsjax.training_params(p, s), x), y)
  grads = jax.grad(loss)(params, opt_state, x, y)
  updates, opt_state = tx.update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rsjax._src import blockops
from rsjax._src import kmeans
from rsjax._src import pruning
from rsjax._src import rules as rules_lib
from rsjax._src import validate
from rsjax._src.pruning import LayerState

ScalarOrSchedule = float | Callable[[jax.Array], jax.Array]


class DistanceState(NamedTuple):
  """State of :func:`distance_sharing` (fields as :class:`SteState`)."""

  count: jax.Array
  layers: dict[str, LayerState]
  inner_state: Any


class SteState(NamedTuple):
  """State of :func:`ste_sharing`.

  Attributes:
    count: updates done (int32).
    layers: ``{path: LayerState}``: mask, codebook, index, plan.
    inner_state: the wrapped optimizer's state.
  """

  count: jax.Array
  layers: dict[str, LayerState]
  inner_state: Any


class FinetuneState(NamedTuple):
  """State of :func:`centroid_finetune` (``inner_state`` is over codebooks)."""

  count: jax.Array
  layers: dict[str, LayerState]
  inner_state: Any


STATES = (pruning.PruneState, DistanceState, SteState, FinetuneState)


def _plain(tree):
  """``tree`` with flax NNX variables replaced by their values: an
  ``nnx.Optimizer``'s ``opt_state`` wraps every leaf in one (``OptArray``)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  is_var = lambda x: isinstance(x, nnx.Variable)
  return jax.tree_util.tree_map(
      lambda x: x.get_value() if is_var(x) else x, tree, is_leaf=is_var)


def find_state(opt_state):
  """The (first) rsjax training state inside ``opt_state`` (e.g. a chain,
  or an ``nnx.Optimizer``'s ``opt_state``)."""
  for leaf in jax.tree_util.tree_leaves(
      opt_state, is_leaf=lambda x: isinstance(x, STATES)):
    if isinstance(leaf, STATES):
      return _plain(leaf)
  raise ValueError("no rsjax training state (ou_pruning, distance_sharing, "
                   "ste_sharing, centroid_finetune) in opt_state")


@jax.custom_vjp
def _straight_through(w, z):
  del w
  return z


def _st_fwd(w, z):
  del w
  return z, None


def _st_bwd(_, g):
  return g, jnp.zeros_like(g)


_straight_through.defvjp(_st_fwd, _st_bwd)


def straight_through(w, z):
  """Forward ``z`` exactly, backward the identity to ``w`` (none to ``z``)."""
  return _straight_through(w, z)


def _state_and_plan(params, opt_state, where):
  """The rsjax state in ``opt_state`` and its plan, ``params`` checked."""
  state = find_state(opt_state)
  plan = pruning.plans_of(state.layers)
  validate.check_tree(params, plan, where)
  return state, plan


def training_params(params, opt_state):
  """The params the model runs on during training, for any rsjax state.

  Sharing layers (STE, fine-tune) give ``Z`` with the straight-through
  gradient to the params; pruned-only layers and the distance loop give the
  masked params. Non-planned leaves are returned as they are.

  Raises:
    ValueError: if ``params`` lack a kernel path the state was initialised
      on, or its shape differs (a static check: also under ``jit``).
  """
  state, plan = _state_and_plan(params, opt_state, "training_params")
  kernels = _kernels_from_state(
      pruning.kernels_of(params, plan), state.layers,
      use_z=isinstance(state, (SteState, FinetuneState)), through=True)
  return pruning.map_planned(lambda p, w: kernels[p], params, plan)


# One compiled program for all layers (also inside another jit): run op by
# op on concrete params, as after training, every operation compiled for
# every layer shape.
@functools.partial(jax.jit, static_argnames=("use_z", "through"))
def _kernels_from_state(kernels, layers, *, use_z, through):
  """Each kernel as the state makes it: ``Z`` where ``use_z`` and the layer
  is shared (straight-through to ``w`` with ``through``, else ``Z`` in
  ``w``'s dtype), otherwise ``w`` with its pruned blocks zero."""
  def one(w, s):
    if use_z and s.codebook is not None:
      z = blockops.shared_kernel(s.codebook, s.index, s.plan)
      return straight_through(w, z) if through else z.astype(w.dtype)
    if not s.plan.pruned:  # a mask that is all True
      return w
    return blockops.apply_mask(w, s.mask, s.plan)
  return {p: one(w, layers[p]) for p, w in kernels.items()}


def project(params, opt_state):
  """Hard projection ``W := Z`` (and pruned blocks zero), from the state.

  Raises:
    ValueError: as :func:`training_params`.
  """
  state, plan = _state_and_plan(params, opt_state, "project")
  kernels = _kernels_from_state(pruning.kernels_of(params, plan),
                                state.layers, use_z=True, through=False)
  return pruning.map_planned(lambda p, w: kernels[p], params, plan)


def distance_loss(params, opt_state):
  """``sum over shared layers of ||W - Z||_F^2`` with ``Z`` from the state.

  ``Z`` is a constant here (no gradient), as in the paper.

  Raises:
    ValueError: as :func:`training_params`.
  """
  state, plan = _state_and_plan(params, opt_state, "distance_loss")
  leaves = pruning.kernels_of(params, plan)
  total = jnp.zeros((), jnp.float32)
  for p, s in state.layers.items():
    if s.codebook is None:
      continue
    z = jax.lax.stop_gradient(blockops.shared_kernel(s.codebook, s.index,
                                                     s.plan))
    total = total + jnp.sum(jnp.square(leaves[p] - z).astype(jnp.float32))
  return total


def _recluster_layers(kernels, layers, key, n_init, max_iter, scope):
  shared = {p: s.plan for p, s in layers.items() if s.codebook is not None}
  new = blockops.recluster_many(
      {p: kernels[p] for p in shared}, {p: layers[p].mask for p in shared},
      shared, key, n_init=n_init, max_iter=max_iter, codebook_scope=scope)
  return {p: new.get(p, (s.codebook, s.index)) for p, s in layers.items()}


def _init_layers(params, rules, hw, schedule, key, n_init, max_iter, scope,
                 where):
  plan = rules_lib.make_plan(params, rules, hw)
  validate.check_kernels(params, plan, where)
  shared = {p: lp for p, lp in plan.items() if lp.shared}
  if not kmeans.on_host(key, *jax.tree_util.tree_leaves(params)):
    masks, ous = _initial_masks(params, plan_items=tuple(plan.items()),
                                schedule=schedule)
  elif schedule.begin == 0 and any(lp.pruned for lp in plan.values()):
    # Pruned at step 0: the masks and blocks as one compiled program.
    masks, ous = jax.device_get(_initial_masks_jit(
        params, plan_items=tuple(plan.items()), schedule=schedule))
  else:
    # Nothing pruned yet: the blocks in NumPy, nothing compiled.
    kernels = jax.device_get(pruning.kernels_of(params, shared))
    masks = {p: np.ones(lp.grid, bool) for p, lp in plan.items()}
    ous = {p: blockops.kernel_to_ous(kernels[p], lp)
           for p, lp in shared.items()}
  # Concrete blocks are clustered on the host (kmeans.py: the k-means
  # program's XLA compile would be most of the init).
  new = blockops.cluster_many(ous, shared, key, _dtypes(params, shared),
                              n_init=n_init, max_iter=max_iter,
                              codebook_scope=scope)
  masks = {p: kmeans.to_device(m) for p, m in masks.items()}
  return {p: LayerState(masks[p], *new.get(p, (None, None)), lp)
          for p, lp in plan.items()}


def _dtypes(params, plan):
  kernels = pruning.kernels_of(params, plan)
  return {p: kernels[p].dtype for p in plan}


def _initial_masks(params, *, plan_items, schedule):
  """The step-0 masks and the shared layers' kept blocks."""
  plan = dict(plan_items)
  masks = pruning.initial_masks(params, plan, schedule)
  shared = {p: lp for p, lp in plan.items() if lp.shared}
  return masks, blockops.masked_ous(pruning.kernels_of(params, shared),
                                    masks, shared)


# One compiled program: run op by op, the masks and blocks of a model were
# dozens of small compiles.
_initial_masks_jit = jax.jit(_initial_masks,
                             static_argnames=("plan_items", "schedule"))


@functools.partial(jax.jit,
                   static_argnames=("n_init", "max_iter", "codebook_scope"))
def recluster(params, opt_state, key, *, n_init: int = 4, max_iter: int = 50,
              codebook_scope: str = "row_block"):
  """A jitted re-clustering of every shared layer from ``params``.

  For the end of :func:`distance_sharing` (``W`` moved since the last
  re-clustering) or any manual schedule. Returns ``opt_state`` with the
  rsjax state's codebooks and indices replaced (the rest untouched).

  Raises:
    ValueError: as :func:`training_params`.
  """
  state, plan = _state_and_plan(params, opt_state, "recluster")
  kernels = pruning.kernels_of(params, plan)
  new = _recluster_layers(kernels, state.layers, key, n_init, max_iter,
                          codebook_scope)
  layers = {p: s.replace(codebook=new[p][0], index=new[p][1])
            for p, s in state.layers.items()}
  return _with_state(opt_state, state._replace(layers=layers))


def _with_state(opt_state, new_state):
  """``opt_state`` with its (first) rsjax state replaced by ``new_state``
  (:func:`find_state` hands back a copy, so not found by identity)."""
  found = []

  def swap(x):
    if isinstance(x, STATES) and not found:
      found.append(x)
      return new_state
    return x
  return jax.tree_util.tree_map(swap, opt_state,
                                is_leaf=lambda x: isinstance(x, STATES))


def _lam_fn(lam: ScalarOrSchedule):
  if callable(lam):
    return lam
  return lambda step: jnp.asarray(lam, jnp.float32)


def _sharing(kind, inner, rules, hw, *, key, recluster_every, prune, n_init,
             max_iter, scope, lam=None):
  """The shared body of :func:`distance_sharing` and :func:`ste_sharing`."""
  if recluster_every < 1:
    raise ValueError(f"recluster_every must be >= 1, got {recluster_every}")
  state_cls = SteState if kind == "ste" else DistanceState
  lam_fn = _lam_fn(lam) if kind == "distance" else None
  name = f"{kind}_sharing"

  def init(params):
    layers = _init_layers(params, rules, hw, prune, key, n_init, max_iter,
                          scope, f"{name}.init")
    return state_cls(jnp.zeros((), jnp.int32), layers, inner.init(params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError(f"{name} needs params in update()")
    plan = pruning.plans_of(state.layers)
    validate.check_update(updates, params, plan, f"{name}.update")
    masks = pruning.masks_of(state.layers)
    # The loss's gradient, for a pruning score that needs it (before the
    # distance regulariser, which is not the loss).
    grads = pruning.kernels_of(updates, plan)
    if kind == "distance":
      lam_t = jnp.asarray(lam_fn(state.count), jnp.float32)
      kernels = pruning.kernels_of(params, plan)
      def add_reg(p, g):
        s = state.layers[p]
        if s.codebook is None:
          return g
        z = blockops.shared_kernel(s.codebook, s.index, s.plan)
        return g + (2.0 * lam_t * (kernels[p] - z)).astype(g.dtype)
      updates = pruning.map_planned(add_reg, updates, plan)
    updates = pruning.masked_updates(updates, params, masks, plan)
    updates, inner_state = inner.update(updates, state.inner_state, params)
    count = state.count + 1
    kernels = pruning.new_params(params, updates, plan)
    masks = pruning.scheduled_masks(kernels, masks, plan, prune, count, grads)
    updates = pruning.masked_updates(updates, params, masks, plan)
    kernels = {p: (blockops.apply_mask(kernels[p], masks[p], plan[p])
                   if plan[p].pruned else kernels[p]) for p in plan}
    layers = {p: s.replace(mask=masks[p]) for p, s in state.layers.items()}

    def between():
      shared = {p: s.plan for p, s in layers.items()
                if s.codebook is not None}
      index = {p: jnp.where(layers[p].mask, layers[p].index, -1)
               if lp.pruned else layers[p].index for p, lp in shared.items()}
      codebooks = (blockops.centroid_means_many(kernels, index, shared)
                   if kind == "ste" else {p: layers[p].codebook
                                          for p in shared})
      return {p: (codebooks[p], index[p]) if p in shared
              else (s.codebook, s.index) for p, s in layers.items()}

    new = jax.lax.cond(
        count % recluster_every == 0,
        lambda: _recluster_layers(kernels, layers, kmeans.fold_in(
            key, count), n_init, max_iter, scope),
        between)
    layers = {p: s.replace(codebook=new[p][0], index=new[p][1])
              for p, s in layers.items()}
    return updates, state_cls(count, layers, inner_state)

  return optax.GradientTransformation(init, update)


def ste_sharing(inner: optax.GradientTransformation, rules, hw, *, key,
                recluster_every: int = 100,
                prune: pruning.PruneSchedule = pruning.PruneSchedule(),
                n_init: int = 2, max_iter: int = 30,
                codebook_scope: str = "row_block"
                ) -> optax.GradientTransformation:
  """Straight-through sharing around ``inner`` (see the module docstring).

  Args:
    inner: any optax optimizer; it updates the latent dense params ``W``.
    rules: :class:`rsjax.Rule` s: ``k`` or ``ratio`` shares, ``sparsity``
      prunes.
    hw: a :class:`rsjax.HardwareSpec` or a block shape.
    key: a ``jax.random`` key for the k-means seeding.
    recluster_every: steps between re-clusterings (the assignments).
    prune: the :class:`rsjax.PruneSchedule` of the rules' sparsities (a
      score that needs the gradient sees the ``updates`` received).
    n_init, max_iter, codebook_scope: k-means settings (see
      :func:`rsjax.cluster_ous`).

  Returns:
    An ``optax.GradientTransformation`` with :class:`SteState`; run the model
    on :func:`training_params`.

  Raises:
    ValueError: ``recluster_every < 1``; in ``init``, NaN or inf in a
      planned kernel (concrete params only: under a caller's ``jit`` the
      values are unknown), naming its path; in ``update``, ``updates`` or
      ``params`` that lack a kernel path of the state or differ in shape.
    TypeError: in ``init``, a non-floating planned kernel (path and dtype).
  """
  return _sharing("ste", inner, rules, hw, key=key,
                  recluster_every=recluster_every, prune=prune, n_init=n_init,
                  max_iter=max_iter, scope=codebook_scope)


def distance_sharing(inner: optax.GradientTransformation, rules, hw, *, key,
                     lam: ScalarOrSchedule = 1e-3, recluster_every: int = 100,
                     prune: pruning.PruneSchedule = pruning.PruneSchedule(),
                     n_init: int = 2, max_iter: int = 30,
                     codebook_scope: str = "row_block"
                     ) -> optax.GradientTransformation:
  """The paper's distance-to-centroid loop around ``inner``.

  Adds ``2 * lam(step) * (W - Z)``, the gradient of
  ``lam * ||W - Z||_F^2`` (:func:`distance_loss`), to each shared kernel's
  gradient; ``Z`` is re-clustered from ``W`` every ``recluster_every``
  steps. Finish with :func:`recluster` and :func:`project`.

  Args:
    inner: any optax optimizer.
    rules, hw, key, recluster_every, prune, n_init, max_iter,
      codebook_scope: as
      :func:`ste_sharing`.
    lam: the regulariser weight, a float or an ``optax`` schedule of the
      step (e.g. ``optax.linear_schedule(0, 1e-2, 1000)`` to pull harder as
      training goes).

  Returns:
    An ``optax.GradientTransformation`` with :class:`DistanceState`.

  Raises:
    ValueError, TypeError: as :func:`ste_sharing`.
  """
  return _sharing("distance", inner, rules, hw, key=key,
                  recluster_every=recluster_every, prune=prune, n_init=n_init,
                  max_iter=max_iter, scope=codebook_scope, lam=lam)
