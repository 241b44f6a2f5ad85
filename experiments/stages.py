"""The pipeline's stages, each a call into the library.

``train`` trains the float baseline; ``prune`` runs :func:`rsjax.ou_pruning`
(the library's ranking and counting); ``share`` runs
:func:`rsjax.ste_sharing` or :func:`rsjax.distance_sharing` and ends with
:func:`rsjax.project`; ``finetune`` runs :func:`rsjax.centroid_finetune`; ``hwaware``
fine-tunes on the crossbar emulator (:mod:`rsjax.kernels`); ``export``
writes the whole compressed model; ``evaluate`` and ``adc_sweep`` are in
:mod:`experiments.evaluation`.

Each stage takes the :class:`experiments.pipeline.Run` and returns its
results (JSON values); a compression stage saves its variables, in which
every planned kernel is exactly its compressed value, as an orbax
checkpoint that the next stage starts from.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import rsjax
from rsjax import kernels as rk

from experiments import array as array_lib
from experiments import data as data_lib
from experiments import distributed
from experiments import evaluation
from experiments import models as models_lib
from experiments import recipe as recipe_lib
from experiments import train as train_lib
from experiments import workdir as workdir_lib

log = logging.getLogger(__name__)


# --- train -------------------------------------------------------------------


def train(run) -> dict[str, Any]:
  """The float baseline: trained, or taken from ``train.init_checkpoint``."""
  tc = run.config.train
  if tc.init_checkpoint:
    return _load_baseline(run, tc.init_checkpoint)
  variables = models_lib.init_variables(run.model, jax.random.fold_in(
      run.key, 0), run.info.image_shape)
  tx = train_lib.make_optimizer(tc.optimizer, tc.learning_rate, tc.steps,
                                tc.warmup_steps, tc.weight_decay)
  state = train_lib.create_state(run.model, variables, tx)
  state = run.loop("train", tc.steps).run(state, run.mesh)
  baseline = jax.device_get(train_lib.state_variables(state))
  workdir_lib.save_tree(run.checkpoint("baseline"), baseline)
  metrics = run.accuracy(run.model, baseline, with_loss=True)
  return {"accuracy_float": metrics["accuracy"],
          "eval_loss": metrics["loss"], "steps": tc.steps}


def _load_baseline(run, path: str) -> dict[str, Any]:
  """Takes a trained baseline (e.g. another run's checkpoints/baseline)."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"train.init_checkpoint {path} does not exist")
  baseline = workdir_lib.load_tree(path)
  expected = jax.eval_shape(lambda: models_lib.init_variables(
      run.model, jax.random.key(0), run.info.image_shape))
  shapes = lambda t: {p: x.shape for p, x in rsjax.named_leaves(t)}
  if shapes(baseline) != shapes(expected):
    raise ValueError(
        f"train.init_checkpoint {path} does not hold variables of "
        f"{run.config.model.name} for inputs {run.info.image_shape}")
  log.info("baseline loaded from %s (no training)", path)
  workdir_lib.save_tree(run.checkpoint("baseline"), jax.device_get(baseline))
  metrics = run.accuracy(run.model, baseline, with_loss=True)
  return {"accuracy_float": metrics["accuracy"],
          "eval_loss": metrics["loss"], "steps": 0,
          "init_checkpoint": os.path.abspath(path)}


# --- compression stages ------------------------------------------------------


def _train_with(run, name: str, variables, tx, steps: int):
  """Trains ``variables`` with a library wrapper ``tx`` for ``steps``.

  The forward pass runs on :func:`rsjax.training_params` (pruned, shared);
  with distillation the float baseline is the teacher.

  Returns:
    The final train state.
  """
  state = train_lib.create_state(run.compress_model, variables, tx)
  if steps > 0:
    distill, teacher = run.teacher()
    state = run.loop(name, steps, view=rsjax.training_params,
                     distill=distill, teacher_variables=teacher
                     ).run(state, run.mesh)
  return state


def _inner(run, learning_rate: float, steps: int):
  tc = run.config.train
  return train_lib.make_optimizer(tc.optimizer, learning_rate,
                                  max(steps, 1), 0, tc.weight_decay)


def _finish(run, name: str, state, params) -> dict[str, Any]:
  """Saves the stage's variables (``params`` with the state's BN stats)."""
  variables = jax.device_get({**train_lib.state_variables(state),
                              "params": params})
  workdir_lib.save_tree(run.checkpoint(name), variables)
  return {f"accuracy_{name}": run.accuracy(run.compress_model, variables)}


def prune(run) -> dict[str, Any]:
  """OU pruning with :func:`rsjax.ou_pruning` on the recipe's sparsities.

  ``prune.steps`` 0 prunes once (the schedule must then begin and end at
  0); otherwise the pruned model trains that many steps, the schedule
  choosing when blocks go.
  """
  pc = run.config.prune
  variables = run.latest_variables()
  tx = rsjax.ou_pruning(_inner(run, pc.learning_rate, pc.steps),
                        run.recipe.rules, run.hw, run.recipe.schedule)
  state = _train_with(run, "prune", variables, tx, pc.steps)
  params = rsjax.training_params(state.params, state.opt_state)
  return {**_finish(run, "prune", state, params), "steps": pc.steps}


def sharing_transform(recipe, inner, hw: rsjax.HardwareSpec, *, key,
                      recluster_every: int, n_init: int, lam: float):
  """The library wrapper of the recipe's sharing method around ``inner``."""
  common = dict(key=key, recluster_every=recluster_every, n_init=n_init)
  if recipe.sharing == "ste":
    return rsjax.ste_sharing(inner, recipe.rules, hw, **common)
  return rsjax.distance_sharing(inner, recipe.rules, hw, lam=lam, **common)


def end_sharing(recipe, params, opt_state, *, key, n_init: int):
  """``W := Z`` at the end of sharing.

  The distance loop re-clusters first (its Z was fixed since the last
  re-clustering); STE's Z already follows W.
  """
  if recipe.sharing == "distance":
    opt_state = rsjax.recluster(params, opt_state, key, n_init=n_init)
  return rsjax.project(params, opt_state)


def allocate(run, variables) -> rsjax.Allocation:
  """Per-layer ``k`` (:func:`rsjax.allocate_k`) for ``share.allocate_target``
  of ``share.allocate_objective`` (or ``share.allocate_ou_ratio``), probed
  with the loss on ``share.allocate_examples`` training images (not the test
  set); energy and latency are priced with each conv's output pixels."""
  sc = run.config.share
  batch = data_lib.train_batch(run.train_split, sc.allocate_examples,
                               run.config.seed + 1, 0, augment=False)
  model = run.compress_model

  def loss_fn(params):
    logits = model.apply({**variables, "params": params}, batch["image"],
                         train=False)
    return jnp.mean(train_lib.cross_entropy(logits, batch["label"]))

  positions = {path[len("params/"):]: n for path, n in
               models_lib.layer_positions(model, variables,
                                          run.info.image_shape).items()
               if path.startswith("params/")}
  return rsjax.allocate_k(loss_fn, variables["params"], run.recipe.rules,
                          run.hw, objective=sc.allocate_objective,
                          target=sc.allocate_target or sc.allocate_ou_ratio,
                          positions=positions,
                          key=jax.random.fold_in(run.key, 5),
                          n_init=sc.n_init)


def share(run) -> dict[str, Any]:
  """OU-level sharing with the recipe's method, ending in ``W := Z``.

  With ``share.allocate_ou_ratio`` or ``share.allocate_target`` the rules'
  ``k`` are first allocated per layer; the later stages use those rules
  (:attr:`Run.rules`).
  """
  sc = run.config.share
  variables = run.latest_variables()
  recipe, extra = run.recipe, {}
  if sc.allocate_ou_ratio or sc.allocate_target:
    allocation = allocate(run, variables)
    recipe = dataclasses.replace(recipe, rules=allocation.rules)
    extra = {"allocated_rules": [recipe_lib.format_rule(r)
                                 for r in allocation.rules],
             "allocation": allocation.to_dict()}
  tx = sharing_transform(
      recipe, _inner(run, sc.learning_rate, sc.steps), run.hw,
      key=jax.random.fold_in(run.key, 1), recluster_every=sc.recluster_every,
      n_init=sc.n_init, lam=sc.lam)
  state = _train_with(run, "share", variables, tx, sc.steps)
  params = end_sharing(recipe, state.params, state.opt_state,
                   key=jax.random.fold_in(run.key, 4), n_init=sc.n_init)
  return {**_finish(run, "share", state, params), "steps": sc.steps,
          "method": recipe.sharing, **extra}


def finetune(run) -> dict[str, Any]:
  """Centroid fine-tune (:func:`rsjax.centroid_finetune`)."""
  fc = run.config.finetune
  variables = run.latest_variables()
  tx = rsjax.centroid_finetune(_inner(run, fc.learning_rate, fc.steps),
                               run.rules, run.hw, reduce=fc.reduce)
  state = _train_with(run, "finetune", variables, tx, fc.steps)
  params = rsjax.training_params(state.params, state.opt_state)
  return {**_finish(run, "finetune", state, params), "steps": fc.steps,
          "reduce": fc.reduce}


def hwaware_hardware(hw: rsjax.HardwareSpec, hc) -> rsjax.HardwareSpec:
  """The hardware the ``hwaware`` stage trains for (its ADC settings)."""
  return hw.replace(adc_bits=int(hc.adc_bits) or hw.adc_bits,
                    adc_mode=hc.adc_mode or hw.adc_mode)


def moved_ranges(previous, current) -> dict[str, tuple[int, int]]:
  """``{layer: (old, new)}`` of the ADC ranges a re-calibration changed.

  Args:
    previous, current: :class:`rsjax.kernels.HwCalibration` s (previous
      may be None: nothing moved).
  """
  if previous is None or not previous.adc_ranges or not current.adc_ranges:
    return {}
  return {name: (int(previous.adc_ranges[name]), int(r))
          for name, r in sorted(current.adc_ranges.items())
          if name in previous.adc_ranges
          and int(previous.adc_ranges[name]) != int(r)}


def _hwaware_tx(run, inner):
  """Keeps the structure the earlier stages left: shared and pruned."""
  if run.recipe.runs("share"):
    return rsjax.centroid_finetune(inner, run.rules, run.hw,
                                   reduce=run.config.finetune.reduce)
  if run.recipe.runs("prune"):
    # The pruned blocks are zero, so pruning once at step 0 to the same
    # sparsity fixes exactly those masks.
    schedule = rsjax.PruneSchedule(begin=0, end=0, every=1,
                                   scope=run.recipe.schedule.scope)
    return rsjax.ou_pruning(inner, run.rules, run.hw, schedule)
  return inner


def training_array(run, hw: rsjax.HardwareSpec) -> dict[str, Any]:
  """The models the ``hwaware`` stage trains against: ``config.array``,
  plus ``hwaware.program_sigma`` / ``stuck_at_*`` (Gaussian programming
  error in levels and stuck-at faults drawn in training only)."""
  hc = run.config.hwaware
  models = array_lib.for_run(run.config, run.key, hw)
  try:
    # Built (and so checked) whatever the values; a zero model is no model.
    programming = rk.Programming(hc.program_sigma)
    faults = rk.StuckAt(hc.stuck_at_0, hc.stuck_at_1)
  except ValueError as e:
    raise ValueError(f"config.hwaware: {e}") from e
  programming = programming if programming.active else None
  faults = faults if faults.active else None
  if programming is None and faults is None:
    return models
  device = models["device"] or rk.Device()
  if device.programming is not None or device.faults is not None:
    raise ValueError("hwaware.program_sigma / stuck_at_* and "
                     "array.programming / stuck_at_* both set: describe the "
                     "device once, in config.array")
  models["device"] = dataclasses.replace(device, programming=programming,
                                         faults=faults)
  return models


def hwaware(run) -> dict[str, Any]:
  """Hardware-aware fine-tune: the forward on the crossbar emulator.

  Every crossbar layer runs :func:`rsjax.kernels.hwaware_layer` at
  ``hwaware.adc_bits``/``adc_mode`` with programming noise and faults drawn
  per step; the backward is straight-through (``hwaware.backward='ste'``)
  or also drops the terms of saturated partial sums (``'saturation'``).
  Input scales (and calibrated ADC ranges) come from
  ``eval.calibration_batches`` training batches; the ADC ranges are
  re-calibrated every ``hwaware.recalibrate_every`` steps on the current
  weights and batch (0: never), the input scales as ``hwaware.scales``
  says. With ``hwaware.distill_weight`` the float baseline is the teacher
  (its float outputs; the student's are emulated). With ``eval.emulate``
  the results hold the emulated accuracy at the stage's ADC before and
  after, and at a lossless ADC before (``emulated_lossless_before``), on
  ``eval.emulate_limit`` test images.
  """
  hc = run.config.hwaware
  hw = hwaware_hardware(run.hw, hc)
  models = training_array(run, hw)
  model = run.compress_model
  variables = run.latest_variables()
  tx = _hwaware_tx(run, _inner(run, hc.learning_rate, hc.steps))
  state = train_lib.create_state(model, variables, tx)
  before = lossless = None
  if run.config.eval.emulate:
    em = evaluation.emulation(run, variables, evaluation.crossbar_layers(
        run, variables["params"]))
    before = evaluation.run_emulated(run, em, hw,
                                     jax.random.fold_in(run.key, 5))
    # The reference the fine-tune is measured against: the same model on
    # an ADC that converts every partial sum exactly.
    lossless = evaluation.run_emulated(run, em, run.hw.with_lossless_adc(),
                                       jax.random.fold_in(run.key, 5),
                                       ideal_adc=True)

  def calibrate(state, step, previous):
    current = {**train_lib.state_variables(state),
               "params": rsjax.training_params(state.params,
                                               state.opt_state)}
    batches = [loop.get_batch(step + i)["image"]
               for i in range(max(run.config.eval.calibration_batches, 1))]
    previous = None if previous is None else previous["calib"]
    calib = rk.calibrate_hwaware(model, batches, hw, variables=current,
                                 previous=previous, scales=hc.scales,
                                 train=False)
    # A range that moves changes every conversion of its layer at once,
    # which the training loss shows as a jump: say when it happens.
    if previous is None and calib.adc_ranges:
      log.info("[hwaware] step %d: ADC ranges %s", step,
               {k: int(v) for k, v in sorted(calib.adc_ranges.items())})
    moved = moved_ranges(previous, calib)
    if moved:
      log.info("[hwaware] step %d: ADC ranges moved (old, new) %s", step,
               moved)
    return {"calib": calib}

  def apply_fn(v, x, rngs=None, *, calib, saturation=None, **kwargs):
    key = None if rngs is None else rngs["noise"]
    return rk.hwaware(model, hw, calib, variables=v, key=key,
                      backward=hc.backward, saturation=saturation,
                      **models)(x, **kwargs)

  # The calibration is an argument of the jitted step (refreshed between
  # steps), so re-calibrating does not compile the step again.
  distill, teacher = run.teacher(hc.distill_weight)
  loop = run.loop("hwaware", hc.steps, view=rsjax.training_params,
                  noise_key=jax.random.fold_in(run.key, 6),
                  distill=distill, teacher_variables=teacher,
                  refresh=calibrate, refresh_every=hc.recalibrate_every,
                  saturation=True)
  state, refreshed = loop.run(state.replace(apply_fn=apply_fn), run.mesh,
                              with_refreshed=True)
  params = rsjax.training_params(state.params, state.opt_state)
  # What the model was tuned to: it travels with it (the export stage
  # writes it into the model file) and emulates it.
  calib = jax.device_get(refreshed["calib"])
  if distributed.is_primary():
    workdir_lib.write_json(run.calibration_file, calib.to_dict())
  results = {**_finish(run, "hwaware", state, params), "steps": hc.steps,
             "adc_bits": hw.adc_bits, "adc_mode": hw.adc_mode}
  if run.config.eval.emulate:
    after = jax.device_get({**train_lib.state_variables(state),
                            "params": params})
    em = evaluation.emulation(run, after, evaluation.crossbar_layers(
        run, after["params"]))
    key = jax.random.fold_in(run.key, 5)
    results["emulated_before"] = before
    results["emulated_lossless_before"] = lossless
    results["emulated_after"] = evaluation.run_emulated(
        run, em, hw, key, calibration=calib)
    # The same model calibrated afresh from data, for comparison: the gap
    # is what re-calibrating a tuned model costs.
    results["emulated_after_fresh_calibration"] = evaluation.run_emulated(
        run, em, hw, key)
    fresh = evaluation.calibration_label(run, None)
    results["emulated_calibration"] = {
        "emulated_before": fresh, "emulated_lossless_before": fresh,
        "emulated_after": evaluation.calibration_label(run, calib),
        "emulated_after_fresh_calibration": fresh}
  return results


# --- export -----------------------------------------------------------------


def export(run) -> dict[str, Any]:
  """Writes the whole compressed model (``compressed_model.rsjax.npz``),
  with the hwaware stage's calibration when it ran."""
  variables = run.latest_variables()
  layers = evaluation.crossbar_layers(run, variables["params"])
  metadata = {"model": run.config.model.name,
              "dataset": run.config.data.name,
              "recipe": run.recipe_json, "provenance": run.provenance}
  calibration = None
  if run.applies("hwaware"):
    with open(run.calibration_file, encoding="utf-8") as f:
      calibration = json.load(f)
  if distributed.is_primary():  # the others read it after the stage
    rsjax.save_compressed(run.model_file, layers, run.hw, metadata=metadata,
                          params=variables, calibration=calibration)
  return {"file": os.path.basename(run.model_file), "layers": list(layers),
          "calibration": calibration is not None}


STAGE_FNS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "train": train, "prune": prune, "share": share, "finetune": finetune,
    "hwaware": hwaware, "export": export,
    "evaluate": evaluation.evaluate, "adc_sweep": evaluation.adc_sweep,
}
STAGES = tuple(STAGE_FNS)
