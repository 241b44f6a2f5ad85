"""OU block pruning by a block score, with a schedule, that never drifts.

A pruned OU block is never stored and never activated, so pruning works at
the granularity of sharing: whole ``(bh, bw)`` blocks of the crossbar matrix,
ranked by a pruning score (:mod:`rsjax._src.scores`: RMS by default, L1,
gradient times weight, or any registered or given function). Masks only ever
lose blocks (a pruned block stays pruned), and every stage applies them with
``where`` (the params, the shared weights Z, re-clustering, the centroid
fine-tune, export), so the pruned set is exactly the same from the step it is
chosen to the compressed model.

Schedule (Zhu & Gupta, 2017): at step ``t`` the target is
``sparsity * (1 - (1 - clip((t - begin) / (end - begin), 0, 1)) ** power)``;
masks are recomputed at ``begin``, every ``every`` steps after it and at
``end``. ``begin == end`` prunes once, at that step (``0``: at ``init``).

Scope: ``'layer'`` prunes each layer to its own target; ``'global'`` ranks
the blocks of all pruned layers together and prunes the block-weighted mean
of their targets, so layers with small blocks lose more.
"""

from __future__ import annotations

import dataclasses
import fractions
import functools
import math
from typing import Any, NamedTuple

from flax import struct
import jax
import jax.numpy as jnp
import optax

from rsjax._src import blockops
from rsjax._src import paths
from rsjax._src import rules as rules_lib
from rsjax._src import scores as scores_lib
from rsjax._src import validate

SCOPES = ("layer", "global")


@dataclasses.dataclass(frozen=True)
class PruneSchedule:
  """When and how OU blocks are pruned (see the module docstring).

  Attributes:
    begin: the first step that prunes.
    end: the step that reaches each rule's ``sparsity``.
    every: steps between mask updates in ``[begin, end]``.
    power: the polynomial's exponent (3: prune fast, then slowly).
    scope: ``'layer'`` or ``'global'``.
    score: how blocks are ranked, higher = keep: a registered name
      (``'rms'``, ``'l1'``, ``'grad_weight'``, or one added with
      :func:`rsjax.register_score`) or a function ``(rsjax.OuBlocks) ->
      [R, G]``. A score that needs the gradient (``'grad_weight'``) cannot
      choose the masks at ``init``, so its schedule must begin at step 1 or
      later (a ``ValueError`` here).
  """

  begin: int = 0
  end: int = 0
  every: int = 100
  power: float = 3.0
  scope: str = "layer"
  score: str | scores_lib.Score = scores_lib.DEFAULT

  def __post_init__(self):
    for name in ("begin", "end", "every"):
      object.__setattr__(self, name, rules_lib.integer(
          getattr(self, name), f"PruneSchedule.{name}"))
    object.__setattr__(self, "power",
                       rules_lib.number(self.power, "PruneSchedule.power"))
    if not 0 <= self.begin <= self.end:
      raise ValueError(f"need 0 <= begin <= end, got {self.begin}, {self.end}")
    if self.every < 1:
      raise ValueError(f"every must be >= 1, got {self.every}")
    if self.scope not in SCOPES:
      raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")
    score, _ = scores_lib.resolve(self.score)
    if self.begin == 0 and scores_lib.needs_grad(self.score):
      raise ValueError(
          f"pruning score {score!r} needs the gradient, and a schedule with "
          "begin=0 prunes at init, before there is one: begin at step 1 or "
          "later")

  def fraction(self, step):
    """The fraction of each target reached at ``step``."""
    step = jnp.asarray(step, jnp.float32)
    if self.end == self.begin:
      return jnp.where(step >= self.begin, 1.0, 0.0)
    t = jnp.clip((step - self.begin) / (self.end - self.begin), 0.0, 1.0)
    return 1.0 - (1.0 - t) ** self.power

  def updates_at(self, step):
    """Whether masks are recomputed at ``step`` (a bool array)."""
    step = jnp.asarray(step, jnp.int32)
    on_grid = (step - self.begin) % self.every == 0
    return (step >= self.begin) & (step <= self.end) & (on_grid
                                                        | (step == self.end))


def _select(kernels, plan):
  return {p: kernels[p] for p in plan if plan[p].pruned}


def kernels_of(params, plan) -> dict[str, Any]:
  """``{path: kernel}`` for the planned leaves of ``params``."""
  leaves = dict(paths.named_leaves(params))
  return {p: leaves[p] for p in plan}


def map_planned(fn, params, plan):
  """``params`` with each planned leaf ``x`` at ``path`` replaced by
  ``fn(path, x)``; works on Linen dicts and NNX ``State`` alike."""
  def one(keypath, x):
    path = paths.path_str(keypath)
    return fn(path, x) if path in plan else x
  return jax.tree_util.tree_map_with_path(one, params)


def full_masks(plan) -> dict[str, jax.Array]:
  return {p: jnp.ones(lp.grid, bool) for p, lp in plan.items()}


def _decimal(x: float) -> fractions.Fraction:
  """The decimal a float was written as (its shortest repr), exactly.

  ``0.13 * 900`` is ``116.99999999999999`` in floats; the decimal the user
  wrote means 117.
  """
  return fractions.Fraction(repr(float(x)))


def pruned_block_count(sparsity, num_blocks) -> int:
  """How many of ``num_blocks`` OU blocks a ``sparsity`` prunes at the end.

  ``floor(sparsity * num_blocks)`` taken exactly for the decimal written:
  ``pruned_block_count(0.13, 900) == 117`` (the float product is
  ``116.99999999999999``), ``pruned_block_count(0.7, 90) == 63``. Host
  Python, on static values; a schedule's in-graph count is
  ``floor(this * fraction)``, exactly this at fraction 1.

  Args:
    sparsity: a number in ``[0, 1]``, or a sequence of them (global scope:
      the sum over layers).
    num_blocks: an int, or a sequence of them matching ``sparsity``.

  Returns:
    The block count, a Python int in ``[0, sum(num_blocks)]``.

  Raises:
    TypeError: on non-numbers.
    ValueError: on a sparsity outside ``[0, 1]`` or a negative count, or
      sequences of different lengths.
  """
  many = isinstance(sparsity, (list, tuple))
  sparsities = list(sparsity) if many else [sparsity]
  counts = list(num_blocks) if many else [num_blocks]
  if len(sparsities) != len(counts):
    raise ValueError(f"{len(sparsities)} sparsities for {len(counts)} block "
                     "counts")
  sparsities = [rules_lib.number(x, "sparsity") for x in sparsities]
  counts = [rules_lib.integer(n, "num_blocks") for n in counts]
  if any(not 0.0 <= x <= 1.0 for x in sparsities):
    raise ValueError(f"sparsity must be in [0, 1], got {sparsity!r}")
  if any(n < 0 for n in counts):
    raise ValueError(f"num_blocks must be >= 0, got {num_blocks!r}")
  return math.floor(sum(_decimal(x) * n for x, n in zip(sparsities, counts)))


def _scheduled_count(target: int, fraction):
  """``floor(target * fraction)`` in-graph (``target`` at fraction 1)."""
  return jnp.floor(jnp.float32(target) * fraction).astype(jnp.int32)


def prune_masks(kernels, masks, plan, fraction, scope: str = "layer", *,
                score=scores_lib.DEFAULT, grads=None):
  """New masks pruning the lowest-scoring kept blocks up to ``fraction`` of
  the target.

  Args:
    kernels: ``{path: kernel}``.
    masks: ``{path: [R, G] bool}`` current masks (never grown back).
    plan: ``{path: LayerPlan}``.
    fraction: scalar in ``[0, 1]``, the schedule's progress: each layer
      prunes ``floor(pruned_block_count(sparsity, blocks) * fraction)``
      blocks (``'global'``: of the summed count, over all pruned layers).
    scope: ``'layer'`` or ``'global'``.
    score: a pruning score's registered name or function (see
      :class:`PruneSchedule`); ``'rms'`` by default.
    grads: ``{path: gradient}`` of the pruned kernels, for a score that
      needs it; None: there is none.

  Returns:
    ``{path: [R, G] bool}``.

  Raises:
    ValueError, TypeError: a bad ``score`` (naming it); a score that needs
      the gradient without ``grads``.
  """
  pruned = [p for p, lp in plan.items() if lp.pruned]
  if not pruned:
    return dict(masks)
  scores = {p: scores_lib.block_scores(score, blockops.ou_blocks(
      kernels[p], plan[p], None if grads is None else grads[p])).reshape(-1)
            for p in pruned}
  kept = {p: masks[p].reshape(-1) for p in pruned}
  out = dict(masks)
  if scope == "layer":
    for p in pruned:
      count = _scheduled_count(
          pruned_block_count(plan[p].sparsity, scores[p].shape[0]), fraction)
      out[p] = masks[p] & (_rank(scores[p], kept[p]) >= count).reshape(
          plan[p].grid)
    return out
  sizes = [scores[p].shape[0] for p in pruned]
  count = _scheduled_count(pruned_block_count(
      [plan[p].sparsity for p in pruned], sizes), fraction)
  keep = _rank(jnp.concatenate([scores[p] for p in pruned]),
               jnp.concatenate([kept[p] for p in pruned])) >= count
  start = 0
  for p, n in zip(pruned, sizes):
    out[p] = masks[p] & keep[start:start + n].reshape(plan[p].grid)
    start += n
  return out


def _rank(score, kept):
  """Each block's place in pruning order: already pruned blocks first (so a
  growing target keeps them, whatever the score's range), then kept ones
  from the lowest score; ties in index order."""
  return jnp.argsort(jnp.lexsort((score, kept)))


def scheduled_masks(kernels, masks, plan, schedule: PruneSchedule, step,
                    grads=None):
  """``prune_masks`` at ``step`` if the schedule updates there, else ``masks``.

  A ``lax.cond``, so the scoring runs only on update steps.
  """
  return jax.lax.cond(
      schedule.updates_at(step),
      lambda: prune_masks(kernels, masks, plan, schedule.fraction(step),
                          schedule.scope, score=schedule.score, grads=grads),
      lambda: dict(masks))


def initial_masks(params, plan, schedule: PruneSchedule):
  """The masks at step 0: all kept, unless the schedule begins at 0."""
  return _initial_masks(kernels_of(params, plan),
                        plan_items=tuple(plan.items()), schedule=schedule)


# One compiled program: run op by op on concrete params (an init outside
# jit), scoring and ranking a model's blocks compiled every operation for
# every layer shape.
@functools.partial(jax.jit, static_argnames=("plan_items", "schedule"))
def _initial_masks(kernels, *, plan_items, schedule):
  plan = dict(plan_items)
  masks = full_masks(plan)
  if schedule.begin == 0:
    masks = prune_masks(kernels, masks, plan, schedule.fraction(0),
                        schedule.scope, score=schedule.score)
  return masks


def apply_masks(params, masks, plan):
  """``params`` with every pruned block of the planned kernels zeroed."""
  return map_planned(lambda p, x: (blockops.apply_mask(x, masks[p], plan[p])
                                   if plan[p].pruned else x), params, plan)


def masked_updates(updates, params, masks, plan):
  """Updates that keep pruned blocks exactly zero after ``apply_updates``.

  Kept weights get ``u``; pruned ones get ``-w``, and ``w + (-w)`` is
  exactly zero in IEEE arithmetic.
  """
  leaves = kernels_of(params, plan)
  def one(p, u):
    if not plan[p].pruned:  # its mask is all True: skip the work
      return u
    w = leaves[p]
    keep = blockops.apply_mask(jnp.ones_like(w, bool), masks[p], plan[p])
    return jnp.where(keep, u, -w)
  return map_planned(one, updates, plan)


def new_params(params, updates, plan):
  """``{path: w + u}`` as ``optax.apply_updates`` will compute it."""
  w = kernels_of(params, plan)
  u = kernels_of(updates, plan)
  return {p: (w[p] + u[p]).astype(w[p].dtype) for p in plan}


@struct.dataclass
class LayerState:
  """Training state of one planned kernel (a pytree; ``plan`` is static).

  Attributes:
    mask: ``[R, G]`` bool, True = kept.
    codebook: ``[R, K, bh, bw]`` for a shared layer, else None.
    index: ``[R, G]`` int32 (``-1`` = pruned) for a shared layer, else None.
    plan: its :class:`rsjax.LayerPlan`.
  """

  mask: jax.Array
  codebook: jax.Array | None
  index: jax.Array | None
  plan: rules_lib.LayerPlan = struct.field(pytree_node=False)


def plans_of(layers) -> dict[str, rules_lib.LayerPlan]:
  return {p: s.plan for p, s in layers.items()}


def masks_of(layers) -> dict[str, jax.Array]:
  return {p: s.mask for p, s in layers.items()}


class PruneState(NamedTuple):
  """State of :func:`ou_pruning`.

  Attributes:
    count: updates done (int32).
    layers: ``{path: LayerState}`` (masks only).
    inner_state: the wrapped optimizer's state.
  """

  count: jax.Array
  layers: dict[str, LayerState]
  inner_state: Any


def ou_pruning(inner: optax.GradientTransformation,
               rules, hw, schedule: PruneSchedule = PruneSchedule()
               ) -> optax.GradientTransformation:
  """Wraps ``inner`` with OU block pruning (no sharing).

  Masks are chosen from the params after each update, on the schedule's
  steps, by ``schedule.score``; a score that needs the gradient sees the
  ``updates`` this ``update`` received (the gradient, when ``ou_pruning`` is
  the outermost transform). Pruned blocks get the update that makes them
  exactly zero and stay so. The model can run on ``params`` directly (after
  the first update; :func:`rsjax.training_params` masks them at any step).

  Args:
    inner: any optax optimizer.
    rules: :class:`rsjax.Rule` s (their ``sparsity``; ``k`` is ignored).
    hw: a :class:`rsjax.HardwareSpec` or a block shape.
    schedule: a :class:`PruneSchedule` (its ``score`` ranks the blocks).

  Returns:
    An ``optax.GradientTransformation`` with :class:`PruneState`.

  Raises:
    ValueError: as :func:`rsjax.ste_sharing` (NaN/inf at ``init``, paths and
      shapes at ``update``).
    TypeError: in ``init``, a non-floating planned kernel.
  """

  def init(params):
    plan = rules_lib.make_plan(params, rules, hw)
    validate.check_kernels(params, plan, "ou_pruning.init")
    masks = initial_masks(params, plan, schedule)
    layers = {p: LayerState(masks[p], None, None, plan[p]) for p in plan}
    return PruneState(jnp.zeros((), jnp.int32), layers, inner.init(params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("ou_pruning needs params in update()")
    plan = plans_of(state.layers)
    validate.check_update(updates, params, plan, "ou_pruning.update")
    masks = masks_of(state.layers)
    grads = kernels_of(updates, plan)
    updates = masked_updates(updates, params, masks, plan)
    updates, inner_state = inner.update(updates, state.inner_state, params)
    updates = masked_updates(updates, params, masks, plan)
    count = state.count + 1
    masks = scheduled_masks(new_params(params, updates, plan), masks, plan,
                            schedule, count, grads)
    updates = masked_updates(updates, params, masks, plan)
    layers = {p: s.replace(mask=masks[p]) for p, s in state.layers.items()}
    return updates, PruneState(count, layers, inner_state)

  return optax.GradientTransformation(init, update)
