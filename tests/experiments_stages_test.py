"""Tests for the adapter experiments/compression_stages.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rsjax

from experiments import compression_stages as stages

HW = rsjax.HardwareSpec()  # 9x2 weight blocks


def _kernels():
  k1, k2 = jax.random.split(jax.random.key(0))
  return {"params/a/kernel": jax.random.normal(k1, (3, 3, 4, 6)),
          "params/b/kernel": jax.random.normal(k2, (20, 10))}


def test_prune_zeroes_smallest_blocks():
  kernels = _kernels()
  pruned = stages.prune(kernels, HW, 0.5)
  for path, kernel in kernels.items():
    ous = rsjax.to_ous(rsjax.to_crossbar_matrix(kernel), HW.block_shape)
    pous = rsjax.to_ous(rsjax.to_crossbar_matrix(pruned[path]),
                        HW.block_shape)
    norms = np.asarray(jnp.sqrt(jnp.sum(ous * ous, axis=(2, 3)))).ravel()
    zero = np.asarray(jnp.all(pous == 0, axis=(2, 3))).ravel()
    assert zero.sum() == int(0.5 * norms.size)
    # Every pruned block is no larger than every kept one.
    assert norms[zero].max() <= norms[~zero].min()
    kept = ~np.asarray(jnp.all(pous == 0, axis=(2, 3)))
    np.testing.assert_array_equal(np.asarray(pous)[kept],
                                  np.asarray(ous)[kept])
  with pytest.raises(ValueError, match="prune ratio"):
    stages.prune(kernels, HW, 1.0)


def test_share_project_and_compress_are_consistent():
  pruned = stages.prune(_kernels(), HW, 0.3)
  layers = stages.share(pruned, HW, 2, key=jax.random.key(1), n_init=2)
  shared = {p: l.to_kernel() for p, l in layers.items()}
  # The shared kernels are a fixed point of the projection...
  projected = stages.project(shared, layers, HW)
  for p in shared:
    np.testing.assert_allclose(projected[p], shared[p], atol=1e-6)
  # ...and a perturbed kernel projects back onto the same structure.
  noisy = {p: k + 0.1 for p, k in shared.items()}
  projected = stages.project(noisy, layers, HW)
  again = stages.to_compressed(projected, layers, HW)
  for p, layer in again.items():
    np.testing.assert_array_equal(layer.index, layers[p].index)
    np.testing.assert_allclose(layer.to_kernel(), projected[p], atol=1e-6)
    zero = np.asarray(layer.index) == -1
    ous = np.asarray(rsjax.to_ous(rsjax.to_crossbar_matrix(projected[p]),
                                  HW.block_shape))
    assert np.all(ous[zero] == 0)  # pruned blocks stay pruned
  # The projection is jit-able (the fine-tune step applies it).
  jitted = jax.jit(lambda k: stages.project(k, layers, HW))(noisy)
  for p in jitted:
    np.testing.assert_allclose(jitted[p], projected[p], atol=1e-6)


def test_quantize_uses_weight_bits():
  kernels = _kernels()
  q = stages.quantize(kernels, HW.replace(weight_bits=4))
  for p, k in kernels.items():
    assert len(np.unique(np.asarray(q[p]))) <= 15
    step = float(jnp.max(jnp.abs(k))) / 7
    np.testing.assert_allclose(q[p], k, atol=step / 2 + 1e-6)


def test_emulation_disabled_returns_none():
  args = (None, None, {}, HW, lambda: [])
  assert stages.emulated_accuracy(*args, enabled=False,
                                  key=jax.random.key(0)) is None


def test_export_roundtrip(tmp_path):
  pruned = stages.prune(_kernels(), HW, 0.3)
  layers = stages.share(pruned, HW, 2, key=jax.random.key(1), n_init=2)
  params = {"params": {"a": {"kernel": layers["params/a/kernel"].to_kernel(),
                             "bias": jnp.arange(6.0)},
                       "b": {"kernel": layers["params/b/kernel"].to_kernel()}}}
  path = str(tmp_path / "m.npz")
  stages.export_compressed(path, params, layers, HW)
  got_params, got_layers, hw = stages.load_compressed(path)
  assert hw == HW
  for p, layer in layers.items():
    np.testing.assert_array_equal(got_layers[p].index, layer.index)
    assert got_layers[p].kernel_shape == layer.kernel_shape
  np.testing.assert_allclose(got_params["params"]["a"]["bias"],
                             jnp.arange(6.0))
  np.testing.assert_allclose(got_params["params"]["b"]["kernel"],
                             params["params"]["b"]["kernel"])
