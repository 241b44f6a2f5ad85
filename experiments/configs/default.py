"""Default: LeNet-5 on Fashion-MNIST, the whole pipeline (the main job).

Sized to run end to end in a few minutes on a 2-core CPU.
"""

import ml_collections
import rsjax

from experiments import array
from experiments import fashion_mnist_files


def get_config() -> ml_collections.ConfigDict:
  """The default experiment configuration (the fields: their comments and
  the docs these name)."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.model = ml_collections.ConfigDict()
  config.model.name = "lenet5"

  config.data = ml_collections.ConfigDict()
  # Where the data comes from, field by field: docs/data.md.
  config.data.name = "fashion_mnist"
  config.data.data_dir = ""
  config.data.source_dir = fashion_mnist_files.FASHION_MNIST_DIR
  config.data.allow_apt = True
  config.data.download = False
  config.data.train_limit = 0
  config.data.eval_limit = 0
  config.data.image_size = 0
  config.data.augment = False

  config.train = ml_collections.ConfigDict()
  # A trained baseline to start from instead of training (an orbax
  # checkpoint of {'params', 'batch_stats'}, e.g. WORKDIR/checkpoints/baseline
  # of an earlier run); '' trains one.
  config.train.init_checkpoint = ""
  config.train.steps = 2000
  config.train.batch_size = 128
  config.train.eval_batch_size = 1000
  config.train.optimizer = "adam"  # 'adam' or 'sgd' (Nesterov momentum 0.9)
  config.train.learning_rate = 2e-3
  config.train.weight_decay = 1e-4
  config.train.warmup_steps = 100
  config.train.log_every = 200
  config.train.checkpoint_every = 500

  # Hardware the compressed model is mapped to: rsjax.HardwareSpec's fields
  # at its defaults, typed as they are (--config.hw.adc_bits=4 is an int).
  config.hw = ml_collections.ConfigDict(rsjax.HardwareSpec().to_dict())

  # The compression recipe, with compress, prune, share and finetune below:
  # docs/experiments.md, "The recipe".
  config.recipe = ml_collections.ConfigDict()
  config.recipe.stages = ("prune", "share", "finetune")
  config.recipe.rules = ("kernel$ k=8 sparsity=0.3",)

  config.compress = ml_collections.ConfigDict()
  config.compress.fold_bn = True
  config.compress.distill_weight = 0.0
  config.compress.distill_temperature = 4.0

  config.prune = ml_collections.ConfigDict()
  config.prune.steps = 0
  config.prune.learning_rate = 1e-3
  config.prune.begin = 0
  config.prune.end = 0
  config.prune.every = 100
  config.prune.power = 3.0
  config.prune.scope = "layer"  # or 'global'
  config.prune.score = "rms"

  config.share = ml_collections.ConfigDict()
  config.share.method = "ste"
  config.share.n_init = 4
  # Training steps with the sharing wrapper (0: one-shot k-means).
  config.share.steps = 1000
  config.share.learning_rate = 1e-3
  config.share.recluster_every = 100
  # The distance loop's regulariser weight (share.method='distance').
  config.share.lam = 1e-3
  # Per-layer k (rsjax.allocate_k), off at 0: "Per-layer budgets" in
  # docs/experiments.md.
  config.share.allocate_ou_ratio = 0.0
  config.share.allocate_objective = "ou_ratio"
  config.share.allocate_target = 0.0
  config.share.allocate_examples = 1000

  # Centroid fine-tune with fixed assignments (rsjax.centroid_finetune).
  config.finetune = ml_collections.ConfigDict()
  config.finetune.steps = 1000
  config.finetune.learning_rate = 1e-3
  # Member gradients into a centroid: 'sum' (exact) or 'mean'.
  config.finetune.reduce = "sum"

  # Hardware-aware fine-tune (stage 'hwaware'), field by field: the stage's
  # table in docs/hwaware.md.
  config.hwaware = ml_collections.ConfigDict()
  config.hwaware.steps = 0
  config.hwaware.learning_rate = 1e-4
  config.hwaware.adc_bits = 0
  config.hwaware.adc_mode = ""
  config.hwaware.program_sigma = 0.0
  config.hwaware.stuck_at_0 = 0.0
  config.hwaware.stuck_at_1 = 0.0
  config.hwaware.recalibrate_every = 0
  config.hwaware.scales = "running_max"
  config.hwaware.distill_weight = 0.0
  config.hwaware.backward = "ste"

  # The real array every emulation runs on (the ideal crossbar by default):
  # docs/experiments.md, experiments/array.py.
  config.array = array.defaults()

  config.eval = ml_collections.ConfigDict()
  # Crossbar emulation (rsjax.kernels); the ADC sweep needs it too.
  config.eval.emulate = True
  config.eval.adc_bits = (3, 4, 5, 6, 7, 8)
  # Examples emulated per evaluation (emulation is ~500x a float matmul).
  config.eval.emulate_limit = 1000
  # Eval batches whose inputs calibrate the emulator's input scales.
  config.eval.calibration_batches = 2

  return config
