"""The centroid fine-tune: summed or averaged member gradients, NNX."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rsjax._src import blockops
from rsjax._src import finalize
from rsjax._src import finetune
from rsjax._src import rules as rules_lib
from rsjax._src import sharing

# The paper's worked example (docs/compression.md) at 2x2 blocks, Z already shared.
CODEBOOK = np.array([[[[1, 5], [2, 4]], [[1, 1], [8, 7]]],
                     [[[7, 2], [1, 4]], [[2, 9], [5, 3]]]], np.float32)
INDEX = np.array([[0, 1, 0, 0], [0, 0, 1, 1]], np.int32)
BLOCK = (2, 2)
PLAN = rules_lib.LayerPlan("z", (4, 8), BLOCK, 2, 0.0, "z")


def _kernel():
  return blockops.shared_kernel(jnp.asarray(CODEBOOK), jnp.asarray(INDEX),
                                PLAN)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_centroid_step(reduce, jit):
  params = {"z": _kernel(), "b": jnp.ones(3)}
  tx = finetune.centroid_finetune(optax.sgd(0.1), [rules_lib.Rule("z", k=2)],
                                  BLOCK, reduce=reduce)
  state = tx.init(params)
  np.testing.assert_array_equal(state.layers["z"].index, INDEX)
  grads = {"z": jnp.ones((4, 8)), "b": jnp.ones(3)}
  update = jax.jit(tx.update) if jit else tx.update
  updates, state = update(grads, state, params)
  members = np.array([[3, 1], [2, 2]], np.float32)
  step = 0.1 * (members if reduce == "sum" else np.ones_like(members))
  np.testing.assert_allclose(state.layers["z"].codebook,
                             CODEBOOK - step[:, :, None, None], rtol=1e-6)
  np.testing.assert_array_equal(state.layers["z"].index, INDEX)
  np.testing.assert_allclose(updates["b"], -0.1 * np.ones(3), rtol=1e-6)
  z = sharing.training_params(optax.apply_updates(params, updates), state)
  np.testing.assert_array_equal(z["z"], blockops.shared_kernel(
      state.layers["z"].codebook, state.layers["z"].index, PLAN))


def test_bad_reduce():
  with pytest.raises(ValueError, match="reduce"):
    finetune.centroid_finetune(optax.sgd(0.1), [rules_lib.Rule("z", k=2)],
                               BLOCK, reduce="max")


def test_nnx_optimizer_finetune_then_export():
  """The wrappers inside ``nnx.Optimizer``: its state holds ours."""

  class Net(nnx.Module):

    def __init__(self):
      self.z = nnx.Linear(4, 8, rngs=nnx.Rngs(0))

    def __call__(self, x):
      return self.z(x)

  model = Net()
  model.z.kernel[...] = _kernel()
  rules = [rules_lib.Rule("z/kernel", k=2)]
  opt = nnx.Optimizer(model, finetune.centroid_finetune(optax.sgd(0.1), rules,
                                                       BLOCK), wrt=nnx.Param)
  x = jnp.arange(8.0).reshape(2, 4)

  @nnx.jit
  def step(model, opt):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    state = nnx.as_pure(opt.opt_state)

    def loss(p):
      y = nnx.merge(graphdef, sharing.training_params(p, state), rest)(x)
      return jnp.mean(y ** 2)

    opt.update(model, jax.grad(loss)(params))

  for _ in range(2):
    step(model, opt)
  state = nnx.as_pure(opt.opt_state)
  params = nnx.state(model, nnx.Param)
  comp = finalize.to_compressed(params, state)
  np.testing.assert_array_equal(comp["z/kernel"].index, INDEX)
  trained = sharing.training_params(params, state)
  np.testing.assert_array_equal(comp["z/kernel"].to_kernel(),
                                trained["z"]["kernel"])
  assert not np.array_equal(comp["z/kernel"].codebook, CODEBOOK)


def _shared_params(seed):
  """A random model already shared: conv (3, 3, 4, 16) and dense (72, 10)
  at k = 3 on 9 x 2 blocks, some blocks pruned (zero)."""
  rng = np.random.default_rng(seed)
  params = {}
  for name, shape in (("conv", (3, 3, 4, 16)), ("dense", (72, 10))):
    plan = rules_lib.LayerPlan(name, shape, (9, 2), 3, 0.0, name)
    rows, groups = plan.grid
    codebook = rng.normal(size=(rows, 3, 9, 2)).astype(np.float32)
    # Mixed magnitudes make p + (z - p) round away from z.
    codebook *= 10.0 ** rng.integers(-4, 2, codebook.shape)
    index = rng.integers(-1, 3, (rows, groups)).astype(np.int32)
    params[name] = {"kernel": blockops.shared_kernel(
        jnp.asarray(codebook), jnp.asarray(index), plan),
                    "bias": jnp.zeros(shape[-1])}
  return params


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("opt", ["nesterov", "sgd"])
def test_params_land_exactly_on_the_centroids(opt, jit):
  params = _shared_params(0)
  inner = optax.sgd(0.7, momentum=0.9, nesterov=opt == "nesterov")
  tx = finetune.centroid_finetune(inner, [rules_lib.Rule("kernel", k=3)],
                                  (9, 2))
  state = tx.init(params)
  update = jax.jit(tx.update) if jit else tx.update
  rng = np.random.default_rng(1)
  for _ in range(4):
    grads = jax.tree.map(
        lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    layers = finalize.to_compressed(params, state)
    for name in ("conv", "dense"):
      kernel = np.asarray(params[name]["kernel"])
      np.testing.assert_array_equal(
          kernel, np.asarray(layers[f"{name}/kernel"].to_kernel()))
      np.testing.assert_array_equal(
          kernel, sharing.training_params(params, state)[name]["kernel"])
  # The centroids did move.
  assert not np.array_equal(params["dense"]["kernel"],
                            _shared_params(0)["dense"]["kernel"])
