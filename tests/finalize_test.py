"""to_compressed: from a training state or from projected params."""

from flax import nnx
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rsjax
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


def _params():
  plan = rules_lib.LayerPlan("z", (4, 8), BLOCK, 2, 0.0, "z")
  z = blockops.shared_kernel(jnp.asarray(CODEBOOK), jnp.asarray(INDEX), plan)
  v = jnp.arange(1.0, 17.0).reshape(4, 4).at[0:2, 2:4].set(0.0)
  return {"z": {"kernel": z}, "v": {"kernel": v, "bias": jnp.ones(4)}}


RULES = [rules_lib.Rule("z/", k=2), rules_lib.Rule("v/", sparsity=0.25)]


def test_from_params_reads_exact_blocks():
  params = _params()
  comp = finalize.to_compressed(params, rules=RULES, hw=BLOCK)
  assert list(comp) == ["v/kernel", "z/kernel"]
  z = comp["z/kernel"]
  assert isinstance(z, rsjax.CompressedLayer) and z.kernel_shape == (4, 8)
  np.testing.assert_array_equal(z.index, INDEX)
  np.testing.assert_array_equal(z.codebook, CODEBOOK)
  np.testing.assert_array_equal(z.stored_per_row_block(), [2, 2])
  v = comp["v/kernel"]  # pruned only: identity index, pruned block -1
  np.testing.assert_array_equal(v.index, [[0, -1], [0, 1]])
  for p, layer in comp.items():
    np.testing.assert_array_equal(layer.to_kernel(),
                                  params[p.split("/")[0]]["kernel"])


@pytest.mark.parametrize("with_state", [False, True])
def test_dense_fallback_maps_every_kernel(with_state):
  params = _params()
  params["w"] = {"kernel": jnp.arange(24.0).reshape(2, 3, 1, 4),  # a conv
                 "bias": jnp.ones(4)}
  rules = [rules_lib.Rule("z/", k=2)]
  if with_state:
    state = finetune.centroid_finetune(optax.sgd(0.1), rules, BLOCK).init(
        params)
    comp = finalize.to_compressed(params, state, hw=BLOCK,
                                  dense_fallback=True)
  else:
    comp = finalize.to_compressed(params, rules=rules, hw=BLOCK,
                                  dense_fallback=True)
  assert list(comp) == ["v/kernel", "w/kernel", "z/kernel"]
  np.testing.assert_array_equal(comp["z/kernel"].index, INDEX)
  for p in ("v/kernel", "w/kernel"):  # as they are: identity, zero blocks -1
    assert comp[p].is_identity()
  np.testing.assert_array_equal(comp["v/kernel"].index, [[0, -1], [0, 1]])
  for p, layer in comp.items():
    np.testing.assert_array_equal(layer.to_kernel(),
                                  params[p.split("/")[0]]["kernel"])
  # No rules at all: the whole model dense.
  dense = finalize.to_compressed(params, hw=BLOCK, dense_fallback=True)
  assert list(dense) == ["v/kernel", "w/kernel", "z/kernel"]
  assert all(layer.is_identity() for layer in dense.values())
  with pytest.raises(ValueError, match="needs hw"):
    finalize.to_compressed(params, rules=rules, dense_fallback=True)


def test_from_state_matches_training_params():
  params = _params()
  tx = finetune.centroid_finetune(optax.sgd(0.1), RULES, BLOCK)
  state = tx.init(params)
  grads = {"z": {"kernel": jnp.ones((4, 8))},
           "v": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones(4)}}
  updates, state = tx.update(grads, state, params)
  params = optax.apply_updates(params, updates)
  comp = finalize.to_compressed(params, state)
  trained = sharing.training_params(params, state)
  for p, layer in comp.items():
    np.testing.assert_array_equal(layer.to_kernel(),
                                  trained[p.split("/")[0]]["kernel"])
  # Summed member gradients: centroid 0 of row-block 0 has 3 members of
  # ones, so it moves by 0.1 * 3 per weight.
  np.testing.assert_allclose(comp["z/kernel"].codebook[0, 0],
                             CODEBOOK[0, 0] - 0.3, rtol=1e-6)
  np.testing.assert_array_equal(comp["v/kernel"].index, [[0, -1], [0, 1]])


def test_nnx_state_paths():

  class Net(nnx.Module):

    def __init__(self):
      self.z = nnx.Linear(4, 8, rngs=nnx.Rngs(0))

  model = Net()
  model.z.kernel[...] = _params()["z"]["kernel"]
  _, params, _ = nnx.split(model, nnx.Param, ...)
  comp = finalize.to_compressed(params, rules=[rules_lib.Rule("z/kernel",
                                                              k=2)], hw=BLOCK)
  np.testing.assert_array_equal(comp["z/kernel"].index, INDEX)


def test_errors():
  params = _params()
  params["z"]["kernel"] = params["z"]["kernel"].at[0, 0].set(42.0)
  with pytest.raises(ValueError, match="project"):
    finalize.to_compressed(params, rules=RULES, hw=BLOCK)
  with pytest.raises(ValueError, match="project"):
    finetune.centroid_finetune(optax.sgd(0.1), RULES, BLOCK).init(params)
  with pytest.raises(ValueError, match="rules and hw"):
    finalize.to_compressed(params)
  with pytest.raises(ValueError, match="no rsjax training state"):
    finalize.to_compressed(params, optax.sgd(0.1).init(params))
