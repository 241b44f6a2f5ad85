"""ResNet-20 training step: STE sharing vs the plain step, in one process.

Target (issue 3): the step with STE sharing on costs at most 1.3x the plain
step, re-clustering amortised at its default interval (every 100 steps).

Both steps are jitted and alternate step by step, in rounds of
``--interval`` steps each (so each STE round holds exactly one
re-clustering), each step timed to completion. Reports the median plain step, the median STE step without
re-clustering, the re-clustering step, the amortised ratio
``sum(STE round) / sum(plain round)`` and, robust to other load on a shared
machine, the same from medians:
``(median STE step * (interval - 1) + re-clustering step) /
(interval * median plain step)``.

  python -m experiments.benchmarks.training_bench --batch 32 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rsjax._src import pruning
from rsjax._src import rules as rules_lib
from rsjax._src import sharing


class _Block(nn.Module):
  features: int
  stride: int

  @nn.compact
  def __call__(self, x, train):
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)
    y = nn.Conv(self.features, (3, 3), (self.stride, self.stride),
                use_bias=False)(x)
    y = nn.relu(norm()(y))
    y = nn.Conv(self.features, (3, 3), use_bias=False)(y)
    y = norm()(y)
    if x.shape[-1] != self.features or self.stride != 1:
      x = nn.Conv(self.features, (1, 1), (self.stride, self.stride),
                  use_bias=False, name="shortcut")(x)
      x = norm()(x)
    return nn.relu(x + y)


class ResNet20(nn.Module):
  """CIFAR ResNet-20 (He et al. 2016): 3 stages x 3 blocks, 16/32/64."""

  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.Conv(16, (3, 3), use_bias=False, name="stem")(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    for stage, features in enumerate((16, 32, 64)):
      for block in range(3):
        stride = 2 if stage > 0 and block == 0 else 1
        x = _Block(features, stride, name=f"stage{stage}_{block}")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="head")(x)


# Every 3x3 conv of the residual stages; the stem, the 1x1 shortcuts and the
# head stay dense (the usual choice: first and last layers left out).
RULES = [rules_lib.Rule(r"stage.*/Conv_\d/kernel", k=4)]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--interval", type=int, default=100,
                      help="re-clustering interval (the default of "
                      "ste_sharing)")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--sparsity", type=float, default=0.0,
                      help="also prune this fraction of OU blocks")
  args = parser.parse_args()

  model = ResNet20()
  key = jax.random.key(0)
  x = jax.random.normal(key, (args.batch, 32, 32, 3))
  y = jnp.arange(args.batch) % 10
  variables = model.init(jax.random.key(1), x)
  params, batch_stats = variables["params"], variables["batch_stats"]
  rules = [rules_lib.Rule(r.pattern, k=r.k, sparsity=args.sparsity)
           for r in RULES]
  plan = rules_lib.make_plan(params, rules, (9, 2))
  inner = optax.sgd(0.05, momentum=0.9)
  ste = sharing.ste_sharing(
      inner, rules, (9, 2), key=jax.random.key(2),
      recluster_every=args.interval,
      prune=pruning.PruneSchedule(begin=0, end=0))

  def loss_fn(params, batch_stats):
    logits, new = model.apply({"params": params, "batch_stats": batch_stats},
                              x, mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, new["batch_stats"]

  @jax.jit
  def plain_step(params, batch_stats, opt_state):
    grads, batch_stats = jax.grad(loss_fn, has_aux=True)(params, batch_stats)
    updates, opt_state = inner.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state

  @jax.jit
  def ste_step(params, batch_stats, opt_state):
    grads, batch_stats = jax.grad(
        lambda p, b: loss_fn(sharing.training_params(p, opt_state), b),
        has_aux=True)(params, batch_stats)
    updates, opt_state = ste.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state

  t0 = time.perf_counter()
  plain = (params, batch_stats, inner.init(params))
  plain = jax.block_until_ready(plain_step(*plain))
  compile_plain = time.perf_counter() - t0
  t0 = time.perf_counter()
  shared = jax.block_until_ready((params, batch_stats, ste.init(params)))
  init_ste = time.perf_counter() - t0
  t0 = time.perf_counter()
  shared = jax.block_until_ready(ste_step(*shared))
  compile_ste = time.perf_counter() - t0

  def timed(step, carry):
    t = time.perf_counter()
    carry = jax.block_until_ready(step(*carry))
    return carry, time.perf_counter() - t

  # Plain and STE steps alternate, so load from other processes on a shared
  # machine hits both alike.
  plain_times, ste_times, ratios = [], [], []
  for _ in range(args.rounds):
    tp, ts = np.zeros(args.interval), np.zeros(args.interval)
    for i in range(args.interval):
      plain, tp[i] = timed(plain_step, plain)
      shared, ts[i] = timed(ste_step, shared)
    plain_times.append(tp)
    ste_times.append(ts)
    ratios.append(ts.sum() / tp.sum())
  tp = np.concatenate(plain_times)
  ts = np.concatenate(ste_times)
  # The STE state's step count was 1 after the compile step, so the
  # re-clustering is the (interval - 1)-th step of each round.
  recluster_at = np.arange(args.rounds) * args.interval + args.interval - 2
  is_recluster = np.zeros(ts.shape, bool)
  is_recluster[recluster_at] = True
  shared_blocks = {p: int(np.max(np.sum(np.any(
      np.asarray(s.index)[:, :, None] == np.arange(s.plan.slots)[None, None],
      axis=1), axis=-1))) for p, s in shared[2].layers.items()}
  result = {
      "machine": f"{platform.processor() or platform.machine()}, "
                 f"{jax.devices()[0].device_kind}, jax {jax.__version__}",
      "batch": args.batch,
      "interval": args.interval,
      "rounds": args.rounds,
      "sparsity": args.sparsity,
      "shared_layers": len(plan),
      "compile_plain_s": round(compile_plain, 2),
      "init_ste_s": round(init_ste, 2),
      "compile_ste_s": round(compile_ste, 2),
      "plain_step_ms_median": round(1e3 * float(np.median(tp)), 2),
      "ste_step_ms_median_no_recluster": round(
          1e3 * float(np.median(ts[~is_recluster])), 2),
      "recluster_step_ms": [round(1e3 * float(t), 1) for t in
                            ts[is_recluster]],
      "ratio_median_steps": round(float(np.median(ts[~is_recluster])
                                        / np.median(tp)), 3),
      "ratio_amortised_per_round": [round(float(r), 3) for r in ratios],
      "ratio_amortised": round(float(ts.sum() / tp.sum()), 3),
      # Robust to a loaded machine: medians, plus the re-clustering step
      # once per interval.
      "ratio_amortised_from_medians": round(float(
          (np.median(ts[~is_recluster]) * (args.interval - 1)
           + np.median(ts[is_recluster])) / (args.interval * np.median(tp))),
                                            3),
      "max_stored_blocks_per_row_block": max(shared_blocks.values()),
  }
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
