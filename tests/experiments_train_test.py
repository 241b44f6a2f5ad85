"""Tests of experiments/train.py's distillation, refreshed step inputs and
schedule (the loop itself is covered end to end by
experiments_pipeline_test.py)."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import models
from experiments import train


def _np_distillation(logits, teacher, t):
  """T^2 * KL(softmax(teacher / T) || softmax(logits / T)) in float64."""
  def log_softmax(z):
    z = z / t
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))
  lp, lq = log_softmax(teacher), log_softmax(logits)
  return t * t * (np.exp(lp) * (lp - lq)).sum(-1)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_distillation_loss_matches_numpy(jit, temperature):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 7)).astype(np.float32) * 3
  teacher = rng.normal(size=(5, 7)).astype(np.float32) * 3
  fn = lambda a, b: train.distillation_loss(a, b, temperature)
  if jit:
    fn = jax.jit(fn)
  got = np.asarray(fn(jnp.asarray(logits), jnp.asarray(teacher)))
  np.testing.assert_allclose(
      got, _np_distillation(logits.astype(np.float64),
                            teacher.astype(np.float64), temperature),
      rtol=1e-4, atol=1e-5)
  same = np.asarray(fn(jnp.asarray(teacher), jnp.asarray(teacher)))
  np.testing.assert_allclose(same, 0.0, atol=1e-5)


@pytest.mark.parametrize("weight, temperature, problem", [
    (1.5, 4.0, "weight must be in"),
    (-0.1, 4.0, "weight must be in"),
    (0.5, 0.0, "temperature must be > 0"),
])
def test_distillation_rejects_bad_settings(weight, temperature, problem):
  with pytest.raises(ValueError, match=problem):
    train.Distillation(lambda v, x: x, weight, temperature)


def _setup():
  model = models.create_model("mlp", num_classes=4, hidden=(8,),
                              use_bn=False)  # train and eval mode agree
  variables = models.init_variables(model, jax.random.key(0), (3, 3, 1))
  rng = np.random.default_rng(1)
  batch = {"image": jnp.asarray(rng.normal(size=(6, 3, 3, 1)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 4, size=(6,)), jnp.int32)}
  teacher = models.init_variables(model, jax.random.key(1), (3, 3, 1))
  apply_fn = lambda v, x: model.apply(v, x, train=False)
  return model, variables, batch, teacher, apply_fn


@pytest.mark.parametrize("jit", [False, True])
def test_train_step_loss_mixes_cross_entropy_and_distillation(jit):
  model, variables, batch, teacher, apply_fn = _setup()
  tx = train.make_optimizer("sgd", 0.0, 10, 0, 0.0)  # loss only
  logits = apply_fn(variables, batch["image"])
  ce = float(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
      logits, batch["label"])))
  soft = float(np.mean(_np_distillation(
      np.asarray(logits, np.float64),
      np.asarray(apply_fn(teacher, batch["image"]), np.float64), 2.0)))
  for weight in (0.0, 0.3, 1.0):
    distill = train.Distillation(apply_fn, weight, 2.0)
    step = lambda s, b, t, d=distill: train.train_step(s, b, t, distill=d)
    if jit:
      step = jax.jit(step)
    state = train.create_state(model, variables, tx)
    _, metrics = step(state, batch, teacher)
    assert float(metrics["loss"]) == pytest.approx(
        (1 - weight) * ce + weight * soft, rel=1e-4)


def test_distilling_from_itself_leaves_the_student_unchanged():
  # weight 1 and the teacher equal to the student: KL(p || p) = 0 and its
  # gradient is 0, so an SGD step (no weight decay) changes nothing.
  model, variables, batch, _, apply_fn = _setup()
  tx = train.make_optimizer("sgd", 0.5, 10, 0, 0.0)
  state = train.create_state(model, variables, tx)
  distill = train.Distillation(apply_fn, 1.0, 3.0)
  new, metrics = jax.jit(lambda s, b, t: train.train_step(
      s, b, t, distill=distill))(state, batch, variables)
  assert float(metrics["loss"]) == pytest.approx(0.0, abs=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(new.params),
                  jax.tree_util.tree_leaves(variables["params"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
  # Without the teacher's variables the step says what is missing.
  with pytest.raises(ValueError, match="teacher_variables"):
    train.train_step(state, batch, None, distill=distill)


class _Killed(Exception):
  pass


def _refresh_run(tmp_path, refresh_every, kill_after=None):
  """A 5-step loop whose inputs are scaled by a refreshed ``gain``.

  Returns (final params, steps refreshed at, apply_fn traces).
  """
  model, variables, _, _, _ = _setup()
  tx = train.make_optimizer("sgd", 0.5, 10, 0, 0.0)
  refreshed, traces = [], []

  def apply_fn(v, x, train=False, *, gain):
    traces.append(1)  # runs once per trace, i.e. per compile
    return model.apply(v, x * gain, train=train)

  def refresh(state, step, previous):
    refreshed.append(step)
    # Depends on the state and on the previous value, as a re-calibration.
    norm = sum(jnp.sum(jnp.abs(p)) for p in jax.tree.leaves(state.params))
    base = jnp.float32(1.0) if previous is None else previous["gain"]
    return {"gain": base + 0.01 * norm}

  def get_batch(step):
    rng = np.random.default_rng(step)
    return {"image": rng.normal(size=(6, 3, 3, 1)).astype(np.float32),
            "label": rng.integers(0, 4, size=(6,)).astype(np.int32)}

  def kill(name, done):
    if done == kill_after:
      raise _Killed

  # A fresh state per run: the loop donates the one it is given.
  state = lambda: train.create_state(
      model, jax.tree.map(jnp.copy, variables), tx).replace(
      apply_fn=apply_fn)
  loop = train.TrainLoop("t", 5, get_batch, str(tmp_path / "ckpt"),
                         checkpoint_every=kill_after or 5, log_every=5,
                         step_callback=kill, refresh=refresh,
                         refresh_every=refresh_every)
  if kill_after is not None:
    with pytest.raises(_Killed):
      loop.run(state(), train.make_mesh())
  final = loop.run(state(), train.make_mesh())
  return final.params, refreshed, len(traces)


def test_refreshed_step_inputs_compile_once(tmp_path):
  params, refreshed, traces = _refresh_run(tmp_path / "a", 2)
  assert refreshed == [0, 2, 4]
  assert traces == 1
  # The refreshed values reach the step: once-only refresh differs.
  once, refreshed_once, _ = _refresh_run(tmp_path / "b", 0)
  assert refreshed_once == [0]
  assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
             zip(jax.tree.leaves(params), jax.tree.leaves(once)))


@pytest.mark.parametrize("kill_after", [3, 4])
def test_refreshed_step_inputs_resume_exactly(tmp_path, kill_after):
  # Killed mid-period (3) or at a refresh step (4): the resumed run goes on
  # with the checkpointed values and equals the uninterrupted one.
  want, _, _ = _refresh_run(tmp_path / "full", 2)
  got, refreshed, _ = _refresh_run(tmp_path / "killed", 2, kill_after)
  # The first run refreshes at 0 and 2; the resumed one computes the
  # structure once on its start state (a step-0 call), then at 4.
  assert refreshed == [0, 2, 0, 4]
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_optimizer_without_warmup_starts_at_the_rate_and_logs_nothing(
    caplog):
  with caplog.at_level(logging.INFO):
    tx = train.make_optimizer("sgd", 0.1, 10, 0, 0.0)
  assert not [r.getMessage() for r in caplog.records
              if "schedule" in r.getMessage()]
  grads = {"w": jnp.ones(3)}
  with jax.numpy_dtype_promotion("standard"):  # as train_step runs optax
    updates, _ = tx.update(grads, tx.init(grads), grads)
  # Nesterov momentum 0.9 from a zero trace: the step is 1.9 g at the rate.
  np.testing.assert_allclose(updates["w"], -0.1 * 1.9, rtol=1e-6)
