"""Tests of experiments/results.py on tiny synthetic results.json files."""

import json
import os
import subprocess
import sys

import pytest

from experiments import results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


COMMIT = "a" * 40


def _recipe(prune, k, method):
  """The recipe section of a results.json for the old-style point labels:
  k None is prune only, prune 0 share only."""
  if k is None:
    return {"variant": "prune only", "stages": ["prune"],
            "rules": [f"kernel$ sparsity={prune:g}"], "sharing": None,
            "distill": None}
  if not prune:
    return {"variant": "share only", "stages": ["share", "finetune"],
            "rules": [f"kernel$ k={k}"], "sharing": method, "distill": None}
  return {"variant": "prune + share",
          "stages": ["prune", "share", "finetune"],
          "rules": [f"kernel$ k={k} sparsity={prune:g}"], "sharing": method,
          "distill": None}


def _results(name, *, model="lenet5", prune=0.3, k=8, method="ste",
             init="ckpt", float_acc=0.90, compressed=0.898, emulated=0.897,
             ou_ratio=5.0, total=90.0, commit=COMMIT):
  recipe = _recipe(prune, k, method)
  return {
      "name": name, "model": model, "dataset": "fashion_mnist",
      "config": {"recipe": {"stages": recipe["stages"],
                            "rules": recipe["rules"]},
                 "share": {"method": method},
                 "compress": {"fold_bn": True, "distill_weight": 0.0},
                 "train": {"init_checkpoint": init}},
      "recipe": recipe,
      "provenance": {"commit": commit, "dirty": False,
                     "versions": {"jax": "0.x"},
                     "devices": {"kind": "cpu", "count": 1}},
      "accuracy": {"float": float_acc, "quantized": float_acc,
                   "compressed": compressed, "emulated": emulated},
      "compression": {"ou_ratio": ou_ratio, "bit_ratio": 4.0,
                      "fp32_ratio": ou_ratio, "crossbar_ratio": 2.0},
      "timing_s": {"train": total - 80.0, "total": total},
  }


def _write(runs_dir, name, **kwargs):
  path = os.path.join(runs_dir, name)
  os.makedirs(path)
  payload = _results(name, **kwargs)
  del payload["name"]
  with open(os.path.join(path, "results.json"), "w") as f:
    json.dump(payload, f)


def _update(runs_dir, name, fn):
  path = os.path.join(runs_dir, name, "results.json")
  with open(path) as f:
    payload = json.load(f)
  fn(payload)
  with open(path, "w") as f:
    json.dump(payload, f)


def _update_config(runs_dir, name, section, **values):
  """Sets ``config[section][key] = value`` in run NAME's results.json."""
  _update(runs_dir, name,
          lambda p: p["config"].setdefault(section, {}).update(values))


def _fixture(tmp_path):
  runs = str(tmp_path / "runs")
  os.makedirs(runs)
  _write(runs, "lenet5_base", init="", ou_ratio=5.0, total=170.0)
  _write(runs, "lenet5_prune_p0.5", prune=0.5, k=None, compressed=0.899,
         ou_ratio=2.0)
  _write(runs, "lenet5_share_k2", prune=0.0, k=2, compressed=0.893,
         ou_ratio=6.0)
  _write(runs, "lenet5_paper_p0.6_k4", method="paper", prune=0.6, k=4,
         compressed=0.896, ou_ratio=12.0)
  _write(runs, "lenet5_ste_p0.8_k2", prune=0.8, k=2, compressed=0.80,
         ou_ratio="inf")
  _write(runs, "mlp_share_k4", model="mlp", prune=0.0, k=4,
         float_acc=0.88, compressed=0.86, emulated=None, ou_ratio=3.0)
  os.makedirs(os.path.join(runs, "unfinished"))  # no results.json: skipped
  return runs


def test_variants_and_rows(tmp_path):
  runs = results.load_runs(_fixture(tmp_path))
  assert [r["name"] for r in runs] == [
      "lenet5_base", "lenet5_paper_p0.6_k4", "lenet5_prune_p0.5",
      "lenet5_share_k2", "lenet5_ste_p0.8_k2", "mlp_share_k4"]
  rows = {r["name"]: results.row(r) for r in runs}
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
  rows = [results.row(r) for r in results.load_runs(_fixture(tmp_path))]
  lenet = [r for r in rows if r["model"] == "lenet5"]
  # share k2 (6x) loses 0.7 pp and ste p0.8 20 pp: the paper point wins.
  assert results.headline(lenet)["name"] == "lenet5_paper_p0.6_k4"
  assert results.headline(
      [r for r in rows if r["model"] == "mlp"]) is None
  front = [r["name"] for r in results.pareto_front(lenet)]
  assert front == ["lenet5_prune_p0.5", "lenet5_base",
                   "lenet5_paper_p0.6_k4", "lenet5_ste_p0.8_k2"]


def test_write_report_keeps_hand_written_text(tmp_path):
  runs = _fixture(tmp_path)
  out = str(tmp_path / "RESULTS.md")
  with open(out, "w") as f:
    f.write(f"# Title\n\n{results.BEGIN_MARK}\nold\n{results.END_MARK}\n\n"
            "## Not done yet\n")
  generated = results.write_report(runs, out)
  text = open(out).read()
  assert text.startswith("# Title\n")
  assert text.rstrip().endswith("## Not done yet")
  assert "old" not in text and generated in text
  assert "## lenet5 / fashion_mnist" in text and "## mlp / fashion_mnist" in text
  assert "| lenet5 | fashion_mnist | lenet5_paper_p0.6_k4 |" in text
  assert "none within 0.5 pp" in text
  assert "| lenet5_base | float baseline |" in text
  assert "1:30 (training)" in text and "| 2:50 |" in text
  assert os.path.getsize(str(tmp_path / "RESULTS_pareto.png")) > 1000
  # Every table row has the header's number of cells.
  for line in text.splitlines():
    if line.startswith("| lenet5_"):
      assert line.count("|") == results._HEADER.count("|")


def test_entry_point(tmp_path):
  runs = _fixture(tmp_path)
  out = str(tmp_path / "R.md")
  subprocess.run([sys.executable, "-m", "experiments.results",
                  f"--runs_dir={runs}", f"--out={out}"], cwd=REPO,
                 check=True, capture_output=True)
  text = open(out).read()
  assert text.startswith(results.BEGIN_MARK)
  assert ("![accuracy vs ou_ratio, bit_ratio, crossbar_ratio](R_pareto.png)"
          in text)


def _costed(name, *, prune, k, compressed, base=False, kept=80, stored=40):
  """A results dict with the hardware figures of a 100-OU model."""
  out = _results(name, model="vgg8", prune=prune, k=k, method="paper",
                 init="" if base else "ckpt", compressed=compressed)
  out["accuracy"]["float"] = 0.9
  out["compression"] = {
      "ou_ratio": 100 / stored, "dense_crossbars": 10,
      "packed_crossbars": 5, "ou_activations_dense": 1000,
      "ou_activations_pruned": kept * 10,
      "ou_activations_shared": stored * 10,
      "adc_conversions_dense": 8000,
      "adc_conversions_pruned": kept * 80,
      "adc_conversions_shared": stored * 80, "index_bits": 300,
      "dense_bits": 6400, "compressed_bits": 3200}
  return out


def test_cost_table_rows_and_ratios():
  runs = [
      _costed("b", prune=0.2, k=8, compressed=0.89, base=True),
      _costed("p", prune=0.5, k=None, compressed=0.898, kept=50,
              stored=50),
      _costed("s", prune=0.0, k=4, compressed=0.80, kept=100, stored=25),
      _costed("s2", prune=0.0, k=8, compressed=0.85, kept=100, stored=40),
  ]
  table = results.cost_table(runs).splitlines()
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
  assert results.cost_table([runs[1]]) == ""  # no baseline: no table


def _layout_cost(energy_nj, latency_us, crossbars, index_add_pj=0.0):
  """One layout of a hardware_cost: total energy, half of it in the ADC."""
  energy = {"total": energy_nj * 1e3, "adc": energy_nj * 500.0,
            "index_table": index_add_pj / 2, "adders": index_add_pj / 2}
  return {"energy_pj": energy, "latency_ns": latency_us * 1e3,
          "interval_ns": latency_us * 500.0, "crossbars": crossbars,
          "area_um2": {"core": crossbars * 1e4, "total": 2e5 + crossbars * 1e4}}


def _priced(results_dict, key="hardware_cost", **energies_nj):
  """Gives a results dict a hardware cost (``cost``: the old key) with
  ``energies_nj`` per layout; latency in us is a tenth of the energy."""
  results_dict[key] = {
      layout: _layout_cost(nj, nj / 10, 10 if layout != "shared" else 5,
                           index_add_pj=7.0 if layout == "shared" else 0.0)
      for layout, nj in energies_nj.items()}
  return results_dict


def _priced_runs():
  # Each run prices every layout; the table takes its own model's layout.
  dense = {"dense": 1000.0, "pruned": 600.0}
  return [
      _priced(_costed("b", prune=0.2, k=8, compressed=0.89, base=True),
              shared=300.0, **dense),
      _priced(_costed("p", prune=0.5, k=None, compressed=0.898, kept=50,
                      stored=50), key="cost", shared=500.0, **dense),
      _priced(_costed("s", prune=0.0, k=4, compressed=0.80, kept=100,
                      stored=25), shared=400.0, **dense),
      _priced(_costed("s2", prune=0.0, k=8, compressed=0.85, kept=100,
                      stored=40), key="cost", shared=800.0, **dense),
  ]


def test_hardware_cost_reads_the_old_cost_key():
  new, old = _priced_runs()[:2]
  assert results.hardware_cost(new) is new["hardware_cost"]
  assert results.hardware_cost(old) is old["cost"]
  assert results.hardware_cost({"accuracy": {}}) is None
  # Each run in the layout its model uses.
  assert results.row(new)["layout"] == "shared"
  assert results.row(new)["energy_pj"] == 300e3
  assert results.row(old)["layout"] == "pruned"
  assert results.row(old)["energy_pj"] == 600e3
  assert results.row(old)["latency_ns"] == 60e3
  assert results.layout_cost(old, "dense")["energy_pj"] == 1000e3
  unpriced = _costed("u", prune=0.5, k=None, compressed=0.9)
  assert results.row(unpriced)["energy_pj"] is None
  assert results.energy_table([unpriced]) == ""


def test_run_summary_reads_either_key_and_the_sweep_energy():
  from experiments import report  # pylint: disable=g-import-not-at-top
  new, old = _priced_runs()[:2]
  for r in (new, old):
    r.update(hardware={}, timing_s={"total": 1.0},
             adc_sweep=[{"adc_bits": 3, "accuracy": 0.5, "energy_pj": None,
                         "layout": "shared"},
                        {"adc_bits": 4, "accuracy": 0.8,
                         "energy_pj": 123456.0, "layout": "shared"}])
  for r in (new, old):
    text = report.summary_table(r)
    assert "dense 1.000 uJ, pruned 0.600 uJ" in text
    assert "3b: 0.5000, 4b: 0.8000 (123.5 nJ shared)" in text
  old["adc_sweep"] = [{"adc_bits": 5, "accuracy": 0.9}]  # before the energy
  assert "5b: 0.9000\n" in report.summary_table(old)


def test_energy_table_rows_and_ratios():
  runs = _priced_runs()
  table = results.energy_table(runs).splitlines()
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
  row = results.energy_table(no_share).splitlines()[4]
  assert row.startswith("| shared | no run |")
  assert row.count("|") == table[0].count("|")


def test_energy_plot_and_json(tmp_path):
  runs_dir = str(tmp_path / "priced")
  for r in _priced_runs():
    os.makedirs(os.path.join(runs_dir, r["name"]))
    with open(os.path.join(runs_dir, r["name"], "results.json"), "w") as f:
      json.dump({k: v for k, v in r.items() if k != "name"}, f)
  out = str(tmp_path / "R.md")
  results.write_report(runs_dir, out)
  text = open(out).read()
  assert "### vgg8: energy, latency and area per inference" in text
  assert "![accuracy vs energy per inference](R_energy.png)" in text
  assert os.path.getsize(str(tmp_path / "R_energy.png")) > 1000
  summary = json.load(open(tmp_path / "R.json"))["models"]["vgg8"]
  # p (prune only, 0.2 pp loss) is the headline: 600 nJ, pruned layout.
  head = summary["headline"]
  assert head["run"] == "p" and head["layout"] == "pruned"
  assert head["energy_pj"] == 600e3 and head["latency_ns"] == 60e3
  assert summary["hardware_cost"][0]["loss_pp"] is None
  assert summary["hardware_cost"][1]["loss_pp"] == pytest.approx(0.2)
  assert [(c["row"], c["run"], c["layout"], c["energy_pj"])
          for c in summary["hardware_cost"]] == [
              ("dense", "b", "dense", 1000e3),
              ("pruned", "p", "pruned", 600e3),
              ("shared", "s2", "shared", 800e3),
              ("pruned + shared", "b", "shared", 300e3)]
  # Runs without any hardware cost: no energy table, no energy plot.
  results.write_report(_fixture(tmp_path), str(tmp_path / "bare.md"))
  assert "energy" not in open(str(tmp_path / "bare.md")).read()
  assert not os.path.exists(str(tmp_path / "bare_energy.png"))


def test_batchnorm_kept_runs_are_their_own_variant(tmp_path):
  runs = _fixture(tmp_path)
  _write(runs, "lenet5_bn_share_k2", prune=0.0, k=2, compressed=0.897,
         ou_ratio=6.0)
  _update_config(runs, "lenet5_bn_share_k2", "compress", fold_bn=False)
  loaded = {r["name"]: r for r in results.load_runs(runs)}
  assert results.variant(loaded["lenet5_bn_share_k2"]) == (
      "share only (BN kept)")
  assert results.variant(loaded["lenet5_share_k2"]) == "share only"
  text = results.write_report(runs, str(tmp_path / "R.md"))
  assert "| lenet5_bn_share_k2 | share only (BN kept) |" in text
  # A prune-only run with BN kept has no k and no sharing method either.
  _update_config(runs, "lenet5_prune_p0.5", "compress", fold_bn=False)
  text = results.write_report(runs, str(tmp_path / "R.md"))
  assert ("| lenet5_prune_p0.5 | prune only (BN kept) | kernel$ sparsity=0.5"
          " | - |") in text


def test_rules_are_shown_in_the_rules_column(tmp_path):
  runs = _fixture(tmp_path)
  _write(runs, "lenet5_share_k2_lk", prune=0.0, k=2, compressed=0.897,
         ou_ratio=5.0)
  _update(runs, "lenet5_share_k2_lk", lambda p: p["recipe"].update(
      rules=["^conv1/", "kernel$ k=2"]))
  rows = {r["name"]: results.row(r) for r in results.load_runs(runs)}
  assert rows["lenet5_share_k2_lk"]["rules"] == "^conv1/; kernel$ k=2"
  text = results.write_report(runs, str(tmp_path / "R.md"))
  assert "| share only | ^conv1/; kernel$ k=2 | ste |" in text
  # A regex's '|' is escaped so the table keeps its columns.
  _update(runs, "lenet5_share_k2_lk", lambda p: p["recipe"].update(
      rules=["conv1|fc", "kernel$ k=2"]))
  text = results.write_report(runs, str(tmp_path / "R.md"))
  assert "| share only | conv1\\|fc; kernel$ k=2 | ste |" in text


def test_distillation_is_shown_in_the_method_column(tmp_path):
  runs = _fixture(tmp_path)
  _update(runs, "lenet5_share_k2",
          lambda p: p["recipe"].update(distill=[0.5, 2.0]))
  _update(runs, "lenet5_prune_p0.5",
          lambda p: p["recipe"].update(distill=[0.7, 4.0]))
  rows = {r["name"]: results.row(r) for r in results.load_runs(runs)}
  assert rows["lenet5_share_k2"]["method"] == "ste + KD 0.5 (T=2)"
  assert rows["lenet5_prune_p0.5"]["method"] == "KD 0.7 (T=4)"
  assert rows["lenet5_paper_p0.6_k4"]["method"] == "paper"


def test_seed_table_groups_points_that_differ_only_in_seed(tmp_path):
  runs = _fixture(tmp_path)
  for seed, comp in ((1, 0.890), (2, 0.887)):
    name = f"lenet5_share_k2_s{seed}"
    _write(runs, name, prune=0.0, k=2, compressed=comp, ou_ratio=6.0)
    path = os.path.join(runs, name, "results.json")
    payload = json.load(open(path))
    payload["config"]["seed"] = seed
    json.dump(payload, open(path, "w"))
  # A rerun of seed 1 under another name is not another seed.
  _write(runs, "lenet5_share_k2_s1_rerun", prune=0.0, k=2, compressed=0.5)
  path = os.path.join(runs, "lenet5_share_k2_s1_rerun", "results.json")
  payload = json.load(open(path))
  payload["config"]["seed"] = 1
  json.dump(payload, open(path, "w"))
  # Same config and seed but another baseline (float accuracy): not grouped.
  _write(runs, "lenet5_share_k2_rebased", prune=0.0, k=2, float_acc=0.91)
  loaded = results.load_runs(runs)
  groups = results.seed_groups(loaded)
  assert [[r["name"] for r in g] for g in groups] == [
      ["lenet5_share_k2", "lenet5_share_k2_s1", "lenet5_share_k2_s2"]]
  table = results.seed_table(loaded).splitlines()
  # Losses 0.7, 1.0, 1.3 pp: mean 1.00, std 0.30.
  assert table[2].startswith(
      "| lenet5 | lenet5_share_k2, lenet5_share_k2_s1, lenet5_share_k2_s2 "
      "| share only | kernel$ k=2 | ste | 0, 1, 2 | 6.00 | 0.8900 ± 0.0030 | "
      "+1.00 ± 0.30 | +0.70 to +1.30 |")
  text = results.write_report(runs, str(tmp_path / "R.md"))
  assert "## Seeds: points run with several seeds" in text


def test_headline_takes_the_mean_over_seeds(tmp_path):
  # A 20x point whose seed 0 loses 0.2 pp and seeds 1-2 lose 1.0 and
  # 1.3 pp (mean 0.83): not a headline, though one seed alone would be.
  runs = _fixture(tmp_path)
  for seed, comp in ((0, 0.898), (1, 0.890), (2, 0.887)):
    name = f"lenet5_share_k1_s{seed}"
    _write(runs, name, prune=0.0, k=1, compressed=comp, ou_ratio=20.0)
    _update_config(runs, name, "compress", fold_bn=True)
    path = os.path.join(runs, name, "results.json")
    payload = json.load(open(path))
    payload["config"]["seed"] = seed
    json.dump(payload, open(path, "w"))
  loaded = results.load_runs(runs)
  points = {p["name"]: p for p in results.point_rows(loaded)}
  mean = points["lenet5_share_k1_s0 (mean of 3 seeds)"]
  assert mean["run"] == "lenet5_share_k1_s0"
  assert mean["loss_pp"] == pytest.approx((0.2 + 1.0 + 1.3) / 3)
  assert "lenet5_share_k1_s1" not in points
  lenet = [p for p in points.values() if p["model"] == "lenet5"]
  assert results.headline(lenet)["name"] == "lenet5_paper_p0.6_k4"
  # Seed 0 alone would have been the headline.
  rows = [results.row(r) for r in loaded if r["model"] == "lenet5"]
  assert results.headline(rows)["name"] == "lenet5_share_k1_s0"
  text = results.write_report(runs, str(tmp_path / "R.md"))
  assert "| lenet5 | fashion_mnist | lenet5_paper_p0.6_k4 |" in text


def test_runs_of_several_commits_are_refused_unless_allowed(tmp_path):
  runs = _fixture(tmp_path)
  _write(runs, "lenet5_share_k1", prune=0.0, k=1, compressed=0.85,
         commit="b" * 40)
  _update(runs, "mlp_share_k4",
          lambda p: p["provenance"].update(dirty=True))
  with pytest.raises(ValueError, match="3 commits") as err:
    results.write_report(runs, str(tmp_path / "R.md"))
  assert "lenet5_share_k1" in str(err.value)
  assert f"{COMMIT} (dirty): mlp_share_k4" in str(err.value)
  assert not os.path.exists(tmp_path / "R.md")
  text = results.write_report(runs, str(tmp_path / "R.md"),
                              allow_mixed_commits=True)
  assert "Computed at commits `aaaaaaaaaaaa` (5 runs)" in text
  assert "`bbbbbbbbbbbb` (1 runs)" in text


def test_results_json_has_headline_and_pareto(tmp_path):
  runs = _fixture(tmp_path)
  for seed, comp in ((1, 0.897), (2, 0.894)):
    name = f"lenet5_paper_p0.6_k4_s{seed}"
    _write(runs, name, method="paper", prune=0.6, k=4, compressed=comp,
           ou_ratio=12.0)
    _update(runs, name, lambda p, s=seed: p["config"].update(seed=s))
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


def _make_hwaware(payload, bits, mode, before, after, lossless):
  payload["recipe"]["stages"] = ["prune", "share", "finetune", "hwaware"]
  payload["config"]["hwaware"] = {"steps": 500}
  payload["config"]["eval"] = {"emulate_limit": 2000}
  payload["accuracy_detail"] = {
      "hwaware_steps": 500, "hwaware_adc_bits": bits,
      "hwaware_adc_mode": mode, "hwaware_emulated_before": before,
      "hwaware_emulated_after": after,
      "hwaware_emulated_lossless_before": lossless}


def test_hwaware_runs_get_their_own_table(tmp_path):
  runs_dir = str(tmp_path / "runs")
  _write(runs_dir, "lenet5_base", init="", compressed=0.896, ou_ratio=5.0)
  # A worse "compressed" accuracy and a higher ratio: as a compression
  # point it would take the Pareto front; it must not.
  _write(runs_dir, "lenet5_hw3_clip", compressed=0.40, ou_ratio=50.0)
  _update(runs_dir, "lenet5_hw3_clip",
          lambda p: _make_hwaware(p, 3, "clip", 0.151, 0.80, 0.899))
  _write(runs_dir, "lenet5_hw4_calibrated", compressed=0.88, ou_ratio=50.0)
  _update(runs_dir, "lenet5_hw4_calibrated",
          lambda p: _make_hwaware(p, 4, "calibrated", 0.894, 0.897, 0.899))
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
