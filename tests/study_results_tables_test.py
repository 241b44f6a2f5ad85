"""Tests of experiments/study/results_tables.py on synthetic results.json files."""

import json
import os

import pytest

from experiments.study import results
from experiments.study import results_data
from experiments.study import results_tables
from study_results_fixtures import (
    costed_run, fixture_runs, priced, priced_runs, update_run, write_run)


def test_cost_table_rows_and_ratios():
  runs = [
      costed_run("b", prune=0.2, k=8, compressed=0.89, base=True),
      costed_run("p", prune=0.5, k=None, compressed=0.898, kept=50,
              stored=50),
      costed_run("s", prune=0.0, k=4, compressed=0.80, kept=100, stored=25),
      costed_run("s2", prune=0.0, k=8, compressed=0.85, kept=100, stored=40),
  ]
  table = results_tables.cost_table(runs).splitlines()
  assert table[0].startswith("| layout | run |")
  cells = [[c.strip() for c in line.split("|")[1:-1]] for line in table[2:]]
  assert [c[0] for c in cells] == ["dense", "pruned", "shared",
                                   "pruned + shared"]
  assert cells[0][3:8] == ["10", "1,000", "8,000", "8,000", "0"]
  # Prune only within 0.5 pp: 50 stored OUs = 2x fewer activations.
  assert cells[1][1] == "p" and cells[1][4] == "500 (2.00x)"
  # No share-only point within 0.5 pp: the smallest loss is shown, marked.
  assert cells[2][1] == "s2 (none within 0.5 pp)"
  assert cells[2][5] == "3,200 (2.50x)" and cells[2][6] == "8,000"
  # The baseline run is the only prune + share point (1 pp loss).
  assert cells[3][1].startswith("b (none within")
  assert cells[3][6] == "6,400 (1.25x)"
  assert results_tables.cost_table([runs[1]]) == ""  # no baseline: no table


def test_energy_table_rows_and_ratios():
  runs = priced_runs()
  table = results_tables.energy_table(runs).splitlines()
  assert table[0].startswith("| layout | run | loss (pp) | run's layout | "
                             "energy (nJ) |")
  cells = [[c.strip() for c in line.split("|")[1:-1]] for line in table[2:]]
  assert all(len(c) == table[0].count("|") - 1 for c in cells)
  # The rows (and points) of the counts table.
  assert [c[:2] for c in cells] == [
      ["dense", "b"], ["pruned", "p"], ["shared", "s2 (none within 0.5 pp)"],
      ["pruned + shared", "b (none within 0.5 pp)"]]
  assert cells[0][3:9] == ["dense", "1,000.0", "500.0", "0.00", "100.0",
                           "50.0"]
  # p prunes only (its 'cost' key): the pruned layout, 600 nJ.
  assert cells[1][3:5] == ["pruned", "600.0 (1.67x)"]
  assert cells[1][9:] == ["0.1000", "0.3000"]  # same crossbars as dense
  # s2 and b share: the shared layout, with the index-and-add energy.
  assert cells[2][3:6] == ["shared", "800.0 (1.25x)", "400.0 (1.25x)"]
  assert cells[2][6] == "0.01"
  assert cells[3][3:5] == ["shared", "300.0 (3.33x)"]
  assert cells[3][7] == "30.0 (3.33x)"
  assert cells[3][9:] == ["0.0500 (2.00x)", "0.2500 (1.20x)"]
  # A layout without a run: one empty row of the table's width.
  no_share = [r for r in runs if r["name"] not in ("s", "s2")]
  row = results_tables.energy_table(no_share).splitlines()[4]
  assert row.startswith("| shared | no run |")
  assert row.count("|") == table[0].count("|")


def test_seed_table_groups_points_that_differ_only_in_seed(tmp_path):
  runs = fixture_runs(tmp_path)
  for seed, comp in ((1, 0.890), (2, 0.887)):
    name = f"lenet5_share_k2_s{seed}"
    write_run(runs, name, prune=0.0, k=2, compressed=comp, ou_ratio=6.0)
    path = os.path.join(runs, name, "results.json")
    payload = json.load(open(path))
    payload["config"]["seed"] = seed
    json.dump(payload, open(path, "w"))
  # A rerun of seed 1 under another name is not another seed.
  write_run(runs, "lenet5_share_k2_s1_rerun", prune=0.0, k=2, compressed=0.5)
  path = os.path.join(runs, "lenet5_share_k2_s1_rerun", "results.json")
  payload = json.load(open(path))
  payload["config"]["seed"] = 1
  json.dump(payload, open(path, "w"))
  # Same config and seed but another baseline (float accuracy): not grouped.
  write_run(runs, "lenet5_share_k2_rebased", prune=0.0, k=2, float_acc=0.91)
  loaded = results_data.load_runs(runs)
  groups = results_data.seed_groups(loaded)
  assert [[r["name"] for r in g] for g in groups] == [
      ["lenet5_share_k2", "lenet5_share_k2_s1", "lenet5_share_k2_s2"]]
  table = results_tables.seed_table(loaded).splitlines()
  # Losses 0.7, 1.0, 1.3 pp: mean 1.00, std 0.30.
  assert table[2].startswith(
      "| lenet5 | lenet5_share_k2, lenet5_share_k2_s1, lenet5_share_k2_s2 "
      "| share only | kernel$ k=2 | ste | 0, 1, 2 | 6.00 | 0.8900 ± 0.0030 | "
      "+1.00 ± 0.30 | +0.70 to +1.30 |")
  text = results.write_report(runs, str(tmp_path / "R.md"))
  assert "## Seeds: points run with several seeds" in text


def test_seeds_with_their_own_allocation_show_each_plan(tmp_path):
  # share.allocate_ou_ratio: each seed probes and allocates its own k, so
  # the seeds of one point reach different ratios with different rules.
  runs = fixture_runs(tmp_path)
  plans = {0: (["^a$ k=2", "^b$ k=4"], 10.0), 1: (["^a$ k=4", "^b$ k=2"], 11.0),
           2: (["^a$ k=4", "^b$ k=2"], 12.5)}
  for seed, (rules, ratio) in plans.items():
    name = "lenet5_a10_share_k4" + (f"_s{seed}" if seed else "")
    write_run(runs, name, prune=0.0, k=4, compressed=0.89, ou_ratio=ratio)

    def allocate(p, seed=seed, rules=rules, ratio=ratio):
      p["config"]["seed"] = seed
      p["config"]["share"]["allocate_ou_ratio"] = 10.0
      p["recipe"].update(allocate_ou_ratio=10.0, allocated_rules=rules)
      priced(p, shared=1000.0 / ratio)  # fewer stored OUs, less energy

    update_run(runs, name, allocate)
  loaded = results_data.load_runs(runs)
  row = next(r for r in results_tables.seed_table(loaded).splitlines()
             if "lenet5_a10_share_k4," in r)
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert cells[3] == (
      "seed 0: allocated for 10x: ^a$ k=2; ^b$ k=4 / "
      "seed 1: allocated for 10x: ^a$ k=4; ^b$ k=2 / "
      "seed 2: allocated for 10x: ^a$ k=4; ^b$ k=2")
  assert cells[6] == "11.17 (10.00 to 12.50)"
  point = next(p for p in results_data.point_rows(loaded)
               if p["run"] == "lenet5_a10_share_k4")
  assert point["ou_ratio"] == pytest.approx(33.5 / 3)
  nj = [1000.0 / r for _, r in plans.values()]
  assert point["layout"] == "shared"
  assert point["energy_pj"] == pytest.approx(1e3 * sum(nj) / 3)
  assert point["latency_ns"] == pytest.approx(1e2 * sum(nj) / 3)
  assert point["rules"] == cells[3]
  # Seeds with one plan keep its label and ratio as they are.
  same = [results_data.row(r) for r in loaded
          if r["name"] in ("lenet5_a10_share_k4_s1", "lenet5_a10_share_k4_s2")]
  assert results_data.group_rules(same, [1, 2]) == same[0]["rules"]
  assert results_data.group_mean(same[:1] * 2, "ou_ratio") == 11.0
