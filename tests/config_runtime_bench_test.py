"""experiments/benchmarks/config_runtime_bench.py: one tiny run on fake data."""

import json
import os

from absl import flags
import pytest

from experiments.benchmarks import config_runtime_bench as bench_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def parsed_flags():
  yield lambda argv: flags.FLAGS(["config_runtime_bench", *argv])
  flags.FLAGS.unparse_flags()


def test_main_times_every_stage_of_the_default_config(tmp_path, capsys,
                                                      parsed_flags):
  out = tmp_path / "bench.json"
  parsed_flags([
      f"--config={os.path.join(REPO, 'experiments/configs/default.py')}",
      "--steps=1", "--warmup=1", "--eval_batches=1", "--emulate=false",
      f"--json_out={out}"])
  config = bench_lib._CONFIG.value  # pylint: disable=protected-access
  config.train.batch_size = 8
  config.train.eval_batch_size = 20
  config.share.n_init = 1
  # One small crossbar layer: the compiles (k-means above all) stay short.
  config.recipe.rules = ("^head/kernel$ k=8 sparsity=0.3",)
  bench_lib.main(["config_runtime_bench"])
  figures = json.loads(out.read_text())
  stages = figures["stages"]
  assert set(stages) == {"train", "prune", "share", "finetune", "eval"}
  for name in ("train", "share", "finetune"):
    assert stages[name]["steps_per_s"] > 0
    assert stages[name]["loss_finite"]
  exp = figures["expected_s"]
  # 2000 + 1000 + 1000 steps at the measured rates, plus the rest.
  assert exp["train"] >= 2000 * stages["train"]["step_s"]
  assert exp["total"] == pytest.approx(sum(
      v for k, v in exp.items() if k not in ("total", "compile_total")))
  assert "expected total" in capsys.readouterr().out


def test_bench_refuses_zero_steps():
  from experiments.configs import default  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="steps"):
    bench_lib.bench(default.get_config(), steps=0)
