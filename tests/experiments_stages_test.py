"""The stages called directly, with explicit inputs and no pipeline run."""

import jax
import numpy as np
import pytest
import rsjax

from experiments import models
from experiments import pipeline
from experiments import recipe as recipe_lib
from experiments import stages
from experiments import train as train_lib
from experiments import workdir
from experiments.configs import default
from experiments_fixtures import fmnist_data_dir  # noqa: F401

HW = rsjax.HardwareSpec()  # 9x2 weight blocks


def _trainer(tmp_path):
  """A Trainer over random 4x4 images: what a user's own code would build."""
  mesh = train_lib.make_mesh()
  rng = np.random.default_rng(0)
  size = mesh.devices.size * 4

  def get_batch(step):
    r = np.random.default_rng(step)
    return {"image": r.normal(size=(size, 4, 4, 1)).astype(np.float32),
            "label": r.integers(0, 3, size).astype(np.int32)}

  return stages.Trainer(
      loop=lambda name, steps, **kw: train_lib.TrainLoop(
          name, steps, get_batch, str(tmp_path / name), **kw),
      mesh=mesh,
      optimizer=lambda lr, steps: train_lib.make_optimizer(
          "adam", lr, max(steps, 1), 0, 0.0),
      teacher=lambda weight: (None, None),
      sample=lambda n: {"image": rng.normal(size=(n, 4, 4, 1)).astype(
          np.float32), "label": rng.integers(0, 3, n).astype(np.int32)})


def test_prune_share_finetune_export_without_a_run(tmp_path):
  config = default.get_config()
  config.recipe.stages = ("prune", "share", "finetune")
  config.recipe.rules = ("^fc1/ k=2 sparsity=0.5",)
  config.prune.steps = config.prune.begin = config.prune.end = 0
  config.share.steps = config.finetune.steps = 2
  config.share.n_init = 1
  recipe = recipe_lib.from_config(config)
  model = models.MLP(num_classes=3, hidden=(18,), use_bn=False)
  variables = models.init_variables(model, jax.random.key(0), (4, 4, 1))
  trainer = _trainer(tmp_path)
  common = dict(model=model, hw=HW, trainer=trainer)

  pruned, results = stages.prune(variables, config.prune, rules=recipe.rules,
                                 schedule=recipe.schedule, **common)
  assert results == {"steps": 0}
  kernel = np.asarray(pruned["params"]["fc1"]["dense"]["kernel"])
  # Half the 9x2 blocks pruned once, at step 0 (the last row-block of the
  # 16 rows is short, so a little under half the weights).
  assert np.mean(kernel == 0) > 0.45
  shared, results = stages.share(pruned, config.share, recipe=recipe,
                                 image_shape=(4, 4, 1),
                                 key=jax.random.key(1), **common)
  assert results["method"] == "ste" and results["steps"] == 2
  tuned, results = stages.finetune(shared, config.finetune,
                                   rules=recipe.rules, **common)
  assert results["steps"] == 2
  # Shared to k = 2 (to_compressed refuses more distinct blocks a
  # row-block) and the pruned blocks still pruned, at the same places.
  layer = rsjax.to_compressed(tuned["params"], rules=recipe.rules,
                              hw=HW)["fc1/dense/kernel"]
  np.testing.assert_array_equal(np.asarray(layer.to_kernel())[kernel == 0],
                                0.0)
  assert not np.array_equal(np.asarray(layer.to_kernel()),
                            np.asarray(variables["params"]["fc1"]["dense"]
                                       ["kernel"]))

  path = str(tmp_path / "model.rsjax.npz")
  results = stages.export(tuned, path, rules=recipe.rules, hw=HW,
                          metadata={"model": "mlp"})
  assert results["file"] == "model.rsjax.npz"
  assert not results["calibration"]
  loaded = rsjax.load_compressed(path)
  np.testing.assert_array_equal(
      loaded.layers["params/fc1/dense/kernel"].to_kernel(),
      layer.to_kernel())


def test_a_baseline_of_another_model_is_refused_naming_a_variable(tmp_path):
  model = models.MLP(num_classes=3, hidden=(18,), use_bn=False)
  path = str(tmp_path / "baseline")
  workdir.save_tree(path, models.init_variables(model, jax.random.key(0),
                                                (4, 4, 1)))
  loaded = stages.load_baseline(path, model, (4, 4, 1))
  assert loaded["params"]["fc1"]["dense"]["kernel"].shape == (16, 18)
  other = models.MLP(num_classes=3, hidden=(16,), use_bn=False)
  with pytest.raises(ValueError, match=r"params/fc1/dense/bias is \(18,\), "
                     r"the model's \(16,\) \(3 differ\)"):
    stages.load_baseline(path, other, (4, 4, 1))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    stages.load_baseline(str(tmp_path / "none"), model, (4, 4, 1))


def test_the_pipeline_hands_each_stage_its_inputs(tmp_path, monkeypatch,
                                                  fmnist_data_dir):
  """Run.call's wiring: which key, hardware, rules and calibration each
  stage gets (the stages themselves stubbed: nothing trains)."""
  config = default.get_config()
  config.model.name = "mlp"
  config.data.data_dir = fmnist_data_dir
  config.data.eval_limit = 100
  config.train.eval_batch_size = 100
  config.eval.emulate = False
  config.recipe.stages = ("prune", "share", "finetune", "hwaware")
  config.recipe.rules = ("kernel$ k=8 sparsity=0.3",)
  calls = {}

  def stub(name, results):
    def stage(*args, **kwargs):
      calls[name] = (args, kwargs)
      if name == "export":
        return {}
      variables = args[0] if args and isinstance(args[0], dict) else None
      if variables is None:  # train: the model's initial variables
        variables = models.init_variables(kwargs["model"], kwargs["key"],
                                          kwargs["image_shape"])
      return variables, dict(results)
    return stage

  allocated = ("kernel$ k=2 sparsity=0.3",)
  calibration = {"stub": 1}
  for name, results in (("train", {}), ("prune", {}),
                        ("share", {"allocated_rules": list(allocated)}),
                        ("finetune", {}), ("hwaware",
                                       {"calibration": calibration}),
                        ("export", {})):
    monkeypatch.setattr(stages, name, stub(name, results))
  pipeline.run(config, str(tmp_path / "run"), until="export")

  key = jax.random.key(config.seed)
  same_key = lambda a, b: np.array_equal(jax.random.key_data(a),
                                         jax.random.key_data(b))
  hw = rsjax.HardwareSpec.from_dict(config.hw.to_dict())
  recipe_rules = (recipe_lib.parse_rule(config.recipe.rules[0]),)
  allocated_rules = (recipe_lib.parse_rule(allocated[0]),)
  assert list(calls) == ["train", "prune", "share", "finetune", "hwaware",
                         "export"]
  args, kw = calls["train"]
  assert args[0] == config.train and same_key(kw["key"],
                                              jax.random.fold_in(key, 0))
  args, kw = calls["prune"]
  assert args[1] == config.prune and kw["rules"] == recipe_rules
  assert kw["hw"] == hw and kw["schedule"].end == config.prune.end
  args, kw = calls["share"]
  assert args[1] == config.share and same_key(kw["key"], key)
  assert kw["recipe"].rules == recipe_rules
  # After sharing, the rules it allocated.
  args, kw = calls["finetune"]
  assert args[1] == config.finetune and kw["rules"] == allocated_rules
  args, kw = calls["hwaware"]
  assert args[1] == config.hwaware and kw["rules"] == allocated_rules
  assert kw["hw"] == hw and kw["emulate"] is False
  assert kw["reduce"] == config.finetune.reduce and same_key(kw["key"], key)
  args, kw = calls["export"]
  assert kw["rules"] == allocated_rules and kw["calibration"] == calibration
