"""Exporting a compressed model: bit-exact round trips, clear errors."""

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rsjax
from rsjax._src import export

HW = rsjax.HardwareSpec()


@pytest.fixture(scope="module")
def layers():
  k1, k2 = jax.random.split(jax.random.key(0))
  conv = np.array(jax.random.normal(k1, (3, 3, 4, 6)))
  conv[0] = 0  # pruned rows
  dense = jax.random.normal(k2, (20, 5), jnp.bfloat16)
  return {
      "conv": rsjax.compress_kernel(conv, HW, 2, key=k1),
      "fc/kernel": rsjax.compress_kernel(dense, HW, 3, key=k2),
  }


def test_round_trip_is_bit_exact(layers, tmp_path):
  path = tmp_path / "model.npz"
  rsjax.save_compressed(path, layers, HW, metadata={"model": "toy"})
  loaded = rsjax.load_compressed(path, hw=HW)
  assert loaded.hw == HW and loaded.metadata == {"model": "toy"}
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


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(st.integers(1, 6), st.integers(1, 9), st.integers(0, 300),
                  st.integers(0, 2**31 - 1))
def test_pack_index_round_trip(rows, groups, top, seed):
  index = np.random.default_rng(seed).integers(-1, top + 1, (rows, groups))
  packed, widths = export.pack_index(index)
  assert packed.nbytes == -(-int(widths.sum()) * groups // 8)
  np.testing.assert_array_equal(export.unpack_index(packed, widths, groups),
                                index)


def test_truncated_and_corrupted_files(layers, tmp_path):
  path = tmp_path / "model.npz"
  rsjax.save_compressed(path, layers, HW)
  data = path.read_bytes()
  (tmp_path / "short.npz").write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match="truncated"):
    rsjax.load_compressed(tmp_path / "short.npz")
  for offset in (len(data) // 3, len(data) // 2, 100):
    flipped = bytearray(data)
    flipped[offset] ^= 0xFF
    (tmp_path / "bad.npz").write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="corrupted|truncated"):
      rsjax.load_compressed(tmp_path / "bad.npz")
  (tmp_path / "other.npz").write_bytes(b"not a zip at all")
  with pytest.raises(ValueError, match="not an rsjax"):
    rsjax.load_compressed(tmp_path / "other.npz")
  np.savez(tmp_path / "plain.npz", a=np.ones(3))
  with pytest.raises(ValueError, match="not an rsjax"):
    rsjax.load_compressed(tmp_path / "plain.npz")


def test_edited_and_mismatched_files(layers, tmp_path):
  path = tmp_path / "model.npz"
  rsjax.save_compressed(path, layers, HW)
  with pytest.raises(ValueError, match="compressed for"):
    rsjax.load_compressed(path, hw=HW.replace(adc_bits=4))
  arrays = dict(np.load(path))
  arrays["L0.index_widths"] = arrays["L0.index_widths"] + 1  # edited table
  np.savez(tmp_path / "edited.npz", **arrays)
  with pytest.raises(ValueError, match="corrupted"):
    rsjax.load_compressed(tmp_path / "edited.npz")
  with pytest.raises(FileNotFoundError):
    rsjax.load_compressed(tmp_path / "missing.npz")


def test_save_refuses_wrong_layers(layers, tmp_path):
  with pytest.raises(ValueError, match="blocks"):
    rsjax.save_compressed(tmp_path / "m.npz", layers, HW.replace(ou_rows=8))
  with pytest.raises(ValueError, match="not a CompressedLayer"):
    rsjax.save_compressed(tmp_path / "m.npz", {"w": np.ones((2, 2))}, HW)
  assert not list(tmp_path.iterdir())  # nothing half-written is left
