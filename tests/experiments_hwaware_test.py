"""The pipeline's ``hwaware`` stage: it keeps the recipe's structure."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rsjax
from rsjax import kernels as rk

from experiments import pipeline
from experiments import recipe as recipe_lib
from experiments import stages
from experiments import workdir as workdir_lib
from experiments.configs import default
# The session fixture, imported so pytest finds it in this module.
from experiments_fixtures import fmnist_data_dir  # noqa: F401


def _tiny(config, data_dir):
  config.data.data_dir = data_dir
  config.data.eval_limit = 250
  config.train.steps = 2
  config.train.batch_size = 16
  config.train.eval_batch_size = 250
  config.train.warmup_steps = 1
  config.train.log_every = 2
  config.train.checkpoint_every = 2
  config.share.steps = 1
  config.share.n_init = 1
  config.finetune.steps = 1
  config.eval.emulate = False
  config.eval.adc_bits = ()
  config.hwaware.steps = 3
  return config


@pytest.mark.parametrize("variant", ["share", "prune"])
def test_hwaware_stage_keeps_the_structure(tmp_path, fmnist_data_dir,
                                           variant, monkeypatch):
  config = _tiny(default.get_config(), fmnist_data_dir)
  loops = {}
  make_loop = pipeline.Run.loop

  def loop(self, name, steps, **kwargs):
    loops[name] = kwargs
    return make_loop(self, name, steps, **kwargs)

  monkeypatch.setattr(pipeline.Run, "loop", loop)
  if variant == "share":
    config.recipe.stages = ("share", "finetune", "hwaware")
    config.recipe.rules = ("^conv1/", "kernel$ k=2")
    config.hwaware.adc_bits = 4
    # Two segments (re-calibration), noise; the calibrated ADC and the
    # emulated before/after figures are left out: each costs minutes of
    # compiles on a loaded 2-core box (the unit tests cover calibration).
    config.hwaware.recalibrate_every = 2
    config.hwaware.program_sigma = 0.05
  else:
    config.recipe.stages = ("prune", "hwaware")
    config.recipe.rules = ("kernel$ sparsity=0.5",)
    config.hwaware.distill_weight = 0.5
    config.compress.distill_temperature = 2.0
    config.hwaware.backward = "saturation"
    # Against a real array: measured programming error drawn every step, a
    # finite on/off ratio and IR drop.
    config.array.on_off_ratio = 20.0
    config.array.programming = "wan2022"
    config.array.r_row = config.array.r_col = 1e-4
  workdir = str(tmp_path / variant)
  res = pipeline.run(config, workdir)
  state = json.load(open(os.path.join(workdir, "state.json")))["stages"]
  assert "hwaware" in state
  hw_res = state["hwaware"]["results"]
  assert hw_res["steps"] == 3
  saved = rsjax.load_compressed(os.path.join(workdir,
                                             "compressed_model.rsjax.npz"))
  distill = loops["hwaware"]["distill"]
  # The step reports input saturation; the calibration the stage ended
  # with travels in the model file.
  assert loops["hwaware"]["saturation"] is True
  calib = rk.HwCalibration.from_dict(saved.calibration)
  assert calib.hw == stages.hwaware_hardware(saved.hw, config.hwaware)
  assert set(calib.x_scales) == {
      p[len("params/"):-len("/kernel")] for p in saved.layers}
  if variant == "share":
    assert distill is None  # hwaware.distill_weight = 0: no teacher
    assert hw_res["adc_bits"] == 4 and hw_res["adc_mode"] == "clip"
    for path, layer in saved.layers.items():
      if path != "params/conv1/conv/kernel":
        assert layer.stored_per_row_block().max() <= 2
    assert res["accuracy_detail"]["hwaware_adc_bits"] == 4
  else:
    # The float baseline teaches this stage alone (the recipe has none).
    assert (distill.weight, distill.temperature) == (0.5, 2.0)
    assert loops["hwaware"]["teacher_variables"] is not None
    assert loops.get("prune", {}).get("distill") is None
    pruned = workdir_lib.load_tree(os.path.join(workdir, "checkpoints",
                                                "prune"))["params"]
    after = dict(rsjax.named_leaves(saved.params["params"]))
    for path, kernel in rsjax.named_leaves(pruned):
      if path.endswith("kernel"):
        np.testing.assert_array_equal(np.asarray(kernel) == 0,
                                      np.asarray(after[path]) == 0)
    hw_params = workdir_lib.load_tree(os.path.join(
        workdir, "checkpoints", "hwaware"))["params"]
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
               zip(jax.tree.leaves(pruned), jax.tree.leaves(hw_params)))


def test_recipe_hwaware_alone_needs_no_rules():
  config = default.get_config()
  config.recipe.stages = ("hwaware",)
  config.recipe.rules = ()
  recipe = recipe_lib.from_config(config)
  assert recipe.variant == "float baseline" and not recipe.compresses
  with pytest.raises(ValueError, match="order"):
    config.recipe.stages = ("hwaware", "prune")
    config.recipe.rules = ("kernel$ sparsity=0.5",)
    recipe_lib.from_config(config)


def test_moved_ranges_names_the_layers_whose_range_changed():
  hw = rsjax.HardwareSpec(adc_bits=3, adc_mode="calibrated")

  def calib(**ranges):
    return rk.HwCalibration({k: jnp.float32(1.0) for k in ranges},
                            {k: jnp.int32(v) for k, v in ranges.items()},
                            (), hw)

  old = calib(a=7, b=15, c=9)
  assert stages.moved_ranges(None, old) == {}
  assert stages.moved_ranges(old, old) == {}
  assert stages.moved_ranges(old, calib(a=7, b=11, c=10)) == {
      "b": (15, 11), "c": (9, 10)}
  clip = rk.HwCalibration({"a": jnp.float32(1.0)}, None, (), hw)
  assert stages.moved_ranges(clip, old) == {}
