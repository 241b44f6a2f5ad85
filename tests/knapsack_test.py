"""The multiple-choice knapsack against brute force."""

import itertools

from hypothesis import given, settings, strategies as st

from rsjax._src import knapsack


def brute_force(costs, losses, budget):
  """``(loss, cost, choice)`` of the least loss, then cost, or None."""
  best = None
  for choice in itertools.product(*[range(len(c)) for c in costs]):
    cost = sum(c[i] for c, i in zip(costs, choice))
    loss = sum(l[i] for l, i in zip(losses, choice))
    if cost <= budget and (best is None or (loss, cost) < best[:2]):
      best = (loss, cost, choice)
  return best


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_knapsack_matches_brute_force(data):
  num_layers = data.draw(st.integers(1, 4))
  costs, losses = [], []
  for _ in range(num_layers):
    n = data.draw(st.integers(1, 4))
    costs.append(sorted(data.draw(st.lists(st.integers(0, 12), min_size=n,
                                           max_size=n))))
    # Small integers: exact sums, so ties are real ties.
    losses.append(data.draw(st.lists(st.integers(-3, 9), min_size=n,
                                     max_size=n)))
  budget = data.draw(st.integers(0, 40))
  picked = knapsack.solve(costs, [list(map(float, l)) for l in losses],
                                budget)
  best = brute_force(costs, losses, budget)
  if best is None:
    assert picked is None
    return
  assert picked is not None
  cost = sum(c[i] for c, i in zip(costs, picked))
  loss = sum(l[i] for l, i in zip(losses, picked))
  assert cost <= budget
  assert (loss, cost) == best[:2]  # least loss, then least cost


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_knapsack_discretised_stays_within_budget(data):
  costs = [sorted(data.draw(st.lists(st.integers(1, 500), min_size=1,
                                     max_size=3))) for _ in range(3)]
  losses = [[float(v) for v in data.draw(st.lists(
      st.integers(0, 9), min_size=len(c), max_size=len(c)))] for c in costs]
  budget = data.draw(st.integers(1, 1500))
  unit = -(-budget // 7)
  picked = knapsack.solve(costs, losses, budget, max_steps=7)
  # Exactly the optimum of the costs rounded up to the unit.
  rounded = [[-(-c // unit) for c in layer] for layer in costs]
  best = brute_force(rounded, losses, budget // unit)
  assert (picked is None) == (best is None)
  if picked is not None:
    assert sum(c[i] for c, i in zip(costs, picked)) <= budget
    assert sum(l[i] for l, i in zip(losses, picked)) == best[0]
