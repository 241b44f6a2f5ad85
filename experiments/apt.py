"""Installing a Debian/Ubuntu package with apt-get, unattended and with
bounded waits (docs/data.md, step 2); tests pass a fake ``run``."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from typing import Callable

log = logging.getLogger(__name__)

Runner = Callable[..., subprocess.CompletedProcess]
# Bounded network waits, so an offline machine fails in seconds, not minutes.
OPTIONS = ("-o", "Acquire::http::Timeout=10",
           "-o", "Acquire::https::Timeout=10", "-o", "Acquire::Retries=0")


class AptError(RuntimeError):
  """apt-get could not install a package."""


def unavailable(*, euid: int | None = None,
                apt_get: str | None = None) -> str | None:
  """Why apt-get cannot install packages here, or None when it can.

  Args:
    euid: the effective user id (default ``os.geteuid()``).
    apt_get: the ``apt-get`` path (default looked up on ``PATH``).
  """
  if euid is None:
    euid = os.geteuid() if hasattr(os, "geteuid") else -1
  if euid != 0:
    return "not running as root"
  if (apt_get or shutil.which("apt-get")) is None:
    return "no apt-get on this machine"
  return None


def install(package: str, run: Runner = subprocess.run, *,
            apt_get: str = "apt-get", timeout_s: float = 600.0) -> None:
  """Installs ``package`` as docs/data.md step 2 says, logging each command.

  Args:
    package: the package name.
    run: ``subprocess.run`` or a stand-in with its signature (tests).
    apt_get: the ``apt-get`` command.
    timeout_s: the limit for each command, in seconds.

  Raises:
    AptError: the installation failed; the message holds the end of
      apt-get's output.
  """
  env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
  install_cmd = [apt_get, "install", "-y", "-qq", *OPTIONS, package]

  def call(cmd):
    log.info("running %s", " ".join(cmd))
    try:
      return run(cmd, env=env, capture_output=True, text=True,
                 timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
      raise AptError(f"`{' '.join(cmd)}` failed: {e}") from e

  result = call(install_cmd)
  if result.returncode != 0:
    log.info("apt-get install failed (%s); updating the package lists",
             _tail(result))
    result = call([apt_get, "update", "-qq", *OPTIONS])
    if result.returncode == 0:
      result = call(install_cmd)
  if result.returncode != 0:
    raise AptError(f"`{' '.join(result.args)}` failed with exit status "
                   f"{result.returncode}: {_tail(result)}")
  log.info("installed %s", package)


def _tail(result: subprocess.CompletedProcess) -> str:
  text = " ".join(((result.stderr or "") + (result.stdout or "")).split())
  return text[-300:] or "no output"
