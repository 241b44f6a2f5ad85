"""The old experiments compressed_model.npz: refused by rsjax, converted."""

import json

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from experiments import convert_legacy
import rsjax

HW = rsjax.HardwareSpec(adc_bits=4)  # another spec than the default


def write_legacy(path, params, layers, hw):
  """The format of the old ``compression_stages.export_compressed``.

  Copied here as a fixture: the old writer is gone from experiments/, the
  files it wrote are not.
  """
  arrays = {}
  for p, layer in layers.items():
    arrays[f"{p}::codebook"] = np.asarray(layer.codebook)
    arrays[f"{p}::index"] = np.asarray(layer.index)
    arrays[f"{p}::kernel_shape"] = np.asarray(layer.kernel_shape, np.int64)
  for p, x in rsjax.named_leaves(params):
    if p not in layers:
      arrays[p] = np.asarray(x)
  arrays["::hardware"] = np.asarray(json.dumps(hw.to_dict()))
  np.savez(path, **arrays)


def legacy_model():
  rng = np.random.default_rng(0)
  conv = rng.normal(size=(3, 3, 2, 4)).astype(np.float32)
  dense = rng.normal(size=(10, 3)).astype(np.float32)
  layers = {}
  for path, kernel, k in (("params/conv1/kernel", conv, 2),
                          ("params/head/kernel", dense, 1)):
    ous = rsjax.to_ous(rsjax.to_crossbar_matrix(kernel), HW.block_shape)
    index = rng.integers(-1, k, ous.shape[:2]).astype(np.int32)
    layers[path] = rsjax.CompressedLayer(jnp.asarray(ous[:, :k]),
                                         jnp.asarray(index), kernel.shape)
  params = {
      "params": {"conv1": {"kernel": conv, "bias": np.float32([1, -0.0, 2, 3])},
                 "head": {"kernel": dense,
                          "bias": np.zeros(3, ml_dtypes.bfloat16)}},
      "batch_stats": {"bn": {"mean": rng.normal(size=4).astype(np.float32)}},
  }
  return params, layers


def test_rsjax_refuses_and_converter_converts(tmp_path):
  params, layers = legacy_model()
  old, new = tmp_path / "compressed_model.npz", tmp_path / "model.rsjax.npz"
  write_legacy(old, params, layers, HW)
  with pytest.raises(ValueError, match=r"experiments compressed_model.npz .*"
                     r"python -m experiments.convert_legacy OLD.npz NEW.npz"):
    rsjax.load_compressed(old)

  convert_legacy._main(["convert_legacy", str(old), str(new)])
  loaded = rsjax.load_compressed(new, hw=HW)
  assert loaded.metadata == {"converted_from": "compressed_model.npz"}
  assert list(loaded.layers) == list(layers)
  for path, layer in layers.items():
    got = loaded.layers[path]
    assert got.kernel_shape == layer.kernel_shape
    np.testing.assert_array_equal(got.codebook, layer.codebook)
    np.testing.assert_array_equal(got.index, layer.index)
  got = dict(rsjax.named_leaves(loaded.params))
  want = dict(rsjax.named_leaves(params))
  assert sorted(got) == sorted(want)
  for path, leaf in want.items():
    expected = (np.asarray(layers[path].to_kernel()) if path in layers
                else np.asarray(leaf))
    assert got[path].dtype == expected.dtype, path
    assert got[path].tobytes() == expected.tobytes(), path


def test_convert_takes_metadata_and_refuses_other_files(tmp_path):
  params, layers = legacy_model()
  write_legacy(tmp_path / "old.npz", params, layers, HW)
  convert_legacy.convert(tmp_path / "old.npz", tmp_path / "new.npz",
                         metadata={"model": "lenet5"})
  assert rsjax.load_compressed(tmp_path / "new.npz").metadata == {
      "converted_from": "old.npz", "model": "lenet5"}
  rsjax.save_compressed(tmp_path / "rsjax.npz", layers, HW)
  with pytest.raises(ValueError, match="rsjax.npz is not a readable "
                     "experiments compressed_model.npz"):
    convert_legacy.convert(tmp_path / "rsjax.npz", tmp_path / "x.npz")
  with pytest.raises(SystemExit, match="usage"):
    convert_legacy._main(["convert_legacy", "only-one.npz"])
