"""Pruning scores: how OU blocks are ranked for pruning, and their registry.

A score maps one layer's OU blocks to an ``[R, G]`` array, higher = keep;
the lowest-scoring kept blocks are pruned first (per layer or, in
``'global'`` scope, over all pruned layers together, so a score should be
comparable across layers). A score is a function of an :class:`OuBlocks`,
and is named in :class:`rsjax.PruneSchedule` (``score='l1'``) by its
registered name or passed as the function itself.

Built in:

- ``'rms'`` (the default): the root-mean-square weight of the block.
- ``'l1'``: the mean absolute weight of the block.
- ``'grad_weight'``: ``|sum over the block of g * w|``, the first-order
  Taylor estimate of how much the loss changes if the whole block is zeroed
  (Molchanov et al., 2019, for groups of weights). It needs the gradient.

RMS and L1 average over the block's real cells, so that edge blocks, which
are partly zero padding, are not pruned first just for being smaller. The
Taylor score is a loss change, already comparable between blocks of any size
and between layers, so it is a sum.

A new criterion is one function here, registered with
``@register_score('name')`` (or, from user code, ``rsjax.register_score``).
Scores run inside the jitted training step: pure ``jax.numpy`` only.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

DEFAULT = "rms"


class MissingGradientError(ValueError):
  """A pruning score needs the gradient and none is given."""


class OuBlocks(NamedTuple):
  """One layer's OU blocks, what a pruning score ranks.

  Attributes:
    weight: ``[R, G, bh, bw]`` float32 weights; the padding cells of partial
      edge blocks are zero.
    grad: the gradient in the same layout, or None where there is none
      (masks chosen at ``init``, or by :func:`rsjax.prune_masks` without
      ``grads``).
    cells: ``[R, G]`` float32, the number of real (unpadded) cells of each
      block.
  """

  weight: jax.Array
  grad: jax.Array | None
  cells: jax.Array

  def require_grad(self, score: str) -> jax.Array:
    """``grad``, or a :class:`MissingGradientError` (a ``ValueError``)
    naming ``score`` if there is none."""
    if self.grad is None:
      raise MissingGradientError(
          f"pruning score {score!r} needs the gradient, and none is given: "
          "pass grads= to rsjax.prune_masks (in training, a PruneSchedule "
          "that begins at step 1 or later gives the step's gradient)")
    return self.grad


Score = Callable[[OuBlocks], jax.Array]

_SCORES: dict[str, Score] = {}


def register_score(name: str, fn: Score | None = None, *,
                   overwrite: bool = False):
  """Registers a pruning score under ``name``.

  Usable as a call, ``register_score('saliency', fn)``, or as a decorator,
  ``@register_score('saliency')``.

  Args:
    name: the name a :class:`rsjax.PruneSchedule` gives as ``score``.
    fn: ``(OuBlocks) -> [R, G]`` scores, higher = keep; jittable.
    overwrite: replace a score already registered under ``name``.

  Returns:
    ``fn`` (the decorator, without ``fn``).

  Raises:
    TypeError: ``name`` is not a str, or ``fn`` is not callable.
    ValueError: ``name`` is empty, or taken and not ``overwrite``.
  """
  if not isinstance(name, str):
    raise TypeError(f"a pruning score's name must be a str, got {name!r}")
  if not name:
    raise ValueError("a pruning score's name must not be empty")

  def register(f):
    if not callable(f):
      raise TypeError(f"pruning score {name!r} must be a callable "
                      f"(OuBlocks) -> [R, G] scores, got {f!r}")
    if name in _SCORES and not overwrite:
      raise ValueError(f"pruning score {name!r} is already registered "
                       "(pass overwrite=True to replace it)")
    _SCORES[name] = f
    return f

  return register if fn is None else register(fn)


def pruning_scores() -> dict[str, Score]:
  """``{name: score}`` of the registered pruning scores (a copy)."""
  return dict(_SCORES)


def resolve(score) -> tuple[str, Score]:
  """``(name, fn)`` of a registered name or a score function.

  Raises:
    ValueError: an unknown name (the message lists the registered ones).
    TypeError: neither a str nor a callable.
  """
  if isinstance(score, str):
    if score not in _SCORES:
      raise ValueError(
          f"unknown pruning score {score!r}; registered: "
          f"{sorted(_SCORES)} (add one with rsjax.register_score)")
    return score, _SCORES[score]
  if callable(score):
    return getattr(score, "__name__", repr(score)), score
  raise TypeError(f"score must be a registered name ({sorted(_SCORES)}) or "
                  f"a callable (OuBlocks) -> [R, G] scores, got {score!r}")


def needs_grad(score) -> bool:
  """Whether ``score`` (a name or function) asks for the gradient.

  Traced once on a one-block probe without a gradient: a score that calls
  :meth:`OuBlocks.require_grad` needs one.
  """
  _, fn = resolve(score)
  probe = OuBlocks(jax.ShapeDtypeStruct((1, 1, 1, 1), jnp.float32), None,
                   jax.ShapeDtypeStruct((1, 1), jnp.float32))
  try:
    jax.eval_shape(fn, probe)
  except MissingGradientError:
    return True
  # Any other failure on the probe is not this question's: the score meets
  # real blocks (and reports its own errors) where it prunes.
  except Exception:  # pylint: disable=broad-except
    return False
  return False


def block_scores(score, blocks: OuBlocks) -> jax.Array:
  """``score`` (a name or function) of ``blocks``: ``[R, G]`` float32.

  Raises:
    ValueError, TypeError: as :func:`resolve`; a score whose result is not
      an ``[R, G]`` real array (naming the score and the shapes).
  """
  name, fn = resolve(score)
  out = fn(blocks)
  want = blocks.cells.shape
  if (not hasattr(out, "shape") or not hasattr(out, "dtype")
      or jnp.issubdtype(out.dtype, jnp.complexfloating)):
    raise TypeError(f"pruning score {name!r} must return a real [R, G] "
                    f"array, got {out!r}")
  if tuple(out.shape) != tuple(want):
    raise ValueError(f"pruning score {name!r} returned shape "
                     f"{tuple(out.shape)}; the layer's blocks need "
                     f"{tuple(want)}")
  return out.astype(jnp.float32)


@register_score("rms")
def rms(blocks: OuBlocks) -> jax.Array:
  """Root-mean-square weight of each block over its real cells."""
  w = blocks.weight
  return jnp.sqrt(jnp.sum(w * w, axis=(2, 3)) / blocks.cells)


@register_score("l1")
def l1(blocks: OuBlocks) -> jax.Array:
  """Mean absolute weight of each block over its real cells."""
  return jnp.sum(jnp.abs(blocks.weight), axis=(2, 3)) / blocks.cells


@register_score("grad_weight")
def grad_weight(blocks: OuBlocks) -> jax.Array:
  """``|sum g * w|`` per block: the first-order loss change of zeroing it."""
  g = blocks.require_grad("grad_weight")
  return jnp.abs(jnp.sum(g * blocks.weight, axis=(2, 3)))
