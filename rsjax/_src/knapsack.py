"""The multiple-choice knapsack behind :func:`rsjax.allocate_k`.

One option per layer, each with an integer cost (stored OUs) and a loss; the
least total loss whose total cost fits a budget, by dynamic programming over
the budget (exact). A budget above ``MAX_STEPS`` is discretised: costs are
rounded up to units of ``ceil(budget / MAX_STEPS)``, so the answer still
fits, and is optimal for the rounded costs. NumPy, ``O(layers * options *
steps)`` time and ``O(layers * steps)`` memory.
"""

from __future__ import annotations

import numpy as np

MAX_STEPS = 2 ** 20


def solve(costs, losses, budget: int, max_steps: int = MAX_STEPS
          ) -> list[int] | None:
  """Exact multiple-choice knapsack: one option per layer, least loss.

  Args:
    costs: per layer, the options' integer costs, ascending.
    losses: per layer, the options' losses.
    budget: the largest allowed total cost.
    max_steps: the DP's budget resolution; above it costs are rounded up to
      units of ``ceil(budget / max_steps)``.

  Returns:
    The chosen option of each layer (the least loss; among equal losses the
    least total cost), or None if no choice fits.
  """
  unit = max(1, -(-budget // max_steps))
  steps = budget // unit
  best = np.full(steps + 1, np.inf)
  best[0] = 0.0
  choices = []
  for layer_costs, layer_losses in zip(costs, losses):
    new = np.full_like(best, np.inf)
    choice = np.zeros(steps + 1, np.int32)
    for c, (cost, loss) in enumerate(zip(layer_costs, layer_losses)):
      shift = -(-int(cost) // unit)
      if shift > steps:
        continue
      cand = np.full_like(best, np.inf)
      cand[shift:] = best[:steps + 1 - shift] + loss
      better = cand < new
      new = np.where(better, cand, new)
      choice = np.where(better, c, choice)
    best = new
    choices.append(choice)
  if not np.isfinite(best).any():
    return None
  b = int(np.argmin(best))  # first minimum: the least cost among ties
  picked = []
  for layer_costs, choice in zip(reversed(costs), reversed(choices)):
    c = int(choice[b])
    picked.append(c)
    b -= -(-int(layer_costs[c]) // unit)
  return picked[::-1]
