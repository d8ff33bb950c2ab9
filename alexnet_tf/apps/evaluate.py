"""Evaluates a trained AlexNet: centre-crop and 10-crop error, a report, the paper's figures.

``python evaluate.py`` and the installed ``alexnet-evaluate`` take the same flags.

  python evaluate.py --checkpoint=WORKDIR --data_dir=DATA --report_dir=REPORT [--figures]
  python evaluate.py --saved_model=EXPORT_DIR --data_dir=DATA --report_dir=REPORT
  python evaluate.py --checkpoint=WORKDIR --export_dir=EXPORT_DIR --export_precision=bfloat16
  python evaluate.py --checkpoint=WORKDIR --export_litert=MODEL.tflite   # int8 weights, any CPU
  python evaluate.py --litert=MODEL.tflite --data_dir=DATA --report_dir=REPORT
  python evaluate.py --curves --checkpoint=WORKDIR   # WORKDIR/curves.png from the run's logs only
  python evaluate.py --weights=bvlc_alexnet.caffemodel --data_dir=DATA [--mean_file=imagenet_mean.binaryproto]
"""

from __future__ import annotations

import os

from alexnet_tf import console

console.quiet_tensorflow()  # before anything imports TensorFlow
console.reuse_cpu_memory()

from absl import app, flags, logging  # noqa: E402

from alexnet_tf import cli, curves, distribute, evaluation, export, imagenet, litert, paths, reports, statistics  # noqa: E402
from alexnet_tf import workdir as workdir_lib  # noqa: E402
from alexnet_tf.config import EXPORT_PRECISIONS, ConfigError  # noqa: E402
from alexnet_tf.records import SYNSETS_FILE  # noqa: E402

flags.DEFINE_string("checkpoint", None, "A training workdir (model.keras or checkpoints/) or a .keras file.")
flags.DEFINE_string("saved_model", None, "A SavedModel written by export.export_saved_model.")
flags.DEFINE_string("data_dir", None, "Directory of validation-* (and train-*) shards; default the run's.")
flags.DEFINE_string("report_dir", None, "Where report.json and report.md (and figures/) go.")
flags.DEFINE_integer("batch_size", 0, "Images per batch; 0 keeps the run's.")
flags.DEFINE_bool("ten_crop", True, "Also run the paper's 10-crop test.")
flags.DEFINE_string("synsets", None, "wnids in label order; default the converter's synsets.txt, else ImageNet's.")
flags.DEFINE_bool("figures", False, "Also draw Figures 3 and 4 (needs --checkpoint).")
flags.DEFINE_integer("num_gpus", None, "GPUs to evaluate on, as in train.py (default all visible; 0 for the CPU).")
flags.DEFINE_integer("figure_train_images", 2000, "Training images searched for Figure 4's neighbours.")
flags.DEFINE_string("export_dir", None, "With --checkpoint: also write the serving SavedModel here (e.g. .../1).")
flags.DEFINE_enum("export_precision", "float32", list(EXPORT_PRECISIONS),
                  "Weights of the --export_dir SavedModel: as trained, or stored in bfloat16.")
flags.DEFINE_string("export_litert", None, "With --checkpoint: also write a LiteRT file with int8 weights here "
                    "(MODEL.tflite, with MODEL.labels.txt and MODEL.json beside it).")
flags.DEFINE_string("litert", None, "Evaluate a LiteRT file written by --export_litert (needs ai-edge-litert).")
flags.DEFINE_bool("curves", False, "With --checkpoint=WORKDIR: draw WORKDIR/curves.png (loss and errors against "
                  "epochs) from the run's logs; evaluates too only when --report_dir, --data_dir, "
                  "--export_dir or --figures asks for it.")
flags.DEFINE_string("weights", None, "BVLC AlexNet's .caffemodel or .npy, evaluated with Caffe's conventions "
                    "(docs/reference-weights.md).")
flags.DEFINE_string("mean_file", None, "With --weights: Caffe's mean image (.binaryproto); default its "
                    "per-channel mean.")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    if sum(bool(f) for f in (FLAGS.checkpoint, FLAGS.saved_model, FLAGS.litert, FLAGS.weights)) != 1:
        raise app.UsageError("pass exactly one of --checkpoint and --saved_model (or --litert, or --weights)")
    if FLAGS.mean_file and not FLAGS.weights:
        raise app.UsageError("--mean_file is Caffe's mean image: it goes with --weights")
    if FLAGS.export_litert and not FLAGS.checkpoint:
        raise app.UsageError("--export_litert needs --checkpoint (the Keras model to export)")
    if FLAGS.figures and not (FLAGS.checkpoint and FLAGS.report_dir):
        raise app.UsageError("--figures needs --checkpoint (the Keras model's conv1 and fc7) and --report_dir")
    if FLAGS.export_dir and not FLAGS.checkpoint:
        raise app.UsageError("--export_dir needs --checkpoint (the Keras model to export)")
    for flag in ("checkpoint", "saved_model", "data_dir", "report_dir", "export_dir", "synsets", "weights",
                 "mean_file", "export_litert", "litert"):
        if FLAGS[flag].value:
            paths.check_supported(FLAGS[flag].value, f"--{flag}")
    for flag, what in (("checkpoint", "a training work directory or a .keras file"),
                       ("saved_model", "a directory written by the export (e.g. WORKDIR/saved_model/1)"),
                       ("data_dir", "the converter's output directory"), ("synsets", "a file of wnids"),
                       ("weights", "BVLC AlexNet's .caffemodel or .npy"),
                       ("mean_file", "Caffe's imagenet_mean.binaryproto"),
                       ("litert", "a .tflite file written by --export_litert")):
        if FLAGS[flag].value and not paths.exists(FLAGS[flag].value):
            raise ConfigError(f"--{flag}={FLAGS[flag].value}: no such file or directory; pass {what}")
    if FLAGS.curves:
        if not (FLAGS.checkpoint and paths.isdir(FLAGS.checkpoint)):
            raise app.UsageError("--curves needs --checkpoint=WORKDIR, a training work directory (logs/ inside)")
        # Before the evaluation, so that its report.md links the picture.
        drawn = curves.draw_curves(FLAGS.checkpoint)
        logging.info("Drew %s (%d steps per epoch, learning rate drops after epochs %s)", drawn.path,
                     drawn.steps_per_epoch, [epoch for epoch, _ in drawn.lr_drops])
        if not (FLAGS.report_dir or FLAGS.data_dir or FLAGS.export_dir or FLAGS.figures):
            return
    strategy = None
    stats = None
    if FLAGS.weights:
        from alexnet_tf import caffe

        model, config, stats = caffe.reference_evaluation(FLAGS.weights, FLAGS.mean_file or "")
    elif FLAGS.checkpoint:
        # The same strategy as training: the Keras model's variables are mirrored over the GPUs.
        strategy = distribute.make_strategy(FLAGS.num_gpus)
        with strategy.scope():
            model, config = workdir_lib.load_model(FLAGS.checkpoint)
    elif FLAGS.litert:
        model, config, stats = litert.load_predictor(FLAGS.litert)
    else:
        model, config = export.load_predictor(FLAGS.saved_model)
    if FLAGS.batch_size:
        config = config.replace(batch_size=FLAGS.batch_size)
    data_dir = FLAGS.data_dir or config.data_dir
    if not data_dir:
        raise app.UsageError("--data_dir is required: the run's configuration names no data_dir")
    synsets = FLAGS.synsets
    if not synsets and paths.exists(os.path.join(data_dir, SYNSETS_FILE)):
        synsets = os.path.join(data_dir, SYNSETS_FILE)
    labels = reports.class_labels(config.num_classes, synsets) if synsets or config.num_classes == 1000 else None
    names = labels[1] if labels else None
    # The model's training-set statistics, else (older runs) the data directory's.
    stats = stats or workdir_lib.model_statistics(FLAGS.checkpoint or FLAGS.saved_model)
    if FLAGS.export_dir:
        wnids, export_names = labels or (imagenet.fallback_class_names(config.num_classes),) * 2
        export.export_saved_model(model, FLAGS.export_dir, config, stats or statistics.load_statistics(data_dir),
                                  wnids, export_names, precision=FLAGS.export_precision)
    if FLAGS.export_litert:
        wnids, export_names = labels or (imagenet.fallback_class_names(config.num_classes),) * 2
        litert.export_litert(model, FLAGS.export_litert, config, stats or statistics.load_statistics(data_dir),
                             wnids, export_names)
    report = evaluation.evaluate(model, config, data_dir, FLAGS.report_dir, strategy=strategy, ten_crop=FLAGS.ten_crop,
                                 class_names=names, stats=stats)
    for view in ("center_crop", "ten_crop"):
        if view in report:
            logging.info("%s: top-1 error %.2f%%, top-5 error %.2f%%", view,
                         100 * report[view]["top1_error"], 100 * report[view]["top5_error"])
    if FLAGS.figures:
        from alexnet_tf import figures

        figures.make_figures(model, config, data_dir, os.path.join(FLAGS.report_dir, figures.FIGURES_DIR),
                             class_names=names, max_train_images=FLAGS.figure_train_images)


def run() -> None:
    """The command line: ``python evaluate.py``, ``alexnet-evaluate``."""
    cli.run(main, usage=__doc__)


if __name__ == "__main__":
    run()
