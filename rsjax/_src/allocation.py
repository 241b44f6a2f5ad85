"""Per-layer sharing budgets: the ``k`` of each layer, chosen from a loss probe.

:func:`allocate_k` measures how much a user's loss rises when one layer alone
is shared at each candidate ``k`` (everything else as it is), then picks one
``k`` per layer so that the whole model reaches a target at the least
predicted loss. The target is a ratio against the dense layout of one
objective: ``'ou_ratio'`` (dense OUs over stored OUs, as
:func:`rsjax.compression_report` counts them), ``'energy'`` or ``'latency'``
per inference (as :func:`rsjax.hardware_cost` prices the shared layout).
The prediction is additive: the loss increase of a choice is the sum of its
layers' measured increases.

The choice is a multiple-choice knapsack (one option per layer, a cost per
option), solved by dynamic programming over the budget (:mod:`knapsack`):
exactly for stored OUs (integers), and for energy and latency on a grid of
``knapsack.MAX_STEPS`` steps of the budget, costs rounded up, so the choice
always meets the target. That the costs add up over layers is what makes
the knapsack exact: stored OUs and energy are sums over layers, and
``hardware_cost``'s ``latency_ns`` runs the layers one after another (a sum
of per-layer latencies); a pipelined interval (the slowest layer) is not a
sum and is not an objective.

Stored OUs of a layer at ``k``: ``sum_r min(k, kept_r)`` over its row-blocks,
``kept_r`` the row-block's non-pruned (not all-zero) blocks, which is what the
report counts after k-means of distinct blocks when training keeps the
reference's pruning masks; see :func:`max_stored_ous_at` for when it does
not.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import math
import os
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rsjax._src import blockops
from rsjax._src import compressed as compressed_lib
from rsjax._src import cost as cost_lib
from rsjax._src import hardware
from rsjax._src import kmeans
from rsjax._src import knapsack
from rsjax._src import paths
from rsjax._src import pruning
from rsjax._src import rules as rules_lib

OBJECTIVES = ("ou_ratio", "energy", "latency")

@dataclasses.dataclass(frozen=True)
class LayerSensitivity:
  """The measured and priced table of one layer.

  Attributes:
    k: the candidate ``k`` s, ascending.
    stored_ous: stored OUs at each candidate.
    loss_increase: ``loss_fn(only this layer shared at k) - base_loss``; 0
      without a probe where ``k`` keeps every block (lossless).
    dense_ous: ``R * G``.
    chosen_k: the ``k`` the allocation picked.
    energy_pj: the layer's energy per inference (pJ) at each candidate, as
      :func:`rsjax.hardware_cost` prices its shared layout; None when the
      allocation was not priced (see :class:`Allocation`).
    latency_ns: the layer's latency per inference (ns) at each candidate.
    dense_energy_pj, dense_latency_ns: the same for the dense layout.
  """

  k: tuple[int, ...]
  stored_ous: tuple[int, ...]
  loss_increase: tuple[float, ...]
  dense_ous: int
  chosen_k: int
  energy_pj: tuple[float, ...] | None = None
  latency_ns: tuple[float, ...] | None = None
  dense_energy_pj: float | None = None
  dense_latency_ns: float | None = None


@dataclasses.dataclass(frozen=True)
class Allocation:
  """What :func:`allocate_k` chose, and the measurements it chose from.

  Totals are over the planned layers (shared and pruned-only). Energy and
  latency are :func:`rsjax.hardware_cost`'s ``energy_pj['total']`` and
  ``latency_ns`` of those layers' layouts; they are None when the
  allocation could not be priced (``hw`` a block shape, a conv kernel
  without ``positions`` under ``objective='ou_ratio'``, or costs without a
  figure for the hardware).

  Attributes:
    rules: one anchored :class:`rsjax.Rule` per kernel the input rules took,
      in parameter order, for :func:`rsjax.ste_sharing` and the other
      wrappers.
    table: ``{path: LayerSensitivity}`` for every allocated layer.
    base_loss: ``loss_fn`` of the params (pruned to the rules' sparsity).
    predicted_loss_increase: the sum of the chosen increases.
    dense_ous: dense OUs of all planned layers (shared and pruned-only).
    stored_ous: predicted stored OUs of all planned layers.
    budget: the budget that was met, in the objective's unit: stored OUs,
      pJ or ns.
    predicted_ou_ratio: ``dense_ous / stored_ous``.
    objective: ``'ou_ratio'``, ``'energy'`` or ``'latency'``.
    target: the ratio against dense that was asked for (None when a
      ``stored_ous`` budget was given).
    max_stored_ous: the most stored OUs the chosen ``k`` s can give when
      training prunes other blocks at the same per-layer sparsity
      (:func:`max_stored_ous_at`); ``stored_ous`` when it keeps the
      reference's masks.
    dense_energy_pj, energy_pj: dense and predicted energy per inference.
    dense_latency_ns, latency_ns: dense and predicted latency per inference.
  """

  rules: tuple[rules_lib.Rule, ...]
  table: dict[str, LayerSensitivity]
  base_loss: float
  predicted_loss_increase: float
  dense_ous: int
  stored_ous: int
  budget: int | float
  predicted_ou_ratio: float
  objective: str = "ou_ratio"
  target: float | None = None
  max_stored_ous: int | None = None
  dense_energy_pj: float | None = None
  energy_pj: float | None = None
  dense_latency_ns: float | None = None
  latency_ns: float | None = None

  @property
  def k(self) -> dict[str, int]:
    """``{path: chosen k}``."""
    return {p: t.chosen_k for p, t in self.table.items()}

  @property
  def predicted_energy_ratio(self) -> float | None:
    """``dense_energy_pj / energy_pj`` (None if not priced)."""
    return _ratio(self.dense_energy_pj, self.energy_pj)

  @property
  def predicted_latency_ratio(self) -> float | None:
    """``dense_latency_ns / latency_ns`` (None if not priced)."""
    return _ratio(self.dense_latency_ns, self.latency_ns)

  def to_dict(self) -> dict[str, Any]:
    """The allocation as plain JSON-able values (rules as dicts)."""
    out = dataclasses.asdict(self)
    out["rules"] = [dataclasses.asdict(r) for r in self.rules]
    out["predicted_energy_ratio"] = self.predicted_energy_ratio
    out["predicted_latency_ratio"] = self.predicted_latency_ratio
    return out

  def format_table(self) -> str:
    """One line per layer and candidate: k, stored OUs, energy, latency,
    loss increase; the chosen rows marked ``*``."""
    priced = self.energy_pj is not None
    lines = [f"{'layer':<32} {'k':>6} {'stored':>8} {'dense':>8} "
             + (f"{'energy uJ':>10} {'latency us':>10} " if priced else "")
             + f"{'loss_inc':>12}"]
    for p, t in self.table.items():
      for c, (k, s, d) in enumerate(zip(t.k, t.stored_ous, t.loss_increase)):
        mark = " *" if k == t.chosen_k else ""
        cost = (f"{t.energy_pj[c] * 1e-6:>10.4g} "
                f"{t.latency_ns[c] * 1e-3:>10.4g} " if priced else "")
        lines.append(f"{p:<32} {k:>6} {s:>8} {t.dense_ous:>8} {cost}"
                     f"{d:>12.5g}{mark}")
    lines.append(f"ou_ratio {self.predicted_ou_ratio:.3f} ({self.dense_ous}"
                 f" / {self.stored_ous}, at most {self.max_stored_ous} if "
                 "training prunes other blocks)")
    if priced:
      lines.append(
          f"energy {self.predicted_energy_ratio:.3f}x ("
          f"{self.dense_energy_pj * 1e-6:.4g} / {self.energy_pj * 1e-6:.4g}"
          f" uJ), latency {self.predicted_latency_ratio:.3f}x ("
          f"{self.dense_latency_ns * 1e-3:.4g} / "
          f"{self.latency_ns * 1e-3:.4g} us)")
    lines.append(f"objective {self.objective}, budget {self.budget:.6g}; "
                 f"predicted loss {self.base_loss:.5g} + "
                 f"{self.predicted_loss_increase:.5g}")
    return "\n".join(lines)


def _ratio(num, den) -> float | None:
  if num is None or den is None:
    return None
  return num / den if den else math.inf


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


def max_stored_ous_at(lp: rules_lib.LayerPlan, k: int | None) -> int:
  """The most stored OUs a layer can have at ``k`` for its sparsity.

  :func:`stored_ous_at` counts the reference masks' ``kept_r``. Training
  that prunes other blocks (a gradual :class:`rsjax.PruneSchedule`, params
  trained further before the wrappers' init) keeps as many blocks per layer
  (layer scope) but can spread them over the row-blocks differently, and a
  row-block below ``k`` that gains a block stores one more. Whatever the
  spread, the count is at most ``min(R * min(k, G), kept)``, ``kept`` the
  blocks that pruning to the rule's sparsity keeps.

  Args:
    lp: the layer's plan (its ``grid`` and ``sparsity``).
    k: the layer's ``k``; None for a pruned-only layer (every kept block).
  """
  rows, groups = lp.grid
  kept = rows * groups - pruning.pruned_block_count(lp.sparsity,
                                                     rows * groups)
  return kept if k is None else min(rows * min(k, groups), kept)


def _positive_number(value, name: str) -> float:
  if (isinstance(value, bool) or not isinstance(value, (int, float, np.number))
      or not math.isfinite(value) or value < 1):
    raise ValueError(f"{name} must be a finite number >= 1, got {value!r}")
  return float(value)


def _target_of(objective, target, target_ou_ratio, stored_ous):
  """``(target ratio or None, stored-OU budget or None, the target's name)``."""
  if objective not in OBJECTIVES:
    raise ValueError(f"objective must be one of {OBJECTIVES}, got "
                     f"{objective!r}")
  name = "target"
  if target_ou_ratio is not None:
    if objective != "ou_ratio":
      raise ValueError(
          f"target_ou_ratio is the target of objective='ou_ratio'; for "
          f"objective={objective!r} give target= (dense / allocated "
          f"{objective})")
    if target is not None:
      raise ValueError(f"give target or target_ou_ratio (the same), not both: "
                       f"{target!r} and {target_ou_ratio!r}")
    target, name = target_ou_ratio, "target_ou_ratio"
  if stored_ous is not None and objective != "ou_ratio":
    raise ValueError(f"stored_ous is a budget of objective='ou_ratio'; for "
                     f"objective={objective!r} give target=")
  if (target is None) == (stored_ous is None):
    raise ValueError("give exactly one of target (or target_ou_ratio) and "
                     f"stored_ous, got {target!r} and {stored_ous!r}")
  if stored_ous is not None:
    if (isinstance(stored_ous, bool)
        or not isinstance(stored_ous, (int, np.integer)) or stored_ous < 1):
      raise ValueError(f"stored_ous must be an int >= 1, got {stored_ous!r}")
    return None, int(stored_ous), name
  return _positive_number(target, name), None, name


def _ou_budget(dense: int, target: float) -> int:
  """The largest integer with ``dense / budget >= target``, free of
  rounding."""
  budget = int(dense // target)
  while (budget + 1) * target <= dense:
    budget += 1
  while budget > 0 and budget * target > dense:
    budget -= 1
  return budget


def _predicted_layer(mask: np.ndarray, k: int | None,
                     lp: rules_lib.LayerPlan) -> compressed_lib.CompressedLayer:
  """The layout k-means at ``k`` gives a layer with these kept blocks.

  Row-block ``r`` stores ``min(k, kept_r)`` blocks, numbered in order of
  first use (as k-means' compaction numbers them), so the report's counts,
  index bits and crossbar packing are those of the trained layer. ``k``
  None: a pruned-only layer, every kept block stored as itself (identity
  index, no table). Values are zero: only the layout is priced.
  """
  rows, groups = mask.shape
  if k is None:
    codes = np.broadcast_to(np.arange(groups), mask.shape)
  else:
    stored = np.minimum(k, mask.sum(axis=1))
    codes = np.minimum(np.cumsum(mask, axis=1) - 1, stored[:, None] - 1)
  index = np.where(mask, codes, -1).astype(np.int32)
  codebook = np.zeros((rows, max(1, int(index.max(initial=0)) + 1),
                       *lp.block_shape), np.float32)
  return compressed_lib.CompressedLayer(codebook, index, lp.kernel_shape)


def _check_positions(positions, params, plan, objective: str
                     ) -> dict[str, int] | None:
  """``{planned path: MVMs per inference}``, or None if not priceable."""
  positions = dict(positions or {})
  kernels = {p for p, leaf in paths.named_leaves(params)
             if getattr(leaf, "ndim", None) in (2, 4)}
  unknown = sorted(set(positions) - kernels)
  if unknown:
    raise ValueError(f"positions names {unknown}, which are not kernels of "
                     "params")
  for p, n in positions.items():
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
      raise ValueError(f"positions[{p!r}] must be an int >= 1 (crossbar MVMs "
                       f"per inference), got {n!r}")
  missing = [p for p, lp in plan.items()
             if len(lp.kernel_shape) == 4 and p not in positions]
  if missing:
    if objective != "ou_ratio":
      raise ValueError(
          f"objective={objective!r} prices each conv per output pixel: give "
          f"positions={{path: output pixels}} for {missing} (Dense kernels "
          "default to 1)")
    return None
  return {p: int(positions.get(p, 1)) for p in plan}


def _price(layouts, hw, costs, positions) -> dict[str, Any]:
  """:func:`rsjax.hardware_cost` of ``{path: CompressedLayer}``."""
  return cost_lib.hardware_cost(layouts, hw, costs, positions={
      p: positions[p] for p in layouts})


def _figures(priced, path: str, layout: str) -> tuple[float, float]:
  fig = priced["layers"][path][layout]
  return float(fig["energy_pj"]), float(fig["latency_ns"])


def _solve(costs, losses, free):
  """:func:`knapsack.solve`; real-valued costs on a grid of ``MAX_STEPS``
  steps of ``free``, rounded up so the choice always fits."""
  if isinstance(free, (int, np.integer)):
    return knapsack.solve(costs, losses, int(free))
  unit = max(free, 0.0) / knapsack.MAX_STEPS
  picked = None if unit <= 0 else knapsack.solve(
      [[math.ceil(c / unit) for c in layer] for layer in costs], losses,
      knapsack.MAX_STEPS)
  # Within rounding of the budget only the cheapest choice may fit.
  return picked or [int(np.argmin(layer)) for layer in costs]


def _cluster_probes(probes, *, key, n_init: int, max_iter: int):
  """Row-block k-means of every ``{(path, k): ous}`` probe, decompressed.

  On the host in NumPy (:func:`rsjax._src.kmeans.cluster_host`, what
  :func:`rsjax.cluster_ous` runs for concrete arrays): clustering the
  probes costs less than compiling the k-means program once, let alone
  once per probe shape. Probe ``i`` is ``cluster_ous(ous, k,
  key=kmeans.fold_in(key, i))`` with ``n_init`` and ``max_iter``.

  Returns:
    ``{(path, k): blocks}``, NumPy arrays in the probes' shapes and dtypes.
  """
  def one(i, ous, k):
    ous = np.asarray(ous)
    rows, groups = ous.shape[:2]
    slots = min(k, groups)
    codebook, index = kmeans.cluster_host(
        ous.reshape(rows, groups, -1), kmeans.fold_in(key, i, np), k=k,
        n_init=n_init, max_iter=int(max_iter), codebook_scope="row_block",
        n_trials=2 + int(math.log(slots)))
    return kmeans.decompress(
        codebook.reshape(rows, slots, *ous.shape[2:]), index).astype(
            ous.dtype)

  # NumPy releases the GIL in its array loops: probes share the cores.
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
    done = [pool.submit(one, i, ous, k)
            for i, ((_, k), ous) in enumerate(probes.items())]
    return {pk: f.result() for pk, f in zip(probes, done)}


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


@functools.partial(jax.jit, static_argnames=("plan",))
def _reference(params, plan):
  """The params pruned to each planned layer's sparsity, their OU blocks and
  kept-block masks: one compiled program, not one per layer shape."""
  plan = dict(plan)
  kernels = pruning.kernels_of(params, plan)
  masks = pruning.prune_masks(kernels, pruning.full_masks(plan), plan, 1.0,
                              "layer")
  reference = pruning.apply_masks(params, masks, plan)
  kernels = pruning.kernels_of(reference, plan)
  ous = {p: blockops.kernel_to_ous(kernels[p], lp) for p, lp in plan.items()}
  return reference, ous, {p: jnp.any(o != 0, axis=(2, 3))
                          for p, o in ous.items()}


def allocate_k(loss_fn: Callable[[Any], Any], params,
               rules: Sequence[rules_lib.Rule], hw, *,
               objective: str = "ou_ratio", target: float | None = None,
               target_ou_ratio: float | None = None,
               stored_ous: int | None = None,
               positions: Mapping[str, int] | None = None,
               costs: cost_lib.CostModel | None = None,
               candidates: Sequence[int] | Mapping[str, Sequence[int]]
               | None = None,
               key, num_draws: int = 1, n_init: int = 8,
               max_iter: int = 100) -> Allocation:
  """Chooses each shared layer's ``k`` for a target, at the least loss.

  The layers the ``rules`` share (``k`` or ``ratio``) are allocated; their
  rules' ``k`` is replaced, their ``sparsity`` kept. Pruned-only layers count
  toward the target with their kept blocks; kernels a rule excludes stay
  excluded, kernels no rule matches stay unmatched. Each planned layer is
  first pruned to its rule's ``sparsity`` (lowest-RMS blocks, per layer, as
  :func:`rsjax.ste_sharing` does at step 0; a no-op on params already
  pruned so), and all-zero blocks are pruned.

  Objectives (the target is ``dense / allocated`` of that quantity over the
  planned layers, so ``target=4`` asks for a quarter of the dense figure):

  - ``'ou_ratio'``: stored OUs, what the model stores (weight memory and
    the compression report's headline).
  - ``'energy'``: :func:`rsjax.hardware_cost`'s total energy per inference
    of the shared layout (ADC conversions, index table, adders, data
    movement...), which weighs each layer by how often it runs: a conv's
    OUs are activated once per output pixel, so a conv with few weights
    can dominate the energy. Needs ``positions`` for every conv.
  - ``'latency'``: ``hardware_cost``'s ``latency_ns`` (layers run one after
    another: a sum of per-layer latencies, so the knapsack is exact).
    Needs ``positions`` for every conv.

  Each candidate is priced by :func:`rsjax.hardware_cost` on the layout
  k-means would give the layer (``min(k, kept_r)`` stored blocks per
  row-block), so the allocation follows the cost model and ``costs``.
  Whatever the objective, the result reports all three.

  Args:
    loss_fn: ``params -> scalar``, e.g. the loss on a held-out batch; it is
      jitted once and called once per layer and lossy candidate, plus once.
      Pass the same function object on repeated calls: its compile is then
      reused.
    params: a Linen params dict or an NNX ``State``; the returned rules are
      anchored on its paths, so pass the tree the wrappers will get.
    rules: :class:`rsjax.Rule` s as for :func:`rsjax.ste_sharing`.
    hw: a :class:`rsjax.HardwareSpec`, or a block shape (then only
      ``'ou_ratio'``, unpriced).
    objective: ``'ou_ratio'`` (default), ``'energy'`` or ``'latency'``.
    target: the least ``dense / allocated`` ratio of the objective over the
      planned layers, a number >= 1.
    target_ou_ratio: ``target`` for ``objective='ou_ratio'`` (the same).
    stored_ous: or, for ``'ou_ratio'``, a budget of stored OUs over the
      planned layers.
    positions: ``{path: crossbar MVMs per inference}`` (a conv's output
      pixels), as :func:`rsjax.compression_report` takes; Dense kernels
      default to 1. Required for convs under ``'energy'`` and
      ``'latency'``; under ``'ou_ratio'`` without them the result is not
      priced.
    costs: the :class:`rsjax.CostModel` (default ``CostModel()``).
    candidates: the ``k`` s to try: one sequence for every layer, or
      ``{path: sequence}`` (layers left out get the default): powers of two
      below the layer's column groups ``G``, then ``G`` (unshared).
    key: a ``jax.random`` key; the result is deterministic for a key.
    num_draws: k-means draws per probe (the first with ``key``, draw ``d``
      with ``key`` folded with ``d``); the table holds their mean increase.
      One-shot sharing's loss varies with the draw, so more draws give
      steadier sensitivities.
    n_init, max_iter: k-means settings of the probes.

  Returns:
    An :class:`Allocation`.

  Raises:
    ValueError: an unknown ``objective``; not exactly one of ``target`` (or
      ``target_ou_ratio``) and ``stored_ous``, a target below 1, or a target
      that does not fit the objective (``target_ou_ratio`` or ``stored_ous``
      with ``'energy'``/``'latency'``); ``num_draws`` not an int >= 1;
      malformed ``candidates`` or ones naming a layer that is not shared;
      ``positions`` naming a non-kernel, not ints >= 1, or missing a conv
      the objective must price; ``'energy'``/``'latency'`` with a block
      shape for ``hw``; no rule sharing a layer; ``loss_fn`` not a finite
      scalar; or a target the cheapest candidates cannot meet (the message
      gives the best reachable ratio).
  """
  target, ou_budget, target_name = _target_of(objective, target,
                                              target_ou_ratio, stored_ous)
  if (isinstance(num_draws, bool)
      or not isinstance(num_draws, (int, np.integer)) or num_draws < 1):
    raise ValueError(f"num_draws must be an int >= 1, got {num_draws!r}")
  if objective != "ou_ratio" and not isinstance(hw, hardware.HardwareSpec):
    raise ValueError(f"objective={objective!r} prices layouts on hardware: "
                     f"give a HardwareSpec, not {hw!r}")
  full_plan = rules_lib.make_plan(params, rules, hw)
  plan = {p: lp for p, lp in full_plan.items() if lp.shared}
  if not plan:
    raise ValueError(f"no rule shares a layer (give k or ratio): {rules!r}")
  cands = _candidates_of(candidates, plan)
  positions = (_check_positions(positions, params, full_plan, objective)
               if isinstance(hw, hardware.HardwareSpec) else None)

  # Reference params: every planned layer pruned to its rule's sparsity.
  reference, ous, masks = _reference(params, tuple(full_plan.items()))
  masks = {p: np.asarray(m) for p, m in masks.items()}
  kept = {p: m.sum(axis=1) for p, m in masks.items()}
  dense = sum(lp.grid[0] * lp.grid[1] for lp in full_plan.values())
  fixed_plan = [p for p in full_plan if p not in plan]
  layouts = {p: {k: _predicted_layer(masks[p], k, plan[p]) for k in cands[p]}
             for p in plan}
  fixed_layouts = {p: _predicted_layer(masks[p], None, full_plan[p])
                   for p in fixed_plan}

  # Each candidate priced alone: its layer's share of the totals.
  figures, dense_figures = {}, {}
  if positions is not None:
    try:
      for p in full_plan:
        options = (layouts[p].items() if p in plan
                   else [(None, fixed_layouts[p])])
        for k, layer in options:
          priced = _price({p: layer}, hw, costs, positions)
          figures[p, k] = _figures(priced, p, "shared")
        dense_figures[p] = _figures(priced, p, "dense")
    except ValueError:
      if objective != "ou_ratio":
        raise
      figures, positions = {}, None  # no ADC figure for hw: unpriced

  costs_of = {
      "ou_ratio": lambda p, k: stored_ous_at(kept[p], k if k else math.inf),
      "energy": lambda p, k: figures[p, k][0],
      "latency": lambda p, k: figures[p, k][1]}[objective]
  option = {p: [costs_of(p, k) for k in cands[p]] for p in plan}
  fixed = sum(costs_of(p, None) for p in fixed_plan)
  if objective == "ou_ratio":
    dense_total = dense
    budget = ou_budget if ou_budget is not None else _ou_budget(dense, target)
  else:
    dense_total = sum(dense_figures[p][objective == "latency"]
                      for p in full_plan)
    budget = dense_total / target
  cheapest = fixed + sum(min(c) for c in option.values())
  if cheapest > budget:
    best = dense_total / cheapest if cheapest else math.inf
    asked = (f"stored_ous={ou_budget}" if ou_budget is not None
             else f"{target_name}={target:g}")
    unit = {"ou_ratio": "OUs", "energy": "pJ", "latency": "ns"}[objective]
    raise ValueError(
        f"cannot reach {asked} ({objective}): even the cheapest candidates "
        f"cost {cheapest:.6g} of {dense_total:.6g} dense {unit}, "
        f"{objective} ratio {best:.4g} at best")

  jitted = jax.jit(loss_fn)
  base = _scalar(jitted, reference, "the params")
  increase = {p: [0.0] * len(cands[p]) for p in plan}
  # k at least a layer's widest row-block keeps every block: lossless.
  probes = [(p, k) for p in plan for k in cands[p]
            if k < int(kept[p].max(initial=0))]
  for draw in range(num_draws):
    shared = _cluster_probes({pk: ous[pk[0]] for pk in probes},
                             key=kmeans.fold_in(key, draw, np) if draw
                             else key,
                             n_init=n_init, max_iter=max_iter)
    for (p, k), blocks in shared.items():
      kernel = jnp.asarray(blockops.ous_to_kernel(blocks, plan[p]))
      probe = pruning.map_planned(lambda _, x, w=kernel: w, reference,
                                  {p: plan[p]})
      increase[p][cands[p].index(k)] += (_scalar(
          jitted, probe, f"{p} shared at k={k}") - base) / num_draws

  names = list(plan)
  picked = _solve([option[p] for p in names], [increase[p] for p in names],
                  budget - fixed)
  assert picked is not None  # the cheapest choice fits, checked above
  chosen = {p: cands[p][c] for p, c in zip(names, picked)}
  table = {p: LayerSensitivity(
      cands[p], tuple(stored_ous_at(kept[p], k) for k in cands[p]),
      tuple(increase[p]), plan[p].grid[0] * plan[p].grid[1], chosen[p],
      *((tuple(figures[p, k][0] for k in cands[p]),
         tuple(figures[p, k][1] for k in cands[p]), *dense_figures[p])
        if positions is not None else ()))
           for p in names}
  stored = sum(stored_ous_at(kept[p], chosen.get(p, math.inf))
               for p in full_plan)
  priced = {}
  if positions is not None:
    # The whole model at once: the totals hardware_cost reports for it.
    model = _price({p: layouts[p][chosen[p]] if p in plan
                    else fixed_layouts[p] for p in full_plan},
                   hw, costs, positions)["layouts"]
    priced = dict(
        dense_energy_pj=float(model["dense"]["energy_pj"]["total"]),
        energy_pj=float(model["shared"]["energy_pj"]["total"]),
        dense_latency_ns=float(model["dense"]["latency_ns"]),
        latency_ns=float(model["shared"]["latency_ns"]))
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
      predicted_ou_ratio=dense / stored if stored else math.inf,
      objective=objective, target=target,
      max_stored_ous=sum(max_stored_ous_at(lp, chosen.get(p))
                         for p, lp in full_plan.items()),
      **priced)
