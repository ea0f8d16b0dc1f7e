"""The correctness half of benchmarks/gpu.sh: what must hold before its speed numbers mean anything.

    python benchmarks/gpu_checks.py decoders DATA JPEG500 --json OUT.json [--n 400] [--dry]
    python benchmarks/gpu_checks.py precision DATA --json OUT.json [--n 400] [--probe-n 0]
    python benchmarks/gpu_checks.py utilisation NAME=CSV ... --json OUT.json

decoders: features (mobilenet_0.25, its real weights, 224 px) of real photos decoded by the GPU
decoder vs the CPU decoder: cosine min/median, on flowers5 as it is (128x128) and on the 500x375
benchmark JPEGs; then a folder of bad and awkward files (tests/badfiles.py) plus photos through both
decoders: the skips (path, kind, reason) must be identical. Also each decoder's decode-only rate on
the 500x375 JPEGs (featx's CPU threads vs one batched GPU call per 256 images). --dry runs the GPU
decoder's code with device="cpu" and a Pillow stand-in for nvJPEG (what CI does; no GPU needed).

precision: the same features in bfloat16 and float16 vs float32 (cosine min/median) and, with
--probe-n N, a logistic-regression probe's validation accuracy on N flowers5 photos per precision.

utilisation: mean/max of nvidia-smi utilization.gpu samples (one CSV per phase of gpu.sh).

Each prints a summary and appends one JSON line to --json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # badfiles.py

import numpy as np  # noqa: E402


def cosine_stats(a: np.ndarray, b: np.ndarray) -> dict:
    ok = np.isfinite(a).all(1) & np.isfinite(b).all(1)
    cos = (a[ok] * b[ok]).sum(1) / np.linalg.norm(a[ok], axis=1) / np.linalg.norm(b[ok], axis=1)
    return {"n": int(ok.sum()), "min": float(cos.min()), "median": float(np.median(cos)),
            "p01": float(np.quantile(cos, 0.01))}


def photos(data: str, n: int) -> list[str]:
    from featx.sources import from_directory

    items = from_directory(data).items
    step = max(1, len(items) // n)  # spread over the classes
    return [it.path for it in items[::step][:n]]


def gpu_decoder(dry: bool):
    from featx.gpudecode import BatchJpegDecoder, open_decoder

    if not dry:
        return open_decoder("gpu")[0]  # an error, not a CPU fallback, when nvJPEG cannot run
    import torch
    from PIL import Image

    def pillow_decode_batch(tensors):  # nvJPEG's contract, on the CPU: full-size decode, no EXIF
        out = []
        for t in tensors:
            img = Image.open(io.BytesIO(t.numpy().tobytes()))
            img.load()
            if img.format != "JPEG" or img.mode != "RGB":
                raise RuntimeError("not a YCbCr JPEG")
            out.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))
        return out

    return BatchJpegDecoder(device="cpu", decode_batch=pillow_decode_batch, name="dry-run-pillow-torch")


def check_decoders(args) -> dict:
    from badfiles import make_bad_files

    from featx.backbones import Backbone
    from featx.decode import decode_file
    from featx.extract import extract, extract_features
    from featx.pipeline import default_workers, ordered_map

    bb = Backbone.build("mobilenet_0.25")  # vendored ImageNet weights, 224 px
    decoder = gpu_decoder(args.dry)
    res: dict = {"check": "decoders", "decoder": decoder.name, "backbone": "mobilenet_0.25@224"}
    for name, files in (("flowers5_128px", photos(args.data, args.n)), ("jpeg_500x375", photos(args.jpeg500, args.n))):
        cpu = extract_features(files, bb, batch_size=64)
        gpu = extract_features(files, bb, batch_size=64, decoder=decoder)
        res[name] = {**cosine_stats(gpu.features, cpu.features), "same_hashes": gpu.sha256 == cpu.sha256,
                     "skips_cpu": len(cpu.skipped), "skips_gpu": len(gpu.skipped)}
    res["device_decoded"], res["device_failed"] = decoder.counts.gpu, decoder.counts.gpu_failed

    with tempfile.TemporaryDirectory() as tmp:
        mixed = Path(tmp) / "mixed"
        make_bad_files(mixed / "bad")
        (mixed / "bad" / "a_directory.jpg").rmdir()
        (mixed / "photos").mkdir()
        for i, f in enumerate(photos(args.data, 16)):
            os.symlink(os.path.abspath(f), mixed / "photos" / f"photo{i}.jpg")
        runs = {}
        for label, dec in (("cpu", "cpu"), ("gpu", decoder)):
            s = extract(mixed, Path(tmp) / f"{label}.h5", backbone=bb, batch_size=8, progress=False,
                        assign_split=False, decoder=dec)
            runs[label] = s
        key = lambda s: sorted((x["path"], x["kind"], x["reason"]) for x in s.skipped)  # noqa: E731
        res["bad_files"] = {"same_skips": key(runs["cpu"]) == key(runs["gpu"]),
                            "skips": len(runs["cpu"].skipped), "extracted": runs["gpu"].n_extracted,
                            "device_decoded": runs["gpu"].n_gpu_decoded, "device_failed": runs["gpu"].n_gpu_failed,
                            "differences": sorted(set(key(runs["cpu"])) ^ set(key(runs["gpu"])))[:20]}

    # decode-only rates on the 500x375 JPEGs: featx's CPU threads vs the batched device decoder
    files = photos(args.jpeg500, args.decode_n)
    size = bb.image_size
    start = time.perf_counter()
    n = sum(1 for d in ordered_map(lambda p: decode_file(p, size), files, workers=default_workers(),
                                   window=8 * default_workers(), max_workers=2 * default_workers())
            if d.pixels is not None)
    res["decode_only_cpu_images_per_second"] = n / (time.perf_counter() - start)
    encoded = [Path(f).read_bytes() for f in files]
    decoder.decode(encoded[:256], size)  # warm-up (nvJPEG handles, CUDA context)
    start = time.perf_counter()
    n = sum(sum(1 for x in decoder.decode(encoded[i:i + 256], size) if x is not None)
            for i in range(0, len(encoded), 256))
    res["decode_only_gpu_images_per_second"] = n / (time.perf_counter() - start)
    res["decode_only_note"] = "gpu: bytes already in memory, host->device, decode, resize, device->host"
    return res


def check_precision(args) -> dict:
    from featx.backbones import Backbone
    from featx.extract import extract_features

    files = photos(args.data, args.n)
    res: dict = {"check": "precision", "backbone": "mobilenet_0.25@224", "n": len(files)}
    feats = {}
    for precision in ("float32", "bfloat16", "float16"):
        try:
            bb = Backbone.build("mobilenet_0.25", precision=precision)
            feats[precision] = extract_features(files, bb, batch_size=64).features
        except Exception as exc:  # say what failed; the other precisions still run
            res[precision] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            continue
        if precision != "float32":
            res[precision] = cosine_stats(feats[precision], feats["float32"])
    if args.probe_n:
        res["probe"] = probe_accuracy(args.data, args.probe_n, [p for p in feats])
    return res


def probe_accuracy(data: str, n: int, precisions: list[str]) -> dict:
    """Validation accuracy of a logistic-regression probe on the same split, per precision."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from featx.backbones import Backbone
    from featx.extract import extract_features
    from featx.sources import assign_splits, from_directory

    image_set = assign_splits(from_directory(data), validation_fraction=0.2, seed=0)
    items = image_set.items[:: max(1, len(image_set.items) // n)][:n]
    y = np.array([it.label for it in items])
    train = np.array([it.split == "train" for it in items])
    out = {"n": len(items), "n_validation": int((~train).sum())}
    for precision in precisions:
        X = extract_features([it.path for it in items], Backbone.build("mobilenet_0.25", precision=precision),
                             batch_size=128).features
        ok = np.isfinite(X).all(1)
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
        clf.fit(X[train & ok], y[train & ok])
        out[precision] = float((clf.predict(X[~train & ok]) == y[~train & ok]).mean())
    return out


def utilisation(args) -> dict:
    res: dict = {"check": "gpu_utilisation", "sampled_every_ms": 200}
    for spec in args.csv:
        name, path = spec.split("=", 1)
        values = []
        for line in Path(path).read_text().splitlines():
            field = line.strip().split(",")[-1].strip().rstrip("%").strip()
            if field.isdigit():
                values.append(int(field))
        res[name] = ({"mean_percent": float(np.mean(values)), "max_percent": int(max(values)), "samples": len(values)}
                     if values else {"samples": 0})
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="check", required=True)
    p = sub.add_parser("decoders")
    p.add_argument("data")
    p.add_argument("jpeg500")
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--decode-n", type=int, default=2048)
    p.add_argument("--dry", action="store_true", help="no GPU: the decoder's code on the CPU with a Pillow stand-in")
    p = sub.add_parser("precision")
    p.add_argument("data")
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--probe-n", type=int, default=0)
    p = sub.add_parser("utilisation")
    p.add_argument("csv", nargs="*", metavar="NAME=CSV")
    for p in sub.choices.values():
        p.add_argument("--json", required=True)
    args = ap.parse_args(argv)
    res = {"decoders": check_decoders, "precision": check_precision, "utilisation": utilisation}[args.check](args)
    if args.check != "utilisation":
        import keras

        res["backend"] = keras.backend.backend()
    print(json.dumps(res, indent=1))
    with open(args.json, "a") as f:
        f.write(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
