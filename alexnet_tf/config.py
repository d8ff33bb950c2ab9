"""One configuration for a whole run, the paper's by default; presets override a few fields.

Command-line flags override fields of a preset (``train.py``); code is never edited to change a
run. The resolved configuration is saved beside the run's outputs as JSON.

Every rule about the configuration's own values lives here: a ``Config`` checks itself when it
is made (``_validate``) and raises ``ConfigError`` naming the flag and the fix. Checks of the
machine or the data (GPUs visible, records present, enough images for a batch) stay where that
is known, and raise ``ConfigError`` too; the command lines print it as one line and exit with
status 2 (``cli.py``).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

# The enumerations, each defined once.
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")  # training: Keras mixed-precision policies
EXPORT_PRECISIONS = ("float32", "bfloat16")  # the serving export's weights
WEIGHT_INITS = ("paper", "he")  # N(0, 0.01), or He-scaled for narrow CPU variants (model.py)
BIAS_INITS = ("paper", "caffe")  # 1 or 0.1 in conv2/4/5 and fc6/7 (model.POSITIVE_BIAS)
MEAN_SUBTRACTION_MODES = ("image", "channel")  # the paper's mean image, or a per-channel mean
LR_SCHEDULE_FORMS = "'plateau' or 'step:E1,E2,...' with increasing epochs, e.g. step:30,60,80"
# conv1 (11, stride 4) and three poolings must leave pool5 at least one pixel wide: the smallest
# input for 3x3/2 pooling, and for the 2x2/2 pooling of the ablation (model.feature_map_sizes).
SMALLEST_INPUT = {True: 67, False: 39}
# Conventions a network's weights were trained with (section 3.3's LRN, the input's channel order,
# where the mean comes from, how images were brought to image_size). The paper's are the
# defaults; imported Caffe weights carry Caffe's (caffe.py). Each enumeration is defined here once.
LRN_ALPHA_CONVENTIONS = ("paper", "caffe")  # alpha times the sum of squares / alpha / n times it
CHANNEL_ORDERS = ("rgb", "bgr")
MEAN_SOURCES = ("data", "caffe")  # the converter's training-set statistics / Caffe's ILSVRC-2012 mean
RESIZE_MODES = ("crop", "squash")  # shorter side then the central square / both sides, aspect not kept
# The network's layers with weights, input to output: --trainable_from names one ("" trains all).
WEIGHT_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")


class ConfigError(ValueError):
    """A setting, or a combination of settings, inputs and machine, that cannot work.

    The message names the flag (or the file) and what to do; the command lines show it as one
    line, without a traceback, and exit with status 2.
    """


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of a run. Defaults are the paper's (sections 3-5)."""

    # Model (section 3).
    num_classes: int = 1000
    input_size: int = 227  # the paper's 224 cannot give 55x55 after conv1; see model.py
    width: float = 1.0  # multiplies every layer's width; 1.0 is the paper's network
    towers: int = 2  # conv2, conv4, conv5 split across the paper's two GPUs
    dropout: float = 0.5
    bias_init: str = "paper"  # "paper" (1 in conv2/4/5, fc6/7) or "caffe" (0.1 there)
    weight_init: str = "paper"  # "paper" (N(0, 0.01)) or "he" (for narrow CPU variants)
    # The paper's ablations (sections 3.2-3.4): each on, or paper-valued, here; off, one at a time.
    lrn: bool = True  # LRN after conv1 and conv2 (section 3.3); off: no LRN layers
    overlapping_pooling: bool = True  # 3x3/2 pooling (section 3.4); off: 2x2/2, the same sizes
    conv_width: float = 1.0  # multiplies the convolutions' channels only; 0.5 with towers=1 is 3.2's one-GPU net
    batch_norm: bool = False  # not in the paper (off there): batch normalisation before each conv's ReLU
    # LRN constants (section 3.3: k = 2, alpha = 1e-4 on the plain sum). Caffe's bvlc_alexnet: k = 1 and
    # alpha = 1e-4 divided by n = 5 ("caffe" convention).
    lrn_k: float = 2.0
    lrn_alpha: float = 1e-4
    lrn_alpha_convention: str = "paper"  # one of LRN_ALPHA_CONVENTIONS
    # The channel order conv1's weights were trained on. Imported BGR kernels are flipped to RGB, so the
    # model's input is RGB whatever this says; it records where the weights came from.
    channel_order: str = "rgb"  # one of CHANNEL_ORDERS

    # Data (sections 2 and 4).
    data_dir: str = ""  # the converter's output: shards, manifest and statistics
    image_size: int = 256  # shorter side rescaled to this, then the central square
    mean_subtraction: str = "image"  # "image" (the paper's mean image) or "channel"
    mean_source: str = "data"  # one of MEAN_SOURCES; "caffe" with "image" needs mean_file
    mean_file: str = ""  # Caffe's mean image (.binaryproto), with mean_source="caffe"
    resize_mode: str = "crop"  # one of RESIZE_MODES: the paper's (section 2), or Caffe's squash to 256x256
    pca_std: float = 0.1  # std of the PCA colour noise coefficients; 0 turns it off
    label_offset: int = 0  # 1 for shards written with 1-based labels
    # Training images per class held out as the selection split when train.py converts a data set
    # (its holdout-* shards): the plateau schedule and the per-epoch check watch it, so settings are
    # chosen on images that neither train nor score. Records converted beforehand carry their own.
    holdout_per_class: int = 0
    shuffle_buffer: int = 10_000
    deterministic: bool = False  # seeded, order-preserving pipeline for reproducible runs
    seed: int = 0

    # Training (section 5).
    batch_size: int = 128  # global: split across replicas
    epochs: int = 90
    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0005  # inside the momentum, as in the paper's update rule
    # Not in the paper (off there): the training targets' share spread evenly over all classes,
    # 1 - s + s/K on the true class and s/K elsewhere. The validation loss stays plain cross-entropy.
    label_smoothing: float = 0.0
    lr_schedule: str = "plateau"  # "plateau" or "step:30,60,80" (epochs at which lr /= 10)
    plateau_patience: int = 5  # epochs without a better validation top-1 error
    max_lr_reductions: int = 3
    precision: str = "float32"  # "float32", "mixed_float16" or "mixed_bfloat16"
    jit_compile: bool = False
    # Warn once when the training loss is still within 2 % of ln(num_classes) after this many
    # steps: training that never started (init, learning rate, labels). 0 turns it off.
    stall_warning_steps: int = 1000
    steps_per_epoch: int = 0  # 0: one pass over the training records
    checkpoint_every_steps: int = 0  # 0: at the end of each epoch only
    # Training steps per call to the device (one tf.function): the host (progress bar, TensorBoard,
    # SIGTERM, NaN check, checkpoints) sees the run once per loop. 20 is the smallest value tried that
    # met benchmarks/training.py --parts=loop's goal (docs/benchmarks.md, "Loops of steps").
    steps_per_loop: int = 20
    profile_steps: str = ""  # "a,b": a TensorBoard profile of global steps a to b (logs/profile)

    # Fine-tuning (finetune.py). A fresh run starts from this source's weights, all but fc8's:
    # a .caffemodel / .npy of BVLC AlexNet, or a work directory / model.keras of this project.
    init_from: str = ""
    # The lowest layer that trains; the layers below it (and their batch normalisation, which then
    # runs in inference mode) stay as they are. "" trains every layer.
    trainable_from: str = ""

    # Serving export (export.py).
    export_precision: str = "float32"  # "float32" or "bfloat16" (weights stored in bfloat16)

    def __post_init__(self) -> None:
        _validate(self)

    def replace(self, **overrides: Any) -> Config:
        """A copy with ``overrides`` applied; unknown names or values that cannot work raise ``ConfigError``."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; known fields: {sorted(known)}")
        return dataclasses.replace(self, **overrides)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Config:
        return cls().replace(**json.loads(text))


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    # A scaled-down network that trains in seconds on a CPU; used by tests.
    "tiny": dict(
        num_classes=10, input_size=67, width=0.125, image_size=76, batch_size=16, epochs=2,
        shuffle_buffer=256,
    ),
    # The built-in default run (``python train.py``): the drawn data set of synthetic_data.py,
    # 10 classes of 300 + 50 images; minutes on 2 CPU cores.
    "shapes": dict(
        num_classes=10, input_size=67, width=0.25, image_size=76, bias_init="caffe", weight_init="he",
        batch_size=32, learning_rate=0.001, epochs=10, shuffle_buffer=3000, plateau_patience=2,
        holdout_per_class=30,
    ),
    # Imagenette (10 ImageNet classes, 9,469 training images) on CPUs. With the pixels scaled
    # before conv1 ("he") and a fixed step schedule (the plateau rule cut the rate too early on a
    # noisy 500-image validation set): 27 epochs of batch 32, the rate divided by 10 after 24 and
    # 26. Batch normalisation (not in the paper) together with the paper's rate of 0.01; without
    # them (--batch_norm=false --learning_rate=0.003) it is the paper's network, on which the
    # ablations are measured. 50 training images per class are held out as the selection split the
    # settings were chosen on. XLA keeps the run inside the 20-minute budget on 2 cores; it refuses
    # --deterministic. Runs, seeds and minutes: docs/results-imagenette.md.
    "imagenette": dict(
        num_classes=10, input_size=99, width=0.5, image_size=112, bias_init="caffe", weight_init="he",
        batch_size=32, learning_rate=0.01, dropout=0.5, lr_schedule="step:24,26", batch_norm=True,
        epochs=27, shuffle_buffer=4000, jit_compile=True, holdout_per_class=50,
    ),
    # Fine-tuning a trained network on a folder of images (train.py --init_from --image_dir): the
    # architecture and conventions come from the source; every layer trains at the paper's rate,
    # divided by 10 for the last 6 of 30 epochs. Chosen among six settings on a selection split
    # (held-out training images), not on the images that score it: docs/finetuning.md.
    "finetune": dict(
        batch_size=32, learning_rate=0.01, epochs=30, lr_schedule="step:24", shuffle_buffer=2000,
    ),
}


def get_config(preset: str = "paper", **overrides: Any) -> Config:
    """The named preset with ``overrides`` applied (checked once, as a whole)."""
    if preset not in PRESETS:
        raise ConfigError(f"--preset={preset!r}: choose one of {', '.join(sorted(PRESETS))}")
    return Config().replace(**{**PRESETS[preset], **overrides})


# --------------------------------------------------------------------------------------------
# The rules


def _choose(flag: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"--{flag}={value!r}: choose one of {', '.join(choices)}")


def _require(condition: bool, flag: str, value: Any, rule: str) -> None:
    if not condition:
        raise ConfigError(f"--{flag}={value!r}: {rule}")


def check_model(input_size: int, width: float, towers: int, conv_width: float, dropout: float, bias_init: str,
                weight_init: str, overlapping_pooling: bool, num_classes: int) -> None:
    """The network's rules, shared by ``Config`` and ``model.build_alexnet``'s arguments."""
    _require(num_classes >= 1, "num_classes", num_classes, "give at least one class")
    smallest = SMALLEST_INPUT[bool(overlapping_pooling)]
    _require(input_size >= smallest, "input_size", input_size,
             f"too small: pool5 would be empty; use at least {smallest}")
    _require(width > 0, "width", width, "must be positive (1.0 is the paper's network)")
    _require(conv_width > 0, "conv_width", conv_width, "must be positive (1.0 is the paper's network)")
    _require(towers >= 1, "towers", towers, "must be at least 1 (2 is the paper's network)")
    _require(0.0 <= dropout < 1.0, "dropout", dropout, "must be at least 0 and below 1 (0.5 in the paper)")
    _choose("bias_init", bias_init, BIAS_INITS)
    _choose("weight_init", weight_init, WEIGHT_INITS)


def parse_lr_schedule(spec: str) -> tuple[str, tuple[int, ...]]:
    """``"plateau"`` -> ("plateau", ()); ``"step:30,60,80"`` -> ("step", (30, 60, 80)).

    Raises:
      ConfigError: naming ``--lr_schedule`` when ``spec`` is neither form.
    """
    if spec == "plateau":
        return "plateau", ()
    if spec.startswith("step:"):
        try:
            boundaries = tuple(int(v) for v in spec[len("step:"):].split(","))
        except ValueError:
            boundaries = ()
        if boundaries and all(b > 0 for b in boundaries) and list(boundaries) == sorted(set(boundaries)):
            return "step", boundaries
    raise ConfigError(f"--lr_schedule={spec!r}: use {LR_SCHEDULE_FORMS}")


def parse_profile_steps(spec: str) -> tuple[int, int] | None:
    """``--profile_steps=a,b`` as (a, b): global steps, counted from 1, both profiled; None for "".

    Raises:
      ConfigError: naming the flag, when ``spec`` is not two steps ``1 <= a <= b``.
    """
    if not spec:
        return None
    try:
        first, last = (int(part) for part in spec.split(","))
    except ValueError:
        first = last = 0
    if not 1 <= first <= last:
        raise ConfigError(f"--profile_steps={spec!r}: give the first and last global step to profile, "
                          "counted from 1, e.g. --profile_steps=20,25")
    return first, last


def _validate(config: Config) -> None:
    """Every rule about a configuration's own values; ``ConfigError`` for the first broken one."""
    c = config
    check_model(c.input_size, c.width, c.towers, c.conv_width, c.dropout, c.bias_init, c.weight_init,
                c.overlapping_pooling, c.num_classes)
    # Data.
    _require(c.image_size >= c.input_size, "image_size", c.image_size,
             f"smaller than --input_size={c.input_size}: the crop must fit inside the central square; "
             "lower --input_size or raise --image_size")
    _choose("mean_subtraction", c.mean_subtraction, MEAN_SUBTRACTION_MODES)
    _require(c.pca_std >= 0, "pca_std", c.pca_std, "must be at least 0 (0 turns the colour noise off)")
    _require(c.label_offset >= 0, "label_offset", c.label_offset, "use 0 for 0-based labels, 1 for 1-based")
    _require(c.shuffle_buffer >= 1, "shuffle_buffer", c.shuffle_buffer, "must be at least 1")
    # Training.
    _require(c.batch_size >= 1, "batch_size", c.batch_size, "must be at least 1 (128 in the paper)")
    _require(c.epochs >= 0, "epochs", c.epochs, "must be at least 0")
    _require(c.learning_rate >= 0, "learning_rate", c.learning_rate, "must be at least 0 (0.01 in the paper)")
    _require(0.0 <= c.momentum < 1.0, "momentum", c.momentum, "must be at least 0 and below 1 (0.9 in the paper)")
    _require(c.weight_decay >= 0, "weight_decay", c.weight_decay, "must be at least 0 (0.0005 in the paper)")
    _require(0.0 <= c.label_smoothing < 1.0, "label_smoothing", c.label_smoothing, "must be at least 0 and below 1")
    parse_lr_schedule(c.lr_schedule)
    _require(c.plateau_patience >= 1, "plateau_patience", c.plateau_patience, "must be at least 1 epoch")
    _require(c.max_lr_reductions >= 0, "max_lr_reductions", c.max_lr_reductions, "must be at least 0")
    _choose("precision", c.precision, PRECISIONS)
    _require(c.stall_warning_steps >= 0, "stall_warning_steps", c.stall_warning_steps, "must be at least 0 (0: off)")
    _require(c.steps_per_epoch >= 0, "steps_per_epoch", c.steps_per_epoch,
             "must be at least 0 (0: one pass over the training records)")
    _require(c.checkpoint_every_steps >= 0, "checkpoint_every_steps", c.checkpoint_every_steps,
             "must be at least 0 (0: at the end of each epoch only)")
    _require(c.steps_per_loop >= 1, "steps_per_loop", c.steps_per_loop, "run at least 1 step per loop")
    parse_profile_steps(c.profile_steps)
    if c.deterministic and c.jit_compile:
        raise ConfigError("--deterministic and --jit_compile (on in the imagenette preset): XLA has no "
                          "deterministic max-pool gradient; choose one (--nojit_compile for a deterministic run)")
    _choose("export_precision", c.export_precision, EXPORT_PRECISIONS)
    _require(c.trainable_from in ("", *WEIGHT_LAYERS), "trainable_from", c.trainable_from,
             f"name one of {', '.join(WEIGHT_LAYERS)}, the lowest layer that trains, or '' to train all")
    # The conventions the weights were trained with (the paper's, or imported Caffe weights').
    _choose("lrn_alpha_convention", c.lrn_alpha_convention, LRN_ALPHA_CONVENTIONS)
    _choose("channel_order", c.channel_order, CHANNEL_ORDERS)
    _choose("mean_source", c.mean_source, MEAN_SOURCES)
    _choose("resize_mode", c.resize_mode, RESIZE_MODES)
    _require(c.holdout_per_class >= 0, "holdout_per_class", c.holdout_per_class,
             "must be 0 (no selection split) or more")
    _require(c.lrn_k >= 0, "lrn_k", c.lrn_k, "must not be negative (2 in the paper, 1 in Caffe)")
    _require(c.lrn_alpha >= 0, "lrn_alpha", c.lrn_alpha, "must not be negative (1e-4 in the paper and in Caffe)")
    if c.mean_file and c.mean_source != "caffe":
        raise ConfigError(f"--mean_file={c.mean_file!r} is Caffe's mean image: pass --mean_source=caffe too")
    if c.mean_source == "caffe" and c.mean_subtraction == "image" and not c.mean_file:
        raise ConfigError("--mean_source=caffe with --mean_subtraction=image needs --mean_file (Caffe's "
                          "imagenet_mean.binaryproto); or --mean_subtraction=channel for its per-channel mean")
