"""Regex rules that choose which parameters are shared or pruned, and how.

A rule names parameters by a regex over their path strings
(:func:`rsjax.path_str`: ``'params/Conv_1/kernel'`` for Linen variables,
``'conv1/kernel'`` for NNX state) and says what to do with them: ``k`` stored
blocks per row-block (or a sharing ``ratio``, turned into ``k``), and an OU
block ``sparsity``. Rules are tried in order and the first match wins, so a
rule that does nothing (``Rule('Conv_0')``) placed first leaves a layer out,
e.g. the first and last layers. Only Dense ``[in, out]`` and Conv
``[kh, kw, cin, cout]`` kernels (2-D and 4-D leaves) take part; a rule that
matches no such leaf is an error, so a typo never silently trains a dense
network.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Sequence

import numpy as np

from rsjax._src import hardware
from rsjax._src import lowering
from rsjax._src import paths


@dataclasses.dataclass(frozen=True)
class Rule:
  """What to do with the kernels whose path ``re.search``-es ``pattern``.

  Attributes:
    pattern: a regex over parameter paths.
    k: stored blocks per row-block (the k of k-means), or None.
    ratio: a sharing ratio instead of ``k``: ``k = max(1, floor(G / ratio))``
      for a layer of ``G`` column groups, so each row-block keeps at most
      ``1 / ratio`` of its blocks (before pruning).
    sparsity: the fraction of OU blocks pruned to zero, in ``[0, 1)``.

  A rule with neither ``k``, ``ratio`` nor ``sparsity`` excludes the layers
  it matches.
  """

  pattern: str
  k: int | None = None
  ratio: float | None = None
  sparsity: float = 0.0

  def __post_init__(self):
    if not isinstance(self.pattern, str):
      raise TypeError(f"Rule.pattern must be a str regex, got "
                      f"{self.pattern!r}")
    try:
      re.compile(self.pattern)
    except re.error as e:
      raise ValueError(f"bad regex {self.pattern!r}: {e}") from None
    name = f"rule {self.pattern!r}"
    # Python numbers, so that equal rules hash equal whatever the input type.
    if self.k is not None:
      object.__setattr__(self, "k", integer(self.k, f"{name}: k"))
    if self.ratio is not None:
      object.__setattr__(self, "ratio", number(self.ratio, f"{name}: ratio"))
    object.__setattr__(self, "sparsity",
                       number(self.sparsity, f"{name}: sparsity"))
    if self.k is not None and self.ratio is not None:
      raise ValueError(f"{name}: give k or ratio, not both")
    if self.k is not None and self.k < 1:
      raise ValueError(f"{name}: k must be an int >= 1, got {self.k!r}")
    if self.ratio is not None and not self.ratio >= 1:
      raise ValueError(f"{name}: ratio must be >= 1, got {self.ratio!r}")
    if not 0.0 <= self.sparsity < 1.0:
      raise ValueError(f"{name}: sparsity must be in [0, 1), got "
                       f"{self.sparsity!r}")


def integer(value, name: str) -> int:
  """``value`` as a Python int: ints and NumPy integers, not bools.

  Raises:
    TypeError: naming ``name`` and the value, for anything else.
  """
  if isinstance(value, (bool, np.bool_)) or not isinstance(
      value, (int, np.integer)):
    raise TypeError(f"{name} must be an int, got {value!r}")
  return int(value)


def number(value, name: str) -> float:
  """``value`` as a Python float: real numbers (Python or NumPy), not bools
  or strings.

  Raises:
    TypeError: naming ``name`` and the value, for anything else.
  """
  if isinstance(value, (bool, np.bool_)) or not isinstance(
      value, (int, float, np.integer, np.floating)):
    raise TypeError(f"{name} must be a number, got {value!r}")
  return float(value)


@dataclasses.dataclass(frozen=True)
class LayerPlan:
  """The resolved configuration of one kernel.

  Attributes:
    path: the parameter path.
    kernel_shape: Dense ``(in, out)`` or Conv ``(kh, kw, cin, cout)``.
    block_shape: the OU weight block ``(bh, bw)``.
    k: stored blocks per row-block, None when the layer is not shared.
    sparsity: target fraction of pruned OU blocks.
    rule: the pattern of the rule that chose it.
  """

  path: str
  kernel_shape: tuple[int, ...]
  block_shape: tuple[int, int]
  k: int | None
  sparsity: float
  rule: str

  @property
  def matrix_shape(self) -> tuple[int, int]:
    return (math.prod(self.kernel_shape[:-1]), self.kernel_shape[-1])

  @property
  def grid(self) -> tuple[int, int]:
    """``(R, G)``: row-blocks and column groups."""
    return lowering.grid_shape(self.matrix_shape, self.block_shape)

  @property
  def slots(self) -> int:
    """Codebook entries per row-block, ``min(k, G)``."""
    return min(self.k, self.grid[1]) if self.k is not None else 0

  @property
  def shared(self) -> bool:
    return self.k is not None

  @property
  def pruned(self) -> bool:
    return self.sparsity > 0


def block_shape_of(hw) -> tuple[int, int]:
  """``hw.block_shape`` for a :class:`HardwareSpec`, else ``hw`` itself."""
  if isinstance(hw, hardware.HardwareSpec):
    return hw.block_shape
  return lowering._check_block_shape(hw)  # pylint: disable=protected-access


def as_rules(rules) -> tuple[Rule, ...]:
  """``rules`` as a non-empty tuple of :class:`Rule` (a single Rule is one).

  Raises:
    TypeError: if ``rules`` is not a Rule or a sequence of them.
    ValueError: if it is empty.
  """
  if isinstance(rules, Rule):
    return (rules,)
  if isinstance(rules, (str, bytes)) or not hasattr(rules, "__iter__"):
    raise TypeError(f"rules must be a Rule or a sequence of Rule, got "
                    f"{rules!r}")
  rules = tuple(rules)
  bad = [r for r in rules if not isinstance(r, Rule)]
  if bad:
    raise TypeError(f"rules must be a Rule or a sequence of Rule; not Rule: "
                    f"{bad!r}")
  if not rules:
    raise ValueError("rules is empty: give at least one Rule")
  return rules


def make_plan(params, rules: Rule | Sequence[Rule],
              hw: hardware.HardwareSpec | Sequence[int]
              ) -> dict[str, LayerPlan]:
  """Resolves ``rules`` over the kernels of ``params``.

  Only shapes and paths are read, so this works on tracers and on
  ``jax.ShapeDtypeStruct`` trees too.

  Args:
    params: a Linen params / variables dict or an NNX ``State``.
    rules: :class:`Rule` s, first match wins (or one Rule).
    hw: a :class:`HardwareSpec` (its ``block_shape``) or a block shape.

  Returns:
    ``{path: LayerPlan}`` in tree order, for every kernel that a rule shares
    or prunes (excluding rules leave theirs out).

  Raises:
    ValueError: if a rule matches no 2-D or 4-D leaf, or rules is empty.
    TypeError: if ``rules`` holds something other than :class:`Rule` s.
  """
  rules = as_rules(rules)
  block = block_shape_of(hw)
  compiled = [re.compile(r.pattern) for r in rules]
  hits = [0] * len(rules)
  plan = {}
  for path, leaf in paths.named_leaves(params):
    if getattr(leaf, "ndim", None) not in (2, 4):
      continue
    for i, (rule, regex) in enumerate(zip(rules, compiled)):
      if not regex.search(path):
        continue
      hits[i] += 1
      shape = tuple(int(d) for d in leaf.shape)
      if rule.k is not None or rule.ratio is not None or rule.sparsity > 0:
        groups = lowering.grid_shape(
            (math.prod(shape[:-1]), shape[-1]), block)[1]
        k = rule.k
        if rule.ratio is not None:
          k = max(1, int(math.floor(groups / rule.ratio)))
        plan[path] = LayerPlan(path, shape, block, k, float(rule.sparsity),
                               rule.pattern)
      break
  unused = [r.pattern for r, h in zip(rules, hits) if h == 0]
  if unused:
    raise ValueError(
        f"rule(s) {unused} match no Dense or Conv kernel (that an earlier "
        f"rule did not take); kernel paths are "
        f"{paths.kernel_paths(params)}")
  return plan
