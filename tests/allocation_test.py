"""Per-layer k allocation: costs, the knapsack, the loss probes, the rules."""

import dataclasses
import math

from flax import nnx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import knapsack_test
import rsjax
from rsjax._src import allocation

HW = rsjax.HardwareSpec()  # (9, 2) blocks
CANDS = (1, 2, 4, 16)  # both shared layers have G = 16: one k-means compile


class Net(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(32)(x))
    x = nn.relu(nn.Dense(32)(x))
    return nn.Dense(4)(x)


RULES = [rsjax.Rule("Dense_2"), rsjax.Rule("Dense_0", k=4),
         rsjax.Rule("Dense_1", k=4, sparsity=0.25)]


def _data():
  x = jax.random.normal(jax.random.key(0), (64, 18))
  y = (jnp.sum(x[:, :4], axis=1) > 0).astype(jnp.int32) + 2 * (
      x[:, 5] > 0).astype(jnp.int32)
  return x, y


def sgd_trained(model, x, y, steps: int):
  """``(loss_fn, params)`` after ``steps`` of SGD, so the loss is sensitive
  to its weights."""
  params = model.init(jax.random.key(1), x)["params"]

  def loss_fn(p):
    logits = model.apply({"params": p}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  tx = optax.sgd(0.3)
  opt_state = tx.init(params)

  @jax.jit
  def step(p, s):
    updates, s = tx.update(jax.grad(loss_fn)(p), s, p)
    return optax.apply_updates(p, updates), s

  for _ in range(steps):
    params, opt_state = step(params, opt_state)
  return loss_fn, params


@pytest.fixture(scope="module")
def trained():
  return sgd_trained(Net(), *_data(), 30)


@pytest.fixture(scope="module")
def allocated(trained):
  loss_fn, params = trained
  return rsjax.allocate_k(loss_fn, params, RULES, HW, target_ou_ratio=4.0,
                          candidates=CANDS, key=jax.random.key(2))


def test_default_candidates():
  assert allocation.default_candidates(1) == (1,)
  assert allocation.default_candidates(8) == (1, 2, 4, 8)
  assert allocation.default_candidates(10) == (1, 2, 4, 8, 10)


def test_stored_ous_match_compression_report():
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(45, 16)).astype(np.float32)  # R = 5, G = 8
  plan = rsjax.make_plan({"w": kernel}, [rsjax.Rule("w", k=1)], HW)["w"]
  # Row-block r keeps r + 1 (2, 3, ...) of its blocks: min(k, kept_r) both
  # ways.
  keep = np.arange(8)[None] <= np.array([0, 1, 2, 4, 7])[:, None]
  mask = np.broadcast_to(keep[:, :, None, None], (5, 8, 9, 2))
  kernel = np.asarray(rsjax.from_ous(
      np.where(mask, rsjax.to_ous(kernel, HW.block_shape), 0), (45, 16)))
  kept = keep.sum(axis=1)
  layer = rsjax.compress_kernel(kernel, HW, 3, key=jax.random.key(0))
  report = rsjax.compression_report({"w": layer, "dense": kernel}, HW)
  assert report["layers"]["w"]["stored_ous"] == allocation.stored_ous_at(
      kept, 3) == 1 + 2 + 3 + 3 + 3
  assert report["layers"]["dense"]["stored_ous"] == allocation.stored_ous_at(
      kept, plan.grid[1]) == kept.sum()


def test_reaches_target_and_rules(trained, allocated):
  _, params = trained
  assert allocated.predicted_ou_ratio >= 4.0
  assert allocated.stored_ous <= allocated.budget == math.floor(
      allocated.dense_ous / 4.0)
  assert allocated.rules == (
      rsjax.Rule("^Dense_0/kernel$", k=allocated.k["Dense_0/kernel"]),
      rsjax.Rule("^Dense_1/kernel$", k=allocated.k["Dense_1/kernel"],
                 sparsity=0.25),
      rsjax.Rule("^Dense_2/kernel$"))
  # The rules drive the wrappers; the compressed model stores at most the
  # predicted OUs (identical blocks could only store fewer).
  tx = rsjax.ste_sharing(optax.sgd(0.0), allocated.rules, HW,
                         key=jax.random.key(3))
  layers = rsjax.to_compressed(params, tx.init(params))
  assert sorted(layers) == ["Dense_0/kernel", "Dense_1/kernel"]
  report = rsjax.compression_report(layers, HW)
  assert report["total"]["dense_ous"] == allocated.dense_ous
  assert report["total"]["stored_ous"] == allocated.stored_ous


def test_table_is_measured(trained, allocated):
  loss_fn, params = trained
  table = allocated.table
  assert list(table) == ["Dense_0/kernel", "Dense_1/kernel"]
  d1 = table["Dense_1/kernel"]
  assert d1.k == CANDS and d1.dense_ous == 4 * 16
  # 25 % of 64 blocks pruned: 48 kept, at most 16 a row-block.
  assert d1.stored_ous[-1] == 48
  assert d1.loss_increase[-1] == 0.0  # k = G: lossless, not probed
  # k = 1 keeps each row-block's mean block: a NumPy reference.
  w = np.asarray(params["Dense_0"]["kernel"])
  ous = np.asarray(rsjax.to_ous(w, HW.block_shape))
  mean = ous.mean(axis=1, keepdims=True)
  shared = np.asarray(rsjax.from_ous(np.broadcast_to(mean, ous.shape),
                                     w.shape))
  probe = jax.tree_util.tree_map(lambda v: v, params)
  probe["Dense_0"]["kernel"] = jnp.asarray(shared)
  # The base is the params with Dense_1 pruned, which Dense_0's probe keeps.
  pruned = rsjax.apply_masks(params, *_masks(params))
  probe["Dense_1"]["kernel"] = pruned["Dense_1"]["kernel"]
  np.testing.assert_allclose(allocated.base_loss, loss_fn(pruned), rtol=1e-6)
  np.testing.assert_allclose(
      table["Dense_0/kernel"].loss_increase[0],
      loss_fn(probe) - loss_fn(pruned), atol=2e-5)
  assert table["Dense_0/kernel"].stored_ous == (2, 4, 8, 32)


def _masks(params):
  plan = rsjax.make_plan(params, RULES, HW)
  from rsjax._src import pruning  # pylint: disable=g-import-not-at-top
  masks = pruning.prune_masks(pruning.kernels_of(params, plan),
                              pruning.full_masks(plan), plan, 1.0)
  return masks, plan


def test_never_worse_than_uniform_and_brute_force(trained, allocated):
  loss_fn, params = trained
  table = allocated.table
  names = list(table)
  costs = [list(table[p].stored_ous) for p in names]
  losses = [list(table[p].loss_increase) for p in names]
  for k in (1, 2, 4):
    uniform_cost = sum(table[p].stored_ous[CANDS.index(k)] for p in names)
    uniform_loss = sum(table[p].loss_increase[CANDS.index(k)] for p in names)
    for budget in (uniform_cost, uniform_cost + 3):
      a = rsjax.allocate_k(loss_fn, params, RULES, HW, stored_ous=budget,
                           candidates=CANDS, key=jax.random.key(2))
      assert a.table == {p: dataclasses.replace(t, chosen_k=a.k[p])
                         for p, t in table.items()}
      assert a.stored_ous <= budget
      assert a.predicted_loss_increase <= uniform_loss
      best = knapsack_test.brute_force(costs, losses, budget)
      assert math.isclose(a.predicted_loss_increase, best[0], abs_tol=1e-9)


def test_draws_are_averaged(trained, allocated):
  loss_fn, params = trained
  two = rsjax.allocate_k(loss_fn, params, RULES, HW, target_ou_ratio=4.0,
                         candidates=CANDS, key=jax.random.key(2), num_draws=2)
  for p, t in two.table.items():
    one = allocated.table[p].loss_increase  # draw 0 alone
    # Every k = 1 draw is the row-block mean: draws agree exactly there.
    np.testing.assert_allclose(t.loss_increase[0], one[0], atol=1e-6)
    assert t.loss_increase[-1] == 0.0
  assert any(t.loss_increase != allocated.table[p].loss_increase
             for p, t in two.table.items())


def test_deterministic_for_a_key(trained, allocated):
  loss_fn, params = trained
  again = rsjax.allocate_k(loss_fn, params, RULES, HW, target_ou_ratio=4.0,
                           candidates=CANDS, key=jax.random.key(2))
  assert again == allocated
  assert again.to_dict()["rules"][2] == {
      "pattern": "^Dense_2/kernel$", "k": None, "ratio": None,
      "sparsity": 0.0}
  assert "Dense_1/kernel" in again.format_table()


@pytest.mark.parametrize("kwargs, match", [
    ({}, r"exactly one of target \(or target_ou_ratio\) and stored_ous"),
    ({"target_ou_ratio": 2.0, "stored_ous": 10}, "exactly one"),
    ({"target_ou_ratio": 0.5}, "target_ou_ratio must be a finite number"),
    ({"target_ou_ratio": float("nan")}, "target_ou_ratio must be"),
    ({"target_ou_ratio": True}, "target_ou_ratio must be"),
    ({"stored_ous": 0}, "stored_ous must be an int >= 1"),
    ({"stored_ous": 9, "num_draws": 0}, "num_draws must be an int >= 1"),
    ({"stored_ous": 2.5}, "stored_ous must be an int"),
    ({"target_ou_ratio": 40.0}, r"ou_ratio ratio 16 at best"),
    ({"stored_ous": 5}, r"cheapest candidates cost 6 of 96 dense OUs"),
    ({"target_ou_ratio": 2.0, "candidates": []}, "candidates must be"),
    ({"target_ou_ratio": 2.0, "candidates": [0, 2]}, "candidates must be"),
    ({"target_ou_ratio": 2.0, "candidates": [1.5]}, "candidates must be"),
    ({"target_ou_ratio": 2.0, "candidates": "12"}, "candidates must be"),
    ({"target_ou_ratio": 2.0, "candidates": {"Dense_2/kernel": [1]}},
     "not shared layers"),
    ({"target_ou_ratio": 2.0, "candidates": {"Dense_0/kernel": [True]}},
     r"candidates\['Dense_0/kernel'\] must be"),
])
def test_bad_arguments(trained, kwargs, match):
  loss_fn, params = trained
  with pytest.raises(ValueError, match=match):
    rsjax.allocate_k(loss_fn, params, RULES, HW, key=jax.random.key(0),
                     **kwargs)


def test_bad_rules_and_loss(trained):
  loss_fn, params = trained
  with pytest.raises(ValueError, match="no rule shares a layer"):
    rsjax.allocate_k(loss_fn, params, [rsjax.Rule("Dense", sparsity=0.5)],
                     HW, target_ou_ratio=1.0, key=jax.random.key(0))
  with pytest.raises(ValueError, match="must return a scalar"):
    rsjax.allocate_k(lambda p: jnp.zeros(3), params, RULES, HW,
                     target_ou_ratio=1.0, key=jax.random.key(0))
  with pytest.raises(ValueError, match="loss_fn gave nan"):
    rsjax.allocate_k(lambda p: jnp.float32(jnp.nan), params, RULES, HW,
                     target_ou_ratio=1.0, key=jax.random.key(0))


class NnxNet(nnx.Module):

  def __init__(self, rngs):
    self.a = nnx.Linear(18, 32, rngs=rngs)
    self.b = nnx.Linear(32, 32, rngs=rngs)
    self.c = nnx.Linear(32, 4, rngs=rngs)

  def __call__(self, x):
    return self.c(nnx.relu(self.b(nnx.relu(self.a(x)))))


def test_nnx_state_gives_the_same_allocation(trained, allocated):
  _, params = trained
  x, y = _data()
  graphdef, state = nnx.split(NnxNet(nnx.Rngs(0)))
  for name, linen in zip("abc", ("Dense_0", "Dense_1", "Dense_2")):
    state[name]["kernel"].set_value(params[linen]["kernel"])
    state[name]["bias"].set_value(params[linen]["bias"])

  def loss_fn(s):
    logits = nnx.merge(graphdef, s)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  rules = [rsjax.Rule("^c/"), rsjax.Rule("^a/", k=4),
           rsjax.Rule("^b/", k=4, sparsity=0.25)]
  a = rsjax.allocate_k(loss_fn, state, rules, HW, target_ou_ratio=4.0,
                       candidates=CANDS, key=jax.random.key(2))
  assert a.rules == (rsjax.Rule("^a/kernel$", k=allocated.k["Dense_0/kernel"]),
                     rsjax.Rule("^b/kernel$", k=allocated.k["Dense_1/kernel"],
                                sparsity=0.25),
                     rsjax.Rule("^c/kernel$"))
  for nnx_path, linen_path in (("a/kernel", "Dense_0/kernel"),
                               ("b/kernel", "Dense_1/kernel")):
    np.testing.assert_allclose(a.table[nnx_path].loss_increase,
                               allocated.table[linen_path].loss_increase,
                               atol=1e-5)
  rsjax.make_plan(state, a.rules, HW)  # the rules resolve on the state
