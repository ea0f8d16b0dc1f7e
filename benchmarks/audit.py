"""How well `featx audit` finds planted faults, and what it costs at a million rows.

    python benchmarks/audit.py flowers DATA [--per-class N] [--workdir DIR] [--image-size S] [--seed K] [--rich] [--json FILE]
    python benchmarks/audit.py scale [--rows 1000000] [--dim 1280] [--workdir DIR] [--json FILE]
    python benchmarks/audit.py neighbours [--rows 20000] [--dim 1280]

flowers: copies (at most --per-class images of each class of) DATA (class folders, e.g. flowers5) into
train/validation folders (80/20 per class, seeded) under --workdir, then plants faults: ~3 % of the
images moved to another class's folder (label errors), ~2 % re-encoded / resized / cropped copies put
into the *other* split (leaks), and 6 off-topic photos (scikit-image's astronaut, coffee, rocket, cat,
motorcycle, camera man) into class folders. Extracts with mobilenet_0.25 (and with --rich, a second store
of every pointwise block, avg and max pooled, flip views: the kind of recipe `featx tune` tries), audits,
and prints precision and recall of each finding kind at its default threshold (label errors also as
precision in the top k, k = number planted). The source data has faults of its own: near duplicates of
flowers5 checked by eye (benchmarks/flowers5_duplicates.json) count as found in ``precision``;
``precision_strict`` counts them as false. Other unplanted findings are listed.

scale: a store of N synthetic float16 rows (50 classes of Gaussian clusters, 2 % planted copies)
written through StoreWriter, then `featx audit` in a fresh process: wall time and peak RSS.

neighbours: k=10 nearest neighbours of synthetic rows by scikit-learn's brute force, faiss
(PCA128,L2norm,IVF) and hnswlib: time per 1,000 queries, build time and recall against brute force.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

OFF_TOPIC = ("astronaut", "coffee", "rocket", "chelsea", "camera", "stereo_motorcycle")


def _copy_variant(src: Path, dest: Path, rng: random.Random) -> str:
    """A re-encoded, resized or cropped (or all three) copy of `src`; returns what was done."""
    from PIL import Image

    with Image.open(src) as im:
        im = im.convert("RGB")
        w, h = im.size
        kind = rng.choice(["reencode", "resize", "crop", "all"])
        if kind in ("crop", "all"):
            f = rng.uniform(0.03, 0.08)
            im = im.crop((int(w * f * rng.random()), int(h * f * rng.random()), w - int(w * f / 2), h - int(h * f / 2)))
        if kind in ("resize", "all"):
            s = rng.uniform(0.6, 0.9)
            im = im.resize((max(32, int(im.width * s)), max(32, int(im.height * s))))
        im.save(dest, "JPEG", quality=rng.randint(55, 80) if kind in ("reencode", "all") else 92)
    return kind


def _off_topic(name: str) -> bytes:
    import skimage.data
    from PIL import Image

    arr = skimage.data.stereo_motorcycle()[0] if name == "stereo_motorcycle" else getattr(skimage.data, name)()
    buf = io.BytesIO()
    Image.fromarray(arr).convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def plant(data: Path, root: Path, per_class: int, seed: int = 0) -> dict:
    """The planted set under `root` and its ground truth (relative paths)."""
    rng = random.Random(seed)
    shutil.rmtree(root, ignore_errors=True)
    classes = sorted(p.name for p in data.iterdir() if p.is_dir())
    placed: list[tuple[str, str, Path]] = []  # (split, class, file)
    for cls in classes:
        files = sorted(p for p in (data / cls).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        files = rng.sample(files, min(per_class, len(files)))
        for i, f in enumerate(files):
            split = "validation" if i < len(files) // 5 else "train"
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, root / split / cls / f.name)
            placed.append((split, cls, f))
    truth = {"label_errors": {}, "copies": [], "copy_kinds": {}, "off_topic": []}
    for split, cls, f in rng.sample(placed, round(0.03 * len(placed))):
        other = rng.choice([c for c in classes if c != cls])
        (root / split / cls / f.name).rename(root / split / other / f.name)
        truth["label_errors"][f"{split}/{other}/{f.name}"] = cls
    moved = {p.rsplit("/", 1)[1] for p in truth["label_errors"]}
    for split, cls, f in rng.sample([p for p in placed if p[2].name not in moved], round(0.02 * len(placed))):
        other = "validation" if split == "train" else "train"
        name = f"{f.stem}_copy.jpg"
        kind = _copy_variant(f, root / other / cls / name, rng)
        pair = sorted([f"{split}/{cls}/{f.name}", f"{other}/{cls}/{name}"])
        truth["copies"].append(pair)
        truth["copy_kinds"][" ".join(pair)] = kind
    for name in OFF_TOPIC:
        split, cls = rng.choice(["train", "validation"]), rng.choice(classes)
        (root / split / cls / f"offtopic_{name}.jpg").write_bytes(_off_topic(name))
        truth["off_topic"].append(f"{split}/{cls}/offtopic_{name}.jpg")
    truth["n_images"] = len(placed) + len(truth["copies"]) + len(OFF_TOPIC)
    return truth


def _pr(found: set, planted: set) -> dict:
    hit = len(found & planted)
    return {"found": len(found), "planted": len(planted), "hits": hit,
            "precision": round(hit / len(found), 3) if found else None,
            "recall": round(hit / len(planted), 3) if planted else None}


KNOWN_DUPLICATES = Path(__file__).with_name("flowers5_duplicates.json")


def _known_pairs(pairs: set, truth: dict) -> set:
    """Pairs (of `pairs`) that flowers5_duplicates.json lists as one photograph (by file name); a
    planted copy stands for its source, so the copy of a known duplicate is one too."""
    same = {frozenset(p) for p in json.loads(KNOWN_DUPLICATES.read_text())["same_photograph"]}
    source = {}
    for a, b in truth["copies"]:
        copy, original = (a, b) if a.endswith("_copy.jpg") else (b, a)
        source[copy] = original

    def name(path: str) -> str:
        return source.get(path, path).rsplit("/", 1)[1]

    return {pair for pair in pairs if frozenset(name(p) for p in pair.split(" ")) in same}


def score(result, truth: dict) -> dict:
    label_found = [i.path for i in result.label_issues]
    planted_labels = set(truth["label_errors"])
    k = len(planted_labels)
    # the off-topic photos carry wrong labels too, but are planted as outliers: ranked without them
    label_ranked = [p for p in label_found if p not in set(truth["off_topic"])]
    near = {" ".join(sorted([d.a["path"], d.b["path"]])) for d in result.duplicates if d.kind == "near"}
    planted_pairs = {" ".join(p) for p in truth["copies"]}
    known = _known_pairs(near - planted_pairs, truth)
    by_kind: dict = {}
    for pair, kind in truth["copy_kinds"].items():
        by_kind.setdefault(kind, [0, 0])[1] += 1
        by_kind[kind][0] += pair in near
    return {
        "label_errors": {**_pr(set(label_found), planted_labels),
                         "top_k_precision": round(len(set(label_found[:k]) & planted_labels) / k, 3) if k else None,
                         "top_k_precision_without_off_topic":
                             round(len(set(label_ranked[:k]) & planted_labels) / k, 3) if k else None},
        "near_duplicates": {**_pr(near, planted_pairs),
                            "precision": round(len(near & planted_pairs | known) / len(near), 3) if near else None,
                            "precision_strict": round(len(near & planted_pairs) / len(near), 3) if near else None,
                            "known_flowers5_duplicates_found": len(known),
                            "recall_by_transform": {k: f"{a}/{b}" for k, (a, b) in by_kind.items()},
                            "false_pairs": sorted(near - planted_pairs - known)[:20]},
        "outliers": {**_pr({o.path for o in result.outliers}, set(truth["off_topic"])),
                     "unplanted": [o.path for o in result.outliers if o.path not in truth["off_topic"]][:20]},
        "exact_duplicates": sum(d.kind == "exact" for d in result.duplicates),
    }


def _similarity_profile(store_path: Path, truth: dict) -> dict:
    """Similarity (the audit's default space) of each planted pair vs the highest among pairs that are not copies."""
    from featx.audit.neighbours import fit_embedding
    from featx.store import FeatureStore

    with FeatureStore(store_path) as s:
        Z = fit_embedding(s, 8192).apply(s.X)
        where = {p: i for i, p in enumerate(s.paths.tolist())}
    S = Z @ Z.T
    np.fill_diagonal(S, -1)
    planted = [float(S[where[a], where[b]]) for a, b in truth["copies"]]
    for a, b in truth["copies"]:
        S[where[a], where[b]] = S[where[b], where[a]] = -1
    other = np.sort(S[np.triu_indices(len(S), 1)])[-10:]
    return {"planted_min": round(min(planted), 3), "planted_p05": round(float(np.percentile(planted, 5)), 3),
            "unplanted_top10": [round(float(v), 3) for v in other]}


RICH_LAYERS = [f"conv_pw_{i}_relu:{p}" for i in range(1, 14) for p in ("avg", "max")]  # mobilenet_0.25's blocks


def run_flowers(args) -> dict:
    from featx.extract import extract

    work = Path(args.workdir)
    truth = plant(Path(args.data), work / "planted", args.per_class, seed=args.seed)
    out = {"seed": args.seed, "n_images": truth["n_images"],
           "planted": {"label_errors": len(truth["label_errors"]), "copies": len(truth["copies"]),
                       "off_topic": len(truth["off_topic"])}}
    recipes = {"default": {}}
    if args.rich:
        recipes["rich"] = {"layers": RICH_LAYERS, "views": "flip"}
    for name, recipe in recipes.items():
        store = work / f"planted_{args.image_size}{'' if name == 'default' else '_' + name}.h5"
        # resumable: a rerun extracts only the files the planting rewrote
        started = time.perf_counter()
        extract(work / "planted", store, backbone="mobilenet_0.25", image_size=args.image_size, progress=False,
                **recipe)
        out[name] = {"recipe": recipe or "final block, avg, one view",
                     "extract_seconds": round(time.perf_counter() - started, 1), **_audit_store(store, truth)}
    return out


def _audit_store(store: Path, truth: dict) -> dict:
    from featx.audit import audit

    out = {"similarity": _similarity_profile(store, truth)}
    for method in ("exact", "ivf"):
        started = time.perf_counter()
        result = audit(store, neighbours=method)
        out[method] = {"audit_seconds": round(time.perf_counter() - started, 1), "settings": result.settings,
                       **score(result, truth)}
    out["cleanlab"] = _cleanlab_comparison(store, truth)
    return out


def _cleanlab_comparison(store_path: Path, truth: dict) -> dict | None:
    """cleanlab's find_label_issues on the same out-of-fold probabilities, if cleanlab is installed."""
    try:
        from cleanlab.filter import find_label_issues
    except ImportError:
        return None
    from featx.audit.labels import confident_issues, out_of_fold_probabilities
    from featx.store import FeatureStore

    with FeatureStore(store_path) as s:
        rows = np.flatnonzero(s.y >= 0)
        y, paths = s.y[rows], s.paths[rows]
        proba = out_of_fold_probabilities(s, rows, y, cv=5, seed=0)
    planted, k = set(truth["label_errors"]), len(truth["label_errors"])
    out = {}
    for name, ranked in {
        "featx": confident_issues(proba, y),
        "cleanlab_prune_by_noise_rate": find_label_issues(y, proba, return_indices_ranked_by="self_confidence"),
        "cleanlab_confident_learning": find_label_issues(y, proba, filter_by="confident_learning",
                                                         return_indices_ranked_by="self_confidence"),
    }.items():
        found = [str(paths[i]) for i in ranked]
        out[name] = {**_pr(set(found), planted), "top_k_precision": round(len(set(found[:k]) & planted) / k, 3)}
    return out


SCALE_SCRIPT = """
import json, resource, sys, time
from featx.cli import main
t = time.perf_counter()
rc = main(["audit", sys.argv[1], "--json"] + sys.argv[2:])
print(json.dumps({"rc": rc, "seconds": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), file=sys.stderr)
"""


def write_synthetic_store(path: Path, n: int, dim: int, seed: int = 0, block: int = 50_000) -> None:
    from featx.backbones import fingerprint_id
    from featx.store import Rows, StoreWriter

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, dim)).astype(np.float32)
    fingerprint = {"backbone": "synthetic", "feature_dim": dim, "image_size": [224, 224], "pooling": "avg",
                   "layer": None, "preprocessing": "none", "weights": "none"}
    path.unlink(missing_ok=True)
    with StoreWriter(path, fingerprint=fingerprint, fingerprint_id=fingerprint_id(fingerprint),
                     feature_dtype="float16",
                     root="/synthetic", random_weights=True) as writer:
        for start in range(0, n, block):
            m = min(block, n - start)
            labels = rng.integers(0, 50, m)
            X = centres[labels] + rng.normal(scale=1.5, size=(m, dim)).astype(np.float32)
            copies = rng.random(m) < 0.02  # a copy of the row before it, slightly perturbed
            X[1:][copies[1:]] = X[:-1][copies[1:]] + rng.normal(scale=0.1, size=(int(copies[1:].sum()), dim))
            ids = np.arange(start, start + m)
            writer.append(Rows(X.astype(np.float16), np.array([f"{i:064x}" for i in ids]),
                               np.array([f"img/{i:08d}.jpg" for i in ids]), np.array([f"c{l:02d}" for l in labels]),
                               np.where(ids % 5 == 0, "validation", "train"), np.full(m, 1000, np.int64),
                               np.zeros(m, np.int64)))
        writer.consolidate()


def run_scale(args) -> dict:
    store = Path(args.workdir) / f"synthetic_{args.rows}x{args.dim}.h5"
    started = time.perf_counter()
    done = Path(f"{store}.complete")  # a store whose writing was interrupted is written again
    if not done.exists():
        write_synthetic_store(store, args.rows, args.dim)
        done.touch()
    write_s = time.perf_counter() - started
    proc = subprocess.run([sys.executable, "-c", SCALE_SCRIPT, str(store), "--cv", str(args.cv)],
                          capture_output=True, text=True)
    stats = json.loads(proc.stderr.strip().splitlines()[-1])
    result = json.loads(proc.stdout) if stats["rc"] == 0 else {"error": proc.stderr[-2000:]}
    return {"rows": args.rows, "dim": args.dim, "store_bytes": store.stat().st_size, "write_seconds": round(write_s, 1),
            **stats, "phase_seconds": result.get("seconds"), "summary": result.get("summary"),
            "neighbours": (result.get("settings") or {}).get("neighbours"),
            "similarity": (result.get("settings") or {}).get("similarity")}


def run_neighbours(args) -> dict:
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(0)
    n, d, k = args.rows, args.dim, 10
    X = (rng.normal(size=(50, d))[rng.integers(0, 50, n)] + rng.normal(scale=1.5, size=(n, d))).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    q = X[:1000]
    out = {"rows": n, "dim": d}
    t = time.perf_counter()
    _, ref = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(X).kneighbors(q)
    out["sklearn_brute"] = {"seconds_per_1000": round(time.perf_counter() - t, 2)}

    def recall(found):
        return round(float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, ref)])), 3)

    import faiss
    t = time.perf_counter()
    index = faiss.index_factory(d, f"PCA128,L2norm,IVF{int(np.sqrt(n))},Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(X[:max(30 * int(np.sqrt(n)), 4 * d)])
    index.add(X)
    faiss.extract_index_ivf(index).nprobe = 16
    build = time.perf_counter() - t
    t = time.perf_counter()
    _, found = index.search(q, k)
    out["faiss_pca_ivf"] = {"build_seconds": round(build, 2), "seconds_per_1000": round(time.perf_counter() - t, 2),
                            "recall": recall(found)}
    import hnswlib
    t = time.perf_counter()
    h = hnswlib.Index(space="ip", dim=d)
    h.init_index(max_elements=n, ef_construction=100, M=16)
    h.add_items(X)
    build = time.perf_counter() - t
    h.set_ef(50)
    t = time.perf_counter()
    found, _ = h.knn_query(q, k)
    out["hnswlib"] = {"build_seconds": round(build, 2), "seconds_per_1000": round(time.perf_counter() - t, 2),
                      "recall": recall(found)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    f = sub.add_parser("flowers")
    f.add_argument("data")
    f.add_argument("--per-class", type=int, default=10_000)
    f.add_argument("--image-size", type=int, default=224)
    f.add_argument("--seed", type=int, default=0, help="which images are flipped, copied and how (default 0)")
    f.add_argument("--rich", action="store_true", help="also audit a store of every block, avg+max, flip views")
    s = sub.add_parser("scale")
    s.add_argument("--rows", type=int, default=1_000_000)
    s.add_argument("--dim", type=int, default=1280)
    s.add_argument("--cv", type=int, default=3)
    nb = sub.add_parser("neighbours")
    nb.add_argument("--rows", type=int, default=20_000)
    nb.add_argument("--dim", type=int, default=1280)
    for p in (f, s, nb):
        p.add_argument("--workdir", default="/tmp/featx-audit-bench")
        p.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    args = parser.parse_args()
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    out = {"flowers": run_flowers, "scale": run_scale, "neighbours": run_neighbours}[args.mode](args)
    out = {"benchmark": f"audit-{args.mode}", "machine": f"{platform.machine()} cpu{os.cpu_count()}", **out}
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
