"""Jitted ReRAM crossbar kernels (installed as ``rsjax.kernels``)."""

from rsjax.kernels.cells import Nonideal
from rsjax.kernels.crossbar import CrossbarWeights
from rsjax.kernels.crossbar import apply
from rsjax.kernels.crossbar import crossbar_matmul
from rsjax.kernels.crossbar import prepare
from rsjax.kernels.crossbar import prepare_shared
from rsjax.kernels.crossbar import quantize_inputs
from rsjax.kernels.crossbar import shared_crossbar_matmul

__all__ = (
    "CrossbarWeights",
    "Nonideal",
    "apply",
    "crossbar_matmul",
    "prepare",
    "prepare_shared",
    "quantize_inputs",
    "shared_crossbar_matmul",
)
