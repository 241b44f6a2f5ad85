"""OU block pruning: schedule, per-layer and global targets, no drift."""

import fractions
import math

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rsjax
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


@pytest.mark.parametrize("jit", [False, True])
def test_counts_are_the_decimal_ones(jit):
  # The products round below the decimal ones: 0.13 * 900 in float32 and
  # 0.7 * 90 in float64.
  assert np.floor(np.float32(0.13) * np.float32(900)) == 116
  assert math.floor(0.7 * 90) == 62
  assert rsjax.pruned_block_count(0.13, 900) == 117
  assert rsjax.pruned_block_count(0.7, 90) == 63
  assert rsjax.pruned_block_count([0.13, 0.7], [900, 90]) == 180
  params = {"a": jnp.arange(900.0).reshape(30, 30) + 1,
            "b": jnp.arange(90.0).reshape(9, 10) + 1}
  rules = [rules_lib.Rule("a", sparsity=0.13), rules_lib.Rule("b",
                                                              sparsity=0.7)]
  plan = rules_lib.make_plan(params, rules, (1, 1))
  kernels = pruning.kernels_of(params, plan)

  def masks(fraction, scope):
    return pruning.prune_masks(kernels, pruning.full_masks(plan), plan,
                               fraction, scope)

  f = jax.jit(masks, static_argnums=1) if jit else masks
  out = f(1.0, "layer")
  assert [int((~out[p]).sum()) for p in ("a", "b")] == [117, 63]
  out = f(1.0, "global")
  assert sum(int((~out[p]).sum()) for p in ("a", "b")) == 180
  # Part of the way: floor(target * fraction).
  out = f(0.5, "layer")
  assert [int((~out[p]).sum()) for p in ("a", "b")] == [58, 31]
  # Through the wrapper, the schedule's end reaches the target exactly.
  tx = pruning.ou_pruning(optax.sgd(0.0), rules, (1, 1),
                          pruning.PruneSchedule(begin=0, end=3, every=1))
  state = tx.init(params)
  step = jax.jit(tx.update) if jit else tx.update
  for _ in range(3):
    _, state = step(jax.tree.map(jnp.zeros_like, params), state, params)
  assert [int((~state.layers[p].mask).sum()) for p in ("a", "b")] == [117, 63]


@hypothesis.settings(max_examples=200, deadline=None, derandomize=True)
@hypothesis.given(digits=st.integers(0, 10**6 - 1), places=st.integers(1, 6),
                  num_blocks=st.integers(0, 10**6))
def test_count_is_exact_decimal_arithmetic(digits, places, num_blocks):
  text = f"0.{digits:0{places}d}"[:2 + places]
  sparsity = float(text)
  want = math.floor(fractions.Fraction(text) * num_blocks)
  assert rsjax.pruned_block_count(sparsity, num_blocks) == want
  assert rsjax.pruned_block_count([sparsity, sparsity],
                                  [num_blocks, 7]) == math.floor(
                                      fractions.Fraction(text)
                                      * (num_blocks + 7))


def test_count_errors():
  with pytest.raises(TypeError, match="sparsity"):
    rsjax.pruned_block_count("0.3", 10)
  with pytest.raises(TypeError, match="num_blocks"):
    rsjax.pruned_block_count(0.3, 10.0)
  with pytest.raises(ValueError, match="sparsity"):
    rsjax.pruned_block_count(1.5, 10)
  with pytest.raises(ValueError, match="2 sparsities"):
    rsjax.pruned_block_count([0.1, 0.2], [10])
