"""Tests of experiments/study/results.py on tiny synthetic results.json files."""

import os
import subprocess
import sys

import pytest

from experiments.study import results
from experiments.study import results_tables
import study_results_fixtures as fixtures
from study_results_fixtures import (
    fixture_runs, update_run, write_run)

COMMIT = fixtures.COMMIT
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_write_report_keeps_hand_written_text(tmp_path):
  runs = fixture_runs(tmp_path)
  out = str(tmp_path / "RESULTS.md")
  with open(out, "w") as f:
    f.write(f"# Title\n\n{results.BEGIN_MARK}\nold\n{results.END_MARK}\n\n"
            "## Not done yet\n")
  generated = results.write_report(runs, out)
  text = open(out).read()
  assert text.startswith("# Title\n")
  assert text.rstrip().endswith("## Not done yet")
  assert "old" not in text and generated in text
  assert "## lenet5 / fashion_mnist" in text
  assert "## mlp / fashion_mnist" in text
  assert "| lenet5 | fashion_mnist | lenet5_paper_p0.6_k4 |" in text
  assert "none within 0.5 pp" in text
  assert "| lenet5_base | float baseline |" in text
  assert "1:30 (training)" in text and "| 2:50 |" in text
  assert os.path.getsize(str(tmp_path / "RESULTS_pareto.png")) > 1000
  # Every table row has the header's number of cells.
  for line in text.splitlines():
    if line.startswith("| lenet5_"):
      assert line.count("|") == results_tables._HEADER.count("|")


def test_entry_point(tmp_path):
  runs = fixture_runs(tmp_path)
  out = str(tmp_path / "R.md")
  subprocess.run([sys.executable, "-m", "experiments.study.results",
                  f"--runs_dir={runs}", f"--out={out}"], cwd=REPO,
                 check=True, capture_output=True)
  text = open(out).read()
  assert text.startswith(results.BEGIN_MARK)
  assert ("![accuracy vs ou_ratio, bit_ratio, crossbar_ratio](R_pareto.png)"
          in text)


def test_runs_of_several_commits_are_refused_unless_allowed(tmp_path):
  runs = fixture_runs(tmp_path)
  write_run(runs, "lenet5_share_k1", prune=0.0, k=1, compressed=0.85,
         commit="b" * 40)
  update_run(runs, "mlp_share_k4",
          lambda p: p["provenance"].update(dirty=True))
  with pytest.raises(ValueError, match="3 commits") as err:
    results.write_report(runs, str(tmp_path / "R.md"))
  assert "lenet5_share_k1" in str(err.value)
  assert f"{COMMIT} (dirty): mlp_share_k4" in str(err.value)
  assert not os.path.exists(tmp_path / "R.md")
  text = results.write_report(runs, str(tmp_path / "R.md"),
                              allow_mixed_commits=True)
  assert "Computed at commits `aaaaaaaaaaaa` (5 runs)" in text
  assert "`bbbbbbbbbbbb` (1 run)" in text
