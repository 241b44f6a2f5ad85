"""Energy, latency and area per inference, priced from the compression report.

Every default of :class:`CostModel` is a 32 nm figure from ISAAC (Shafiee et
al., "ISAAC: A Convolutional Neural Network Accelerator with In-Situ Analog
Arithmetic in Crossbars", ISCA 2016, Table I "ISAAC parameters"; the text of
section V for the 1.28 GS/s ADC rate), turned into an energy per action on one
basis: ISAAC's 100 ns cycle, the time of one crossbar read, in which every
crossbar of a fully used IMA reads all 128 rows for one input bit and its ADC
converts all 128 columns. So each per-action energy is Table I's power times
100 ns over the actions ISAAC performs in that cycle at full use (noted at each
field), and pricing ISAAC's own tile at full use gives back Table I. The
4-10-bit ADC rows are the Accelergy library plug-in's scaling
(``library/isaac/isaac_adc.csv`` of
github.com/Accelergy-Project/accelergy-library-plug-in) put on the same basis.
``docs/cost.md`` gives every derivation. Host-side arithmetic on plain numbers:
pure, no jit needed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from rsjax._src import compressed as compressed_lib
from rsjax._src import hardware
from rsjax._src import report as report_lib

LAYOUTS = ("dense", "pruned", "shared")
ENERGY_KEYS = ("adc", "dac", "crossbar", "sample_hold", "shift_add",
               "input_register", "output_register", "index_table", "adders",
               "tile_output_register", "edram", "bus", "router")
AREA_KEYS = ("adc", "dac", "crossbar", "sample_hold", "shift_add",
             "registers", "index_table", "adders", "edram", "bus", "router",
             "tile_misc")
# The parts that grow with the crossbars and the table, not whole tiles.
CORE_AREA_KEYS = ("adc", "dac", "crossbar", "sample_hold", "shift_add",
                  "index_table", "adders")
_LAYER_KEYS = ("positions", "matrix_shape", "row_blocks", "dense_ous",
               "kept_ous", "index_bits", "dense_crossbars",
               "packed_crossbars") + tuple(
                   f"{kind}_{layout}" for layout in LAYOUTS
                   for kind in ("ou_activations", "adc_conversions",
                                "crossbar_ous"))

# ISAAC at full use, per 100 ns cycle: an IMA's 8 crossbars of 128x128 cells
# each read 128 rows for one input bit, and each crossbar's ADC converts its
# 128 columns (section V: 128 samples in 100 ns, a 1.28 GS/s ADC).
_ISAAC_CYCLE_NS = 100.0
_ISAAC_CELLS_PER_IMA = 8 * 128 * 128
_ISAAC_ROWS_PER_IMA = 8 * 128
_ISAAC_CONVERSIONS_PER_IMA = 8 * 128
# 16-bit inputs fed one bit a cycle: an IMA consumes its 2 KB input register
# and fills its 256 B output register (8 crossbars x 16 16-bit results) once
# per 16-cycle MVM; the tile's 12 IMAs move that through eDRAM, bus and router.
_ISAAC_MVM_CYCLES = 16
_ISAAC_TILE_BITS_PER_CYCLE = 12 * (2048 * 8 + 256 * 8) / _ISAAC_MVM_CYCLES
# The tile's 3 KB output register holds one MVM's results of its 96 crossbars.
_ISAAC_TILE_OUTPUT_BITS_PER_CYCLE = 96 * 16 * 16 / _ISAAC_MVM_CYCLES
_EDRAM_ACCESS_BITS = 256


def _per_action(power_mw: float, actions_per_cycle: float) -> float:
  """pJ per action: ``power_mw`` over ``actions_per_cycle`` per 100 ns."""
  return power_mw * _ISAAC_CYCLE_NS / actions_per_cycle  # mW x ns = pJ


# Accelergy's ISAAC ADC rows (isaac_adc.csv): 16 mW / (8 ADCs x 1.2 GS/s) at
# 8 bits, the other widths scaled from it with the capacitive-DAC SAR model
# of Saberi et al. (IEEE TCAS-I 2011). They take Table I's 1.2 GS/s; at the
# 1.28 GS/s of the 100 ns basis the same power buys 1.28/1.2 times the
# conversions, so every row scales by 1.2/1.28 (8 bits: exactly 1.5625 pJ).
_ACCELERGY_ADC_PJ = {4: 0.79, 5: 0.99, 6: 1.20, 7: 1.42, 8: 16.0 / (8 * 1.2),
                     9: 1.969078145, 10: 2.379022742}
_ACCELERGY_ADC_GSPS = 1.2
_ISAAC_ADC_GSPS = 1.28


@dataclasses.dataclass(frozen=True)
class CostModel:
  """Per-component costs: energy per action (pJ), area (um^2), time (ns).

  Energies are ISAAC Table I powers over the actions of one 100 ns cycle at
  full use (``docs/cost.md``). Every field can be overridden.

  Attributes:
    adc_energy_pj: ``{bits: pJ per conversion}``. 8 bits: Table I's 16 mW x
      100 ns / (8 ADCs x 128 conversions) (Kull et al., ISSCC 2013 ADC); the
      other widths the Accelergy library plug-in's ``isaac_adc.csv`` rows
      (Saberi et al. scaling), put on the 100 ns basis (x 1.2/1.28). Widths
      outside the table are refused.
    adc_area_um2: ``{bits: um^2}``, 8 bits Table I's 0.0096 mm^2 / 8, the
      rest ``isaac_adc.csv``'s.
    dac_energy_pj: one 1-bit row drive: 4 mW x 100 ns / (8 x 128 rows).
    dac_area_um2: Table I's 0.00017 mm^2 / (8 x 128).
    dac_bits: the DAC resolution these figures hold for.
    cell_read_energy_pj: one cell in one read: 2.4 mW x 100 ns /
      (8 x 128 x 128) (energy assumed proportional to the cells an OU
      activates).
    cell_area_um2: Table I's 0.0002 mm^2 / (8 x 128 x 128).
    sample_hold_energy_pj: one sample: 10 uW x 100 ns / (8 x 128).
    sample_hold_area_um2: Table I's 0.00004 mm^2 / (8 x 128); one per column.
    shift_add_energy_pj: one 16-bit shift-and-add, one per conversion:
      0.2 mW x 100 ns / (8 x 128).
    shift_add_area_um2: Table I's 0.00024 mm^2 / 4.
    shift_adds_per_crossbar: 4 per IMA of 8 crossbars.
    adcs_per_crossbar: 8 per IMA of 8 crossbars.
    input_register_energy_pj_per_bit: the IR (2 KB, 1.24 mW) over the 8 x 128
      input bits it feeds per 100 ns.
    input_register_area_um2: Table I's IR, 0.0021 mm^2 per IMA.
    output_register_energy_pj: the IMA's output register (256 B, 0.23 mW),
      where the shift-and-add accumulates partial sums: one update per
      conversion, 0.23 mW x 100 ns / (8 x 128).
    output_register_area_um2: Table I's OR, 0.00077 mm^2 per IMA.
    index_sram_energy_pj_per_bit: the index table, a small SRAM, priced per
      bit read as ISAAC's 2 KB IR: a CACTI 6.5 figure at 32 nm (ISAAC
      section VII), 1.24 mW x 100 ns / 1024 bits.
    index_sram_area_um2_per_bit: the IR's 0.0021 mm^2 / 16384 bits.
    index_sram_read_bits: bits read per table access, as the IR delivers
      (8 x 128 bits a cycle).
    index_sram_read_ns: one table access, one 100 ns cycle (the IR's rate).
    adder_energy_pj: one index-and-add addition, a 16-bit add priced as one
      ISAAC shift-and-add op.
    adder_area_um2: one adder, as one ISAAC shift-and-add unit.
    adder_ns: one addition by one adder: ISAAC's 4 S+A units take the IMA's
      8 x 128 conversions each 100 ns, 256 ops a unit, 100/256 ns an op.
    adders_per_crossbar: index-and-add adders per crossbar of an indexed
      layer (shared layout).
    tile_output_register_energy_pj_per_bit: the tile's 3 KB output register
      (1.68 mW), which collects the IMAs' results: per output bit, 1.68 mW x
      100 ns / (96 crossbars x 16 results x 16 bits / 16 cycles).
    edram_energy_pj: one 256-bit eDRAM access: 20.7 mW x 100 ns over the
      tile's IR and OR traffic, written and read, 2 x 13,824 / 256 accesses a
      cycle (Accelergy's derivation, on the 100 ns basis).
    edram_access_bits: bits per eDRAM access and per router transfer.
    edram_area_um2: Table I's 0.083 mm^2 per tile.
    bus_energy_pj_per_bit: eDRAM-to-IMA bus, 7 mW x 100 ns / 13,824 bits.
    bus_area_um2: Table I's 0.090 mm^2 per tile.
    router_energy_pj: one 256-bit router transfer, 42 mW / 4 tiles x 100 ns
      / (13,824 / 256) transfers.
    router_area_um2: Table I's 0.151 mm^2 / 4 tiles.
    tile_misc_area_um2: Table I's sigmoid 0.0006 + max-pool 0.00024 + S+A
      0.00006 + OR 0.0032 mm^2 per tile.
    crossbars_per_ima: 8 (Table I).
    imas_per_tile: 12 (Table I).
    xbar_read_ns: one crossbar read, 100 ns (ISAAC section IV).
    adc_rate_gsps: 1.28 GS/s (ISAAC section V: 128 columns in 100 ns; Table I
      rounds it to 1.2).
  """

  adc_energy_pj: Mapping[int, float] = dataclasses.field(
      default_factory=lambda: {
          bits: pj * _ACCELERGY_ADC_GSPS / _ISAAC_ADC_GSPS
          for bits, pj in _ACCELERGY_ADC_PJ.items()})
  adc_area_um2: Mapping[int, float] = dataclasses.field(
      default_factory=lambda: {4: 361.04, 5: 476.91, 6: 626.91, 7: 845.18,
                               8: 1200.0, 9: 1827.911647, 10: 3002.008032})
  dac_energy_pj: float = _per_action(4.0, _ISAAC_ROWS_PER_IMA)
  dac_area_um2: float = 170.0 / _ISAAC_ROWS_PER_IMA
  dac_bits: int = 1
  cell_read_energy_pj: float = _per_action(2.4, _ISAAC_CELLS_PER_IMA)
  cell_area_um2: float = 200.0 / _ISAAC_CELLS_PER_IMA
  sample_hold_energy_pj: float = _per_action(0.01, _ISAAC_ROWS_PER_IMA)
  sample_hold_area_um2: float = 40.0 / _ISAAC_ROWS_PER_IMA
  shift_add_energy_pj: float = _per_action(0.2, _ISAAC_CONVERSIONS_PER_IMA)
  shift_add_area_um2: float = 60.0
  shift_adds_per_crossbar: float = 0.5
  adcs_per_crossbar: float = 1.0
  input_register_energy_pj_per_bit: float = _per_action(
      1.24, _ISAAC_ROWS_PER_IMA)
  input_register_area_um2: float = 2100.0
  output_register_energy_pj: float = _per_action(
      0.23, _ISAAC_CONVERSIONS_PER_IMA)
  output_register_area_um2: float = 770.0
  index_sram_energy_pj_per_bit: float = _per_action(1.24, _ISAAC_ROWS_PER_IMA)
  index_sram_area_um2_per_bit: float = 2100.0 / (2048 * 8)
  index_sram_read_bits: int = _ISAAC_ROWS_PER_IMA
  index_sram_read_ns: float = _ISAAC_CYCLE_NS
  adder_energy_pj: float = _per_action(0.2, _ISAAC_CONVERSIONS_PER_IMA)
  adder_area_um2: float = 60.0
  adder_ns: float = _ISAAC_CYCLE_NS / (_ISAAC_CONVERSIONS_PER_IMA / 4)
  adders_per_crossbar: float = 1.0
  tile_output_register_energy_pj_per_bit: float = _per_action(
      1.68, _ISAAC_TILE_OUTPUT_BITS_PER_CYCLE)
  edram_energy_pj: float = _per_action(
      20.7, 2 * _ISAAC_TILE_BITS_PER_CYCLE / _EDRAM_ACCESS_BITS)
  edram_access_bits: int = _EDRAM_ACCESS_BITS
  edram_area_um2: float = 83000.0
  bus_energy_pj_per_bit: float = _per_action(7.0, _ISAAC_TILE_BITS_PER_CYCLE)
  bus_area_um2: float = 90000.0
  router_energy_pj: float = _per_action(
      42.0 / 4, _ISAAC_TILE_BITS_PER_CYCLE / _EDRAM_ACCESS_BITS)
  router_area_um2: float = 151000.0 / 4
  tile_misc_area_um2: float = 600.0 + 240.0 + 60.0 + 3200.0
  crossbars_per_ima: int = 8
  imas_per_tile: int = 12
  xbar_read_ns: float = _ISAAC_CYCLE_NS
  adc_rate_gsps: float = _ISAAC_ADC_GSPS

  def __post_init__(self):
    for name in ("adc_energy_pj", "adc_area_um2"):
      table = getattr(self, name)
      if not isinstance(table, Mapping) or not table:
        raise TypeError(f"CostModel.{name} must be a non-empty mapping "
                        f"{{bits: value}}, got {table!r}")
      for bits, value in table.items():
        if isinstance(bits, bool) or not isinstance(bits, int) or bits < 1:
          raise ValueError(f"CostModel.{name} keys must be ADC bits >= 1, "
                           f"got {bits!r}")
        _check_cost(f"{name}[{bits}]", value)
      # A frozen copy, so a caller's dict cannot change the model later.
      object.__setattr__(self, name, dict(sorted(table.items())))
    for field in dataclasses.fields(self):
      if field.name not in ("adc_energy_pj", "adc_area_um2"):
        _check_cost(field.name, getattr(self, field.name))
    for name in ("dac_bits", "edram_access_bits", "index_sram_read_bits",
                 "crossbars_per_ima", "imas_per_tile"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"CostModel.{name} must be an int >= 1, got {value!r}")
    for name in ("xbar_read_ns", "adc_rate_gsps", "adcs_per_crossbar",
                 "adders_per_crossbar"):
      if getattr(self, name) <= 0:
        raise ValueError(
            f"CostModel.{name} must be > 0, got {getattr(self, name)}")

  def __hash__(self):
    # The ADC tables are dicts; hash their items so the model stays usable as
    # a dict key or a static argument.
    return hash(tuple(
        tuple(value.items()) if isinstance(value, dict) else value
        for value in (getattr(self, f.name) for f in dataclasses.fields(self))))

  def adc_energy(self, bits: int) -> float:
    """pJ per conversion of a ``bits``-bit ADC (from the table only)."""
    return self._adc_lookup("adc_energy_pj", bits)

  def adc_area(self, bits: int) -> float:
    """um^2 of one ``bits``-bit ADC (from the table only)."""
    return self._adc_lookup("adc_area_um2", bits)

  def _adc_lookup(self, name: str, bits: int) -> float:
    table = getattr(self, name)
    if bits not in table:
      raise ValueError(
          f"no ADC figure for adc_bits={bits}: CostModel.{name} covers "
          f"{sorted(table)} bits; add a published figure for {bits} bits "
          f"(e.g. CostModel({name}={{**CostModel().{name}, {bits}: ...}}))")
    return table[bits]

  def replace(self, **changes: Any) -> "CostModel":
    """A copy with ``changes`` applied (and validated)."""
    return dataclasses.replace(self, **changes)


def _check_cost(name: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise TypeError(f"CostModel.{name} must be a number, got {value!r}")
  if not math.isfinite(value) or value < 0:
    raise ValueError(f"CostModel.{name} must be finite and >= 0, got {value}")


def _layer_cost(fig: Mapping[str, Any], layout: str,
                hw: hardware.HardwareSpec, costs: CostModel
                ) -> tuple[dict[str, float], dict[str, float], int]:
  """One layer's energy breakdown (pJ), times (ns) and crossbars."""
  activations = fig[f"ou_activations_{layout}"]
  conversions = fig[f"adc_conversions_{layout}"]
  row_drives = activations * hw.ou_rows
  rows, cols = fig["matrix_shape"]
  positions = fig["positions"]
  # Inputs in and outputs out through the tile's eDRAM, bus and router, at
  # input precision, once per crossbar MVM (im2col rows: no input reuse).
  out_bits = positions * cols * hw.input_bits
  moved_bits = positions * rows * hw.input_bits + out_bits
  accesses = moved_bits / costs.edram_access_bits
  indexed = layout == "shared" and fig["index_bits"] > 0
  crossbars = fig["packed_crossbars" if layout == "shared"
                  else "dense_crossbars"]
  # Each kept (row-block, group) adds its stored block's weight columns into
  # the group's outputs, once per MVM and array.
  adds = (fig["kept_ous"] * hw.arrays * hw.block_shape[1]
          if indexed else 0)
  energy = {
      "adc": conversions * costs.adc_energy(hw.adc_bits),
      "dac": row_drives * costs.dac_energy_pj,
      "crossbar": activations * hw.ou_rows * hw.ou_cols
                  * costs.cell_read_energy_pj,
      "sample_hold": conversions * costs.sample_hold_energy_pj,
      "shift_add": conversions * costs.shift_add_energy_pj,
      "input_register": row_drives * hw.dac_bits
                        * costs.input_register_energy_pj_per_bit,
      "output_register": conversions * costs.output_register_energy_pj,
      # Each MVM reads every entry of the table once (pruned codes included).
      "index_table": (fig["index_bits"] * positions
                      * costs.index_sram_energy_pj_per_bit if indexed else 0.0),
      "adders": adds * positions * costs.adder_energy_pj,
      "tile_output_register": out_bits
                              * costs.tile_output_register_energy_pj_per_bit,
      "edram": 2 * accesses * costs.edram_energy_pj,  # written, then read
      "bus": moved_bits * costs.bus_energy_pj_per_bit,
      "router": accesses * costs.router_energy_pj,
  }
  # An OU is fixed to its crossbar: the crossbars of a layer run in
  # parallel, the OUs of one crossbar one after another (the S+H lets the ADC
  # convert one while the next is read), so an MVM takes as long as the
  # busiest crossbar's OUs over all input cycles.
  adc_ns = hw.ou_cols / (costs.adc_rate_gsps * costs.adcs_per_crossbar)
  activation_ns = max(costs.xbar_read_ns, adc_ns)
  xbar_ns = fig[f"crossbar_ous_{layout}"] * hw.cycles * activation_ns
  # Index-and-add after the crossbars, per MVM: the table is read word by
  # word, then the layer's adders share the adds, the tree's
  # ceil(log2(row-blocks)) levels after the last.
  index_add_ns = 0.0
  if indexed:
    reads = -(-fig["index_bits"] // costs.index_sram_read_bits)
    adders = crossbars * costs.adders_per_crossbar
    depth = (fig["row_blocks"] - 1).bit_length()
    index_add_ns = (reads * costs.index_sram_read_ns
                    + (math.ceil(adds / adders) + depth) * costs.adder_ns)
  # Two pipelined stages over the layer's MVMs: the slower paces them, the
  # faster adds its time once (the first MVM's or the last's).
  latency = (positions * max(xbar_ns, index_add_ns)
             + min(xbar_ns, index_add_ns)) if crossbars else 0.0
  times = {"latency_ns": latency, "index_add_ns": positions * index_add_ns}
  return energy, times, crossbars


def _area(crossbars: int, indexed_crossbars: int, index_bits: int,
          hw: hardware.HardwareSpec, costs: CostModel) -> dict[str, float]:
  imas = -(-crossbars // costs.crossbars_per_ima)
  tiles = -(-imas // costs.imas_per_tile)
  return {
      "adc": crossbars * costs.adcs_per_crossbar
             * costs.adc_area(hw.adc_bits),
      "dac": crossbars * hw.xbar_rows * costs.dac_area_um2,
      "crossbar": crossbars * hw.xbar_rows * hw.xbar_cols
                  * costs.cell_area_um2,
      "sample_hold": crossbars * hw.xbar_cols * costs.sample_hold_area_um2,
      "shift_add": crossbars * costs.shift_adds_per_crossbar
                   * costs.shift_add_area_um2,
      "registers": imas * (costs.input_register_area_um2
                           + costs.output_register_area_um2),
      "index_table": index_bits * costs.index_sram_area_um2_per_bit,
      # Only the crossbars of indexed layers carry index-and-add adders.
      "adders": indexed_crossbars * costs.adders_per_crossbar
                * costs.adder_area_um2,
      "edram": tiles * costs.edram_area_um2,
      "bus": tiles * costs.bus_area_um2,
      "router": tiles * costs.router_area_um2,
      "tile_misc": tiles * costs.tile_misc_area_um2,
  }


def _as_report(layers_or_report: Any, hw: hardware.HardwareSpec,
               positions: Mapping[str, int] | None) -> Mapping[str, Any]:
  """The compression report that ``layers_or_report`` is or makes."""
  if not isinstance(layers_or_report, Mapping):
    raise TypeError(
        "layers_or_report must be a compression_report(...) dict or a "
        "{name: CompressedLayer or kernel array} mapping, got "
        f"{type(layers_or_report).__name__}")
  if not layers_or_report:
    raise ValueError("layers_or_report is empty: give a compression_report "
                     "or at least one layer")
  if isinstance(layers_or_report.get("layers"), Mapping):
    if positions is not None:
      raise ValueError(
          "positions applies to a layers mapping only: a compression report "
          "already holds each layer's positions")
    return layers_or_report
  for name, layer in layers_or_report.items():
    if isinstance(layer, Mapping):
      raise ValueError(
          f"layers_or_report[{name!r}] is a mapping: a compression report "
          "needs a 'layers' mapping of per-layer figures; a layers mapping "
          "holds CompressedLayers or kernel arrays")
    if not (isinstance(layer, compressed_lib.CompressedLayer)
            or hasattr(layer, "ndim")):
      raise TypeError(
          f"layers_or_report[{name!r}] is a {type(layer).__name__}: a layers "
          "mapping holds CompressedLayers or kernel arrays")
  return report_lib.compression_report(layers_or_report, hw, positions)


def hardware_cost(layers_or_report: Mapping[str, Any],
                  hw: hardware.HardwareSpec, costs: CostModel | None = None,
                  *, positions: Mapping[str, int] | None = None
                  ) -> dict[str, Any]:
  """Energy, latency and area of one inference, per layout.

  Args:
    layers_or_report: what :func:`compression_report` returns for ``hw``,
      or the ``{name: CompressedLayer or kernel}`` mapping it takes (the
      report is then made here, with ``positions``).
    hw: the hardware the report is for (``adc_bits`` picks the ADC; the
      report's counts do not depend on it).
    costs: the per-component costs, default :class:`CostModel()`.
    positions: with a layers mapping, ``{name: crossbar MVMs per
      inference}`` as :func:`compression_report` takes it (default 1 each).

  Returns:
    ``{'layouts': {layout: {'energy_pj': {component: pJ, 'total': pJ},
    'latency_ns', 'interval_ns', 'index_add_ns', 'crossbars', 'area_um2':
    {component: um^2, 'core': um^2, 'total': um^2}}}, 'layers': {name:
    {layout: {'energy_pj': pJ, 'latency_ns': ns, 'index_add_ns': ns}}},
    'adc_bits': ...}`` for layouts ``dense``, ``pruned`` and ``shared``
    (``shared`` skips pruned blocks too: for a pruned and shared model it is
    the pruned + shared layout). A layer's ``latency_ns`` is its busiest
    crossbar's OUs over all MVMs, pipelined with the index-and-add stage
    (``index_add_ns``: that stage's busy time, table reads and adds);
    the layout's ``latency_ns`` runs the layers one after another;
    ``interval_ns`` is the slowest layer, the time per inference when layers
    are pipelined. ``core`` is the area that grows
    with the crossbars and the index table (ADC, DAC, cells, S+H, S+A, table,
    adders); ``total`` adds the IMA registers and whole tiles (eDRAM, bus,
    router share...).

  Raises:
    TypeError: ``layers_or_report`` neither a report nor a layers mapping,
      ``hw`` not a :class:`HardwareSpec`, ``costs`` not a :class:`CostModel`.
    ValueError: an empty mapping, ``positions`` with a report, a report
      without the per-layer figures (``crossbar_ous_*`` included) or made
      for other hardware, a DAC
      resolution the costs do not hold for, or an ADC width without a figure.
  """
  costs = CostModel() if costs is None else costs
  if not isinstance(costs, CostModel):
    raise TypeError(f"costs must be a CostModel, got {type(costs).__name__}")
  if not isinstance(hw, hardware.HardwareSpec):
    raise TypeError(f"hw must be a HardwareSpec, got {type(hw).__name__}")
  if hw.dac_bits != costs.dac_bits:
    raise ValueError(
        f"hw.dac_bits={hw.dac_bits} but CostModel.dac_bits={costs.dac_bits}: "
        "give DAC figures for that resolution")
  layers = _as_report(layers_or_report, hw, positions)["layers"]
  if not layers:
    raise ValueError("the compression report's 'layers' mapping is empty")
  for name, fig in layers.items():
    if not isinstance(fig, Mapping):
      raise TypeError(f"report layer {name!r} is a {type(fig).__name__}, "
                      "not a mapping of figures")
    missing = [key for key in _LAYER_KEYS if key not in fig]
    if missing:
      raise ValueError(f"report layer {name!r} lacks {missing}")
    expected = fig["dense_ous"] * fig["positions"] * hw.cycles * hw.arrays
    if (fig["ou_activations_dense"] != expected
        or fig["adc_conversions_dense"] != expected * hw.ou_cols):
      raise ValueError(
          f"report layer {name!r} was not made for this hw: its dense counts "
          f"({fig['ou_activations_dense']} activations, "
          f"{fig['adc_conversions_dense']} conversions) are not those of "
          f"{fig['dense_ous']} OUs x {fig['positions']} positions x "
          f"{hw.cycles} cycles x {hw.arrays} arrays x {hw.ou_cols} columns")
  out = {"layouts": {}, "layers": {name: {} for name in layers},
         "adc_bits": hw.adc_bits}
  for layout in LAYOUTS:
    energy = dict.fromkeys(ENERGY_KEYS, 0.0)
    latencies, crossbars, indexed_crossbars, index_bits = [], 0, 0, 0
    index_add_ns = 0.0
    for name, fig in layers.items():
      layer_energy, times, layer_xbars = _layer_cost(fig, layout, hw, costs)
      for key, value in layer_energy.items():
        energy[key] += value
      latencies.append(times["latency_ns"])
      index_add_ns += times["index_add_ns"]
      crossbars += layer_xbars
      if layout == "shared" and fig["index_bits"] > 0:
        indexed_crossbars += layer_xbars
        index_bits += fig["index_bits"]
      out["layers"][name][layout] = {
          "energy_pj": sum(layer_energy.values()), **times}
    energy["total"] = sum(energy[key] for key in ENERGY_KEYS)
    area = _area(crossbars, indexed_crossbars, index_bits, hw, costs)
    area["core"] = sum(area[key] for key in CORE_AREA_KEYS)
    area["total"] = sum(area[key] for key in AREA_KEYS)
    out["layouts"][layout] = {
        "energy_pj": energy, "latency_ns": sum(latencies),
        "interval_ns": max(latencies), "index_add_ns": index_add_ns,
        "crossbars": crossbars, "area_um2": area}
  return out


_COLUMNS = (("energy uJ", lambda c: c["energy_pj"]["total"] * 1e-6, ".4g"),
            ("ADC uJ", lambda c: c["energy_pj"]["adc"] * 1e-6, ".4g"),
            ("index+add uJ", lambda c: (c["energy_pj"]["index_table"]
                                        + c["energy_pj"]["adders"]) * 1e-6,
             ".4g"),
            ("latency us", lambda c: c["latency_ns"] * 1e-3, ".4g"),
            ("interval us", lambda c: c["interval_ns"] * 1e-3, ".4g"),
            ("crossbars", lambda c: c["crossbars"], "d"),
            ("core mm^2", lambda c: c["area_um2"]["core"] * 1e-6, ".4g"),
            ("area mm^2", lambda c: c["area_um2"]["total"] * 1e-6, ".4g"))


def format_cost(cost: Mapping[str, Any]) -> str:
  """The cost as a fixed-width table, one row per layout, with x-dense."""
  dense = cost["layouts"]["dense"]
  rows = []
  for layout, fig in cost["layouts"].items():
    total = fig["energy_pj"]["total"]
    saving = dense["energy_pj"]["total"] / total if total else math.inf
    rows.append([layout] + [format(get(fig), fmt) for _, get, fmt in _COLUMNS]
                + [f"{saving:.2f}x"])
  header = ["layout"] + [name for name, _, _ in _COLUMNS] + ["energy x"]
  widths = [max(len(c) for c in col) for col in zip(header, *rows)]
  line = lambda cells: "  ".join(
      c.ljust(w) if i == 0 else c.rjust(w)
      for i, (c, w) in enumerate(zip(cells, widths)))
  out = [line(header), "-" * len(line(header))]
  out += [line(r) for r in rows]
  out.append(f"({cost['adc_bits']}-bit ADC; energy x = dense energy / "
             "layout energy)")
  return "\n".join(out)
