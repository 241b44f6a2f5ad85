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
    try:
      re.compile(self.pattern)
    except re.error as e:
      raise ValueError(f"bad regex {self.pattern!r}: {e}") from None
    if self.k is not None and self.ratio is not None:
      raise ValueError(f"rule {self.pattern!r}: give k or ratio, not both")
    if self.k is not None and (isinstance(self.k, bool)
                               or not isinstance(self.k, (int, np.integer))
                               or self.k < 1):
      raise ValueError(f"rule {self.pattern!r}: k must be an int >= 1, got "
                       f"{self.k!r}")
    if self.ratio is not None and not self.ratio >= 1:
      raise ValueError(f"rule {self.pattern!r}: ratio must be >= 1, got "
                       f"{self.ratio!r}")
    if not 0.0 <= self.sparsity < 1.0:
      raise ValueError(f"rule {self.pattern!r}: sparsity must be in [0, 1), "
                       f"got {self.sparsity!r}")


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


def make_plan(params, rules: Sequence[Rule],
              hw: hardware.HardwareSpec | Sequence[int]
              ) -> dict[str, LayerPlan]:
  """Resolves ``rules`` over the kernels of ``params``.

  Only shapes and paths are read, so this works on tracers and on
  ``jax.ShapeDtypeStruct`` trees too.

  Args:
    params: a Linen params / variables dict or an NNX ``State``.
    rules: :class:`Rule` s, first match wins.
    hw: a :class:`HardwareSpec` (its ``block_shape``) or a block shape.

  Returns:
    ``{path: LayerPlan}`` in tree order, for every kernel that a rule shares
    or prunes (excluding rules leave theirs out).

  Raises:
    ValueError: if a rule matches no 2-D or 4-D leaf, or rules is empty.
  """
  rules = tuple(rules)
  if not rules or not all(isinstance(r, Rule) for r in rules):
    raise ValueError(f"rules must be a non-empty sequence of Rule, got "
                     f"{rules!r}")
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
