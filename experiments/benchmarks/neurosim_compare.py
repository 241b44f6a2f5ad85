r"""rsjax's hardware cost of VGG-8 on CIFAR-10 beside NeuroSim's published one.

  python -m experiments.benchmarks.neurosim_compare [--markdown]

Prices the dense VGG-8 of :mod:`experiments.models` (``vgg8``: conv 128,
128, M, 256, 256, M, 512, 512, M, fc 1024, fc 10 on 32x32x3, the network of
NeuroSim's ``NetWork_VGG8.csv``, checked layer by layer here) with
:func:`rsjax.hardware_cost` at the hardware closest to each published
NeuroSim configuration, and prints the table of ``docs/cost.md``'s "Against
NeuroSim" (``--markdown``: exactly as there). The NeuroSim figures are
constants quoted from its manuals (:data:`NEUROSIM`); the figures marked
derived are computed here from the published ones and the network's
operations.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np

from experiments import models
import rsjax

# NeuroSim's VGG-8 (NetWork_VGG8.csv of neurosim/DNN_NeuroSim_V1.4 at
# ac828e6723bf077c9b1423c5c72ff6e4981e90f4, Inference_pytorch/NeuroSIM/;
# the same file in DNN_NeuroSim_V1.3 at 388f421): input height, width and
# channels, kernel height and width, output channels, then a pool flag and
# the stride. Every convolution keeps its input size.
NEUROSIM_VGG8 = ((32, 32, 3, 3, 3, 128, 0, 1), (32, 32, 128, 3, 3, 128, 1, 1),
                 (16, 16, 128, 3, 3, 256, 0, 1), (16, 16, 256, 3, 3, 256, 1, 1),
                 (8, 8, 256, 3, 3, 512, 0, 1), (8, 8, 512, 3, 3, 512, 1, 1),
                 (1, 1, 8192, 1, 1, 1024, 0, 1), (1, 1, 1024, 1, 1, 10, 0, 1))

_V14 = ("DNN+NeuroSim V1.4 user manual, Table VII (neurosim/DNN_NeuroSim_V1.4 "
        "@ ac828e6, Documents/User Manual of DNN simulator_V1.4_v3_updated_"
        "1229.pdf, pp. 31-32)")
_V13 = ("DNN+NeuroSim V1.3 manual, Fig. 24 (neurosim/DNN_NeuroSim_V1.3 @ "
        "388f421, Documents/DNN NeuroSim V1.3 Manual.pdf, p. 23)")



def _v14(rows: int, area_mm2: float, tops: float, tops_per_w: float
         ) -> dict[str, Any]:
  """A row of Table VII: ``rows`` read in parallel, the rest as stated."""
  return {"label": f"V1.4, {rows} rows", "source": _V14,
          "config": f"1-bit cells, {rows} rows read at once, 4-bit ADC, "
                    "22 nm, pipelined",
          "hw": dict(cell_bits=1, ou_rows=rows, ou_cols=128, adc_bits=4),
          "area_mm2": area_mm2, "tops": tops, "tops_per_w": tops_per_w,
          "energy_uj": None, "adc_uj": None, "latency_us": None}


# The published figures, per configuration: the hardware rsjax prices it
# at, and NeuroSim's numbers (None: not published). Table VII gives area,
# TOPS and TOPS/W of a pipelined chip; Fig. 24 prints the energy (its ADC's
# share included), area and layer-by-layer latency of one image.
NEUROSIM: tuple[Mapping[str, Any], ...] = (
    _v14(32, 381.90, 6.25, 11.25),
    _v14(64, 378.06, 8.16, 19.88),
    {"label": "V1.3, Fig. 24", "source": _V13,
     "config": "2-bit cells, 128 rows read at once, ADC bits and node not "
               "stated, layer by layer",
     "hw": dict(cell_bits=2, ou_rows=128, ou_cols=128, adc_bits=5),
     "area_mm2": 45.554, "tops": None, "tops_per_w": 25.7176,
     "energy_uj": 37.7518 + 1.19011, "adc_uj": 18.274, "latency_us": 1456.13},
)


def vgg8_layers() -> tuple[dict[str, np.ndarray], dict[str, int]]:
  """The dense kernels (zeros: only their shapes are priced) and positions
  of :mod:`experiments.models`' VGG-8 on 32x32x3, checked against
  :data:`NEUROSIM_VGG8`."""
  model = models.create_model("vgg8", num_classes=10, use_bn=False)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32), train=False))
  variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  positions = models.layer_positions(model, variables, (32, 32, 3))
  kernels = {path: leaf for path, leaf in rsjax.named_leaves(variables)
             if path.endswith("/kernel")}
  ours = [(positions[p], *k.shape) for p, k in kernels.items()]
  theirs = [(h * w, kh, kw, c, out) if kh > 1 else (1, c, out)
            for h, w, c, kh, kw, out, _, _ in NEUROSIM_VGG8]
  if ours != theirs:
    raise AssertionError(f"experiments.models' vgg8 {ours} is not "
                         f"NeuroSim's NetWork_VGG8.csv {theirs}")
  return kernels, positions


def rsjax_rows() -> list[dict[str, Any]]:
  """rsjax's figures of each :data:`NEUROSIM` configuration (dense)."""
  kernels, positions = vgg8_layers()
  out = []
  for ref in NEUROSIM:
    hw = rsjax.HardwareSpec(**ref["hw"])
    report = rsjax.compression_report(kernels, hw, positions)
    ops = 2 * sum(f["matrix_shape"][0] * f["matrix_shape"][1]
                  * f["positions"] for f in report["layers"].values())
    cost = rsjax.hardware_cost(report, hw)["layouts"]["dense"]
    energy_j = cost["energy_pj"]["total"] * 1e-12
    out.append({
        "label": ref["label"], "hw": hw, "ops": ops,
        "energy_uj": energy_j * 1e6,
        "adc_uj": cost["energy_pj"]["adc"] * 1e-6,
        "latency_us": cost["latency_ns"] * 1e-3,
        "interval_us": cost["interval_ns"] * 1e-3,
        "area_mm2": cost["area_um2"]["total"] * 1e-6,
        "crossbars": cost["crossbars"],
        "tops_per_w": ops / energy_j * 1e-12})
  return out


def _cell(x, spec: str, suffix: str = "") -> str:
  return "not published" if x is None else format(x, spec) + suffix


def markdown_table(rows: list[Mapping[str, Any]]) -> str:
  """The side-by-side table of ``docs/cost.md`` (NeuroSim, then rsjax)."""
  lines = ["| configuration | source | energy / image (uJ) | ADC energy (uJ) "
           "| latency / image (us) | pipelined interval (us) | area (mm^2) "
           "| TOPS/W |", "|---|---|---|---|---|---|---|---|"]
  for ref, ours in zip(NEUROSIM, rows):
    ops = ours["ops"]
    energy = ref["energy_uj"]
    energy_cell = (_cell(energy, ".2f", " (dynamic + leakage)")
                   if energy is not None else
                   f"{ops / (ref['tops_per_w'] * 1e12) * 1e6:.1f} (derived)")
    interval = ("not published" if ref["tops"] is None else
                f"{ops / (ref['tops'] * 1e12) * 1e6:.1f} (derived)")
    lines.append("| " + " | ".join([
        ref["config"], f"NeuroSim {ref['label']}", energy_cell,
        _cell(ref["adc_uj"], ".2f"), _cell(ref["latency_us"], ",.1f"),
        interval, f"{ref['area_mm2']:.2f}", f"{ref['tops_per_w']:.2f}"])
                 + " |")
    hw = ours["hw"]
    lines.append("| " + " | ".join([
        f"{hw.cell_bits}-bit cells, OU {hw.ou_rows}x{hw.ou_cols}, "
        f"{hw.adc_bits}-bit ADC, 32 nm", "rsjax `dense`",
        f"{ours['energy_uj']:,.1f}", f"{ours['adc_uj']:,.1f}",
        f"{ours['latency_us']:,.1f}", f"{ours['interval_us']:,.1f}",
        f"{ours['area_mm2']:.2f}", f"{ours['tops_per_w']:.2f}"]) + " |")
  return "\n".join(lines)


def main(argv):
  del argv
  rows = rsjax_rows()
  if _MARKDOWN.value:
    print(markdown_table(rows))
    return
  print(f"VGG-8, CIFAR-10, one image: {rows[0]['ops']:,} operations "
        "(2 per multiply-accumulate)")
  for ref, ours in zip(NEUROSIM, rows):
    print(f"\n{ref['label']}: {ref['config']}\n  source: {ref['source']}")
    print(f"  NeuroSim: area {ref['area_mm2']} mm^2, TOPS/W "
          f"{ref['tops_per_w']}, TOPS {ref['tops']}, energy "
          f"{ref['energy_uj']} uJ, latency {ref['latency_us']} us")
    print(f"  rsjax ({ours['hw']}): {ours['energy_uj']:,.1f} uJ (ADC "
          f"{ours['adc_uj']:,.1f}), latency {ours['latency_us']:,.1f} us, "
          f"interval {ours['interval_us']:,.1f} us, {ours['crossbars']} "
          f"crossbars, {ours['area_mm2']:.2f} mm^2, "
          f"{ours['tops_per_w']:.2f} TOPS/W")
  print()
  print(markdown_table(rows))


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top

  _MARKDOWN = flags.DEFINE_bool(
      "markdown", False, "print only the table of docs/cost.md")
  app.run(main)
