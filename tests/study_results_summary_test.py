"""Tests of experiments/study/results_summary.py on synthetic results.json files."""

import json

import pytest

from experiments.study import results
import study_results_fixtures as fixtures
from study_results_fixtures import (
    fixture_runs, make_hwaware, update_run, write_run)

COMMIT = fixtures.COMMIT


def test_results_json_has_headline_and_pareto(tmp_path):
  runs = fixture_runs(tmp_path)
  for seed, comp in ((1, 0.897), (2, 0.894)):
    name = f"lenet5_paper_p0.6_k4_s{seed}"
    write_run(runs, name, method="paper", prune=0.6, k=4, compressed=comp,
           ou_ratio=12.0)
    update_run(runs, name, lambda p, s=seed: p["config"].update(seed=s))
  results.write_report(runs, str(tmp_path / "R.md"))
  summary = json.load(open(tmp_path / "R.json"))
  assert summary["commits"] == {COMMIT: [
      "lenet5_base", "lenet5_paper_p0.6_k4", "lenet5_paper_p0.6_k4_s1",
      "lenet5_paper_p0.6_k4_s2", "lenet5_prune_p0.5", "lenet5_share_k2",
      "lenet5_ste_p0.8_k2", "mlp_share_k4"]}
  head = summary["models"]["lenet5"]["headline"]
  # Losses 0.4, 0.3, 0.6 pp: mean 0.433, std 0.153.
  assert head["ou_ratio"] == 12.0 and head["seeds"] == [0, 1, 2]
  assert head["runs"] == ["lenet5_paper_p0.6_k4", "lenet5_paper_p0.6_k4_s1",
                          "lenet5_paper_p0.6_k4_s2"]
  assert head["loss_pp_mean"] == pytest.approx(1.3 / 3)
  assert head["loss_pp_std"] == pytest.approx(0.1527525, rel=1e-5)
  assert summary["models"]["mlp"]["headline"] is None
  pareto = [p["run"] for p in summary["models"]["lenet5"]["pareto"]]
  assert pareto[0] == "lenet5_prune_p0.5" and "lenet5_ste_p0.8_k2" in pareto


def test_hwaware_runs_get_their_own_table(tmp_path):
  runs_dir = str(tmp_path / "runs")
  write_run(runs_dir, "lenet5_base", init="", compressed=0.896, ou_ratio=5.0)
  # A worse "compressed" accuracy and a higher ratio: as a compression
  # point it would take the Pareto front; it must not.
  write_run(runs_dir, "lenet5_hw3_clip", compressed=0.40, ou_ratio=50.0)
  update_run(runs_dir, "lenet5_hw3_clip",
          lambda p: make_hwaware(p, 3, "clip", 0.151, 0.80, 0.899))
  write_run(runs_dir, "lenet5_hw4_calibrated", compressed=0.88, ou_ratio=50.0)
  update_run(runs_dir, "lenet5_hw4_calibrated",
          lambda p: make_hwaware(p, 4, "calibrated", 0.894, 0.897, 0.899))
  out = str(tmp_path / "R.md")
  text = results.write_report(runs_dir, out)
  compression, hw_part = text.split("## Hardware-aware fine-tune", 1)
  assert "hw3" not in compression and "hw4" not in compression
  lines = [l for l in hw_part.splitlines() if l.startswith("| lenet5")]
  # 4 bits first, then 3; ADC after - lossless before, in pp.
  assert lines[0].rstrip(" |").split(" | ")[2:11] == [
      "4-bit calibrated", "500", "2000", "0.8990", "0.8940", "**0.8970**",
      "-0.20", "0.8800", "0.8970"]
  assert lines[1].split(" | ")[2] == "3-bit clip"
  assert "-9.90" in lines[1]
  with open(str(tmp_path / "R.json")) as f:
    summary = json.load(f)
  assert [h["run"] for h in summary["hwaware"]] == [
      "lenet5_hw4_calibrated", "lenet5_hw3_clip"]
  assert summary["models"]["lenet5"]["headline"]["run"] == "lenet5_base"
  assert all(p["run"] == "lenet5_base"
             for p in summary["models"]["lenet5"]["pareto"])
