"""Regex rules resolve to per-kernel plans (Linen and NNX paths)."""

from flax import nnx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rsjax
from rsjax._src import rules as rules_lib


class _Linen(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(8, (3, 3))(x)
    x = nn.Conv(16, (3, 3))(x)
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(32)(x)
    return nn.Dense(10)(x)


def _linen_params():
  return jax.eval_shape(lambda: _Linen().init(jax.random.key(0),
                                              jnp.zeros((1, 8, 8, 1))))


def test_first_match_wins_and_excludes_first_and_last():
  params = _linen_params()
  plan = rules_lib.make_plan(params, [
      rules_lib.Rule("Conv_0"), rules_lib.Rule("Dense_1"),
      rules_lib.Rule("Conv_1", k=3, sparsity=0.25),
      rules_lib.Rule("Dense", ratio=4)], rsjax.HardwareSpec())
  assert list(plan) == ["params/Conv_1/kernel", "params/Dense_0/kernel"]
  conv = plan["params/Conv_1/kernel"]
  assert conv.k == 3 and conv.sparsity == 0.25 and conv.block_shape == (9, 2)
  assert conv.matrix_shape == (72, 16) and conv.grid == (8, 8)
  dense = plan["params/Dense_0/kernel"]
  assert dense.grid == (114, 16) and dense.k == 4  # floor(16 / 4)
  assert dense.sparsity == 0.0 and dense.shared and not dense.pruned


def test_biases_never_match():
  plan = rules_lib.make_plan(_linen_params()["params"],
                             [rules_lib.Rule("Dense_0", k=2)], (9, 2))
  assert list(plan) == ["Dense_0/kernel"]


def test_rule_that_matches_nothing_is_named():
  with pytest.raises(ValueError, match="Dense_7"):
    rules_lib.make_plan(_linen_params(), [rules_lib.Rule("Conv", k=2),
                                          rules_lib.Rule("Dense_7", k=2)],
                        (9, 2))
  # Shadowed by an earlier rule counts as matching nothing.
  with pytest.raises(ValueError, match="Conv_1"):
    rules_lib.make_plan(_linen_params(), [rules_lib.Rule("Conv", k=2),
                                          rules_lib.Rule("Conv_1", k=3)],
                        (9, 2))


@pytest.mark.parametrize("kwargs", [
    dict(k=0), dict(k=2, ratio=2.0), dict(ratio=0.5), dict(sparsity=1.0),
    dict(sparsity=-0.1)])
def test_bad_rules(kwargs):
  with pytest.raises(ValueError, match=list(kwargs)[-1]):
    rules_lib.Rule("x", **kwargs)


@pytest.mark.parametrize("kwargs", [
    dict(ratio="8"), dict(sparsity="0.3"), dict(k="4"), dict(k=4.0),
    dict(k=True), dict(sparsity=None), dict(ratio=np.bool_(True))])
def test_wrong_types_name_the_field(kwargs):
  with pytest.raises(TypeError, match=f"'x'.*{list(kwargs)[0]}"):
    rules_lib.Rule("x", **kwargs)
  with pytest.raises(TypeError, match="pattern"):
    rules_lib.Rule(3, k=2)


def test_numpy_numbers_become_python_numbers():
  rule = rules_lib.Rule("x", k=np.int64(4), sparsity=np.float64(0.25))
  assert rule == rules_lib.Rule("x", k=4, sparsity=0.25)
  assert hash(rule) == hash(rules_lib.Rule("x", k=4, sparsity=0.25))
  assert type(rule.k) is int and type(rule.sparsity) is float
  assert type(rules_lib.Rule("x", ratio=np.int32(8)).ratio) is float
  schedule = rsjax.PruneSchedule(begin=np.int64(2), end=np.int32(6),
                                 every=np.int16(2), power=np.float32(1))
  assert schedule == rsjax.PruneSchedule(begin=2, end=6, every=2, power=1.0)
  assert type(schedule.every) is int
  with pytest.raises(TypeError, match="PruneSchedule.every"):
    rsjax.PruneSchedule(every=2.0)


def test_a_single_rule_is_accepted():
  params = _linen_params()
  one = rules_lib.make_plan(params, rules_lib.Rule("Dense_0", k=2), (9, 2))
  assert one == rules_lib.make_plan(params, [rules_lib.Rule("Dense_0", k=2)],
                                    (9, 2))
  with pytest.raises(ValueError, match="empty"):
    rules_lib.make_plan(params, [], (9, 2))
  for bad in ("Dense_0", [rules_lib.Rule("Dense_0", k=2), "Conv"], 3):
    with pytest.raises(TypeError, match="Rule"):
      rules_lib.make_plan(params, bad, (9, 2))


def test_nnx_paths():

  class Net(nnx.Module):

    def __init__(self, rngs):
      self.conv1 = nnx.Conv(1, 8, (3, 3), rngs=rngs)
      self.fc = nnx.Linear(8, 4, rngs=rngs)

  _, params, _ = nnx.split(Net(nnx.Rngs(0)), nnx.Param, ...)
  plan = rules_lib.make_plan(params, [rules_lib.Rule(r"^conv1/kernel$", k=2)],
                             (9, 2))
  assert list(plan) == ["conv1/kernel"]
  assert plan["conv1/kernel"].kernel_shape == (3, 3, 1, 8)
