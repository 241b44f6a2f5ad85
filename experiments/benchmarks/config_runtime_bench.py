"""Expected run time of an experiment config, from timed steps on fake data.

  python -m experiments.benchmarks.config_runtime_bench \
      --config=experiments/configs/cifar10_resnet20.py [--steps=20] \
      [--json_out=bench.json]

No dataset is needed: the images are random, of the config's dataset shape
(``data.image_size`` applied), held in memory as a ``data.Split``, so the
host side of the input pipeline that runs is the in-memory one (index
gather, crop/flip augmentation, normalisation; ``data.train_batch`` and
``data.eval_batches``). Reading and decoding records of a dataset that is not
held in memory (ImageNet) is NOT included.

Every stage is timed with the pipeline's own functions (experiments.train,
experiments.stages, rsjax) built as the pipeline builds them, for the
config's recipe (experiments.recipe):

* ``train``: ``train.train_step`` jitted as ``train.TrainLoop`` jits it, the
  float optimizer of the config;
* ``prune``: BatchNorm folding + ``rsjax.ou_pruning`` pruning once (the
  recipe's schedule at step 0);
* ``share``: the configured sharing method (``stages.sharing_transform``,
  forward on ``rsjax.training_params``); its
  initialisation (one-shot k-means), the steady step, and one step that
  re-clusters (the ``lax.cond`` branch taken every ``share.recluster_every``
  steps; timed by setting ``recluster_every`` so that the step after the
  timed ones re-clusters: the compiled step is the same), then
  ``stages.end_sharing``;
* ``finetune``: ``rsjax.centroid_finetune`` on the projected weights;
* ``eval``: ``train.evaluate`` (per eval batch);
* ``emulate``: ``evaluation.emulated_accuracy`` on the fine-tuned
  compressed model (calibration, compile and per-batch time separated).

The expected total is::

  sum over stages of steps / (steps/s) + re-clusterings * their extra time
  + 8 full evaluations (train 1, prune 2, share 1, finetune 1, evaluate 3)
  + (1 + len(eval.adc_bits)) emulated evaluations of eval.emulate_limit
  + the compile (first-call) time of every stage, measured.

Checkpoint writes, TFDS preparation and the report are not included.

For sharing one accelerator with other work: ``--lock_file`` serialises the
timed sections of several benchmark processes (compiles overlap), and
``--pause_pgid_file`` names process groups (one id a line) to SIGSTOP while
a timed section runs (SIGCONT after), so the steady-state rates are measured
alone on the device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import json
import math
import os
import signal
import time
from typing import Any

from absl import app
from absl import flags
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np
import optax
import rsjax

from experiments import data as data_lib
from experiments import evaluation
from experiments import models as models_lib
from experiments import pipeline
from experiments import stages as stages_lib
from experiments import train as train_lib
from experiments import workdir as workdir_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/default.py", "Experiment config file.",
    lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 20, "Timed warm steps per stage.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps per stage (the "
                               "first compiles).")
_EVAL_BATCHES = flags.DEFINE_integer("eval_batches", 5,
                                     "Timed warm eval batches.")
_EMULATE = flags.DEFINE_bool("emulate", True, "Time the emulated eval too.")
_JSON_OUT = flags.DEFINE_string("json_out", "", "Write the figures here too.")
_LOCK_FILE = flags.DEFINE_string("lock_file", "", "flock this file around "
                                 "timed sections (several processes).")
_PAUSE_PGID_FILE = flags.DEFINE_string(
    "pause_pgid_file", "", "Process groups to SIGSTOP during timed sections.")

# Full evaluations of the eval split in one pipeline run: train 1, prune 2
# (folded, pruned), share 1, finetune 1, evaluate 3 (quantized, compressed,
# compressed_quantized).
FULL_EVALS = 8


@contextlib.contextmanager
def quiet_device(lock_file: str = "", pause_pgid_file: str = ""):
  """Holds ``lock_file`` and stops the listed process groups meanwhile."""
  lock = open(lock_file, "a") if lock_file else None  # pylint: disable=consider-using-with
  pgids = []
  try:
    if lock is not None:
      fcntl.flock(lock, fcntl.LOCK_EX)
    if pause_pgid_file and os.path.exists(pause_pgid_file):
      with open(pause_pgid_file) as f:
        pgids = [int(line) for line in f if line.strip()]
      for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
          os.killpg(pgid, signal.SIGSTOP)
      if pgids:
        time.sleep(0.5)  # let their queued device work drain
    yield
  finally:
    for pgid in pgids:
      with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGCONT)
    if lock is not None:
      fcntl.flock(lock, fcntl.LOCK_UN)
      lock.close()


def _ready(tree):
  return jax.block_until_ready(tree)


def synthetic_split(info: data_lib.DatasetInfo, size: int, seed: int
                    ) -> data_lib.Split:
  """An in-memory split of random uint8 images of the dataset's shape."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (size, *info.image_shape), dtype=np.uint8)
  labels = rng.integers(0, info.num_classes, (size,), dtype=np.int32)
  return data_lib.Split(info, size, images, labels)


def _step_fn(mesh, view=None):
  """``train.train_step`` jitted exactly as ``train.TrainLoop.run`` does."""
  replicated, _ = train_lib.shardings(mesh)
  return jax.jit(functools.partial(train_lib.train_step, constraint=None,
                                   view=view),
                 donate_argnums=0, out_shardings=(replicated, replicated))


def _time_loop(step_fn, state, get_batch, mesh, first: int, warmup: int,
               steps: int, quiet) -> tuple[Any, dict[str, float]]:
  """Warm-up steps (the first compiles), then ``steps`` timed steps.

  Each step is what ``TrainLoop.run`` does per step: the host batch, its
  transfer, the jitted step.
  """
  replicated, sharded = train_lib.shardings(mesh)
  state = jax.device_put(state, replicated)  # as TrainLoop.run

  def one(state, step):
    batch = get_batch(step)
    train_lib.check_batch(batch["image"].shape[0], mesh)
    return step_fn(state, jax.device_put(dict(batch), sharded))

  t0 = time.perf_counter()
  state, metrics = one(state, first)
  _ready((state, metrics))
  first_s = time.perf_counter() - t0
  for i in range(1, warmup):
    state, metrics = one(state, first + i)
  _ready(state)
  with quiet():
    t0 = time.perf_counter()
    for i in range(steps):
      state, metrics = one(state, first + warmup + i)
    _ready((state, metrics))
    elapsed = time.perf_counter() - t0
  step_s = elapsed / max(steps, 1)
  return state, {"first_call_s": first_s, "step_s": step_s,
                 "steps_per_s": 1.0 / max(step_s, 1e-12),
                 "compile_s": max(first_s - step_s, 0.0),
                 "loss_finite": bool(np.isfinite(float(metrics["loss"])))}


def bench(config: ml_collections.ConfigDict, *, steps: int = 20,
          warmup: int = 2, eval_batches: int = 5, emulate: bool = True,
          lock_file: str = "", pause_pgid_file: str = "",
          progress=None) -> dict[str, Any]:
  """Times every stage of ``config``'s pipeline on fake data.

  Args:
    config: an experiment config.
    steps: timed warm steps per training stage.
    warmup: untimed steps before them (>= 1; the first compiles).
    eval_batches: timed warm eval batches.
    emulate: also time the emulated evaluation.
    lock_file, pause_pgid_file: see the module doc.
    progress: called with the partial results after every stage.

  Returns:
    ``{'config': ..., 'stages': {name: figures}, 'expected_s': {...}}``.
  """
  if warmup < 1 or steps < 1:
    raise ValueError("steps and warmup must be >= 1")
  quiet = functools.partial(quiet_device, lock_file, pause_pgid_file)
  progress = progress or (lambda r: None)
  tc, sc, fc = config.train, config.share, config.finetune
  info = data_lib.get_info(config.data.name)
  if config.data.image_size and config.data.image_size != info.image_shape[0]:
    info = dataclasses.replace(info, image_shape=(
        config.data.image_size, config.data.image_size, info.image_shape[2]))
  mesh = train_lib.make_mesh()
  hw = pipeline.hardware(config)
  recipe = pipeline.check(config)
  key = jax.random.key(config.seed)
  model = models_lib.create_model(config.model.name,
                                  num_classes=info.num_classes)
  n_train = max(4 * tc.batch_size, 8)
  train_split = synthetic_split(info, n_train, 1)

  def get_batch(step):
    return data_lib.train_batch(train_split, tc.batch_size, config.seed, step,
                                config.data.augment)

  out: dict[str, Any] = {
      "config": {"model": config.model.name, "dataset": config.data.name,
                 "image_shape": list(info.image_shape),
                 "batch_size": tc.batch_size,
                 "eval_batch_size": tc.eval_batch_size,
                 "train_steps": tc.steps, "share_steps": sc.steps,
                 "share_method": sc.method,
                 "rules": list(config.recipe.rules),
                 "recluster_every": sc.recluster_every,
                 "finetune_steps": fc.steps,
                 "emulate_limit": config.eval.emulate_limit,
                 "adc_bits": list(config.eval.adc_bits)},
      "devices": [str(d) for d in jax.local_devices()],
      "steps_timed": steps, "stages": {}}
  stages = out["stages"]

  # Float training.
  t0 = time.perf_counter()
  variables = models_lib.init_variables(model, jax.random.fold_in(key, 0),
                                        info.image_shape)
  tx = train_lib.make_optimizer(tc.optimizer, tc.learning_rate, tc.steps,
                                tc.warmup_steps, tc.weight_decay)
  state = train_lib.create_state(model, variables, tx)
  init_s = time.perf_counter() - t0
  state, stages["train"] = _time_loop(_step_fn(mesh), state, get_batch, mesh,
                                      0, warmup, steps, quiet)
  stages["train"]["init_s"] = init_s
  variables = jax.device_get(train_lib.state_variables(state))
  del state
  progress(out)

  # Prune once (fold BatchNorm, the recipe's pruning at step 0).
  t0 = time.perf_counter()
  folded_model, folded = model, variables
  if config.compress.fold_bn:
    folded_model, folded = models_lib.fold_model_batchnorm(model, variables)
  params = folded
  if recipe.runs("prune"):
    prune_tx = rsjax.ou_pruning(optax.identity(), recipe.rules, hw,
                                recipe.schedule)
    params = {**folded, "params": rsjax.training_params(
        folded["params"], prune_tx.init(folded["params"]))}
  params = _ready(params)
  stages["prune"] = {"one_shot_s": time.perf_counter() - t0,
                     "layers": len(rsjax.make_plan(params["params"],
                                                   recipe.rules, hw))}
  progress(out)

  # Share: the recluster step is the one after the timed steps.
  inner = train_lib.make_optimizer(tc.optimizer, sc.learning_rate,
                                   max(sc.steps, 1), 0, tc.weight_decay)
  share_tx = stages_lib.sharing_transform(
      recipe, inner, hw, key=jax.random.fold_in(key, 1),
      recluster_every=warmup + steps + 1, lam=sc.lam, n_init=sc.n_init)
  t0 = time.perf_counter()
  state = train_lib.create_state(folded_model, params, share_tx)
  _ready(state)
  share_init_s = time.perf_counter() - t0
  share_fn = _step_fn(mesh, view=rsjax.training_params)
  state, stages["share"] = _time_loop(share_fn, state, get_batch, mesh, 0,
                                      warmup, steps, quiet)
  _, sharded = train_lib.shardings(mesh)
  batch = jax.device_put(dict(get_batch(warmup + steps)), sharded)
  with quiet():
    t0 = time.perf_counter()
    state, _ = share_fn(state, batch)
    _ready(state)
    recluster_step_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  shared = stages_lib.end_sharing(recipe, state.params, state.opt_state,
                                  key=jax.random.fold_in(key, 4),
                                  n_init=sc.n_init)
  _ready(shared)
  stages["share"].update(
      init_kmeans_s=share_init_s, recluster_step_s=recluster_step_s,
      recluster_extra_s=max(recluster_step_s - stages["share"]["step_s"], 0.),
      finish_s=time.perf_counter() - t0)
  del state
  progress(out)

  # Centroid fine-tune.
  ft_inner = train_lib.make_optimizer(tc.optimizer, fc.learning_rate,
                                      max(fc.steps, 1), 0, tc.weight_decay)
  ft_tx = rsjax.centroid_finetune(ft_inner, recipe.rules, hw,
                                  reduce=fc.reduce)
  t0 = time.perf_counter()
  state = train_lib.create_state(folded_model, {**params, "params": shared},
                                 ft_tx)
  _ready(state)
  ft_init_s = time.perf_counter() - t0
  state, stages["finetune"] = _time_loop(
      _step_fn(mesh, view=rsjax.training_params), state, get_batch, mesh, 0,
      warmup, steps, quiet)
  stages["finetune"]["init_s"] = ft_init_s
  compressed = jax.device_get({
      **train_lib.state_variables(state),
      "params": rsjax.training_params(state.params, state.opt_state)})
  layers = {f"params/{p}": layer for p, layer in
            rsjax.to_compressed(state.params, state.opt_state).items()}
  del state
  progress(out)

  # Evaluation (float model of the compressed weights; BN-free).
  ebs = tc.eval_batch_size
  eval_split = synthetic_split(info, ebs * eval_batches, 2)
  one_batch = dataclasses.replace(eval_split, size=ebs)
  t0 = time.perf_counter()
  train_lib.evaluate(folded_model, compressed,
                     data_lib.eval_batches(one_batch, ebs), mesh)
  first_s = time.perf_counter() - t0
  with quiet():
    t0 = time.perf_counter()
    train_lib.evaluate(folded_model, compressed,
                       data_lib.eval_batches(eval_split, ebs), mesh)
    batch_s = (time.perf_counter() - t0) / eval_batches
  stages["eval"] = {"first_call_s": first_s, "batch_s": batch_s,
                    "compile_s": max(first_s - batch_s, 0.0),
                    "examples_per_s": ebs / max(batch_s, 1e-12)}
  progress(out)

  # Emulated evaluation: each call calibrates, compiles and runs; the
  # pipeline's calls differ in adc_bits (a new compile each), so do these.
  if emulate and config.eval.emulate:
    bits = [int(b) for b in config.eval.adc_bits] or [hw.adc_bits]
    bits = (bits * 3)[:3]
    if len(set(bits)) < 3:
      bits = [hw.adc_bits, hw.adc_bits + 1, hw.adc_bits + 2]
    # Two calls of emulated_accuracy on one batch (the first pays the
    # one-time compiles, the second what every later call pays), then the
    # warm per-batch time.

    def emulated(n, adc_bits):
      split = dataclasses.replace(eval_split, size=n * ebs)
      t0 = time.perf_counter()
      batches = lambda: data_lib.eval_batches(split, ebs)
      em = evaluation.Emulation(folded_model, compressed, layers,
                                [b["image"] for b in batches()][:2])
      evaluation.emulated_accuracy(em, hw.replace(adc_bits=adc_bits),
                                   batches, key=jax.random.fold_in(key, 2))
      return time.perf_counter() - t0
    first = emulated(1, bits[0])
    one = emulated(1, bits[1])
    # The warm per-batch time: the jitted emulated forward of
    # evaluation.Emulation, timed over warm batches.
    ehw = hw.replace(adc_bits=bits[2])
    images = [b["image"] for b in data_lib.eval_batches(eval_split, ebs)]
    em = evaluation.Emulation(folded_model, compressed, dict(layers),
                              images[:2])
    programmed = em.program(ehw, key=jax.random.fold_in(key, 2))
    run = lambda x: em.logits(programmed, x)
    _ready(run(images[0]))
    with quiet():
      t0 = time.perf_counter()
      for x in images:
        _ready(run(x))
      batch_s = (time.perf_counter() - t0) / len(images)
    stages["emulate"] = {"first_call_s": first, "one_batch_call_s": one,
                         "batch_s": batch_s,
                         "overhead_s": max(one - batch_s, 0.0),
                         "first_overhead_s": max(first - batch_s, 0.0),
                         "examples_per_s": ebs / max(batch_s, 1e-12)}
    progress(out)

  out["expected_s"] = expected_seconds(config, stages, info)
  progress(out)
  return out


def _eval_examples(config, info) -> int:
  """Examples in the eval split (limits applied)."""
  sizes = {"fashion_mnist": 10_000, "cifar10": 10_000,
           "imagenet2012": 50_000}
  n = sizes.get(info.name, 10_000)
  return min(n, config.data.eval_limit) if config.data.eval_limit else n


def expected_seconds(config, stages, info) -> dict[str, float]:
  """The expected wall time per stage (module doc), from measured figures."""
  tc, sc, fc = config.train, config.share, config.finetune
  ebs = tc.eval_batch_size
  eval_batches = math.ceil(_eval_examples(config, info) / ebs)
  exp = {}
  tr, sh, ft = stages["train"], stages["share"], stages["finetune"]
  exp["train"] = tc.steps * tr["step_s"] + tr["compile_s"] + tr["init_s"]
  exp["prune"] = stages["prune"]["one_shot_s"]
  exp["share"] = (sc.steps * sh["step_s"] + sh["compile_s"]
                  + sh["init_kmeans_s"] + sh["finish_s"]
                  + (sc.steps // max(sc.recluster_every, 1))
                  * sh["recluster_extra_s"])
  exp["finetune"] = fc.steps * ft["step_s"] + ft["compile_s"] + ft["init_s"]
  ev = stages["eval"]
  exp["eval"] = FULL_EVALS * eval_batches * ev["batch_s"] + ev["compile_s"]
  if "emulate" in stages and config.eval.emulate:
    em = stages["emulate"]
    n = math.ceil(min(config.eval.emulate_limit or 10**9,
                      _eval_examples(config, info)) / ebs)
    calls = 1 + len(config.eval.adc_bits)
    exp["emulate"] = (em["first_overhead_s"] + (calls - 1) * em["overhead_s"]
                      + calls * n * em["batch_s"])
  exp["compile_total"] = (tr["compile_s"] + sh["compile_s"] + ft["compile_s"]
                          + ev["compile_s"])
  exp["total"] = sum(v for k, v in exp.items() if k != "compile_total")
  return exp


def _fmt(seconds: float) -> str:
  if seconds >= 3600:
    return f"{seconds / 3600:.2f} h"
  if seconds >= 60:
    return f"{seconds / 60:.1f} min"
  return f"{seconds:.1f} s"


def summary(out: dict[str, Any]) -> str:
  """A plain-text table of :func:`bench`'s figures."""
  c, s = out["config"], out["stages"]
  lines = [f"{c['model']} on {c['dataset']} {tuple(c['image_shape'])}, "
           f"batch {c['batch_size']}, devices {out['devices']}"]
  for name in ("train", "share", "finetune"):
    f = s[name]
    lines.append(f"  {name:<9} {f['steps_per_s']:9.1f} steps/s  "
                 f"compile {f['compile_s']:6.1f} s")
  sh = s["share"]
  lines.append(f"  share     init k-means {sh['init_kmeans_s']:.2f} s, "
               f"re-cluster step +{sh['recluster_extra_s']:.3f} s, "
               f"finish {sh['finish_s']:.2f} s ({c['share_method']}, "
               f"rules {', '.join(c['rules'])})")
  lines.append(f"  prune     {s['prune']['one_shot_s']:.2f} s one shot")
  e = s["eval"]
  lines.append(f"  eval      {e['examples_per_s']:9.0f} examples/s  "
               f"compile {e['compile_s']:6.1f} s")
  if "emulate" in s:
    m = s["emulate"]
    lines.append(f"  emulate   {m['examples_per_s']:9.1f} examples/s  "
                 f"calibrate+compile {m['first_overhead_s']:6.1f} s first "
                 f"call, {m['overhead_s']:6.1f} s later ones")
  if "expected_s" in out:
    exp = out["expected_s"]
    lines.append("  expected: " + ", ".join(
        f"{k} {_fmt(v)}" for k, v in exp.items() if k != "total"))
    lines.append(f"  expected total: {_fmt(exp['total'])} "
                 f"({exp['total']:.0f} s)")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  json_out = _JSON_OUT.value

  def progress(out):
    if json_out:
      workdir_lib.write_file(json_out, json.dumps(out, indent=2) + "\n")

  out = bench(_CONFIG.value, steps=_STEPS.value, warmup=_WARMUP.value,
              eval_batches=_EVAL_BATCHES.value, emulate=_EMULATE.value,
              lock_file=_LOCK_FILE.value,
              pause_pgid_file=_PAUSE_PGID_FILE.value, progress=progress)
  print(summary(out))


if __name__ == "__main__":
  app.run(main)
