"""Batched k-means over OU blocks: one codebook per row-block (ReRAM-Sharing).

Every row-block of a layer and every restart is clustered at once (arrays
with row-block and restart axes): greedy k-means++ seeding, Lloyd
iterations until no assignment changes, empty clusters re-seeded at the
points farthest from their centroids, the restart with the lowest inertia
kept. One implementation, two backends: NumPy on the host for concrete
inputs and, called back from the program, under a caller's ``jit`` on a
CPU (nothing to compile); XLA under a ``jit`` on GPU and TPU, or with
JAX's persistent compilation cache on (:func:`_calls_back`). All-zero
blocks are pruned: they take part in nothing and get index ``-1``. The
number of clusters is clamped per row-block to its number of non-pruned
blocks.

Output format (used by training, the emulator, the report and export):
``codebook [R, K, bh, bw]`` and ``index [R, G]`` int32, where
``index[r, g]`` is the stored block of row-block ``r`` that column group ``g``
uses, or ``-1`` for pruned. Stored blocks are packed: the ones a row-block
uses are ``0 .. K_r - 1`` in order of first use, unused slots are zero.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST
CODEBOOK_SCOPES = ("row_block", "layer")

# The algorithm below is written once, on arrays with leading batch
# dimensions, for two backends: ``jnp`` (XLA) and NumPy (``xp=np``), which
# compiles nothing. XLA takes about a second on a CPU to compile the
# k-means program, far more than clustering a layer costs, so concrete
# inputs (cluster_ous, cluster_layers, the sharing wrappers' init,
# allocate_k's probes) take the NumPy path, and so does k-means traced into
# a program on a CPU (a training step that re-clusters): see _calls_back.
# Helpers that differ between the two take ``xp``.


def _lead(a, ndim: int):
  """``a`` with leading unit axes up to ``ndim`` (jnp raises on rank
  promotion)."""
  return a.reshape((1,) * (ndim - a.ndim) + a.shape)


def _matmul(xp, a, b):
  if xp is np:
    return np.matmul(a, b)
  return jnp.matmul(a, b, precision=_HIGHEST)


def _top_k(xp, v, k: int):
  """``(values, indices)`` of the ``k`` largest along the last axis, ties to
  the lower index (as ``lax.top_k``)."""
  if xp is np:
    idx = np.argsort(-v, axis=-1, kind="stable")[..., :k]
    return np.take_along_axis(v, idx, -1), idx
  return jax.lax.top_k(v, k)


def _any(xp, mask, axis=None, keepdims=False):
  """``any``; under XLA a float ``max``: XLA on a CPU compiles a float
  reduction as a library call (YNNPACK), a boolean or integer one as
  generated kernels (two, a reduce-window and a reduce), which cost far
  more to compile."""
  if xp is np:
    return np.any(mask, axis=axis, keepdims=keepdims)
  return jnp.max(jnp.where(mask, np.float32(1), np.float32(0)), axis=axis,
                 keepdims=keepdims) > 0


def _count(xp, mask, axis):
  """``sum`` of a mask, int32; under XLA a float sum (exact below 2**24;
  see :func:`_any`)."""
  if xp is np:
    return np.sum(mask, axis=axis, dtype=np.int32)
  return jnp.sum(jnp.where(mask, np.float32(1), np.float32(0)),
                 axis=axis).astype(np.int32)


def _take(xp, a, idx, axis: int):
  """``take_along_axis``. Every index k-means takes is in range, so XLA gets
  a plain gather, without the wrapping of negative indices and the fill of
  out-of-range ones: a smaller kernel to compile."""
  if xp is np:
    return np.take_along_axis(a, idx, axis)
  return jnp.take_along_axis(a, idx, axis, mode="promise_in_bounds")


def _take_rows(xp, table, idx):
  """``[..., K, X]``: rows ``idx [..., K]`` of ``table [..., M, X]`` (leading
  dimensions broadcast)."""
  if xp is not np:
    # The default (checked) gather: with a plain one XLA fuses the seeding's
    # squared norms of the rows differently, which rounds differently.
    return jnp.take_along_axis(table, idx[..., None], axis=-2)
  # Whole rows by one flat index: NumPy's take_along_axis indexes element
  # by element.
  lead, num = table.shape[:-2], table.shape[-2]
  base = np.arange(math.prod(lead)).reshape(lead + (1,)) * num
  flat = np.broadcast_to(base + idx, idx.shape[:-1] + idx.shape[-1:])
  return table.reshape(-1, table.shape[-1])[flat.reshape(-1)].reshape(
      flat.shape + table.shape[-1:])


def _sq_dists(x, c, xp=jnp, x_sq=None, c_sq=None):
  """Squared distances ``[..., G, C]`` between points ``[..., G, D]`` and
  ``[..., C, D]`` (``x_sq``, ``c_sq``: their squared norms, if at hand)."""
  x_sq = xp.sum(x * x, -1) if x_sq is None else x_sq
  c_sq = xp.sum(c * c, -1) if c_sq is None else c_sq
  cross = _matmul(xp, x, xp.swapaxes(c, -1, -2))
  return xp.maximum(x_sq[..., :, None] - 2 * cross + c_sq[..., None, :], 0.0)


def _member_sums(xp, labels, valid, x, num_slots: int):
  """``(sums [..., S, D], counts [..., S])`` of the valid points of each
  label."""
  slots = _lead(xp.arange(num_slots, dtype=np.int32), labels.ndim + 1)
  onehot = ((labels[..., None] == slots) & valid[..., None]).astype(
      np.float32)
  return (_matmul(xp, xp.swapaxes(onehot, -1, -2), x),
          xp.sum(onehot, axis=-2))


def _mix(h):
  """murmur3's 32-bit finalizer: every input bit moves every output bit."""
  h = h ^ (h >> 16)
  h = h * np.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * np.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _words(seed):
  """A key's bits as uint32 words (a seed from :func:`_split` as it is)."""
  if jax.dtypes.issubdtype(seed.dtype, jax.dtypes.prng_key):
    return jax.random.key_data(seed).astype(jnp.uint32)
  return seed


def _hash(counter, seed):
  """``counter`` (uint32) hashed with every word of ``seed``: one seed's
  words ``[W]``, or seeds ``[..., W]`` against a counter of the same rank
  (NumPy or jnp alike)."""
  words = _words(seed)
  words = words.reshape(-1) if words.ndim <= 1 else words
  for i in range(words.shape[-1]):
    word = words[i] if words.ndim == 1 else words[..., i:i + 1]
    counter = _mix(counter ^ _mix(word + np.uint32(0x9E3779B9)))
  return counter


# k-means draws its randomness from these hashes, not from jax.random:
# threefry adds about a second of XLA compile on a CPU to every program
# k-means is part of (the sharing wrappers' init, every training step that
# re-clusters), the hash milliseconds, and k-means++ sampling needs no more
# than draws that differ from seed to seed and from draw to draw. Integer
# arithmetic, so NumPy draws the same numbers.


def _derive(seed, counter, xp=jnp):
  """New seeds ``[*counter.shape, words]``, one per counter value."""
  words = xp.asarray(_words(seed)).reshape(-1)
  counter = xp.asarray(counter).astype(np.uint32)[..., None]
  # One hash over [..., words]: stacking a hash per word made XLA compile
  # a far larger kernel (about a second on a CPU for some shapes).
  word = _lead(xp.arange(len(words), dtype=np.uint32), counter.ndim)
  with np.errstate(over="ignore"):
    return _hash(counter * np.uint32(len(words)) + word, words)


def _split(seed, shape, xp=jnp):
  """Seeds of ``prod(shape)`` streams: ``[*shape, words]`` uint32."""
  return _derive(seed, xp.arange(math.prod(shape), dtype=np.uint32),
                 xp).reshape(*shape, -1)


def fold_in(seed, data, xp=jnp):
  """``seed`` (a ``jax.random`` key or seed words) folded with an integer.

  The seed words k-means takes wherever a key goes, as
  ``jax.random.fold_in`` would give a key, without threefry (see above).
  """
  return _derive(seed, data, xp)


def _to_unit(h):
  """Uniform floats in ``[0, 1)`` from uint32 hashes: the top 24 bits,
  exact in float32, strictly below 1."""
  return (h >> 8).astype(np.float32) * np.float32(2.0**-24)


def _uniforms(seed, shape):
  """Uniform floats in ``[0, 1)`` from a key or seed."""
  return _to_unit(_hash(jnp.arange(math.prod(shape), dtype=jnp.uint32),
                        seed)).reshape(shape)


def _draws(xp, seeds, shape):
  """``[..., *shape]`` uniforms, row ``i`` those of ``_uniforms(seeds[i],
  shape)``, for seeds ``[..., W]``."""
  counter = _lead(xp.arange(math.prod(shape), dtype=np.uint32), seeds.ndim)
  with np.errstate(over="ignore"):
    h = _hash(counter, seeds)
  return _to_unit(h).reshape(*seeds.shape[:-1], *shape)


def _cumsum(xp, v):
  """Cumulative sums along the last axis of float ``v``."""
  if xp is np:
    return np.cumsum(v, axis=-1)
  # A product with a triangle of ones: XLA on a CPU compiles a cumsum
  # (a reduce-window) about ten times slower than a dot. A small triangle
  # is a constant of the program; building it is a kernel to compile.
  num = v.shape[-1]
  ids = np.arange(num) if num <= 256 else jnp.arange(num)
  return _matmul(jnp, v, (ids[:, None] <= ids[None, :]).astype(np.float32))


def _sample(xp, u, weights):
  """Indices ``[..., T]`` drawn in proportion to non-negative ``weights
  [..., G]``, one per uniform of ``u [..., T]``.

  Inverse-CDF sampling: one uniform a draw rather than a Gumbel variate
  for every point, which made seeding the bottleneck on CPU.
  """
  num = weights.shape[-1]
  cdf = _cumsum(xp, weights)
  # searchsorted(side='right') as a count of the cdf values <= each draw:
  # the same index, a fraction of jnp.searchsorted's compile time (and a
  # float sum compiles faster than an integer one).
  below = cdf[..., None, :] <= (u * cdf[..., -1:])[..., None]
  idx = xp.sum(xp.where(below, np.float32(1), np.float32(0)), axis=-1)
  return xp.minimum(idx, num - 1).astype(np.int32)


def _seed_step(xp, i, state, x, x_sq, valid, k_eff, u, pair=None):
  """Slot ``i`` of greedy k-means++ (as scikit-learn's) for every instance.

  Args:
    i: the slot (an int, or traced).
    state: ``(centroids [..., S, D], closest [..., G])``: each point's
      squared distance to its closest centroid so far: inf before slot 0,
      and 0 for pruned points throughout, which keeps them out of every
      draw and sum.
    x, x_sq, valid: ``[..., G, D]`` points, ``[..., G]`` their squared
      norms and mask, broadcasting against the instances.
    k_eff: ``[...]`` slots to fill.
    u: ``[..., T]`` uniforms of this slot's candidates.
    pair: ``[..., G, G]`` squared distances between the points, if at hand
      (a gather instead of a product per slot); ``x_sq`` is unused then.
  """
  centroids, closest = state
  num_slots, trials = centroids.shape[-2], u.shape[-1]
  first = i == 0
  # Candidates in proportion to D^2; uniform over valid points for the
  # first slot and if every valid point already coincides with a centroid.
  # (closest >= 0: its max is a float reduction, see _any.)
  weights = xp.where(first | ~(xp.max(closest, -1, keepdims=True) > 0),
                     valid.astype(np.float32), closest)
  cands = _sample(xp, u, weights)
  # The candidates' distances to every point, [..., T, G].
  if pair is None:
    d = _sq_dists(_take_rows(xp, x, cands), x, xp, c_sq=x_sq)
  else:
    d = _take_rows(xp, pair, cands)
  cand_closest = xp.minimum(closest[..., None, :], d)
  potential = xp.sum(cand_closest, axis=-1)
  # The first centroid is one uniform draw, as scikit-learn's.
  trial = _lead(np.arange(trials), potential.ndim)  # a constant
  potential = xp.where(first & (trial > 0), np.float32(np.inf), potential)
  best = xp.argmin(potential, axis=-1)[..., None]
  chosen = _take(xp, cands, best, -1)
  take = (i < k_eff)[..., None]
  slot = _lead(xp.arange(num_slots)[:, None], centroids.ndim) == i
  centroids = xp.where(slot & take[..., None], _take_rows(xp, x, chosen),
                       centroids)
  closest = xp.where(take, _take_rows(xp, cand_closest, best)[..., 0, :],
                     closest)
  return centroids, closest


def _seed_init(xp, batch, x, valid, num_slots):
  """The seeding's initial state for instances of shape ``batch``."""
  zeros = xp.zeros((*batch, num_slots, x.shape[-1]), np.float32)
  closest = xp.broadcast_to(xp.where(valid, np.float32(np.inf), 0.0),
                            (*batch, valid.shape[-1]))
  return zeros, closest


def _lloyd_step(xp, x, x_sq, valid, active, centroids):
  """One Lloyd iteration: ``(labels, new centroids)``.

  Empty clusters are re-seeded each at a distinct far point (farthest
  first). ``active [..., S]`` marks the slots in use.
  """
  num_slots = centroids.shape[-2]
  # The nearest centroid: argmin of |c|^2 - 2 x.c (|x|^2 is the same for
  # every centroid), unused slots at inf.
  c_sq = xp.where(active, xp.sum(centroids * centroids, -1),
                  np.float32(np.inf))
  score = c_sq[..., None, :] - 2 * _matmul(xp, x, xp.swapaxes(
      centroids, -1, -2))
  labels = xp.argmin(score, axis=-1).astype(np.int32)
  sums, counts = _member_sums(xp, labels, valid, x, num_slots)
  means = sums / xp.maximum(counts, 1.0)[..., None]
  empty = active & (counts == 0)
  if xp is np and not empty.any():
    return labels, means
  own_dist = xp.where(valid, xp.maximum(xp.min(score, axis=-1) + x_sq, 0.0),
                      -1.0)
  far_dist, farthest = _top_k(xp, own_dist, num_slots)
  rank = xp.maximum(_cumsum(xp, empty.astype(np.float32)).astype(np.int32)
                    - 1, 0)
  reseed = empty & (_take(xp, far_dist, rank, -1) > 0)
  far = _take(xp, farthest, rank, -1)
  return labels, xp.where(reseed[..., None], _take(xp, x, far[..., None], -2),
                          means)


def _threshold(xp, x, valid, tol):
  """scikit-learn's stopping threshold: ``tol`` times the mean
  per-dimension variance of the valid points, ``[...]``."""
  weight = valid.astype(np.float32)[..., None]
  count = xp.maximum(xp.sum(weight, axis=(-2, -1)), 1.0)
  mean = xp.sum(x * weight, axis=-2) / count[..., None]
  return tol * xp.sum((x - mean[..., None, :]) ** 2 * weight,
                      axis=(-2, -1)) / count / x.shape[-1]


def _changed(xp, labels, new_labels, centroids, new_centroids, valid,
             threshold):
  """Whether an instance goes on: a label changed and, as scikit-learn, the
  centroids moved (squared, summed) by more than ``threshold``."""
  return (_any(xp, (new_labels != labels) & valid, -1)
          & (xp.sum((new_centroids - centroids) ** 2, axis=(-2, -1))
             > threshold))


def _inertia(xp, x, valid, centroids, labels):
  own = _take(xp, centroids, labels[..., None], -2)
  return xp.sum(xp.where(valid, xp.sum((x - own) ** 2, axis=-1), 0.0),
                axis=-1)


def _restarts_jax(x, valid, k_eff, u, *, max_iter, tol):
  """k-means of instances ``[P, n]`` on points ``x [P, 1, G, D]`` (JAX):
  ``(centroids [P, n, S, D], labels [P, n, G], inertia [P, n])``."""
  num_slots = u.shape[-2]
  batch = u.shape[:-2]
  x_sq = jnp.sum(x * x, -1)
  centroids = jax.lax.fori_loop(
      0, num_slots, lambda i, s: _seed_step(jnp, i, s, x, x_sq, valid, k_eff,
                                            u[..., i, :]),
      _seed_init(jnp, batch, x, valid, num_slots))[0]
  active = jnp.arange(num_slots)[None, None, :] < k_eff[..., None]
  threshold = _threshold(jnp, x, valid, tol)

  def body(state):
    it, c, labels, go = state
    new_labels, new_c = _lloyd_step(jnp, x, x_sq, valid, active, c)
    # Instances that had stopped keep their state, as each would on its own.
    keep = go[..., None]
    go = go & _changed(jnp, labels, new_labels, c, new_c, valid, threshold)
    return (it + 1, jnp.where(keep[..., None], new_c, c),
            jnp.where(keep, new_labels, labels), go)

  labels = jnp.full((*batch, x.shape[-2]), -1, jnp.int32)
  state = (0, centroids, labels, jnp.ones(batch, bool))
  _, centroids, labels, _ = jax.lax.while_loop(
      lambda s: (s[0] < max_iter) & jnp.any(s[3]), body, state)
  return centroids, labels, _inertia(jnp, x, valid, centroids, labels)


def _restarts_numpy(x, valid, k_eff, u, *, max_iter, tol):
  """:func:`_restarts_jax` on the host: the same steps, instances that
  stopped left out of the next iteration's work."""
  num_slots = u.shape[-2]
  batch = u.shape[:-2]
  x_sq = np.sum(x * x, -1)
  # The points' distance table, where the seeding's products would cost
  # more than making it (and it fits).
  num_points = x.shape[-2]
  pair = (_sq_dists(x, x, np, x_sq, x_sq)
          if num_slots * u.shape[-1] * batch[1] > num_points
          and x.shape[0] * num_points ** 2 <= _HOST_ELEMENTS else None)
  state = _seed_init(np, batch, x, valid, num_slots)
  for i in range(min(num_slots, int(k_eff.max(initial=0)))):
    state = _seed_step(np, i, state, x, x_sq, valid, k_eff, u[..., i, :],
                       pair)
  centroids = state[0].reshape(-1, *state[0].shape[-2:])
  # Instances flattened, each with its row-block's points.
  rows = np.repeat(np.arange(batch[0]), batch[1])
  xs, xs_sq, vs = x[:, 0][rows], x_sq[:, 0][rows], valid[:, 0][rows]
  active = (np.arange(num_slots)[None]
            < np.broadcast_to(k_eff, batch).reshape(-1)[:, None])
  threshold = _threshold(np, x, valid, tol)[:, 0][rows]
  labels = np.full(vs.shape, -1, np.int32)
  live = np.arange(len(xs))
  for _ in range(max_iter):
    c = centroids[live]
    new_labels, new_c = _lloyd_step(np, xs[live], xs_sq[live], vs[live],
                                    active[live], c)
    go = _changed(np, labels[live], new_labels, c, new_c, vs[live],
                  threshold[live])
    centroids[live], labels[live] = new_c, new_labels
    live = live[go]
    if not live.size:
      break
  return (centroids.reshape(*batch, *centroids.shape[-2:]),
          labels.reshape(*batch, -1),
          _inertia(np, xs, vs, centroids, labels).reshape(batch))


def _best_of_restarts(xp, x, valid, k, seeds, *, num_slots, max_iter, tol,
                      n_trials):
  """Best of the restarts of each point set.

  Args:
    x: ``[P, G, D]`` points, ``valid [P, G]`` their mask.
    k: ``[P]`` clusters of each set (clamped to its valid points).
    seeds: ``[P, n_init, W]`` uint32, one per restart.

  Returns:
    ``(centroids [P, S, D], labels [P, G])`` of the lowest inertia.
  """
  k_eff = xp.minimum(k, _count(xp, valid, -1))[:, None]
  u = _draws(xp, seeds, (num_slots, n_trials))
  run = _restarts_numpy if xp is np else _restarts_jax
  centroids, labels, inertia = run(x[:, None], valid[:, None], k_eff, u,
                                   max_iter=max_iter, tol=tol)
  best = xp.argmin(inertia, axis=-1)
  # The restarts are few: a chain of selects, one generated kernel per
  # output under XLA, where gathers by the best restart were three.
  c, lab = centroids[:, 0], labels[:, 0]
  for i in range(1, centroids.shape[1]):
    c = xp.where((best == i)[:, None, None], centroids[:, i], c)
    lab = xp.where((best == i)[:, None], labels[:, i], lab)
  return c, lab


def _compact(labels, valid, table, num_out, xp=jnp):
  """Renumbers the used centroids of each row-block ``0..K_r-1``.

  Args:
    labels: ``[R, G]`` ids into ``table``.
    valid: ``[R, G]`` non-pruned mask.
    table: ``[R, C, D]`` (or ``[1, C, D]``, one table for all) centroids the
      ids refer to.
    num_out: codebook slots to return (static).

  Returns:
    ``(codebook [R, num_out, D], index [R, G])`` with used blocks first, in
    order of first use, unused slots zero and pruned entries ``-1``.
  """
  num_groups, num_table = labels.shape[-1], table.shape[-2]
  ids = np.arange(num_table)
  hit = (labels[..., None] == _lead(ids.astype(np.int32), 3)) & valid[
      ..., None]  # [R, G, C]
  # Float: a float reduction compiles faster (see _any).
  groups = np.arange(num_groups, dtype=np.float32)[None, :, None]
  first_use = xp.min(xp.where(hit, groups, np.float32(num_groups)), axis=-2)
  slots = np.arange(min(num_out, num_table))
  if xp is np or num_table > num_groups:
    order = xp.argsort(first_use, axis=-1, stable=True)
    new_id = xp.argsort(order, axis=-1).astype(np.int32)  # the inverse
    order = order[..., :len(slots)]
  else:
    # The same stable sort as counts: each entry's rank is the number of
    # entries ahead of it (an earlier first use, or the same, i.e. unused,
    # and a lower id), and the entry of rank j the one whose rank is j. XLA
    # on a CPU compiles two sorts far slower than comparisons and sums.
    # Their [R, C, C] is at most the [R, G, C] above (a layer's codebook
    # can have more entries than a row-block has groups: sorted then).
    mine, other = first_use[..., :, None], first_use[..., None, :]
    ahead = (other < mine) | ((other == mine)
                              & (ids[None, None, :] < ids[None, :, None]))
    new_id = _count(jnp, ahead, -1)  # [R, C]
    order = jnp.sum(jnp.where(new_id[..., None, :] == slots[None, :, None],
                              _lead(ids.astype(np.float32), 3),
                              np.float32(0)), axis=-1).astype(np.int32)
  index = xp.where(valid, _take(xp, new_id, labels, -1), -1)
  # Used entries come first: as many as have a first use.
  used = slots[None] < _count(xp, first_use < num_groups, -1)[..., None]
  codebook = xp.where(used[..., None], _take(xp, table, order[..., None], -2),
                      0.0)
  if codebook.shape[-2] < num_out:
    codebook = xp.pad(codebook, ((0, 0), (0, num_out - codebook.shape[-2]),
                                 (0, 0)))
  return codebook[:, :num_out], index.astype(np.int32)


def _cluster_rows_impl(xp, x, seeds, k_rows, *, num_slots, max_iter, n_trials,
                       tol=1e-4):
  valid = _any(xp, x != 0, -1)
  centroids, labels = _best_of_restarts(
      xp, x, valid, k_rows, seeds, num_slots=num_slots, max_iter=max_iter,
      tol=tol, n_trials=n_trials)
  return _compact(labels, valid, centroids, num_slots, xp)


def _cluster_impl(xp, x, seeds, *, k, n_init, max_iter, codebook_scope,
                  n_trials, tol=1e-4):
  num_rows, num_groups, _ = x.shape
  num_out = min(k, num_groups)
  if codebook_scope == "row_block":
    rows = (cluster_rows_host if xp is np
            else functools.partial(_cluster_rows_impl, jnp))
    return rows(x, _split(seeds, (num_rows, n_init), xp),
                xp.full((num_rows,), k, np.int32), num_slots=num_out,
                max_iter=max_iter, n_trials=n_trials, tol=tol)
  # codebook_scope == "layer": one codebook for the whole layer; each
  # row-block then stores the subset of it that it uses.
  valid = _any(xp, x != 0, -1)
  centroids, labels = _best_of_restarts(
      xp, x.reshape(1, num_rows * num_groups, -1), valid.reshape(1, -1),
      xp.full((1,), k, np.int32), _split(seeds, (1, n_init), xp),
      num_slots=min(k, num_rows * num_groups), max_iter=max_iter, tol=tol,
      n_trials=n_trials)
  return _compact(labels.reshape(num_rows, num_groups), valid, centroids,
                  num_out, xp)


@functools.partial(jax.jit, static_argnames=("num_slots", "max_iter",
                                             "n_trials"))
def _cluster_rows(x, keys, k_rows, *, num_slots, max_iter, n_trials,
                  tol=1e-4):
  """Per-row-block k-means of ``x [R, G, D]``, a ``k`` for each row-block.

  ``keys [R, n_init]`` (seeds ``[R, n_init, W]``); ``k_rows [R]`` may
  differ by row-block (rows of several layers stacked into one call),
  ``num_slots >= max(k_rows)``. :func:`cluster_rows_host` is the same on
  the host.
  """
  return _cluster_rows_impl(jnp, x, _words(keys), k_rows,
                            num_slots=num_slots, max_iter=max_iter,
                            n_trials=n_trials, tol=tol)


# Elements of the host's largest arrays (instances x points x slots, and
# row-blocks x points^2 for the seeding's distance table): row-blocks are
# clustered in chunks of at most this much work, which keeps memory bounded
# and the arrays in cache; above _HOST_SPLIT elements in all, in at least
# one chunk per core, in threads (NumPy's array loops release the
# interpreter lock): a 2-core CPU clusters a 456-row-block layer in 0.55x
# the time of one thread.
_HOST_ELEMENTS = 2 ** 21
_HOST_SPLIT = 2 ** 18


def cluster_rows_host(x, seeds, k_rows, *, num_slots, max_iter, n_trials,
                      tol=1e-4):
  """:func:`_cluster_rows` in NumPy (concrete arrays, nothing compiled)."""
  x = np.asarray(x, np.float32)
  seeds, k_rows = _host_words(seeds), np.asarray(k_rows, np.int32)
  num_rows, num_groups = x.shape[:2]
  per_row = num_groups * max(num_groups, seeds.shape[1] * num_slots)
  chunk = max(1, _HOST_ELEMENTS // per_row)
  cores = os.cpu_count() or 1
  if num_rows * per_row > _HOST_SPLIT and cores > 1:
    chunk = min(chunk, -(-num_rows // cores))

  def part(s):
    return _cluster_rows_impl(
        np, x[s:s + chunk], seeds[s:s + chunk], k_rows[s:s + chunk],
        num_slots=num_slots, max_iter=max_iter, n_trials=n_trials, tol=tol)

  starts = range(0, num_rows, chunk)
  if len(starts) == 1:
    parts = [part(0)]
  else:
    with concurrent.futures.ThreadPoolExecutor(min(cores,
                                                   len(starts))) as pool:
      parts = list(pool.map(part, starts))
  return (np.concatenate([c for c, _ in parts]),
          np.concatenate([i for _, i in parts]))


def _host_words(seed) -> np.ndarray:
  """A key's or seed's words as a NumPy uint32 array."""
  return np.asarray(_words(seed)).astype(np.uint32)


@functools.partial(jax.jit, static_argnames=("k", "n_init", "max_iter",
                                             "codebook_scope", "n_trials"))
def _cluster(x, key, *, k, n_init, max_iter, codebook_scope, n_trials,
             tol=1e-4):
  """Jitted core of :func:`cluster_ous` on ``x [R, G, D]`` float32."""
  return _cluster_impl(jnp, x, key, k=k, n_init=n_init, max_iter=max_iter,
                       codebook_scope=codebook_scope, n_trials=n_trials,
                       tol=tol)


def cluster_host(x, key, **kwargs):
  """:func:`_cluster` in NumPy (concrete arrays, nothing compiled)."""
  return _cluster_impl(np, np.asarray(x, np.float32), _host_words(key),
                       **kwargs)


def _calls_back() -> bool:
  """Whether k-means traced into a program runs as a host callback.

  On a CPU the program and the host are the same processor: the NumPy
  backend called back from the program clusters in 0.75-2.2x the time of
  XLA's version (VGG-8's layers 0.75x, the digits CNN's 0.9x, LeNet-5's
  1.6x at 22 ms; many clusters per row-block, k = 64 of 256 blocks, 2.2x),
  and compiles nothing, where XLA's k-means costs about a second of
  compile in every program that re-clusters. But JAX's persistent
  compilation cache does not keep a program with a callback: with the
  cache on, the XLA version, compiled once and loaded by every later run,
  is the cheaper one, and the whole training step is cached with it. On
  GPU and TPU the blocks stay on the device; so do multi-process runs,
  where a callback would run on one process's device only.

  Decided by JAX's default backend, so a program placed on an accelerator
  while the default is the CPU would call back too; deciding per program
  (``lax.platform_dependent``) would trace XLA's k-means as well, 0.1-0.2 s
  of the cold start this saves.
  """
  return (jax.default_backend() == "cpu" and jax.process_count() == 1
          and not (jax.config.jax_enable_compilation_cache
                   and jax.config.jax_compilation_cache_dir))


def _in_program(compiled, host, num_out: int, x, seeds, *args, **settings):
  """``compiled(x, seeds, *args)`` traced into the caller's program, or
  ``host`` called back from it (:func:`_calls_back`); the results are the
  same up to float rounding. ``(codebook [R, num_out, D], index [R, G])``.
  """
  if not _calls_back():
    return compiled(x, seeds, *args, **settings)
  num_rows, num_groups, dim = x.shape
  shapes = (jax.ShapeDtypeStruct((num_rows, num_out, dim), jnp.float32),
            jax.ShapeDtypeStruct((num_rows, num_groups), jnp.int32))

  def run(*arrays):
    codebook, index = host(*arrays, **settings)
    return codebook.astype(np.float32), index.astype(np.int32)

  # A key array cannot leave the program: its words can.
  return jax.pure_callback(run, shapes, x, _words(seeds), *args,
                           vmap_method="sequential")


def cluster(x, key, **settings):
  """k-means of ``x [R, G, D]`` float32 (:func:`cluster_ous`'s settings,
  all given): on the host for concrete arrays, else in the caller's
  program. ``(codebook [R, min(k, G), D], index [R, G])``."""
  if on_host(x, key):
    return cluster_host(x, key, **settings)
  return _in_program(_cluster, cluster_host, min(settings["k"], x.shape[1]),
                     x, key, **settings)


def cluster_rows(x, seeds, k_rows, **settings):
  """:func:`_cluster_rows` wherever it runs, as :func:`cluster`."""
  if on_host(x, seeds, k_rows):
    return cluster_rows_host(x, seeds, k_rows, **settings)
  return _in_program(_cluster_rows, cluster_rows_host, settings["num_slots"],
                     x, seeds, k_rows, **settings)


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def to_device(a):
  """A NumPy result as a JAX array (``device_put``: ``jnp.asarray``
  compiles a small program per shape), anything else as it is."""
  return jax.device_put(a) if isinstance(a, np.ndarray) else a


def on_host(*arrays) -> bool:
  """Whether k-means of these runs on the NumPy backend: all concrete
  (not traced by a caller's jit, vmap or grad)."""
  return all(_is_concrete(a) for a in arrays)


def _check_args(ous, k, n_init, max_iter, name: str = "cluster_ous"):
  """The argument checks of :func:`cluster_ous` (value checks if concrete)."""
  if getattr(ous, "ndim", None) != 4:
    raise ValueError(
        f"{name} expects OU blocks [R, G, bh, bw], got shape "
        f"{getattr(ous, 'shape', None)}")
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"k must be an int >= 1, got {k!r}")
  if n_init < 1 or max_iter < 1:
    raise ValueError(
        f"n_init and max_iter must be >= 1, got {n_init} and {max_iter}")
  dtype = jnp.result_type(ous)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"{name} expects float blocks, got dtype {dtype}")
  # NumPy, not jnp: under a caller's trace jnp ops on a closed-over concrete
  # array would return tracers.
  if _is_concrete(ous) and not np.isfinite(
      np.asarray(ous, np.float32)).all():
    raise ValueError(f"{name} got NaN or inf weights")


def cluster_ous(ous, k: int, *, key, n_init: int = 8, max_iter: int = 100,
                tol: float = 1e-4, codebook_scope: str = "row_block",
                n_trials: int | None = None):
  """Clusters OU blocks into shared codebooks (k-means, docs/compression.md).

  Args:
    ous: ``[R, G, bh, bw]`` blocks from :func:`rsjax.to_ous`. Float16,
      bfloat16 and float32 work: clustering runs in float32 and the codebook
      comes back in the input dtype. All-zero blocks count as pruned.
    k: clusters (stored blocks) per row-block, clamped per row-block to its
      number of non-pruned blocks.
    key: a ``jax.random`` key; the result is deterministic for a key.
    n_init: k-means++ restarts; the one with the lowest inertia is kept.
    max_iter: Lloyd iterations at most.
    tol: it stops when no label changes or, as scikit-learn, when the
      centroids of a row-block move (squared, summed) by at most ``tol``
      times the mean per-dimension variance of its blocks. 0 runs to exact
      convergence.
    codebook_scope: ``'row_block'`` (the paper: one codebook per row-block,
      as blocks on the same wordlines see the same inputs) or ``'layer'``
      (one codebook for the layer; each row-block stores the entries it
      uses).
    n_trials: candidates per greedy k-means++ step (default
      ``2 + floor(ln K)``, as scikit-learn).

  Concrete inputs are clustered on the host in NumPy, which compiles
  nothing, and so are traced ones on a CPU (a callback from the caller's
  ``jit``) unless JAX's persistent compilation cache is on; otherwise, and
  on GPU and TPU, the same algorithm runs in XLA. The two agree up to
  float rounding (which can break a near tie differently).

  Returns:
    ``(codebook [R, min(k, G), bh, bw], index [R, G] int32)``; ``-1`` marks a
    pruned block. Used codebook entries of row-block ``r`` are ``0..K_r-1`` in
    order of first use; unused entries are zero.

  Raises:
    ValueError: on a wrong rank, ``k < 1``, an unknown ``codebook_scope``, a
      non-float dtype, or NaN/inf blocks (checked when ``ous`` is concrete,
      i.e. not under a caller's ``jit``).
  """
  _check_args(ous, k, n_init, max_iter)
  if codebook_scope not in CODEBOOK_SCOPES:
    raise ValueError(f"codebook_scope must be one of {CODEBOOK_SCOPES}, got "
                     f"{codebook_scope!r}")
  dtype = jnp.result_type(ous)
  num_rows, num_groups, bh, bw = ous.shape
  num_points = (num_groups if codebook_scope == "row_block"
                else num_rows * num_groups)
  if n_trials is None:
    n_trials = 2 + int(math.log(max(min(int(k), num_points), 1)))
  settings = dict(k=int(k), n_init=int(n_init), max_iter=int(max_iter),
                  codebook_scope=codebook_scope, n_trials=int(n_trials),
                  tol=float(tol))
  xp = np if on_host(ous, key) else jnp
  codebook, index = cluster(
      xp.asarray(ous, np.float32).reshape(num_rows, num_groups, bh * bw),
      key, **settings)
  return (to_device(codebook.reshape(num_rows, -1, bh, bw).astype(dtype)),
          to_device(index))


def cluster_layers(layers: Mapping[str, Any], k: int | Mapping[str, int], *,
                   key, n_init: int = 8, max_iter: int = 100,
                   tol: float = 1e-4, n_trials: int | None = None
                   ) -> dict[str, tuple[jax.Array, jax.Array]]:
  """Row-block k-means of many layers, one compiled call per block grid width.

  Layers with the same number of column groups G and block shape have their
  row-blocks stacked into one batched call (each row-block keeps its own
  ``k``), so a network compiles a handful of shapes instead of one per
  layer. Layer ``i`` (in ``layers`` order) gets the key
  ``jax.random.fold_in(key, i)``: with the same ``n_trials`` its result is
  that of ``cluster_ous(ous, k, key=fold_in(key, i))``.

  Args:
    layers: ``{name: ous [R, G, bh, bw]}``.
    k: one ``k`` for all layers, or ``{name: k}``.
    key: a ``jax.random`` key.
    n_init, max_iter, tol: as :func:`cluster_ous`.
    n_trials: k-means++ candidates (default ``2 + floor(ln K)`` with ``K``
      the largest ``min(k, G)`` of the batch).

  Returns:
    ``{name: (codebook [R, min(k, G), bh, bw], index [R, G])}``.
  """
  ks = dict(k) if isinstance(k, Mapping) else {name: k for name in layers}
  missing = sorted(set(layers) - set(ks))
  if missing:
    raise ValueError(f"no k given for layers {missing}")
  batches: dict[tuple[int, ...], list[str]] = {}
  for name, ous in layers.items():
    _check_args(ous, ks[name], n_init, max_iter, f"cluster_layers[{name!r}]")
    batches.setdefault(tuple(ous.shape[1:]), []).append(name)
  position = {name: i for i, name in enumerate(layers)}
  host = on_host(key, *layers.values())
  out = {}
  for (num_groups, bh, bw), names in batches.items():
    num_slots = min(max(int(ks[n]) for n in names), num_groups)
    trials = n_trials or 2 + int(math.log(max(num_slots, 1)))
    xp = np if host else jnp
    x = xp.concatenate([xp.asarray(layers[n], np.float32).reshape(
        -1, num_groups, bh * bw) for n in names])
    keys = xp.concatenate([_split(
        jax.random.fold_in(key, position[n]), (layers[n].shape[0], n_init),
        xp) for n in names])
    k_rows = xp.concatenate([xp.full((layers[n].shape[0],), ks[n],
                                     np.int32) for n in names])
    codebook, index = cluster_rows(
        x, keys, k_rows, num_slots=num_slots, max_iter=int(max_iter),
        n_trials=trials, tol=float(tol))
    start = 0
    for n in names:
      rows = layers[n].shape[0]
      slots = min(int(ks[n]), num_groups)
      cb = codebook[start:start + rows, :slots].reshape(
          rows, slots, bh, bw).astype(jnp.result_type(layers[n]))
      out[n] = (to_device(cb), to_device(index[start:start + rows]))
      start += rows
  return {name: out[name] for name in layers}


def decompress(codebook, index):
  """Rebuilds the OU blocks ``[R, G, bh, bw]`` from a codebook and index.

  Args:
    codebook: ``[R, K, bh, bw]``.
    index: ``[R, G]`` integer ids into ``codebook[r]``, ``-1`` for pruned
      (zero) blocks.

  Returns:
    ``[R, G, bh, bw]``: ``codebook[r, index[r, g]]``, or zeros where pruned;
    a NumPy array for NumPy inputs (so reading a model file compiles
    nothing), else a JAX array.
  """
  if codebook.ndim != 4 or index.ndim != 2:
    raise ValueError(
        f"expected codebook [R, K, bh, bw] and index [R, G], got shapes "
        f"{codebook.shape} and {index.shape}")
  if codebook.shape[0] != index.shape[0]:
    raise ValueError(
        f"codebook has {codebook.shape[0]} row-blocks, index has "
        f"{index.shape[0]}")
  if not jnp.issubdtype(jnp.result_type(index), jnp.integer):
    raise ValueError(f"index must be integer, got {jnp.result_type(index)}")
  if _is_concrete(index) and index.size:
    lo, hi = int(np.min(np.asarray(index))), int(np.max(np.asarray(index)))
    if lo < -1 or hi >= codebook.shape[1]:
      raise ValueError(
          f"index values must be in [-1, {codebook.shape[1] - 1}], got "
          f"[{lo}, {hi}]")
  xp = (np if isinstance(codebook, np.ndarray)
        and isinstance(index, np.ndarray) else jnp)
  safe = xp.maximum(index, 0)
  blocks = xp.take_along_axis(codebook, safe[:, :, None, None], axis=1)
  return xp.where((index >= 0)[:, :, None, None], blocks,
                  xp.zeros((), codebook.dtype))
