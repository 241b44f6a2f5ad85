"""Tests of experiments/study/results_data.py on synthetic results.json files."""

import json
import os

import jax
import numpy as np
import pytest

from experiments.study import results
from experiments.study import results_data
from experiments.study import results_tables
import rsjax
from study_results_fixtures import (
    costed_run,
    fixture_runs,
    priced,
    priced_runs,
    update_config,
    update_run,
    write_run)


def test_variants_and_rows(tmp_path):
  runs = results_data.load_runs(fixture_runs(tmp_path))
  assert [r["name"] for r in runs] == [
      "lenet5_base", "lenet5_paper_p0.6_k4", "lenet5_prune_p0.5",
      "lenet5_share_k2", "lenet5_ste_p0.8_k2", "mlp_share_k4"]
  rows = {r["name"]: results_data.row(r) for r in runs}
  assert rows["lenet5_prune_p0.5"]["variant"] == "prune only"
  assert rows["lenet5_prune_p0.5"]["rules"] == "kernel$ sparsity=0.5"
  assert rows["lenet5_prune_p0.5"]["method"] == "-"
  assert rows["lenet5_share_k2"]["variant"] == "share only"
  assert rows["lenet5_paper_p0.6_k4"]["variant"] == "prune + share paper"
  assert rows["lenet5_base"]["variant"] == "prune + share ste"
  assert rows["lenet5_base"]["baseline"]
  assert abs(rows["lenet5_share_k2"]["loss_pp"] - 0.7) < 1e-9
  assert rows["lenet5_ste_p0.8_k2"]["ou_ratio"] == float("inf")
  assert rows["mlp_share_k4"]["emulated"] is None


def test_headline_and_pareto(tmp_path):
  rows = [results_data.row(r)
          for r in results_data.load_runs(fixture_runs(tmp_path))]
  lenet = [r for r in rows if r["model"] == "lenet5"]
  # share k2 (6x) loses 0.7 pp and ste p0.8 20 pp: the paper point wins.
  assert results_data.headline(lenet)["name"] == "lenet5_paper_p0.6_k4"
  assert results_data.headline(
      [r for r in rows if r["model"] == "mlp"]) is None
  front = [r["name"] for r in results_data.pareto_front(lenet)]
  assert front == ["lenet5_prune_p0.5", "lenet5_base",
                   "lenet5_paper_p0.6_k4", "lenet5_ste_p0.8_k2"]


def test_hardware_cost_reads_the_old_cost_key():
  new, old = priced_runs()[:2]
  assert results_data.hardware_cost(new) is new["hardware_cost"]
  assert results_data.hardware_cost(old) is old["cost"]
  assert results_data.hardware_cost({"accuracy": {}}) is None
  # Each run in the layout its model uses.
  assert results_data.row(new)["layout"] == "shared"
  assert results_data.row(new)["energy_pj"] == 300e3
  assert results_data.row(old)["layout"] == "pruned"
  assert results_data.row(old)["energy_pj"] == 600e3
  assert results_data.row(old)["latency_ns"] == 60e3
  assert results_data.layout_cost(old, "dense")["energy_pj"] == 1000e3
  unpriced = costed_run("u", prune=0.5, k=None, compressed=0.9)
  assert results_data.row(unpriced)["energy_pj"] is None
  assert results_tables.energy_table([unpriced]) == ""


def test_batchnorm_kept_runs_are_their_own_variant(tmp_path):
  runs = fixture_runs(tmp_path)
  write_run(runs, "lenet5_bn_share_k2", prune=0.0, k=2, compressed=0.897,
         ou_ratio=6.0)
  update_config(runs, "lenet5_bn_share_k2", "compress", fold_bn=False)
  loaded = {r["name"]: r for r in results_data.load_runs(runs)}
  assert results_data.variant(loaded["lenet5_bn_share_k2"]) == (
      "share only (BN kept)")
  assert results_data.variant(loaded["lenet5_share_k2"]) == "share only"
  text = results.write_report(runs, str(tmp_path / "R.md"))
  assert "| lenet5_bn_share_k2 | share only (BN kept) |" in text
  # A prune-only run with BN kept has no k and no sharing method either.
  update_config(runs, "lenet5_prune_p0.5", "compress", fold_bn=False)
  text = results.write_report(runs, str(tmp_path / "R.md"))
  assert ("| lenet5_prune_p0.5 | prune only (BN kept) | kernel$ sparsity=0.5"
          " | - |") in text


def test_rules_are_shown_in_the_rules_column(tmp_path):
  runs = fixture_runs(tmp_path)
  write_run(runs, "lenet5_share_k2_lk", prune=0.0, k=2, compressed=0.897,
         ou_ratio=5.0)
  update_run(runs, "lenet5_share_k2_lk", lambda p: p["recipe"].update(
      rules=["^conv1/", "kernel$ k=2"]))
  rows = {r["name"]: results_data.row(r) for r in results_data.load_runs(runs)}
  assert rows["lenet5_share_k2_lk"]["rules"] == "^conv1/; kernel$ k=2"
  text = results.write_report(runs, str(tmp_path / "R.md"))
  assert "| share only | ^conv1/; kernel$ k=2 | ste |" in text
  # A regex's '|' is escaped so the table keeps its columns.
  update_run(runs, "lenet5_share_k2_lk", lambda p: p["recipe"].update(
      rules=["conv1|fc", "kernel$ k=2"]))
  text = results.write_report(runs, str(tmp_path / "R.md"))
  assert "| share only | conv1\\|fc; kernel$ k=2 | ste |" in text


def test_distillation_is_shown_in_the_method_column(tmp_path):
  runs = fixture_runs(tmp_path)
  update_run(runs, "lenet5_share_k2",
          lambda p: p["recipe"].update(distill=[0.5, 2.0]))
  update_run(runs, "lenet5_prune_p0.5",
          lambda p: p["recipe"].update(distill=[0.7, 4.0]))
  rows = {r["name"]: results_data.row(r) for r in results_data.load_runs(runs)}
  assert rows["lenet5_share_k2"]["method"] == "ste + KD 0.5 (T=2)"
  assert rows["lenet5_prune_p0.5"]["method"] == "KD 0.7 (T=4)"
  assert rows["lenet5_paper_p0.6_k4"]["method"] == "paper"
  # The product's name for the paper's loop is 'distance'; the study's
  # tables call it after the paper, as its kept runs do.
  update_run(runs, "lenet5_paper_p0.6_k4",
             lambda p: p["recipe"].update(sharing="distance"))
  distance = {r["name"]: r for r in results_data.load_runs(runs)}[
      "lenet5_paper_p0.6_k4"]
  assert results_data.row(distance)["method"] == "paper"
  assert results_data.variant(distance) == "prune + share paper"


def test_headline_takes_the_mean_over_seeds(tmp_path):
  # A 20x point whose seed 0 loses 0.2 pp and seeds 1-2 lose 1.0 and
  # 1.3 pp (mean 0.83): not a headline, though one seed alone would be.
  runs = fixture_runs(tmp_path)
  for seed, comp in ((0, 0.898), (1, 0.890), (2, 0.887)):
    name = f"lenet5_share_k1_s{seed}"
    write_run(runs, name, prune=0.0, k=1, compressed=comp, ou_ratio=20.0)
    update_config(runs, name, "compress", fold_bn=True)
    path = os.path.join(runs, name, "results.json")
    payload = json.load(open(path))
    payload["config"]["seed"] = seed
    json.dump(payload, open(path, "w"))
  loaded = results_data.load_runs(runs)
  points = {p["name"]: p for p in results_data.point_rows(loaded)}
  mean = points["lenet5_share_k1_s0 (mean of 3 seeds)"]
  assert mean["run"] == "lenet5_share_k1_s0"
  assert mean["loss_pp"] == pytest.approx((0.2 + 1.0 + 1.3) / 3)
  assert "lenet5_share_k1_s1" not in points
  lenet = [p for p in points.values() if p["model"] == "lenet5"]
  assert results_data.headline(lenet)["name"] == "lenet5_paper_p0.6_k4"
  # Seed 0 alone would have been the headline.
  rows = [results_data.row(r) for r in loaded if r["model"] == "lenet5"]
  assert results_data.headline(rows)["name"] == "lenet5_share_k1_s0"
  text = results.write_report(runs, str(tmp_path / "R.md"))
  assert "| lenet5 | fashion_mnist | lenet5_paper_p0.6_k4 |" in text


@pytest.fixture(scope="module")
def layer_report():
  """A report of every kind of layer: dense, pruned and shared, each on
  one crossbar and over several (default hardware: 14 row-blocks x 16
  groups a crossbar)."""
  hw = rsjax.HardwareSpec()
  rng = np.random.default_rng(0)

  def pruned(rows, cols):  # every third 9x2 block of every third row-block
    kernel = rng.normal(size=(rows, cols)).astype(np.float32)
    for r in range(0, rows, 27):
      for c in range(0, cols, 6):
        kernel[r:r + 9, c:c + 2] = 0.0
    return kernel

  layers = {
      "dense": rng.normal(size=(512, 512)).astype(np.float32),
      "small_pruned": pruned(90, 30), "big_pruned": pruned(512, 512),
      "small_shared": rsjax.compress_kernel(
          rng.normal(size=(90, 30)).astype(np.float32), hw, 4,
          key=jax.random.key(0)),
      "big_shared": rsjax.compress_kernel(
          rng.normal(size=(512, 512)).astype(np.float32), hw, 4,
          key=jax.random.key(1))}
  report = rsjax.compression_report(layers, hw, {"dense": 3, "big_shared": 2})
  return hw, json.loads(json.dumps(report))


def _without_crossbar_ous(layers):
  return {name: {k: v for k, v in fig.items()
                 if not k.startswith("crossbar_ous_")}
          for name, fig in layers.items()}


def test_crossbar_ous_derived_only_where_the_counts_give_it(layer_report):
  hw, report = layer_report
  unknown = {"big_pruned": {"pruned", "shared"}, "big_shared": {"shared"}}
  for name, fig in _without_crossbar_ous(report["layers"]).items():
    derived = results_data.crossbar_ous(fig, hw)
    assert {k for k, v in derived.items() if v is None} == unknown.get(
        name, set()), name
    for layout, count in derived.items():
      if count is not None:
        assert count == report["layers"][name][f"crossbar_ous_{layout}"]
  # Stored figures are taken as they are.
  fig = report["layers"]["big_shared"]
  assert results_data.crossbar_ous(fig, hw)["shared"] == fig[
      "crossbar_ous_shared"]


def test_runs_are_priced_from_their_layer_report(layer_report):
  hw, report = layer_report
  today = rsjax.hardware_cost(report, hw)["layouts"]
  stale = priced(costed_run("s", prune=0.0, k=4, compressed=0.8),
                 shared=1.0, dense=2.0, pruned=2.0)
  run = dict(stale, layers=report["layers"], hardware=hw.to_dict())
  # A report with every crossbar_ous: today's cost exactly, not the stored.
  assert results_data.hardware_cost(run) == today
  assert results_data.row(run)["energy_pj"] == today["shared"]["energy_pj"][
      "total"]
  # Without them: energy and area as today's, latency where determined.
  old = dict(run, layers=_without_crossbar_ous(report["layers"]))
  cost = results_data.hardware_cost(old)
  for layout in ("dense", "pruned", "shared"):
    assert cost[layout]["energy_pj"] == today[layout]["energy_pj"]
    assert cost[layout]["area_um2"] == today[layout]["area_um2"]
  assert cost["dense"]["latency_ns"] == today["dense"]["latency_ns"]
  assert cost["dense"]["interval_ns"] == today["dense"]["interval_ns"]
  assert cost["pruned"]["latency_unknown"] == ["big_pruned"]
  assert cost["shared"]["latency_unknown"] == ["big_pruned", "big_shared"]
  assert cost["shared"]["latency_ns"] is cost["shared"]["interval_ns"] is None
  assert "latency_unknown" not in cost["dense"]
  # Its table says n/a and names the re-run.
  base = dict(old, name="b", config=dict(
      old["config"], train={"init_checkpoint": ""}),
              accuracy=dict(old["accuracy"], compressed=0.7))
  table = results_tables.energy_table([base, dict(old, name="s")])
  shared = next(line for line in table.splitlines()
                if line.startswith("| shared |"))
  assert "| n/a | n/a |" in shared
  note = results_tables.latency_note([base, dict(old, name="s")])
  assert "crossbar_ous_*" in note and "--only='^(s)$'" in note
  assert results_tables.latency_note([base, dict(run, name="s")]) == ""
