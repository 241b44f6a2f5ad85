"""Default: LeNet-5 on Fashion-MNIST, the whole pipeline (the main job).

Sized to run end to end in a few minutes on a 2-core CPU.
"""

import ml_collections

from experiments import array
from experiments import fashion_mnist_files


def get_config() -> ml_collections.ConfigDict:
  """The default experiment configuration (see the fields' comments)."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.model = ml_collections.ConfigDict()
  config.model.name = "lenet5"

  config.data = ml_collections.ConfigDict()
  config.data.name = "fashion_mnist"
  # TFDS data dir; '' means $TFDS_DATA_DIR or ~/tensorflow_datasets.
  config.data.data_dir = ""
  # Folder of the Fashion-MNIST IDX .gz files (Debian dataset-fashion-mnist).
  # Without them there: the Debian package's folder, then apt-get (below),
  # then a download (below), then an error saying what to do.
  config.data.source_dir = fashion_mnist_files.FASHION_MNIST_DIR
  # Install the Debian package with apt-get when running as root.
  config.data.allow_apt = True
  # Let TFDS download a missing dataset (needs internet; Fashion-MNIST's
  # files when none of the above has them); off: a clear error at once.
  config.data.download = False
  # Keep only the first N examples of a split (0: all); for quick runs.
  config.data.train_limit = 0
  config.data.eval_limit = 0
  # Square image side for variable-size datasets (ImageNet); 0: dataset's.
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

  # Hardware the compressed model is mapped to (rsjax.HardwareSpec fields).
  config.hw = ml_collections.ConfigDict()
  config.hw.xbar_rows = 128
  config.hw.xbar_cols = 128
  config.hw.ou_rows = 9
  config.hw.ou_cols = 8
  config.hw.cell_bits = 2
  config.hw.weight_bits = 8
  config.hw.input_bits = 8
  config.hw.dac_bits = 1
  config.hw.adc_bits = 5
  config.hw.adc_mode = "clip"
  config.hw.signed = "offset"

  # The compression recipe: which stages run after the float baseline and
  # on which layers (see experiments/recipe.py and docs/experiments.md).
  config.recipe = ml_collections.ConfigDict()
  # Any of 'prune', 'share', 'finetune', 'hwaware', in this order
  # ('finetune' needs 'share'); () keeps the float baseline.
  config.recipe.stages = ("prune", "share", "finetune")
  # rsjax.Rule's as 'REGEX [k=K | ratio=R] [sparsity=S]' over paths of the
  # params tree ('conv1/conv/kernel'), first match wins; a rule without
  # settings keeps its layers dense (still on crossbars).
  config.recipe.rules = ("kernel$ k=8 sparsity=0.3",)

  config.compress = ml_collections.ConfigDict()
  # Compress the BN-free model (BatchNorm folded into the kernels); False
  # keeps BatchNorm: kernels shared before its per-channel scale, BN
  # trained through sharing and fine-tune and run digitally after the
  # crossbars.
  config.compress.fold_bn = True
  # Knowledge distillation from the float baseline in the training stages
  # after it: loss = (1 - w) * CE + w * T^2 * KL(teacher || student) at
  # temperature T. 0: plain cross-entropy.
  config.compress.distill_weight = 0.0
  config.compress.distill_temperature = 4.0

  # OU pruning (rsjax.ou_pruning): the rules' sparsity, reached on an
  # rsjax.PruneSchedule over the stage's own training steps.
  config.prune = ml_collections.ConfigDict()
  # Training steps of the prune stage (0: prune once, no training).
  config.prune.steps = 0
  config.prune.learning_rate = 1e-3
  config.prune.begin = 0
  config.prune.end = 0
  config.prune.every = 100
  config.prune.power = 3.0
  config.prune.scope = "layer"  # or 'global'
  # How blocks are ranked: 'rms', 'l1' or 'grad_weight' (needs begin >= 1
  # and prune.steps > 0: it ranks by the training gradient).
  config.prune.score = "rms"

  config.share = ml_collections.ConfigDict()
  # 'ste': forward on the shared weights, straight-through gradient to the
  # dense latent weights (rsjax.ste_sharing); 'distance': the paper's
  # lam * ||W - Z||^2 loop (rsjax.distance_sharing).
  config.share.method = "ste"
  config.share.n_init = 4
  # Training steps with the sharing wrapper (0: one-shot k-means).
  config.share.steps = 1000
  config.share.learning_rate = 1e-3
  config.share.recluster_every = 100
  # The distance loop's regulariser weight (share.method='distance').
  config.share.lam = 1e-3
  # Per-layer k for this ou_ratio over the shared and pruned layers
  # (rsjax.allocate_k, probing the loss on allocate_examples training
  # images; the rules' k are replaced, their sparsity kept); 0: the rules'.
  config.share.allocate_ou_ratio = 0.0
  # Or per-layer k for allocate_target x less of allocate_objective
  # ('ou_ratio', 'energy' or 'latency' per inference, priced by
  # rsjax.hardware_cost) than the dense layout; 0: off.
  config.share.allocate_objective = "ou_ratio"
  config.share.allocate_target = 0.0
  config.share.allocate_examples = 1000

  # Centroid fine-tune with fixed assignments (rsjax.centroid_finetune).
  config.finetune = ml_collections.ConfigDict()
  config.finetune.steps = 1000
  config.finetune.learning_rate = 1e-3
  # Member gradients into a centroid: 'sum' (exact) or 'mean'.
  config.finetune.reduce = "sum"

  # Hardware-aware fine-tune (stage 'hwaware', off unless recipe.stages
  # names it): the forward on the crossbar emulator (rsjax.kernels.hwaware),
  # straight-through backward, keeping the model shared/pruned.
  config.hwaware = ml_collections.ConfigDict()
  config.hwaware.steps = 0
  config.hwaware.learning_rate = 1e-4
  # ADC of the emulated forward: 0 / '' take config.hw's.
  config.hwaware.adc_bits = 0
  config.hwaware.adc_mode = ""
  # Programming noise and stuck-at faults, drawn afresh every step.
  config.hwaware.program_sigma = 0.0
  config.hwaware.stuck_at_0 = 0.0
  config.hwaware.stuck_at_1 = 0.0
  # Re-calibrate the ADC ranges (adc_mode 'calibrated') every N steps on the
  # current weights and batch (0: once, at the start); input scales then
  # 'running_max' (raised to the largest input seen: they never saturate
  # for lack of range) or 'fixed' (kept; warns when inputs outgrow them).
  config.hwaware.recalibrate_every = 0
  config.hwaware.scales = "running_max"
  # Distillation from the float baseline during this stage (weight in
  # [0, 1], temperature compress.distill_temperature; 0: none).
  config.hwaware.distill_weight = 0.0
  # The backward: 'ste' (straight-through) or 'saturation' (also drops the
  # terms of OU partial sums the ADC saturates).
  config.hwaware.backward = "ste"

  # The real array every emulated evaluation runs on and the hwaware stage
  # trains against (devices, wires, ADC non-linearity; experiments/array.py,
  # docs/devices.md). The defaults are the ideal crossbar.
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
