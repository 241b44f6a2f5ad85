"""Every training entry point refuses trees and values its state cannot use."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rsjax

HW = (9, 2)
RULES = [rsjax.Rule("Dense_0/kernel", k=2, sparsity=0.25),
         rsjax.Rule("Dense_1/kernel", sparsity=0.5)]


def _params(dtype=jnp.float32):
  k0, k1 = jax.random.split(jax.random.key(0))
  return {"Dense_0": {"kernel": jax.random.normal(k0, (18, 4)).astype(dtype),
                      "bias": jnp.zeros((4,), dtype)},
          "Dense_1": {"kernel": jax.random.normal(k1, (18, 4)).astype(dtype)}}


@functools.cache
def _state():
  """A concrete state, from the fine-tune (no k-means to compile): with
  G = 2 column groups and k = 2 any kernel is already shared."""
  params = _params()
  return params, rsjax.centroid_finetune(optax.sgd(0.1), RULES,
                                         HW).init(params)


def _abstract_state(tx, params):
  # The checks are static: an abstract state reaches them without compiling
  # the k-means of init and update.
  return jax.eval_shape(tx.init, params)


def _wrong_trees(params):
  """(tree, message regex) pairs that the state must refuse."""
  reshaped = jax.tree.map(lambda x: x, params)
  reshaped["Dense_1"]["kernel"] = jnp.ones((27, 4))
  return [
      ({"params": params}, r"lack 2 of the 2 .*did you pass \{'params': "
       r"params\} where the optimizer was initialised on params"),
      (params["Dense_0"], r"lack 2 .*\['Dense_0/kernel', 'Dense_1/kernel'\]"),
      ({"w": jnp.ones((3, 3))}, r"lack 2 .*does not know: \['w'\]"),
      (reshaped, r"Dense_1/kernel: \(27, 4\) instead of \(18, 4\)"),
  ]


def _maybe_jit(fn, jit):
  return jax.jit(fn) if jit else fn


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("entry", ["training_params", "project",
                                   "distance_loss", "recluster",
                                   "to_compressed"])
def test_entry_points_check_paths_and_shapes(entry, jit):
  params, state = _state()
  fn = {
      "training_params": rsjax.training_params,
      "project": rsjax.project,
      "distance_loss": rsjax.distance_loss,
      "recluster": lambda p, s: rsjax.recluster(p, s, jax.random.key(2)),
      "to_compressed": rsjax.to_compressed,
  }[entry]
  if entry == "to_compressed" and jit:
    pytest.skip("to_compressed reads concrete values")
  fn = _maybe_jit(fn, jit)
  for tree, message in _wrong_trees(params):
    with pytest.raises(ValueError, match=message):
      fn(tree, state)
  if entry != "recluster":  # (it would compile k-means)
    fn(params, state)  # the right tree passes


def _wrapper(kind):
  if kind == "ste":
    return rsjax.ste_sharing(optax.sgd(0.1), RULES, HW, key=jax.random.key(1))
  if kind == "distance":
    return rsjax.distance_sharing(optax.sgd(0.1), RULES, HW,
                                  key=jax.random.key(1))
  if kind == "finetune":
    return rsjax.centroid_finetune(optax.sgd(0.1), RULES, HW)
  return rsjax.ou_pruning(optax.sgd(0.1), RULES, HW)


def _ready_params(kind):
  """Params the wrapper's init accepts (the fine-tune's: shared, as any
  kernel of these shapes is)."""
  del kind
  return _params()


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("kind", ["ste", "distance", "finetune", "pruning"])
def test_wrappers_check_update(kind, jit):
  tx = _wrapper(kind)
  params = _params()
  state = _abstract_state(tx, params)
  update = _maybe_jit(tx.update, jit)
  for tree, message in _wrong_trees(params):
    with pytest.raises(ValueError, match=message):
      update(tree, state, tree)


@pytest.mark.parametrize("kind", ["ste", "distance", "finetune", "pruning"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_init_refuses_non_finite_weights_naming_the_path(kind, bad):
  params = _ready_params(kind)
  params["Dense_1"]["kernel"] = params["Dense_1"]["kernel"].at[3, 1].set(bad)
  with pytest.raises(ValueError, match="init: Dense_1/kernel has NaN or inf"):
    _wrapper(kind).init(params)


def test_non_finite_under_jit_is_not_seen():
  # Documented: values under a caller's jit are unknown; only concrete
  # params are checked.
  params = _params()
  params["Dense_1"]["kernel"] = params["Dense_1"]["kernel"].at[0, 0].set(
      np.nan)
  jax.jit(_wrapper("pruning").init)(params)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("kind", ["ste", "distance", "finetune", "pruning"])
def test_init_refuses_integer_kernels(kind, jit):
  # Integer params once built an integer codebook that zeroed most weights.
  params = jax.tree.map(lambda x: jnp.round(4 * x).astype(jnp.int32),
                        _params())
  init = _maybe_jit(_wrapper(kind).init, jit)
  with pytest.raises(TypeError, match="init: Dense_0/kernel has dtype int32"):
    init(params)


def test_to_compressed_refuses_bad_values():
  params, state = _state()
  nan = jax.tree.map(lambda x: x, params)
  nan["Dense_0"]["kernel"] = nan["Dense_0"]["kernel"].at[0, 0].set(np.nan)
  with pytest.raises(ValueError, match="to_compressed: Dense_0/kernel"):
    rsjax.to_compressed(nan, state)
  with pytest.raises(ValueError, match="to_compressed: Dense_0/kernel"):
    rsjax.to_compressed(nan, rules=RULES, hw=HW)
  ints = jax.tree.map(lambda x: x, params)
  ints["Dense_1"]["kernel"] = ints["Dense_1"]["kernel"].astype(jnp.int32)
  with pytest.raises(TypeError, match="Dense_1/kernel has dtype int32"):
    rsjax.to_compressed(ints, state)
  with pytest.raises(TypeError, match="Dense_1/kernel has dtype int32"):
    rsjax.to_compressed(ints, rules=RULES, hw=HW)
  layer = state.layers["Dense_0/kernel"]
  diverged = state._replace(layers={
      **state.layers,
      "Dense_0/kernel": layer.replace(codebook=layer.codebook * np.inf)})
  with pytest.raises(ValueError, match="Dense_0/kernel has NaN or inf "
                     "centroids"):
    rsjax.to_compressed(params, diverged)


def test_prefix_hint_the_other_way():
  tx = rsjax.ou_pruning(optax.sgd(0.1), RULES, HW)
  params = _params()
  state = tx.init({"params": params})
  with pytest.raises(ValueError, match=r"did you pass params where the "
                     r"optimizer was initialised on \{'params': params\}"):
    rsjax.training_params(params, state)
