"""BatchNorm folding against NumPy and against Flax's own BatchNorm."""

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rsjax


def _stats(rng, n):
  return dict(mean=rng.normal(size=n).astype(np.float32),
              var=rng.uniform(0.1, 2.0, n).astype(np.float32),
              scale=rng.normal(size=n).astype(np.float32),
              offset=rng.normal(size=n).astype(np.float32))


def _numpy_fold(kernel, bias, mean, var, scale, offset, epsilon):
  s = np.float64(scale) / np.sqrt(np.float64(var) + epsilon)
  b = np.zeros(kernel.shape[-1]) if bias is None else np.float64(bias)
  return np.float64(kernel) * s, (b - mean) * s + offset


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("shape", [(7, 5), (3, 3, 2, 5)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_against_numpy(jit, shape, with_bias):
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=shape).astype(np.float32)
  bias = rng.normal(size=shape[-1]).astype(np.float32) if with_bias else None
  stats = _stats(rng, shape[-1])
  fn = lambda k, b, st: rsjax.fold_batchnorm(k, b, epsilon=1e-3, **st)
  got_kernel, got_bias = (jax.jit(fn) if jit else fn)(kernel, bias, stats)
  want_kernel, want_bias = _numpy_fold(kernel, bias, epsilon=1e-3, **stats)
  assert got_kernel.shape == shape and got_bias.shape == (shape[-1],)
  np.testing.assert_allclose(got_kernel, want_kernel, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got_bias, want_bias, rtol=1e-5, atol=1e-6)


def test_scalar_statistics_and_no_affine():
  # A BatchNorm without scale and offset, and scalar statistics.
  kernel = np.arange(6, dtype=np.float32).reshape(2, 3)
  got_kernel, got_bias = rsjax.fold_batchnorm(kernel, mean=1.0, var=3.0,
                                              epsilon=1.0)
  np.testing.assert_allclose(got_kernel, kernel / 2.0)
  np.testing.assert_allclose(got_bias, np.full(3, -0.5))


@pytest.mark.parametrize("use_bias", [False, True])
def test_folded_dense_equals_flax_dense_then_batchnorm(use_bias):
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.Dense(4, use_bias=use_bias)(x)
      return nn.BatchNorm(use_running_average=True, epsilon=1e-4)(x)

  x = jax.random.normal(jax.random.key(0), (8, 6))
  variables = Net().init(jax.random.key(1), x)
  rng = np.random.default_rng(2)
  params = jax.tree.map(lambda a: a + rng.normal(size=a.shape).astype(
      np.float32), variables["params"])
  batch_stats = {"BatchNorm_0": {
      "mean": rng.normal(size=4).astype(np.float32),
      "var": rng.uniform(0.5, 2.0, 4).astype(np.float32)}}
  want = Net().apply({"params": params, "batch_stats": batch_stats}, x)
  dense, bn = params["Dense_0"], params["BatchNorm_0"]
  kernel, bias = rsjax.fold_batchnorm(
      dense["kernel"], dense.get("bias"), scale=bn["scale"],
      offset=bn["bias"], epsilon=1e-4, **batch_stats["BatchNorm_0"])
  got = jnp.dot(x, kernel, precision="highest") + bias[None]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(kernel=np.float32(1.0)), "kernel"),
    (dict(bias=np.zeros(3)), "bias"),
    (dict(mean=np.zeros(3)), "mean"),
    (dict(var=np.ones((4, 1))), "var"),
    (dict(scale=np.ones(2)), "scale"),
    (dict(offset=np.ones(5)), "offset"),
    (dict(epsilon=-1e-5), "epsilon"),
    (dict(epsilon="1e-5"), "epsilon"),
])
def test_bad_arguments(kwargs, match):
  args = dict(kernel=np.ones((2, 4)), bias=None, mean=np.zeros(4),
              var=np.ones(4), epsilon=1e-5)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    rsjax.fold_batchnorm(args.pop("kernel"), args.pop("bias"), **args)
