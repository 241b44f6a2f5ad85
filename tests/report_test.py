"""The compression report's figures, worked out by hand."""

import jax
import numpy as np
import pytest

import rsjax

W = np.array([[1, 4, 1, 1, 1, 6, 1, 5],
              [3, 6, 8, 7, 2, 4, 1, 2],
              [8, 1, 6, 3, 1, 9, 3, 9],
              [1, 2, 1, 6, 4, 1, 6, 5]], np.float32)
# 2x2 weight OUs: 8-bit weights in 2-bit cells are 4 slices of an 8-cell OU.
# A crossbar holds 4 // 2 = 2 row-blocks and 16 // 8 = 2 column groups.
HW = rsjax.HardwareSpec(xbar_rows=4, xbar_cols=16, ou_rows=2, ou_cols=8)


@pytest.fixture(scope="module")
def worked_example():
  return rsjax.compress_kernel(W, HW, 2, key=jax.random.key(0))


def test_worked_example_by_hand(worked_example):
  fig = rsjax.layer_report(worked_example, HW, positions=3)
  assert (fig["dense_ous"], fig["kept_ous"], fig["stored_ous"]) == (8, 8, 4)
  assert fig["ou_ratio"] == 2.0
  # 2 row-blocks x 4 groups x ceil(log2(2 + 1)) = 2 bits.
  assert fig["index_bits"] == 16
  # 256 dense bits / (4 blocks x 4 weights x 8 bits + 16 + one 32-bit scale).
  assert fig["bit_ratio"] == 256 / (128 + 16 + 32)
  assert fig["fp32_ratio"] == 32 * 32 / (4 * 4 * 32 + 16)
  # Dense: 1 row tile x 2 column tiles; packed: 2 stored blocks fit 1 tile.
  assert (fig["dense_crossbars"], fig["packed_crossbars"]) == (2, 1)
  assert fig["crossbar_ratio"] == 2.0
  # 3 positions x 8 cycles x blocks; 8 ADC conversions an OU activation.
  assert fig["ou_activations_dense"] == 3 * 8 * 8
  assert fig["ou_activations_shared"] == 3 * 8 * 4
  assert fig["adc_conversions_shared"] == 3 * 8 * 4 * 8


def test_pruning_tiles_and_differential():
  hw = rsjax.HardwareSpec(xbar_rows=4, xbar_cols=8, ou_rows=2, ou_cols=8,
                          signed="differential", cell_bits=1, weight_bits=5)
  assert hw.block_shape == (2, 2)
  m = np.zeros((6, 8), np.float32)  # 3 row-blocks x 4 groups
  m[0:2, 0:2] = 1
  m[0:2, 2:4] = 1  # the same block as group 0: shared
  m[2:4, 6:8] = 2
  layer = rsjax.compress_kernel(m, hw, 4, key=jax.random.key(0))
  np.testing.assert_array_equal(layer.index,
                                [[0, 0, -1, -1], [-1, -1, -1, 0],
                                 [-1, -1, -1, -1]])
  fig = rsjax.layer_report(layer, hw)
  assert (fig["dense_ous"], fig["kept_ous"], fig["stored_ous"]) == (12, 3, 2)
  assert fig["index_bits"] == 4 + 4 + 0
  # Row tiles of 2 row-blocks, 1 group a crossbar, 2 arrays.
  assert fig["dense_crossbars"] == 2 * 4 * 2
  assert fig["packed_crossbars"] == (1 + 0) * 2
  assert fig["ou_activations_pruned"] == 3 * hw.cycles * 2
  assert fig["ou_activations_shared"] == 2 * hw.cycles * 2


def test_total_and_table(worked_example):
  report = rsjax.compression_report({"shared": worked_example, "dense": W},
                                    HW, positions={"shared": 3})
  dense = report["layers"]["dense"]
  assert dense["stored_ous"] == 8 and dense["index_bits"] == 0
  total = report["total"]
  assert total["stored_ous"] == 12 and total["dense_ous"] == 16
  assert total["ou_ratio"] == 16 / 12
  assert total["bit_ratio"] == 512 / (176 + 8 * 4 * 8 + 32)
  assert report["headline"] == "ou_ratio"
  table = rsjax.format_report(report)
  assert "TOTAL" in table and "shared" in table and "1.33" in table


def test_bad_input(worked_example):
  with pytest.raises(ValueError, match="block shape"):
    rsjax.layer_report(worked_example, rsjax.HardwareSpec())
  with pytest.raises(ValueError, match="unknown layers"):
    rsjax.compression_report({"a": worked_example}, HW, positions={"b": 2})
  with pytest.raises(ValueError, match="at least one"):
    rsjax.compression_report({}, HW)
