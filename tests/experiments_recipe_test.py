"""Tests of experiments/recipe.py and the library calls of the stages."""

import jax
import numpy as np
import optax
import pytest
import rsjax

from experiments import recipe as recipe_lib
from experiments import stages
from experiments.configs import default

HW = rsjax.HardwareSpec()  # 9x2 weight blocks


@pytest.mark.parametrize("text, rule", [
    ("kernel$", rsjax.Rule("kernel$")),
    ("kernel$ k=8 sparsity=0.3", rsjax.Rule("kernel$", k=8, sparsity=0.3)),
    ("^conv1/ ratio=16", rsjax.Rule("^conv1/", ratio=16.0)),
    ("a b sparsity=0.5", rsjax.Rule("a b", sparsity=0.5)),
])
def test_parse_rule_round_trip(text, rule):
  assert recipe_lib.parse_rule(text) == rule
  assert recipe_lib.parse_rule(recipe_lib.format_rule(rule)) == rule


@pytest.mark.parametrize("text, problem", [
    ("k=8", "has no pattern"),
    ("kernel$ k=8 k=4", "k given twice"),
    ("kernel$ k=x", "is not a number"),
    ("kernel$ k=0", "k must be"),
    ("kernel$ sparsity=1.5", "sparsity must be"),
    ("kernel$ k=2 ratio=4", "not both"),
    ("(", "bad regex"),
])
def test_bad_rules_name_the_rule(text, problem):
  with pytest.raises(ValueError, match=problem):
    recipe_lib.parse_rule(text)


def _recipe(stages_, rules, sharing="ste"):
  config = default.get_config()
  config.recipe.stages = stages_
  config.recipe.rules = rules
  config.share.method = sharing
  return recipe_lib.from_config(config)


@pytest.mark.parametrize("stages_, rules, variant, layout", [
    ((), (), "float baseline", "dense"),
    (("prune",), ("kernel$ sparsity=0.5",), "prune only", "pruned"),
    (("share", "finetune"), ("kernel$ k=4",), "share only", "shared"),
    (("share",), ("^conv1/", "kernel$ k=4"), "share only", "shared"),
    (("prune", "share", "finetune"), ("kernel$ k=4 sparsity=0.5",),
     "prune + share", "shared"),
    (("hwaware",), (), "float baseline", "dense"),
])
def test_variants(stages_, rules, variant, layout):
  recipe = _recipe(stages_, rules)
  assert recipe.variant == variant
  assert recipe.layout == recipe_lib.cost_layout(stages_) == layout
  assert recipe_lib.describe(recipe)["stages"] == list(stages_)


@pytest.mark.parametrize("stages_, rules, sharing, problem", [
    (("prune", "share"), ("kernel$ k=4",), "ste", "sets sparsity"),
    (("share",), ("kernel$ sparsity=0.5",), "ste", "sets k"),
    (("prune",), ("kernel$ k=4 sparsity=0.5",), "ste", "no 'share'"),
    (("share",), ("kernel$ k=4 sparsity=0.5",), "ste", "no 'prune'"),
    (("share", "share"), ("kernel$ k=4",), "ste", "at most once"),
    (("tune",), ("kernel$ k=4",), "ste", "unknown"),
    (("share",), ("kernel$ k=4",), "kmeans", "share.method"),
    (("share",), ("kernel$ k=4",), "paper", "share.method"),
    (("share",), (), "ste", "need recipe.rules"),
])
def test_inconsistent_recipes_are_errors(stages_, rules, sharing, problem):
  with pytest.raises(ValueError, match=problem):
    _recipe(stages_, rules, sharing)


def test_schedule_errors_name_the_fields():
  config = default.get_config()
  config.prune.begin = 5
  with pytest.raises(ValueError, match="prune.begin/end"):
    recipe_lib.from_config(config)


def test_prune_score_is_the_schedules():
  config = default.get_config()
  assert recipe_lib.from_config(config).schedule.score == "rms"
  config.prune.score = "grad_weight"
  # Checked before anything trains: a gradient score cannot prune at init.
  with pytest.raises(ValueError, match=r"prune schedule \(.*score\): "
                     "pruning score 'grad_weight' needs the gradient"):
    recipe_lib.from_config(config)
  config.prune.begin, config.prune.end = 1, 10
  assert recipe_lib.from_config(config).schedule.score == "grad_weight"
  config.prune.score = "magnitude"
  with pytest.raises(ValueError, match="unknown pruning score 'magnitude'"):
    recipe_lib.from_config(config)


@pytest.mark.parametrize("sharing", ["distance", "ste"])
def test_sharing_transform_and_project_keep_pruned_blocks_and_k(sharing):
  recipe = _recipe(("prune", "share"), ("kernel$ k=2 sparsity=0.3",),
                   sharing)
  k1, k2 = jax.random.split(jax.random.key(0))
  params = {"a": {"kernel": jax.random.normal(k1, (3, 3, 4, 6))},
            "b": {"kernel": jax.random.normal(k2, (20, 10))}}
  tx = stages.sharing_transform(recipe, optax.sgd(0.1), HW,
                                key=jax.random.key(0), recluster_every=5,
                                n_init=1, lam=1e-3)
  state = tx.init(params)
  shared = stages.end_sharing(recipe, params, state, key=jax.random.key(1),
                          n_init=1)
  layers = rsjax.to_compressed(shared, rules=recipe.rules, hw=HW)
  plan = rsjax.make_plan(params, recipe.rules, HW)
  for path, layer in layers.items():
    n = plan[path].grid[0] * plan[path].grid[1]
    assert (np.asarray(layer.index) < 0).sum() == int(0.3 * n + 1e-9)
    assert layer.stored_per_row_block().max() <= 2
