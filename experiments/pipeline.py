"""The experiment pipeline: data -> trained -> pruned -> shared -> fine-tuned
-> evaluated (float / quantized / compressed / emulated) -> ADC sweep ->
results, plots and the exported compressed model.

Every stage ends with an orbax checkpoint and an entry in ``state.json``
(written atomically): a killed run resumes at the first unfinished stage,
the training stages from their latest step checkpoint. Compression and
emulation go through :mod:`experiments.compression_stages` only.

Workdir layout::

  config.json          the run's config (a different one is refused)
  state.json           finished stages, their results and timings
  log.txt              progress log
  checkpoints/{train,baseline,prune,share,finetune,compressed}/
  results.json         the summary (see README)
  adc_sweep.csv        accuracy per ADC resolution
  accuracy_vs_adc_bits.png, layer_compression.png
  compressed_model.npz codebooks, index tables and the other parameters
  compressed_layers.rsjax.npz  the layers in rsjax's format (once it exists)
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import re
import shutil
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import rsjax

from experiments import compression_stages as stages_lib
from experiments import config_fields
from experiments import data as data_lib
from experiments import models as models_lib
from experiments import train as train_lib

log = logging.getLogger(__name__)

STAGES = ("train", "prune", "share", "finetune", "evaluate", "adc_sweep")
_OWNED = ("config.json", "state.json", "log.txt", "checkpoints",
          "results.json", "adc_sweep.csv", "accuracy_vs_adc_bits.png",
          "layer_compression.png", "compressed_model.npz",
          "compressed_layers.rsjax.npz")
COMPRESSION_KEYS = ("ou_ratio", "bit_ratio", "fp32_ratio", "crossbar_ratio",
                    "stored_ous", "dense_ous", "index_bits")


class WorkdirConflictError(RuntimeError):
  """The workdir holds a run of another config."""


# --- Small pure helpers ------------------------------------------------------


def flatten(tree) -> dict[str, Any]:
  """``{'params/conv1/conv/kernel': leaf, ...}``."""
  return dict(rsjax.named_leaves(tree))


unflatten = stages_lib.unflatten  # the inverse of flatten


def select_kernels(variables, include: str, exclude: str) -> list[str]:
  """Paths of the crossbar kernels (2-D or 4-D) the regexes select."""
  inc, exc = re.compile(include), re.compile(exclude)
  return [p for p, x in flatten(variables).items()
          if x.ndim in (2, 4) and inc.search(p)
          and not (exclude and exc.search(p))]


def hardware(config: ml_collections.ConfigDict) -> rsjax.HardwareSpec:
  return rsjax.HardwareSpec.from_dict(config.hw.to_dict())


def config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as plain JSON values (tuples become lists)."""
  return json.loads(json.dumps(config.to_dict()))


def jsonable(x):
  """Numpy/JAX values to JSON; ``inf`` as the string ``'inf'``, NaN null."""
  if isinstance(x, Mapping):
    return {str(k): jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, (np.ndarray, jax.Array)):
    return jsonable(np.asarray(x).tolist())
  if isinstance(x, np.generic):
    x = x.item()
  if isinstance(x, float) and not math.isfinite(x):
    return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
  return x


atomic_write = stages_lib.atomic_write


def write_json(path: str, obj) -> None:
  atomic_write(path, json.dumps(jsonable(obj), indent=2, sort_keys=False)
               + "\n")


# --- Workdir -----------------------------------------------------------------


# Kept under its old names: see experiments/config_fields.py.
ADDED_FIELDS = config_fields.ADDED_FIELDS
_with_added_fields = config_fields.with_added_fields


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict,
                    overwrite: bool) -> None:
  """Creates the workdir, or checks it holds a run of this same config.

  Raises:
    WorkdirConflictError: it holds another config's run and not
      ``overwrite``.
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  current = config_json(config)
  if os.path.exists(path):
    with open(path) as f:
      stored = _with_added_fields(json.load(f))
    if stored != current and not overwrite:
      diff = _config_diff(stored, current)
      raise WorkdirConflictError(
          f"{workdir} holds a run of another config (differences: {diff}). "
          "Use another --workdir, or pass --overwrite to delete that run.")
    if overwrite:
      log.info("--overwrite: deleting the previous run in %s", workdir)
      for name in _OWNED:
        p = os.path.join(workdir, name)
        if os.path.isdir(p):
          shutil.rmtree(p)
        elif os.path.exists(p):
          os.remove(p)
  write_json(path, current)


def _config_diff(a, b, prefix="") -> list[str]:
  out = []
  for k in sorted(set(a) | set(b)):
    va, vb = a.get(k), b.get(k)
    if isinstance(va, dict) and isinstance(vb, dict):
      out += _config_diff(va, vb, f"{prefix}{k}.")
    elif va != vb:
      out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
  return out[:10]


def _load_state(workdir: str) -> dict[str, Any]:
  path = os.path.join(workdir, "state.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return {"stages": {}}


def _save_tree(path: str, tree) -> None:
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.abspath(path), tree, force=True)
    ckptr.wait_until_finished()


def _load_tree(path: str):
  with ocp.StandardCheckpointer() as ckptr:
    tree = ckptr.restore(os.path.abspath(path))
  return jax.tree_util.tree_map(jnp.asarray, tree)


# --- The run -----------------------------------------------------------------


class _Run:
  """One pipeline run: the objects every stage needs."""

  def __init__(self, config, workdir, step_callback):
    self.config = config
    self.workdir = workdir
    self.step_callback = step_callback
    self.ckpt = os.path.join(workdir, "checkpoints")
    self.state = _load_state(workdir)
    self.hw = hardware(config)
    self.mesh = train_lib.make_mesh()
    self.key = jax.random.key(config.seed)
    dc = config.data
    kwargs = dict(data_dir=dc.data_dir or None, download=dc.download,
                  source_dir=dc.source_dir, image_size=dc.image_size or None)
    self.eval_split = data_lib.load_split(
        dc.name, "eval", limit=dc.eval_limit or None, **kwargs)
    self._train_split = None
    self._split_kwargs = kwargs
    self.info = self.eval_split.info
    self.model = models_lib.create_model(
        config.model.name, num_classes=self.info.num_classes)
    log.info("model %s on %s %s, %d device(s), hardware %s",
             config.model.name, dc.name, self.info.image_shape,
             self.mesh.devices.size, self.hw)

  @property
  def train_split(self):
    if self._train_split is None:
      self._train_split = data_lib.load_split(
          self.config.data.name, "train",
          limit=self.config.data.train_limit or None, **self._split_kwargs)
    return self._train_split

  def done(self, stage: str) -> bool:
    return stage in self.state["stages"]

  def results(self, stage: str) -> dict[str, Any]:
    return self.state["stages"][stage]["results"]

  def finish(self, stage: str, results: Mapping[str, Any], seconds: float):
    self.state["stages"][stage] = {"results": jsonable(dict(results)),
                                   "time_s": seconds}
    write_json(os.path.join(self.workdir, "state.json"), self.state)
    log.info("stage %s done in %.1f s: %s", stage, seconds,
             {k: v for k, v in results.items() if not isinstance(v, dict)})

  def eval_batches(self):
    return data_lib.eval_batches(self.eval_split,
                                 self.config.train.eval_batch_size)

  def emulation_batches(self):
    """The first ``eval.emulate_limit`` eval examples (emulation is slow)."""
    limit = self.config.eval.emulate_limit or len(self.eval_split)
    split = dataclasses.replace(self.eval_split,
                                size=min(limit, len(self.eval_split)))
    return data_lib.eval_batches(split, self.config.train.eval_batch_size)

  def evaluate(self, model, variables) -> float:
    return train_lib.evaluate(model, variables, self.eval_batches(),
                              self.mesh)["accuracy"]

  def get_batch_fn(self):
    tc, split = self.config.train, self.train_split
    augment, seed = self.config.data.augment, self.config.seed

    def get_batch(step):
      return data_lib.train_batch(split, tc.batch_size, seed, step, augment)
    return get_batch

  def folded(self):
    baseline = _load_tree(os.path.join(self.ckpt, "baseline"))
    return models_lib.fold_batchnorm(self.model, baseline)

  def compress_base(self):
    """The model and variables that pruning and sharing work on.

    ``compress.fold_bn`` (the default): the BN-free model, BatchNorm folded
    into the kernels. Otherwise the model as trained, BatchNorm kept: the
    kernels are shared before BN's per-channel scale, BN keeps training
    (batch statistics) through sharing and fine-tune, and the emulator runs
    it digitally after the crossbars of shared layers.
    """
    if self.config.compress.fold_bn:
      return self.folded()
    return self.model, _load_tree(os.path.join(self.ckpt, "baseline"))

  @property
  def compress_model(self):
    """The model of :meth:`compress_base`, without reading the checkpoint."""
    if self.config.compress.fold_bn:
      return self.model.clone(use_bn=False)  # what fold_batchnorm returns
    return self.model

  def kernel_paths(self, variables) -> list[str]:
    cc = self.config.compress
    return select_kernels(variables, cc.include, cc.exclude)


def _stage_train(run: _Run) -> dict[str, Any]:
  tc = run.config.train
  if tc.init_checkpoint:
    return _load_baseline(run, tc.init_checkpoint)
  init_key = jax.random.fold_in(run.key, 0)
  variables = models_lib.init_variables(run.model, init_key,
                                        run.info.image_shape)
  tx = train_lib.make_optimizer(tc.optimizer, tc.learning_rate, tc.steps,
                                tc.warmup_steps, tc.weight_decay)
  state = train_lib.create_state(run.model, variables, tx)
  loop = train_lib.TrainLoop(
      "train", tc.steps, run.get_batch_fn(),
      os.path.join(run.ckpt, "train"), tc.checkpoint_every, tc.log_every,
      step_callback=run.step_callback)
  state = loop.run(state, run.mesh)
  baseline = jax.device_get(train_lib.state_variables(state))
  _save_tree(os.path.join(run.ckpt, "baseline"), baseline)
  metrics = train_lib.evaluate(run.model, baseline, run.eval_batches(),
                               run.mesh)
  return {"accuracy_float": metrics["accuracy"],
          "eval_loss": metrics["loss"], "steps": tc.steps}


def _load_baseline(run: _Run, path: str) -> dict[str, Any]:
  """Takes a trained baseline (e.g. another run's checkpoints/baseline)."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"train.init_checkpoint {path} does not exist")
  baseline = _load_tree(path)
  expected = jax.eval_shape(
      lambda: models_lib.init_variables(run.model, jax.random.key(0),
                                        run.info.image_shape))
  shapes = lambda t: {p: tuple(x.shape) for p, x in flatten(t).items()}
  if shapes(baseline) != shapes(expected):
    raise ValueError(
        f"train.init_checkpoint {path} does not hold variables of "
        f"{run.config.model.name} for inputs {run.info.image_shape}")
  log.info("baseline loaded from %s (no training)", path)
  _save_tree(os.path.join(run.ckpt, "baseline"), jax.device_get(baseline))
  metrics = train_lib.evaluate(run.model, baseline, run.eval_batches(),
                               run.mesh)
  return {"accuracy_float": metrics["accuracy"],
          "eval_loss": metrics["loss"], "steps": 0,
          "init_checkpoint": os.path.abspath(path)}


def _stage_prune(run: _Run) -> dict[str, Any]:
  model, base = run.compress_base()
  flat = flatten(base)
  paths = run.kernel_paths(base)
  if not paths:
    raise ValueError(
        f"compress.include={run.config.compress.include!r} selects no kernel")
  pruned = stages_lib.prune({p: flat[p] for p in paths}, run.hw,
                            run.config.prune.ratio)
  flat.update(pruned)
  params = unflatten(flat)
  _save_tree(os.path.join(run.ckpt, "prune"), params)
  zero = sum(int(jnp.sum(pruned[p] == 0)) for p in paths)
  total = sum(int(pruned[p].size) for p in paths)
  return {"accuracy_folded": run.evaluate(model, base),
          "accuracy_pruned": run.evaluate(model, params),
          "layers": paths, "zero_weight_fraction": zero / max(total, 1)}


def _layers_tree(layers: Mapping[str, rsjax.CompressedLayer]):
  return unflatten({f"{p}/codebook": l.codebook for p, l in layers.items()}
                   | {f"{p}/index": l.index for p, l in layers.items()})


def _layers_from_tree(tree, params_flat, paths):
  flat = flatten(tree)
  return {p: rsjax.CompressedLayer(
      flat[f"{p}/codebook"], flat[f"{p}/index"].astype(jnp.int32),
      tuple(int(d) for d in params_flat[p].shape)) for p in paths}


def _params_path(path: str) -> str:
  """``'params/conv1/kernel'`` -> ``'conv1/kernel'`` (the optimizer's tree)."""
  return path[len("params/"):] if path.startswith("params/") else path


def _sharing_rules(run: _Run) -> list[rsjax.Rule]:
  paths = run.results("prune")["layers"]
  return stages_lib.sharing_rules([_params_path(p) for p in paths],
                                  run.config.share.k, run.config.prune.ratio,
                                  run.config.share.get("layer_k", ""))


def distill_settings(config: ml_collections.ConfigDict
                     ) -> tuple[float, float] | None:
  """``(weight, temperature)`` of the compression stages' distillation.

  Returns:
    None when ``compress.distill_weight`` is 0 (off).

  Raises:
    ValueError: a weight outside [0, 1] or a temperature <= 0, naming the
      config field.
  """
  cc = config.compress
  weight = float(cc.get("distill_weight", 0.0))
  temperature = float(cc.get("distill_temperature", 4.0))
  if not 0.0 <= weight <= 1.0:
    raise ValueError(
        f"compress.distill_weight must be in [0, 1], got {weight}")
  if not temperature > 0:
    raise ValueError(
        f"compress.distill_temperature must be > 0, got {temperature}")
  return (weight, temperature) if weight > 0 else None


def _teacher(run: _Run):
  """The float baseline as teacher: ``(Distillation or None, variables)``.

  It is the compression stages' own starting point (BN folded or kept), the
  same function as the float baseline at inference.
  """
  settings = distill_settings(run.config)
  if settings is None:
    return None, None
  model, base = run.compress_base()
  distill = train_lib.Distillation(
      lambda variables, x: model.apply(variables, x, train=False), *settings)
  return distill, base


def _train_with(run: _Run, name: str, model, variables, tx, steps: int):
  """Trains ``variables`` with a sharing wrapper ``tx`` (forward on Z).

  With ``compress.distill_weight`` > 0 the float baseline is the teacher.
  """
  state = train_lib.create_state(model, variables, tx)
  if steps > 0:
    tc = run.config.train
    distill, teacher_variables = _teacher(run)
    loop = train_lib.TrainLoop(
        name, steps, run.get_batch_fn(), os.path.join(run.ckpt, name),
        tc.checkpoint_every, tc.log_every, step_callback=run.step_callback,
        view=rsjax.training_params, distill=distill,
        teacher_variables=teacher_variables)
    state = loop.run(state, run.mesh)
  return state


def _compressed_layers(params, opt_state):
  """``{'params/...': CompressedLayer}`` from a sharing wrapper's state."""
  return {f"params/{p}": layer
          for p, layer in rsjax.to_compressed(params, opt_state).items()}


def _stage_share(run: _Run) -> dict[str, Any]:
  model = run.compress_model
  variables = _load_tree(os.path.join(run.ckpt, "prune"))
  sc, tc = run.config.share, run.config.train
  inner = train_lib.make_optimizer(tc.optimizer, sc.learning_rate,
                                   max(sc.steps, 1), 0, tc.weight_decay)
  tx = stages_lib.sharing_transform(
      sc.method, inner, _sharing_rules(run), run.hw,
      key=jax.random.fold_in(run.key, 1), recluster_every=sc.recluster_every,
      lam=sc.lam, n_init=sc.n_init)
  state = _train_with(run, "share", model, variables, tx, sc.steps)
  params, opt_state = stages_lib.finish_sharing(
      sc.method, state.params, state.opt_state,
      key=jax.random.fold_in(run.key, 4), n_init=sc.n_init)
  layers = _compressed_layers(params, opt_state)
  # The state's batch statistics (BatchNorm kept) with the shared params.
  variables = jax.device_get({**train_lib.state_variables(state),
                              "params": params})
  _save_tree(os.path.join(run.ckpt, "share"),
             {"params": variables, "layers": _layers_tree(layers)})
  return {"accuracy_shared": run.evaluate(model, variables),
          "method": sc.method, "k": sc.k, "steps": sc.steps,
          "implementation": {"paper": "rsjax.distance_sharing",
                             "ste": "rsjax.ste_sharing"}[sc.method]}


def _stage_finetune(run: _Run) -> dict[str, Any]:
  model = run.compress_model
  variables = _load_tree(os.path.join(run.ckpt, "share"))["params"]
  fc, tc = run.config.finetune, run.config.train
  inner = train_lib.make_optimizer(tc.optimizer, fc.learning_rate,
                                   max(fc.steps, 1), 0, tc.weight_decay)
  tx = rsjax.centroid_finetune(inner, _sharing_rules(run), run.hw,
                               reduce=fc.reduce)
  state = _train_with(run, "finetune", model, variables, tx, fc.steps)
  layers = _compressed_layers(state.params, state.opt_state)
  flat = flatten(jax.device_get(train_lib.state_variables(state)))
  flat.update({p: layer.to_kernel() for p, layer in layers.items()})
  variables = unflatten(flat)
  _save_tree(os.path.join(run.ckpt, "compressed"),
             {"params": variables, "layers": _layers_tree(layers)})
  return {"accuracy_finetuned": run.evaluate(model, variables),
          "steps": fc.steps, "reduce": fc.reduce}


def _compressed(run: _Run):
  saved = _load_tree(os.path.join(run.ckpt, "compressed"))
  paths = run.results("prune")["layers"]
  flat = flatten(saved["params"])
  return saved["params"], _layers_from_tree(saved["layers"], flat, paths)


def _quantized_params(params, paths, hw):
  flat = flatten(params)
  flat.update(stages_lib.quantize({p: flat[p] for p in paths}, hw))
  return unflatten(flat)


def _stage_evaluate(run: _Run) -> dict[str, Any]:
  model, base = run.compress_base()
  paths = run.results("prune")["layers"]
  params, layers = _compressed(run)
  quant = _quantized_params(base, paths, run.hw)
  comp_quant = _quantized_params(params, paths, run.hw)
  if not run.config.eval.emulate:
    log.info("emulated evaluation skipped: eval.emulate is False")
  emulated = stages_lib.emulated_accuracy(
      model, params, layers, run.hw, run.emulation_batches,
      enabled=run.config.eval.emulate, key=jax.random.fold_in(run.key, 2))
  return {
      "float": run.results("train")["accuracy_float"],
      "quantized": run.evaluate(model, quant),
      "compressed": run.evaluate(model, params),
      "compressed_quantized": run.evaluate(model, comp_quant),
      "emulated": emulated,
  }


def _stage_adc_sweep(run: _Run) -> dict[str, Any]:
  if not run.config.eval.emulate:
    log.info("ADC-bit sweep skipped: it runs on the crossbar emulator and "
             "eval.emulate is False")
    return {"sweep": [], "skipped": "eval.emulate is False"}
  model = run.compress_model
  params, layers = _compressed(run)
  sweep = []
  for bits in run.config.eval.adc_bits:
    acc = stages_lib.emulated_accuracy(
        model, params, layers, run.hw.replace(adc_bits=int(bits)),
        run.emulation_batches, enabled=True,
        key=jax.random.fold_in(run.key, 3))
    log.info("ADC %d bits: accuracy %.4f", bits, acc)
    sweep.append({"adc_bits": int(bits), "accuracy": acc})
  return {"sweep": sweep}


_STAGE_FNS: dict[str, Callable[[_Run], dict[str, Any]]] = {
    "train": _stage_train, "prune": _stage_prune, "share": _stage_share,
    "finetune": _stage_finetune, "evaluate": _stage_evaluate,
    "adc_sweep": _stage_adc_sweep,
}


def layer_positions(model, params, image_shape) -> dict[str, int]:
  """Input positions (im2col patches) per kernel path: ``H_out * W_out``."""
  x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)

  def apply(x):
    return model.apply(params, x, train=False, capture_intermediates=True,
                       mutable=["intermediates"])

  _, state = jax.eval_shape(apply, x)
  inter = flatten(state["intermediates"])
  out = {}
  for path, leaf in flatten(params).items():
    if not path.endswith("/kernel"):
      continue
    module = path[len("params/"):-len("/kernel")]
    shape = inter.get(f"{module}/__call__/0")
    if shape is not None:
      out[path] = int(np.prod(shape.shape[1:-1])) if leaf.ndim == 4 else 1
  return out


def _plot_sweep(path, sweep, title, references):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5, 3.5))
  bits = [s["adc_bits"] for s in sweep]
  ax.plot(bits, [s["accuracy"] for s in sweep], "o-", label="emulated")
  for (name, value), style in zip(references.items(), ("--", ":")):
    if value is not None:
      ax.axhline(value, color="gray", linestyle=style, label=name)
  ax.set_xticks(bits)
  ax.legend(fontsize=8)
  ax.set_xlabel("ADC bits")
  ax.set_ylabel("accuracy")
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  _save_fig(fig, path)


def _plot_layers(path, layer_figs, title):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  names = list(layer_figs)
  ratios = [float(layer_figs[n].get("ou_ratio") or 0.0) for n in names]
  short = [n.removeprefix("params/").removesuffix("/kernel") for n in names]
  fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(names) + 2), 3.5))
  ax.bar(range(len(names)), ratios)
  ax.set_xticks(range(len(names)), short, rotation=60, ha="right",
                fontsize=7)
  ax.set_ylabel("OU-level compression (x)")
  ax.set_title(title)
  fig.tight_layout()
  _save_fig(fig, path)


def _save_fig(fig, path):
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
  plt.close(fig)
  atomic_write(path, buf.getvalue())


def _report(run: _Run, timing: Mapping[str, float]) -> dict[str, Any]:
  """Writes results.json, the CSV, plots and the export; returns results."""
  model = run.compress_model
  params, layers = _compressed(run)
  positions = layer_positions(model, params, run.info.image_shape)
  report = stages_lib.compression_report(layers, run.hw, positions)
  if report is None:
    log.info("rsjax.compression_report is not available yet: compression "
             "figures and the per-layer plot are left out")
    compression = {k: None for k in COMPRESSION_KEYS}
    layer_figs = {}
  else:
    compression = dict(report["total"])
    layer_figs = dict(report["layers"])
    if "headline" in report:
      compression["headline"] = report["headline"]
  stages_lib.export_compressed(
      os.path.join(run.workdir, "compressed_model.npz"), params, layers,
      run.hw)
  sweep = run.results("adc_sweep")["sweep"]
  accuracy = {k: run.results("evaluate")[k] for k in
              ("float", "quantized", "compressed", "emulated")}
  if not stages_lib.export_rsjax(
      os.path.join(run.workdir, "compressed_layers.rsjax.npz"), layers,
      run.hw, jsonable({"model": run.config.model.name,
                        "dataset": run.config.data.name,
                        "accuracy": accuracy})):
    log.info("rsjax.save_compressed is not available yet: only "
             "compressed_model.npz is written")
  results = {
      "model": run.config.model.name,
      "dataset": run.config.data.name,
      "config": config_json(run.config),
      "hardware": run.hw.to_dict(),
      "devices": int(run.mesh.devices.size),
      "accuracy": accuracy,
      "accuracy_detail": {
          "compressed_quantized": run.results("evaluate")[
              "compressed_quantized"],
          **{k: v for k, v in run.results("prune").items()
             if k.startswith("accuracy")},
          "shared_before_finetune": run.results("share")["accuracy_shared"],
      },
      "compression": compression,
      "layers": layer_figs,
      "adc_sweep": sweep,
      "timing_s": dict(timing),
  }
  write_json(os.path.join(run.workdir, "results.json"), results)
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(["adc_bits", "accuracy"])
  for s in sweep:
    writer.writerow([s["adc_bits"], s["accuracy"]])
  atomic_write(os.path.join(run.workdir, "adc_sweep.csv"), out.getvalue())
  title = f"{run.config.model.name} / {run.config.data.name}"
  if sweep:
    _plot_sweep(os.path.join(run.workdir, "accuracy_vs_adc_bits.png"), sweep,
                title, {"float": accuracy["float"],
                        "compressed (float)": accuracy["compressed"]})
  if layer_figs:
    _plot_layers(os.path.join(run.workdir, "layer_compression.png"),
                 layer_figs, title)
  return jsonable(results)


def summary_table(results: Mapping[str, Any]) -> str:
  """A plain-text summary of a results dict."""
  def fmt(v, spec=".4f"):
    if v is None:
      return "n/a"
    if isinstance(v, str):
      return v
    return format(v, spec)

  rows = [("model", results["model"]), ("dataset", results["dataset"])]
  for k, v in results["accuracy"].items():
    rows.append((f"accuracy {k}", fmt(v)))
  for k in COMPRESSION_KEYS:
    v = results["compression"].get(k)
    rows.append((k, fmt(v, ".2f" if "ratio" in k else ",.0f")))
  if results["adc_sweep"]:
    rows.append(("adc sweep", ", ".join(
        f"{s['adc_bits']}b: {s['accuracy']:.4f}"
        for s in results["adc_sweep"])))
  else:
    rows.append(("adc sweep", "skipped (no emulation)"))
  for k, v in results["timing_s"].items():
    rows.append((f"time {k} (s)", f"{v:.1f}"))
  width = max(len(r[0]) for r in rows)
  line = "-" * (width + 30)
  return "\n".join([line] + [f"{a:<{width}}  {b}" for a, b in rows] + [line])


def check_layer_k(config: ml_collections.ConfigDict) -> None:
  """Checks ``share.layer_k`` against the model's crossbar layers.

  Run before anything is trained or written: a malformed entry, or one that
  takes no layer of the compression model (``compress.include`` /
  ``exclude``, BN folded or not), would otherwise fail only at the share
  stage, after the baseline trained. Only shapes are traced.

  Raises:
    ValueError: naming the entry and the layers.
  """
  spec = config.share.get("layer_k", "")
  if not spec:
    return
  stages_lib.parse_layer_k(spec)  # syntax first: no model needed for it
  info = data_lib.get_info(config.data.name)
  model = models_lib.create_model(config.model.name,
                                  num_classes=info.num_classes,
                                  use_bn=not config.compress.fold_bn)
  # Only the kernel paths are used, and they do not depend on the image size
  # (data.image_size), so the dataset's own shape does.
  variables = jax.eval_shape(
      lambda key: models_lib.init_variables(model, key, info.image_shape),
      jax.random.key(0))
  paths = select_kernels(variables, config.compress.include,
                         config.compress.exclude)
  stages_lib.sharing_rules([_params_path(p) for p in paths], config.share.k,
                           config.prune.ratio, spec)


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
    WorkdirConflictError: ``workdir`` holds another config's run.
    data.DatasetNotFoundError: the dataset is missing.
    train.NanLossError: training diverged.
  """
  if until is not None and until not in STAGES:
    raise ValueError(f"until must be one of {STAGES}, got {until!r}")
  check_layer_k(config)
  distill_settings(config)  # bad settings fail before anything trains
  t_start = time.perf_counter()
  prepare_workdir(workdir, config, overwrite)
  handler = logging.FileHandler(os.path.join(workdir, "log.txt"))
  handler.setFormatter(logging.Formatter(
      "%(asctime)s %(levelname)s %(message)s"))
  handler.setLevel(logging.INFO)
  pkg_logger = logging.getLogger("experiments")
  pkg_logger.addHandler(handler)
  if pkg_logger.getEffectiveLevel() > logging.INFO:
    pkg_logger.setLevel(logging.INFO)
  try:
    r = _Run(config, workdir, step_callback)
    for stage in STAGES:
      if r.done(stage):
        log.info("stage %s already done (%.1f s), skipped", stage,
                 r.state["stages"][stage]["time_s"])
      else:
        log.info("stage %s ...", stage)
        t0 = time.perf_counter()
        results = _STAGE_FNS[stage](r)
        r.finish(stage, results, time.perf_counter() - t0)
      if stage == until:
        return {s: v["results"] for s, v in r.state["stages"].items()}
    timing = {s: r.state["stages"][s]["time_s"] for s in STAGES}
    t0 = time.perf_counter()
    results = _report(r, timing)
    timing["report"] = time.perf_counter() - t0
    # Stage times are from the invocations that ran them; 'total' is the
    # compute the results cost, 'this_invocation' this call's wall time.
    timing["total"] = sum(timing[s] for s in (*STAGES, "report"))
    timing["this_invocation"] = time.perf_counter() - t_start
    results["timing_s"] = timing
    write_json(os.path.join(workdir, "results.json"), results)
    log.info("results in %s", os.path.join(workdir, "results.json"))
    return results
  finally:
    pkg_logger.removeHandler(handler)
    handler.close()
