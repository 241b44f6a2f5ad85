"""End-to-end tests of experiments/pipeline.py (flax examples train_test
style): the default pipeline on a real Fashion-MNIST subset with a simulated
kill and resume, every config for a few steps under tfds mock data, and bad
input."""

import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rsjax
import tensorflow_datasets as tfds

from experiments import compression_stages
from experiments import data
from experiments import models
from experiments import pipeline
from experiments import train
from experiments.configs import default
import experiments_fixtures
# The session fixture, imported so pytest finds it in this module.
from experiments_fixtures import fmnist_data_dir  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(f[:-3] for f in os.listdir(
    os.path.join(REPO, "experiments", "configs"))
                 if f.endswith(".py") and not f.startswith("_"))
FAST_CONFIGS = ("default", "cifar10_resnet20")


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
  # BatchNorm folding keeps the trained model's predictions.
  assert state["stages"]["prune"]["results"]["accuracy_folded"] == (
      pytest.approx(state["stages"]["train"]["results"]["accuracy_float"],
                    abs=2e-3))

  # Finished stages must not run again.
  def must_not_run(run):
    raise AssertionError("a finished stage ran again")
  for stage in ("train", "prune", "share"):
    monkeypatch.setitem(pipeline._STAGE_FNS, stage, must_not_run)
  results = pipeline.run(config, workdir)
  with open(os.path.join(workdir, "log.txt")) as f:
    log = f.read()
  assert "[finetune] resumed from the checkpoint at step 3" in log
  assert "steps/s" in log and "ETA" in log

  on_disk = json.load(open(os.path.join(workdir, "results.json")))
  assert on_disk["accuracy"] == results["accuracy"]
  for key in ("model", "dataset", "config", "accuracy", "compression",
              "layers", "adc_sweep", "timing_s"):
    assert key in on_disk
  acc = on_disk["accuracy"]
  assert set(acc) == {"float", "quantized", "compressed", "emulated"}
  assert acc["emulated"] is None and on_disk["adc_sweep"] == []
  for k in ("float", "quantized", "compressed"):
    assert 0.0 <= acc[k] <= 1.0
  assert acc["float"] > 0.3  # 6 steps of LeNet-5 beat chance (0.1)
  assert set(pipeline.COMPRESSION_KEYS) <= set(on_disk["compression"])
  assert on_disk["config"]["train"]["steps"] == 6
  with open(os.path.join(workdir, "adc_sweep.csv")) as f:
    assert f.readline().strip() == "adc_bits,accuracy"
  if on_disk["compression"]["ou_ratio"] is not None:
    assert on_disk["compression"]["ou_ratio"] > 1.0
    assert os.path.exists(os.path.join(workdir, "layer_compression.png"))

  # The export reloads to the compressed model that was evaluated.
  params, layers, hw = compression_stages.load_compressed(
      os.path.join(workdir, "compressed_model.npz"))
  assert hw == pipeline.hardware(config)
  assert set(layers) == set(state["stages"]["prune"]["results"]["layers"])
  for path, layer in layers.items():
    index = np.asarray(layer.index)
    assert index.min() >= -1 and (index == -1).any()  # pruned blocks
  if hasattr(rsjax, "load_compressed"):
    saved = rsjax.load_compressed(
        os.path.join(workdir, "compressed_layers.rsjax.npz"), hw=hw)
    assert set(saved.layers) == set(layers)
    assert saved.metadata["model"] == "lenet5"
  free = models.create_model("lenet5", num_classes=10, use_bn=False)
  mesh = train.make_mesh()
  split = data.load_split("fashion_mnist", "eval", data_dir=fmnist_data_dir,
                          limit=500)
  got = train.evaluate(free, params, data.eval_batches(split, 250), mesh)
  assert got["accuracy"] == pytest.approx(acc["compressed"], abs=1e-6)

  # A finished run reruns nothing and gives the same results.
  again = pipeline.run(config, workdir)
  assert again["accuracy"] == results["accuracy"]

  # Another compression setting from the same trained baseline.
  monkeypatch.undo()
  other = tiny(default.get_config(), fmnist_data_dir)
  other.train.init_checkpoint = os.path.join(workdir, "checkpoints",
                                             "baseline")
  other.prune.ratio = 0.6
  out = pipeline.run(other, str(tmp_path / "other"), until="prune")
  assert out["train"]["accuracy_float"] == pytest.approx(acc["float"])
  assert out["prune"]["zero_weight_fraction"] > 0.5

  # With emulation on (rsjax.kernels): the emulated accuracy, the ADC sweep,
  # its CSV and plot. The default 5-bit ADC is lossless for 9-row OUs.
  emu = tiny(default.get_config(), fmnist_data_dir)
  emu.train.init_checkpoint = other.train.init_checkpoint
  emu.eval.emulate = True
  emu.eval.emulate_limit = 250
  emu.eval.adc_bits = (3, 5)
  emu_dir = tmp_path / "emu"
  res = pipeline.run(emu, str(emu_dir))
  emulated = res["accuracy"]["emulated"]
  # 8-bit activations and weights on a lossless ADC: close to the float
  # compressed model (on 250 examples, 0.04 is 10 of them).
  assert emulated == pytest.approx(res["accuracy"]["compressed"], abs=0.04)
  sweep = {p["adc_bits"]: p["accuracy"] for p in res["adc_sweep"]}
  assert set(sweep) == {3, 5} and sweep[5] == emulated
  assert 0.0 <= sweep[3] <= 1.0
  rows = (emu_dir / "adc_sweep.csv").read_text().split()
  assert rows[0] == "adc_bits,accuracy" and rows[2] == f"5,{emulated}"
  assert (emu_dir / "accuracy_vs_adc_bits.png").stat().st_size > 1000


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
  pipeline.prepare_workdir(workdir, a, overwrite=False)
  open(os.path.join(workdir, "results.json"), "w").write("{}")
  pipeline.prepare_workdir(workdir, a, overwrite=False)  # same config: ok
  b = default.get_config()
  b.train.steps = 7
  with pytest.raises(pipeline.WorkdirConflictError, match="train.steps"):
    pipeline.prepare_workdir(workdir, b, overwrite=False)
  assert os.path.exists(os.path.join(workdir, "results.json"))
  pipeline.prepare_workdir(workdir, b, overwrite=True)
  assert not os.path.exists(os.path.join(workdir, "results.json"))
  stored = json.load(open(os.path.join(workdir, "config.json")))
  assert stored["train"]["steps"] == 7


def test_workdir_from_before_a_new_config_field_resumes(tmp_path):
  workdir = str(tmp_path / "w")
  config = default.get_config()
  pipeline.prepare_workdir(workdir, config, overwrite=False)
  path = os.path.join(workdir, "config.json")
  stored = json.load(open(path))
  del stored["share"]["layer_k"], stored["compress"]["fold_bn"]
  del stored["compress"]["distill_weight"]
  del stored["compress"]["distill_temperature"]
  json.dump(stored, open(path, "w"))
  open(os.path.join(workdir, "results.json"), "w").write("{}")
  pipeline.prepare_workdir(workdir, config, overwrite=False)  # the defaults
  assert os.path.exists(os.path.join(workdir, "results.json"))
  json.dump(stored, open(path, "w"))
  config.share.layer_k = "conv1=2"  # not what the old run did
  with pytest.raises(pipeline.WorkdirConflictError, match="layer_k"):
    pipeline.prepare_workdir(workdir, config, overwrite=False)


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


@pytest.mark.parametrize("layer_k, problem", [
    ("conv1=all", "conv1=all"),
    # LeNet-5 has conv1, conv2 and dense layers: no conv9.
    ("conv1=4,conv9=4", r"\['conv9'\] match no crossbar layer"),
])
def test_bad_layer_k_fails_before_training(tmp_path, layer_k, problem):
  config = default.get_config()
  config.share.layer_k = layer_k
  with pytest.raises(ValueError, match=problem):
    pipeline.run(config, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")
  # With BN kept the layer paths differ (conv1/conv/kernel): still checked.
  config.compress.fold_bn = False
  config.share.layer_k = "^conv1/conv/=8"
  pipeline.check_layer_k(config)


@pytest.mark.parametrize("field, value", [
    ("distill_weight", 1.5), ("distill_temperature", 0.0)])
def test_bad_distillation_fails_before_training(tmp_path, field, value):
  config = default.get_config()
  config.compress[field] = value
  with pytest.raises(ValueError, match=f"compress.{field}"):
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
  assert resumed["finetune"]["accuracy_finetuned"] == pytest.approx(
      whole["finetune"]["accuracy_finetuned"], abs=1e-6)
  # Distillation changed the training: another weight, another model.
  config.compress.distill_weight = 0.0
  plain = pipeline.run(config, str(tmp_path / "plain"), until="share")
  a = pipeline._load_tree(os.path.join(str(tmp_path / "whole"),
                                       "checkpoints", "share"))
  b = pipeline._load_tree(os.path.join(str(tmp_path / "plain"),
                                       "checkpoints", "share"))
  assert plain["share"]["steps"] == whole["share"]["steps"]
  assert any(
      not np.allclose(np.asarray(x), np.asarray(y))
      for x, y in zip(jax.tree_util.tree_leaves(a["params"]),
                      jax.tree_util.tree_leaves(b["params"])))


def test_jsonable_and_atomic_write(tmp_path):
  out = pipeline.jsonable({"a": np.float32(1.5), "b": float("inf"),
                           "c": jnp.arange(2), "d": (np.int64(3),)})
  assert out == {"a": 1.5, "b": "inf", "c": [0, 1], "d": [3]}
  path = str(tmp_path / "x.json")
  pipeline.write_json(path, {"x": 1})
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
  config.share.layer_k = "conv1=1024"  # the first conv left unshared
  workdir = str(tmp_path / "bn")
  res = pipeline.run(config, workdir)
  stages = json.load(open(os.path.join(workdir, "state.json")))["stages"]
  # Nothing is folded: the kept-BN model is the baseline itself.
  assert stages["prune"]["results"]["accuracy_folded"] == (
      stages["train"]["results"]["accuracy_float"])
  params, layers, _ = compression_stages.load_compressed(
      os.path.join(workdir, "compressed_model.npz"))
  assert set(params) == {"params", "batch_stats"}
  assert "bn" in params["params"]["conv1"]
  # The compressed kernels are the shared ones (before BN's scale).
  for path, layer in layers.items():
    names = path.split("/")[1:]
    kernel = params["params"]
    for n in names:
      kernel = kernel[n]
    np.testing.assert_array_equal(np.asarray(kernel),
                                  np.asarray(layer.to_kernel()))
    # share.k stores at most k blocks per row-block; conv1 keeps all of its.
    kept = np.asarray(layer.index >= 0).sum(axis=1)
    stored = layer.stored_per_row_block()
    if path.startswith("params/conv1/"):
      np.testing.assert_array_equal(stored, kept)
    else:
      assert stored.max() <= config.share.k
  model = models.create_model("lenet5", num_classes=10)
  split = data.load_split("fashion_mnist", "eval", data_dir=fmnist_data_dir,
                          limit=500)
  got = train.evaluate(model, params, data.eval_batches(split, 250),
                       train.make_mesh())
  assert got["accuracy"] == pytest.approx(res["accuracy"]["compressed"],
                                          abs=1e-6)
  # Lossless ADC: the emulation (BN digital after shared crossbars) is
  # close to the float evaluation of the same model.
  assert res["accuracy"]["emulated"] == pytest.approx(
      res["accuracy"]["compressed"], abs=0.04)
  assert res["adc_sweep"] == []
