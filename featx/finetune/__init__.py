"""Parameter transfer: fine-tune a backbone's top blocks, starting from the linear probe (LP-FT).

The Keras way, in two phases: a head on the frozen base, then the top ``unfreeze`` blocks (all
layers of a block together) trained at a low learning rate with BatchNormalization kept in
inference mode. By default the head is not random: it is the logistic-regression probe fitted
on the frozen features (standardisation folded into the Dense weights), so fine-tuning starts
where feature transfer ended (Kumar et al., 2022, "Fine-Tuning can Distort Pretrained Features").

Images go through featx's own reader (same decoding, colour handling and skips as extraction)
once, into a uint8 memory map; augmentation runs on the device as Keras layers inside the model,
where they are inactive at inference. Model selection (early stopping, best checkpoint) uses a
stratified part of the *train* split only; validation and test splits are never touched here.

The saved ``.keras`` file holds only stock Keras layers (it loads with ``keras.saving.load_model``
in safe mode, no featx needed) plus a ``featx.json`` entry: class names, the starting backbone's
fingerprint, the split rule, the training history and settings.

One job per module:

* ``settings`` — `FinetuneSettings` and its one ``check()``, augmentation names, `FinetuneError`;
* ``model`` — blocks (`layer_blocks`, `unfreeze_top`), augmentation layers, `build_model`, the
  probe as the head's weights (`probe_head_weights`);
* ``data`` — the fit / monitor split of train, decoding once into memory maps, batches;
* ``train`` — `finetune()`, the guide's steps one function each, and `FinetuneResult`;
* ``files`` — the ``.keras`` file: `save_model`, `load_model`, `is_keras_file`, `FinetunedModel`;
* ``predict`` — `predict_items`, `predict_images`, `items_for_split`, `evaluate`, `Predictions`.
"""

import importlib

# Loaded on first use (PEP 562), so `featx.finetune.settings` — which the CLI's parser reads for its
# defaults — does not pull in scikit-learn and the training code with it.
_HOMES = {
    "carve_monitor_split": "data",
    **dict.fromkeys(["FORMAT_VERSION", "METADATA_ENTRY", "FinetunedModel", "is_keras_file", "load_model",
                     "save_model"], "files"),
    **dict.fromkeys(["augmentation_layers", "build_model", "inner_base", "layer_blocks", "probe_head_weights",
                     "unfreeze_top"], "model"),
    **dict.fromkeys(["Predictions", "evaluate", "items_for_split", "predict_images", "predict_items"], "predict"),
    **dict.fromkeys(["AUGMENTATIONS", "DEFAULT_AUGMENT", "MONITORS", "FinetuneError", "FinetuneSettings",
                     "parse_augment"], "settings"),
    **dict.fromkeys(["FinetuneResult", "finetune"], "train"),
}


def __getattr__(name: str):
    if name == "assign_splits":  # featx.finetune.assign_splits was reachable here before the split
        from featx.sources import assign_splits

        return assign_splits
    if name == "_inner_base":  # its name before the split into modules
        name = "inner_base"
    if name in _HOMES:
        return getattr(importlib.import_module(f"featx.finetune.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'featx.finetune' has no attribute {name!r}")


__all__ = [
    "AUGMENTATIONS", "DEFAULT_AUGMENT", "FORMAT_VERSION", "METADATA_ENTRY", "MONITORS", "FinetuneError",
    "FinetuneResult", "FinetuneSettings", "FinetunedModel", "Predictions", "assign_splits",
    "augmentation_layers", "build_model", "carve_monitor_split", "evaluate", "finetune", "inner_base",
    "is_keras_file", "items_for_split", "layer_blocks", "load_model", "parse_augment", "predict_images",
    "predict_items", "probe_head_weights", "save_model", "unfreeze_top",
]
