r"""Clustering a ResNet-18-sized parameter tree: rsjax vs scikit-learn.

Every conv/dense kernel of an ImageNet ResNet-18 (11.7M weights) is lowered,
tiled into the default hardware's (9, 2) OU blocks and clustered into one
codebook per row-block with ``k = G // sharing`` clusters. rsjax clusters
them with ``rsjax.cluster_layers``: the row-blocks of all layers of one width
in one call, on the host in NumPy (the blocks are concrete arrays); the
baseline runs scikit-learn
``KMeans`` once per row-block on the same blocks, with the same number of
k-means++ restarts. Both run in this process, so the ratio is what counts.

  python experiments/benchmarks/cluster_bench.py [--n_init=1] [--sharing=4]
"""

from __future__ import annotations

import time

from absl import app
from absl import flags
import jax
import numpy as np

import rsjax

_N_INIT = flags.DEFINE_integer("n_init", 1, "k-means++ restarts, both sides")
_SHARING = flags.DEFINE_integer("sharing", 4, "k = column groups // sharing")
_SKLEARN_FRACTION = flags.DEFINE_float(
    "sklearn_fraction", 1.0,
    "share of row-blocks the baseline runs on (its time is scaled up)")


def resnet18_kernels() -> dict[str, tuple[int, ...]]:
  """Kernel shapes of the ImageNet ResNet-18 (BN folded, no biases)."""
  shapes = {"conv1": (7, 7, 3, 64)}
  cin = 64
  for stage, cout in enumerate((64, 128, 256, 512), start=1):
    for block in range(2):
      first_in = cin if block == 0 else cout
      shapes[f"layer{stage}.{block}.conv1"] = (3, 3, first_in, cout)
      shapes[f"layer{stage}.{block}.conv2"] = (3, 3, cout, cout)
      if block == 0 and first_in != cout:
        shapes[f"layer{stage}.{block}.down"] = (1, 1, first_in, cout)
    cin = cout
  shapes["fc"] = (512, 1000)
  return shapes


def main(argv):
  del argv
  from sklearn.cluster import KMeans  # pylint: disable=g-import-not-at-top

  hw = rsjax.HardwareSpec()
  key = jax.random.key(0)
  layers = {}
  for name, shape in resnet18_kernels().items():
    key, sub = jax.random.split(key)
    fan_in = int(np.prod(shape[:-1]))
    kernel = jax.random.normal(sub, shape) * np.sqrt(2.0 / fan_in)
    layers[name] = np.asarray(
        rsjax.to_ous(rsjax.to_crossbar_matrix(kernel), hw.block_shape))
  weights = sum(int(np.prod(s)) for s in resnet18_kernels().values())
  print(f"{len(layers)} layers, {weights / 1e6:.2f}M weights, "
        f"{sum(o.shape[0] for o in layers.values())} row-blocks, "
        f"blocks {hw.block_shape}, n_init={_N_INIT.value}")

  ks = {name: max(1, ous.shape[1] // _SHARING.value)
        for name, ous in layers.items()}

  def run_rsjax():
    # One call: layers of the same width are clustered together.
    out = rsjax.cluster_layers(layers, ks, key=jax.random.key(0),
                               n_init=_N_INIT.value)
    inertia = 0.0
    for name, ous in layers.items():
      z = np.asarray(rsjax.decompress(*out[name]))
      inertia += float(((ous - z) ** 2).sum())
    return inertia

  t0 = time.perf_counter()
  run_rsjax()
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  ours = run_rsjax()
  steady = time.perf_counter() - t0

  rng = np.random.default_rng(0)
  theirs, sk_time, sampled, total_rows = 0.0, 0.0, 0, 0
  for i, ous in enumerate(layers.values()):
    num_rows, num_groups = ous.shape[:2]
    k = max(1, num_groups // _SHARING.value)
    rows = np.arange(num_rows)
    if _SKLEARN_FRACTION.value < 1:
      rows = rng.choice(num_rows, max(1, int(num_rows * _SKLEARN_FRACTION.value)),
                        replace=False)
    t0 = time.perf_counter()
    layer_inertia = 0.0
    for r in rows:
      x = ous[r].reshape(num_groups, -1)
      km = KMeans(k, n_init=_N_INIT.value, random_state=int(r)).fit(x)
      layer_inertia += km.inertia_
    scale = num_rows / len(rows)
    sk_time += (time.perf_counter() - t0) * scale
    theirs += layer_inertia * scale
    sampled += len(rows)
    total_rows += num_rows
  print(f"rsjax: {steady:.2f} s steady, {first:.2f} s with compilation; "
        f"inertia {ours:.6g}")
  print(f"scikit-learn per row-block ({sampled}/{total_rows} row-blocks run): "
        f"{sk_time:.2f} s; inertia {theirs:.6g}")
  print(f"speed-up: {sk_time / steady:.1f}x steady, "
        f"{sk_time / first:.1f}x with compilation; "
        f"inertia ratio rsjax/sklearn = {ours / theirs:.4f}")


if __name__ == "__main__":
  app.run(main)
