"""rsjax: OU-level weight sharing for ReRAM crossbar accelerators in JAX."""

from rsjax._src.compressed import CompressedLayer
from rsjax._src.compressed import compress_kernel
from rsjax._src.export import CompressedModel
from rsjax._src.export import load_compressed
from rsjax._src.export import save_compressed
from rsjax._src.hardware import HardwareSpec
from rsjax._src.kmeans import cluster_ous
from rsjax._src.kmeans import decompress
from rsjax._src.lowering import from_crossbar_matrix
from rsjax._src.lowering import from_ous
from rsjax._src.lowering import grid_shape
from rsjax._src.lowering import to_crossbar_matrix
from rsjax._src.lowering import to_ous
from rsjax._src.paths import match_paths
from rsjax._src.paths import named_leaves
from rsjax._src.paths import path_str
from rsjax._src.quantize import dequantize
from rsjax._src.quantize import quantize_weights
from rsjax._src.report import compression_report
from rsjax._src.report import format_report
from rsjax._src.report import layer_report

__version__ = "0.1.0"

__all__ = (
    "CompressedLayer",
    "CompressedModel",
    "HardwareSpec",
    "cluster_ous",
    "compress_kernel",
    "compression_report",
    "decompress",
    "dequantize",
    "format_report",
    "from_crossbar_matrix",
    "from_ous",
    "grid_shape",
    "layer_report",
    "load_compressed",
    "match_paths",
    "named_leaves",
    "path_str",
    "quantize_weights",
    "save_compressed",
    "to_crossbar_matrix",
    "to_ous",
)
