"""Jitted ReRAM crossbar kernels (installed as ``rsjax.kernels``)."""

from rsjax.kernels.adc import NonlinearADC
from rsjax.kernels.devices import Device
from rsjax.kernels.devices import Drift
from rsjax.kernels.devices import Programming
from rsjax.kernels.devices import ReadNoise
from rsjax.kernels.devices import SinhIV
from rsjax.kernels.devices import StuckAt
from rsjax.kernels.devices import WanRRAM2022
from rsjax.kernels.wires import Wires
from rsjax.kernels.crossbar import CrossbarWeights
from rsjax.kernels.conv import conv_apply
from rsjax.kernels.conv import crossbar_conv
from rsjax.kernels.conv import im2col
from rsjax.kernels.counters import ou_counts
from rsjax.kernels.crossbar import apply
from rsjax.kernels.calibration import HwCalibration
from rsjax.kernels.calibration import calibrate_adc_range
from rsjax.kernels.crossbar import crossbar_matmul
from rsjax.kernels.crossbar import prepare
from rsjax.kernels.crossbar import prepare_shared
from rsjax.kernels.crossbar import quantize_inputs
from rsjax.kernels.crossbar import shared_crossbar_matmul
from rsjax.kernels.model import Calibration
from rsjax.kernels.model import EmulatedLayer
from rsjax.kernels.model import program
from rsjax.kernels.model import DigitalLayerWarning
from rsjax.kernels.api import calibrate
from rsjax.kernels.api import calibrate_hwaware
from rsjax.kernels.api import emulate
from rsjax.kernels.api import hwaware
from rsjax.kernels.training import hwaware_layer
from rsjax.kernels.training import InputSaturationWarning
from rsjax.kernels.training import input_saturation
from rsjax.kernels.saturation import saturating_matmul

__all__ = (
    "Calibration",
    "CrossbarWeights",
    "DigitalLayerWarning",
    "Device",
    "Drift",
    "EmulatedLayer",
    "HwCalibration",
    "InputSaturationWarning",
    "NonlinearADC",
    "Programming",
    "ReadNoise",
    "SinhIV",
    "StuckAt",
    "WanRRAM2022",
    "Wires",
    "apply",
    "calibrate",
    "calibrate_adc_range",
    "calibrate_hwaware",
    "conv_apply",
    "crossbar_conv",
    "im2col",
    "input_saturation",
    "ou_counts",
    "crossbar_matmul",
    "emulate",
    "hwaware",
    "hwaware_layer",
    "prepare",
    "prepare_shared",
    "program",
    "quantize_inputs",
    "saturating_matmul",
    "shared_crossbar_matmul",
)
