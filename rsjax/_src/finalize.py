"""One call from a trained model to the compressed format.

:func:`to_compressed` returns ``{param path: CompressedLayer}``, the mapping
that :mod:`rsjax` report and export take (with a :class:`HardwareSpec`).
"""

from __future__ import annotations

import jax
import numpy as np

from rsjax._src import blockops
from rsjax._src import compressed
from rsjax._src import paths
from rsjax._src import pruning
from rsjax._src import rules as rules_lib
from rsjax._src import sharing
from rsjax._src import validate


def to_compressed(params, opt_state=None, *, rules=None, hw=None,
                  dense_fallback: bool = False
                  ) -> dict[str, compressed.CompressedLayer]:
  """The compressed layers of a trained model.

  With ``opt_state`` (any rsjax training state, or a chain holding one), the
  codebooks and index tables come from it: the decompressed kernels are
  bit-identical to what :func:`rsjax.training_params` fed the model (STE,
  fine-tune) or to :func:`rsjax.project` of the params (distance loop).
  Without it, ``params`` must already be shared (projected) and ``rules``
  and ``hw`` say which kernels and ``k``: the distinct blocks are read off
  exactly, no k-means.

  Pruned-only layers (no ``k``) come back with every kept block stored
  (an identity index), pruned blocks ``-1``. With ``dense_fallback`` every
  other crossbar kernel (:func:`rsjax.kernel_paths`: the 2-D and 4-D
  leaves) comes back too, as it is (:meth:`CompressedLayer.from_kernel`):
  the whole model as the emulator and the model file map it.

  Args:
    params: the trained params (Linen dict or NNX ``State``).
    opt_state: the optimizer state, or None.
    rules: :class:`rsjax.Rule` s, when ``opt_state`` is None.
    hw: a :class:`rsjax.HardwareSpec` or block shape, with ``rules`` or
      ``dense_fallback``.
    dense_fallback: also return the kernels no rule compresses.

  Returns:
    ``{path: CompressedLayer}`` in parameter order; codebooks compacted
    (used entries first, unused zero).

  Raises:
    ValueError: without a state, if a shared kernel has more than ``k``
      distinct blocks in a row-block; with one, if ``params`` lack a kernel
      path the state was initialised on or its shape differs; on concrete
      NaN or inf weights (naming the path).
    TypeError: on a non-floating kernel (naming its path and dtype).
  """
  if dense_fallback and hw is None:
    raise ValueError("to_compressed(dense_fallback=True) needs hw (the "
                     "block shape of the kernels no rule compresses)")
  if dense_fallback and opt_state is None and not rules:
    planned = {}  # nothing compressed: every kernel as it is
  else:
    planned = _planned(params, opt_state, rules, hw)
  if not dense_fallback:
    return planned
  leaves = dict(paths.named_leaves(params))
  block = rules_lib.block_shape_of(hw)
  out = {p: planned[p] if p in planned else
         compressed.CompressedLayer.from_kernel(leaves[p], block)
         for p in paths.kernel_paths(params)}
  return {**out, **planned}


def _planned(params, opt_state, rules, hw):
  """The layers the state or the rules compress (see to_compressed)."""
  if opt_state is not None:
    state = sharing.find_state(opt_state)
    plan = pruning.plans_of(state.layers)
    validate.check_tree(params, plan, "to_compressed")
    validate.check_kernels(params, plan, "to_compressed")
    kernels = pruning.kernels_of(params, plan)
    out = {}
    for p, s in state.layers.items():
      if s.codebook is None:
        out[p] = compressed.CompressedLayer.from_kernel(
            blockops.apply_mask(kernels[p], s.mask, s.plan),
            s.plan.block_shape)
        continue
      if validate.concrete(s.codebook) and not np.isfinite(
          np.asarray(s.codebook).astype(np.float64)).all():
        raise ValueError(f"to_compressed: {p} has NaN or inf centroids in "
                         "the optimizer state (training diverged?)")
      codebook, index = blockops.compact(s.codebook, s.index)
      out[p] = compressed.CompressedLayer(codebook, index, s.plan.kernel_shape)
    return out
  if rules is None or hw is None:
    raise ValueError("to_compressed needs opt_state, or rules and hw")
  plan = rules_lib.make_plan(params, rules, hw)
  validate.check_kernels(params, plan, "to_compressed")
  kernels = pruning.kernels_of(params, plan)
  read = blockops.exact_codebooks(kernels, plan_items=tuple(
      (p, lp) for p, lp in plan.items() if lp.shared))
  out = {}
  for p, lp in plan.items():
    if not lp.shared:
      out[p] = compressed.CompressedLayer.from_kernel(kernels[p],
                                                      lp.block_shape)
      continue
    codebook, index, most = read[p]
    most = int(jax.device_get(most))
    if most > lp.slots:
      raise ValueError(
          f"{p}: a row-block has {most} distinct blocks, more than k={lp.k}; "
          "project() the params first")
    out[p] = compressed.CompressedLayer(codebook, index, lp.kernel_shape)
  return out
