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

# ISAAC's IMA at full use: every 100 ns each 128x128 crossbar reads all its
# rows for one input bit, one 8-bit ADC converts its 128 columns. A 128x128
# OU and 1-bit inputs make one OU activation exactly that read. 16-bit
# weights in 2-bit cells: a 128-cell OU holds 16 weight columns.
ISAAC_HW = rsjax.HardwareSpec(ou_rows=128, ou_cols=128, weight_bits=16,
                              input_bits=1, adc_bits=8)
ISAAC_TILE_XBARS = 8 * 12
# Table I, published totals and the parts the model does not price per action.
ISAAC_IMA_MW, ISAAC_IMA_MM2 = 289.0, 0.157
ISAAC_TILE_MW, ISAAC_TILE_MM2 = 330.0, 0.372
ISAAC_IMA_OR_MW, ISAAC_TILE_PERIPHERY_MW = 0.23, 40.9


@pytest.fixture(scope="module")
def worked_example():
  return rsjax.compress_kernel(W, HW, 2, key=jax.random.key(0))


@pytest.fixture(scope="module")
def isaac_tile_report():
  kernel = np.ones((128, 16 * ISAAC_TILE_XBARS), np.float32)
  return rsjax.compression_report({"tile": kernel}, ISAAC_HW)


def _report(layer, positions=3):
  return rsjax.compression_report({"x": layer}, HW, positions={"x": positions})


def test_constants_are_table_one_divided_out():
  assert COSTS.adc_energy(8) == pytest.approx(16e-3 / (8 * 1.2e9) * 1e12)
  assert COSTS.adc_area(8) == pytest.approx(0.0096e6 / 8)
  assert COSTS.dac_area_um2 * 8 * 128 == pytest.approx(0.00017e6)
  assert COSTS.cell_area_um2 * 8 * 128 * 128 == pytest.approx(0.0002e6)
  assert COSTS.sample_hold_area_um2 * 8 * 128 == pytest.approx(0.00004e6)
  assert COSTS.shift_add_area_um2 * 4 == pytest.approx(0.00024e6)
  assert COSTS.dac_energy_pj == pytest.approx(
      4e-3 / (128 * 8 * 1.2e7) * 1e12 * 128 / 100, rel=1e-4)
  assert COSTS.shift_add_energy_pj == pytest.approx(
      0.2e-3 / (8 * 1.2e9) * 1e12, rel=0.01)
  # Accelergy's eDRAM and router derivations: tile power over the accesses
  # made while the IMAs consume one input buffer.
  drain_s = 16384 / ((128 * 8 * 1.2e7) * 100 / 128)
  assert COSTS.edram_energy_pj == pytest.approx(
      20.7e-3 / 12 * drain_s / ((16384 + 2048) * 2 / 256) * 1e12, rel=1e-3)
  assert COSTS.router_energy_pj == pytest.approx(
      42e-3 / 4 / 12 * drain_s / ((16384 + 2048) / 256) * 1e12, rel=1e-3)
  energies = [COSTS.adc_energy(b) for b in range(4, 11)]
  areas = [COSTS.adc_area(b) for b in range(4, 11)]
  assert energies == sorted(energies) and areas == sorted(areas)


def test_isaac_tile_and_ima_area(isaac_tile_report):
  cost = rsjax.hardware_cost(isaac_tile_report, ISAAC_HW)
  dense = cost["layouts"]["dense"]
  area = dense["area_um2"]
  assert dense["crossbars"] == ISAAC_TILE_XBARS
  ima_mm2 = (area["core"] + area["registers"]) * 1e-6
  assert ima_mm2 == pytest.approx(ISAAC_IMA_MM2, rel=0.01)
  assert area["total"] * 1e-6 == pytest.approx(ISAAC_TILE_MM2, rel=0.01)


def test_isaac_ima_and_tile_power(isaac_tile_report):
  # The report's counts are one 100 ns cycle of a fully busy tile.
  fig = isaac_tile_report["total"]
  assert fig["ou_activations_dense"] == ISAAC_TILE_XBARS
  assert fig["adc_conversions_dense"] == ISAAC_TILE_XBARS * 128
  energy = rsjax.hardware_cost(isaac_tile_report,
                               ISAAC_HW)["layouts"]["dense"]["energy_pj"]
  # pJ per 100 ns is 0.01 mW; 12 IMAs a tile.
  per_ima = {key: value / 100.0 / 12 for key, value in energy.items()}
  # Derived from these very rows: exact.
  assert per_ima["crossbar"] == pytest.approx(2.4, rel=1e-9)
  assert per_ima["sample_hold"] == pytest.approx(0.01, rel=1e-9)
  assert per_ima["input_register"] == pytest.approx(1.24, rel=1e-9)
  # Accelergy's per-action figures assume 1.2 GS/s, ISAAC's text 1.28 GS/s.
  assert per_ima["adc"] == pytest.approx(16.0, rel=0.07)
  assert per_ima["dac"] == pytest.approx(4.0, rel=0.07)
  assert per_ima["shift_add"] == pytest.approx(0.2, rel=0.08)
  ima_keys = ("adc", "dac", "crossbar", "sample_hold", "shift_add",
              "input_register")
  ima_mw = 12 * (sum(per_ima[k] for k in ima_keys) + ISAAC_IMA_OR_MW)
  assert ima_mw == pytest.approx(ISAAC_IMA_MW, rel=0.07)
  assert ima_mw + ISAAC_TILE_PERIPHERY_MW == pytest.approx(ISAAC_TILE_MW,
                                                            rel=0.07)


def test_worked_example_by_hand(worked_example):
  cost = rsjax.hardware_cost(_report(worked_example), HW)
  dense, shared = cost["layouts"]["dense"], cost["layouts"]["shared"]
  # 3 positions x 8 input cycles x 8 blocks (4 stored); 8 cells an OU.
  conversions = 3 * 8 * 8 * 8
  assert dense["energy_pj"]["adc"] == pytest.approx(conversions * 0.99)
  assert shared["energy_pj"]["adc"] == pytest.approx(conversions / 2 * 0.99)
  assert dense["energy_pj"]["dac"] == pytest.approx(
      3 * 8 * 8 * 2 * COSTS.dac_energy_pj)
  assert dense["energy_pj"]["crossbar"] == pytest.approx(
      3 * 8 * 8 * 16 * COSTS.cell_read_energy_pj)
  # 16 index bits read once a position; 8 kept blocks x 2 weight columns.
  assert shared["energy_pj"]["index_table"] == pytest.approx(
      16 * 3 * COSTS.index_sram_energy_pj_per_bit)
  assert shared["energy_pj"]["adders"] == pytest.approx(8 * 3 * 2 * 0.021)
  assert dense["energy_pj"]["index_table"] == dense["energy_pj"]["adders"] == 0
  # Inputs (4 rows) and outputs (8 columns) of 8 bits, 3 times.
  moved = 3 * 12 * 8
  assert dense["energy_pj"]["edram"] == pytest.approx(2 * moved / 256 * 20.45)
  assert dense["energy_pj"]["router"] == pytest.approx(moved / 256 * 20.74)
  # 2 crossbars share 192 activations; shared packs 96 into one.
  assert dense["latency_ns"] == dense["interval_ns"] == 96 * 100.0
  assert shared["latency_ns"] == 96 * 100.0
  assert (dense["crossbars"], shared["crossbars"]) == (2, 1)
  assert shared["area_um2"]["index_table"] == pytest.approx(
      16 * COSTS.index_sram_area_um2_per_bit)
  assert shared["area_um2"]["adders"] == pytest.approx(60.0)
  assert shared["area_um2"]["core"] < dense["area_um2"]["core"]


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
    assert b["latency_ns"] == pytest.approx(scale * a["latency_ns"])
    assert b["area_um2"] == a["area_um2"]


def test_fewer_adc_bits_cost_less(worked_example):
  report = _report(worked_example)
  four = rsjax.hardware_cost(report, HW.replace(adc_bits=4))
  five = rsjax.hardware_cost(report, HW)
  for layout in rsjax._src.cost.LAYOUTS:
    a, b = four["layouts"][layout], five["layouts"][layout]
    assert a["energy_pj"]["adc"] < b["energy_pj"]["adc"]
    assert a["energy_pj"]["adc"] / b["energy_pj"]["adc"] == pytest.approx(
        0.79 / 0.99)
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
  assert adc["pruned"] == pytest.approx(3 * 8 * kept * 8 * 0.99)
  assert adc["shared"] == pytest.approx(3 * 8 * stored * 8 * 0.99)


def test_adc_table_override(worked_example):
  costs = COSTS.replace(adc_energy_pj={**COSTS.adc_energy_pj, 3: 0.6},
                        adc_area_um2={**COSTS.adc_area_um2, 3: 300.0})
  cost = rsjax.hardware_cost(_report(worked_example), HW.replace(adc_bits=3),
                             costs)
  assert cost["layouts"]["dense"]["energy_pj"]["adc"] == pytest.approx(
      3 * 8 * 8 * 8 * 0.6)
  assert COSTS.adc_energy_pj[8] == pytest.approx(1.666666667)  # unchanged
  assert 3 not in COSTS.adc_energy_pj
  assert hash(costs) != hash(COSTS) and costs != COSTS
  assert hash(rsjax.CostModel()) == hash(COSTS) and rsjax.CostModel() == COSTS


def test_format_cost(worked_example):
  text = rsjax.format_cost(rsjax.hardware_cost(_report(worked_example), HW))
  lines = text.splitlines()
  assert lines[0].split()[:2] == ["layout", "energy"]
  assert [l.split()[0] for l in lines[2:5]] == ["dense", "pruned", "shared"]
  assert lines[4].endswith("1.90x")
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
