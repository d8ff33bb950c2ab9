"""Trains AlexNet: the paper's recipe, or a small built-in run when no data is given.

``python train.py`` and the installed ``alexnet-train`` take the same flags.

    python train.py                                   # built-in data set, drawn and converted here
    python train.py --data_dir=/data/imagenet-records # the paper preset on converted ImageNet
    python train.py --dataset=imagenette --imagenette_dir=../shared/data/imagenette
    python train.py --preset=paper --synthetic --steps_per_epoch=20 --epochs=1   # time the step
    python train.py --dataset=imagenette --lrn=false  # a paper ablation (also --overlapping_pooling=false,
                                                      # --towers=1 --conv_width=0.5, --pca_std=0, --dropout=0)
    python train.py --image_dir=my_images --init_from=runs/imagenette --trainable_from=conv3  # fine-tune

``--image_dir=DIR`` (``train/<class>/`` and ``val/<class>/`` folders of images, any class names) is the
data set kind ``folders``: converted once into ``<workdir>/data``, like ``--dataset=imagenette
--imagenette_dir=...`` (Imagenette is the same layout with wnids as names), with ``--num_classes`` taken
from the folders. ``--init_from=SOURCE`` starts a fresh run from a trained network (BVLC AlexNet's
``.caffemodel`` / ``.npy``, or a work directory / ``model.keras`` of this project), all layers but fc8;
its default preset is then ``finetune``. See docs/finetuning.md.

Every field of ``alexnet_tf.config.Config`` is a flag (e.g. ``--batch_size=256``,
``--lr_schedule=step:30,60,80``, ``--precision=mixed_float16``,
``--export_precision=bfloat16``). Running again with the same ``--workdir`` resumes.
``--export_litert=MODEL.tflite`` also writes the trained model as a LiteRT file with int8 weights. Exit
statuses (``alexnet_tf/cli.py``): 0 done, 1 the loss became NaN, 2 bad flags or inputs (one line),
75 stopped by SIGTERM after a checkpoint: run the same command again to resume.
"""

from __future__ import annotations

import dataclasses
import json
import os

from alexnet_tf import console

console.quiet_tensorflow()  # before anything imports TensorFlow
console.reuse_cpu_memory()

from absl import app, flags, logging  # noqa: E402

from alexnet_tf import cli, distribute, finetune, folders, imagenette, paths, synthetic_data, training  # noqa: E402
from alexnet_tf import config as config_lib  # noqa: E402
from alexnet_tf import workdir as workdir_lib  # noqa: E402
from alexnet_tf.converter import ConversionError  # noqa: E402

DATASET_PRESETS = {"shapes": "shapes", "imagenette": "imagenette", "records": "paper", "synthetic": "paper",
                   "folders": "shapes"}
FINETUNE_PRESET = "finetune"  # the default preset with --init_from
DATASET_DESCRIPTIONS = {
    "shapes": "the built-in drawn figures, made and converted into {data_root}",
    "imagenette": "Imagenette from {imagenette}, converted into {data_root}",
    "records": "the converted records in {data_dir}",
    "synthetic": "random tensors (timing only)",
    "folders": "the class folders of {image_dir}, converted into {data_root}",
}

flags.DEFINE_enum("dataset", None, sorted(DATASET_PRESETS),
                  "shapes: the built-in drawn data set; imagenette: Imagenette (--imagenette_dir or "
                  "download); records: --data_dir; synthetic: random tensors; folders: --image_dir. "
                  "Default: folders with --image_dir, records with --data_dir, else shapes.")
flags.DEFINE_string("image_dir", None, "your own images: train/<class>/ and val/<class>/ folders, any class "
                    "names, or <class>/ folders only with --holdout_per_class (the data set kind 'folders'; "
                    "--num_classes follows the folders)")
flags.DEFINE_enum("preset", None, sorted(config_lib.PRESETS), "the run's settings; default follows --dataset")
flags.DEFINE_string("workdir", None, "where checkpoints, logs and results go (local or gs://...); "
                    "default runs/<preset>")
flags.DEFINE_string("imagenette_dir", None, "Imagenette JPEG folders (train/, val/); default: download")
flags.DEFINE_bool("synthetic", False, "same as --dataset=synthetic")
flags.DEFINE_integer("num_gpus", None, "GPUs to use (default all visible; 0 for the CPU)")
flags.DEFINE_string("export_litert", None, "at the end, also write a LiteRT file with int8 weights here "
                    "(MODEL.tflite; needs ai-edge-litert only to run it)")
for _field in dataclasses.fields(config_lib.Config):
    _define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float,
               str: flags.DEFINE_string}[type(_field.default)]
    _define(_field.name, None, f"Config.{_field.name} (default: the preset's, {_field.default!r} in paper)")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    dataset = FLAGS.dataset or ("synthetic" if FLAGS.synthetic else "folders" if FLAGS.image_dir
                                else "records" if FLAGS.data_dir else "shapes")
    if dataset == "folders" and not FLAGS.image_dir:
        raise config_lib.ConfigError("--dataset=folders needs --image_dir, a folder of train/<class>/ and "
                                     "val/<class>/ image folders")
    if FLAGS.image_dir and dataset != "folders":
        raise config_lib.ConfigError(f"--image_dir={FLAGS.image_dir} is the data set kind 'folders': leave "
                                     f"--dataset={dataset} out")
    preset = FLAGS.preset or (FINETUNE_PRESET if FLAGS.init_from else DATASET_PRESETS[dataset])
    overrides = {f.name: FLAGS[f.name].value for f in dataclasses.fields(config_lib.Config)
                 if FLAGS[f.name].value is not None}
    if dataset == "folders":
        overrides["num_classes"] = folders.check_num_classes(FLAGS.image_dir, FLAGS.num_classes)
    config = config_lib.get_config(preset, **overrides)  # checks every setting (ConfigError)
    config = finetune.source_config(config, explicit=overrides)  # the network of --init_from
    if FLAGS.export_litert and not FLAGS.export_litert.endswith(".tflite"):
        raise config_lib.ConfigError(f"--export_litert={FLAGS.export_litert!r}: name a .tflite file")
    workdir = FLAGS.workdir or os.path.join("runs", preset)
    for path, flag in ((workdir, "--workdir"), (config.data_dir, "--data_dir")):
        if path:
            paths.check_supported(path, flag)
    if dataset in ("records", "synthetic") and overrides.get("holdout_per_class"):
        raise config_lib.ConfigError(
            f"--holdout_per_class={config.holdout_per_class}: train.py holds images out when it converts them "
            "(--dataset=shapes, imagenette or --image_dir); records converted beforehand carry their own "
            "selection split: convert with data_prep/build_tfrecords.py --holdout_per_class")
    if dataset == "records" and not config.data_dir:
        raise config_lib.ConfigError("--dataset=records needs --data_dir, the converter's output")
    if dataset == "records" and not paths.isdir(config.data_dir):
        raise config_lib.ConfigError(f"--data_dir={config.data_dir}: no such directory; pass the converter's "
                                     "output directory (data_prep/build_tfrecords.py --output_directory)")
    if FLAGS.imagenette_dir and not paths.isdir(FLAGS.imagenette_dir):
        raise config_lib.ConfigError(f"--imagenette_dir={FLAGS.imagenette_dir}: no such directory; pass the "
                                     "folder that holds Imagenette's train/ and val/")
    strategy = distribute.make_strategy(FLAGS.num_gpus)  # --num_gpus checked before any data is made
    data_root = os.path.join(workdir, workdir_lib.DATA_DIR)
    what = DATASET_DESCRIPTIONS[dataset].format(data_root=data_root, data_dir=config.data_dir,
                                                 imagenette=FLAGS.imagenette_dir or "the download",
                                                 image_dir=FLAGS.image_dir)
    logging.info("Data set %s: %s; preset %s; results in %s", dataset, what, preset, paths.absolute(workdir))
    try:
        holdout = config.holdout_per_class
        if dataset == "shapes":
            data_dir = synthetic_data.prepare_shapes(data_root, seed=config.seed, holdout_per_class=holdout)
            config = config.replace(data_dir=data_dir)
        elif dataset == "imagenette":
            data_dir = imagenette.prepare_imagenette(data_root, config.image_size, FLAGS.imagenette_dir,
                                                     holdout_per_class=holdout)
            config = config.replace(data_dir=data_dir)
        elif dataset == "folders":
            config = config.replace(data_dir=folders.prepare_folders(FLAGS.image_dir, data_root, config.image_size,
                                                                     holdout_per_class=holdout,
                                                                     resize_mode=config.resize_mode))
            folders.write_run_classes(config.data_dir, workdir)
    except ConversionError as e:
        return cli.usage_error(str(e))
    try:
        summary = training.train(config, workdir, strategy=strategy, synthetic=dataset == "synthetic")
    except training.NonFiniteLossError as e:
        logging.error("%s", e)
        return cli.FAILED
    if FLAGS.export_litert and not summary.get("stopped"):
        from alexnet_tf import litert  # its runtime is an optional extra

        summary["litert"] = litert.export_run(workdir, FLAGS.export_litert)
    print(json.dumps(summary, indent=2))
    return cli.RESUMABLE if summary.get("stopped") else cli.OK


def run() -> None:
    """The command line: ``python train.py``, ``alexnet-train``."""
    cli.run(main, usage=__doc__)


if __name__ == "__main__":
    run()
