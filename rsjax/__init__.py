"""rsjax: OU-level weight sharing for ReRAM crossbar accelerators in JAX."""

from rsjax._src.allocation import Allocation
from rsjax._src.allocation import LayerSensitivity
from rsjax._src.allocation import allocate_k
from rsjax._src.batchnorm import fold_batchnorm
from rsjax._src.compressed import CompressedLayer
from rsjax._src.compressed import compress_kernel
from rsjax._src.cost import CostModel
from rsjax._src.cost import format_cost
from rsjax._src.cost import hardware_cost
from rsjax._src.export import CompressedModel
from rsjax._src.finalize import to_compressed
from rsjax._src.finetune import centroid_finetune
from rsjax._src.export import load_compressed
from rsjax._src.export import save_compressed
from rsjax._src.hardware import HardwareSpec
from rsjax._src.kmeans import cluster_layers
from rsjax._src.kmeans import cluster_ous
from rsjax._src.kmeans import decompress
from rsjax._src.lowering import from_crossbar_matrix
from rsjax._src.lowering import from_ous
from rsjax._src.lowering import grid_shape
from rsjax._src.lowering import to_crossbar_matrix
from rsjax._src.lowering import to_ous
from rsjax._src.paths import kernel_paths
from rsjax._src.paths import match_paths
from rsjax._src.paths import named_leaves
from rsjax._src.paths import path_str
from rsjax._src.pruning import LayerState
from rsjax._src.pruning import PruneSchedule
from rsjax._src.pruning import apply_masks
from rsjax._src.pruning import ou_pruning
from rsjax._src.pruning import prune_masks
from rsjax._src.pruning import pruned_block_count
from rsjax._src.quantize import dequantize
from rsjax._src.quantize import quantize_weights
from rsjax._src.report import compression_report
from rsjax._src.report import format_report
from rsjax._src.report import layer_report
from rsjax._src.rules import LayerPlan
from rsjax._src.rules import Rule
from rsjax._src.rules import make_plan
from rsjax._src.scores import OuBlocks
from rsjax._src.scores import pruning_scores
from rsjax._src.scores import register_score
from rsjax._src.sharing import distance_loss
from rsjax._src.sharing import distance_sharing
from rsjax._src.sharing import project
from rsjax._src.sharing import recluster
from rsjax._src.sharing import ste_sharing
from rsjax._src.sharing import straight_through
from rsjax._src.sharing import training_params

__version__ = "0.1.0"

__all__ = (
    "Allocation",
    "CompressedLayer",
    "CompressedModel",
    "CostModel",
    "HardwareSpec",
    "LayerPlan",
    "LayerSensitivity",
    "LayerState",
    "OuBlocks",
    "PruneSchedule",
    "Rule",
    "allocate_k",
    "apply_masks",
    "centroid_finetune",
    "cluster_layers",
    "cluster_ous",
    "compress_kernel",
    "compression_report",
    "decompress",
    "dequantize",
    "distance_loss",
    "distance_sharing",
    "fold_batchnorm",
    "format_cost",
    "format_report",
    "from_crossbar_matrix",
    "from_ous",
    "grid_shape",
    "hardware_cost",
    "kernel_paths",
    "layer_report",
    "load_compressed",
    "make_plan",
    "match_paths",
    "named_leaves",
    "ou_pruning",
    "path_str",
    "project",
    "prune_masks",
    "pruned_block_count",
    "pruning_scores",
    "quantize_weights",
    "recluster",
    "register_score",
    "save_compressed",
    "ste_sharing",
    "straight_through",
    "to_compressed",
    "to_crossbar_matrix",
    "to_ous",
    "training_params",
)
