"""Tests of experiments/study/sweeps.py on a small synthetic compressed model, and
its command line on an exported LeNet-5 with real Fashion-MNIST images."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rsjax

from experiments import models
from experiments.study import sweep_report
from experiments.study import sweeps
from experiments.configs import default
# The session fixture, imported so pytest finds it in this module.
from experiments_fixtures import fmnist_data_dir  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HW = rsjax.HardwareSpec()


def _subject(shared_layers=True, n=64, use_bn=False):
  """An MLP 36-24-10 whose first layer is shared (k=2), random inputs;
  with ``use_bn`` a BatchNorm (non-trivial statistics) follows it."""
  model = models.create_model("mlp", num_classes=10, hidden=(24,),
                              use_bn=use_bn)
  variables = models.init_variables(model, jax.random.key(0), (6, 6, 1))
  params = jax.tree_util.tree_map(lambda x: x, variables)
  if use_bn:  # per-channel statistics, so that folding is not a uniform
    # scale (which would quantize to the same integers)
    stats_rng = np.random.default_rng(5)
    params["batch_stats"] = jax.tree_util.tree_map(
        lambda a: jnp.asarray(stats_rng.uniform(0.3, 3.0, a.shape),
                              a.dtype), params["batch_stats"])
  path = "params/fc1/dense/kernel"
  layer = rsjax.compress_kernel(params["params"]["fc1"]["dense"]["kernel"],
                                HW, k=2, key=jax.random.key(1))
  params["params"]["fc1"]["dense"]["kernel"] = layer.to_kernel()
  rng = np.random.default_rng(0)
  images = rng.normal(size=(n, 6, 6, 1)).astype(np.float32)
  # Labels from the float model, so accuracy starts at 1 and faults show.
  labels = np.asarray(jnp.argmax(model.apply(params, images), -1), np.int32)
  calibration = rng.normal(size=(32, 6, 6, 1)).astype(np.float32)
  return sweeps.Subject("tiny", model, params,
                        {path: layer} if shared_layers else {}, HW, images,
                        labels, calibration)


def test_grid_lossless_point_equals_quantized_model():
  em = sweeps.Emulator(_subject(), batch_size=40)  # 64 = 40 + padded 24
  # OU height 9: the tabulated dataflow; 16: too many input patterns for a
  # table, so the direct one.
  rows = sweeps.grid(em, ou_rows=(9, 16), cell_bits=(4,), adc_bits=(3,))
  assert [(r["ou_rows"], r["cell_bits"]) for r in rows] == [(9, 4), (16, 4)]
  for r in rows:
    hw = HW.replace(ou_rows=r["ou_rows"], cell_bits=r["cell_bits"])
    assert r["lossless_adc_bits"] == hw.lossless_adc_bits
    assert 2 ** r["lossless_adc_bits"] - 1 >= hw.partial_sum_max
    assert 2 ** (r["lossless_adc_bits"] - 1) - 1 < hw.partial_sum_max
    bits = [p["adc_bits"] for p in r["adc"]]
    assert bits == [3, r["lossless_adc_bits"]]
    lossless = r["adc"][-1]
    assert lossless["lossless"] and lossless["max_abs_diff_vs_quantized"] == 0
    assert lossless["accuracy"] == r["quantized"]
    assert not r["adc"][0]["lossless"]


def test_lossless_adc_bits():
  assert HW.lossless_adc_bits == 5  # p_max 27 (docs/hardware.md)
  assert HW.replace(ou_rows=32, cell_bits=4).lossless_adc_bits == 9


@pytest.mark.parametrize("use_bn", [False, True])
def test_index_and_add_equals_dense_layout(use_bn):
  # With BatchNorm kept after the shared layer, the dense layout must keep
  # it digital too (folding it in quantizes another matrix).
  em = sweeps.Emulator(_subject(use_bn=use_bn), batch_size=64)
  out = sweeps.equality(em, adc_bits=(3, 5, 4))
  assert [o["adc_bits"] for o in out] == [3, 4, 5]
  for o in out:
    assert o["max_abs_diff"] == 0 and o["shared"] == o["dense"]
  # Energy per inference of both layouts (an MLP: one MVM a layer); no
  # 3-bit ADC figure.
  layers = em.subject.layers
  assert out[0]["energy_pj"] is None
  for o in out[1:]:
    hw = HW.replace(adc_bits=o["adc_bits"])
    cost = rsjax.hardware_cost(layers, hw)["layouts"]
    assert o["energy_pj"] == {k: cost[k]["energy_pj"]["total"]
                              for k in ("shared", "dense")}
    assert o["energy_pj"]["shared"] < o["energy_pj"]["dense"]
  assert out[1]["energy_pj"]["dense"] < out[2]["energy_pj"]["dense"]


def test_faults_are_seeded_and_hurt():
  em = sweeps.Emulator(_subject(), batch_size=64)
  kwargs = dict(stuck_rates=(0.0, 0.3), program_sigmas=(1.0,), seeds=3)
  out = sweeps.faults(em, **kwargs)
  again = sweeps.faults(em, **kwargs)
  assert out == again
  by = {(o["layout"], o["kind"], o["value"]): o for o in out}
  assert set(by) == {(layout, kind, v) for layout in ("shared", "dense")
                     for kind, v in (("stuck", 0.0), ("stuck", 0.3),
                                     ("program_sigma", 1.0))}
  ideal = em.accuracy(em.logits(em.program(HW, shared=True)))
  for layout in ("shared", "dense"):
    clean = by[(layout, "stuck", 0.0)]
    assert clean["accuracies"] == [ideal] * 3 and clean["std"] == 0
    hurt = by[(layout, "stuck", 0.3)]
    assert hurt["mean"] < ideal and len(set(hurt["accuracies"])) > 1
    assert hurt["min"] <= hurt["mean"] <= hurt["max"]
    assert hurt["std"] == pytest.approx(np.std(hurt["accuracies"], ddof=1))


def test_unknown_study_and_fault_kind():
  with pytest.raises(ValueError, match="unknown studies"):
    sweeps.run_sweeps(_subject(), studies=["grid", "nope"])
  with pytest.raises(ValueError, match="unknown fault kind"):
    sweeps._fault_device("melted", 0.1)


def test_missing_export_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="compressed_model.rsjax.npz"):
    sweeps.load_subject(str(tmp_path), limit=10)


def test_command_line_on_an_exported_lenet5(tmp_path, fmnist_data_dir):
  """A workdir as the pipeline leaves it (config.json and the export)."""
  config = default.get_config()
  config.data.data_dir = fmnist_data_dir
  run = tmp_path / "runs" / "lenet5_x"
  run.mkdir(parents=True)
  (run / "config.json").write_text(json.dumps(config.to_dict()))
  model = models.create_model("lenet5", num_classes=10, use_bn=False)
  params = models.init_variables(model, jax.random.key(0), (28, 28, 1))
  path = "params/fc2/dense/kernel"
  layer = rsjax.compress_kernel(params["params"]["fc2"]["dense"]["kernel"],
                                HW, k=3, key=jax.random.key(1))
  params["params"]["fc2"]["dense"]["kernel"] = layer.to_kernel()
  rsjax.save_compressed(str(run / "compressed_model.rsjax.npz"),
                        {path: layer}, HW, params=params)
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  common = [sys.executable, "-m", "experiments.study.sweeps", f"--run={run}",
            "--limit=50", "--calibration=20", "--batch_size=25",
            "--studies=equality"]
  proc = subprocess.run(common + ["--adc_bits=4"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads((tmp_path / "runs" / "sweeps" / "lenet5_x.json")
                   .read_text())
  assert out["run"] == "lenet5_x" and out["images"] == 50
  assert out["calibration_images"] == 20 and "grid" not in out
  assert [e["adc_bits"] for e in out["equality"]] == [4]
  assert out["equality"][0]["max_abs_diff"] == 0
  assert out["command"].startswith("python -m experiments.study.sweeps --run=")
  assert out["compression"]["stored_ous"] < out["compression"]["dense_ous"]

  # A second part (another ADC resolution), then both merged into one.
  part2 = tmp_path / "part2.json"
  proc = subprocess.run(common + ["--adc_bits=5", f"--out={part2}"],
                        cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  merged = tmp_path / "merged.json"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.study.sweeps",
       f"--merge={tmp_path / 'runs' / 'sweeps' / 'lenet5_x.json'},{part2}",
       f"--out={merged}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  both = json.loads(merged.read_text())
  assert [e["adc_bits"] for e in both["equality"]] == [4, 5]
  assert len(both["commands"]) == 2 and "--adc_bits=5" in both["command"]


def _part(**over):
  part = {"run": "r", "hardware": {"ou_rows": 9}, "images": 10,
          "calibration_images": 5, "float": 0.9,
          "timing_s": {"grid": 2.0, "total": 3.0}, "command": "c1",
          "grid": [{"ou_rows": 9, "cell_bits": 2, "adc": []}]}
  part.update(over)
  return part


def test_merge_joins_parts_and_refuses_mismatches():
  b = _part(grid=[{"ou_rows": 16, "cell_bits": 2, "adc": []}],
            faults=[{"layout": "shared", "kind": "stuck", "value": 0.01}],
            timing_s={"grid": 1.0, "faults": 4.0, "total": 5.5},
            command="c2")
  out = sweeps.merge([_part(), b])
  assert [(g["ou_rows"], g["cell_bits"]) for g in out["grid"]] == [
      (9, 2), (16, 2)]
  assert len(out["faults"]) == 1 and "equality" not in out
  assert out["timing_s"] == {"grid": 3.0, "faults": 4.0, "total": 8.5}
  assert out["commands"] == ["c1", "c2"] and out["command"] == "c1 ; c2"
  # A merged file merges again: its commands carry over.
  again = sweeps.merge([out, _part(grid=[], command="c3")])
  assert again["commands"] == ["c1", "c2", "c3"]
  with pytest.raises(ValueError, match="nothing to merge"):
    sweeps.merge([])
  with pytest.raises(ValueError, match="another images"):
    sweeps.merge([_part(), _part(images=11, grid=[])])
  # Float accuracy one image apart (10 images: 0.1) merges and is recorded;
  # two images apart is another model.
  near = sweeps.merge([_part(), _part(float=0.8, grid=[])])
  assert near["float"] == 0.9 and near["float_parts"] == [0.9, 0.8]
  assert "float_parts" not in out
  with pytest.raises(ValueError, match="more than one image apart"):
    sweeps.merge([_part(), _part(float=0.7, grid=[])])
  # Parts that did not finish are named in the result, also after a
  # second merge.
  partial = sweeps.merge([_part()], missing=["faults_stuck0.01"])
  assert partial["missing_parts"] == ["faults_stuck0.01"]
  assert sweeps.merge([partial, b])["missing_parts"] == ["faults_stuck0.01"]
  assert "missing_parts" not in out
  with pytest.raises(ValueError, match=r"grid entry \(9, 2\) is in part 0 "
                     "and part 1"):
    sweeps.merge([_part(), _part()])


def test_with_signed_keeps_the_weight_block():
  subject = _subject(n=8)
  diff = sweeps.with_signed(subject, "differential")
  assert diff.hw.signed == "differential"
  assert diff.hw.block_shape == subject.hw.block_shape
  em = sweeps.Emulator(diff, batch_size=8)
  assert em.accuracy(em.logits(em.program(diff.hw, shared=True))) >= 0.5
  # 5-bit weights on 2-bit cells: 3 slices offset, 2 differential.
  wide = dataclasses.replace(subject, hw=HW.replace(weight_bits=5, ou_cols=6))
  with pytest.raises(ValueError, match="changes the weight block"):
    sweeps.with_signed(wide, "differential")


def test_device_studies_on_a_small_model(tmp_path):
  em = sweeps.Emulator(_subject(n=32), batch_size=32)
  result = sweeps.run_sweeps(
      em.subject, studies=("onoff", "wires", "drift"), batch_size=32,
      device_options={"ratios": (10.0, 0.0), "onoff_r_wire": 1e-3,
                      "wire_ou_rows": (9, 16), "resistances": (0.0, 1e-2),
                      "drift_times": (1.0, 3.1536e7), "device_seeds": 2},
      log=lambda *_: None)
  onoff = result["onoff"]
  assert {(r["layout"], r["effect"]) for r in onoff} == {
      (layout, effect) for layout in ("shared", "dense")
      for effect in ("wan2022", "wires")}
  assert all(r["seeds"] == (2 if r["effect"] == "wan2022" else 1)
             for r in onoff)
  wires = result["wires"]
  # The shared layout only at the run's own OU height (its blocks).
  assert {(r["layout"], r["ou_rows"]) for r in wires} == {
      ("shared", 9), ("dense", 9), ("dense", 16)}
  for r in wires:
    assert r["adc_bits"] == HW.replace(ou_rows=r["ou_rows"]).lossless_adc_bits
    if r["r_wire"] == 0:
      # A lossless ADC and ideal wires: the quantized model, whose labels
      # these are (up to rounding of the quantized weights).
      assert r["accuracy"] >= 0.8 and r["fall_all_on"] == 0
  for key in ("fall_all_on_alone", "fall_all_on"):
    falls = {r["ou_rows"]: r[key] for r in wires if r["r_wire"]}
    assert 0 < falls[9] < falls[16]
  # The wire crossed to reach the worst-placed OU adds to its own.
  assert all(r["fall_all_on"] > r["fall_all_on_alone"] for r in wires
             if r["r_wire"])
  drift = result["drift"]
  assert {(r["compensate"], r["t_s"]) for r in drift} == {
      (c, t) for c in (False, True) for t in (1.0, 3.1536e7)}
  one_s = [r for r in drift if r["t_s"] == 1.0]
  # t = t0: no drift, with or without compensation.
  assert len({r["mean"] for r in one_s if r["layout"] == "dense"}) == 1
  with pytest.raises(ValueError, match="unknown device_options"):
    sweeps.run_sweeps(em.subject, studies=("onoff",),
                      device_options={"ratio": (10,)})
  merged = sweeps.merge([result, {**result, "onoff": [], "wires": [],
                                  "drift": []}])
  assert len(merged["wires"]) == len(wires)
  # The report's tables: one row per ratio, OU height and layout, time.
  table = sweep_report.onoff_table(result)
  assert table.count("\n| ") == 2 and "| inf |" in table
  assert "programming error (Wan 2022), shared" in table
  table = sweep_report.wires_table(result)
  assert "| 16 | dense | 6 |" in table and "% alone)" in table
  table = sweep_report.drift_table(result)
  assert "| 1 year |" in table and "dense, compensated" in table
  text = sweep_report.render([{**result, "source": "tiny"}],
                             str(tmp_path / "R.md"))
  assert "IR drop against the OU height" in text
