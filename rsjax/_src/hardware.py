"""The crossbar hardware description shared by compression and emulation."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

ADC_MODES = ("clip", "scale", "calibrated")
SIGNED_MAPPINGS = ("offset", "differential")


@dataclasses.dataclass(frozen=True)
class HardwareSpec:
  """A ReRAM crossbar accelerator (ISAAC-like defaults, docs/hardware.md).

  Attributes:
    xbar_rows: wordlines per crossbar.
    xbar_cols: bitlines per crossbar.
    ou_rows: wordlines activated together in one Operation Unit (OU).
    ou_cols: bitlines (cells, not weights) activated together in one OU.
    cell_bits: bits stored per ReRAM cell.
    weight_bits: signed weight precision, values in
      ``[-(2^(b-1)-1), 2^(b-1)-1]``.
    input_bits: unsigned input (activation) precision.
    dac_bits: input bits fed per cycle.
    adc_bits: ADC resolution.
    adc_mode: ``'clip'`` (unit LSB, saturates), ``'scale'`` (full range,
      coarse LSB) or ``'calibrated'`` (range taken from data).
    signed: ``'offset'`` (store ``w + 2^(b-1)``, subtract digitally) or
      ``'differential'`` (positive and negative arrays of ``b-1`` bit
      magnitudes).
  """

  xbar_rows: int = 128
  xbar_cols: int = 128
  ou_rows: int = 9
  ou_cols: int = 8
  cell_bits: int = 2
  weight_bits: int = 8
  input_bits: int = 8
  dac_bits: int = 1
  adc_bits: int = 5
  adc_mode: str = "clip"
  signed: str = "offset"

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if field.type in ("int", int):
        if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, np.integer)):
          raise ValueError(
              f"HardwareSpec.{field.name} must be an int, got {value!r}")
        # A Python int, so that equal specs hash equal and to_dict is JSON.
        value = int(value)
        object.__setattr__(self, field.name, value)
        if value < 1:
          raise ValueError(
              f"HardwareSpec.{field.name} must be >= 1, got {value}")
    if self.adc_mode not in ADC_MODES:
      raise ValueError(
          f"HardwareSpec.adc_mode must be one of {ADC_MODES}, "
          f"got {self.adc_mode!r}")
    if self.signed not in SIGNED_MAPPINGS:
      raise ValueError(
          f"HardwareSpec.signed must be one of {SIGNED_MAPPINGS}, "
          f"got {self.signed!r}")
    if self.weight_bits < 2:
      raise ValueError(
          "HardwareSpec.weight_bits must be >= 2 (one sign bit and at least "
          f"one magnitude bit), got {self.weight_bits}")
    if self.weight_bits > 16:
      raise ValueError(
          f"HardwareSpec.weight_bits must be <= 16, got {self.weight_bits}")
    if self.input_bits > 16:
      raise ValueError(
          f"HardwareSpec.input_bits must be <= 16, got {self.input_bits}")
    if self.dac_bits > self.input_bits:
      raise ValueError(
          f"HardwareSpec.dac_bits ({self.dac_bits}) must be <= input_bits "
          f"({self.input_bits})")
    # cell_bits above the stored bits is one cell per weight with its top
    # levels unused; the cap keeps p_max and the shift-and-add in int32.
    if self.cell_bits > 16:
      raise ValueError(
          f"HardwareSpec.cell_bits must be <= 16, got {self.cell_bits}")
    if self.ou_rows > self.xbar_rows:
      raise ValueError(
          f"HardwareSpec.ou_rows ({self.ou_rows}) must be <= xbar_rows "
          f"({self.xbar_rows})")
    if self.ou_cols > self.xbar_cols:
      raise ValueError(
          f"HardwareSpec.ou_cols ({self.ou_cols}) must be <= xbar_cols "
          f"({self.xbar_cols})")
    if self.ou_cols % self.slices:
      raise ValueError(
          f"HardwareSpec.ou_cols ({self.ou_cols}) must be a multiple of the "
          f"{self.slices} cell slices per weight "
          f"(ceil({self.stored_bits} stored bits / {self.cell_bits} cell "
          "bits)): an OU must hold whole weights")
    if self.adc_bits > 24:
      raise ValueError(
          f"HardwareSpec.adc_bits must be <= 24, got {self.adc_bits}")

  @property
  def stored_bits(self) -> int:
    """Bits stored per weight in one array (b, or b-1 for differential)."""
    if self.signed == "offset":
      return self.weight_bits
    return self.weight_bits - 1

  @property
  def slices(self) -> int:
    """Cells per weight: ``ceil(stored_bits / cell_bits)`` (1 when a cell
    holds a whole weight, ``cell_bits >= stored_bits``)."""
    return -(-self.stored_bits // self.cell_bits)

  @property
  def arrays(self) -> int:
    """Crossbar arrays per weight matrix: 2 for differential, else 1."""
    return 2 if self.signed == "differential" else 1

  @property
  def block_shape(self) -> tuple[int, int]:
    """The weight block one OU holds: ``(ou_rows, ou_cols // slices)``."""
    return (self.ou_rows, self.ou_cols // self.slices)

  @property
  def cycles(self) -> int:
    """Input cycles per MVM: ``ceil(input_bits / dac_bits)``."""
    return -(-self.input_bits // self.dac_bits)

  @property
  def max_weight(self) -> int:
    """Largest quantized weight magnitude, ``2^(b-1) - 1``."""
    return 2 ** (self.weight_bits - 1) - 1

  @property
  def partial_sum_max(self) -> int:
    """Largest OU partial sum: ``ou_rows (2^dac-1) (2^cell-1)``.

    The cell's top level, even when the stored values never reach it
    (``cell_bits > stored_bits``, or a partly used top slice): a stuck-at-1
    cell does, so the ADC range and the lossless test use it.
    """
    return (self.ou_rows * (2**self.dac_bits - 1) * (2**self.cell_bits - 1))

  @property
  def adc_max(self) -> int:
    """Largest ADC output code, ``2^adc_bits - 1``."""
    return 2**self.adc_bits - 1

  @property
  def adc_lossless(self) -> bool:
    """Whether every partial sum converts exactly (``adc_max >= p_max``)."""
    return self.adc_max >= self.partial_sum_max

  @property
  def lossless_adc_bits(self) -> int:
    """The fewest ADC bits that convert every OU partial sum exactly,
    ``ceil(log2(p_max + 1))``."""
    return self.partial_sum_max.bit_length()

  def with_lossless_adc(self) -> "HardwareSpec":
    """This hardware with an ADC that converts every partial sum exactly:
    itself if its ADC already does, else at :attr:`lossless_adc_bits`."""
    if self.adc_lossless:
      return self
    return self.replace(adc_bits=self.lossless_adc_bits)

  @property
  def ous_per_xbar(self) -> tuple[int, int]:
    """Row-blocks and column groups one crossbar holds."""
    return (self.xbar_rows // self.ou_rows, self.xbar_cols // self.ou_cols)

  def replace(self, **changes: Any) -> "HardwareSpec":
    """A copy with ``changes`` applied (and validated)."""
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    """The fields as a JSON-serialisable dict."""
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, fields: Mapping[str, Any]) -> "HardwareSpec":
    """The inverse of :meth:`to_dict`; unknown keys are an error."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
      raise ValueError(f"unknown HardwareSpec fields: {unknown}")
    return cls(**fields)
