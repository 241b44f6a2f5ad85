"""Tests of experiments/study/sweep_report.py on a synthetic sweep result."""

import json
import os

from experiments.study import sweep_report


def _sweep(run="lenet5_x", broken=False):
  grid = []
  for ou, lossless in ((9, 5), (32, 7)):
    adc = [{"adc_bits": b, "accuracy": 0.5 + 0.05 * b, "lossless": b >= lossless}
           for b in (3, 4, 5, 6, 7)]
    for p in adc:
      if p["lossless"]:
        p["accuracy"] = 0.88
        p["max_abs_diff_vs_quantized"] = 0.5 if broken else 0.0
    grid.append({"ou_rows": ou, "cell_bits": 2, "block_shape": [ou, 2],
                 "p_max": 3 * ou, "lossless_adc_bits": lossless,
                 "quantized": 0.88, "adc": adc})
  faults = [{"layout": l, "kind": k, "value": v, "seeds": 16,
             "mean": 0.8, "std": 0.01, "min": 0.78, "max": 0.82,
             "accuracies": [0.8] * 16}
            for l in ("shared", "dense")
            for k, v in (("stuck", 0.01), ("program_sigma", 0.1))]
  return {"run": run, "images": 2000, "calibration_images": 1000,
          "float": 0.9, "command": "python -m experiments.study.sweeps --run=x",
          "hardware": {"ou_rows": 9, "ou_cols": 8, "cell_bits": 2,
                       "weight_bits": 8, "input_bits": 8, "dac_bits": 1,
                       "adc_mode": "clip"},
          "timing_s": {"total": 120.0}, "grid": grid,
          "equality": [{"adc_bits": 3, "shared": 0.5, "dense": 0.5,
                        "max_abs_diff": 0.0, "energy_pj": None},
                       {"adc_bits": 4, "shared": 0.87, "dense": 0.87,
                        "max_abs_diff": 0.0,
                        "energy_pj": {"shared": 12345.0, "dense": 67890.0}}],
          "faults": faults}


def test_tables():
  s = _sweep()
  grid = sweep_report.grid_table(s).splitlines()
  assert grid[0].startswith("| OU rows | cell bits | block | p_max | ADC 3 |")
  assert len(grid) == 4
  assert "**88.00**" in grid[2] and "yes, bit-identical logits (3 ADC points)" in (
      grid[2])
  assert "yes, bit-identical logits (1 ADC point)" in grid[3]
  broken = sweep_report.grid_table(_sweep(broken=True))
  assert "NO: ADC 5: max diff 0.5" in broken
  equality = sweep_report.equality_table(s).splitlines()
  assert equality[0].endswith("| shared energy (nJ) | dense energy (nJ) |")
  assert equality[2:] == ["| 3 | 50.00 | 50.00 | 0 | n/a | n/a |",
                          "| 4 | 87.00 | 87.00 | 0 | 12.3 | 67.9 |"]
  # A sweep from before the energy was added: no energy columns.
  for e in s["equality"]:
    del e["energy_pj"]
  assert sweep_report.equality_table(s).splitlines()[3] == (
      "| 4 | 87.00 | 87.00 | 0 |")
  faults = sweep_report.fault_table(s).splitlines()
  assert faults[2].startswith("| stuck-at rate | 0.01 | 80.00 ± 1.00")
  assert faults[3].startswith("| programming sigma | 0.1 |")


def test_write_report_keeps_text_and_writes_plots(tmp_path):
  sweeps = tmp_path / "sweeps"
  sweeps.mkdir()
  (sweeps / "lenet5_x.json").write_text(json.dumps(_sweep()))
  (sweeps / "notes.txt").write_text("ignored")
  out = tmp_path / "R.md"
  out.write_text("# Results\nhand-written\n")
  sweep_report.write_report(str(sweeps), str(out))
  first = out.read_text()
  assert first.startswith("# Results\nhand-written\n")
  assert sweep_report.BEGIN_MARK in first
  assert "### Emulation sweeps of `lenet5_x`: grid, equality, faults" in first
  for png in ("R_sweep_lenet5_x.png", "R_faults_lenet5_x.png"):
    assert (tmp_path / png).stat().st_size > 1000
  out.write_text(first + "\ntail text\n")
  sweep_report.write_report(str(sweeps), str(out))
  second = out.read_text()
  assert second.count(sweep_report.BEGIN_MARK) == 1
  assert second.endswith("\ntail text\n")
  assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_plots_are_named_after_the_file_not_the_run(tmp_path):
  # Two files of one run (a first grid, then a wider one) must not
  # overwrite each other's plot.
  sweeps = tmp_path / "sweeps"
  sweeps.mkdir()
  (sweeps / "lenet5_x.json").write_text(json.dumps(_sweep()))
  merged = dict(_sweep(), commands=["c1 --part=1", "c2", "c3"],
                missing_parts=["faults_sigma0.5"])
  (sweeps / "lenet5_x_grid.json").write_text(json.dumps(merged))
  out = tmp_path / "R.md"
  sweep_report.write_report(str(sweeps), str(out))
  text = out.read_text()
  for png in ("R_sweep_lenet5_x.png", "R_sweep_lenet5_x_grid.png"):
    assert (tmp_path / png).stat().st_size > 1000
    assert f"]({png})" in text
  # A merge of parts names its first part's command and how many there are.
  assert "(the sum over 3 parts). Merged from 3 parts" in text
  assert "the first part: `c1 --part=1`" in text
  assert "**Incomplete: 1 parts did not finish (faults_sigma0.5).**" in text
