"""Checks that a tree handed to a training entry point fits its state.

The optax wrappers plan their layers on the params given to ``init``; every
later call finds those layers again by path. A tree whose paths or shapes
differ (``{'params': params}`` where ``init`` saw ``params``, another model,
a reshaped layer) would otherwise be skipped silently, training dense.
The path and shape checks read only static structure, so they cost nothing
per step under ``jit`` (they run once, at trace time). The value checks
(NaN, inf) run on concrete arrays only: under a caller's ``jit`` the values
are not known.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rsjax._src import paths


def _prefix_hint(missing, present) -> str:
  """A hint when the two path sets differ by a leading key."""
  for outer, inner, told in ((present, missing, "{%r: params} where the "
                              "optimizer was initialised on params"),
                             (missing, present, "params where the optimizer "
                              "was initialised on {%r: params}")):
    # outer paths = prefix + '/' + inner paths, for one common prefix.
    prefixes = set()
    for p in inner:
      hits = [q[:-len(p) - 1] for q in outer if q.endswith("/" + p)]
      if len(hits) != 1:
        break
      prefixes.add(hits[0])
    else:
      if len(prefixes) == 1:
        return " (did you pass " + told % prefixes.pop() + "?)"
  return ""


def concrete(x) -> bool:
  """Whether ``x`` is an array with known values (not a tracer or shape)."""
  return isinstance(x, (jax.Array, np.ndarray)) and not isinstance(
      x, jax.core.Tracer)


def check_tree(tree, plan, where: str, what: str = "params") -> None:
  """Raises unless every planned path is a leaf of ``tree`` of its shape.

  Args:
    tree: params, updates or gradients (Linen dict or NNX ``State``).
    plan: ``{path: LayerPlan}`` from the state.
    where: the entry point, for the message (``'ste_sharing.update'``).
    what: the argument's name, for the message.

  Raises:
    ValueError: naming the missing paths (and the tree's unplanned kernels,
      with a hint when they differ by a leading key) or the shapes that
      differ.
  """
  leaves = dict(paths.named_leaves(tree))
  missing = [p for p in plan if p not in leaves]
  if missing:
    extra = [p for p, x in leaves.items()
             if p not in plan and getattr(x, "ndim", None) in (2, 4)]
    raise ValueError(
        f"{where}: {what} lack {len(missing)} of the {len(plan)} kernel "
        f"paths the optimizer state was initialised on: {missing}; kernels "
        f"in {what} that it does not know: {extra}"
        f"{_prefix_hint(missing, extra)}")
  wrong = [f"{p}: {tuple(getattr(leaves[p], 'shape', ()))} instead of "
           f"{plan[p].kernel_shape}" for p in plan
           if tuple(getattr(leaves[p], "shape", ())) != plan[p].kernel_shape]
  if wrong:
    raise ValueError(f"{where}: {what} shapes differ from the optimizer "
                     f"state's: {wrong}")


def check_update(updates, params, plan, where: str) -> None:
  """:func:`check_tree` on both arguments of a wrapper's ``update``."""
  check_tree(updates, plan, where, "updates")
  check_tree(params, plan, where, "params")


def check_kernels(tree, plan, where: str) -> None:
  """Raises on a planned kernel that is not floating point, or not finite.

  The dtype check is static; the finiteness check runs only on concrete
  arrays (not under a caller's ``jit``).

  Raises:
    TypeError: naming the path and dtype of a non-floating kernel.
    ValueError: naming the path of a kernel with NaN or inf weights.
  """
  leaves = dict(paths.named_leaves(tree))
  for p in plan:
    dtype = jnp.result_type(leaves[p])
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
          f"{where}: {p} has dtype {dtype}; shared and pruned kernels must "
          "be floating point (cast the params, e.g. to float32)")
  for p in plan:
    x = leaves[p]
    # NumPy, not jnp: under a caller's trace jnp ops on a closed-over
    # concrete array would return tracers.
    if concrete(x) and not np.isfinite(np.asarray(x).astype(np.float64)).all():
      raise ValueError(f"{where}: {p} has NaN or inf weights")
