"""Where a result comes from: the code's commit, the libraries, the devices
and the processor, as every ``results.json`` records them
(docs/experiments.md; why the processor: RESULTS.md, "Spread across
machines")."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from typing import Any

import jax

LIBRARIES = ("jax", "jaxlib", "flax", "optax", "numpy", "orbax-checkpoint",
             "tensorflow-datasets", "rsjax")
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*args: str) -> str | None:
  try:
    out = subprocess.run(["git", "-C", _REPO, *args], capture_output=True,
                         text=True, timeout=10, check=True)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip()


def git_state() -> dict[str, Any]:
  """``{'commit': sha or None, 'dirty': bool or None}`` of the checkout the
  experiments run from (None outside a git checkout). Untracked files (run
  folders) do not make it dirty; changes to tracked files do."""
  commit = _git("rev-parse", "HEAD")
  if not commit:
    return {"commit": None, "dirty": None}
  status = _git("status", "--porcelain", "--untracked-files=no")
  return {"commit": commit, "dirty": None if status is None else bool(status)}


def versions() -> dict[str, str | None]:
  out = {"python": sys.version.split()[0]}
  for name in LIBRARIES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str | None:
  """The CPU's model name: ``model name`` of ``cpuinfo`` (Linux), else
  :func:`platform.processor` (empty on many Linux builds: then None)."""
  try:
    with open(cpuinfo) as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
          return value.strip()
  except OSError:
    pass
  return platform.processor() or None


def devices() -> dict[str, Any]:
  """The JAX devices; ``accelerator`` is the GPU's (or TPU's) name, its
  ``device_kind`` (e.g. ``NVIDIA H100 80GB HBM3``), or None on a CPU run."""
  devs = jax.devices()
  accelerator = devs[0].platform != "cpu"
  return {"platform": devs[0].platform, "kind": devs[0].device_kind,
          "count": len(devs), "processes": jax.process_count(),
          "accelerator": devs[0].device_kind if accelerator else None}


def collect() -> dict[str, Any]:
  """The provenance of a run started now."""
  return {**git_state(), "versions": versions(), "devices": devices(),
          "cpu": cpu_model()}
