"""Where a result comes from: the code's commit, the libraries, the device.

Every ``results.json`` carries this, so a table can say which commit its
figures were computed at and refuse to mix commits.
"""

from __future__ import annotations

import importlib.metadata
import os
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


def devices() -> dict[str, Any]:
  devs = jax.devices()
  return {"platform": devs[0].platform, "kind": devs[0].device_kind,
          "count": len(devs), "processes": jax.process_count()}


def collect() -> dict[str, Any]:
  """The provenance of a run started now."""
  return {**git_state(), "versions": versions(), "devices": devices()}
