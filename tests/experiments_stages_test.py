"""Tests for the adapter experiments/compression_stages.py."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
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


@pytest.mark.parametrize("method", ["paper", "ste"])
def test_sharing_keeps_the_pruned_blocks_and_k(method):
  kernels = stages.prune(_kernels(), HW, 0.3)
  params = {p[len("params/"):]: k for p, k in kernels.items()}
  params = {"a": {"kernel": params["a/kernel"]},
            "b": {"kernel": params["b/kernel"]}}
  rules = stages.sharing_rules(["a/kernel", "b/kernel"], 2, 0.3)
  tx = stages.sharing_transform(method, optax.sgd(0.1), rules, HW,
                                key=jax.random.key(0), recluster_every=5,
                                lam=1e-3, n_init=1)
  opt_state = tx.init(params)
  shared, opt_state = stages.finish_sharing(method, params, opt_state,
                                            key=jax.random.key(1), n_init=1)
  layers = rsjax.to_compressed(shared, opt_state)
  for p, path in (("a/kernel", "params/a/kernel"),
                  ("b/kernel", "params/b/kernel")):
    ous = np.asarray(rsjax.to_ous(rsjax.to_crossbar_matrix(kernels[path]),
                                  HW.block_shape))
    pruned = ~ous.any(axis=(2, 3))
    # The wrapper's masks are exactly the prune stage's zero blocks.
    np.testing.assert_array_equal(np.asarray(layers[p].index) == -1, pruned)
    assert layers[p].stored_per_row_block().max() <= 2
    np.testing.assert_array_equal(layers[p].to_kernel(),
                                  shared[p.split("/")[0]]["kernel"])
  with pytest.raises(ValueError, match="share method"):
    stages.sharing_transform("greedy", optax.sgd(0.1), rules, HW,
                             key=jax.random.key(0), recluster_every=5,
                             lam=1e-3, n_init=1)


def test_layer_k_overrides_k_per_layer():
  kernels = stages.prune(_kernels(), HW, 0.3)
  params = {"a": {"kernel": kernels["params/a/kernel"]},
            "b": {"kernel": kernels["params/b/kernel"]}}
  # 'b' (5 column groups) at k = 1024: unshared, every kept block stored.
  rules = stages.sharing_rules(["a/kernel", "b/kernel"], 1, 0.3,
                               layer_k=" b/=1024 , a=2")
  assert [(r.k, r.sparsity) for r in rules] == [(2, 0.3), (1024, 0.3)]
  tx = stages.sharing_transform("ste", optax.sgd(0.1), rules, HW,
                                key=jax.random.key(0), recluster_every=5,
                                lam=1e-3, n_init=1)
  opt_state = tx.init(params)
  shared, opt_state = stages.finish_sharing("ste", params, opt_state,
                                            key=jax.random.key(1), n_init=1)
  layers = rsjax.to_compressed(shared, opt_state)
  assert layers["a/kernel"].stored_per_row_block().max() <= 2
  np.testing.assert_array_equal(layers["b/kernel"].to_kernel(),
                                kernels["params/b/kernel"])
  # First match wins: 'kernel' takes both layers, 'a' is never reached.
  with pytest.raises(ValueError, match=r"\['a'\] match no crossbar layer"):
    stages.sharing_rules(["a/kernel", "b/kernel"], 4, 0.0, "kernel=2,a=3")


@pytest.mark.parametrize("spec, problem", [
    ("conv1", "is not REGEX=K"), ("=4", "is not REGEX=K"),
    ("conv(=4", "bad regex"), ("conv1=0", "integer >= 1"),
    ("conv1=two", "integer >= 1"), ("conv1=2.5", "integer >= 1")])
def test_layer_k_rejects_bad_entries(spec, problem):
  with pytest.raises(ValueError, match=re.escape(problem)):
    stages.parse_layer_k(spec)


def test_parse_layer_k():
  assert stages.parse_layer_k("") == []
  assert stages.parse_layer_k("conv1=64, head=1024,") == [("conv1", 64),
                                                         ("head", 1024)]
  # The last '=' splits, so a regex may hold '=' (lookbehind).
  assert stages.parse_layer_k("(?<=x)a=3") == [("(?<=x)a", 3)]
  assert stages.parse_layer_k(" conv1 = 4 ") == [("conv1", 4)]


def test_layer_k_entry_that_never_applies_is_an_error():
  # The second 'b' entry can never win: an error, not a silent no-op.
  with pytest.raises(ValueError, match=r"\['b'\] match no crossbar layer"):
    stages.sharing_rules(["a/kernel", "b/kernel"], 4, 0.0, "b=2,b=3")


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
  layers = {p: rsjax.compress_kernel(k, HW, 2, key=jax.random.key(1))
            for p, k in pruned.items()}
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
