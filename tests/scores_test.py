"""Pruning scores: the built-ins against NumPy, the default unchanged, the
gradient score, the registry's errors and a custom score end to end."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rsjax
from rsjax._src import blockops
from rsjax._src import pruning
from rsjax._src import rules as rules_lib
from rsjax._src import scores

BLOCK = (2, 2)


def _blocks_np(kernel, block):
  """``[R, G]`` lists of each block's real cells (NumPy, no padding)."""
  m = np.asarray(kernel, np.float64).reshape(-1, kernel.shape[-1])
  bh, bw = block
  rows, cols = -(-m.shape[0] // bh), -(-m.shape[1] // bw)
  return [[m[r * bh:(r + 1) * bh, g * bw:(g + 1) * bw].ravel()
           for g in range(cols)] for r in range(rows)]


def _score_np(name, kernel, grad, block):
  ws, gs = _blocks_np(kernel, block), _blocks_np(grad, block)
  fns = {"rms": lambda w, g: np.sqrt(np.mean(w * w)),
         "l1": lambda w, g: np.mean(np.abs(w)),
         "grad_weight": lambda w, g: abs(np.sum(g * w))}
  return np.array([[fns[name](w, g) for w, g in zip(wr, gr)]
                   for wr, gr in zip(ws, gs)])


def _old_masks_np(kernels, masks, plan, fraction, scope):
  """The RMS ranking ``prune_masks`` had before scores were pluggable."""
  pruned = [p for p, lp in plan.items() if lp.pruned]
  flat = {p: np.where(np.asarray(masks[p]),
                      _score_np("rms", kernels[p], kernels[p],
                                plan[p].block_shape), -1.0).ravel()
          for p in pruned}
  def keep(score, count):
    rank = np.argsort(np.argsort(score, kind="stable"), kind="stable")
    return rank >= count
  out = {p: np.asarray(m) for p, m in masks.items()}
  if scope == "layer":
    for p in pruned:
      count = np.floor(np.float32(rsjax.pruned_block_count(
          plan[p].sparsity, flat[p].size)) * np.float32(fraction))
      out[p] = out[p] & keep(flat[p], count).reshape(plan[p].grid)
    return out
  sizes = [flat[p].size for p in pruned]
  count = np.floor(np.float32(rsjax.pruned_block_count(
      [plan[p].sparsity for p in pruned], sizes)) * np.float32(fraction))
  kept = keep(np.concatenate([flat[p] for p in pruned]), count)
  for p, start, n in zip(pruned, np.cumsum([0] + sizes), sizes):
    out[p] = out[p] & kept[start:start + n].reshape(plan[p].grid)
  return out


def _params():
  k1, k2 = jax.random.split(jax.random.key(0))
  a = jax.random.normal(k1, (7, 6))
  # Ties: two equal blocks and an all-zero block.
  a = a.at[2:4, 0:2].set(a[0:2, 0:2]).at[4:6, 2:4].set(0.0)
  return {"a": a, "b": 0.5 * jax.random.normal(k2, (3, 3, 1, 3))}


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("name", ["rms", "l1", "grad_weight"])
def test_builtin_scores_match_numpy(name, jit):
  params = _params()
  grads = jax.tree.map(lambda x: jnp.cos(3.0 * x) - 0.2, params)
  for p in ("a", "b"):  # Dense 7x6 and Conv 9x3: both have padded edges
    plan = rules_lib.make_plan({p: params[p]},
                               [rules_lib.Rule(p, sparsity=0.5)], BLOCK)[p]
    def score(kernel, grad, plan=plan):
      return scores.block_scores(name, blockops.ou_blocks(kernel, plan, grad))
    fn = jax.jit(score) if jit else score
    np.testing.assert_allclose(
        fn(params[p], grads[p]),
        _score_np(name, params[p], grads[p], BLOCK), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("jit", [False, True])
def test_default_is_the_rms_ranking_as_before(jit):
  params = _params()
  rules = [rules_lib.Rule("a", sparsity=0.5), rules_lib.Rule("b",
                                                             sparsity=0.3)]
  plan = rules_lib.make_plan(params, rules, BLOCK)
  kernels = pruning.kernels_of(params, plan)
  # Some blocks already pruned, so the ranking must keep them pruned.
  masks = {p: jax.random.bernoulli(jax.random.key(i), 0.8, lp.grid)
           for i, (p, lp) in enumerate(plan.items())}

  def both(fraction, scope):
    return (pruning.prune_masks(kernels, masks, plan, fraction, scope),
            pruning.prune_masks(kernels, masks, plan, fraction, scope,
                                score="rms"))
  fn = jax.jit(both, static_argnums=1) if jit else both
  for scope in ("layer", "global"):
    for fraction in (0.5, 1.0):
      want = _old_masks_np(kernels, masks, plan, fraction, scope)
      for got in fn(fraction, scope):
        for p in plan:
          np.testing.assert_array_equal(got[p], want[p])


def _taylor_case():
  """Block (0, 0) is large with no gradient, block (0, 1) small with a
  large one: RMS prunes (0, 1), the Taylor score (0, 0)."""
  kernel = jnp.array([[3.0, 3.0, 0.1, 0.1],
                      [3.0, 3.0, 0.1, 0.1]])
  grad = jnp.array([[0.0, 0.0, 5.0, 5.0],
                    [0.0, 0.0, 5.0, 5.0]])
  rules = [rules_lib.Rule("w", sparsity=0.5)]
  plan = rules_lib.make_plan({"w": kernel}, rules, BLOCK)
  return kernel, grad, rules, plan


@pytest.mark.parametrize("jit", [False, True])
def test_grad_weight_changes_the_pruned_blocks(jit):
  kernel, grad, rules, plan = _taylor_case()

  def masks(score, grads):
    return pruning.prune_masks({"w": kernel}, pruning.full_masks(plan), plan,
                               1.0, score=score, grads=grads)["w"]
  fn = jax.jit(masks, static_argnums=0) if jit else masks
  np.testing.assert_array_equal(fn("rms", None), [[True, False]])
  np.testing.assert_array_equal(fn("grad_weight", {"w": grad}),
                                [[False, True]])
  # In the wrapper, from the gradient the update received (sgd(0): the
  # params stay as they are).
  tx = rsjax.ou_pruning(optax.sgd(0.0), rules, BLOCK, rsjax.PruneSchedule(
      begin=1, end=1, score="grad_weight"))
  state = tx.init({"w": kernel})
  update = jax.jit(tx.update) if jit else tx.update
  updates, state = update({"w": grad}, state, {"w": kernel})
  np.testing.assert_array_equal(state.layers["w"].mask, [[False, True]])
  np.testing.assert_array_equal(optax.apply_updates({"w": kernel},
                                                    updates)["w"][:, :2], 0)


def test_grad_weight_in_ste_sharing():
  kernel, grad, _, _ = _taylor_case()
  rules = [rules_lib.Rule("w", k=1, sparsity=0.5)]
  tx = rsjax.ste_sharing(optax.sgd(0.0), rules, BLOCK, key=jax.random.key(0),
                         prune=rsjax.PruneSchedule(begin=1, end=1,
                                                   score="grad_weight"),
                         n_init=1, max_iter=2)
  state = tx.init({"w": kernel})
  _, state = jax.jit(tx.update)({"w": grad}, state, {"w": kernel})
  np.testing.assert_array_equal(state.layers["w"].mask, [[False, True]])


def test_a_gradient_score_without_gradient_is_an_error():
  kernel, _, rules, plan = _taylor_case()
  with pytest.raises(ValueError, match="'grad_weight' needs the gradient"):
    pruning.prune_masks({"w": kernel}, pruning.full_masks(plan), plan, 1.0,
                        score="grad_weight")
  # Pruning at init (begin=0) has no gradient to score with: the schedule
  # says so when it is made, before anything trains.
  with pytest.raises(ValueError, match="'grad_weight' needs the gradient, "
                     "and a schedule with begin=0"):
    rsjax.PruneSchedule(score="grad_weight")
  with pytest.raises(ValueError, match="'_saliency' needs the gradient"):
    rsjax.PruneSchedule(begin=0, end=5, score=_saliency)
  assert scores.needs_grad("grad_weight") and scores.needs_grad(_saliency)
  assert not scores.needs_grad("rms") and not scores.needs_grad("l1")
  # A gradient score still prunes in the wrapper from step 1 on, and a score
  # that fails on the probe for another reason is not taken for one.
  rsjax.ou_pruning(optax.sgd(0.1), rules, BLOCK, rsjax.PruneSchedule(
      begin=1, end=1, score="grad_weight")).init({"w": kernel})
  assert not scores.needs_grad(lambda b: b.weight.reshape(2, -1))


def test_bad_scores_are_named():
  with pytest.raises(ValueError, match="unknown pruning score 'magnitude'.*"
                     "'grad_weight', 'l1', 'rms'"):
    rsjax.PruneSchedule(score="magnitude")
  with pytest.raises(TypeError, match="score must be a registered name"):
    rsjax.PruneSchedule(score=3)
  with pytest.raises(TypeError, match="name must be a str"):
    rsjax.register_score(3, scores.rms)
  with pytest.raises(ValueError, match="must not be empty"):
    rsjax.register_score("", scores.rms)
  with pytest.raises(TypeError, match="'x' must be a callable"):
    rsjax.register_score("x", 5)
  with pytest.raises(ValueError, match="'rms' is already registered"):
    rsjax.register_score("rms", scores.l1)
  assert rsjax.pruning_scores()["rms"] is scores.rms
  kernel, _, _, plan = _taylor_case()

  def masks(score):
    return pruning.prune_masks({"w": kernel}, pruning.full_masks(plan), plan,
                               1.0, score=score)

  def flat(blocks):
    return blocks.cells.reshape(-1)

  def number(blocks):
    del blocks
    return 1.0
  with pytest.raises(ValueError, match=r"'flat' returned shape \(2,\); the "
                     r"layer's blocks need \(1, 2\)"):
    masks(flat)
  with pytest.raises(TypeError, match="'number' must return a real"):
    masks(number)


def _saliency(blocks):
  """Summed per-weight saliency ``sum |g * w|`` (jaxpruner's, per block)."""
  return jnp.sum(jnp.abs(blocks.require_grad("saliency") * blocks.weight),
                 axis=(2, 3))


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("how", ["registered", "callable"])
def test_custom_score_end_to_end(how, jit):
  rsjax.register_score("test_saliency", _saliency, overwrite=True)
  w0 = jax.random.normal(jax.random.key(3), (6, 8))
  c = jax.random.normal(jax.random.key(4), (6, 8))
  params = {"dense": {"kernel": w0, "bias": jnp.zeros((8,))}}
  rules = [rules_lib.Rule("dense", sparsity=0.5)]
  score = "test_saliency" if how == "registered" else _saliency
  tx = rsjax.ou_pruning(optax.sgd(0.1), rules, BLOCK, rsjax.PruneSchedule(
      begin=2, end=2, score=score))
  state = tx.init(params)

  def step(params, state):
    # A linear loss: the gradient is c at every step.
    grads = jax.grad(lambda p: jnp.sum(p["dense"]["kernel"] * c))(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  step = jax.jit(step) if jit else step
  for _ in range(3):
    params, state = step(params, state)
  # Chosen at step 2 from the params after its update, w0 - 0.2 c.
  w2 = np.asarray(w0, np.float64) - 0.2 * np.asarray(c, np.float64)
  saliency = np.array([[np.sum(np.abs(gb * wb)) for gb, wb in zip(gr, wr)]
                       for gr, wr in zip(_blocks_np(c, BLOCK),
                                         _blocks_np(w2, BLOCK))])
  keep = saliency > np.sort(saliency.ravel())[5]  # 12 blocks, 6 pruned
  mask = np.asarray(state.layers["dense/kernel"].mask)
  np.testing.assert_array_equal(mask, keep)
  zero = np.asarray(jnp.all(blockops.kernel_to_ous(
      params["dense"]["kernel"], state.layers["dense/kernel"].plan) == 0,
                            axis=(2, 3)))
  np.testing.assert_array_equal(zero, ~keep)


def test_the_docs_example_prunes_by_its_score(monkeypatch):
  text = (pathlib.Path(__file__).resolve().parent.parent / "docs"
          / "training.md").read_text()
  section = text[text.index("### Pruning scores"):]
  section = section[:section.index("\n## ")]
  (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
  monkeypatch.setattr(scores, "_SCORES", dict(scores.pruning_scores()))
  scope = {"jnp": jnp, "optax": optax, "rsjax": rsjax}
  exec(compile(code, "docs/training.md scores", "exec"), scope)  # pylint: disable=exec-used
  assert rsjax.pruning_scores()["saliency"] is scope["saliency"]
  tx = scope["tx"]
  params = {"Dense_0": {"kernel": jax.random.normal(jax.random.key(5),
                                                    (27, 16))}}
  x = jax.random.normal(jax.random.key(6), (4, 27))
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.grad(lambda p: jnp.sum(jnp.tanh(x @ p["Dense_0"]["kernel"])))(
        params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  for _ in range(100):
    params, state = step(params, state)
  assert int((~state.layers["Dense_0/kernel"].mask).sum()) == 3  # of 6
