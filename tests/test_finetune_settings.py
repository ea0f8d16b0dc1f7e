"""Fast checks of fine-tuning's settings and block logic (the training itself is in test_finetune.py, large)."""

from __future__ import annotations

import pytest

from featx import finetune as ft
from featx.finetune import FinetuneError, FinetuneSettings


def test_check_returns_the_canonical_settings_that_the_model_file_records():
    s = FinetuneSettings(unfreeze="3", augment=["zoom", "flip", "zoom"], mixed_precision="bfloat16").check()
    assert (s.unfreeze, s.augment, s.head_epochs, s.mixed_precision) == (3, ("zoom", "flip"), 0, "mixed_bfloat16")
    assert s.check() == s  # idempotent: a checked copy passes again unchanged
    assert FinetuneSettings(head_init="random").check().head_epochs == 5
    assert FinetuneSettings(head_init="random", head_epochs=2).check().head_epochs == 2
    assert FinetuneSettings(unfreeze="all", augment="none").check().unfreeze == "all"
    assert FinetuneSettings().check().mixed_precision is None
    assert list(FinetuneSettings().check().to_dict()) == [
        "epochs", "unfreeze", "lr", "head_init", "head_epochs", "head_lr", "augment", "batch_size",
        "mixed_precision", "dropout", "l2", "class_weight", "monitor", "monitor_fraction", "patience", "seed"]
    assert FinetuneSettings().check().to_dict()["augment"] == list(ft.DEFAULT_AUGMENT)
    assert FinetuneSettings.from_dict(s.to_dict()) == s


@pytest.mark.parametrize("kwargs, message", [
    ({"augment": "flip,blur"}, r"unknown augmentation \['blur'\]"),
    ({"head_init": "zeros"}, "head_init must be 'probe' or 'random', got 'zeros'"),
    ({"unfreeze": "some"}, "unfreeze must be a number of blocks or 'all', got 'some'"),
    ({"unfreeze": -1}, "unfreeze must be a number of blocks"),
    ({"monitor": "loss"}, "monitor must be one of"),
    ({"epochs": -1}, "epochs is too small: -1"),
    ({"batch_size": 0}, "batch size is too small: -1"),
    ({"patience": 0}, "patience is too small: -1"),
    ({"head_epochs": -2}, "head epochs is too small: -2"),
    ({"monitor_fraction": 0.5}, r"monitor fraction must be in \(0, 0.5\), got 0.5"),
    ({"monitor_fraction": 0}, "monitor fraction must be in"),
    ({"class_weight": "auto"}, "class_weight must be None or 'balanced', got 'auto'"),
    ({"mixed_precision": "float8"}, "mixed precision must be float16 or bfloat16, got 'float8'"),
])
def test_check_refuses_each_bad_setting_with_its_message(kwargs, message):
    with pytest.raises(FinetuneError, match=message):
        FinetuneSettings(**kwargs).check()


def test_coerce_keywords_that_differ_from_the_defaults_override_given_settings():
    given = FinetuneSettings(epochs=3, lr=5e-5, augment=("flip",))
    assert FinetuneSettings.coerce(given, epochs=10, lr=1e-4) is given  # defaults: the object wins
    assert FinetuneSettings.coerce(given, epochs=7) == FinetuneSettings(epochs=7, lr=5e-5, augment=("flip",))
    assert FinetuneSettings.coerce(None, epochs=7) == FinetuneSettings(epochs=7)


def test_finetune_refuses_bad_settings_objects_before_reading_any_data(tmp_path):
    with pytest.raises(FinetuneError, match="monitor must be one of"):
        ft.finetune(tmp_path / "no such folder", tmp_path / "m.keras", settings=FinetuneSettings(monitor="acc"))
    with pytest.raises(FinetuneError, match=r"must end in \.keras"):
        ft.finetune(tmp_path / "no such folder", tmp_path / "m.h5", backbone="mobilenet_0.25")


@pytest.fixture
def mobilenet_base(backbone):
    """The session backbone's inner model; its trainable flags are restored afterwards."""
    base = ft.inner_base(backbone)
    saved = [base.trainable] + [layer.trainable for layer in base.layers]
    yield base
    base.trainable = saved[0]
    for layer, flag in zip(base.layers, saved[1:]):
        layer.trainable = flag


def test_layer_blocks_group_mobilenet_as_its_architecture_does(mobilenet_base):
    blocks = ft.layer_blocks(mobilenet_base)
    names = [key for key, _ in blocks]
    assert names == ["conv1"] + [str(i) for i in range(1, 14)]
    block13 = {layer.name for layer in dict(blocks)["13"]}
    assert {"conv_dw_13", "conv_dw_13_bn", "conv_pw_13", "conv_pw_13_bn", "conv_pw_13_relu"} <= block13
    assert all(layer.name.startswith(("conv_dw_13", "conv_pw_13", "conv_pad_13")) for layer in dict(blocks)["13"])


def test_unfreeze_top_trains_whole_top_blocks_but_never_batchnorm(mobilenet_base):
    assert ft.unfreeze_top(mobilenet_base, 2) == ["12", "13"]
    trainable = {layer.name for layer in mobilenet_base.layers if layer.trainable_weights}
    assert trainable == {"conv_dw_12", "conv_pw_12", "conv_dw_13", "conv_pw_13"}
    n_weights = sum(_size(w.shape) for w in mobilenet_base.trainable_weights)
    assert 0 < n_weights < sum(_size(w.shape) for w in mobilenet_base.weights)
    assert ft.unfreeze_top(mobilenet_base, "all") == [key for key, _ in ft.layer_blocks(mobilenet_base)]
    assert not any(layer.trainable_weights for layer in mobilenet_base.layers
                   if type(layer).__name__ == "BatchNormalization")
    assert ft.unfreeze_top(mobilenet_base, 0) == [] and not mobilenet_base.trainable_weights


def _size(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
