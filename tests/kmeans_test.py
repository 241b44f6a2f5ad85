"""Batched k-means: the paper's worked example, a NumPy check, scikit-learn."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.cluster import KMeans

import rsjax

W = np.array([[1, 4, 1, 1, 1, 6, 1, 5],
              [3, 6, 8, 7, 2, 4, 1, 2],
              [8, 1, 6, 3, 1, 9, 3, 9],
              [1, 2, 1, 6, 4, 1, 6, 5]], np.float32)




@contextlib.contextmanager
def _k_means_called_back(calls_back: bool):
  """Traces in it call the NumPy k-means back, or compile XLA's, whatever
  the platform and compilation cache would choose."""
  from rsjax._src import kmeans  # pylint: disable=import-outside-toplevel
  chosen, kmeans._calls_back = kmeans._calls_back, lambda: calls_back
  try:
    yield
  finally:
    kmeans._calls_back = chosen


def _jitted(fn, calls_back: bool, static_argnames=("k",)):
  """``fn`` jitted (a new function object: no trace cached with the other
  choice), traced under :func:`_k_means_called_back`."""
  jitted = jax.jit(lambda *a, **kw: fn(*a, **kw),
                   static_argnames=static_argnames)

  def call(*args, **kwargs):
    with _k_means_called_back(calls_back):
      return jitted(*args, **kwargs)

  def lower(*args, **kwargs):
    with _k_means_called_back(calls_back):
      return jitted.lower(*args, **kwargs)
  call.lower = lower
  return call


# Module level, so that every seed reuses one compiled function: eager
# (NumPy), jitted with the NumPy code called back from the program (on a
# CPU without a persistent compilation cache) and XLA's.
_BACKENDS = {
    "eager": rsjax.cluster_ous,
    "callback": _jitted(rsjax.cluster_ous, True),
    "xla": _jitted(rsjax.cluster_ous, False),
}


def _cluster(backend, ous, k, key):
  return _BACKENDS[backend](ous, k=k, key=key)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("backend", list(_BACKENDS))
def test_worked_example_for_any_key(seed, backend):
  ous = rsjax.to_ous(W, (2, 2))
  codebook, index = _cluster(backend, ous, 2, jax.random.key(seed))
  np.testing.assert_array_equal(index, [[0, 1, 0, 0], [0, 0, 1, 1]])
  np.testing.assert_array_equal(codebook, [
      [[[1, 5], [2, 4]], [[1, 1], [8, 7]]],
      [[[7, 2], [1, 4]], [[2, 9], [5, 3]]]])
  z = rsjax.from_ous(rsjax.decompress(codebook, index), W.shape)
  x = np.arange(1, 5, dtype=np.float32)
  # Index-and-add: each stored block once per row-block, routed, summed.
  out = np.zeros((8,), np.float32)
  for r in range(2):
    partial = [x[2 * r:2 * r + 2] @ np.asarray(codebook[r, j]) for j in range(2)]
    for g in range(4):
      out[2 * g:2 * g + 2] += partial[int(index[r, g])]
  np.testing.assert_array_equal(x @ np.asarray(z), out)


def test_without_jit_matches():
  ous = rsjax.to_ous(W, (2, 2))
  with jax.disable_jit():
    codebook, index = rsjax.cluster_ous(ous, 2, key=jax.random.key(3), n_init=1)
  np.testing.assert_array_equal(index, [[0, 1, 0, 0], [0, 0, 1, 1]])
  np.testing.assert_array_equal(codebook[1, 1], [[2, 9], [5, 3]])


def _numpy_fixed_point(ous, codebook, index):
  """Each kept block is nearest its centroid, each centroid its members' mean."""
  x = np.asarray(ous, np.float64).reshape(*ous.shape[:2], -1)
  c = np.asarray(codebook, np.float64).reshape(*codebook.shape[:2], -1)
  index = np.asarray(index)
  for r in range(x.shape[0]):
    used = sorted(set(index[r][index[r] >= 0].tolist()))
    assert used == list(range(len(used)))  # packed ids, first use order
    for g in range(x.shape[1]):
      if index[r, g] < 0:
        assert not x[r, g].any()
        continue
      d = ((x[r, g] - c[r, used]) ** 2).sum(-1)
      assert d[index[r, g]] <= d.min() + 1e-3
    for j in used:
      np.testing.assert_allclose(c[r, j], x[r][index[r] == j].mean(0),
                                 rtol=1e-5, atol=1e-5)
    assert not c[r, len(used):].any()  # unused slots are zero


def test_fixed_point_and_pruning_against_numpy():
  ous = np.array(jax.random.normal(jax.random.key(1), (5, 12, 3, 2)))
  ous[0, [1, 4, 7]] = 0  # pruned blocks
  ous[3] = 0  # a fully pruned row-block
  ous[4, 1:] = 0  # one kept block: k clamps to 1
  codebook, index = rsjax.cluster_ous(ous, 4, key=jax.random.key(0))
  assert codebook.shape == (5, 4, 3, 2) and index.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(index)[0, [1, 4, 7]], -1)
  assert (np.asarray(index)[3] == -1).all()
  np.testing.assert_array_equal(np.asarray(index)[4], [0] + [-1] * 11)
  _numpy_fixed_point(ous, codebook, index)


def test_duplicates_fewer_distinct_than_k():
  base = np.array(jax.random.normal(jax.random.key(2), (2, 1, 2, 2)))
  ous = np.tile(base, (1, 6, 1, 1))  # 6 copies of 1 block per row-block
  ous[1, 3:] *= 2  # row-block 1: two distinct blocks
  codebook, index = rsjax.cluster_ous(ous, 4, key=jax.random.key(0))
  assert np.isfinite(np.asarray(codebook)).all()
  np.testing.assert_array_equal(index, [[0] * 6, [0, 0, 0, 1, 1, 1]])
  _numpy_fixed_point(ous, codebook, index)


def test_deterministic_per_key_and_layer_codebook_scope():
  ous = jax.random.normal(jax.random.key(4), (4, 10, 3, 2))
  a = rsjax.cluster_ous(ous, 3, key=jax.random.key(7))
  b = rsjax.cluster_ous(ous, 3, key=jax.random.key(7))
  for u, v in zip(a, b):
    np.testing.assert_array_equal(u, v)
  codebook, index = rsjax.cluster_ous(ous, 3, key=jax.random.key(7),
                                      codebook_scope="layer")
  # One layer codebook of 3: every row-block stores a subset of it.
  stored = np.asarray(codebook).reshape(-1, 6)
  stored = stored[np.abs(stored).sum(1) > 0]
  assert len(np.unique(stored.round(5), axis=0)) <= 3
  assert (np.asarray(index) >= 0).all()


def test_inertia_matches_scikit_learn():
  key = jax.random.key(5)
  ous = np.asarray(jax.random.normal(key, (6, 40, 3, 2)))
  codebook, index = rsjax.cluster_ous(ous, 6, key=jax.random.key(0))
  z = np.asarray(rsjax.decompress(codebook, index))
  ours = float(((ous - z) ** 2).sum())
  theirs = sum(KMeans(6, n_init=8, random_state=0).fit(
      ous[r].reshape(40, -1)).inertia_ for r in range(6))
  assert ours <= theirs * 1.01, (ours, theirs)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_works(dtype):
  ous = rsjax.to_ous(jnp.asarray(W, dtype), (2, 2))
  codebook, index = rsjax.cluster_ous(ous, 2, key=jax.random.key(0))
  assert codebook.dtype == dtype
  np.testing.assert_array_equal(index, [[0, 1, 0, 0], [0, 0, 1, 1]])


@pytest.mark.parametrize("bad,match", [
    (dict(k=0), "k must be"), (dict(k=2.5), "k must be"),
    (dict(codebook_scope="global"), "codebook_scope"),
    (dict(n_init=0), "n_init"),
])
def test_bad_arguments(bad, match):
  kw = dict(k=2, key=jax.random.key(0)) | bad
  with pytest.raises(ValueError, match=match):
    rsjax.cluster_ous(rsjax.to_ous(W, (2, 2)), **kw)


def test_bad_blocks():
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="OU blocks"):
    rsjax.cluster_ous(W, 2, key=key)
  with pytest.raises(ValueError, match="float"):
    rsjax.cluster_ous(np.ones((1, 2, 2, 2), np.int32), 2, key=key)
  bad = np.asarray(rsjax.to_ous(W, (2, 2))).copy()
  bad[0, 0, 0, 0] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    rsjax.cluster_ous(bad, 2, key=key)
  bad[0, 0, 0, 0] = np.inf
  with pytest.raises(ValueError, match="inf"):
    rsjax.cluster_ous(bad, 2, key=key)


def test_decompress_checks_the_index():
  codebook = jnp.ones((2, 3, 2, 2))
  with pytest.raises(ValueError, match=r"\[-1, 2\]"):
    rsjax.decompress(codebook, jnp.array([[0, 3], [0, 0]]))
  with pytest.raises(ValueError, match="row-blocks"):
    rsjax.decompress(codebook, jnp.zeros((3, 2), jnp.int32))
  with pytest.raises(ValueError, match="integer"):
    rsjax.decompress(codebook, jnp.zeros((2, 2)))


def test_checks_work_on_arrays_closed_over_in_jit():
  ous = jax.numpy.asarray(rsjax.to_ous(W, (2, 2)))

  @jax.jit
  def fn(key):
    codebook, index = rsjax.cluster_ous(ous, 2, key=key)
    return rsjax.decompress(codebook, index)

  np.testing.assert_array_equal(
      rsjax.from_ous(fn(jax.random.key(0)), W.shape)[:, :2], [[1, 5], [2, 4],
                                                             [7, 2], [1, 4]])


def test_cluster_layers_batches_layers_of_one_width():
  key = jax.random.key(9)
  a = np.array(jax.random.normal(jax.random.key(1), (3, 8, 3, 2)))
  a[0, :3] = 0  # pruned blocks
  b = np.asarray(jax.random.normal(jax.random.key(2), (5, 8, 3, 2)))
  c = np.asarray(jax.random.normal(jax.random.key(3), (2, 4, 3, 2)))
  out = rsjax.cluster_layers({"a": a, "b": b, "c": c}, 3, key=key, n_init=2)
  for i, (name, ous) in enumerate((("a", a), ("b", b), ("c", c))):
    ref = rsjax.cluster_ous(ous, 3, key=jax.random.fold_in(key, i), n_init=2)
    np.testing.assert_array_equal(out[name][1], ref[1])
    np.testing.assert_array_equal(out[name][0], ref[0])
  # A k per layer: each row-block keeps its own.
  out = rsjax.cluster_layers({"a": a, "b": b}, {"a": 1, "b": 4}, key=key)
  assert out["a"][0].shape == (3, 1, 3, 2) and out["b"][0].shape == (5, 4, 3, 2)
  _numpy_fixed_point(a, *out["a"])
  _numpy_fixed_point(b, *out["b"])
  with pytest.raises(ValueError, match="no k"):
    rsjax.cluster_layers({"a": a}, {"b": 2}, key=key)
  with pytest.raises(ValueError, match=r"cluster_layers\['a'\]"):
    rsjax.cluster_layers({"a": a[0]}, 2, key=key)


@pytest.mark.parametrize("jit", [False, True])
def test_hashed_draws_are_uniform_and_keyed(jit):
  """k-means' own draws (a counter hashed with the key, no threefry)."""
  from rsjax._src import kmeans  # pylint: disable=import-outside-toplevel
  uniforms = jax.jit(kmeans._uniforms, static_argnums=1) if jit else (
      kmeans._uniforms)
  u = np.asarray(uniforms(jax.random.key(0), (64, 64)))
  assert u.dtype == np.float32 and u.min() >= 0.0 and u.max() < 1.0
  # 4096 draws: mean and a coarse histogram as a uniform's.
  assert abs(u.mean() - 0.5) < 0.02
  counts = np.histogram(u, bins=8, range=(0, 1))[0]
  assert counts.min() > 0.8 * 512 and counts.max() < 1.2 * 512
  again = np.asarray(uniforms(jax.random.key(0), (64, 64)))
  np.testing.assert_array_equal(u, again)
  other = np.asarray(uniforms(jax.random.key(1), (64, 64)))
  assert np.mean(u == other) < 0.01
  # Seeds derived by fold_in and split are distinct and reproducible.
  seeds = np.asarray(kmeans._split(kmeans.fold_in(jax.random.key(0), 3),
                                   (16, 4)))
  assert seeds.shape == (16, 4, 2) and seeds.dtype == np.uint32
  assert len({tuple(s) for s in seeds.reshape(-1, 2)}) == 64
  np.testing.assert_array_equal(
      np.asarray(kmeans.fold_in(jax.random.key(0), 3)),
      np.asarray(kmeans.fold_in(jax.random.key(0), 3)))
  assert not np.array_equal(np.asarray(kmeans.fold_in(jax.random.key(0), 3)),
                            np.asarray(kmeans.fold_in(jax.random.key(0), 4)))


def test_host_draws_are_the_jax_draws():
  """The hash is integer arithmetic: NumPy draws JAX's numbers."""
  from rsjax._src import kmeans  # pylint: disable=import-outside-toplevel
  key = jax.random.key(3)
  np.testing.assert_array_equal(
      kmeans._split(kmeans.fold_in(key, 5, np), (4, 3), np),
      np.asarray(kmeans._split(kmeans.fold_in(key, 5), (4, 3))))
  seeds = kmeans._split(key, (2, 3), np)
  host = kmeans._draws(np, seeds, (5, 4))
  for r in range(2):
    for i in range(3):
      np.testing.assert_array_equal(host[r, i], np.asarray(
          kmeans._uniforms(jnp.asarray(seeds[r, i]), (5, 4))))


_jitted_scoped = _jitted(rsjax.cluster_ous, False, ("k", "codebook_scope"))


@pytest.mark.parametrize("scope", ["row_block", "layer"])
def test_host_and_compiled_backends_agree(scope):
  """The NumPy backend and XLA's: one algorithm."""
  rng = np.random.default_rng(0)
  # Well separated: 3 tight clusters per row-block, every label decided.
  centres = rng.normal(size=(5, 3, 6)) * 10
  ous = (centres[:, rng.integers(0, 3, 24)]
         + rng.normal(size=(5, 24, 6)) * 0.01).astype(np.float32)
  ous[1, :4] = 0  # pruned blocks
  ous = ous.reshape(5, 24, 3, 2)
  for seed in range(3):
    key = jax.random.key(seed)
    host = rsjax.cluster_ous(ous, 3, key=key, codebook_scope=scope)
    compiled = _jitted_scoped(ous, k=3, key=key, codebook_scope=scope)
    np.testing.assert_array_equal(host[1], compiled[1])
    np.testing.assert_allclose(host[0], compiled[0], rtol=1e-5, atol=1e-5)
  # Any data: the same draws and steps, so the same result up to rounding
  # (a near tie may break the other way: the inertia is compared).
  ous = rng.normal(size=(8, 30, 3, 2)).astype(np.float32)

  def inertia(codebook, index):
    return float(((ous - np.asarray(rsjax.decompress(codebook, index))) ** 2
                  ).sum())

  key = jax.random.key(7)
  host = rsjax.cluster_ous(ous, 5, key=key, codebook_scope=scope)
  compiled = _jitted_scoped(ous, k=5, key=key, codebook_scope=scope)
  assert np.mean(np.asarray(host[1]) == np.asarray(compiled[1])) > 0.95
  np.testing.assert_allclose(inertia(*host), inertia(*compiled), rtol=1e-3)


def test_a_callback_compiles_no_k_means_and_gives_the_host_result():
  """Called back from the program, a jitted k-means is the NumPy code:
  the eager result bit for bit, and no k-means loop to compile (XLA's
  costs about a second, most of a training step's compile)."""
  ous = np.asarray(jax.random.normal(jax.random.key(4), (7, 30, 3, 2)))
  key = jax.random.key(5)
  jitted = _jitted(rsjax.cluster_ous, True)
  text = jitted.lower(ous, k=4, key=key).as_text()
  assert "callback" in text and "while" not in text
  assert "while" in _jitted(rsjax.cluster_ous, False).lower(
      ous, k=4, key=key).as_text()
  for u, v in zip(rsjax.cluster_ous(ous, 4, key=key),
                  jitted(ous, k=4, key=key)):
    np.testing.assert_array_equal(u, v)
  # Under vmap (a batch of seeds), one host call per seed.
  keys = jax.random.split(key, 2)
  batched = _jitted(jax.vmap(lambda k: rsjax.cluster_ous(ous, 4, key=k)),
                    True, ())
  for i in range(2):
    for u, v in zip(rsjax.cluster_ous(ous, 4, key=keys[i]),
                    batched(keys)):
      np.testing.assert_array_equal(u, v[i])


def test_callback_on_a_cpu_unless_the_compilation_cache_would_keep_xla():
  """The suite runs with a persistent compilation cache (conftest), which
  keeps no program with a callback: then XLA's k-means is the cheaper."""
  from rsjax._src import kmeans  # pylint: disable=import-outside-toplevel
  assert jax.config.jax_compilation_cache_dir
  assert not kmeans._calls_back()
  cache_dir = jax.config.jax_compilation_cache_dir
  try:
    jax.config.update("jax_compilation_cache_dir", None)
    assert kmeans._calls_back() == (jax.default_backend() == "cpu")
  finally:
    jax.config.update("jax_compilation_cache_dir", cache_dir)


def test_host_chunks_give_the_whole_result(monkeypatch):
  """Row-blocks are independent: clustering them in chunks changes
  nothing."""
  from rsjax._src import kmeans  # pylint: disable=import-outside-toplevel
  ous = np.asarray(jax.random.normal(jax.random.key(6), (9, 16, 3, 2)))
  whole = rsjax.cluster_ous(ous, 4, key=jax.random.key(0))
  monkeypatch.setattr(kmeans, "_HOST_ELEMENTS", 16 * 16 * 2)  # 2 rows
  chunked = rsjax.cluster_ous(ous, 4, key=jax.random.key(0))
  for u, v in zip(whole, chunked):
    np.testing.assert_array_equal(u, v)
  # Split over 3 cores, in threads.
  monkeypatch.setattr(kmeans, "_HOST_ELEMENTS", 2 ** 21)
  monkeypatch.setattr(kmeans, "_HOST_SPLIT", 0)
  monkeypatch.setattr(kmeans.os, "cpu_count", lambda: 3)
  threaded = rsjax.cluster_ous(ous, 4, key=jax.random.key(0))
  for u, v in zip(whole, threaded):
    np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("entries", [3, 8, 12])
def test_compaction_counts_as_the_host_sorts(entries):
  """Under XLA the compaction ranks entries by counts (or sorts, when a
  table has more entries than a row-block has groups); the host sorts.
  Same codebooks and indices, unused and pruned entries included."""
  from rsjax._src import kmeans  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(3)
  labels = rng.integers(0, entries, (6, 8)).astype(np.int32)
  valid = rng.random((6, 8)) > 0.3
  valid[2] = False  # a fully pruned row-block
  table = rng.normal(size=(6, entries, 4)).astype(np.float32)
  for t in (table, table[:1]):  # per row-block, or one for the layer
    host = kmeans._compact(labels, valid, t, 5, np)
    compiled = jax.jit(kmeans._compact, static_argnums=3)(
        labels, valid, t, 5)
    for u, v in zip(host, compiled):
      np.testing.assert_array_equal(u, v)


def test_eager_calls_compile_nothing():
  """Concrete inputs take the NumPy backend: no XLA program to compile
  (the k-means program's compile is most of a cold start on a CPU)."""
  import jax.monitoring  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  lowered = []
  event = "/jax/core/compile/jaxpr_to_mlir_module_duration"
  jax.monitoring.register_event_duration_secs_listener(
      lambda name, secs, **kw: lowered.append(name) if name == event
      else None)
  key = jax.random.key(0)
  ous = np.asarray(jax.random.normal(jax.random.key(1), (6, 20, 3, 2)))
  start = len(lowered)
  codebook, index = rsjax.cluster_ous(ous, 4, key=key, n_init=3)
  assert len(lowered) == start
  assert isinstance(codebook, jax.Array) and index.dtype == jnp.int32
  params = {"w": np.asarray(jax.random.normal(jax.random.key(2), (36, 16)))}
  tx = rsjax.ste_sharing(optax.sgd(0.1), [rsjax.Rule("w", k=2)],
                         rsjax.HardwareSpec(), key=key)
  start = len(lowered)
  state = tx.init(params)
  assert len(lowered) - start <= 1  # the step counter's zeros, if not cached
  assert state.layers["w"].codebook.shape == (4, 2, 9, 2)
