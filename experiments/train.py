"""Data-parallel training and evaluation (flax examples style).

One global ``jax.jit`` step over a ``Mesh`` of all devices (every process's,
on a multi-process run): the batch is sharded along the ``'data'`` axis, the
train state is replicated. Each process supplies only its own rows of a
global batch (:func:`batch_rows`). The same code runs unchanged on 1 or N
devices and 1 or N processes and computes the same global-batch loss
(BatchNorm statistics included), so runs agree across device and process
counts up to float reduction order.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import logging
import os
import time
from typing import Any, Callable, Iterator, Mapping

import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import optax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class NanLossError(FloatingPointError):
  """Training produced a non-finite loss."""


class TrainState(train_state.TrainState):
  """A TrainState with BatchNorm statistics (empty dict without BN)."""

  batch_stats: Any = None


def make_mesh() -> Mesh:
  """A 1-D ``('data',)`` mesh over all devices of all processes.

  Devices are grouped by process, so each process's share of a batch is
  one contiguous block of rows.
  """
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  return Mesh(np.asarray(devices), ("data",))


def shardings(mesh: Mesh):
  """``(replicated, batch-sharded)`` NamedShardings."""
  return NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))


def check_batch(batch_size: int, mesh: Mesh) -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise ValueError(
        f"batch size {batch_size} must be a multiple of the {n} devices")


def batch_rows(mesh: Mesh, batch_size: int) -> slice:
  """The rows of a ``batch_size`` global batch this process supplies.

  Raises:
    ValueError: they are not one contiguous block (a mesh whose devices
      interleave processes) or ``batch_size`` does not divide.
  """
  check_batch(batch_size, mesh)
  index_map = shardings(mesh)[1].addressable_devices_indices_map(
      (batch_size,))
  rows = np.unique(np.concatenate(
      [np.arange(batch_size)[idx] for idx in index_map.values()]))
  if rows[-1] - rows[0] + 1 != rows.size:
    raise ValueError(
        f"process {jax.process_index()} holds rows {rows.tolist()} of the "
        "batch, not one contiguous block; order the mesh's devices by process")
  return slice(int(rows[0]), int(rows[-1]) + 1)


def _to_global(batch: Mapping[str, Any], mesh: Mesh,
               batch_size: int | None) -> dict[str, jax.Array]:
  """A batch as global arrays sharded over the mesh.

  With ``batch_size``, ``batch`` holds this process's :func:`batch_rows`
  of a global batch of that size; without, it is the whole global batch
  (every process read all of it and keeps its rows).
  """
  if batch_size is None:
    batch_size = batch["image"].shape[0]
    rows = batch_rows(mesh, batch_size)
    batch = {k: np.asarray(v)[rows] for k, v in batch.items()}
  return {k: jax.make_array_from_process_local_data(
              shardings(mesh)[1], np.asarray(v), (batch_size, *np.shape(v)[1:]))
          for k, v in batch.items()}


def make_optimizer(name: str, learning_rate: float, steps: int,
                   warmup_steps: int, weight_decay: float
                   ) -> optax.GradientTransformation:
  """Warmup + cosine decay; AdamW or SGD with Nesterov momentum."""
  warmup_steps = min(warmup_steps, max(steps - 1, 0))
  # Without warmup, the cosine alone: optax's warmup schedule would log a
  # warning about its zero-step ramp in every stage.
  schedule = (optax.warmup_cosine_decay_schedule(0.0, learning_rate,
                                                 warmup_steps, steps)
              if warmup_steps else
              optax.cosine_decay_schedule(learning_rate, max(steps, 1)))
  if name == "adam":
    return optax.adamw(schedule, weight_decay=weight_decay)
  if name == "sgd":
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.sgd(schedule, momentum=0.9, nesterov=True))
  raise ValueError(f"optimizer must be 'adam' or 'sgd', got {name!r}")


def create_state(model: nn.Module, variables: Mapping[str, Any],
                 tx: optax.GradientTransformation) -> TrainState:
  return TrainState.create(apply_fn=model.apply, params=variables["params"],
                           tx=tx,
                           batch_stats=variables.get("batch_stats", {}))


def state_variables(state: TrainState) -> dict[str, Any]:
  """``{'params', 'batch_stats'?}`` of a train state."""
  out = {"params": state.params}
  if state.batch_stats:
    out["batch_stats"] = state.batch_stats
  return out


@dataclasses.dataclass(frozen=True)
class Distillation:
  """Knowledge distillation from a fixed teacher (Hinton et al., 2015).

  The loss becomes ``(1 - weight) * CE(labels) + weight * T^2 *
  KL(softmax(teacher / T) || softmax(student / T))``: the compressed model
  learns the float model's whole output distribution, not only the label,
  which the sharing and fine-tune stages (few free parameters, a training
  set they soon fit) otherwise over-fit. The logged training loss is then
  this mixed loss.

  Attributes:
    apply_fn: ``(variables, images) -> logits`` of the teacher, inference
      mode (its variables are an argument of the step, not a constant).
    weight: in ``[0, 1]``.
    temperature: ``T > 0``; the ``T^2`` keeps the soft term's gradient
      scale independent of ``T``.
  """

  apply_fn: Callable[[Any, Any], Any]
  weight: float
  temperature: float = 4.0

  def __post_init__(self):
    if not 0.0 <= self.weight <= 1.0:
      raise ValueError(
          f"distillation weight must be in [0, 1], got {self.weight}")
    if not self.temperature > 0:
      raise ValueError(
          f"distillation temperature must be > 0, got {self.temperature}")


def distillation_loss(logits, teacher_logits, temperature: float):
  """Per-example ``T^2 * KL(softmax(teacher / T) || softmax(logits / T))``."""
  return temperature**2 * optax.losses.kl_divergence_with_log_targets(
      jax.nn.log_softmax(logits / temperature),
      jax.nn.log_softmax(teacher_logits / temperature))


def train_step(state: TrainState, batch, teacher_variables=None,
               apply_kwargs=None, *,
               constraint: Callable[[Any], Any] | None = None,
               view: Callable[[Any, Any], Any] | None = None,
               distill: Distillation | None = None, noise_key=None,
               saturation: bool = False):
  """One SGD step on the global batch; returns ``(state, metrics)``.

  Args:
    state: the replicated train state.
    batch: ``{'image', 'label'}`` sharded along the batch.
    teacher_variables: the teacher's variables (with ``distill``).
    apply_kwargs: a dict of arrays (any pytree values) passed to
      ``apply_fn`` as keyword arguments, traced: changing them between
      steps does not compile the step again (e.g. the hardware-aware
      fine-tune's ADC calibration).
    constraint: applied to the params after the update (e.g. the
      fine-tune's projection onto the pruned/shared structure).
    view: ``(params, opt_state) -> params`` the forward pass runs on (e.g.
      ``rsjax.training_params``: the shared weights of a sharing wrapper).
    distill: distil from a teacher (see :class:`Distillation`).
    noise_key: if given, ``apply_fn`` gets ``rngs={'noise': key}`` with the
      key folded with the step (a fresh draw of the emulated hardware's
      non-idealities per step).
    saturation: ``apply_fn`` takes a ``saturation`` dict and fills it with
      each emulated layer's fraction of inputs beyond its input range
      (:func:`rsjax.kernels.hwaware`); the metrics then hold it
      as ``input_saturation``.
  """
  has_bn = bool(state.batch_stats)
  if distill is not None:
    if teacher_variables is None:
      raise ValueError("distill needs the teacher_variables")
    teacher_logits = jax.lax.stop_gradient(
        distill.apply_fn(teacher_variables, batch["image"]))

  extra = dict(apply_kwargs or {})
  if noise_key is not None:
    extra["rngs"] = {"noise": jax.random.fold_in(noise_key, state.step)}

  def loss_fn(params):
    if view is not None:
      params = view(params, state.opt_state)
    variables = {"params": params}
    sat = {}
    kwargs = dict(extra, saturation=sat) if saturation else extra
    if has_bn:
      variables["batch_stats"] = state.batch_stats
      logits, updates = state.apply_fn(variables, batch["image"], train=True,
                                       mutable=["batch_stats"], **kwargs)
    else:
      logits, updates = state.apply_fn(variables, batch["image"],
                                       train=True, **kwargs), {}
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits, batch["label"]))
    if distill is not None:
      soft = jnp.mean(distillation_loss(logits, teacher_logits,
                                        distill.temperature))
      loss = (1.0 - distill.weight) * loss + distill.weight * soft
    return loss, (logits, updates, sat)

  (loss, (logits, updates, sat)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  # optax mixes Python floats with int32 step counts (Adam's bias
  # correction, schedules), which strict dtype promotion rejects; only the
  # optimizer update runs under standard promotion.
  with jax.numpy_dtype_promotion("standard"):
    state = state.apply_gradients(grads=grads)
  if has_bn:
    state = state.replace(batch_stats=updates["batch_stats"])
  if constraint is not None:
    state = state.replace(params=constraint(state.params))
  accuracy = jnp.mean((jnp.argmax(logits, -1) == batch["label"]).astype(
      jnp.float32))
  metrics = {"loss": loss, "accuracy": accuracy}
  if saturation:
    metrics["input_saturation"] = sat
  return state, metrics


def eval_step(model: nn.Module, variables, batch):
  """Summed correct predictions, loss and count over the masked batch."""
  logits = model.apply(variables, batch["image"], train=False)
  mask = batch["mask"].astype(jnp.float32)
  correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits,
                                                         batch["label"])
  return {"correct": jnp.sum(correct * mask), "loss": jnp.sum(loss * mask),
          "count": jnp.sum(mask)}


def evaluate(model: nn.Module, variables, batches: Iterator[Mapping[str, Any]],
             mesh: Mesh, batch_size: int | None = None) -> dict[str, float]:
  """Accuracy and mean loss over ``batches`` (data-parallel).

  Args:
    model: the Linen model.
    variables: its variables (replicated over the mesh here).
    batches: ``{'image', 'label', 'mask'}`` numpy batches: whole global
      batches, or with ``batch_size`` this process's :func:`batch_rows` of
      global batches of that size.
    mesh: from :func:`make_mesh`.
    batch_size: the global batch size when ``batches`` are process rows.

  Returns:
    ``{'accuracy', 'loss', 'count'}`` over the global batches (every
    process gets the same numbers).
  """
  replicated, _ = shardings(mesh)
  variables = jax.device_put(variables, replicated)
  step = _jitted_eval_step(model, replicated)
  totals = {"correct": 0.0, "loss": 0.0, "count": 0.0}
  for batch in batches:
    # The step's sums are replicated: every process reads the global ones.
    out = step(variables, _to_global(batch, mesh, batch_size))
    for k in totals:
      totals[k] += float(out[k])
  count = max(totals["count"], 1.0)
  return {"accuracy": totals["correct"] / count,
          "loss": totals["loss"] / count, "count": totals["count"]}


@functools.lru_cache(maxsize=16)
def _jitted_eval_step(model: nn.Module, replicated: NamedSharding):
  # Models are hashable dataclasses: equal models share one compiled step
  # across evaluations and stages.
  return jax.jit(functools.partial(eval_step, model),
                 out_shardings=replicated)


@dataclasses.dataclass
class TrainLoop:
  """A resumable training loop with orbax checkpoints and progress logs.

  Attributes:
    name: the stage name (for logs and the checkpoint folder).
    steps: total steps.
    get_batch: ``step -> {'image', 'label'}`` numpy batch (pure in step):
      the whole global batch; with ``batch_size``, ``(step, rows) ->`` only
      the rows (a slice, :func:`batch_rows`) this process supplies.
    checkpoint_dir: where the orbax CheckpointManager keeps this loop's state.
    checkpoint_every: steps between checkpoints (the last step always is).
    log_every: steps between progress logs and NaN checks.
    constraint, view, distill, noise_key, saturation: as in
      :func:`train_step` (``saturation`` also logs the most saturated layer
      and warns above :data:`SATURATION_WARN`).
    step_callback: ``(name, step)`` called after each finished step (tests
      use it to simulate a kill).
    teacher_variables: the teacher's variables for ``distill`` (not
      checkpointed: a resumed loop gets them again from its caller).
    batch_size: the global batch size, when ``get_batch`` reads rows.
    refresh: optional ``(state, step, previous) -> dict`` computed eagerly
      (outside ``jit``) before the first step and then every
      ``refresh_every`` steps (0: once), ``previous`` being its last
      result (None the first time); the dict is the step's
      ``apply_kwargs`` (see :func:`train_step`), traced, so the step
      compiles once. It is checkpointed with the state: a resumed loop
      continues with the values in effect when it stopped.
    refresh_every: steps between refreshes (0: only before the first step).
  """

  name: str
  steps: int
  get_batch: Callable[[int], Mapping[str, np.ndarray]]
  checkpoint_dir: str
  checkpoint_every: int = 1000
  log_every: int = 100
  constraint: Callable[[Any], Any] | None = None
  step_callback: Callable[[str, int], None] | None = None
  view: Callable[[Any, Any], Any] | None = None
  distill: Distillation | None = None
  teacher_variables: Any = None
  batch_size: int | None = None
  noise_key: Any = None
  refresh: Callable[[TrainState, int, Any], dict[str, Any]] | None = None
  refresh_every: int = 0
  saturation: bool = False

  def run(self, state: TrainState, mesh: Mesh, *,
          with_refreshed: bool = False):
    """Trains from the latest checkpoint (or ``state``) to ``steps``.

    Returns:
      The trained state; with ``with_refreshed``, ``(state, the refresh's
      last result)`` (what the last steps ran with).

    Raises:
      NanLossError: a non-finite loss; the last checkpoint (finite, saved
        before it) is kept.
    """
    replicated, _ = shardings(mesh)
    state = jax.device_put(state, replicated)
    rows = (None if self.batch_size is None
            else batch_rows(mesh, self.batch_size))
    with ocp.CheckpointManager(
        os.path.abspath(self.checkpoint_dir),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
    ) as manager:
      latest = manager.latest_step()
      # The refreshed inputs are saved as their leaves: their structure
      # (with static fields) comes from computing them once on ``state``.
      inputs = (None if self.refresh is None
                else self.refresh(state, int(state.step), None))
      if latest is not None:
        abstract = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                           sharding=replicated),
            _checkpointable(state, inputs))
        restored = manager.restore(latest,
                                   args=ocp.args.StandardRestore(abstract))
        saved = restored.pop("refreshed", {})
        inputs = jax.tree_util.tree_unflatten(
            jax.tree_util.tree_structure(inputs),
            [saved[k] for k in sorted(saved)])
        state = state.replace(**restored)
        log.info("[%s] resumed from the checkpoint at step %d",
                     self.name, latest)
      step_fn = jax.jit(
          functools.partial(train_step, constraint=self.constraint,
                            view=self.view, distill=self.distill,
                            noise_key=self.noise_key,
                            saturation=self.saturation),
          donate_argnums=0, out_shardings=(replicated, replicated))
      # train_step refuses a distill without teacher variables.
      teacher = (None if self.distill is None
                 else jax.device_put(self.teacher_variables, replicated))
      placed = jax.device_put(inputs, replicated)  # again on each refresh
      start = int(state.step)
      last_good = latest
      t0, s0 = time.perf_counter(), start
      pending = []
      for step in range(start, self.steps):
        # Refresh at every multiple of refresh_every, except where the
        # inputs were just computed for this very state (a fresh start).
        if (self.refresh is not None and self.refresh_every > 0
            and step % self.refresh_every == 0
            and (step != start or latest is not None)):
          inputs = self.refresh(state, step, inputs)
          placed = jax.device_put(inputs, replicated)
        batch = (self.get_batch(step) if rows is None
                 else self.get_batch(step, rows))
        state, metrics = step_fn(
            state, _to_global(batch, mesh, self.batch_size), teacher, placed)
        pending.append(metrics)
        done = step + 1
        is_ckpt = done % self.checkpoint_every == 0 or done == self.steps
        if done % self.log_every == 0 or is_ckpt:
          losses = np.asarray([float(m["loss"]) for m in pending])
          accs = np.asarray([float(m["accuracy"]) for m in pending])
          if self.saturation:
            _log_saturation(self.name, done, pending)
          pending = []
          if not np.all(np.isfinite(losses)):
            raise NanLossError(
                f"[{self.name}] the training loss became non-finite "
                f"(NaN/inf) between steps {done - losses.size + 1} and "
                f"{done}; stopped. The last good checkpoint is "
                + (f"step {last_good} in {self.checkpoint_dir}"
                   if last_good is not None else "none (no step finished "
                   "cleanly)")
                + ". Lower the learning rate (--config.train.learning_rate)"
                " or check the data.")
          elapsed = time.perf_counter() - t0
          rate = (done - s0) / max(elapsed, 1e-9)
          eta = (self.steps - done) / max(rate, 1e-9)
          log.info(
              "[%s] step %d/%d  loss %.4f  acc %.3f  %.1f steps/s  ETA %s",
              self.name, done, self.steps, float(losses.mean()),
              float(accs.mean()), rate,
              datetime.timedelta(seconds=round(eta)))
        if is_ckpt:
          if not bool(_all_finite(state.params)):
            raise NanLossError(
                f"[{self.name}] the parameters became non-finite at step "
                f"{done}; stopped, keeping the checkpoint at step "
                f"{last_good}. Lower the learning rate.")
          manager.save(done, args=ocp.args.StandardSave(
              _checkpointable(state, inputs)))
          manager.wait_until_finished()
          last_good = done
        if self.step_callback is not None:
          self.step_callback(self.name, done)
    return (state, inputs) if with_refreshed else state


# A layer whose inputs exceed its range this often (fraction of its input
# entries over the logged steps) is warned about: its scale no longer fits.
SATURATION_WARN = 0.01


def _log_saturation(name: str, step: int, metrics) -> None:
  """Logs the most saturated layer; warns for each above SATURATION_WARN."""
  per_layer = {layer: float(np.mean([float(m["input_saturation"][layer])
                                     for m in metrics]))
               for layer in metrics[0]["input_saturation"]}
  if not per_layer:
    return
  worst = max(per_layer, key=per_layer.get)
  log.info("[%s] step %d: input saturation at most %.2f %% (%s)", name, step,
           100 * per_layer[worst], worst)
  over = {k: round(v, 4) for k, v in per_layer.items()
          if v > SATURATION_WARN}
  if over:
    log.warning("[%s] step %d: these layers' inputs exceed their input "
                "range (fraction of inputs) %s: their input scales no "
                "longer fit (hwaware.scales='running_max' raises them)",
                name, step, over)


def _checkpointable(state: TrainState, refreshed=None) -> dict[str, Any]:
  out = {"step": state.step, "params": state.params,
         "batch_stats": state.batch_stats, "opt_state": state.opt_state}
  leaves = jax.tree_util.tree_leaves(refreshed)
  if leaves:
    # The leaves keyed by position: orbax keeps dicts of arrays, not the
    # refreshed values' own nodes (with their static fields).
    out["refreshed"] = {f"{i:04d}": x for i, x in enumerate(leaves)}
  return out


@jax.jit
def _all_finite(tree):
  # One compiled check per tree, not two operations per leaf shape.
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x))
                            for x in jax.tree_util.tree_leaves(tree)]))

