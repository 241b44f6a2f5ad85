"""HardwareSpec validation and derived quantities."""

import json

import numpy as np
import pytest

import rsjax


def test_defaults_are_isaac_like():
  hw = rsjax.HardwareSpec()
  assert (hw.xbar_rows, hw.xbar_cols, hw.ou_rows, hw.ou_cols) == (128, 128, 9, 8)
  assert hw.slices == 4
  assert hw.block_shape == (9, 2)
  assert hw.cycles == 8
  assert hw.partial_sum_max == 27
  assert hw.adc_lossless  # 31 >= 27
  assert not hw.replace(adc_bits=4).adc_lossless  # 15 < 27
  assert hw.ous_per_xbar == (14, 16)


def test_differential_stores_magnitudes():
  hw = rsjax.HardwareSpec(signed="differential", cell_bits=1, ou_cols=7)
  assert hw.stored_bits == 7 and hw.slices == 7 and hw.arrays == 2
  assert hw.block_shape == (9, 1)
  with pytest.raises(ValueError, match="ou_cols"):
    rsjax.HardwareSpec(signed="differential", cell_bits=1)  # 8 % 7


@pytest.mark.parametrize("field,value", [
    ("ou_rows", 0), ("adc_bits", -1), ("cell_bits", 2.0), ("dac_bits", 9),
    ("adc_mode", "linear"), ("signed", "twos"), ("weight_bits", 1),
    ("ou_cols", 6), ("ou_rows", 200), ("xbar_rows", True),
])
def test_impossible_specs_name_the_field(field, value):
  with pytest.raises(ValueError, match=field):
    rsjax.HardwareSpec(**{field: value})


def test_dict_round_trip():
  hw = rsjax.HardwareSpec(adc_bits=4, adc_mode="scale")
  assert rsjax.HardwareSpec.from_dict(hw.to_dict()) == hw
  with pytest.raises(ValueError, match="bogus"):
    rsjax.HardwareSpec.from_dict({"bogus": 1})


@pytest.mark.parametrize("signed,weight_bits", [("offset", 4),
                                                ("differential", 5),
                                                ("differential", 4)])
def test_one_cell_per_weight(signed, weight_bits):
  # 4-bit cells holding a whole stored weight: one slice, top levels unused.
  hw = rsjax.HardwareSpec(signed=signed, weight_bits=weight_bits, cell_bits=4,
                          ou_cols=8)
  assert hw.stored_bits <= hw.cell_bits
  assert hw.slices == 1 and hw.block_shape == (9, 8)
  assert hw.partial_sum_max == 9 * 15  # the cell's top level, as stuck-at-1
  assert not hw.adc_lossless and hw.replace(adc_bits=8).adc_lossless
  assert rsjax.HardwareSpec(cell_bits=16).slices == 1
  with pytest.raises(ValueError, match="cell_bits"):
    rsjax.HardwareSpec(cell_bits=17)


def test_numpy_integers_become_python_ints():
  hw = rsjax.HardwareSpec(ou_rows=np.int64(9), cell_bits=np.int32(2),
                          adc_bits=np.uint8(5))
  assert hw == rsjax.HardwareSpec() and hash(hw) == hash(rsjax.HardwareSpec())
  assert type(hw.ou_rows) is int and type(hw.adc_bits) is int
  assert json.loads(json.dumps(hw.to_dict())) == rsjax.HardwareSpec().to_dict()
  for value in (np.float32(9), np.bool_(True), "9"):
    with pytest.raises(ValueError, match="ou_rows"):
      rsjax.HardwareSpec(ou_rows=value)


@pytest.mark.parametrize("ou_rows,adc_bits,want", [
    (9, 4, 5), (9, 5, 5), (9, 7, 7), (16, 3, 6), (32, 5, 7)])
def test_with_lossless_adc(ou_rows, adc_bits, want):
  # The fewest ADC bits whose codes cover every partial sum (p_max =
  # ou_rows * 3 for 2-bit cells, 1-bit DAC); an ADC that already does stays.
  hw = rsjax.HardwareSpec(ou_rows=ou_rows, adc_bits=adc_bits)
  ref = hw.with_lossless_adc()
  assert ref.adc_bits == want and ref.adc_lossless
  assert ref.replace(adc_bits=hw.adc_bits) == hw
  assert (ref is hw) == hw.adc_lossless
