"""Per-layer OU block operations, on the paper's worked example (docs/compression.md)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsjax._src import blockops
from rsjax._src import rules as rules_lib

W = np.array([[1, 4, 1, 1, 1, 6, 1, 5],
              [3, 6, 8, 7, 2, 4, 1, 2],
              [8, 1, 6, 3, 1, 9, 3, 9],
              [1, 2, 1, 6, 4, 1, 6, 5]], np.float32)
# Row-block 0: groups 0,2,3 -> [[1,5],[2,4]], group 1 -> [[1,1],[8,7]].
# Row-block 1: groups 0,1 -> [[7,2],[1,4]], groups 2,3 -> [[2,9],[5,3]].
INDEX = np.array([[0, 1, 0, 0], [0, 0, 1, 1]], np.int32)
CODEBOOK = np.array([[[[1, 5], [2, 4]], [[1, 1], [8, 7]]],
                     [[[7, 2], [1, 4]], [[2, 9], [5, 3]]]], np.float32)


def _plan(k=2, shape=(4, 8), block=(2, 2), sparsity=0.0):
  return rules_lib.LayerPlan("w", shape, block, k, sparsity, "w")


@pytest.mark.parametrize("jit", [False, True])
def test_worked_example_recluster(jit):
  fn = lambda w, m: blockops.recluster(w, m, jax.random.key(0), _plan(),
                                       n_init=8, max_iter=50)
  fn = jax.jit(fn) if jit else fn
  codebook, index = fn(jnp.asarray(W), jnp.ones((2, 4), bool))
  np.testing.assert_array_equal(index, INDEX)
  np.testing.assert_allclose(codebook, CODEBOOK, rtol=1e-6)


def test_centroid_means_and_shared_kernel():
  codebook = blockops.centroid_means(jnp.asarray(W), jnp.asarray(INDEX),
                                     _plan())
  np.testing.assert_allclose(codebook, CODEBOOK, rtol=1e-6)
  z = blockops.shared_kernel(jnp.asarray(CODEBOOK), jnp.asarray(INDEX),
                             _plan())
  x = np.arange(1, 5, dtype=np.float32)
  # Index-and-add: each stored block once per row-block, routed by the index.
  y = np.zeros(8, np.float32)
  for r in range(2):
    for g in range(4):
      y[2 * g:2 * g + 2] += x[2 * r:2 * r + 2] @ CODEBOOK[r, INDEX[r, g]]
  np.testing.assert_allclose(x @ np.asarray(z), y, rtol=1e-6)


def test_exact_codebook_roundtrip_and_pruned():
  z = blockops.shared_kernel(jnp.asarray(CODEBOOK), jnp.asarray(INDEX),
                             _plan())
  z = z.at[2:4, 6:8].set(0.0)  # prune block (1, 3)
  codebook, index, unique = blockops.exact_codebook(z, _plan(), 2)
  np.testing.assert_array_equal(unique, [2, 2])
  np.testing.assert_array_equal(index, [[0, 1, 0, 0], [0, 0, 1, -1]])
  np.testing.assert_array_equal(blockops.shared_kernel(codebook, index,
                                                       _plan()), z)
  _, _, unique = blockops.exact_codebook(jnp.asarray(W), _plan())
  np.testing.assert_array_equal(unique, [4, 4])


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_reduce_to_centroids(reduce):
  g = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
  out = blockops.reduce_to_centroids(jnp.asarray(g), jnp.asarray(INDEX),
                                     _plan(), reduce)
  blocks = g.reshape(2, 2, 4, 2).transpose(0, 2, 1, 3)
  want = np.zeros((2, 2, 2, 2), np.float32)
  for r in range(2):
    for c in range(2):
      members = blocks[r][INDEX[r] == c]
      want[r, c] = members.sum(0) if reduce == "sum" else members.mean(0)
  np.testing.assert_allclose(out, want, rtol=1e-6)
  if reduce == "sum":
    # The exact gradient of a loss through Z = decompress(codebook, index).
    loss = lambda cb: jnp.sum(jnp.asarray(g) * blockops.shared_kernel(
        cb, jnp.asarray(INDEX), _plan()))
    np.testing.assert_allclose(jax.grad(loss)(jnp.asarray(CODEBOOK)), out,
                               rtol=1e-6)


def test_mask_and_rms_with_padding():
  plan = _plan(shape=(3, 3, 1, 3), block=(2, 2))  # matrix 9x3: padded edges
  kernel = jnp.arange(1.0, 28.0).reshape(3, 3, 1, 3)
  mask = jnp.array([[True, False]] * 5)
  masked = blockops.apply_mask(kernel, mask, plan)
  m = np.asarray(masked).reshape(9, 3)
  assert np.all(m[:, 2] == 0) and np.all(m[:, :2] == np.asarray(
      kernel).reshape(9, 3)[:, :2])
  rms = blockops.block_rms(kernel, plan)
  assert rms.shape == (5, 2)
  np.testing.assert_allclose(rms[4, 1], 27.0, rtol=1e-6)  # 1 real cell


def test_compact_drops_emptied_entries():
  index = jnp.array([[1, 1, -1, 1]], jnp.int32)
  codebook = jnp.arange(8.0).reshape(1, 2, 2, 2)
  cb, idx = blockops.compact(codebook, index)
  np.testing.assert_array_equal(idx, [[0, 0, -1, 0]])
  np.testing.assert_array_equal(cb[0, 0], codebook[0, 1])
  np.testing.assert_array_equal(cb[0, 1], np.zeros((2, 2)))


@pytest.mark.parametrize("codebook_scope", ["row_block", "layer"])
def test_recluster_many_batches_layers(codebook_scope):
  plans = {"a": rules_lib.LayerPlan("a", (18, 8), (9, 2), 2, 0.5, "a"),
           "b": rules_lib.LayerPlan("b", (3, 3, 1, 12), (9, 2), 2, 0.0, "b")}
  kernels = {"a": jax.random.normal(jax.random.key(0), (18, 8)),
             "b": jax.random.normal(jax.random.key(1), (3, 3, 1, 12))}
  masks = {"a": jnp.array([[True, False, True, True], [False] * 4]),
           "b": jnp.ones((1, 6), bool)}
  out = jax.jit(lambda k, m: blockops.recluster_many(
      k, m, plans, jax.random.key(2), n_init=2, max_iter=20,
      codebook_scope=codebook_scope))(kernels, masks)
  for p, (codebook, index) in out.items():
    num_rows, num_groups = plans[p].grid
    assert codebook.shape == (num_rows, 2, 9, 2)
    assert index.shape == (num_rows, num_groups)
    np.testing.assert_array_equal(np.asarray(index) >= 0, masks[p])
    z = blockops.shared_kernel(codebook, index, plans[p])
    _, _, unique = blockops.exact_codebook(z, plans[p])
    assert int(unique.max()) <= 2
