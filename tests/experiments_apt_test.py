"""Tests for experiments/apt.py, through a fake runner (nothing installed)."""

import subprocess

import pytest

from experiments import apt


def fake_runner(install_failures):
  """A stand-in for subprocess.run; its ``calls`` list records commands."""
  state = {"failures": install_failures}

  def run(cmd, **kwargs):
    run.calls.append((cmd, kwargs))
    if cmd[1] == "install" and state["failures"]:
      state["failures"] -= 1
      return subprocess.CompletedProcess(
          cmd, 100, "", "E: Unable to locate package pkg")
    return subprocess.CompletedProcess(cmd, 0, "", "")

  run.calls = []
  return run


def test_install_runs_the_noninteractive_command():
  run = fake_runner(0)
  apt.install("pkg", run)
  (cmd, kwargs), = run.calls
  assert cmd == ["apt-get", "install", "-y", "-qq", *apt.OPTIONS, "pkg"]
  assert kwargs["env"]["DEBIAN_FRONTEND"] == "noninteractive"
  assert kwargs["timeout"] > 0 and kwargs["capture_output"]


def test_unknown_package_updates_the_lists_then_retries():
  run = fake_runner(1)
  apt.install("pkg", run, apt_get="/usr/bin/apt-get")
  assert [c[0][:3] for c in run.calls] == [
      ["/usr/bin/apt-get", "install", "-y"],
      ["/usr/bin/apt-get", "update", "-qq"],
      ["/usr/bin/apt-get", "install", "-y"]]


def test_failure_after_update_is_an_error_with_apt_output():
  run = fake_runner(2)
  with pytest.raises(apt.AptError, match="exit status 100: E: Unable"):
    apt.install("pkg", run)
  assert len(run.calls) == 3


def test_runner_timeout_is_an_error():
  def run(cmd, **kwargs):
    raise subprocess.TimeoutExpired(cmd, kwargs["timeout"])
  with pytest.raises(apt.AptError, match="timed out"):
    apt.install("pkg", run, timeout_s=1)


def test_unavailable(monkeypatch):
  monkeypatch.setattr(apt.shutil, "which", lambda name: "/usr/bin/apt-get")
  assert apt.unavailable(euid=0) is None
  assert apt.unavailable(euid=1000) == "not running as root"
  monkeypatch.setattr(apt.shutil, "which", lambda name: None)
  assert apt.unavailable(euid=0) == "no apt-get on this machine"
  assert apt.unavailable(euid=0, apt_get="/opt/apt-get") is None
