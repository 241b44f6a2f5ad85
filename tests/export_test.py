"""Exporting a compressed model: bit-exact round trips, clear errors."""

import io
import json
import os
import pathlib
import re

from flax import nnx
import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import rsjax
from rsjax._src import model_file

HW = rsjax.HardwareSpec()
TESTS = pathlib.Path(__file__).resolve().parent
V1_FIXTURE = TESTS / "testdata" / "export_v1.npz"
FORMAT_DOC = TESTS.parent / "docs" / "format.md"
DAMAGED = "damaged|not an rsjax"


def shared_layer(kernel, k, seed):
  """A CompressedLayer of ``kernel``'s shape, built in NumPy (no k-means).

  Its codebook holds ``k`` of the kernel's own blocks per row-block and a
  random index table with pruned (``-1``) entries: save and load do not care
  how the sharing was found.
  """
  kernel = np.asarray(kernel)
  ous = rsjax.to_ous(rsjax.to_crossbar_matrix(kernel), HW.block_shape)
  num_rows, num_groups = ous.shape[:2]
  k = min(k, num_groups)
  index = np.random.default_rng(seed).integers(-1, k, (num_rows, num_groups))
  return rsjax.CompressedLayer(jnp.asarray(ous[:, :k]),
                               jnp.asarray(index.astype(np.int32)),
                               kernel.shape)


@pytest.fixture(scope="module")
def layers():
  # The shapes and dtypes of linen_layers: every test compiles the same ops.
  rng = np.random.default_rng(0)
  conv = rng.normal(size=(3, 3, 2, 4)).astype(np.float32)
  dense = rng.normal(size=(10, 3)).astype(ml_dtypes.bfloat16)
  return {"conv": shared_layer(conv, 2, 0),
          "fc/kernel": shared_layer(dense, 1, 1)}


def linen_variables():
  """A Linen-style tree: kernels, biases, BatchNorm, bfloat16, integers."""
  rng = np.random.default_rng(0)
  conv = rng.normal(size=(3, 3, 2, 4)).astype(np.float32)
  conv[1] = 0  # pruned rows
  odd_bits = np.array([-0.0, np.nan, np.inf, 1e-45], np.float32)
  odd_bits[1:2].view(np.uint32)[0] = 0x7FC01234  # a NaN with a payload
  return {
      "params": {
          "conv1": {"kernel": conv, "bias": odd_bits},
          "bn": {"scale": np.ones(4, np.float32),
                 "bias": rng.normal(size=4).astype(np.float32)},
          "fc": {"kernel": jnp.asarray(rng.normal(size=(10, 3)),
                                       jnp.bfloat16),
                 "bias": jnp.asarray([0.5, -1, 3], jnp.bfloat16)},
      },
      "batch_stats": {"bn": {"mean": rng.normal(size=4).astype(np.float32),
                             "var": np.float64([1, 2, 3, 4])}},
      "counters": {"steps": np.int32(7), "seen": np.arange(3, dtype=np.int8),
                   "flags": np.array([True, False])},
  }


def linen_layers(variables):
  p = variables["params"]
  return {"params/conv1/kernel": shared_layer(p["conv1"]["kernel"], 2, 2),
          "params/fc/kernel": shared_layer(p["fc"]["kernel"], 1, 3)}


def leaves(tree):
  return {rsjax.path_str(kp): x
          for kp, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def bits(x):
  a = np.asarray(x)
  return a.dtype, a.shape, a.tobytes()


def assert_same_model(got, want):
  """Two loaded models are equal bit for bit, field by field."""
  assert (got.hw, got.metadata) == (want.hw, want.metadata)
  assert list(got.layers) == list(want.layers)
  for name, layer in want.layers.items():
    assert got.layers[name].kernel_shape == layer.kernel_shape
    assert bits(got.layers[name].codebook) == bits(layer.codebook)
    assert bits(got.layers[name].index) == bits(layer.index)
    assert [bits(a) for a in got.quantized[name]] == [
        bits(a) for a in want.quantized[name]]
  assert (got.params is None) == (want.params is None)
  if want.params is not None:
    assert jax.tree.structure(got.params) == jax.tree.structure(want.params)
    assert ({p: bits(x) for p, x in leaves(got.params).items()} ==
            {p: bits(x) for p, x in leaves(want.params).items()})


def assert_whole_model(loaded, variables, layers):
  """Kernels equal ``to_kernel()``, every other leaf the saved one's bits."""
  got = leaves(loaded.params)
  want = leaves(variables)
  assert list(got) == list(want)
  for path, leaf in want.items():
    if path in layers:
      expected = np.asarray(layers[path].to_kernel())
    else:
      expected = np.asarray(leaf)
    assert isinstance(got[path], np.ndarray), path
    assert bits(got[path]) == bits(expected), path


def test_round_trip_is_bit_exact(layers, tmp_path):
  path = tmp_path / "model.npz"
  rsjax.save_compressed(path, layers, HW, metadata={"model": "toy"})
  loaded = rsjax.load_compressed(path, hw=HW)
  assert loaded.hw == HW and loaded.metadata == {"model": "toy"}
  assert loaded.params is None
  assert json.loads(np.load(path)["__meta__"].tobytes())["version"] == 2
  assert list(loaded.layers) == list(layers)
  for name, layer in layers.items():
    got = loaded.layers[name]
    assert got.kernel_shape == layer.kernel_shape
    assert got.codebook.dtype == layer.codebook.dtype
    np.testing.assert_array_equal(np.asarray(got.codebook, np.float32),
                                  np.asarray(layer.codebook, np.float32))
    np.testing.assert_array_equal(got.index, layer.index)
    np.testing.assert_array_equal(got.to_kernel(), layer.to_kernel())
    q, scale = loaded.quantized[name]
    ref_q, ref_scale = rsjax.quantize_weights(layer.codebook, HW.weight_bits)
    np.testing.assert_array_equal(q, ref_q)
    np.testing.assert_array_equal(scale, ref_scale)


def test_linen_whole_model_round_trip(tmp_path):
  variables = linen_variables()
  layers = linen_layers(variables)
  path = tmp_path / "model.npz"
  rsjax.save_compressed(path, layers, HW, {"model": "linen"},
                        params=variables)
  loaded = rsjax.load_compressed(path, hw=HW)
  assert_whole_model(loaded, variables, layers)
  assert loaded.params["params"]["fc"]["kernel"].dtype == jnp.bfloat16
  assert loaded.params["counters"]["steps"].shape == ()
  # The kernels are not stored twice: only the 9 other leaves are arrays.
  names = np.load(path).files
  assert sorted(n for n in names if n.startswith("P")) == [
      f"P{j}" for j in range(9)]
  # Also readable from an open binary file.
  with open(path, "rb") as f:
    assert_same_model(rsjax.load_compressed(f), loaded)


def test_nnx_state_round_trip(tmp_path):
  rng = np.random.default_rng(5)

  def init(key, shape, dtype=jnp.float32):
    del key  # NumPy values: jax.random's initializers compile for a while
    return jnp.asarray(rng.normal(size=shape), dtype)

  class Net(nnx.Module):

    def __init__(self, rngs):
      self.conv = nnx.Conv(2, 4, (3, 3), kernel_init=init, bias_init=init,
                           rngs=rngs)
      self.bn = nnx.BatchNorm(4, rngs=rngs)
      self.head = nnx.List([nnx.Linear(10, 3, param_dtype=jnp.bfloat16,
                                       kernel_init=init, bias_init=init,
                                       rngs=rngs)])

  graphdef, state = nnx.split(Net(nnx.Rngs(0)))
  named = dict(rsjax.named_leaves(state))
  layers = {"conv/kernel": shared_layer(named["conv/kernel"], 2, 4),
            "head/0/kernel": shared_layer(named["head/0/kernel"], 1, 5)}
  rsjax.save_compressed(tmp_path / "nnx.npz", layers, HW, params=state)
  loaded = rsjax.load_compressed(tmp_path / "nnx.npz")
  assert_whole_model(loaded, nnx.to_pure_dict(state), layers)
  assert set(loaded.params) == {"conv", "bn", "head"}
  # The string keys ('0') merge back into the module's state.
  nnx.replace_by_pure_dict(state, loaded.params)
  model = nnx.merge(graphdef, state)
  np.testing.assert_array_equal(model.head[0].kernel[...],
                                layers["head/0/kernel"].to_kernel())


def test_a_file_decompresses_in_numpy_as_to_kernel(layers):
  """Loading decompresses NumPy arrays (no compile), bit-equal to JAX."""
  for layer in layers.values():
    numpy_layer = rsjax.CompressedLayer(np.asarray(layer.codebook),
                                        np.asarray(layer.index),
                                        layer.kernel_shape)
    got = numpy_layer.to_kernel()
    assert isinstance(got, np.ndarray)
    assert bits(got) == bits(layer.to_kernel())


def test_version_1_file_is_refused():
  """Version 1 (crossbar layers only) never shipped in a release."""
  meta = json.loads(np.load(V1_FIXTURE)["__meta__"].tobytes())
  assert meta["version"] == 1
  with pytest.raises(ValueError, match=r"format version 1; this rsjax reads "
                     r"versions \(2, 3\)"):
    rsjax.load_compressed(V1_FIXTURE, hw=HW)


def rewrite(path, edit):
  """Rewrites a file's metadata with ``edit`` and a valid checksum."""
  arrays = dict(np.load(path))
  meta = json.loads(arrays.pop("__meta__").tobytes())
  del arrays["__sha256__"]
  edit(meta)
  meta_bytes = json.dumps(meta).encode()
  arrays["__meta__"] = np.frombuffer(meta_bytes, np.uint8)
  arrays["__sha256__"] = np.frombuffer(
      model_file.digest(meta_bytes, arrays).encode(), np.uint8)
  np.savez(path, **arrays)


def test_newer_and_inconsistent_files(layers, tmp_path):
  path = tmp_path / "model.npz"
  rsjax.save_compressed(path, layers, HW)
  rewrite(path, lambda meta: meta.update(version=4))
  with pytest.raises(ValueError, match=r"format version 4; this rsjax reads "
                     r"versions \(2, 3\)"):
    rsjax.load_compressed(path)
  rsjax.save_compressed(path, layers, HW)
  rewrite(path, lambda meta: meta.update(version=3))
  with pytest.raises(ValueError, match="without its calibration"):
    rsjax.load_compressed(path)
  rsjax.save_compressed(path, layers, HW, params={
      "conv": np.zeros((3, 3, 2, 4), np.float32),
      "fc": {"kernel": np.zeros((10, 3), np.float32)}})
  rewrite(path, lambda meta: meta.update(params={"conv": ["P9", "float32"]}))
  with pytest.raises(ValueError, match="passes its checksum but is "
                     "inconsistent.*P9"):
    rsjax.load_compressed(path)


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
  """A few KB: two layers, biases, BatchNorm, bfloat16 and integer leaves."""
  variables = linen_variables()
  path = tmp_path_factory.mktemp("small") / "model.npz"
  rsjax.save_compressed(path, linen_layers(variables), HW, {"model": "toy"},
                        params=variables)
  return path.read_bytes()


@pytest.mark.parametrize("step", [
    7, pytest.param(1, marks=pytest.mark.slow)])
def test_every_flipped_byte_and_truncation(small_file, step):
  """Any damage is a ValueError, or (bytes that do not matter) the model."""
  data = small_file
  original = rsjax.load_compressed(io.BytesIO(data))
  offsets = range(0, len(data), step)
  intact = 0
  for offset in offsets:
    flipped = bytearray(data)
    flipped[offset] ^= 0xFF
    try:
      model = rsjax.load_compressed(io.BytesIO(bytes(flipped)))
    except ValueError as e:
      assert re.search(DAMAGED, str(e)), (offset, e)
      assert "<file object>" in str(e)
    else:  # zip fields that no reader uses (times, extras, padding)
      assert_same_model(model, original)
      intact += 1
  assert intact < len(offsets) // 2
  for length in offsets:
    with pytest.raises(ValueError, match=DAMAGED):
      rsjax.load_compressed(io.BytesIO(data[:length]))


def test_format_doc_reader_reads_what_load_compressed_reads(tmp_path):
  """docs/format.md's NumPy-only reader agrees with load_compressed."""
  blocks = re.findall(r"```python\n(.*?)```", FORMAT_DOC.read_text(), re.S)
  assert len(blocks) == 1
  namespace = {}
  exec(compile(blocks[0], "docs/format.md", "exec"), namespace)  # pylint: disable=exec-used
  read_rsjax = namespace["read_rsjax"]
  variables = linen_variables()
  layers = linen_layers(variables)
  path = tmp_path / "model.npz"
  rsjax.save_compressed(path, layers, HW, {"model": "doc"}, params=variables)
  loaded = rsjax.load_compressed(path)
  meta, kernels, params = read_rsjax(path)
  assert meta["metadata"] == {"model": "doc"}
  for kernel, layer in zip(kernels, layers.values()):
    assert bits(kernel) == bits(layer.to_kernel())
  assert ({p: bits(x) for p, x in leaves(params).items()} ==
          {p: bits(x) for p, x in leaves(loaded.params).items()})
  arrays = dict(np.load(path))
  arrays["P0"] = arrays["P0"] + 1
  np.savez(tmp_path / "edited.npz", **arrays)
  with pytest.raises(ValueError, match="damaged"):
    read_rsjax(tmp_path / "edited.npz")


def test_foreign_files(tmp_path):
  cases = {"empty.npz": b"", "text.npz": b"not a zip at all"}
  for name, payload in cases.items():
    (tmp_path / name).write_bytes(payload)
  np.savez(tmp_path / "plain.npz", a=np.ones(3))
  np.savez(tmp_path / "pickled.npz", a=np.array([{"x": 1}], object))
  np.save(tmp_path / "array.npy", np.ones(3))
  for name in ("empty.npz", "text.npz", "plain.npz", "pickled.npz",
               "array.npy"):
    with pytest.raises(ValueError, match=DAMAGED) as e:
      rsjax.load_compressed(tmp_path / name)
    assert str(tmp_path / name) in str(e.value)
    assert "allow_pickle" not in str(e.value)
  with pytest.raises(FileNotFoundError):
    rsjax.load_compressed(tmp_path / "missing.npz")


def test_edited_and_mismatched_files(layers, tmp_path):
  path = tmp_path / "model.npz"
  rsjax.save_compressed(path, layers, HW)
  with pytest.raises(ValueError, match="compressed for"):
    rsjax.load_compressed(path, hw=HW.replace(adc_bits=4))
  arrays = dict(np.load(path))
  arrays["L0.index_widths"] = arrays["L0.index_widths"] + 1  # edited table
  np.savez(tmp_path / "edited.npz", **arrays)
  with pytest.raises(ValueError, match="damaged.*checksum"):
    rsjax.load_compressed(tmp_path / "edited.npz")


def test_save_refuses_wrong_layers(layers, tmp_path):
  with pytest.raises(ValueError, match="blocks"):
    rsjax.save_compressed(tmp_path / "m.npz", layers, HW.replace(ou_rows=8))
  with pytest.raises(TypeError, match="'w' is not a CompressedLayer"):
    rsjax.save_compressed(tmp_path / "m.npz", {"w": np.ones((2, 2))}, HW)
  with pytest.raises(ValueError, match="at least one layer or params"):
    rsjax.save_compressed(tmp_path / "m.npz", {}, HW)
  assert not list(tmp_path.iterdir())  # nothing half-written is left


def test_save_refuses_params_that_do_not_fit(tmp_path):
  variables = linen_variables()
  layers = linen_layers(variables)
  inner = {"conv1/kernel": layers["params/conv1/kernel"]}
  with pytest.raises(ValueError, match=r"layer 'conv1/kernel' is not a path "
                     r"in params \(did you mean 'params/conv1/kernel'\?\); "
                     r"its kernel paths are \['params/conv1/kernel', "
                     r"'params/fc/kernel'\]"):
    rsjax.save_compressed(tmp_path / "m.npz", inner, HW, params=variables)
  swapped = {"params/conv1/kernel": layers["params/fc/kernel"]}
  with pytest.raises(ValueError, match=r"'params/conv1/kernel' has shape "
                     r"\(3, 3, 2, 4\), its compressed layer the kernel "
                     r"shape \(10, 3\)"):
    rsjax.save_compressed(tmp_path / "m.npz", swapped, HW, params=variables)
  with_key = {**variables, "rng": {"key": jax.random.key(0)}}
  with pytest.raises(TypeError, match="'rng/key'.*key_data"):
    rsjax.save_compressed(tmp_path / "m.npz", layers, HW, params=with_key)
  with pytest.raises(TypeError, match="'name'.*not a numeric array"):
    rsjax.save_compressed(tmp_path / "m.npz", layers, HW,
                          params={**variables, "name": np.array(["a"])})
  assert not list(tmp_path.iterdir())


def test_save_into_missing_directory(layers, tmp_path):
  target = tmp_path / "no" / "such" / "model.npz"
  with pytest.raises(FileNotFoundError,
                     match=f"directory '{tmp_path / 'no' / 'such'}' does not "
                     "exist"):
    rsjax.save_compressed(target, layers, HW)
  assert not (tmp_path / "no").exists()


def test_saved_file_follows_the_umask(layers, tmp_path):
  old = os.umask(0o027)
  try:
    rsjax.save_compressed(tmp_path / "m.npz", layers, HW)
  finally:
    os.umask(old)
  assert (tmp_path / "m.npz").stat().st_mode & 0o777 == 0o640


def test_metadata_accepts_numpy_values(layers, tmp_path):
  metadata = {"accuracy": np.float32(0.9), "steps": np.int64(3),
              "ok": np.bool_(True), "per_class": np.array([0.5, 0.25]),
              "nested": {"bf16": jnp.bfloat16(1.5), "grid": (np.int8(2), 3)}}
  rsjax.save_compressed(tmp_path / "m.npz", layers, HW, metadata)
  got = rsjax.load_compressed(tmp_path / "m.npz").metadata
  assert got == {"accuracy": float(np.float32(0.9)), "steps": 3, "ok": True,
                 "per_class": [0.5, 0.25],
                 "nested": {"bf16": 1.5, "grid": [2, 3]}}
  assert type(got["steps"]) is int and type(got["ok"]) is bool
  with pytest.raises(TypeError, match=r"metadata\['nested'\]\['when'\] = "
                     r"<object object .*\(type object\) is not JSON"):
    rsjax.save_compressed(tmp_path / "m.npz", layers, HW,
                          {"nested": {"when": object()}})
  with pytest.raises(TypeError, match="metadata has the key 3"):
    rsjax.save_compressed(tmp_path / "m.npz", layers, HW, {3: "x"})


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(st.integers(1, 6), st.integers(1, 9), st.integers(0, 300),
                  st.integers(0, 2**31 - 1))
def test_pack_index_round_trip(rows, groups, top, seed):
  index = np.random.default_rng(seed).integers(-1, top + 1, (rows, groups))
  packed, widths = model_file.pack_index(index)
  assert packed.nbytes == -(-int(widths.sum()) * groups // 8)
  np.testing.assert_array_equal(model_file.unpack_index(packed, widths, groups),
                                index)
