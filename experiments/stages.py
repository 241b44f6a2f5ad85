"""The pipeline's stages up to ``export``, each a call into the library
named in its docstring. Each takes its inputs explicitly and a training
stage returns ``(variables, results)`` (docs/experiments.md, "The stages
and the workdir").
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
import rsjax
from rsjax import kernels as rk

from experiments import distributed
from experiments import evaluation
from experiments import models as models_lib
from experiments import recipe as recipe_lib
from experiments import train as train_lib
from experiments import workdir as workdir_lib

log = logging.getLogger(__name__)
Result = tuple[Any, dict[str, Any]]  # (variables, results)


@dataclasses.dataclass(frozen=True)
class Trainer:
  """How a run trains: its data, devices, optimizer and teacher.

  Attributes:
    loop: ``(name, steps, **options) -> train.TrainLoop`` on the run's
      training data, checkpointed under ``name`` (options: the loop's
      fields, e.g. ``view``, ``distill``).
    mesh: the devices a training batch is sharded over.
    optimizer: ``(learning_rate, steps) -> optax`` transformation: the
      compression stages' inner optimizer.
    teacher: ``weight -> (train.Distillation or None, teacher variables)``,
      distillation from the float baseline (``weight`` None: the recipe's,
      0: none).
    sample: ``n -> batch`` of ``n`` training examples, not augmented.
  """

  loop: Callable[..., train_lib.TrainLoop]
  mesh: Any
  optimizer: Callable[[float, int], optax.GradientTransformation]
  teacher: Callable[[float | None], tuple[Any, Any]]
  sample: Callable[[int], Mapping[str, Any]]

  def fit(self, name: str, model, variables, tx, steps: int):
    """Trains ``variables`` of ``model`` with a library wrapper ``tx``.

    The forward pass runs on :func:`rsjax.training_params` (pruned,
    shared), with the recipe's distillation from the float baseline.

    Returns:
      The final train state.
    """
    state = train_lib.create_state(model, variables, tx)
    if steps > 0:
      distill, teacher = self.teacher(None)
      state = self.loop(name, steps, view=rsjax.training_params,
                        distill=distill, teacher_variables=teacher
                        ).run(state, self.mesh)
    return state


def _variables(state, params=None):
  """The stage's variables: ``params`` (default the state's
  :func:`rsjax.training_params`) with its BatchNorm stats."""
  if params is None:
    params = rsjax.training_params(state.params, state.opt_state)
  return jax.device_get({**train_lib.state_variables(state),
                         "params": params})


# --- train -------------------------------------------------------------------


def train(tc, *, model, image_shape, key, trainer: Trainer) -> Result:
  """The float baseline (``config.train``): trained, or taken from
  ``train.init_checkpoint``."""
  if tc.init_checkpoint:
    return load_baseline(tc.init_checkpoint, model, image_shape), {
        "steps": 0, "init_checkpoint": os.path.abspath(tc.init_checkpoint)}
  variables = models_lib.init_variables(model, key, image_shape)
  tx = train_lib.make_optimizer(tc.optimizer, tc.learning_rate, tc.steps,
                                tc.warmup_steps, tc.weight_decay)
  state = train_lib.create_state(model, variables, tx)
  state = trainer.loop("train", tc.steps).run(state, trainer.mesh)
  return jax.device_get(train_lib.state_variables(state)), {
      "steps": tc.steps}


def load_baseline(path: str, model, image_shape):
  """A trained baseline (e.g. another run's checkpoints/baseline), checked
  against the model's variables."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"train.init_checkpoint {path} does not exist")
  baseline = workdir_lib.load_tree(path)
  expected = jax.eval_shape(lambda: models_lib.init_variables(
      model, jax.random.key(0), image_shape))
  shapes = lambda t: {p: x.shape for p, x in rsjax.named_leaves(t)}
  found, wanted = shapes(baseline), shapes(expected)
  if found != wanted:
    diff = sorted(p for p in found.keys() | wanted.keys()
                  if found.get(p) != wanted.get(p))
    raise ValueError(
        f"train.init_checkpoint {path} does not hold the model's variables "
        f"for inputs {tuple(image_shape)}: {diff[0]} is "
        f"{found.get(diff[0], 'missing')}, the model's "
        f"{wanted.get(diff[0], 'missing')} ({len(diff)} differ)")
  log.info("baseline loaded from %s (no training)", path)
  return jax.device_get(baseline)


# --- compression stages ------------------------------------------------------


def prune(variables, pc, *, model, rules, hw: rsjax.HardwareSpec,
          schedule: rsjax.PruneSchedule, trainer: Trainer) -> Result:
  """OU pruning (``config.prune``) with :func:`rsjax.ou_pruning`.

  ``prune.steps`` 0 prunes once (the schedule must then begin and end at
  0); otherwise the pruned model trains that many steps, the schedule
  choosing when blocks go.
  """
  tx = rsjax.ou_pruning(trainer.optimizer(pc.learning_rate, pc.steps),
                        rules, hw, schedule)
  state = trainer.fit("prune", model, variables, tx, pc.steps)
  return _variables(state), {"steps": pc.steps}


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


def allocate(variables, sc, *, model, rules, hw: rsjax.HardwareSpec,
             image_shape, key, batch) -> rsjax.Allocation:
  """Per-layer ``k`` (:func:`rsjax.allocate_k`) for ``share.allocate_target``
  of ``share.allocate_objective`` (or ``share.allocate_ou_ratio``), probed
  with the loss on ``batch`` (training images, not the test set); energy
  and latency are priced with each conv's output pixels."""

  def loss_fn(params):
    logits = model.apply({**variables, "params": params}, batch["image"],
                         train=False)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits, batch["label"]))

  positions = {path.removeprefix("params/"): n for path, n in
               models_lib.layer_positions(model, variables,
                                          image_shape).items()}
  return rsjax.allocate_k(loss_fn, variables["params"], rules, hw,
                          objective=sc.allocate_objective,
                          target=sc.allocate_target or sc.allocate_ou_ratio,
                          positions=positions, key=key, n_init=sc.n_init)


def share(variables, sc, *, model, recipe, hw: rsjax.HardwareSpec,
          image_shape, key, trainer: Trainer) -> Result:
  """OU-level sharing (``config.share``) with the recipe's method, ending in
  ``W := Z``.

  With ``share.allocate_ou_ratio`` or ``share.allocate_target`` the rules'
  ``k`` are first allocated per layer; the results then name them
  (``allocated_rules``), for the later stages.
  """
  extra = {}
  if sc.allocate_ou_ratio or sc.allocate_target:
    allocation = allocate(variables, sc, model=model, rules=recipe.rules,
                          hw=hw, image_shape=image_shape,
                          key=jax.random.fold_in(key, 5),
                          batch=trainer.sample(sc.allocate_examples))
    recipe = dataclasses.replace(recipe, rules=allocation.rules)
    extra = {"allocated_rules": [recipe_lib.format_rule(r)
                                 for r in allocation.rules],
             "allocation": allocation.to_dict()}
  tx = sharing_transform(
      recipe, trainer.optimizer(sc.learning_rate, sc.steps), hw,
      key=jax.random.fold_in(key, 1), recluster_every=sc.recluster_every,
      n_init=sc.n_init, lam=sc.lam)
  state = trainer.fit("share", model, variables, tx, sc.steps)
  params = end_sharing(recipe, state.params, state.opt_state,
                       key=jax.random.fold_in(key, 4), n_init=sc.n_init)
  return _variables(state, params), {"steps": sc.steps,
                                     "method": recipe.sharing, **extra}


def finetune(variables, fc, *, model, rules, hw: rsjax.HardwareSpec,
             trainer: Trainer) -> Result:
  """Centroid fine-tune (``config.finetune``,
  :func:`rsjax.centroid_finetune`)."""
  tx = rsjax.centroid_finetune(trainer.optimizer(fc.learning_rate, fc.steps),
                               rules, hw, reduce=fc.reduce)
  state = trainer.fit("finetune", model, variables, tx, fc.steps)
  return _variables(state), {"steps": fc.steps, "reduce": fc.reduce}


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


def _keep_structure(inner, recipe, rules, hw, reduce: str):
  """``inner`` wrapped to keep the structure the earlier stages left:
  shared and pruned."""
  if recipe.runs("share"):
    return rsjax.centroid_finetune(inner, rules, hw, reduce=reduce)
  if recipe.runs("prune"):
    # The pruned blocks are zero, so pruning once at step 0 to the same
    # sparsity fixes exactly those masks.
    schedule = rsjax.PruneSchedule(begin=0, end=0, every=1,
                                   scope=recipe.schedule.scope)
    return rsjax.ou_pruning(inner, rules, hw, schedule)
  return inner


def training_array(models: dict[str, Any], hc) -> dict[str, Any]:
  """The models the ``hwaware`` stage trains against: the run's array
  ``models`` (:func:`experiments.array.models`) plus
  ``hwaware.program_sigma`` / ``stuck_at_*`` (Gaussian programming error in
  levels and stuck-at faults drawn in training only)."""
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
  return {**models, "device": dataclasses.replace(
      device, programming=programming, faults=faults)}


def hwaware(variables, hc, *, model, recipe, rules,
            hw: rsjax.HardwareSpec, reduce: str, key, trainer: Trainer,
            emulator: evaluation.EmulationSetup,
            emulate: bool) -> Result:
  """Hardware-aware fine-tune (``config.hwaware``): the forward on the
  crossbar emulator, against the run's array (``emulator.array``),
  keeping the structure the earlier stages of ``recipe`` left
  (docs/hwaware.md, "The pipeline stage hwaware").

  The results hold the calibration the stage ended with (``calibration``,
  :meth:`rsjax.kernels.HwCalibration.to_dict`, for the model file) and,
  with ``emulate``, the emulated accuracy before and after.
  """
  hw_train = hwaware_hardware(hw, hc)
  models = training_array(emulator.array(hw_train), hc)
  tx = _keep_structure(trainer.optimizer(hc.learning_rate, hc.steps),
                       recipe, rules, hw, reduce)
  state = train_lib.create_state(model, variables, tx)
  key_emulate = jax.random.fold_in(key, 5)
  results = {"steps": hc.steps, "adc_bits": hw_train.adc_bits,
             "adc_mode": hw_train.adc_mode}
  if emulate:
    em = emulator.emulation(model, variables, evaluation.crossbar_layers(
        variables["params"], rules, hw))
    results["emulated_before"] = emulator.accuracy(em, hw_train, key_emulate)
    # The reference the fine-tune is measured against: the same model on
    # an ADC that converts every partial sum exactly.
    results["emulated_lossless_before"] = emulator.accuracy(
        em, hw.with_lossless_adc(), key_emulate, ideal_adc=True)

  def calibrate(state, step, previous):
    current = {**train_lib.state_variables(state),
               "params": rsjax.training_params(state.params,
                                               state.opt_state)}
    batches = [loop.get_batch(step + i)["image"]
               for i in range(emulator.calibration_batches)]
    previous = None if previous is None else previous["calib"]
    calib = rk.calibrate_hwaware(model, batches, hw_train, variables=current,
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
    noise = None if rngs is None else rngs["noise"]
    return rk.hwaware(model, hw_train, calib, variables=v, key=noise,
                      backward=hc.backward, saturation=saturation,
                      **models)(x, **kwargs)

  # The calibration is an argument of the jitted step (refreshed between
  # steps), so re-calibrating does not compile the step again.
  distill, teacher = trainer.teacher(hc.distill_weight)
  loop = trainer.loop("hwaware", hc.steps, view=rsjax.training_params,
                      noise_key=jax.random.fold_in(key, 6),
                      distill=distill, teacher_variables=teacher,
                      refresh=calibrate, refresh_every=hc.recalibrate_every,
                      saturation=True)
  state, refreshed = loop.run(state.replace(apply_fn=apply_fn),
                              trainer.mesh, with_refreshed=True)
  after = _variables(state)
  # What the model was tuned to: it travels with it (the export stage
  # writes it into the model file) and emulates it.
  calib = jax.device_get(refreshed["calib"])
  results["calibration"] = calib.to_dict()
  if emulate:
    em = emulator.emulation(model, after, evaluation.crossbar_layers(
        after["params"], rules, hw))
    results["emulated_after"] = emulator.accuracy(
        em, hw_train, key_emulate, calibration=calib)
    # The same model calibrated afresh from data, for comparison: the gap
    # is what re-calibrating a tuned model costs.
    results["emulated_after_fresh_calibration"] = emulator.accuracy(
        em, hw_train, key_emulate)
    fresh = emulator.label(None)
    results["emulated_calibration"] = {
        "emulated_before": fresh, "emulated_lossless_before": fresh,
        "emulated_after": emulator.label(calib),
        "emulated_after_fresh_calibration": fresh}
  return after, results


# --- export -----------------------------------------------------------------


def export(variables, path: str, *, rules, hw: rsjax.HardwareSpec,
           metadata: Mapping[str, Any], calibration=None) -> dict[str, Any]:
  """Writes the whole compressed model to ``path``
  (:func:`rsjax.save_compressed`), with the calibration a ``hwaware``
  stage ended with (its dict), if any.

  Args:
    rules: the rules the kernels were compressed with, or None (no
      compression: every kernel a dense crossbar layer).
  """
  layers = evaluation.crossbar_layers(variables["params"], rules, hw)
  if distributed.is_primary():  # the others read it after the stage
    rsjax.save_compressed(path, layers, hw, metadata=dict(metadata),
                          params=variables, calibration=calibration)
  return {"file": os.path.basename(path), "layers": list(layers),
          "calibration": calibration is not None}
