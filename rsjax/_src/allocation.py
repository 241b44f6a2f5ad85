"""Per-layer sharing budgets: the ``k`` of each layer, chosen from a loss probe.

:func:`allocate_k` measures how much a user's loss rises when one layer alone
is shared at each candidate ``k`` (everything else as it is), then picks one
``k`` per layer so that the whole model reaches a target ``ou_ratio`` (dense
OUs over stored OUs, as :func:`rsjax.compression_report` counts them) at the
least predicted loss. The prediction is additive: the loss increase of a
choice is the sum of its layers' measured increases.

The choice is a multiple-choice knapsack (one option per layer, integer
costs: stored OUs), solved exactly by dynamic programming over the stored-OU
budget (:mod:`knapsack`).

Stored OUs of a layer at ``k``: ``sum_r min(k, kept_r)`` over its row-blocks,
``kept_r`` the row-block's non-pruned (not all-zero) blocks, which is what the
report counts after k-means of distinct blocks; identical blocks can only
store fewer.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rsjax._src import blockops
from rsjax._src import kmeans
from rsjax._src import knapsack
from rsjax._src import paths
from rsjax._src import pruning
from rsjax._src import rules as rules_lib

# Distances a k-means chunk computes at once (n_init x rows x G x slots).
_MAX_ELEMENTS = 2 ** 26


@dataclasses.dataclass(frozen=True)
class LayerSensitivity:
  """The measured table of one layer.

  Attributes:
    k: the candidate ``k`` s, ascending.
    stored_ous: stored OUs at each candidate.
    loss_increase: ``loss_fn(only this layer shared at k) - base_loss``; 0
      without a probe where ``k`` keeps every block (lossless).
    dense_ous: ``R * G``.
    chosen_k: the ``k`` the allocation picked.
  """

  k: tuple[int, ...]
  stored_ous: tuple[int, ...]
  loss_increase: tuple[float, ...]
  dense_ous: int
  chosen_k: int


@dataclasses.dataclass(frozen=True)
class Allocation:
  """What :func:`allocate_k` chose, and the measurements it chose from.

  Attributes:
    rules: one anchored :class:`rsjax.Rule` per kernel the input rules took,
      in parameter order, for :func:`rsjax.ste_sharing` and the other
      wrappers.
    table: ``{path: LayerSensitivity}`` for every allocated layer.
    base_loss: ``loss_fn`` of the params (pruned to the rules' sparsity).
    predicted_loss_increase: the sum of the chosen increases.
    dense_ous: dense OUs of all planned layers (shared and pruned-only).
    stored_ous: predicted stored OUs of all planned layers.
    budget: the stored-OU budget that was met.
    predicted_ou_ratio: ``dense_ous / stored_ous``.
  """

  rules: tuple[rules_lib.Rule, ...]
  table: dict[str, LayerSensitivity]
  base_loss: float
  predicted_loss_increase: float
  dense_ous: int
  stored_ous: int
  budget: int
  predicted_ou_ratio: float

  @property
  def k(self) -> dict[str, int]:
    """``{path: chosen k}``."""
    return {p: t.chosen_k for p, t in self.table.items()}

  def to_dict(self) -> dict[str, Any]:
    """The allocation as plain JSON-able values (rules as dicts)."""
    out = dataclasses.asdict(self)
    out["rules"] = [dataclasses.asdict(r) for r in self.rules]
    return out

  def format_table(self) -> str:
    """One line per layer and candidate: k, stored OUs, loss increase."""
    lines = [f"{'layer':<32} {'k':>6} {'stored':>8} {'dense':>8} "
             f"{'loss_inc':>12}"]
    for p, t in self.table.items():
      for k, s, d in zip(t.k, t.stored_ous, t.loss_increase):
        mark = " *" if k == t.chosen_k else ""
        lines.append(f"{p:<32} {k:>6} {s:>8} {t.dense_ous:>8} {d:>12.5g}"
                     f"{mark}")
    lines.append(f"ou_ratio {self.predicted_ou_ratio:.3f} ({self.dense_ous}"
                 f" / {self.stored_ous}, budget {self.budget}); predicted "
                 f"loss {self.base_loss:.5g} + "
                 f"{self.predicted_loss_increase:.5g}")
    return "\n".join(lines)


def _check_k_list(values, what: str) -> tuple[int, ...]:
  values = tuple(values)
  bad = [v for v in values if isinstance(v, bool)
         or not isinstance(v, (int, np.integer)) or v < 1]
  if not values or bad:
    raise ValueError(f"{what} must be a non-empty sequence of ints >= 1, got "
                     f"{values!r}")
  return tuple(sorted({int(v) for v in values}))


def default_candidates(groups: int) -> tuple[int, ...]:
  """Powers of two below ``groups``, then ``groups`` (unshared)."""
  out = [1 << i for i in range(max(groups - 1, 0).bit_length())
         if 1 << i < groups]
  return tuple(out) + (groups,)


def _candidates_of(candidates, plan) -> dict[str, tuple[int, ...]]:
  if candidates is None:
    return {p: default_candidates(lp.grid[1]) for p, lp in plan.items()}
  if isinstance(candidates, Mapping):
    unknown = sorted(set(candidates) - set(plan))
    if unknown:
      raise ValueError(f"candidates given for {unknown}, which are not shared "
                       f"layers; shared layers are {list(plan)}")
    return {p: (_check_k_list(candidates[p], f"candidates[{p!r}]")
                if p in candidates else default_candidates(lp.grid[1]))
            for p, lp in plan.items()}
  if isinstance(candidates, (str, bytes)):
    raise ValueError(f"candidates must be ints, got {candidates!r}")
  ks = _check_k_list(candidates, "candidates")
  return {p: ks for p in plan}


def stored_ous_at(kept_per_row_block, k: int) -> int:
  """``sum_r min(k, kept_r)``: a layer's stored OUs at ``k``."""
  return int(np.minimum(np.asarray(kept_per_row_block, np.int64), k).sum())


def _budget_of(dense: int, target_ou_ratio, stored_ous) -> int:
  if (target_ou_ratio is None) == (stored_ous is None):
    raise ValueError("give exactly one of target_ou_ratio and stored_ous, got "
                     f"{target_ou_ratio!r} and {stored_ous!r}")
  if stored_ous is not None:
    if (isinstance(stored_ous, bool)
        or not isinstance(stored_ous, (int, np.integer)) or stored_ous < 1):
      raise ValueError(f"stored_ous must be an int >= 1, got {stored_ous!r}")
    return int(stored_ous)
  if (isinstance(target_ou_ratio, bool)
      or not isinstance(target_ou_ratio, (int, float, np.number))
      or not math.isfinite(target_ou_ratio) or target_ou_ratio < 1):
    raise ValueError(f"target_ou_ratio must be a finite number >= 1, got "
                     f"{target_ou_ratio!r}")
  budget = int(dense // target_ou_ratio)
  # The largest integer with dense / budget >= target, free of rounding.
  while (budget + 1) * target_ou_ratio <= dense:
    budget += 1
  while budget > 0 and budget * target_ou_ratio > dense:
    budget -= 1
  return budget


def _cluster_probes(probes, *, key, n_init: int, max_iter: int,
                    max_elements: int = _MAX_ELEMENTS,
                    num_slots: int | None = None):
  """Row-block k-means of every ``{(path, k): ous}`` probe, decompressed.

  All probes run through one compiled k-means: their row-blocks are stacked,
  padded with all-zero (pruned) column groups to the widest layer and cut
  into equal chunks (the last padded with all-zero row-blocks) of at most
  ``max_elements`` distances each. Probe ``i`` gets the keys of
  :func:`rsjax.cluster_layers`: ``fold_in(key, i)`` split per row-block.
  ``num_slots`` (default: the largest ``k``) fixes the compiled width, so
  calls with other ``k`` s reuse one compile.
  """
  if not probes:
    return {}
  groups = max(o.shape[1] for o in probes.values())
  block = next(iter(probes.values())).shape[2:]
  slots = min(max(num_slots or 0, *(k for _, k in probes)), groups)
  x, keys, k_rows = [], [], []
  for i, ((_, k), o) in enumerate(probes.items()):
    x.append(jnp.pad(jnp.asarray(o, jnp.float32).reshape(
        o.shape[0], o.shape[1], -1), ((0, 0), (0, groups - o.shape[1]),
                                      (0, 0))))
    keys.append(jax.random.split(jax.random.fold_in(key, i),
                                 (o.shape[0], n_init)))
    k_rows.append(np.full(o.shape[0], k, np.int32))
  x, keys, k_rows = (jnp.concatenate(x), jnp.concatenate(keys),
                     np.concatenate(k_rows))
  total = x.shape[0]
  chunk = max(1, min(total, max_elements // (n_init * groups * slots)))
  pad = -total % chunk
  x = jnp.pad(x, ((0, pad), (0, 0), (0, 0)))
  keys = jnp.concatenate([keys, jax.random.split(key, (pad, n_init))])
  k_rows = jnp.asarray(np.concatenate([k_rows, np.ones(pad, np.int32)]))
  outs = [kmeans._cluster_rows(  # pylint: disable=protected-access
      x[s:s + chunk], keys[s:s + chunk], k_rows[s:s + chunk],
      num_slots=slots, max_iter=int(max_iter),
      n_trials=2 + int(math.log(slots))) for s in range(0, total, chunk)]
  codebook = jnp.concatenate([c for c, _ in outs]).reshape(
      -1, slots, *block)
  index = jnp.concatenate([i for _, i in outs])
  out, start = {}, 0
  for pk, o in probes.items():
    rows, cols = o.shape[:2]
    blocks = kmeans.decompress(codebook[start:start + rows],
                               index[start:start + rows, :cols])
    out[pk] = blocks.astype(o.dtype)
    start += rows
  return out


def _anchored(path: str) -> str:
  return "^" + re.escape(path) + "$"


def _taken_kernels(params, rules) -> list[str]:
  """Paths of the 2-D/4-D kernels some rule matches, in parameter order."""
  compiled = [re.compile(r.pattern) for r in rules]
  return [p for p, leaf in paths.named_leaves(params)
          if getattr(leaf, "ndim", None) in (2, 4)
          and any(c.search(p) for c in compiled)]


def _scalar(loss_fn, params, what: str) -> float:
  value = loss_fn(params)
  if getattr(value, "shape", None) not in ((), None) and jnp.size(value) != 1:
    raise ValueError(f"loss_fn must return a scalar, got shape {value.shape}")
  value = float(jax.device_get(value))
  if not math.isfinite(value):
    raise ValueError(f"loss_fn gave {value} on {what}")
  return value


def allocate_k(loss_fn: Callable[[Any], Any], params,
               rules: Sequence[rules_lib.Rule], hw, *,
               target_ou_ratio: float | None = None,
               stored_ous: int | None = None,
               candidates: Sequence[int] | Mapping[str, Sequence[int]]
               | None = None,
               key, num_draws: int = 1, n_init: int = 8,
               max_iter: int = 100) -> Allocation:
  """Chooses each shared layer's ``k`` for a target, at the least loss.

  The layers the ``rules`` share (``k`` or ``ratio``) are allocated; their
  rules' ``k`` is replaced, their ``sparsity`` kept. Pruned-only layers count
  toward the ratio with their kept blocks; kernels a rule excludes stay
  excluded, kernels no rule matches stay unmatched. Each planned layer is
  first pruned to its rule's ``sparsity`` (lowest-RMS blocks, per layer, as
  :func:`rsjax.ste_sharing` does at step 0; a no-op on params already
  pruned so), and all-zero blocks are pruned.

  Args:
    loss_fn: ``params -> scalar``, e.g. the loss on a held-out batch; it is
      jitted once and called once per layer and lossy candidate, plus once.
    params: a Linen params dict or an NNX ``State``; the returned rules are
      anchored on its paths, so pass the tree the wrappers will get.
    rules: :class:`rsjax.Rule` s as for :func:`rsjax.ste_sharing`.
    hw: a :class:`rsjax.HardwareSpec` or a block shape.
    target_ou_ratio: the least dense / stored OUs over the planned layers.
    stored_ous: or a budget of stored OUs over the planned layers.
    candidates: the ``k`` s to try: one sequence for every layer, or
      ``{path: sequence}`` (layers left out get the default): powers of two
      below the layer's column groups ``G``, then ``G`` (unshared).
    key: a ``jax.random`` key; the result is deterministic for a key.
    num_draws: k-means draws per probe (the first with ``key``, draw ``d``
      with ``fold_in(key, d)``); the table holds their mean increase.
      One-shot sharing's loss varies with the draw, so more draws give
      steadier sensitivities.
    n_init, max_iter: k-means settings of the probes.

  Returns:
    An :class:`Allocation`.

  Raises:
    ValueError: if not exactly one of ``target_ou_ratio`` and ``stored_ous``
      is given or it is out of range, if ``num_draws`` is not an int >= 1,
      if ``candidates`` is malformed or names a layer that is not shared, if
      no rule shares a layer, if ``loss_fn`` is not a finite scalar, or if
      the target cannot be met even at the cheapest candidates (the message
      gives the best reachable ratio).
  """
  if (isinstance(num_draws, bool)
      or not isinstance(num_draws, (int, np.integer)) or num_draws < 1):
    raise ValueError(f"num_draws must be an int >= 1, got {num_draws!r}")
  full_plan = rules_lib.make_plan(params, rules, hw)
  plan = {p: lp for p, lp in full_plan.items() if lp.shared}
  if not plan:
    raise ValueError(f"no rule shares a layer (give k or ratio): {rules!r}")
  cands = _candidates_of(candidates, plan)

  # Reference params: every planned layer pruned to its rule's sparsity.
  kernels = pruning.kernels_of(params, full_plan)
  masks = pruning.prune_masks(kernels, pruning.full_masks(full_plan),
                              full_plan, 1.0, "layer")
  reference = pruning.apply_masks(params, masks, full_plan)
  kernels = pruning.kernels_of(reference, full_plan)
  ous = {p: blockops.kernel_to_ous(kernels[p], lp)
         for p, lp in full_plan.items()}
  kept = {p: np.asarray(jnp.any(o != 0, axis=(2, 3))).sum(axis=1)
          for p, o in ous.items()}
  dense = sum(lp.grid[0] * lp.grid[1] for lp in full_plan.values())
  fixed = sum(int(kept[p].sum()) for p in full_plan if p not in plan)
  budget = _budget_of(dense, target_ou_ratio, stored_ous)

  costs = {p: [stored_ous_at(kept[p], k) for k in cands[p]] for p in plan}
  cheapest = fixed + sum(min(c) for c in costs.values())
  if cheapest > budget:
    best = dense / cheapest if cheapest else math.inf
    raise ValueError(
        f"cannot reach {_target_str(target_ou_ratio, stored_ous)}: even the "
        f"cheapest candidates store {cheapest} of {dense} OUs, ou_ratio "
        f"{best:.4g} at best")

  jitted = jax.jit(loss_fn)
  base = _scalar(jitted, reference, "the params")
  increase = {p: [0.0] * len(cands[p]) for p in plan}
  # k at least a layer's widest row-block keeps every block: lossless.
  probes = [(p, k) for p in plan for k in cands[p]
            if k < int(kept[p].max(initial=0))]
  for draw in range(num_draws):
    # Each draw: the same shapes, so one compiled k-means for all of them.
    shared = _cluster_probes({pk: ous[pk[0]] for pk in probes},
                             key=jax.random.fold_in(key, draw) if draw
                             else key,
                             n_init=n_init, max_iter=max_iter)
    for (p, k), blocks in shared.items():
      kernel = blockops.ous_to_kernel(blocks, plan[p]).astype(
          kernels[p].dtype)
      probe = pruning.map_planned(lambda _, x, w=kernel: w, reference,
                                  {p: plan[p]})
      increase[p][cands[p].index(k)] += (_scalar(
          jitted, probe, f"{p} shared at k={k}") - base) / num_draws

  names = list(plan)
  picked = knapsack.solve([costs[p] for p in names],
                          [increase[p] for p in names], budget - fixed)
  assert picked is not None  # the cheapest choice fits, checked above
  chosen = {p: cands[p][c] for p, c in zip(names, picked)}
  table = {p: LayerSensitivity(cands[p], tuple(costs[p]), tuple(increase[p]),
                               plan[p].grid[0] * plan[p].grid[1], chosen[p])
           for p in names}
  stored = fixed + sum(costs[p][c] for p, c in zip(names, picked))
  out_rules = []
  for p in _taken_kernels(params, rules):
    if p in plan:
      out_rules.append(rules_lib.Rule(_anchored(p), k=chosen[p],
                                      sparsity=plan[p].sparsity))
    elif p in full_plan:
      out_rules.append(rules_lib.Rule(_anchored(p),
                                      sparsity=full_plan[p].sparsity))
    else:
      out_rules.append(rules_lib.Rule(_anchored(p)))
  return Allocation(
      rules=tuple(out_rules), table=table, base_loss=base,
      predicted_loss_increase=float(sum(
          increase[p][c] for p, c in zip(names, picked))),
      dense_ous=dense, stored_ous=stored, budget=budget,
      predicted_ou_ratio=dense / stored if stored else math.inf)


def _target_str(target_ou_ratio, stored_ous) -> str:
  if stored_ous is not None:
    return f"stored_ous={stored_ous}"
  return f"target_ou_ratio={target_ou_ratio}"
