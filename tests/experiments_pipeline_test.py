"""End-to-end tests of experiments/pipeline.py (flax examples train_test
style): the default pipeline on a real Fashion-MNIST subset with a simulated
kill and resume, every config for a few steps under tfds mock data, and bad
input."""

import json
import os
import re
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rsjax
import tensorflow_datasets as tfds

from experiments import data
from experiments import models
from experiments import pipeline
from experiments import recipe as recipe_lib
from experiments import results as results_lib
from experiments import stages
from experiments import train
from experiments import workdir as workdir_lib
from experiments.configs import default
import experiments_fixtures
# The session fixture, imported so pytest finds it in this module.
from experiments_fixtures import fmnist_data_dir  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, "experiments", "configs")


def _config_files(kind: str) -> list[str]:
  """The modules of experiments/configs that define ``get_<kind>()``."""
  out = []
  for f in sorted(os.listdir(CONFIG_DIR)):
    if f.endswith(".py") and not f.startswith("_"):
      with open(os.path.join(CONFIG_DIR, f)) as src:
        if f"\ndef get_{kind}(" in src.read():
          out.append(f[:-3])
  return out


# Experiment configs (get_config); the study's grid lives apart from them.
CONFIGS = _config_files("config")
FAST_CONFIGS = ("default", "cifar10_resnet20")


def test_every_config_module_is_a_config():
  modules = sorted(f[:-3] for f in os.listdir(CONFIG_DIR)
                   if f.endswith(".py") and not f.startswith("_"))
  assert sorted(CONFIGS) == modules
  assert "default" in CONFIGS


class Killed(Exception):
  """Stands in for the process being killed."""


def tiny(config, data_dir):
  config.data.data_dir = data_dir
  config.data.eval_limit = 500
  config.train.steps = 6
  config.train.batch_size = 16
  config.train.eval_batch_size = 250
  config.train.warmup_steps = 1
  config.train.log_every = 2
  config.train.checkpoint_every = 3
  config.finetune.steps = 5
  config.share.steps = 4
  config.share.recluster_every = 2
  config.share.n_init = 1
  config.eval.emulate = False  # the emulated run below turns it on
  return config


def kill_at(stage, step):
  def callback(s, n):
    if (s, n) == (stage, step):
      raise Killed(f"{s} {n}")
  return callback


def _load_model(workdir):
  return rsjax.load_compressed(os.path.join(workdir, "compressed_model.rsjax.npz"))


def _evaluate(variables, fmnist_data_dir, use_bn=False):
  model = models.create_model("lenet5", num_classes=10, use_bn=use_bn)
  split = data.load_split("fashion_mnist", "eval", data_dir=fmnist_data_dir,
                          limit=500)
  variables = jax.tree_util.tree_map(jnp.asarray, variables)
  return train.evaluate(model, variables, data.eval_batches(split, 250),
                        train.make_mesh())["accuracy"]


def test_default_pipeline_kill_and_resume(tmp_path, fmnist_data_dir,
                                          monkeypatch):
  config = tiny(default.get_config(), fmnist_data_dir)
  workdir = str(tmp_path / "run")

  with pytest.raises(Killed):
    pipeline.run(config, workdir, step_callback=kill_at("train", 4))
  with pytest.raises(Killed):
    pipeline.run(config, workdir, step_callback=kill_at("finetune", 4))
  with open(os.path.join(workdir, "log.txt")) as f:
    log = f.read()
  assert "[train] resumed from the checkpoint at step 3" in log
  state = json.load(open(os.path.join(workdir, "state.json")))
  assert set(state["stages"]) == {"train", "prune", "share"}

  # Finished stages must not run again.
  def must_not_run(*args, **kwargs):
    raise AssertionError("a finished stage ran again")
  for stage in ("train", "prune", "share"):
    monkeypatch.setattr(stages, stage, must_not_run)
  results = pipeline.run(config, workdir)
  with open(os.path.join(workdir, "log.txt")) as f:
    log = f.read()
  assert "[finetune] resumed from the checkpoint at step 3" in log
  assert "steps/s" in log and "ETA" in log

  on_disk = json.load(open(os.path.join(workdir, "results.json")))
  assert on_disk == results
  for key in ("model", "dataset", "config", "recipe", "hardware",
              "provenance", "accuracy", "compression", "layers",
              "hardware_cost", "adc_sweep", "timing_s"):
    assert key in on_disk
  assert "cost" not in on_disk  # the key's name before hardware_cost
  energy = {k: v["energy_pj"]["total"]
            for k, v in on_disk["hardware_cost"].items()}
  assert energy["shared"] < energy["pruned"] <= energy["dense"]
  assert on_disk["recipe"] == {
      "variant": "prune + share", "stages": ["prune", "share", "finetune"],
      "rules": ["kernel$ k=8 sparsity=0.3"], "sharing": "ste",
      "distill": None}
  prov = on_disk["provenance"]
  assert prov["versions"]["jax"] == jax.__version__
  assert prov["devices"]["count"] == jax.device_count()
  assert len(prov["commit"] or "x" * 40) == 40
  acc = on_disk["accuracy"]
  assert set(acc) == {"float", "quantized", "compressed", "emulated"}
  assert acc["emulated"] is None and on_disk["adc_sweep"] == []
  for k in ("float", "quantized", "compressed"):
    assert 0.0 <= acc[k] <= 1.0
  assert acc["float"] > 0.3  # 6 steps of LeNet-5 beat chance (0.1)
  assert set(results_lib.COMPRESSION_KEYS) <= set(on_disk["compression"])
  assert on_disk["compression"]["ou_ratio"] > 1.0
  assert on_disk["config"]["train"]["steps"] == 6
  with open(os.path.join(workdir, "adc_sweep.csv")) as f:
    assert f.readline().strip() == "adc_bits,accuracy,energy_pj,layout"
  assert os.path.exists(os.path.join(workdir, "layer_compression.png"))

  # The one model file reloads to the compressed model that was evaluated.
  saved = _load_model(workdir)
  assert saved.hw == pipeline.hardware(config)
  assert saved.metadata["model"] == "lenet5"
  assert saved.metadata["recipe"] == on_disk["recipe"]
  assert set(saved.layers) == {
      "params/conv1/conv/kernel", "params/conv2/conv/kernel",
      "params/fc1/dense/kernel", "params/fc2/dense/kernel",
      "params/head/kernel"}
  for path, layer in saved.layers.items():
    index = np.asarray(layer.index)
    assert index.min() >= -1 and (index == -1).any()  # pruned blocks
    assert layer.stored_per_row_block().max() <= 8
    kernel = saved.params
    for name in path.split("/"):
      kernel = kernel[name]
    np.testing.assert_array_equal(kernel, np.asarray(layer.to_kernel()))
  assert _evaluate(saved.params, fmnist_data_dir) == pytest.approx(
      acc["compressed"], abs=1e-6)

  # A finished run reruns nothing and gives the same results.
  again = pipeline.run(config, workdir)
  assert again["accuracy"] == results["accuracy"]

  # With emulation on (rsjax.kernels): the emulated accuracy, the ADC sweep,
  # its CSV and plot. The default 5-bit ADC is lossless for 9-row OUs.
  monkeypatch.undo()
  emu = tiny(default.get_config(), fmnist_data_dir)
  emu.train.init_checkpoint = os.path.join(workdir, "checkpoints",
                                           "baseline")
  emu.eval.emulate = True
  emu.eval.emulate_limit = 250
  emu.eval.adc_bits = (3, 5)
  emu_dir = tmp_path / "emu"
  res = pipeline.run(emu, str(emu_dir))
  assert res["accuracy"]["float"] == pytest.approx(acc["float"])
  emulated = res["accuracy"]["emulated"]
  # 8-bit activations and weights on a lossless ADC: close to the float
  # compressed model (on 250 examples, 0.04 is 10 of them).
  assert emulated == pytest.approx(res["accuracy"]["compressed"], abs=0.04)
  sweep = {p["adc_bits"]: p for p in res["adc_sweep"]}
  assert set(sweep) == {3, 5} and sweep[5]["accuracy"] == emulated
  assert 0.0 <= sweep[3]["accuracy"] <= 1.0
  # The energy of the layout the prune + share model runs in, at each ADC:
  # the run's own at 5 bits; CostModel has no 3-bit ADC figure.
  assert {p["layout"] for p in sweep.values()} == {"shared"}
  assert sweep[5]["energy_pj"] == pytest.approx(
      res["hardware_cost"]["shared"]["energy_pj"]["total"])
  assert sweep[3]["energy_pj"] is None
  rows = (emu_dir / "adc_sweep.csv").read_text().split()
  assert rows[0] == "adc_bits,accuracy,energy_pj,layout"
  assert rows[1] == f"3,{sweep[3]['accuracy']},,shared"
  assert rows[2] == f"5,{emulated},{sweep[5]['energy_pj']},shared"
  assert (emu_dir / "accuracy_vs_adc_bits.png").stat().st_size > 1000


def _block_masks(layer):
  return np.asarray(layer.index) >= 0


@pytest.mark.parametrize("variant", ["baseline", "prune", "share",
                                     "allocate", "allocate_energy"])
def test_each_recipe_runs_only_its_stages(tmp_path, fmnist_data_dir,
                                          variant):
  """Prune only, share only and the float baseline are recipes: the stages
  not in them do not run, and the exported model is what they did."""
  config = tiny(default.get_config(), fmnist_data_dir)
  # fc1 has 2700 blocks: 0.7 of them is 1890, which float rounding made
  # 1889 in the experiments' former copy of pruning.
  config.recipe.stages, config.recipe.rules = {
      "baseline": ((), ()),
      "prune": (("prune",), ("kernel$ sparsity=0.7",)),
      "share": (("share", "finetune"), ("^conv1/", "kernel$ k=2")),
      "allocate": (("share",), ("kernel$ k=8",)),
      "allocate_energy": (("share",), ("kernel$ k=8",)),
  }[variant]
  config.prune.steps = 3
  if variant == "allocate":
    config.share.allocate_ou_ratio = 6.0
  if variant == "allocate_energy":
    config.share.allocate_objective = "energy"
    config.share.allocate_target = 1.5
  config.share.allocate_examples = 64
  workdir = str(tmp_path / variant)
  res = pipeline.run(config, workdir)
  ran = set(json.load(open(os.path.join(workdir, "state.json")))["stages"])
  compression = {"baseline": set(), "prune": {"prune"},
                 "share": {"share", "finetune"}, "allocate": {"share"},
                 "allocate_energy": {"share"}}[variant]
  assert ran == {"train", "export", "evaluate", "adc_sweep"} | compression
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == sorted(
      {"train", "baseline"} | compression)
  saved = _load_model(workdir)
  ratio = res["compression"]["ou_ratio"]
  if variant == "baseline":
    assert ratio == pytest.approx(1.0)
    assert all(l.is_identity() for l in saved.layers.values())
  elif variant == "prune":
    baseline = models.fold_model_batchnorm(
        models.create_model("lenet5", num_classes=10),
        pipeline_tree(workdir, "baseline"))[1]
    # The same blocks as the library's pruning of the baseline.
    plan = rsjax.make_plan(baseline["params"],
                           [rsjax.Rule("kernel$", sparsity=0.7)],
                           pipeline.hardware(config))
    kernels = {p: x for p, x in rsjax.named_leaves(baseline["params"])
               if p in plan}
    masks = rsjax.prune_masks(kernels, {p: jnp.ones(lp.grid, bool)
                                        for p, lp in plan.items()}, plan, 1.0)
    for path, mask in masks.items():
      layer = saved.layers["params/" + path]
      assert layer.is_identity()
      np.testing.assert_array_equal(_block_masks(layer), np.asarray(mask))
    fc1 = saved.layers["params/fc1/dense/kernel"]
    assert (~_block_masks(fc1)).sum() == 1890
    assert ratio > 3.0
  elif variant == "allocate":
    # Per-layer k for 6x over every layer (all are shared here).
    assert ratio >= 6.0
    allocated = res["recipe"]["allocated_rules"]
    assert len(allocated) == 5 and res["recipe"]["allocate_ou_ratio"] == 6.0
    for text, (path, layer) in zip(allocated, saved.layers.items()):
      rule = recipe_lib.parse_rule(text)
      assert rule.pattern == "^" + re.escape(path[len("params/"):]) + "$"
      assert layer.stored_per_row_block().max() <= rule.k
  elif variant == "allocate_energy":
    # The priced prediction is the run's own hardware cost.
    cost = res["hardware_cost"]
    energy = [cost[l]["energy_pj"]["total"] for l in ("dense", "shared")]
    assert energy[0] / energy[1] >= 1.5
    assert res["recipe"]["allocate_objective"] == "energy"
    assert res["recipe"]["allocate_target"] == 1.5
    allocation = json.load(open(os.path.join(workdir, "state.json")))[
        "stages"]["share"]["results"]["allocation"]
    assert allocation["energy_pj"] == pytest.approx(energy[1], rel=1e-12)
  else:
    conv1 = saved.layers["params/conv1/conv/kernel"]
    assert conv1.is_identity() and _block_masks(conv1).all()
    for path, layer in saved.layers.items():
      if path != "params/conv1/conv/kernel":
        assert layer.stored_per_row_block().max() <= 2
    assert ratio > 2.0
  assert _evaluate(saved.params, fmnist_data_dir) == pytest.approx(
      res["accuracy"]["compressed"], abs=1e-6)


def pipeline_tree(workdir, name):
  return workdir_lib.load_tree(os.path.join(workdir, "checkpoints", name))


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=() if n in FAST_CONFIGS else pytest.mark.slow)
    for n in CONFIGS])
def test_every_config_trains_under_mock_data(tmp_path, monkeypatch, name):
  def refuse(*args, **kwargs):
    raise AssertionError("network access attempted")
  monkeypatch.setattr(socket.socket, "connect", refuse)
  module = __import__(f"experiments.configs.{name}", fromlist=["get_config"])
  config = module.get_config()
  config.train.steps = 2
  config.train.batch_size = 4
  config.train.eval_batch_size = 4
  config.train.log_every = 1
  config.train.warmup_steps = 1
  # Mocked TFDS "downloads" are no-ops: nothing reaches the network.
  config.data.download = True
  config.data.source_dir = experiments_fixtures.placeholder_idx_dir(
      tmp_path / "idx")
  config.data.image_size = min(config.data.image_size or 32, 32)
  with tfds.testing.mock_data(num_examples=8):
    out = pipeline.run(config, str(tmp_path / name), until="train")
  assert 0.0 <= out["train"]["accuracy_float"] <= 1.0
  assert np.isfinite(out["train"]["eval_loss"])


def test_foreign_workdir_is_refused(tmp_path):
  workdir = str(tmp_path / "w")
  a = default.get_config()
  workdir_lib.claim(workdir, a, overwrite=False)
  open(os.path.join(workdir, "results.json"), "w").write("{}")
  workdir_lib.claim(workdir, a, overwrite=False)  # same config: ok
  b = default.get_config()
  b.train.steps = 7
  with pytest.raises(workdir_lib.WorkdirConflictError, match="train.steps"):
    workdir_lib.claim(workdir, b, overwrite=False)
  assert os.path.exists(os.path.join(workdir, "results.json"))
  workdir_lib.claim(workdir, b, overwrite=True)
  assert not os.path.exists(os.path.join(workdir, "results.json"))
  stored = json.load(open(os.path.join(workdir, "config.json")))
  assert stored["train"]["steps"] == 7


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  model = models.create_model("mlp", num_classes=3, hidden=(8,))
  variables = models.init_variables(model, jax.random.key(0), (4, 4, 1))
  tx = train.make_optimizer("sgd", 0.1, 10, 0, 0.0)
  state = train.create_state(model, variables, tx)
  rng = np.random.default_rng(0)

  def get_batch(step):
    image = rng.normal(size=(4, 4, 4, 1)).astype(np.float32)
    if step >= 4:
      image[0, 0, 0, 0] = np.nan
    return {"image": image, "label": np.zeros((4,), np.int32)}

  ckpt = str(tmp_path / "ckpt")
  loop = train.TrainLoop("train", 10, get_batch, ckpt, checkpoint_every=2,
                         log_every=1)
  with pytest.raises(train.NanLossError, match="step 4") as err:
    loop.run(state, train.make_mesh())
  assert "non-finite" in str(err.value)
  assert sorted(os.listdir(ckpt)) == ["2", "4"]


def test_missing_dataset_fails_fast_in_pipeline(tmp_path):
  config = default.get_config()
  config.data.name = "cifar10"
  config.model.name = "resnet20"
  config.data.data_dir = str(tmp_path / "empty")
  with pytest.raises(data.DatasetNotFoundError, match="cifar10"):
    pipeline.run(config, str(tmp_path / "w"))


def test_unknown_config_key_is_an_error(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.main",
       f"--workdir={tmp_path / 'w'}", "--config.train.stepz=5"],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode != 0
  assert "stepz" in proc.stderr
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize("fold_bn, rules, stages, problem", [
    (True, ("kernel$ k=all",), None, "k='all' is not a number"),
    # LeNet-5 has conv1, conv2 and dense layers: no conv9.
    (True, ("^conv9/ k=4", "kernel$ k=8 sparsity=0.3"), None,
     r"\['\^conv9/'\] match no Dense or Conv kernel"),
    # With BN kept the paths are conv1/conv/kernel: checked on those.
    (False, ("^conv1/kernel k=4", "kernel$ k=8 sparsity=0.3"), None,
     "match no Dense or Conv kernel"),
    (True, ("kernel$ k=8",), ("prune", "share"), "no recipe rule sets"),
    (True, ("kernel$ k=8",), ("finetune",), "needs 'share'"),
    (True, ("kernel$ k=8",), ("share", "prune"), "in the order"),
    (True, ("kernel$ sparsity=0.3",), ("prune",), None),
])
def test_bad_recipe_fails_before_training(tmp_path, fold_bn, rules, stages,
                                          problem):
  config = default.get_config()
  config.compress.fold_bn = fold_bn
  config.recipe.rules = rules
  if stages is not None:
    config.recipe.stages = stages
  if problem is None:
    pipeline.check(config)
    return
  with pytest.raises(ValueError, match=problem):
    pipeline.run(config, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize("settings, problem", [
    ({"allocate_objective": "area", "allocate_target": 2.0},
     "share.allocate_objective must be one of"),
    ({"allocate_ou_ratio": 4.0, "allocate_objective": "energy"},
     "for another objective set share.allocate_target"),
    ({"allocate_target": 0.5}, r"share.allocate_target must be >= 1"),
])
def test_bad_allocation_settings_fail_before_training(settings, problem):
  config = default.get_config()
  for name, value in settings.items():
    setattr(config.share, name, value)
  with pytest.raises(ValueError, match=problem):
    pipeline.check(config)


def test_prune_steps_must_reach_the_schedule_end(tmp_path):
  config = default.get_config()
  config.prune.end = 10
  config.prune.steps = 5
  with pytest.raises(ValueError, match="prune.end=10"):
    pipeline.run(config, str(tmp_path / "w"))


@pytest.mark.parametrize("section, field, value", [
    ("compress", "distill_weight", 1.5),
    ("compress", "distill_temperature", 0.0),
    ("hwaware", "distill_weight", -0.1), ("hwaware", "backward", "clip")])
def test_bad_distillation_or_hwaware_field_fails_before_training(
    tmp_path, section, field, value):
  config = default.get_config()
  config[section][field] = value
  with pytest.raises(ValueError, match=f"{section}.{field}"):
    pipeline.run(config, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


def test_distillation_from_the_baseline_resumes_after_a_kill(
    tmp_path, fmnist_data_dir):
  """compress.distill_weight > 0: sharing and fine-tune learn from the
  float baseline; the teacher is not checkpointed, so a run killed in the
  fine-tune gets it again and ends where an uninterrupted run does."""
  config = tiny(default.get_config(), fmnist_data_dir)
  config.compress.distill_weight = 0.7
  config.compress.distill_temperature = 3.0
  whole = pipeline.run(config, str(tmp_path / "whole"), until="finetune")
  workdir = str(tmp_path / "killed")
  with pytest.raises(Killed):
    pipeline.run(config, workdir, step_callback=kill_at("finetune", 4))
  resumed = pipeline.run(config, workdir, until="finetune")
  assert resumed["finetune"]["accuracy_finetune"] == pytest.approx(
      whole["finetune"]["accuracy_finetune"], abs=1e-6)
  # Distillation changed the training: another weight, another model.
  config.compress.distill_weight = 0.0
  plain = pipeline.run(config, str(tmp_path / "plain"), until="share")
  a = pipeline_tree(str(tmp_path / "whole"), "share")
  b = pipeline_tree(str(tmp_path / "plain"), "share")
  assert plain["share"]["steps"] == whole["share"]["steps"]
  assert any(
      not np.allclose(np.asarray(x), np.asarray(y))
      for x, y in zip(jax.tree_util.tree_leaves(a["params"]),
                      jax.tree_util.tree_leaves(b["params"])))


def test_jsonable_and_write_json(tmp_path):
  out = workdir_lib.jsonable({"a": np.float32(1.5), "b": float("inf"),
                              "c": jnp.arange(2), "d": (np.int64(3),)})
  assert out == {"a": 1.5, "b": "inf", "c": [0, 1], "d": [3]}
  path = str(tmp_path / "x.json")
  workdir_lib.write_json(path, {"x": 1})
  assert json.load(open(path)) == {"x": 1}
  assert os.listdir(tmp_path) == ["x.json"]  # no temp file left


@pytest.mark.slow
def test_sigkill_then_resume(tmp_path, fmnist_data_dir):
  """A real kill -9 mid-training: the rerun resumes from the last step
  checkpoint and finishes."""
  import signal  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "experiments.main", f"--workdir={workdir}",
         f"--config.data.data_dir={fmnist_data_dir}",
         "--config.train.steps=400", "--config.train.checkpoint_every=20",
         "--config.train.log_every=20", "--config.train.batch_size=16",
         "--config.finetune.steps=10", "--config.share.n_init=1",
         "--config.share.steps=10",
         "--config.data.eval_limit=500", "--config.train.eval_batch_size=250"]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  ckpt = workdir / "checkpoints" / "train"
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    steps = [int(d) for d in os.listdir(ckpt)
             if d.isdigit()] if ckpt.exists() else []
    if steps and max(steps) >= 40:
      break
    time.sleep(0.2)
  assert proc.poll() is None, "the run ended before it could be killed"
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not (workdir / "results.json").exists()
  done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                        timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  log = (workdir / "log.txt").read_text()
  assert "[train] resumed from the checkpoint at step" in log
  results = json.loads((workdir / "results.json").read_text())
  assert results["config"]["train"]["steps"] == 400
  assert "accuracy float" in done.stdout


def test_pipeline_with_batchnorm_kept(tmp_path, fmnist_data_dir):
  """compress.fold_bn=False: kernels shared before BatchNorm, BN trained
  through sharing and fine-tune, exported, and digital in the emulator."""
  config = tiny(default.get_config(), fmnist_data_dir)
  config.compress.fold_bn = False
  config.eval.emulate = True
  config.eval.emulate_limit = 250
  config.eval.adc_bits = ()  # the sweep is tested above; one emulation here
  # The first conv pruned but left unshared.
  config.recipe.rules = ("^conv1/ sparsity=0.3", "kernel$ k=8 sparsity=0.3")
  workdir = str(tmp_path / "bn")
  res = pipeline.run(config, workdir)
  saved = _load_model(workdir)
  params = saved.params
  assert set(params) == {"params", "batch_stats"}
  assert "bn" in params["params"]["conv1"]
  # The compressed kernels are the shared ones (before BN's scale).
  for path, layer in saved.layers.items():
    kernel = params
    for n in path.split("/"):
      kernel = kernel[n]
    np.testing.assert_array_equal(kernel, np.asarray(layer.to_kernel()))
    # k = 8 stores at most 8 blocks per row-block; conv1 keeps all of its.
    kept = np.asarray(layer.index >= 0).sum(axis=1)
    stored = layer.stored_per_row_block()
    if path.startswith("params/conv1/"):
      np.testing.assert_array_equal(stored, kept)
    else:
      assert stored.max() <= 8
  assert _evaluate(params, fmnist_data_dir, use_bn=True) == pytest.approx(
      res["accuracy"]["compressed"], abs=1e-6)
  # Lossless ADC: the emulation (BN digital after shared crossbars) is
  # close to the float evaluation of the same model.
  assert res["accuracy"]["emulated"] == pytest.approx(
      res["accuracy"]["compressed"], abs=0.04)
  assert res["adc_sweep"] == []
