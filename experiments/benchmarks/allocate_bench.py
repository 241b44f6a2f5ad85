r"""Allocated vs uniform k on LeNet-5 (Fashion-MNIST), after one-shot sharing.

A LeNet-5 (no BatchNorm) trains ``--steps`` Adam steps on the first 59,000
training images. For each uniform ``k`` every kernel is shared at that ``k``
(one-shot: k-means, no retraining) and its ``ou_ratio`` measured; then
``rsjax.allocate_k`` picks per-layer ``k`` s for that same ratio, probing the
loss on the held-out last 1,000 training images, and the model is shared
one-shot at those. Both are evaluated on the test set.

  python -m experiments.benchmarks.allocate_bench [--steps=300] [--ks=1,2,4,8]
      [--candidates=1,2,3,4,6,8,12,16,24,32,48,64]
"""

from __future__ import annotations

import os
import re
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import optax

from experiments import data as data_lib
from experiments import fashion_mnist_files
from experiments import models
import rsjax
from rsjax._src import allocation

_STEPS = flags.DEFINE_integer("steps", 300, "float training steps")
_KS = flags.DEFINE_string("ks", "1,2,4,8", "uniform k values to compare")
_CANDIDATES = flags.DEFINE_string(
    "candidates", "", "k candidates of every layer (default: powers of two "
    "below G, then G)")
_DRAWS = flags.DEFINE_integer("num_draws", 1, "k-means draws per probe")
_SEED = flags.DEFINE_integer("seed", 0, "seed of init, batches and k-means")
_DATA_DIR = flags.DEFINE_string("data_dir", "/usr/share/datasets/fashion-mnist",
                                "Fashion-MNIST IDX files")
_HELD_OUT = 1000


def _split(split):
  images, labels = fashion_mnist_files.IDX_FILES[split]
  return data_lib.read_fashion_mnist_idx(
      os.path.join(_DATA_DIR.value, images),
      os.path.join(_DATA_DIR.value, labels), split)


def _load():
  x, y = _split("train")
  xt, yt = _split("test")
  scale = lambda a: jnp.asarray(a, jnp.float32) / 255.0
  return ((scale(x[:-_HELD_OUT]), jnp.asarray(y[:-_HELD_OUT], jnp.int32)),
          (scale(x[-_HELD_OUT:]), jnp.asarray(y[-_HELD_OUT:], jnp.int32)),
          (scale(xt), jnp.asarray(yt, jnp.int32)))


def main(argv):
  del argv
  (x, y), (xh, yh), (xt, yt) = _load()
  model, hw = models.LeNet5(use_bn=False), rsjax.HardwareSpec()
  key = jax.random.key(_SEED.value)
  params = model.init(key, x[:1])["params"]
  ce = optax.softmax_cross_entropy_with_integer_labels

  def loss_on(p, xs, ys):
    return ce(model.apply({"params": p}, xs), ys).mean()

  tx = optax.adam(1e-3)

  @jax.jit
  def step(p, s, i):
    idx = jax.random.randint(jax.random.fold_in(key, i), (128,), 0,
                             x.shape[0])
    grads = jax.grad(loss_on)(p, x[idx], y[idx])
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s

  start = time.time()
  opt_state = tx.init(params)
  for i in range(_STEPS.value):
    params, opt_state = step(params, opt_state, i)

  @jax.jit
  def evaluate(p):
    logits = model.apply({"params": p}, xt)
    return ce(logits, yt).mean(), jnp.mean(jnp.argmax(logits, -1) == yt)

  probe_loss = jax.jit(lambda p: loss_on(p, xh, yh))
  print(f"trained {_STEPS.value} steps in {time.time() - start:.1f}s; float "
        "test loss %.4f acc %.4f" % tuple(map(float, evaluate(params))))

  kernels = [p for p, leaf in rsjax.named_leaves(params) if leaf.ndim in (2, 4)]

  def one_shot(ks):
    """Every kernel shared at its k; (params, report total)."""
    rules = [rsjax.Rule("^" + re.escape(p) + "$", k=ks[p]) for p in kernels]
    plan = rsjax.make_plan(params, rules, hw)
    leaves = dict(rsjax.named_leaves(params))
    probes = {(p, ks[p]): rsjax.to_ous(rsjax.to_crossbar_matrix(leaves[p]),
                                       hw.block_shape) for p in kernels}
    shared = allocation._cluster_probes(  # pylint: disable=protected-access
        probes, key=jax.random.fold_in(key, 1), n_init=8, max_iter=100)
    new = jax.tree_util.tree_map_with_path(
        lambda kp, leaf: rsjax.from_crossbar_matrix(rsjax.from_ous(
            shared[(rsjax.path_str(kp), ks[rsjax.path_str(kp)])],
            plan[rsjax.path_str(kp)].matrix_shape), leaf.shape)
        if rsjax.path_str(kp) in ks else leaf, params)
    layers = rsjax.to_compressed(new, rules=rules, hw=hw)
    return new, rsjax.compression_report(layers, hw)["total"]

  candidates = ([int(v) for v in _CANDIDATES.value.split(",")]
                if _CANDIDATES.value else None)
  rows = []
  base_rules = [rsjax.Rule(".", k=1)]
  for k in (int(v) for v in _KS.value.split(",")):
    uniform, total = one_shot({p: k for p in kernels})
    ratio = total["ou_ratio"]
    start = time.time()
    alloc = rsjax.allocate_k(probe_loss, params, base_rules, hw,
                             target_ou_ratio=ratio, candidates=candidates,
                             num_draws=_DRAWS.value,
                             key=jax.random.fold_in(key, 2))
    took = time.time() - start
    allocated, total_a = one_shot(alloc.k)
    print(alloc.format_table())
    for name, p, tot in (("uniform k=%d" % k, uniform, total),
                         ("allocated", allocated, total_a)):
      loss, acc = map(float, evaluate(p))
      rows.append((name, tot["ou_ratio"], float(probe_loss(p)), loss, acc,
                   ",".join(str(alloc.k[q] if name == "allocated" else k)
                            for q in kernels)))
    print(f"allocate_k took {took:.1f}s")
  print("| config | ou_ratio | held-out loss | test loss | test acc | k "
        f"({', '.join(q.split('/')[0] for q in kernels)}) |")
  print("|---|---|---|---|---|---|")
  for name, ratio, hl, tl, acc, ks in rows:
    print(f"| {name} | {ratio:.2f} | {hl:.4f} | {tl:.4f} | {acc:.4f} | {ks} |")


if __name__ == "__main__":
  app.run(main)
