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


@jax.jit
def _perturb(variables, key):
  k1, k2 = jax.random.split(key)
  # Non-trivial BN statistics and affine parameters, as after training.
  return {
      "batch_stats": jax.tree_util.tree_map(
          lambda a: a + jax.random.uniform(k1, a.shape, minval=0.1,
                                           maxval=0.9),
          variables["batch_stats"]),
      "params": jax.tree_util.tree_map(
          lambda a: a + 0.05 * jax.random.normal(k2, a.shape),
          variables["params"]),
  }


@pytest.mark.parametrize("name,shape", [
    pytest.param("lenet5", (28, 28, 1), marks=pytest.mark.slow),
    ("resnet20", (8, 8, 3)),
])
def test_fold_batchnorm_equal_in_eval_mode(name, shape):
  model = models.create_model(name, num_classes=10)
  variables = _perturb(models.init_variables(model, jax.random.key(0), shape),
                       jax.random.key(1))
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
