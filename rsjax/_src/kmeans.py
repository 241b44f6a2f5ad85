"""Batched k-means over OU blocks: one codebook per row-block (ReRAM-Sharing).

Every row-block of a layer is clustered at once (``vmap`` over row-blocks and
over restarts) in a single jitted call: greedy k-means++ seeding, Lloyd
iterations until no assignment changes, empty clusters re-seeded at the
points farthest from their centroids, the restart with the lowest inertia
kept. All-zero blocks are pruned: they take part in nothing and get index
``-1``. The number of clusters is clamped per row-block to its number of
non-pruned blocks.

Output format (used by training, the emulator, the report and export):
``codebook [R, K, bh, bw]`` and ``index [R, G]`` int32, where
``index[r, g]`` is the stored block of row-block ``r`` that column group ``g``
uses, or ``-1`` for pruned. Stored blocks are packed: the ones a row-block
uses are ``0 .. K_r - 1`` in order of first use, unused slots are zero.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST
CODEBOOK_SCOPES = ("row_block", "layer")


def _sq_dists(x, c):
  """Squared distances ``[G, C]`` between points ``[G, D]`` and ``[C, D]``."""
  cross = jnp.einsum("gd,cd->gc", x, c, precision=_HIGHEST)
  d = jnp.sum(x * x, -1)[:, None] - 2 * cross + jnp.sum(c * c, -1)[None, :]
  return jnp.maximum(d, 0.0)


def _mix(h):
  """murmur3's 32-bit finalizer: every input bit moves every output bit."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _words(seed):
  """A key's bits as uint32 words (a seed from :func:`_split` as it is)."""
  if jax.dtypes.issubdtype(seed.dtype, jax.dtypes.prng_key):
    return jax.random.key_data(seed).astype(jnp.uint32)
  return seed


def _hash(counter, seed):
  """``counter`` (uint32) hashed with every word of ``seed``."""
  for word in _words(seed).reshape(-1):
    counter = _mix(counter ^ _mix(word + jnp.uint32(0x9E3779B9)))
  return counter


# k-means draws its randomness from these hashes, not from jax.random:
# threefry adds about a second of XLA compile on a CPU to every program
# k-means is part of (the sharing wrappers' init, every training step that
# re-clusters), the hash milliseconds, and k-means++ sampling needs no more
# than draws that differ from seed to seed and from draw to draw.


def _derive(seed, counter):
  """New seeds ``[*counter.shape, words]``, one per counter value."""
  words = _words(seed).reshape(-1)
  counter = jnp.asarray(counter).astype(jnp.uint32)
  return jnp.stack([_hash(counter * jnp.uint32(len(words)) + jnp.uint32(i),
                          words) for i in range(len(words))], axis=-1)


def _split(seed, shape):
  """Seeds of ``prod(shape)`` streams: ``[*shape, words]`` uint32."""
  return _derive(seed, jnp.arange(math.prod(shape),
                                  dtype=jnp.uint32)).reshape(*shape, -1)


def fold_in(seed, data):
  """``seed`` (a ``jax.random`` key or seed words) folded with an integer.

  The seed words k-means takes wherever a key goes, as
  ``jax.random.fold_in`` would give a key, without threefry (see above).
  """
  return _derive(seed, data)


def _uniforms(seed, shape):
  """Uniform floats in ``[0, 1)`` from a key or seed."""
  h = _hash(jnp.arange(math.prod(shape), dtype=jnp.uint32), seed)
  # The top 24 bits: exact in float32, strictly below 1.
  return ((h >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)).reshape(
      shape)


def _sample(u, weights):
  """Indices drawn in proportion to non-negative ``weights``, one per
  uniform of ``u``.

  Inverse-CDF sampling: one uniform a draw rather than a Gumbel variate
  for every point, which made seeding the bottleneck on CPU.
  """
  cdf = jnp.cumsum(weights)
  # searchsorted(side='right') as a count of the cdf values <= each draw:
  # the same index, a fraction of jnp.searchsorted's compile time.
  below = cdf[None, :] <= (u.astype(cdf.dtype) * cdf[-1])[:, None]
  idx = jnp.sum(below.astype(jnp.int32), axis=1)
  return jnp.minimum(idx, weights.shape[0] - 1)


def _kmeans_pp(key, x, valid, k_eff, num_slots, n_trials):
  """Greedy k-means++ seeding (as scikit-learn) of ``k_eff`` slots."""
  # Row 0: the first centroid's draw; row i: the candidates of slot i.
  draws = _uniforms(key, (num_slots, n_trials))
  uniform = valid.astype(x.dtype)
  first = _sample(draws[0, :1], uniform)[0]
  centroids = jnp.zeros((num_slots, x.shape[1]), x.dtype).at[0].set(x[first])
  closest = jnp.where(valid, _sq_dists(x, x[first][None])[:, 0], 0.0)

  def add_centroid(i, carry):
    centroids, closest = carry
    # Sample candidates in proportion to D^2; if every valid point already
    # coincides with a centroid, fall back to uniform over valid points.
    weights = jnp.where(jnp.any(closest > 0), closest, uniform)
    cands = _sample(draws[i], weights)
    cand_closest = jnp.minimum(closest[None], _sq_dists(x, x[cands]).T)
    cand_closest = jnp.where(valid[None], cand_closest, 0.0)
    best = jnp.argmin(jnp.sum(cand_closest, axis=1))
    take = i < k_eff
    centroids = centroids.at[i].set(jnp.where(take, x[cands[best]], 0.0))
    closest = jnp.where(take, cand_closest[best], closest)
    return centroids, closest

  centroids, _ = jax.lax.fori_loop(1, num_slots, add_centroid,
                                   (centroids, closest))
  return centroids


def _lloyd(x, valid, centroids, k_eff, max_iter, tol):
  """Lloyd iterations; returns (centroids, labels, inertia).

  Stops when no label changes or, as scikit-learn, when the centroids move by
  at most ``tol`` times the mean per-dimension variance of the points.
  """
  num_slots = centroids.shape[0]
  active = jnp.arange(num_slots) < k_eff

  def assign(c):
    d = jnp.where(active[None], _sq_dists(x, c), jnp.inf)
    return jnp.argmin(d, axis=1).astype(jnp.int32), jnp.min(d, axis=1)

  def update(labels, own_dist):
    onehot = (jax.nn.one_hot(labels, num_slots, dtype=x.dtype)
              * valid[:, None].astype(x.dtype))
    counts = jnp.sum(onehot, axis=0)
    sums = jnp.einsum("gk,gd->kd", onehot, x, precision=_HIGHEST)
    means = sums / jnp.maximum(counts, 1.0)[:, None]
    # Re-seed each empty cluster at a distinct far point (farthest first).
    empty = active & (counts == 0)
    own_dist = jnp.where(valid, own_dist, -1.0)
    far_dist, farthest = jax.lax.top_k(own_dist, num_slots)
    rank = jnp.cumsum(empty) - 1
    reseed = empty & (far_dist[rank] > 0)
    return jnp.where(reseed[:, None], x[farthest[rank]], means)

  weight = valid.astype(x.dtype)[:, None]
  count = jnp.maximum(jnp.sum(weight), 1.0)
  mean = jnp.sum(x * weight, axis=0) / count
  threshold = tol * jnp.sum((x - mean[None]) ** 2 * weight) / count / x.shape[1]

  def cond(state):
    it, _, _, changed = state
    return (it < max_iter) & changed

  def body(state):
    it, c, labels, _ = state
    new_labels, own_dist = assign(c)
    new_c = update(new_labels, own_dist)
    changed = (jnp.any((new_labels != labels) & valid)
               & (jnp.sum((new_c - c) ** 2) > threshold))
    return it + 1, new_c, new_labels, changed

  labels0 = jnp.full(x.shape[:1], -1, jnp.int32)
  _, centroids, labels, _ = jax.lax.while_loop(
      cond, body, (0, centroids, labels0, jnp.array(True)))
  inertia = jnp.sum(jnp.where(
      valid, jnp.sum((x - centroids[labels]) ** 2, axis=-1), 0.0))
  return centroids, labels, inertia


def _kmeans_restarts(keys, x, valid, k, num_slots, max_iter, tol, n_trials):
  """Best of ``len(keys)`` restarts on one point set ``x [G, D]``."""
  k_eff = jnp.minimum(k, jnp.sum(valid))

  def one(key):
    init = _kmeans_pp(key, x, valid, k_eff, num_slots, n_trials)
    return _lloyd(x, valid, init, k_eff, max_iter, tol)

  centroids, labels, inertia = jax.vmap(one)(keys)
  best = jnp.argmin(inertia)
  return centroids[best], labels[best], inertia[best]


def _compact(labels, valid, table, num_out):
  """Renumbers the used centroids of one row-block ``0..K_r-1``.

  Args:
    labels: ``[G]`` ids into ``table``.
    valid: ``[G]`` non-pruned mask.
    table: ``[C, D]`` centroids the ids refer to.
    num_out: codebook slots to return (static).

  Returns:
    ``(codebook [num_out, D], index [G])`` with used blocks first, in order of
    first use, unused slots zero and pruned entries ``-1``.
  """
  num_groups = labels.shape[0]
  first_use = jnp.full(table.shape[:1], num_groups, jnp.int32).at[labels].min(
      jnp.where(valid, jnp.arange(num_groups, dtype=jnp.int32), num_groups))
  order = jnp.argsort(first_use)
  used = first_use[order] < num_groups
  new_id = jnp.zeros_like(order).at[order].set(
      jnp.arange(order.shape[0], dtype=order.dtype))
  index = jnp.where(valid, new_id[labels], -1).astype(jnp.int32)
  codebook = jnp.where(used[:, None], table[order], 0.0)
  if codebook.shape[0] < num_out:
    codebook = jnp.pad(codebook, ((0, num_out - codebook.shape[0]), (0, 0)))
  return codebook[:num_out], index


@functools.partial(jax.jit, static_argnames=("num_slots", "max_iter",
                                             "n_trials"))
def _cluster_rows(x, keys, k_rows, *, num_slots, max_iter, n_trials,
                  tol=1e-4):
  """Per-row-block k-means of ``x [R, G, D]``, a ``k`` for each row-block.

  ``keys [R, n_init]``; ``k_rows [R]`` may differ by row-block (rows of
  several layers stacked into one call), ``num_slots >= max(k_rows)``.
  """
  valid = jnp.any(x != 0, axis=-1)
  run = functools.partial(_kmeans_restarts, num_slots=num_slots,
                          max_iter=max_iter, tol=tol, n_trials=n_trials)
  centroids, labels, _ = jax.vmap(run)(keys, x, valid, k_rows)
  return jax.vmap(_compact, in_axes=(0, 0, 0, None))(
      labels, valid, centroids, num_slots)


@functools.partial(jax.jit, static_argnames=("k", "n_init", "max_iter",
                                             "codebook_scope", "n_trials"))
def _cluster(x, key, *, k, n_init, max_iter, codebook_scope, n_trials,
             tol=1e-4):
  """Jitted core of :func:`cluster_ous` on ``x [R, G, D]`` float32."""
  num_rows, num_groups, _ = x.shape
  valid = jnp.any(x != 0, axis=-1)
  num_out = min(k, num_groups)
  if codebook_scope == "row_block":
    return _cluster_rows(
        x, _split(key, (num_rows, n_init)),
        jnp.full((num_rows,), k, jnp.int32), num_slots=num_out,
        max_iter=max_iter, n_trials=n_trials, tol=tol)
  # codebook_scope == "layer": one codebook for the whole layer; each
  # row-block then stores the subset of it that it uses.
  keys = _split(key, (n_init,))
  centroids, labels, _ = _kmeans_restarts(
      keys, x.reshape(num_rows * num_groups, -1), valid.reshape(-1), k,
      min(k, num_rows * num_groups), max_iter, tol, n_trials)
  return jax.vmap(_compact, in_axes=(0, 0, None, None))(
      labels.reshape(num_rows, num_groups), valid, centroids, num_out)


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


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
  x = jnp.asarray(ous, jnp.float32).reshape(num_rows, num_groups, bh * bw)
  codebook, index = _cluster(x, key, k=int(k), n_init=int(n_init),
                             max_iter=int(max_iter),
                             codebook_scope=codebook_scope,
                             n_trials=int(n_trials), tol=float(tol))
  codebook = codebook.reshape(num_rows, -1, bh, bw).astype(dtype)
  return codebook, index


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
  out = {}
  for (num_groups, bh, bw), names in batches.items():
    num_slots = min(max(int(ks[n]) for n in names), num_groups)
    trials = n_trials or 2 + int(math.log(max(num_slots, 1)))
    x = jnp.concatenate([jnp.asarray(layers[n], jnp.float32).reshape(
        -1, num_groups, bh * bw) for n in names])
    keys = jnp.concatenate([_split(
        jax.random.fold_in(key, position[n]), (layers[n].shape[0], n_init))
                            for n in names])
    k_rows = jnp.concatenate([jnp.full((layers[n].shape[0],), ks[n],
                                       jnp.int32) for n in names])
    codebook, index = _cluster_rows(x, keys, k_rows, num_slots=num_slots,
                                    max_iter=int(max_iter), n_trials=trials,
                                    tol=float(tol))
    start = 0
    for n in names:
      rows = layers[n].shape[0]
      slots = min(int(ks[n]), num_groups)
      out[n] = (codebook[start:start + rows, :slots].reshape(
          rows, slots, bh, bw).astype(jnp.result_type(layers[n])),
                index[start:start + rows])
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
