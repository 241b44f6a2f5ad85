"""allocate_k's objectives (stored OUs, energy, latency) against brute force,
its hardware pricing against the trained model's, and the stored-OU bound."""

import itertools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import allocation_test
import rsjax
from rsjax._src import allocation
from rsjax._src import knapsack

HW = rsjax.HardwareSpec()  # (9, 2) blocks
# A conv that runs at 36 positions and two Dense layers: G = 4, 8, 2.
POSITIONS = {"Conv_0/kernel": 36}
RULES = [rsjax.Rule("kernel", k=2)]


class Net(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3))(x))
    x = nn.relu(nn.Dense(16)(x.reshape(x.shape[0], -1)))
    return nn.Dense(4)(x)


@pytest.fixture(scope="module")
def trained():
  x = jax.random.normal(jax.random.key(0), (48, 6, 6, 2))
  y = (jnp.sum(x[:, :3, :3, 0], axis=(1, 2)) > 0).astype(jnp.int32) + 2 * (
      x[:, 4, 4, 1] > 0).astype(jnp.int32)
  return allocation_test.sgd_trained(Net(), x, y, 20)


def _allocate(trained, **kwargs):
  loss_fn, params = trained
  kwargs.setdefault("positions", POSITIONS)
  return rsjax.allocate_k(loss_fn, params, kwargs.pop("rules", RULES), HW,
                          key=jax.random.key(2), **kwargs)


@pytest.fixture(scope="module")
def energy(trained):
  return _allocate(trained, objective="energy", target=2.0)


def _cost(table, objective, p, c):
  t = table[p]
  return {"ou_ratio": t.stored_ous, "energy": t.energy_pj,
          "latency": t.latency_ns}[objective][c]


def _brute_force(alloc, objective, budget, slack=0.0):
  """The least summed loss increase of any choice within ``budget - slack``."""
  table, names = alloc.table, list(alloc.table)
  best = math.inf
  for choice in itertools.product(*(range(len(table[p].k)) for p in names)):
    cost = sum(_cost(table, objective, p, c) for p, c in zip(names, choice))
    if cost <= budget - slack:
      best = min(best, sum(table[p].loss_increase[c]
                           for p, c in zip(names, choice)))
  return best


@pytest.mark.parametrize("objective, targets", [
    ("ou_ratio", (1.5, 2.5, 4.0)),
    ("energy", (1.3, 2.0, 3.0)),
    ("latency", (1.2, 1.8, 3.0)),
])
def test_optimal_against_brute_force(trained, energy, objective, targets):
  for target in targets:
    a = _allocate(trained, objective=objective, target=target)
    # Same probes (same key and shapes) whatever the objective.
    assert {p: t.loss_increase for p, t in a.table.items()} == {
        p: t.loss_increase for p, t in energy.table.items()}
    names = list(a.table)
    chosen = [a.table[p].k.index(a.k[p]) for p in names]
    cost = sum(_cost(a.table, objective, p, c) for p, c in zip(names, chosen))
    assert cost <= a.budget
    ratio = {"ou_ratio": a.predicted_ou_ratio,
             "energy": a.predicted_energy_ratio,
             "latency": a.predicted_latency_ratio}[objective]
    assert ratio >= target * (1 - 1e-12)
    # Energy and latency are solved on a grid of MAX_STEPS steps, costs
    # rounded up: optimal among the choices that fit within a step a layer.
    slack = (0.0 if objective == "ou_ratio"
             else len(names) * a.budget / knapsack.MAX_STEPS)
    assert a.predicted_loss_increase <= _brute_force(
        a, objective, a.budget, slack) + 1e-9
    assert a.predicted_loss_increase >= _brute_force(
        a, objective, a.budget) - 1e-9


def test_totals_are_the_sum_of_the_priced_layers(energy):
  """The knapsack is exact because hardware_cost's totals add up by layer."""
  table = energy.table
  c = {p: t.k.index(t.chosen_k) for p, t in table.items()}
  assert math.isclose(energy.energy_pj,
                      sum(t.energy_pj[c[p]] for p, t in table.items()),
                      rel_tol=1e-12)
  assert math.isclose(energy.latency_ns,
                      sum(t.latency_ns[c[p]] for p, t in table.items()),
                      rel_tol=1e-12)
  assert math.isclose(energy.dense_energy_pj,
                      sum(t.dense_energy_pj for t in table.values()),
                      rel_tol=1e-12)
  assert energy.objective == "energy" and energy.target == 2.0
  out = energy.to_dict()
  assert out["predicted_energy_ratio"] == energy.predicted_energy_ratio >= 2.0
  assert "energy" in energy.format_table()


def test_prediction_is_the_compressed_models_cost(trained, energy):
  """The layouts priced are those k-means at the chosen k gives (what the
  wrappers' init does; RULES prune nothing)."""
  _, params = trained
  kernels = dict(rsjax.named_leaves(params))
  shapes = {p: kernels[p].shape for p in energy.k}
  clustered = rsjax.cluster_layers(
      {p: rsjax.to_ous(rsjax.to_crossbar_matrix(kernels[p]), HW.block_shape)
       for p in energy.k}, energy.k, key=jax.random.key(3))
  layers = {p: rsjax.CompressedLayer(c, i, shapes[p])
            for p, (c, i) in clustered.items()}
  report = rsjax.compression_report(layers, HW, POSITIONS)
  assert report["total"]["stored_ous"] == energy.stored_ous
  cost = rsjax.hardware_cost(report, HW)["layouts"]
  assert math.isclose(cost["shared"]["energy_pj"]["total"], energy.energy_pj,
                      rel_tol=1e-12)
  assert cost["shared"]["latency_ns"] == energy.latency_ns
  assert cost["dense"]["energy_pj"]["total"] == energy.dense_energy_pj


def test_objectives_weigh_layers_differently(trained, energy):
  """A conv run 36 times a inference costs energy out of its share of OUs."""
  conv = energy.table["Conv_0/kernel"]
  dense = energy.table["Dense_0/kernel"]
  assert conv.dense_ous < dense.dense_ous
  assert conv.dense_energy_pj > dense.dense_energy_pj
  # The same target in stored OUs buys less energy than the energy
  # objective does, where the conv's share differs from its OUs'.
  by_ous = _allocate(trained, objective="ou_ratio", target=2.0)
  assert by_ous.energy_pj is not None
  assert by_ous.table["Conv_0/kernel"].energy_pj == conv.energy_pj


def test_unpriced_without_conv_positions(trained):
  a = _allocate(trained, target_ou_ratio=2.0, positions=None)
  assert a.energy_pj is None and a.predicted_energy_ratio is None
  assert a.table["Conv_0/kernel"].energy_pj is None
  assert "energy" not in a.format_table().splitlines()[0]


@pytest.mark.parametrize("kwargs, match", [
    ({"objective": "area", "target": 2.0}, "objective must be one of"),
    ({"objective": "energy", "target_ou_ratio": 2.0},
     "target_ou_ratio is the target of objective='ou_ratio'"),
    ({"objective": "energy", "stored_ous": 10},
     "stored_ous is a budget of objective='ou_ratio'"),
    ({"target": 2.0, "target_ou_ratio": 2.0}, "not both"),
    ({"objective": "latency", "target": 0.5}, "target must be a finite"),
    ({"objective": "energy", "target": 2.0, "positions": None},
     r"give positions=\{path: output pixels\} for \['Conv_0/kernel'\]"),
    ({"objective": "energy", "target": 2.0, "positions": {"nope": 3}},
     r"positions names \['nope'\]"),
    ({"objective": "energy", "target": 2.0,
      "positions": {"Conv_0/kernel": 0}}, r"positions\['Conv_0/kernel'\]"),
    ({"objective": "energy", "target": 1e4},
     r"cannot reach target=10000 \(energy\).* energy ratio [0-9.]+ at best"),
])
def test_bad_arguments(trained, kwargs, match):
  with pytest.raises(ValueError, match=match):
    _allocate(trained, **kwargs)


def test_energy_needs_hardware(trained):
  loss_fn, params = trained
  with pytest.raises(ValueError, match="give a HardwareSpec"):
    rsjax.allocate_k(loss_fn, params, RULES, (9, 2), objective="energy",
                     target=2.0, positions=POSITIONS, key=jax.random.key(0))


def test_stored_ous_bound_when_training_prunes_other_blocks(trained):
  """Other masks at the same sparsity can store more than predicted (a
  row-block below k gains a block), never more than ``max_stored_ous``."""
  _, params = trained
  rules = [rsjax.Rule("Dense_0", k=4, sparsity=0.5), rsjax.Rule("Conv|Dense_1")]
  a = _allocate(trained, rules=rules, target_ou_ratio=1.0,
                candidates={"Dense_0/kernel": [4]})
  lp = rsjax.make_plan(params, rules, HW)["Dense_0/kernel"]
  assert a.max_stored_ous - a.stored_ous == (
      allocation.max_stored_ous_at(lp, 4)
      - a.table["Dense_0/kernel"].stored_ous[0])
  # Params trained further, pruned at the wrappers' init: the kept blocks
  # spread evenly over the row-blocks, as many in all.
  ous = np.asarray(rsjax.to_ous(params["Dense_0"]["kernel"], HW.block_shape))
  rows, groups = ous.shape[:2]
  even = (np.arange(groups)[None] + np.arange(rows)[:, None]) % 2 == 0
  scale = np.where(even, 10.0, 0.1)[:, :, None, None]
  moved = jax.tree_util.tree_map(lambda v: v, params)
  moved["Dense_0"]["kernel"] = jnp.asarray(rsjax.from_ous(
      ous * scale, lp.matrix_shape), jnp.float32)
  tx = rsjax.ste_sharing(optax.sgd(0.0), a.rules, HW, key=jax.random.key(3))
  stored = rsjax.compression_report(
      rsjax.to_compressed(moved, tx.init(moved)), HW)["total"]["stored_ous"]
  assert a.stored_ous < stored <= a.max_stored_ous
