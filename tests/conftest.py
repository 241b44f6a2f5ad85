"""Strict numerics for every test (as equinox does), one compilation cache
for the session, and quick compiles."""

import os
import tempfile

# Each pipeline run, notebook and command-line test builds fresh jitted
# functions and compiles the same small steps again; a persistent cache
# shared by the session and its subprocesses (which inherit these
# variables) compiles each computation once. Keys include the program, the
# flags and the jax version, so a stale entry is never used.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), "rsjax-tests-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The suite is compile-bound (small shapes, hundreds of programs): on a CPU,
# LLVM's optimisation of the generated code costs more time than it saves
# here. Floats may differ from the default level's in the last bits, which
# every test's tolerance covers; integer results are the same. A level
# already in $XLA_FLAGS is kept:
# `XLA_FLAGS=--xla_backend_optimization_level=3` (the default) runs the
# suite as users' programs compile.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402  (after the cache variables)

# jax may have been imported by a plugin before this file: set them again.
_env = os.environ
jax.config.update("jax_compilation_cache_dir",
                  _env["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(_env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                  int(_env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
