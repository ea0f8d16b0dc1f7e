"""The `featx` command line end to end: extract → train → evaluate → predict, info, backbones, errors.

Behaviour (exit codes, messages, JSON) is tested in this process through ``featx.cli.main``
(conftest.run_main); what needs a fresh interpreter (the entry point, no native start-up chatter on
stderr, no backend import for work without a CNN) runs the real command in a subprocess."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import TEST_SIZE, photo_files, make_photo_set, run_cli, run_main

BACKENDS = ("keras", "tensorflow", "jax")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real 3-class photo set with split folders, extracted (by the real `featx` command) and trained
    through the CLI; read-only for the tests that share it."""
    tmp = tmp_path_factory.mktemp("cli")
    data = make_photo_set(tmp / "photos", classes=("cat", "flower", "rocket"),
                          splits={"train": (30, 0), "validation": (15, 30)})
    store, model = tmp / "f.h5", tmp / "f.skops"
    ex = run_cli("extract", str(data), "--store", str(store), "--backbone", "mobilenet_0.25",
                 "--image-size", str(TEST_SIZE), "--batch-size", "16", "--no-progress", "--json")
    assert ex.returncode == 0, ex.stderr
    tr = run_main("train", str(store), "--out", str(model), "--classifier", "all", "--penalty", "all", "--cv", "3")
    assert tr.returncode == 0, tr.stderr
    return {"tmp": tmp, "data": data, "store": store, "model": model, "extract": json.loads(ex.stdout),
            "train": tr.stdout, "stderr": {"extract": ex.stderr}}


CHATTER = ("absl::InitializeLog", "oneDNN custom operations", "Could not find cuda drivers", "cuInit",
           "rebuild TensorFlow")


def _assert_quiet(command: str, err: str) -> None:
    assert not [c for c in CHATTER if c in err], (command, err)
    assert all(line.startswith("featx") for line in err.splitlines()), (command, err)  # featx's own only


def test_commands_print_no_native_start_up_chatter(trained):
    for command, err in trained["stderr"].items():
        _assert_quiet(command, err)


def _fresh_featx(argv_list: list[list[str]]) -> subprocess.CompletedProcess:
    """Run featx.cli.main on each argv in one new interpreter; print the exit codes, then the backend
    modules that got imported."""
    code = ("import sys; from featx.cli import main\n"
            "codes = []\n"
            f"for argv in {argv_list!r}:\n"
            "    try:\n"
            "        codes.append(main(argv))\n"
            "    except SystemExit as exc:\n"
            "        codes.append(exc.code)\n"
            f"print('CODES', codes, 'IMPORTED', sorted(set({BACKENDS!r}) & set(sys.modules)))\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_store_commands_never_import_the_backend(trained):
    """train, evaluate (.skops) and info work on the store alone, backbones lists the registry, and a
    usage error is found before any work: no Keras, no TensorFlow, no JAX import, and no chatter."""
    nb = str(trained["tmp"] / "nb.skops")
    out = _fresh_featx([["train", str(trained["store"]), "--out", nb, "--cv", "2"],
                        ["evaluate", nb, str(trained["store"])], ["info", str(trained["store"])],
                        ["backbones"], ["--help"], ["extract", str(trained["data"])],
                        ["train", str(trained["store"]), "--out", nb, "--alpha", "1e-3"],
                        ["info", str(trained["tmp"] / "missing.h5")]])
    assert out.returncode == 0, out.stderr
    assert "CODES [0, 0, 0, 0, 0, 2, 2, 2] IMPORTED []" in out.stdout, (out.stdout, out.stderr)
    assert "required: --store" in out.stderr and "--alpha go with --sgd" in out.stderr
    assert "does not exist" in out.stderr
    usage = [line for line in out.stderr.splitlines() if line.startswith(("usage: featx extract", " "))]
    assert len(usage) >= 1  # argparse's usage block of the extract error: featx's own text
    _assert_quiet("train, evaluate, info, backbones", "\n".join(set(out.stderr.splitlines()) - set(usage)))


def test_entry_points_run_the_same_main(tmp_path):
    """`featx` is featx.cli:main; `python -m featx` and `python -m featx.cli` run it too."""
    missing = str(tmp_path / "missing.h5")
    for module in ("featx", "featx.cli"):
        r = subprocess.run([sys.executable, "-m", module, "info", missing], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 2 and r.stderr.startswith("featx info: error: ") and "does not exist" in r.stderr
    from importlib.metadata import entry_points

    from featx.cli import main

    script = [e for e in entry_points(group="console_scripts") if e.name == "featx"]
    assert script and script[0].value == "featx.cli:main" and script[0].load() is main


def test_extract_summary_json(trained):
    s = trained["extract"]
    assert s["n_images"] == 135 and s["n_extracted"] == 135 and s["n_skipped"] == 0
    assert s["splits"] == {"train": 90, "validation": 45}
    assert s["backbone"] == "mobilenet_0.25" and s["random_weights"] is False


def test_train_prints_the_table_of_all_candidates(trained):
    out = trained["train"]
    for name in ("logreg", "svm", "l1", "l2", "cv_score_mean"):
        assert name in out
    assert "kept" in out and trained["model"].exists()


def test_evaluate_json_and_confusion_png(trained):
    png = trained["tmp"] / "cm.png"
    ev = run_main("evaluate", str(trained["model"]), str(trained["store"]), "--split", "validation", "--json",
                 "--confusion-png", str(png))
    assert ev.returncode == 0, ev.stderr
    r = json.loads(ev.stdout)
    for key in ("accuracy", "precision", "recall", "f1", "confusion_matrix", "per_class"):
        assert key in r
    assert r["n"] == 45 and np.array(r["confusion_matrix"]).sum() == 45
    assert r["accuracy"] > 0.6  # 3 classes, 30 training photos each at 96 px (chance: 0.33)
    assert r["accuracy_ci"]["low"] < r["accuracy"] <= r["accuracy_ci"]["high"]  # 95% intervals (featx.stats)
    assert r["macro_f1_ci"]["method"].startswith("stratified bootstrap")
    assert Image.open(png).size[0] > 100
    text = run_main("evaluate", str(trained["model"]), str(trained["store"]))
    assert text.returncode == 0 and "cat" in text.stdout and "accuracy" in text.stdout


def test_predict_json_on_files_and_folders(trained, tmp_path):
    imgs = tmp_path / "new"
    imgs.mkdir()
    for f in photo_files("flower", 3, offset=200):
        shutil.copy2(f, imgs / f.name)
    (imgs / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    single = photo_files("cat", 1, offset=300)[0]
    pr = run_main("predict", str(trained["model"]), str(single), str(imgs), "--json")
    assert pr.returncode == 0, pr.stderr
    r = json.loads(pr.stdout)
    assert len(r["predictions"]) == 4 and len(r["skipped"]) == 1
    assert r["skipped"][0]["path"].endswith("broken.jpg")
    labels = [p["label"] for p in r["predictions"]]
    assert labels.count("flower") >= 2
    assert abs(sum(r["predictions"][0]["probabilities"].values()) - 1) < 1e-6


def test_info_json(trained):
    info = run_main("info", str(trained["store"]), "--json")
    assert info.returncode == 0
    r = json.loads(info.stdout)
    assert r["n_images"] == 135 and r["n_skipped"] == 0 and r["skipped"] == []
    assert r["splits"] == {"train": 90, "validation": 45} and r["backbone"] == "mobilenet_0.25"
    assert run_main("info", str(trained["store"])).stdout.count("mobilenet_0.25") >= 1


def test_model_refuses_a_store_of_another_backbone(trained, tmp_path):
    other = tmp_path / "other.h5"
    ex = run_main("extract", str(trained["data"]), "--store", str(other), "--backbone", "mobilenet_0.25",
                 "--image-size", str(TEST_SIZE), "--pooling", "max", "--no-progress")
    assert ex.returncode == 0, ex.stderr
    ev = run_main("evaluate", str(trained["model"]), str(other))
    assert ev.returncode == 1 and "pooling" in ev.stderr


def test_backbones_lists_the_vendored_one_offline():
    out = run_main("backbones", "--json")
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["mobilenet_0.25"]["imagenet_offline"] is True
    assert rows["mobilenet_0.25"]["feature_dim"] == 256 and rows["efficientnetb0"]["default"] is True
    assert "mobilenet_0.25" in run_main("backbones").stdout


def test_exit_codes_and_messages(tmp_path, monkeypatch):
    assert run_main("extract").returncode == 2  # argparse usage error
    r = run_main("extract", str(tmp_path / "nowhere"), "--store", str(tmp_path / "s.h5"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = run_main("extract", str(tmp_path), "--store", str(tmp_path / "s.h5"), "--backbone", "alexnet")
    assert r.returncode == 2 and "unknown backbone" in r.stderr
    r = run_main("extract", str(tmp_path), "--store", str(tmp_path / "s.h5"), "--batch-size", "0")
    assert r.returncode == 2 and "must be a positive integer or auto, got '0'" in r.stderr
    data = make_photo_set(tmp_path / "d", classes=("cat",), n=2)
    r = run_main("extract", str(data), "--store", str(tmp_path / "s.h5"), "--backbone", "resnet50",
                env={"KERAS_HOME": str(tmp_path / "kh"), "FEATX_OFFLINE": "1"})
    assert r.returncode == 1 and "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in r.stderr
    assert not (tmp_path / "s.h5").exists()  # nothing written, nothing silently random
    # a path that is not there, or a folder where a file is expected: one line, exit 2, in every command
    r = run_main("info", str(tmp_path / "missing.h5"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    for args in (("info", str(data)), ("train", str(data), "--out", str(tmp_path / "c.skops")),
                 ("evaluate", str(tmp_path / "c.skops"), str(data))):
        r = run_main(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"featx {args[0]}: error: "), r.stderr
        assert "Errno" not in r.stderr and "Error:" not in r.stderr
    assert "is a folder, not a featx store" in run_main("info", str(data)).stderr
    assert "no classifier file at" in run_main("evaluate", str(data), str(data)).stderr
    for cmd in ("extract", "train", "evaluate", "predict", "info", "backbones", "demo"):
        assert run_main(cmd, "--help").returncode == 0


def test_random_weights_are_labelled_everywhere(tmp_path):
    data = make_photo_set(tmp_path / "d", classes=("cat", "coffee"), n=6)
    r = run_main("extract", str(data), "--store", str(tmp_path / "r.h5"), "--backbone", "mobilenet_0.25",
                "--weights", "none", "--image-size", str(TEST_SIZE), "--no-progress")
    assert r.returncode == 0 and "RANDOM WEIGHTS" in r.stdout
    info = json.loads(run_main("info", str(tmp_path / "r.h5"), "--json").stdout)
    assert info["random_weights"] is True and info["fingerprint"]["weights"] == "none"


# A path that is not there, or a folder where a store is expected: the same exit code (2, as for any
# argument featx cannot use) and one line "featx COMMAND: error: ..." in every command.
MISSING = "does not exist", "not there"
FOLDER = ("is a folder, not a featx store",)
WRONG_PATHS = [
    (["extract", "{missing}", "--store", "{tmp}/s.h5"], MISSING),
    (["train", "{missing}.h5", "--out", "{tmp}/c.skops"], MISSING),
    (["evaluate", "{model}", "{missing}.h5"], MISSING),
    (["evaluate", "{missing}.skops", "{store}"], MISSING),
    (["predict", "{model}", "{missing}.jpg"], MISSING),
    (["predict", "{missing}.skops", "{image}"], MISSING),
    (["info", "{missing}.h5"], MISSING),
    (["compare", "{missing}", "--out", "{tmp}/report"], MISSING),
    (["finetune", "{missing}", "--out", "{tmp}/f.keras"], MISSING),
    (["extract", "{data}", "--store", "{data}", "--backbone", "mobilenet_0.25"], FOLDER),
    (["train", "{data}", "--out", "{tmp}/c.skops"], FOLDER),
    (["evaluate", "{model}", "{data}"], FOLDER),
    (["info", "{data}"], FOLDER),
    (["merge", "{data}"], FOLDER),
]


@pytest.mark.parametrize("argv, said", WRONG_PATHS, ids=lambda v: " ".join(v) if isinstance(v, list) else
                         "folder" if v is FOLDER else "missing")
def test_a_wrong_path_is_one_line_and_exit_2_in_every_command(trained, tmp_path, argv, said):
    paths = {"missing": tmp_path / "missing", "tmp": tmp_path, "model": trained["model"], "store": trained["store"],
             "data": trained["data"], "image": photo_files("cat", 1)[0]}
    r = run_main(*(arg.format(**paths) for arg in argv))
    assert r.returncode == 2, (argv, r.stderr)
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"featx {argv[0]}: error: "), r.stderr
    assert any(s in r.stderr for s in said) and "Errno" not in r.stderr and "Error:" not in r.stderr, r.stderr
    assert not (tmp_path / "s.h5").exists() and not (tmp_path / "c.skops").exists()  # nothing written
