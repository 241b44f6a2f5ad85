"""A compression recipe: which stages run, on which layers, and how.

The recipe is data in the experiment config (``config.recipe`` and the stage
sections), turned into a :class:`Recipe` of library objects:

- ``recipe.stages``: the compression stages run after the float baseline, in
  this order: any of ``'prune'``, ``'share'``, ``'finetune'``,
  ``'hwaware'`` (``'finetune'`` needs ``'share'``; ``'hwaware'``, the
  hardware-aware fine-tune on the crossbar emulator, keeps whatever
  structure the stages before it left, or trains the float baseline). ``()`` keeps the float baseline (it is
  still quantized, emulated and reported as a dense crossbar model).
  Prune only is ``('prune',)``, share only ``('share', 'finetune')`` with
  rules that prune nothing, prune + share ``('prune', 'share', 'finetune')``.
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
from typing import Any, Mapping, Sequence

import ml_collections
import rsjax
from rsjax.kernels import training as hwaware_lib

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
    if "share" in self.stages and not shares:
      raise ValueError("recipe.stages has 'share' but no recipe rule sets k "
                       "or ratio")
    if "share" not in self.stages and shares:
      raise ValueError("recipe rules set k or ratio but recipe.stages has "
                       "no 'share' stage")
    if "prune" in self.stages and not prunes:
      raise ValueError("recipe.stages has 'prune' but no recipe rule sets "
                       "sparsity")
    if "prune" not in self.stages and prunes:
      raise ValueError("recipe rules set sparsity but recipe.stages has no "
                       "'prune' stage")

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


def _check_weight(name: str, weight: float) -> float:
  if not 0.0 <= weight <= 1.0:
    raise ValueError(f"{name} must be in [0, 1], got {weight}")
  return weight


def _distill(cc: ml_collections.ConfigDict) -> tuple[float, float] | None:
  weight = _check_weight("compress.distill_weight", float(cc.distill_weight))
  temperature = float(cc.distill_temperature)
  if not temperature > 0:
    raise ValueError(
        f"compress.distill_temperature must be > 0, got {temperature}")
  return (weight, temperature) if weight > 0 else None


def from_config(config: ml_collections.ConfigDict) -> Recipe:
  """The :class:`Recipe` of an experiment config.

  Raises:
    ValueError: naming the config field, for anything malformed.
  """
  rules = config.recipe.rules
  if isinstance(rules, str):
    rules = (rules,)
  stages = config.recipe.stages
  if isinstance(stages, str):
    stages = tuple(s.strip() for s in stages.split(",") if s.strip())
  hc = config.get("hwaware")
  if hc is not None:
    _check_weight("hwaware.distill_weight",
                  float(hc.get("distill_weight", 0.0)))
    backward = hc.get("backward", "ste")
    if backward not in hwaware_lib.BACKWARDS:
      raise ValueError(f"hwaware.backward must be one of "
                       f"{hwaware_lib.BACKWARDS}, got {backward!r}")
  pc = config.prune
  try:
    schedule = rsjax.PruneSchedule(begin=pc.begin, end=pc.end,
                                   every=pc.every, power=pc.power,
                                   scope=pc.scope,
                                   score=pc.get("score", "rms"))
  except ValueError as e:
    raise ValueError(f"prune schedule (prune.begin/end/every/power/scope/"
                     f"score): {e}") from None
  return Recipe(stages=tuple(stages),
                rules=tuple(parse_rule(r) for r in rules),
                schedule=schedule, sharing=config.share.method,
                distill=_distill(config.compress))


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


def rules_from_strings(texts: Sequence[str] | Mapping[str, Any]
                       ) -> tuple[rsjax.Rule, ...]:
  """Parses rule strings (as in a stored ``config.json``)."""
  return tuple(parse_rule(t) for t in texts)
