"""The ``paper`` preset holds section 5's recipe and section 2-4's data handling, value by value."""

from __future__ import annotations

import dataclasses

import pytest

from alexnet_tf import config as config_lib
from alexnet_tf import model as model_lib
from alexnet_tf import optimizer, training
from alexnet_tf.config import Config, ConfigError, get_config

# Each value with the place in the paper (or README) it comes from.
PAPER_RECIPE = {
    "num_classes": 1000,  # ILSVRC
    "input_size": 227,  # 224 in the text; 227 is what gives Figure 2's 55x55 (README)
    "width": 1.0,
    "towers": 2,  # section 3.2
    "dropout": 0.5,  # section 4.2
    "bias_init": "paper",  # section 5: biases 1 in conv2/4/5, fc6/7
    "weight_init": "paper",  # section 5: N(0, 0.01)
    "lrn": True,  # section 3.3: LRN after conv1 and conv2
    "overlapping_pooling": True,  # section 3.4: z = 3, s = 2
    "conv_width": 1.0,  # section 3.5: 96, 256, 384, 384, 256 kernels
    "batch_norm": False,  # not in the paper (2012 predates it): no normalisation but LRN
    "lrn_k": 2.0,  # section 3.3
    "lrn_alpha": 1e-4,  # section 3.3, multiplying the plain sum of squares
    "lrn_alpha_convention": "paper",
    "channel_order": "rgb",  # the project's pipeline decodes RGB
    "image_size": 256,  # section 2
    "mean_subtraction": "image",  # section 2: the mean activity over the training set, per pixel
    "mean_source": "data",  # section 2: computed over the training set
    "resize_mode": "crop",  # section 2: the shorter side rescaled, then the central square
    "pca_std": 0.1,  # section 4.1
    "label_offset": 0,
    "batch_size": 128,  # section 5
    "epochs": 90,  # section 5: "roughly 90 cycles"
    "learning_rate": 0.01,  # section 5
    "momentum": 0.9,  # section 5
    "label_smoothing": 0.0,  # section 3.5: the multinomial logistic regression objective, plain
    "weight_decay": 0.0005,  # section 5
    "lr_schedule": "plateau",  # section 5: divide by 10 when the validation error stops improving
    "max_lr_reductions": 3,  # section 5: "reduced three times prior to termination"
    "precision": "float32",
}


def test_paper_preset_is_the_papers_recipe():
    config = get_config("paper")
    for field, value in PAPER_RECIPE.items():
        assert getattr(config, field) == value, field
    # The preset is the defaults: nothing overrides them.
    assert config == Config()


def test_paper_preset_reaches_the_optimizer_and_the_schedule():
    """The Trainer builds PaperSGD from the preset's values (a small model: the recipe is the same)."""
    config = get_config("paper", num_classes=10, input_size=67, width=0.125, image_size=76)
    trainer = training.Trainer(config)
    assert float(trainer.sgd.learning_rate.numpy()) == pytest.approx(0.01)
    assert trainer.sgd.momentum == pytest.approx(0.9)
    assert trainer.sgd.l2_decay == pytest.approx(0.0005)
    assert not trainer.sgd.nesterov
    dropouts = [trainer.model.get_layer(f"dropout{i}").rate for i in (6, 7)]
    assert dropouts == [0.5, 0.5]


def test_paper_plateau_rule_divides_by_ten_three_times():
    config = get_config("paper")
    schedule = optimizer.LearningRateSchedule(config)
    rates = []
    for epoch in range(60):
        rates.append(schedule.rate_for_epoch(epoch))
        schedule.end_epoch(0.5 if epoch else 0.6)  # improves once, then never again
    assert sorted(set(rates), reverse=True) == pytest.approx([0.01, 0.001, 0.0001, 0.00001])
    # Epochs 0 and 1 improve; after plateau_patience epochs (2 ... 1 + patience) without
    # improvement the next epoch trains at a tenth of the rate.
    first_drop = rates.index(pytest.approx(0.001))
    assert first_drop == 2 + config.plateau_patience
    assert int(schedule.reductions.numpy()) == 3


def test_every_field_has_a_documented_default():
    # A new field must be added to PAPER_RECIPE or listed here as a run setting, not a paper fact.
    run_settings = {"data_dir", "shuffle_buffer", "deterministic", "seed", "plateau_patience", "jit_compile",
                    "steps_per_epoch", "checkpoint_every_steps", "export_precision", "steps_per_loop", "profile_steps",
                    "stall_warning_steps", "mean_file", "init_from", "trainable_from", "holdout_per_class"}
    assert {f.name for f in dataclasses.fields(Config)} == set(PAPER_RECIPE) | run_settings


# Every rule about a configuration's own values: a setting that breaks it, and the flag the
# message names. Each is raised from config.py, whoever builds the Config.
BROKEN = [
    (dict(holdout_per_class=-1), "--holdout_per_class=-1"),
    (dict(num_classes=0), "--num_classes=0"),
    (dict(input_size=60), "--input_size=60: too small"),
    (dict(input_size=38, image_size=64, overlapping_pooling=False), "--input_size=38: too small"),
    (dict(width=0.0), "--width=0.0"),
    (dict(conv_width=-1.0), "--conv_width=-1.0"),
    (dict(towers=0), "--towers=0"),
    (dict(dropout=1.0), "--dropout=1.0"),
    (dict(bias_init="zeros"), "--bias_init='zeros': choose one of paper, caffe"),
    (dict(weight_init="xavier"), "--weight_init='xavier': choose one of paper, he"),
    (dict(image_size=200), "--image_size=200: smaller than --input_size=227"),
    (dict(mean_subtraction="pixel"), "--mean_subtraction='pixel': choose one of image, channel"),
    (dict(pca_std=-0.1), "--pca_std=-0.1"),
    (dict(trainable_from="fc9"), "--trainable_from='fc9': name one of conv1"),
    (dict(label_offset=-1), "--label_offset=-1"),
    (dict(shuffle_buffer=0), "--shuffle_buffer=0"),
    (dict(batch_size=0), "--batch_size=0"),
    (dict(epochs=-1), "--epochs=-1"),
    (dict(learning_rate=-0.01), "--learning_rate=-0.01"),
    (dict(momentum=1.0), "--momentum=1.0"),
    (dict(weight_decay=-1.0), "--weight_decay=-1.0"),
    (dict(label_smoothing=1.0), "--label_smoothing=1.0: must be at least 0 and below 1"),
    (dict(lr_schedule="step:60,30"), "--lr_schedule='step:60,30'"),
    (dict(plateau_patience=0), "--plateau_patience=0"),
    (dict(max_lr_reductions=-1), "--max_lr_reductions=-1"),
    (dict(precision="fp8"), "--precision='fp8': choose one of float32, mixed_float16, mixed_bfloat16"),
    (dict(stall_warning_steps=-1), "--stall_warning_steps=-1"),
    (dict(steps_per_epoch=-1), "--steps_per_epoch=-1"),
    (dict(checkpoint_every_steps=-2), "--checkpoint_every_steps=-2"),
    (dict(steps_per_loop=0), "--steps_per_loop=0"),
    (dict(profile_steps="5,2"), "--profile_steps='5,2'"),
    (dict(deterministic=True, jit_compile=True), "--nojit_compile for a deterministic run"),
    (dict(export_precision="float16"), "--export_precision='float16': choose one of float32, bfloat16"),
    (dict(lrn_alpha_convention="torch"), "--lrn_alpha_convention='torch': choose one of paper, caffe"),
    (dict(channel_order="rgba"), "--channel_order='rgba': choose one of rgb, bgr"),
    (dict(mean_source="imagenet"), "--mean_source='imagenet': choose one of data, caffe"),
    (dict(resize_mode="pad"), "--resize_mode='pad': choose one of crop, squash"),
    (dict(lrn_k=-1.0), "--lrn_k=-1.0: must not be negative"),
    (dict(lrn_alpha=-1.0), "--lrn_alpha=-1.0: must not be negative"),
    (dict(mean_file="imagenet_mean.binaryproto"), "pass --mean_source=caffe too"),
    (dict(mean_source="caffe"), "needs --mean_file"),
]


@pytest.mark.parametrize(("overrides", "message"), BROKEN, ids=[m.split(":")[0] for _, m in BROKEN])
def test_each_rule_is_checked_when_the_config_is_made(overrides, message):
    with pytest.raises(ConfigError) as raised:
        get_config("paper", **overrides)
    assert message in str(raised.value)
    assert raised.traceback[-1].path.name == "config.py"  # the rule's one home
    with pytest.raises(ConfigError):  # however the Config is made
        Config().replace(**overrides)


def test_every_preset_is_valid_and_unknown_names_are_refused():
    for preset in config_lib.PRESETS:
        get_config(preset)
    with pytest.raises(ConfigError, match="--preset='nope': choose one of finetune, imagenette, paper, shapes, tiny"):
        get_config("nope")
    with pytest.raises(ConfigError, match="unknown config field"):
        get_config("paper", lerning_rate=0.1)


def test_the_model_rules_are_the_networks():
    # The smallest input leaves pool5 one pixel wide; one less leaves it empty.
    for overlapping, smallest in config_lib.SMALLEST_INPUT.items():
        assert model_lib.feature_map_sizes(smallest, overlapping)["pool5"] == 1
        assert model_lib.feature_map_sizes(smallest - 1, overlapping)["pool5"] == 0
    assert tuple(model_lib.POSITIVE_BIAS) == config_lib.BIAS_INITS
    with pytest.raises(ConfigError) as raised:  # build_alexnet's arguments obey the same rules
        model_lib.build_alexnet(towers=0)
    assert raised.traceback[-1].path.name == "config.py"


def test_caffe_conventions_round_trip():
    config = get_config("paper", lrn_k=1.0, lrn_alpha_convention="caffe", channel_order="bgr", mean_source="caffe",
                        mean_subtraction="channel", resize_mode="squash")
    assert Config.from_json(config.to_json()) == config
    assert get_config("paper", mean_source="caffe", mean_file="mean.binaryproto").mean_file == "mean.binaryproto"
