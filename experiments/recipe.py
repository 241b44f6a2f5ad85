"""A compression recipe: which stages run, on which layers, and how.

The recipe is data in the experiment config (``config.recipe`` and the stage
sections), turned into a :class:`Recipe` of library objects:

- ``recipe.stages``: the compression stages run after the float baseline, in
  this order: any of ``'prune'``, ``'share'``, ``'finetune'``, ``'hwaware'``
  (``'finetune'`` needs ``'share'``; ``'hwaware'``, the hardware-aware
  fine-tune on the crossbar emulator, keeps whatever structure the stages
  before it left, or trains the float baseline). ``()`` keeps the float
  baseline (it is still quantized, emulated and reported as a dense crossbar
  model). Prune only is ``('prune',)``, share only ``('share', 'finetune')``
  with rules that prune nothing, prune + share
  ``('prune', 'share', 'finetune')``.
- ``recipe.rules``: :class:`rsjax.Rule` s written ``'REGEX [k=K | ratio=R]
  [sparsity=S]'`` over parameter paths of the params tree
  (``'conv1/conv/kernel'``), first match wins. A rule with no setting keeps
  its layers dense (still mapped to crossbars and emulated).
- ``prune.*``: an :class:`rsjax.PruneSchedule` (with its pruning
  ``score``) and the prune stage's own training steps (0: prune once, no
  training).
- ``share.method``: ``'ste'`` (:func:`rsjax.ste_sharing`) or ``'distance'``
  (:func:`rsjax.distance_sharing`).
- ``compress.distill_weight`` / ``distill_temperature``: distillation from
  the float baseline in the training stages after it.

Everything is checked before anything trains (:func:`check`), against the
model's kernel paths.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

import ml_collections
import rsjax
from rsjax.kernels import training as hwaware_lib

from experiments import train as train_lib

COMPRESSION_STAGES = ("prune", "share", "finetune", "hwaware")
SHARING_METHODS = ("ste", "distance")
_SETTING = re.compile(r"^(k|ratio|sparsity)=(\S+)$")


def parse_rule(text: str) -> rsjax.Rule:
  """``'kernel$ k=8 sparsity=0.3'`` -> ``rsjax.Rule('kernel$', k=8, ...)``.

  The pattern is everything before the trailing ``NAME=VALUE`` settings
  (``k``, ``ratio``, ``sparsity``), so a pattern may hold spaces but not end
  in one of them.

  Raises:
    ValueError: naming the rule, for an empty pattern, a repeated setting or
      a value that is not a number (rsjax.Rule's own checks follow).
  """
  if not isinstance(text, str):
    raise ValueError(f"recipe.rules entries are strings 'REGEX [k=K] "
                     f"[sparsity=S]', got {text!r}")
  tokens = text.split()
  settings: dict[str, Any] = {}
  while tokens and (m := _SETTING.match(tokens[-1])):
    name, value = m.groups()
    if name in settings:
      raise ValueError(f"recipe rule {text!r}: {name} given twice")
    try:
      settings[name] = int(value) if name == "k" else float(value)
    except ValueError:
      raise ValueError(f"recipe rule {text!r}: {name}={value!r} is not a "
                       "number") from None
    tokens.pop()
  if not tokens:
    raise ValueError(f"recipe rule {text!r} has no pattern")
  try:
    return rsjax.Rule(" ".join(tokens), **settings)
  except ValueError as e:
    raise ValueError(f"recipe rule {text!r}: {e}") from None


def format_rule(rule: rsjax.Rule) -> str:
  """The inverse of :func:`parse_rule`."""
  parts = [rule.pattern]
  if rule.k is not None:
    parts.append(f"k={rule.k}")
  if rule.ratio is not None:
    parts.append(f"ratio={rule.ratio:g}")
  if rule.sparsity:
    parts.append(f"sparsity={rule.sparsity:g}")
  return " ".join(parts)


@dataclasses.dataclass(frozen=True)
class Recipe:
  """The compression a run applies (see the module docstring).

  Attributes:
    stages: the compression stages, a sub-sequence of
      :data:`COMPRESSION_STAGES`.
    rules: the :class:`rsjax.Rule` s, first match wins.
    schedule: when the prune stage prunes.
    sharing: ``'ste'`` or ``'distance'``.
    distill: ``(weight, temperature)`` of distillation from the float
      baseline, or None.
  """

  stages: tuple[str, ...]
  rules: tuple[rsjax.Rule, ...]
  schedule: rsjax.PruneSchedule
  sharing: str
  distill: tuple[float, float] | None

  def __post_init__(self):
    unknown = [s for s in self.stages if s not in COMPRESSION_STAGES]
    if unknown:
      raise ValueError(f"recipe.stages {self.stages}: unknown {unknown}; "
                       f"stages are {COMPRESSION_STAGES}")
    order = [COMPRESSION_STAGES.index(s) for s in self.stages]
    if order != sorted(set(order)):
      raise ValueError(f"recipe.stages {self.stages} must be in the order "
                       f"{COMPRESSION_STAGES}, each at most once")
    if "finetune" in self.stages and "share" not in self.stages:
      raise ValueError("recipe.stages: 'finetune' trains the shared "
                       "codebooks, so it needs 'share'")
    if self.sharing not in SHARING_METHODS:
      raise ValueError(f"share.method must be one of {SHARING_METHODS}, "
                       f"got {self.sharing!r}")
    if self.compresses and not self.rules:
      raise ValueError(f"recipe.stages {self.stages} need recipe.rules")
    shares = any(r.k is not None or r.ratio is not None for r in self.rules)
    prunes = any(r.sparsity > 0 for r in self.rules)
    for stage, setting, used in (("share", "k or ratio", shares),
                                 ("prune", "sparsity", prunes)):
      if stage in self.stages and not used:
        raise ValueError(f"recipe.stages has '{stage}' but no recipe rule "
                         f"sets {setting}")
      if used and stage not in self.stages:
        raise ValueError(f"recipe rules set {setting} but recipe.stages has "
                         f"no '{stage}' stage")

  def runs(self, stage: str) -> bool:
    return stage in self.stages

  @property
  def compresses(self) -> bool:
    """Whether a stage prunes or shares (``'hwaware'`` alone does not)."""
    return any(s != "hwaware" for s in self.stages)

  @property
  def variant(self) -> str:
    """``'float baseline'``, ``'prune only'``, ``'share only'`` or
    ``'prune + share'``."""
    if not self.compresses:
      return "float baseline"
    if "share" not in self.stages:
      return "prune only"
    return "prune + share" if "prune" in self.stages else "share only"

  @property
  def layout(self) -> str:
    """The :func:`rsjax.hardware_cost` layout its model runs in
    (:func:`cost_layout`)."""
    return cost_layout(self.stages)


def cost_layout(stages: Sequence[str]) -> str:
  """The :func:`rsjax.hardware_cost` layout of a recipe's stages.

  ``'shared'`` if they share (index-and-add; the layout skips pruned blocks
  too), ``'pruned'`` if they prune only, else ``'dense'``.
  """
  if "share" in stages:
    return "shared"
  return "pruned" if "prune" in stages else "dense"


def _check_distillation(field: str, **setting) -> None:
  """:class:`train.Distillation`'s check of one setting, naming its field."""
  try:
    train_lib.Distillation(None, **{"weight": 0.0, **setting})
  except ValueError as e:
    raise ValueError(f"{field}: {e}") from None


def from_config(config: ml_collections.ConfigDict) -> Recipe:
  """The :class:`Recipe` of an experiment config.

  Raises:
    ValueError: naming the config field, for anything malformed.
  """
  cc, hc, pc = config.compress, config.hwaware, config.prune
  _check_distillation("compress.distill_weight", weight=cc.distill_weight)
  _check_distillation("compress.distill_temperature",
                      temperature=cc.distill_temperature)
  _check_distillation("hwaware.distill_weight", weight=hc.distill_weight)
  if hc.backward not in hwaware_lib.BACKWARDS:
    raise ValueError(f"hwaware.backward must be one of "
                     f"{hwaware_lib.BACKWARDS}, got {hc.backward!r}")
  try:
    schedule = rsjax.PruneSchedule(begin=pc.begin, end=pc.end,
                                   every=pc.every, power=pc.power,
                                   scope=pc.scope, score=pc.score)
  except ValueError as e:
    raise ValueError(f"prune schedule (prune.begin/end/every/power/scope/"
                     f"score): {e}") from None
  distill = ((float(cc.distill_weight), float(cc.distill_temperature))
             if cc.distill_weight > 0 else None)
  return Recipe(stages=tuple(config.recipe.stages),
                rules=tuple(parse_rule(r) for r in config.recipe.rules),
                schedule=schedule, sharing=config.share.method,
                distill=distill)


def plan(recipe: Recipe, params, hw: rsjax.HardwareSpec
         ) -> dict[str, rsjax.LayerPlan]:
  """``rsjax.make_plan`` of the recipe's rules over ``params``.

  ``params`` may be shapes only (``jax.eval_shape``), so a recipe is checked
  before anything trains; a baseline-only recipe without rules plans
  nothing.
  """
  if not recipe.rules:
    return {}
  try:
    return rsjax.make_plan(params, recipe.rules, hw)
  except ValueError as e:
    raise ValueError(f"recipe.rules: {e}") from None


def describe(recipe: Recipe) -> dict[str, Any]:
  """The recipe as JSON values, for results and tables."""
  return {"variant": recipe.variant, "stages": list(recipe.stages),
          "rules": [format_rule(r) for r in recipe.rules],
          "sharing": recipe.sharing if recipe.runs("share") else None,
          "distill": list(recipe.distill) if recipe.distill else None}

