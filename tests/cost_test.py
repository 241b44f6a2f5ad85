"""Energy, latency and area: hand-worked figures and ISAAC's Table I."""

import copy
import pathlib
import re

import jax
import numpy as np
import pytest

import rsjax

W = np.array([[1, 4, 1, 1, 1, 6, 1, 5],
              [3, 6, 8, 7, 2, 4, 1, 2],
              [8, 1, 6, 3, 1, 9, 3, 9],
              [1, 2, 1, 6, 4, 1, 6, 5]], np.float32)
# The worked example's 2x2 weight OUs (8-bit weights, four 2-bit cells each).
HW = rsjax.HardwareSpec(xbar_rows=4, xbar_cols=16, ou_rows=2, ou_cols=8)
COSTS = rsjax.CostModel()

# ISAAC's tile at full use: 96 crossbars of 128x128 cells (16-bit weights in
# 2-bit cells, 16 weight columns each), each holding its own layer, 16-bit
# inputs fed a bit a cycle. A 128x128 OU makes one OU activation one crossbar
# read; every crossbar is busy every 100 ns cycle, so a layer's latency is
# one 16-cycle MVM and the tile's power is the energy of one MVM of each
# layer over it.
ISAAC_HW = rsjax.HardwareSpec(ou_rows=128, ou_cols=128, weight_bits=16,
                              input_bits=16, adc_bits=8)
ISAAC_TILE_XBARS = 8 * 12
# Table I (mW, mm^2): the IMA rows (per IMA), the tile periphery, the totals.
ISAAC_IMA_MW = {"adc": 16.0, "dac": 4.0, "sample_hold": 0.01, "crossbar": 2.4,
                "shift_add": 0.2, "input_register": 1.24,
                "output_register": 0.23}
ISAAC_TILE_MW = {"edram": 20.7, "bus": 7.0, "router": 42.0 / 4,
                 "tile_output_register": 1.68}
# Sigmoid, max-pool and the tile's S+A: unpriced, 0.3 % of the tile.
ISAAC_TILE_UNPRICED_MW = 0.52 + 0.4 + 0.05
ISAAC_12_IMAS_MW, ISAAC_12_IMAS_MM2 = 289.0, 0.157
ISAAC_TILE_TOTAL_MW, ISAAC_TILE_TOTAL_MM2 = 330.0, 0.372
# Table I prints its totals to 3 figures (0.157: +-0.32 %), and the tile's
# 0.97 mW of sigmoid, max-pool and S+A are not priced (0.29 % of 330 mW).
ISAAC_REL = 0.005


@pytest.fixture(scope="module")
def worked_example():
  return rsjax.compress_kernel(W, HW, 2, key=jax.random.key(0))


@pytest.fixture(scope="module")
def isaac_tile_cost():
  kernel = np.ones((128, 16), np.float32)
  layers = {f"xbar{i}": kernel for i in range(ISAAC_TILE_XBARS)}
  return rsjax.hardware_cost(layers, ISAAC_HW)["layouts"]["dense"]


def _report(layer, positions=3):
  return rsjax.compression_report({"x": layer}, HW, positions={"x": positions})


def test_constants_are_table_one_over_one_cycle():
  # Each: Table I power x 100 ns / the actions of that cycle at full use.
  per_ima = 8 * 128
  assert COSTS.adc_energy(8) == pytest.approx(16.0 * 100 / per_ima)
  assert COSTS.dac_energy_pj == pytest.approx(4.0 * 100 / per_ima)
  assert COSTS.shift_add_energy_pj == pytest.approx(0.2 * 100 / per_ima)
  assert COSTS.output_register_energy_pj == pytest.approx(0.23 * 100 / per_ima)
  assert COSTS.input_register_energy_pj_per_bit == pytest.approx(
      1.24 * 100 / per_ima)
  # A tile moves 12 x (2 KB IR + 256 B OR) per 16-cycle MVM.
  tile_bits = 12 * (16384 + 2048) / 16
  assert COSTS.bus_energy_pj_per_bit == pytest.approx(7.0 * 100 / tile_bits)
  assert COSTS.edram_energy_pj == pytest.approx(
      20.7 * 100 / (2 * tile_bits / 256))
  assert COSTS.router_energy_pj == pytest.approx(10.5 * 100 / (tile_bits / 256))
  assert COSTS.tile_output_register_energy_pj_per_bit == pytest.approx(
      1.68 * 100 / (96 * 16 * 16 / 16))
  # Accelergy's figures assume 1.2 GS/s: on the 100 ns basis they scale by
  # 1.2 / 1.28 (its eDRAM 20.45 pJ, router 20.74 pJ, bus 0.054 pJ/bit).
  assert COSTS.edram_energy_pj == pytest.approx(20.45 * 1.2 / 1.28, rel=1e-3)
  assert COSTS.router_energy_pj == pytest.approx(20.74 * 1.2 / 1.28, rel=1e-3)
  assert COSTS.bus_energy_pj_per_bit == pytest.approx(0.054 * 1.2 / 1.28,
                                                      rel=1e-3)
  # isaac_adc.csv's 4-10-bit rows, rebased the same way.
  csv_rows = {4: 0.79, 5: 0.99, 6: 1.20, 7: 1.42, 9: 1.969078145,
              10: 2.379022742}
  for bits, pj in csv_rows.items():
    assert COSTS.adc_energy(bits) == pytest.approx(pj * 1.2 / 1.28)
  assert COSTS.adc_area(8) == pytest.approx(0.0096e6 / 8)
  assert COSTS.dac_area_um2 * 8 * 128 == pytest.approx(0.00017e6)
  assert COSTS.cell_area_um2 * 8 * 128 * 128 == pytest.approx(0.0002e6)
  assert COSTS.sample_hold_area_um2 * 8 * 128 == pytest.approx(0.00004e6)
  assert COSTS.shift_add_area_um2 * 4 == pytest.approx(0.00024e6)
  # 128 columns at 1.28 GS/s fill exactly one 100 ns crossbar read.
  assert 128 / COSTS.adc_rate_gsps == pytest.approx(COSTS.xbar_read_ns)
  energies = [COSTS.adc_energy(b) for b in range(4, 11)]
  areas = [COSTS.adc_area(b) for b in range(4, 11)]
  assert energies == sorted(energies) and areas == sorted(areas)


def test_isaac_ima_and_tile_power_recomputed(isaac_tile_cost):
  assert isaac_tile_cost["crossbars"] == ISAAC_TILE_XBARS
  # One 16-cycle MVM of every crossbar, on one 100 ns cycle basis.
  assert isaac_tile_cost["interval_ns"] == 16 * 100.0
  energy = isaac_tile_cost["energy_pj"]
  mw = {key: value / isaac_tile_cost["interval_ns"]  # pJ / ns = mW
        for key, value in energy.items()}
  # Every row from the model's own prices and counts, each Table I's.
  for key, published in ISAAC_IMA_MW.items():
    assert mw[key] / 12 == pytest.approx(published, rel=1e-9), key
  for key, published in ISAAC_TILE_MW.items():
    assert mw[key] == pytest.approx(published, rel=1e-9), key
  assert mw["index_table"] == mw["adders"] == 0
  ima_mw = sum(mw[key] for key in ISAAC_IMA_MW)
  assert ima_mw == pytest.approx(ISAAC_12_IMAS_MW, rel=ISAAC_REL)
  assert mw["total"] == pytest.approx(ISAAC_TILE_TOTAL_MW, rel=ISAAC_REL)
  assert mw["total"] + ISAAC_TILE_UNPRICED_MW == pytest.approx(
      12 * sum(ISAAC_IMA_MW.values()) + sum(ISAAC_TILE_MW.values())
      + ISAAC_TILE_UNPRICED_MW, rel=1e-9)


def test_isaac_ima_and_tile_area_recomputed(isaac_tile_cost):
  area = isaac_tile_cost["area_um2"]
  ima_mm2 = (area["core"] + area["registers"]) * 1e-6
  assert ima_mm2 == pytest.approx(ISAAC_12_IMAS_MM2, rel=ISAAC_REL)
  assert area["total"] * 1e-6 == pytest.approx(ISAAC_TILE_TOTAL_MM2,
                                               rel=ISAAC_REL)


def test_isaac_chip_efficiency_table_four(isaac_tile_cost):
  # 168 tiles and HyperTransport's 10.4 W, 22.88 mm^2; 2 ops a MAC.
  gops = 168 * ISAAC_TILE_XBARS * 128 * 16 * 2 / isaac_tile_cost["interval_ns"]
  watts = 168 * isaac_tile_cost["energy_pj"]["total"] / isaac_tile_cost[
      "interval_ns"] * 1e-3 + 10.4
  mm2 = 168 * isaac_tile_cost["area_um2"]["total"] * 1e-6 + 22.88
  assert gops / watts == pytest.approx(627.5, rel=ISAAC_REL)
  assert gops / mm2 == pytest.approx(478.95, rel=0.01)


def test_worked_example_by_hand(worked_example):
  cost = rsjax.hardware_cost(_report(worked_example), HW)
  dense, shared = cost["layouts"]["dense"], cost["layouts"]["shared"]
  adc_pj = 0.99 * 1.2 / 1.28  # isaac_adc.csv's 5 bits on the 100 ns basis
  # 3 positions x 8 input cycles x 8 blocks (4 stored); 8 cells an OU.
  conversions = 3 * 8 * 8 * 8
  assert dense["energy_pj"]["adc"] == pytest.approx(conversions * adc_pj)
  assert shared["energy_pj"]["adc"] == pytest.approx(conversions / 2 * adc_pj)
  assert dense["energy_pj"]["output_register"] == pytest.approx(
      conversions * 0.23 * 100 / 1024)
  assert dense["energy_pj"]["dac"] == pytest.approx(
      3 * 8 * 8 * 2 * COSTS.dac_energy_pj)
  assert dense["energy_pj"]["crossbar"] == pytest.approx(
      3 * 8 * 8 * 16 * COSTS.cell_read_energy_pj)
  # 16 index bits read once a position; 8 kept blocks x 2 weight columns.
  assert shared["energy_pj"]["index_table"] == pytest.approx(
      16 * 3 * COSTS.index_sram_energy_pj_per_bit)
  assert shared["energy_pj"]["adders"] == pytest.approx(
      8 * 3 * 2 * 0.2 * 100 / 1024)
  assert dense["energy_pj"]["index_table"] == dense["energy_pj"]["adders"] == 0
  # Inputs (4 rows) and outputs (8 columns) of 8 bits, 3 times.
  moved = 3 * 12 * 8
  assert dense["energy_pj"]["edram"] == pytest.approx(
      2 * moved / 256 * COSTS.edram_energy_pj)
  assert dense["energy_pj"]["router"] == pytest.approx(
      moved / 256 * COSTS.router_energy_pj)
  assert dense["energy_pj"]["tile_output_register"] == pytest.approx(
      3 * 8 * 8 * 1.68 * 100 / 1536)
  # Each crossbar holds 2 row-blocks x 2 groups: 4 OUs x 8 cycles x 100 ns
  # an MVM. Shared packs the 2 + 2 stored blocks into one crossbar, then
  # index-and-add: 1 table read (100 ns) and 16 adds on its 1 adder plus
  # 1 tree level (0.39 ns each), pipelined with the crossbar over 3 MVMs.
  assert dense["latency_ns"] == dense["interval_ns"] == 3 * 4 * 8 * 100.0
  index_add_ns = 100.0 + (16 + 1) * 100 / 256
  assert shared["index_add_ns"] == pytest.approx(3 * index_add_ns)
  assert shared["latency_ns"] == pytest.approx(3 * 3200.0 + index_add_ns)
  assert dense["index_add_ns"] == 0
  assert (dense["crossbars"], shared["crossbars"]) == (2, 1)
  assert shared["area_um2"]["index_table"] == pytest.approx(
      16 * COSTS.index_sram_area_um2_per_bit)
  assert shared["area_um2"]["adders"] == pytest.approx(60.0)
  assert shared["area_um2"]["core"] < dense["area_um2"]["core"]


def test_latency_is_the_busiest_crossbar():
  hw = rsjax.HardwareSpec()  # 14 row-blocks x 16 groups a crossbar
  for rows in (512, 135):  # 57 or 15 row-blocks: a full row tile either way
    cost = rsjax.hardware_cost({"w": np.ones((rows, 512), np.float32)}, hw)
    dense = cost["layouts"]["dense"]
    assert dense["latency_ns"] == pytest.approx(224 * 8 * 100.0)  # 179.2 us
  # Spreading a 512x512 layer's 57 x 256 OUs evenly over its 80 crossbars
  # would give 146 us; its full crossbars take 179.2.
  assert cost["layouts"]["pruned"]["latency_ns"] == pytest.approx(179200.0)


def test_latency_of_a_shared_layer_by_hand():
  hw = rsjax.HardwareSpec()
  kernel = np.random.default_rng(0).normal(size=(512, 512)).astype(np.float32)
  layer = rsjax.compress_kernel(kernel, hw, 4, key=jax.random.key(0))
  report = rsjax.compression_report({"s": layer}, hw)
  fig = report["layers"]["s"]
  assert fig["crossbar_ous_shared"] == 14 * 4  # a full row tile of 4 each
  assert fig["crossbar_ous_dense"] == 14 * 16
  assert fig["index_bits"] == 57 * 256 * 3
  shared = rsjax.hardware_cost(report, hw)["layouts"]["shared"]
  xbar_ns = 56 * 8 * 100.0
  # 43 reads of 1024 bits; 57 x 256 kept blocks x 2 columns of adds on the
  # 5 packed crossbars' adders, then ceil(log2 57) = 6 tree levels.
  index_add_ns = 43 * 100.0 + (-(-57 * 256 * 2 // 5) + 6) * 100 / 256
  assert shared["crossbars"] == 5
  assert shared["index_add_ns"] == pytest.approx(index_add_ns)
  assert shared["latency_ns"] == pytest.approx(xbar_ns + index_add_ns)
  # A slow table makes the index-and-add pace the MVMs.
  slow = COSTS.replace(index_sram_read_ns=2000.0)
  cost = rsjax.hardware_cost(
      rsjax.compression_report({"s": layer}, hw, positions={"s": 3}), hw, slow)
  slow_ns = 43 * 2000.0 + (-(-57 * 256 * 2 // 5) + 6) * 100 / 256
  assert cost["layouts"]["shared"]["latency_ns"] == pytest.approx(
      3 * slow_ns + xbar_ns)


def test_adders_only_on_indexed_crossbars():
  hw = rsjax.HardwareSpec()
  kernel = np.random.default_rng(0).normal(size=(512, 512)).astype(np.float32)
  layer = rsjax.compress_kernel(kernel, hw, 4, key=jax.random.key(0))
  cost = rsjax.hardware_cost({"shared": layer, "dense": kernel}, hw)
  shared = cost["layouts"]["shared"]
  assert shared["crossbars"] == 5 + 80
  assert shared["area_um2"]["adders"] == pytest.approx(5 * 60.0)
  assert shared["area_um2"]["index_table"] == pytest.approx(
      57 * 256 * 3 * COSTS.index_sram_area_um2_per_bit)


def test_adc_rows_attributed_to_isaac_adc_csv():
  root = pathlib.Path(__file__).resolve().parent.parent
  for path in ("rsjax/_src/cost.py", "docs/cost.md"):
    text = (root / path).read_text()
    assert "isaac_adc.csv" in text, path
    assert "accelergy-library-plug-in" in text, path


def test_index_table_sensitivity_documented():
  # docs/cost.md's sensitivity rows: a 512x512 layer, k = 4, one MVM.
  hw = rsjax.HardwareSpec()
  kernel = np.random.default_rng(0).normal(size=(512, 512)).astype(np.float32)
  layer = rsjax.compress_kernel(kernel, hw, 4, key=jax.random.key(0))
  doc = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "cost.md"
         ).read_text()
  rows = re.findall(r"^\| ([0-9.]+) pJ/bit \|[^|]*\|[^|]*\| ([0-9.]+) % \| "
                    r"([0-9.]+) % \|$", doc, re.M)
  assert len(rows) >= 4
  for per_bit, vs_adc, vs_total in rows:
    costs = COSTS.replace(index_sram_energy_pj_per_bit=float(per_bit))
    energy = rsjax.hardware_cost({"s": layer}, hw, costs)["layouts"][
        "shared"]["energy_pj"]
    assert 100 * energy["index_table"] / energy["adc"] == pytest.approx(
        float(vs_adc), abs=0.1)
    assert 100 * energy["index_table"] / energy["total"] == pytest.approx(
        float(vs_total), abs=0.1)


def test_breakdown_sums_to_total(worked_example):
  report = rsjax.compression_report({"a": worked_example, "b": W}, HW,
                                    positions={"a": 5})
  cost = rsjax.hardware_cost(report, HW)
  for layout, fig in cost["layouts"].items():
    parts = {k: v for k, v in fig["energy_pj"].items() if k != "total"}
    assert set(parts) == set(rsjax._src.cost.ENERGY_KEYS)
    assert fig["energy_pj"]["total"] == pytest.approx(sum(parts.values()))
    area = fig["area_um2"]
    assert area["total"] == pytest.approx(
        sum(v for k, v in area.items() if k not in ("total", "core")))
    layers = [layer[layout] for layer in cost["layers"].values()]
    assert fig["energy_pj"]["total"] == pytest.approx(
        sum(layer["energy_pj"] for layer in layers))
    assert fig["latency_ns"] == sum(layer["latency_ns"] for layer in layers)
    assert fig["interval_ns"] == max(layer["latency_ns"] for layer in layers)


@pytest.mark.parametrize("scale", [2, 7])
def test_energy_and_latency_linear_in_counts(worked_example, scale):
  one = rsjax.hardware_cost(_report(worked_example, 4), HW)
  many = rsjax.hardware_cost(_report(worked_example, 4 * scale), HW)
  for layout in rsjax._src.cost.LAYOUTS:
    a, b = one["layouts"][layout], many["layouts"][layout]
    for key, value in a["energy_pj"].items():
      assert b["energy_pj"][key] == pytest.approx(scale * value)
    assert b["index_add_ns"] == pytest.approx(scale * a["index_add_ns"])
    # The pipelined stages: each further MVM adds the slower stage's time.
    assert b["latency_ns"] - a["latency_ns"] == pytest.approx(
        (scale - 1) * 4 * 4 * 8 * 100.0)
    assert b["area_um2"] == a["area_um2"]


def test_fewer_adc_bits_cost_less(worked_example):
  report = _report(worked_example)
  four = rsjax.hardware_cost(report, HW.replace(adc_bits=4))
  five = rsjax.hardware_cost(report, HW)
  for layout in rsjax._src.cost.LAYOUTS:
    a, b = four["layouts"][layout], five["layouts"][layout]
    assert a["energy_pj"]["adc"] < b["energy_pj"]["adc"]
    assert a["energy_pj"]["adc"] / b["energy_pj"]["adc"] == pytest.approx(
        0.79 / 0.99)  # isaac_adc.csv's ratio, kept by the rebasing
    assert a["area_um2"]["adc"] < b["area_um2"]["adc"]
    assert a["energy_pj"]["total"] < b["energy_pj"]["total"]


def test_sharing_cuts_adc_energy_by_its_factor(worked_example):
  cost = rsjax.hardware_cost(_report(worked_example), HW)
  ou_ratio = _report(worked_example)["total"]["ou_ratio"]
  dense = cost["layouts"]["dense"]["energy_pj"]
  shared = cost["layouts"]["shared"]["energy_pj"]
  for key in ("adc", "dac", "crossbar", "sample_hold", "shift_add"):
    assert dense[key] / shared[key] == pytest.approx(ou_ratio)
  assert shared["total"] < dense["total"]


def test_uncompressed_layer_pays_no_table():
  cost = rsjax.hardware_cost(rsjax.compression_report({"w": W}, HW), HW)
  dense, shared = cost["layouts"]["dense"], cost["layouts"]["shared"]
  assert shared["energy_pj"] == dense["energy_pj"]
  assert shared["area_um2"] == dense["area_um2"]


def test_pure_and_leaves_report_alone(worked_example):
  report = _report(worked_example)
  before = copy.deepcopy(report)
  first = rsjax.hardware_cost(report, HW)
  assert report == before
  assert rsjax.hardware_cost(report, HW) == first


def test_layers_mapping_prices_as_its_report(worked_example):
  layers = {"a": worked_example, "b": W}
  positions = {"a": 5}
  from_layers = rsjax.hardware_cost(layers, HW, positions=positions)
  from_report = rsjax.hardware_cost(
      rsjax.compression_report(layers, HW, positions), HW)
  assert from_layers == from_report
  # positions reach the report: 5 MVMs of 'a' cost 5 times one.
  one = rsjax.hardware_cost(layers, HW)["layers"]["a"]["dense"]
  assert from_layers["layers"]["a"]["dense"]["energy_pj"] == pytest.approx(
      5 * one["energy_pj"])


def test_shared_layout_of_a_pruned_and_shared_layer(worked_example):
  # Prune one block of each row-block: 'shared' activates only the distinct
  # blocks still used, 'pruned' every kept one; no separate pruned+shared.
  index = np.array(worked_example.index).copy()
  index[:, 0] = -1
  layer = rsjax.CompressedLayer(worked_example.codebook, index,
                                worked_example.kernel_shape)
  report = _report(layer)
  cost = rsjax.hardware_cost(report, HW)
  assert set(cost["layouts"]) == {"dense", "pruned", "shared"}
  fig = report["layers"]["x"]
  stored = int(layer.stored_per_row_block().sum())
  kept = int(np.sum(index >= 0))
  assert (fig["stored_ous"], fig["kept_ous"]) == (stored, kept)
  adc = {k: v["energy_pj"]["adc"] for k, v in cost["layouts"].items()}
  assert adc["pruned"] == pytest.approx(3 * 8 * kept * 8 * COSTS.adc_energy(5))
  assert adc["shared"] == pytest.approx(
      3 * 8 * stored * 8 * COSTS.adc_energy(5))


def test_adc_table_override(worked_example):
  costs = COSTS.replace(adc_energy_pj={**COSTS.adc_energy_pj, 3: 0.6},
                        adc_area_um2={**COSTS.adc_area_um2, 3: 300.0})
  cost = rsjax.hardware_cost(_report(worked_example), HW.replace(adc_bits=3),
                             costs)
  assert cost["layouts"]["dense"]["energy_pj"]["adc"] == pytest.approx(
      3 * 8 * 8 * 8 * 0.6)
  assert COSTS.adc_energy_pj[8] == pytest.approx(1.5625)  # unchanged
  assert 3 not in COSTS.adc_energy_pj
  assert hash(costs) != hash(COSTS) and costs != COSTS
  assert hash(rsjax.CostModel()) == hash(COSTS) and rsjax.CostModel() == COSTS


def test_format_cost(worked_example):
  text = rsjax.format_cost(rsjax.hardware_cost(_report(worked_example), HW))
  lines = text.splitlines()
  assert lines[0].split()[:2] == ["layout", "energy"]
  assert [l.split()[0] for l in lines[2:5]] == ["dense", "pruned", "shared"]
  assert lines[4].endswith("1.88x")
  assert "5-bit ADC" in lines[-1]


def test_bad_input(worked_example):
  report = _report(worked_example)
  with pytest.raises(ValueError, match=r"adc_bits=3.*adc_energy_pj"):
    rsjax.hardware_cost(report, HW.replace(adc_bits=3))
  with pytest.raises(ValueError, match=r"CostModel.dac_energy_pj.*-1"):
    rsjax.CostModel(dac_energy_pj=-1.0)
  with pytest.raises(ValueError, match=r"adc_area_um2\[5\]"):
    rsjax.CostModel(adc_area_um2={5: float("nan")})
  with pytest.raises(TypeError, match="router_energy_pj"):
    rsjax.CostModel(router_energy_pj="20")
  with pytest.raises(ValueError, match="crossbars_per_ima"):
    rsjax.CostModel(crossbars_per_ima=0)
  with pytest.raises(ValueError, match="keys must be ADC bits"):
    rsjax.CostModel(adc_energy_pj={0: 1.0})
  with pytest.raises(ValueError, match="dac_bits"):
    rsjax.hardware_cost(report, HW.replace(dac_bits=2))
  with pytest.raises(ValueError, match="adders_per_crossbar"):
    rsjax.CostModel(adders_per_crossbar=0.0)
  with pytest.raises(ValueError, match="lacks.*crossbar_ous_shared"):
    bad = copy.deepcopy(report)  # a report made without the busiest crossbar
    del bad["layers"]["x"]["crossbar_ous_shared"]
    rsjax.hardware_cost(bad, HW)
  with pytest.raises(ValueError, match="lacks.*index_bits"):
    bad = copy.deepcopy(report)
    del bad["layers"]["x"]["index_bits"]
    rsjax.hardware_cost(bad, HW)
  with pytest.raises(ValueError, match="not made for this hw"):
    rsjax.hardware_cost(report, HW.replace(input_bits=4))
  with pytest.raises(ValueError, match="not made for this hw"):
    rsjax.hardware_cost(report, HW.replace(signed="differential"))
  with pytest.raises(ValueError, match="'layers'"):
    rsjax.hardware_cost({"total": report["total"]}, HW)
  with pytest.raises(TypeError, match="CostModel"):
    rsjax.hardware_cost(report, HW, costs={"adc": 1})
  with pytest.raises(ValueError, match="positions applies to a layers"):
    rsjax.hardware_cost(report, HW, positions={"x": 3})
  with pytest.raises(TypeError, match="layers_or_report must be.*list"):
    rsjax.hardware_cost([worked_example], HW)
  with pytest.raises(ValueError, match="layers_or_report is empty"):
    rsjax.hardware_cost({}, HW)
  with pytest.raises(TypeError, match=r"layers_or_report\['x'\] is a str"):
    rsjax.hardware_cost({"x": "kernel"}, HW)
  with pytest.raises(ValueError, match="'layers' mapping is empty"):
    rsjax.hardware_cost({"layers": {}, "total": {}}, HW)
  with pytest.raises(ValueError, match="positions given for unknown"):
    rsjax.hardware_cost({"x": worked_example}, HW, positions={"y": 2})


@pytest.mark.slow  # three k-means compiles: about 20 s on an idle 2-core CPU
def test_docs_example_prints_the_documented_tables(capsys):
  doc = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "cost.md"
         ).read_text()
  code = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
  printed = re.search(r"\nprints .*?\n\n```\n(.*?)```", doc, re.S).group(1)
  exec(compile(code, "docs/cost.md", "exec"), {})  # pylint: disable=exec-used
  assert capsys.readouterr().out == printed
