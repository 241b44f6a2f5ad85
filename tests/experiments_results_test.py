"""Tests of experiments/results.py on tiny synthetic results.json files."""

import json
import os
import subprocess
import sys

from experiments import results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(runs_dir, name, *, model="lenet5", prune=0.3, k=8, method="ste",
           steps=1000, init="ckpt", float_acc=0.90, compressed=0.898,
           emulated=0.897, ou_ratio=5.0, total=90.0):
  path = os.path.join(runs_dir, name)
  os.makedirs(path)
  payload = {
      "model": model, "dataset": "fashion_mnist",
      "config": {"prune": {"ratio": prune},
                 "share": {"k": k, "method": method, "steps": steps},
                 "train": {"init_checkpoint": init}},
      "accuracy": {"float": float_acc, "quantized": float_acc,
                   "compressed": compressed, "emulated": emulated},
      "compression": {"ou_ratio": ou_ratio, "bit_ratio": 4.0,
                      "fp32_ratio": ou_ratio, "crossbar_ratio": 2.0},
      "timing_s": {"train": total - 80.0, "total": total},
  }
  with open(os.path.join(path, "results.json"), "w") as f:
    json.dump(payload, f)


def _fixture(tmp_path):
  runs = str(tmp_path / "runs")
  os.makedirs(runs)
  _write(runs, "lenet5_base", init="", ou_ratio=5.0, total=170.0)
  _write(runs, "lenet5_prune_p0.5", prune=0.5, k=1024, steps=0,
         compressed=0.899, ou_ratio=2.0)
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
  assert rows["lenet5_prune_p0.5"]["k"] == "-"
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
  assert "![accuracy vs ou_ratio](R_pareto.png)" in text
