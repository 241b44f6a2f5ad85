"""OU block pruning: schedule, per-layer and global targets, no drift."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rsjax._src import blockops
from rsjax._src import pruning
from rsjax._src import rules as rules_lib

BLOCK = (9, 2)


def _params():
  k1, k2 = jax.random.split(jax.random.key(0))
  return {"a": {"kernel": jax.random.normal(k1, (36, 16))},
          "b": {"kernel": 0.1 * jax.random.normal(k2, (3, 3, 2, 8)),
                "bias": jnp.zeros((8,))}}


def _zero_blocks(kernel, plan):
  ous = blockops.kernel_to_ous(kernel, plan)
  return np.asarray(jnp.all(ous == 0, axis=(2, 3)))


def test_schedule():
  s = pruning.PruneSchedule(begin=10, end=20, every=4, power=3)
  np.testing.assert_allclose(
      [s.fraction(t) for t in (0, 10, 15, 20, 30)],
      [0, 0, 1 - 0.5 ** 3, 1, 1], rtol=1e-6)
  assert [bool(s.updates_at(t)) for t in (9, 10, 12, 14, 18, 19, 20, 24)] == [
      False, True, False, True, True, False, True, False]
  once = pruning.PruneSchedule()
  assert float(once.fraction(0)) == 1.0 and bool(once.updates_at(0))
  with pytest.raises(ValueError):
    pruning.PruneSchedule(begin=5, end=2)
  with pytest.raises(ValueError):
    pruning.PruneSchedule(scope="net")


def test_layer_and_global_targets():
  params = _params()
  rules = [rules_lib.Rule("a", sparsity=0.5),
           rules_lib.Rule("b", sparsity=0.25)]
  plan = rules_lib.make_plan(params, rules, BLOCK)
  kernels = pruning.kernels_of(params, plan)
  masks = pruning.prune_masks(kernels, pruning.full_masks(plan), plan, 1.0)
  # a: 4x8 = 32 blocks, b: 2x4 = 8 blocks.
  assert int((~masks["a/kernel"]).sum()) == 16
  assert int((~masks["b/kernel"]).sum()) == 2
  # The lowest-RMS blocks go.
  rms = np.asarray(blockops.block_rms(kernels["a/kernel"], plan["a/kernel"]))
  kept = np.asarray(masks["a/kernel"])
  assert rms[kept].min() >= rms[~kept].max()
  glob = pruning.prune_masks(kernels, pruning.full_masks(plan), plan, 1.0,
                             "global")
  # Global: (0.5 * 32 + 0.25 * 8) / 40 of all 40 blocks = 18; b is 10x
  # smaller, so its blocks go first.
  assert int((~glob["a/kernel"]).sum()) + int((~glob["b/kernel"]).sum()) == 18
  assert int((~glob["b/kernel"]).sum()) == 8


@pytest.mark.parametrize("jit", [False, True])
def test_ou_pruning_follows_schedule_and_never_drifts(jit):
  params = _params()
  rules = [rules_lib.Rule("a", sparsity=0.5), rules_lib.Rule("b", sparsity=0.5)]
  schedule = pruning.PruneSchedule(begin=2, end=6, every=2, power=1)
  tx = pruning.ou_pruning(optax.sgd(0.1, momentum=0.9), rules, BLOCK,
                          schedule)
  state = tx.init(params)
  plan = pruning.plans_of(state.layers)
  target = jax.random.normal(jax.random.key(1), (4, 16))
  x = jax.random.normal(jax.random.key(2), (4, 36))

  def step(params, state):
    def loss(p):
      return (jnp.sum((x @ p["a"]["kernel"] - target) ** 2)
              + jnp.sum(jnp.sin(p["b"]["kernel"])))
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  step = jax.jit(step) if jit else step
  pruned_before = {p: np.zeros(lp.grid, bool) for p, lp in plan.items()}
  counts = []
  for t in range(1, 10):
    params, state = step(params, state)
    n = 0
    for p, lp in plan.items():
      mask = np.asarray(state.layers[p].mask)
      zero = _zero_blocks(pruning.kernels_of(params, plan)[p], lp)
      np.testing.assert_array_equal(zero, ~mask)  # exactly the pruned ones
      assert np.all(~mask[pruned_before[p]])  # never regrow
      pruned_before[p] = ~mask
      n += int((~mask).sum())
    counts.append(n)
  # 40 blocks, 50%, linear from step 2 to 6, updated at 2, 4, 6.
  assert counts == [0, 0, 0, 10, 10, 20, 20, 20, 20]
  assert int(state.count) == 9


def test_global_scope_in_wrapper_and_masked_params():
  params = _params()
  rules = [rules_lib.Rule("a", sparsity=0.5),
           rules_lib.Rule("b", sparsity=0.25)]
  tx = pruning.ou_pruning(optax.sgd(0.1), rules, BLOCK,
                          pruning.PruneSchedule(scope="global"))
  state = tx.init(params)  # begin == end == 0: pruned at init
  plan = pruning.plans_of(state.layers)
  assert sum(int((~s.mask).sum()) for s in state.layers.values()) == 18
  # Before the first update only the masked view has the zeros.
  masked = pruning.apply_masks(params, pruning.masks_of(state.layers), plan)
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  updates, state = jax.jit(tx.update)(grads, state, params)
  params = optax.apply_updates(params, updates)
  for p, lp in plan.items():
    kernel = pruning.kernels_of(params, plan)[p]
    np.testing.assert_array_equal(_zero_blocks(kernel, lp),
                                  ~np.asarray(state.layers[p].mask))
    np.testing.assert_array_equal(
        _zero_blocks(pruning.kernels_of(masked, plan)[p], lp),
        ~np.asarray(state.layers[p].mask))
