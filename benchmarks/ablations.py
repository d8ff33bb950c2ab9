"""The paper's ablations on Imagenette: each design choice switched off, beside the paper's claim.

    python benchmarks/ablations.py                        # everything: 3 baseline seeds + 6 ablations
    python benchmarks/ablations.py --epochs=1 --steps_per_epoch=5 --only=baseline,lrn --seeds=0   # a try

Runs ``train.py`` with the ``imagenette`` preset once per switch turned off (one seed, the first
of ``--seeds``) and the baseline once per seed, each in its own work directory under
``--out_dir``. Every run adds ``--train_flags``: by default ``--batch_norm=false
--learning_rate=0.003``, the paper's network, which the claims are about (the preset adds batch
normalisation, not in the paper). Imagenette is converted once
(``imagenette.prepare_imagenette``, the function ``train.py --dataset=imagenette`` calls, so the
records are the same, with the preset's selection split held out of the training images) and
every run reads those records. A run whose ``summary.json`` exists is
skipped, and an interrupted one resumes from its checkpoint, so the command can be run again
until everything is done.

Writes ``ablations.json`` and ``ablations.md`` to ``--out_dir``: top-1 and top-5 error on the
selection split (the last epoch's check) and on the validation set with the centre crop and 10
crops for every run, each ablation's change against the baseline's mean over its seeds beside the
paper's claimed change, and the baseline's seed-to-seed spread, the noise the changes are to be
read against. A change counts only when the run lies outside the baseline's range **on the
selection split**: the verdicts are judged there, and the validation images only score.
(Outside ``--deterministic`` a seed fixes the initial weights and dropout, not the order of the
records or the augmentation, so pairing runs by seed would not remove that noise.) The last line
printed is one JSON object.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time

import harness

harness.setup()  # before anything imports TensorFlow

from absl import app, flags, logging  # noqa: E402

from alexnet_tf import imagenette  # noqa: E402
from alexnet_tf.config import get_config  # noqa: E402

PRESET = "imagenette"
SUMMARY_FILE = "summary.json"  # training's summary, one per work directory
RUN_FILE = "ablation_run.json"  # this script's record of a run: flags, seed, minutes
# (summary key, column title); errors as fractions in summary.json.
FIGURES = (
    ("holdout_top1_error", "top-1 selection"),  # the held-out training images: what verdicts are judged on
    ("holdout_top5_error", "top-5 selection"),
    ("val_top1_error", "top-1 centre"),
    ("val_top5_error", "top-5 centre"),
    ("val_ten_crop_top1_error", "top-1 10-crop"),
    ("val_ten_crop_top5_error", "top-5 10-crop"),
)


@dataclasses.dataclass(frozen=True)
class Ablation:
    """One switch turned off.

    Attributes:
      name: the run's name (and work directory).
      flags: ``train.py`` flags that turn it off.
      claim: the paper's claimed effect of turning it off, in words.
      top1: the paper's claimed change of top-1 error in points (None: no number given).
      top5: the same for top-5 error.
    """

    name: str
    flags: tuple[str, ...]
    claim: str
    top1: float | None = None
    top5: float | None = None


# The paper's numbers are for ILSVRC (PAPER_FACTS.md); the changes are "with the switch off".
ABLATIONS = (
    Ablation("lrn", ("--lrn=false",), "section 3.3: LRN lowers top-1 / top-5 error by 1.4 / 1.2 points",
             1.4, 1.2),
    Ablation("overlapping_pooling", ("--overlapping_pooling=false",),
             "section 3.4: overlapping pooling lowers them by 0.4 / 0.3 points", 0.4, 0.3),
    Ablation("pca", ("--pca_std=0",), "section 4.1: PCA colour noise lowers top-1 error by over 1 point", 1.0),
    Ablation("dropout", ("--dropout=0",), "section 4.2: without dropout the network overfits substantially"),
    Ablation("one_tower_half", ("--towers=1", "--conv_width=0.5"),
             "section 3.2: two towers beat one with half the kernels per conv layer by 1.7 / 1.2 points",
             1.7, 1.2),
    Ablation("one_tower", ("--towers=1",),
             "not in the paper: one tower at full width (Caffe-style single-GPU ports)"),
)
BASELINE = "baseline"

flags.DEFINE_string("out_dir", os.path.join(harness.ROOT, "runs", "ablations"), "work directories and the tables")
flags.DEFINE_string("imagenette_dir", str(harness.SHARED_DATA / "imagenette"),
                    "Imagenette JPEG folders (train/, val/); empty: download")
flags.DEFINE_list("seeds", ["0", "1", "2"], "baseline seeds; the ablations use the first")
flags.DEFINE_list("only", [], f"runs to do, from {[BASELINE] + [a.name for a in ABLATIONS]}; default all")
# The paper's ablations are of the paper's network: the preset without batch normalisation (not in
# the paper; behind it LRN's inputs are of order 1 and its divisor close to the constant 2^0.75, at
# least at the start), at the rate that network trains with.
flags.DEFINE_list("train_flags", ["--batch_norm=false", "--learning_rate=0.003"],
                  "train.py flags added to every run, baseline and ablations; empty: the preset itself")
flags.DEFINE_integer("epochs", 0, "epochs per run; 0 keeps the preset's")
flags.DEFINE_integer("steps_per_epoch", 0, "steps per epoch; 0: one pass over the training set")
FLAGS = flags.FLAGS


def _workdir(name: str, seed: int) -> str:
    return os.path.join(FLAGS.out_dir, f"{name}_seed{seed}")


def run(name: str, seed: int, switch_flags: tuple[str, ...], data_dir: str) -> dict:
    """Trains one run (or finds it done) and returns its record: flags, seed, minutes, figures."""
    workdir = _workdir(name, seed)
    summary_path = os.path.join(workdir, SUMMARY_FILE)
    record_path = os.path.join(workdir, RUN_FILE)
    command = [sys.executable, str(harness.ROOT / "train.py"), f"--preset={PRESET}", f"--data_dir={data_dir}",
               f"--workdir={workdir}", f"--seed={seed}", *FLAGS.train_flags, *switch_flags]
    if FLAGS.epochs:
        command.append(f"--epochs={FLAGS.epochs}")
    if FLAGS.steps_per_epoch:
        command.append(f"--steps_per_epoch={FLAGS.steps_per_epoch}")
    if os.path.exists(summary_path):
        logging.info("%s: done before (%s), skipped", name, summary_path)
    else:
        os.makedirs(workdir, exist_ok=True)
        logging.info("%s, seed %d: %s", name, seed, " ".join(command))
        start = time.perf_counter()
        with open(os.path.join(workdir, "train.log"), "a", encoding="utf-8") as log:
            status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
        if status != 0 or not os.path.exists(summary_path):
            raise RuntimeError(f"{name}: train.py exited with status {status}; see {workdir}/train.log")
        minutes = (time.perf_counter() - start) / 60
        with open(record_path, "w", encoding="utf-8") as f:
            json.dump({"name": name, "seed": seed, "flags": list(switch_flags), "command": command,
                       "minutes": minutes}, f, indent=2)
    with open(summary_path, encoding="utf-8") as f:
        summary = json.load(f)
    record = {"name": name, "seed": seed, "flags": list(switch_flags), "workdir": workdir,
              "epochs": summary["epochs_completed"], "minutes": None}
    if os.path.exists(record_path):
        with open(record_path, encoding="utf-8") as f:
            record["minutes"] = json.load(f)["minutes"]
    record.update({key: summary.get(key) for key, _ in FIGURES})
    return record


def spread(values: list[float]) -> dict[str, float | None]:
    """Mean, range and standard deviation (None for one value) of ``values``."""
    return {"mean": statistics.mean(values), "min": min(values), "max": max(values),
            "std": statistics.stdev(values) if len(values) > 1 else None}


def compare(baseline: list[dict], ablations: list[tuple[Ablation, dict]]) -> list[dict]:
    """Each ablation's change against the baseline's mean, beside the paper's; beyond the noise or not."""
    rows = []
    noise = {key: spread([r[key] for r in baseline]) for key, _ in FIGURES} if baseline else {}
    for ablation, record in ablations:
        change = {key: 100 * (record[key] - noise[key]["mean"]) if noise else None for key, _ in FIGURES}
        # Noise: the baseline's seed-to-seed range. Unknown with fewer than two seeds.
        within = {key: None if len(baseline) < 2 else noise[key]["min"] <= record[key] <= noise[key]["max"]
                  for key, _ in FIGURES}
        rows.append({"name": ablation.name, "flags": list(ablation.flags), "claim": ablation.claim,
                     "paper_top1_change": ablation.top1, "paper_top5_change": ablation.top5,
                     "change_points": change, "within_baseline_range": within, **record})
    return rows


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _points(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}"


def markdown(baseline: list[dict], rows: list[dict], noise: dict) -> str:
    """The tables of ``ablations.md``."""
    lines = ["# The paper's ablations on Imagenette", "",
             f"Preset `{PRESET}` with `{' '.join(FLAGS.train_flags) or 'nothing'}` added to every run; "
             "errors in %: 'selection' on the training images held out as the selection split (centre crop, "
             "the last epoch's check), the others on the 500 validation images; changes in points against the "
             "baseline's mean over its seeds (positive: the switch off made the error worse). Verdicts are "
             "judged on the selection split.", "",
             "| run | flags | seed | epochs | minutes | " + " | ".join(t for _, t in FIGURES) + " |",
             "|---|---|---|---|---|" + "---|" * len(FIGURES)]
    for r in baseline + rows:
        minutes = "-" if r["minutes"] is None else f"{r['minutes']:.1f}"
        lines.append(f"| {r['name']} | `{' '.join(r['flags'])}` | {r['seed']} | {r['epochs']} | {minutes} | "
                     + " | ".join(_pct(r[k]) for k, _ in FIGURES) + " |")
    lines += ["", "## Baseline seed-to-seed spread", ""]
    if len(baseline) > 1:
        lines += ["| figure | mean | min | max | std |", "|---|---|---|---|---|"]
        lines += [f"| {t} | {_pct(noise[k]['mean'])} | {_pct(noise[k]['min'])} | {_pct(noise[k]['max'])} | "
                  f"{_pct(noise[k]['std'])} |" for k, t in FIGURES]
    else:
        lines.append(f"{len(baseline)} baseline seed(s): no spread measured, so no change below can be told "
                     "from noise.")
    lines += ["", "## Changes against the paper's claims", "",
              "| switched off | top-1 selection | top-1 centre | top-1 10-crop | top-5 10-crop | paper (top-1 / top-5) "
              "| beyond the baseline's range (top-1 selection) | the paper's claim |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        change, within = r["change_points"], r["within_baseline_range"]["holdout_top1_error"]
        verdict = "unknown" if within is None else ("no: within the noise" if within else "yes")
        paper = f"{_points(r['paper_top1_change'])} / {_points(r['paper_top5_change'])}"
        lines.append(f"| {r['name']} | {_points(change['holdout_top1_error'])} | {_points(change['val_top1_error'])} | "
                     f"{_points(change['val_ten_crop_top1_error'])} | {_points(change['val_ten_crop_top5_error'])} "
                     f"| {paper} | {verdict} | {r['claim']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    del argv
    names = [BASELINE] + [a.name for a in ABLATIONS]
    unknown = sorted(set(FLAGS.only) - set(names))
    if unknown:
        raise app.UsageError(f"--only: unknown run(s) {unknown}; choose from {names}")
    wanted = set(FLAGS.only or names)
    seeds = [int(s) for s in FLAGS.seeds]
    config = get_config(PRESET)
    data_dir = imagenette.prepare_imagenette(os.path.join(FLAGS.out_dir, "data"), config.image_size,
                                             FLAGS.imagenette_dir or None, holdout_per_class=config.holdout_per_class)
    start = time.perf_counter()
    # Baseline runs done before count even when --only leaves the baseline out: they are the reference.
    baseline = [run(BASELINE, seed, (), data_dir) for seed in seeds
                if BASELINE in wanted or os.path.exists(os.path.join(_workdir(BASELINE, seed), SUMMARY_FILE))]
    done = [(a, run(a.name, seeds[0], a.flags, data_dir)) for a in ABLATIONS if a.name in wanted]
    rows = compare(baseline, done)
    noise = {key: spread([r[key] for r in baseline]) for key, _ in FIGURES} if baseline else {}
    result = {"preset": PRESET, "train_flags": FLAGS.train_flags, "data_dir": data_dir, "seeds": seeds,
              "epochs": FLAGS.epochs or config.epochs,
              "baseline": baseline, "baseline_spread": noise, "ablations": rows,
              "minutes_this_call": (time.perf_counter() - start) / 60}
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    with open(os.path.join(FLAGS.out_dir, "ablations.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    table = markdown(baseline, rows, noise)
    with open(os.path.join(FLAGS.out_dir, "ablations.md"), "w", encoding="utf-8") as f:
        f.write(table)
    print(table)
    harness.print_figures({"out_dir": FLAGS.out_dir, "baseline_spread": noise,
                           "changes_points": {r["name"]: r["change_points"] for r in rows},
                           "minutes_this_call": result["minutes_this_call"]})


if __name__ == "__main__":
    harness.run(main)
