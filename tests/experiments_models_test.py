"""Tests for experiments/models.py: the registry and BatchNorm folding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import models


@pytest.mark.parametrize("name", sorted(models.MODELS))
@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
def test_every_model_shapes(name, shape):
  model = models.create_model(name, num_classes=7)
  x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
  variables = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False), x)
  out = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False), variables, x)
  assert out.shape == (2, 7)
  assert "batch_stats" in variables
  # The BN-free twin has the same kernels and no BatchNorm.
  free = models.create_model(name, num_classes=7, use_bn=False)
  free_vars = jax.eval_shape(
      lambda x: free.init(jax.random.key(0), x, train=False), x)
  assert "batch_stats" not in free_vars


def test_unknown_model():
  with pytest.raises(ValueError, match="unknown model"):
    models.create_model("alexnet", num_classes=10)


def _trained_like(model, shape, seed=0):
  """Variables of ``model`` as after training: fan-in scaled kernels,
  perturbed BN affine parameters, non-trivial BN statistics.

  Drawn with numpy on the host from the shapes alone: compiling the model's
  init and a per-leaf jax.random program took most of this test's time.
  """
  x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x,
                                               train=False), x)
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    name = str(path[-1].key)
    if path[0].key == "batch_stats":  # init: mean 0, var 1
      base = 1.0 if name == "var" else 0.0
      return base + rng.uniform(0.1, 0.9, s.shape)
    if name == "kernel":
      return rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]))
    base = 1.0 if name == "scale" else 0.0  # init: BN scale 1, biases 0
    return base + 0.05 * rng.normal(size=s.shape)

  return jax.tree_util.tree_map_with_path(
      lambda p, s: jnp.asarray(leaf(p, s), s.dtype), shapes)


@pytest.mark.parametrize("name,shape", [
    pytest.param("lenet5", (28, 28, 1), marks=pytest.mark.slow),
    ("resnet20", (8, 8, 3)),
])
def test_fold_batchnorm_equal_in_eval_mode(name, shape):
  model = models.create_model(name, num_classes=10)
  variables = _trained_like(model, shape)
  x = jax.random.normal(jax.random.key(2), (3, *shape))
  expected = jax.jit(model.apply, static_argnames="train")(
      variables, x, train=False)
  free_model, _ = models.fold_model_batchnorm(model, variables)
  folded = jax.jit(lambda v: models.fold_model_batchnorm(model, v)[1])(variables)
  got = jax.jit(free_model.apply, static_argnames="train")(
      folded, x, train=False)
  scale = float(jnp.max(jnp.abs(expected)))
  np.testing.assert_allclose(got, expected, atol=1e-4 * scale, rtol=1e-4)
  # No BatchNorm left, every crossbar layer has a bias.
  flat = jax.tree_util.tree_flatten_with_path(folded)[0]
  paths = ["/".join(str(k.key) for k in p) for p, _ in flat]
  assert not any("/bn/" in p for p in paths)
  kernels = [p for p in paths if p.endswith("kernel")]
  assert all(p[:-len("kernel")] + "bias" in paths for p in kernels)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mlp", "vgg8", "resnet18"])
def test_fold_batchnorm_more(name):
  test_fold_batchnorm_equal_in_eval_mode(name, (32, 32, 3))
