"""Provenance names the processor: the CPU model always, the GPU when the
run has one (figures of one commit differ between kinds of CPU)."""

import types

import jax

from experiments import provenance
from experiments.study import results_tables


def test_cpu_model_is_read_from_cpuinfo(tmp_path):
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\n"
                     "model name\t: Intel(R) Xeon(R) Platinum 8481C\n\n"
                     "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) "
                     "Platinum 8481C\n")
  assert provenance.cpu_model(str(cpuinfo)) == (
      "Intel(R) Xeon(R) Platinum 8481C")


def test_cpu_model_falls_back_to_platform_processor(tmp_path, monkeypatch):
  missing = str(tmp_path / "no_cpuinfo")
  monkeypatch.setattr(provenance.platform, "processor", lambda: "arm")
  assert provenance.cpu_model(missing) == "arm"
  # No "model name" line (some ARM kernels) and no platform answer: None,
  # never an empty string a table would print as a name.
  (tmp_path / "cpuinfo").write_text("processor\t: 0\nBogoMIPS\t: 50.00\n")
  monkeypatch.setattr(provenance.platform, "processor", lambda: "")
  assert provenance.cpu_model(str(tmp_path / "cpuinfo")) is None


def test_every_run_records_cpu_and_accelerator():
  prov = provenance.collect()
  assert prov["cpu"] == provenance.cpu_model()
  assert prov["devices"]["platform"] == jax.devices()[0].platform
  assert prov["devices"]["accelerator"] is None  # the tests run on a CPU


def test_gpu_is_named_by_its_device_kind(monkeypatch):
  gpu = types.SimpleNamespace(platform="gpu",
                              device_kind="NVIDIA H100 80GB HBM3")
  monkeypatch.setattr(provenance.jax, "devices", lambda: [gpu])
  devices = provenance.devices()
  assert devices["accelerator"] == "NVIDIA H100 80GB HBM3"
  assert devices["kind"] == "NVIDIA H100 80GB HBM3"


def test_results_tables_name_the_cpu():
  run = {"name": "lenet5_base",
         "provenance": {"commit": "a" * 40, "dirty": False,
                        "versions": {"jax": "0.10.2"},
                        "devices": {"kind": "cpu", "count": 1},
                        "cpu": "AMD EPYC"}}
  text = results_tables.provenance_text([run])
  assert "device cpu x1, CPU AMD EPYC" in text
