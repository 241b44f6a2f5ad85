"""The experiment pipeline: float baseline -> the recipe's compression
stages -> the exported model -> evaluation (float / quantized / compressed /
emulated) -> ADC sweep -> report.

Every stage ends with a checkpoint and an entry in ``state.json`` (written
atomically): a killed run resumes at the first unfinished stage, a training
stage from its latest step checkpoint. :class:`Run` reads the config and
hands each stage its inputs (:meth:`Run.call`); the stages are in
:mod:`experiments.stages` (training, compression, export) and
:mod:`experiments.evaluation` (evaluation, ADC sweep), the files in
:mod:`experiments.workdir` and the results in :mod:`experiments.results`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Callable, Mapping

import jax
import ml_collections
import rsjax
from rsjax._src import allocation as rsjax_allocation

from experiments import array as array_lib
from experiments import data as data_lib
from experiments import distributed
from experiments import evaluation
from experiments import models as models_lib
from experiments import provenance
from experiments import recipe as recipe_lib
from experiments import results as results_lib
from experiments import stages as stages_lib
from experiments import train as train_lib
from experiments import workdir as workdir_lib

log = logging.getLogger(__name__)

STAGES = ("train", *recipe_lib.COMPRESSION_STAGES, "export", "evaluate",
          "adc_sweep")


def hardware(config: ml_collections.ConfigDict) -> rsjax.HardwareSpec:
  return rsjax.HardwareSpec.from_dict(config.hw.to_dict())


def compression_model(config: ml_collections.ConfigDict, num_classes: int):
  """The model the compression stages work on (BN folded or kept)."""
  return models_lib.create_model(config.model.name, num_classes=num_classes,
                                 use_bn=not config.compress.fold_bn)


def check(config: ml_collections.ConfigDict) -> recipe_lib.Recipe:
  """The config's recipe, checked against the model before anything runs.

  Only shapes are traced: a rule that takes no kernel, a stage without the
  rules it needs or a bad setting fails in a second, not after the baseline
  trained.

  Raises:
    ValueError: naming the config field.
  """
  recipe = recipe_lib.from_config(config)
  if "prune" in recipe.stages and config.prune.steps < recipe.schedule.end:
    raise ValueError(
        f"prune.steps={config.prune.steps} ends before the schedule reaches "
        f"its sparsity at prune.end={recipe.schedule.end}")
  info = data_lib.get_info(config.data.name)
  model = compression_model(config, info.num_classes)
  variables = jax.eval_shape(
      lambda key: models_lib.init_variables(model, key, info.image_shape),
      jax.random.key(0))
  recipe_lib.plan(recipe, variables["params"], hardware(config))
  array_lib.for_run(config, jax.random.key(0), hardware(config))
  sc = config.share
  for field in ("allocate_ou_ratio", "allocate_target"):
    value = getattr(sc, field)
    if value and not recipe.runs("share"):
      raise ValueError(f"share.{field} needs the 'share' stage")
    if value and value < 1:
      raise ValueError(f"share.{field} must be >= 1 (or 0: off), got {value}")
  if sc.allocate_objective not in rsjax_allocation.OBJECTIVES:
    raise ValueError(f"share.allocate_objective must be one of "
                     f"{rsjax_allocation.OBJECTIVES}, got "
                     f"{sc.allocate_objective!r}")
  if sc.allocate_ou_ratio and (sc.allocate_target
                               or sc.allocate_objective != "ou_ratio"):
    raise ValueError(
        "share.allocate_ou_ratio is the target of allocate_objective="
        "'ou_ratio'; for another objective set share.allocate_target")
  return recipe


class Run:
  """One pipeline run: what every stage needs."""

  def __init__(self, config, workdir, recipe, step_callback):
    self.config = config
    self.workdir = workdir
    self.recipe = recipe
    self.recipe_json = recipe_lib.describe(recipe)
    self.step_callback = step_callback
    self.state = workdir_lib.load_state(workdir)
    self.hw = hardware(config)
    self.mesh = train_lib.make_mesh()
    self.key = jax.random.key(config.seed)
    self.model_file = os.path.join(workdir, workdir_lib.MODEL_FILE)
    self.provenance = provenance.collect()
    dc = config.data
    self._split_kwargs = data_lib.split_kwargs(dc)
    self.eval_split = data_lib.load_split(
        dc.name, "eval", limit=dc.eval_limit or None, **self._split_kwargs)
    self._train_split = None
    self.info = self.eval_split.info
    self.model = models_lib.create_model(
        config.model.name, num_classes=self.info.num_classes)
    self.compress_model = compression_model(config, self.info.num_classes)
    tc = config.train
    self.trainer = stages_lib.Trainer(
        loop=self.loop, mesh=self.mesh,
        optimizer=lambda lr, steps: train_lib.make_optimizer(
            tc.optimizer, lr, max(steps, 1), 0, tc.weight_decay),
        teacher=self.teacher,
        sample=lambda n: data_lib.train_batch(
            self.train_split, n, config.seed + 1, 0, augment=False))
    self.emulator = evaluation.EmulationSetup(
        self.emulation_batches, max(config.eval.calibration_batches, 1),
        lambda hw, adc=True: array_lib.for_run(config, self.key, hw, adc=adc))
    log.info("model %s on %s %s, %d device(s) in %d process(es), hardware "
             "%s, recipe %s", config.model.name, dc.name,
             self.info.image_shape, self.mesh.devices.size,
             jax.process_count(), self.hw, self.recipe_json)

  # Stage bookkeeping.

  def done(self, stage: str) -> bool:
    return stage in self.state["stages"]

  def results(self, stage: str) -> dict[str, Any]:
    return self.state["stages"][stage]["results"]

  def finish(self, stage: str, results: Mapping[str, Any], seconds: float):
    self.state["stages"][stage] = {"results": workdir_lib.jsonable(
        dict(results)), "time_s": seconds}
    workdir_lib.write_json(os.path.join(self.workdir, "state.json"),
                           self.state)
    log.info("stage %s done in %.1f s: %s", stage, seconds,
             {k: v for k, v in results.items() if not isinstance(v, dict)})
    # What process 0 wrote in the stage (the model file) is read by all.
    distributed.barrier(f"stage_done:{stage}")

  def checkpoint(self, name: str) -> str:
    return os.path.join(self.workdir, "checkpoints", name)

  @property
  def rules(self) -> tuple[rsjax.Rule, ...]:
    """The recipe's rules, or the allocated ones once sharing chose them."""
    if self.done("share") and "allocated_rules" in self.results("share"):
      return tuple(recipe_lib.parse_rule(r)
                   for r in self.results("share")["allocated_rules"])
    return self.recipe.rules

  # Variables.

  def compress_base(self):
    """The float baseline the compression starts from.

    ``compress.fold_bn`` (the default): BatchNorm folded into the kernels
    (:func:`rsjax.fold_batchnorm`). Otherwise BatchNorm is kept: kernels
    are shared before its per-channel scale, it keeps training through
    sharing and fine-tune, and runs digitally in the emulator.
    """
    baseline = workdir_lib.load_tree(self.checkpoint("baseline"))
    if self.config.compress.fold_bn:
      return models_lib.fold_model_batchnorm(self.model, baseline)[1]
    return baseline

  def latest_variables(self):
    """The variables of the last finished compression stage (or the base)."""
    for stage in reversed(recipe_lib.COMPRESSION_STAGES):
      if self.recipe.runs(stage) and self.done(stage):
        return workdir_lib.load_tree(self.checkpoint(stage))
    return self.compress_base()

  def teacher(self, weight: float | None = None):
    """``(Distillation or None, teacher variables)``: the float baseline.

    Args:
      weight: the distillation weight; None takes the recipe's
        (``compress.distill_weight``), 0 turns distillation off. The
        temperature is always the recipe's.
    """
    distill = self.recipe.distill
    if weight is not None:
      temperature = float(self.config.compress.distill_temperature)
      distill = (float(weight), temperature) if weight > 0 else None
    if distill is None:
      return None, None
    model = self.compress_model
    distill = train_lib.Distillation(
        lambda variables, x: model.apply(variables, x, train=False),
        *distill)
    return distill, self.compress_base()

  # Data, training and evaluation.

  @property
  def train_split(self):
    if self._train_split is None:
      self._train_split = data_lib.load_split(
          self.config.data.name, "train",
          limit=self.config.data.train_limit or None, **self._split_kwargs)
    return self._train_split

  def loop(self, name: str, steps: int, **kwargs) -> train_lib.TrainLoop:
    tc, split = self.config.train, self.train_split
    augment, seed = self.config.data.augment, self.config.seed

    def get_batch(step, rows=None):
      return data_lib.train_batch(split, tc.batch_size, seed, step, augment,
                                  rows)

    return train_lib.TrainLoop(
        name, steps, get_batch, self.checkpoint(name), tc.checkpoint_every,
        tc.log_every, step_callback=self.step_callback,
        batch_size=tc.batch_size, **kwargs)

  def eval_batches(self):
    """This process's rows of the eval batches."""
    size = self.config.train.eval_batch_size
    return data_lib.eval_batches(self.eval_split, size,
                                 train_lib.batch_rows(self.mesh, size))

  def emulation_batches(self):
    """The first ``eval.emulate_limit`` eval examples (emulation is slow)."""
    limit = self.config.eval.emulate_limit or len(self.eval_split)
    split = dataclasses.replace(self.eval_split,
                                size=min(limit, len(self.eval_split)))
    return data_lib.eval_batches(split, self.config.train.eval_batch_size)

  def accuracy(self, model, variables, with_loss: bool = False):
    """Test accuracy of ``model`` (the metrics dict, loss too, with
    ``with_loss``)."""
    metrics = train_lib.evaluate(model, variables, self.eval_batches(),
                                 self.mesh, self.config.train.eval_batch_size)
    return metrics if with_loss else metrics["accuracy"]

  def applies(self, stage: str) -> bool:
    return (stage not in recipe_lib.COMPRESSION_STAGES
            or self.recipe.runs(stage))

  # The stages, each handed its inputs.

  def call(self, stage: str) -> dict[str, Any]:
    """Runs ``stage`` on the inputs the config chooses; keeps a training
    stage's variables as its checkpoint and adds their test accuracy.

    Returns:
      The stage's results (JSON values).
    """
    c, key, hw = self.config, self.key, self.hw
    emulator = self.emulator if c.eval.emulate else None
    # The rules the kernels were compressed with (None: mapped as they are).
    layer_rules = self.rules if self.recipe.compresses else None
    if stage == "train":
      baseline, results = stages_lib.train(
          c.train, model=self.model, image_shape=self.info.image_shape,
          key=jax.random.fold_in(key, 0), trainer=self.trainer)
      workdir_lib.save_tree(self.checkpoint("baseline"), baseline)
      metrics = self.accuracy(self.model, baseline, with_loss=True)
      return {"accuracy_float": metrics["accuracy"],
              "eval_loss": metrics["loss"], **results}
    if stage == "export":
      return stages_lib.export(
          self.latest_variables(), self.model_file, hw=hw, rules=layer_rules,
          metadata={"model": c.model.name, "dataset": c.data.name,
                    "recipe": self.recipe_json,
                    "provenance": self.provenance},
          calibration=(self.results("hwaware")["calibration"]
                       if self.applies("hwaware") else None))
    if stage == "evaluate":
      return {"float": self.results("train")["accuracy_float"],
              **evaluation.evaluate(
                  self.model_file, model=self.compress_model,
                  base=self.compress_base(), hw=hw, accuracy=self.accuracy,
                  emulator=emulator, key=jax.random.fold_in(key, 2))}
    if stage == "adc_sweep":
      return evaluation.adc_sweep(
          self.model_file, model=self.compress_model, hw=hw,
          adc_bits=c.eval.adc_bits, layout=self.recipe.layout,
          image_shape=self.info.image_shape, emulator=emulator,
          key=jax.random.fold_in(key, 3))
    common = dict(model=self.compress_model, hw=hw, trainer=self.trainer)
    variables = self.latest_variables()
    if stage == "prune":
      out = stages_lib.prune(variables, c.prune, rules=self.recipe.rules,
                             schedule=self.recipe.schedule, **common)
    elif stage == "share":
      out = stages_lib.share(variables, c.share, recipe=self.recipe,
                             image_shape=self.info.image_shape,
                             key=key, **common)
    elif stage == "finetune":
      out = stages_lib.finetune(variables, c.finetune, rules=self.rules,
                                **common)
    else:
      out = stages_lib.hwaware(
          variables, c.hwaware, recipe=self.recipe, rules=layer_rules,
          reduce=c.finetune.reduce, key=key, emulator=self.emulator,
          emulate=c.eval.emulate, **common)
    variables, results = out
    workdir_lib.save_tree(self.checkpoint(stage), variables)
    return {f"accuracy_{stage}": self.accuracy(self.compress_model,
                                               variables), **results}


def _log_to_workdir(workdir: str) -> logging.Handler:
  if not distributed.is_primary():
    return logging.NullHandler()  # process 0 keeps the workdir's log
  handler = logging.FileHandler(os.path.join(workdir, "log.txt"))
  handler.setFormatter(logging.Formatter(
      "%(asctime)s %(levelname)s %(message)s"))
  handler.setLevel(logging.INFO)
  logger = logging.getLogger("experiments")
  logger.addHandler(handler)
  if logger.getEffectiveLevel() > logging.INFO:
    logger.setLevel(logging.INFO)
  return handler


def run(config: ml_collections.ConfigDict, workdir: str, *,
        overwrite: bool = False,
        step_callback: Callable[[str, int], None] | None = None,
        until: str | None = None) -> dict[str, Any]:
  """Runs (or resumes) the whole pipeline in ``workdir``.

  Args:
    config: the experiment config (see ``experiments/configs/default.py``).
    workdir: where checkpoints, logs and results go.
    overwrite: delete a previous run of another config in ``workdir``.
    step_callback: ``(stage, step)`` after every training step (tests).
    until: stop after this stage (one of :data:`STAGES`); then no report is
      written and the stage results so far are returned.

  Returns:
    The results dict also written to ``results.json``.

  Raises:
    ValueError: a malformed config or recipe (before anything runs).
    workdir.WorkdirConflictError: ``workdir`` holds another config's run.
    data.DatasetNotFoundError: the dataset is missing.
    train.NanLossError: training diverged.
  """
  if until is not None and until not in STAGES:
    raise ValueError(f"until must be one of {STAGES}, got {until!r}")
  recipe = check(config)
  t_start = time.perf_counter()
  workdir_lib.claim(workdir, config, overwrite)
  handler = _log_to_workdir(workdir)
  try:
    r = Run(config, workdir, recipe, step_callback)
    for stage in STAGES:
      if not r.applies(stage):
        log.info("stage %s is not in the recipe", stage)
      elif r.done(stage):
        log.info("stage %s already done (%.1f s), skipped", stage,
                 r.state["stages"][stage]["time_s"])
      else:
        log.info("stage %s ...", stage)
        t0 = time.perf_counter()
        results = r.call(stage)
        r.finish(stage, results, time.perf_counter() - t0)
      if stage == until:
        return {s: v["results"] for s, v in r.state["stages"].items()}
    return results_lib.write(r, time.perf_counter() - t_start)
  finally:
    logging.getLogger("experiments").removeHandler(handler)
    handler.close()
