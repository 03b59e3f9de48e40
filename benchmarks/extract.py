"""Feature extraction throughput: the project's Ray Data path vs a plain PyTorch loop.

Images: query + gallery rows of the synthetic city (``--preset demo``: 2,532 images;
``--images N`` takes N of them evenly spread over both splits, default 800). Model: an
untrained ``build_model`` network (resnet10t, attribute heads, 64x64) exported as a
trained-model directory (``export_trained_model``, as ``tests/conftest.py::tiny_stores`` does);
the weights do not change the cost. Extraction settings: configs/tiny.yaml's ``extract``
section (batch 32) with the four TTA views of the default config.

- ``ray``: ``vreid.features.extract.extract_stores`` (one store) end to end (Ray Data: one block per batch, decode
  tasks, the ``FeatureExtractor`` actor pool with TTA, ``write_parquet``, row count,
  ``_SUCCESS.json``), timed from the call to its return, with 1 actor x 1 CPU (``ray_1x1``)
  and with 2 actors x 0.5 CPU (``ray_2x0.5``; on 2 CPUs a pool that takes every CPU starves
  the decode tasks; here decode tasks and actors ask for the same 0.5 CPU, so Ray Data fuses
  decoding into the actors). Actor start (process, imports, model load) is inside each call.
- ``plain``: one process with ``torch.set_num_threads(2)`` (Ray's CPU count): the same decode
  (``decode_image``) and test transform, batches, ``tta_outputs`` views, Arrow columns, one
  Parquet file, decoding in one DataLoader worker process (``plain_loader1``; ``--plain-inline``
  also times decoding inline, which is slower here). The fastest plain variant is the baseline.

The variants alternate ``--repeats`` times and each keeps its best run (the machine may be
shared). Each run is also split into phases: for Ray, the actor class is wrapped (for timing
only: two clock reads and one line of text per batch) so that each batch's start and end are
known: ``start`` = call to the first batch begun (actor processes, their imports, model load,
pipeline start), ``steady`` = first batch begun to last batch done, ``tail`` = last writes,
row count and ``_SUCCESS.json``; for plain, ``steady`` = first batch in hand to last batch
done. ``steady_img_s`` / ``ratio_steady`` compare the rates once running, without the fixed
cost per call. Ray starts its workers at niceness 15; this process lowers itself to the same
niceness after ``ray.init`` so that both sides compete with other load on equal terms.

``--two-stores`` also times what the pipeline does with a model's test and validation stores:
the images split into two stores written by one ``extract_stores`` call (one pass, the actors
start once) against two calls (two passes), 2 actors x 0.5 CPU, alternating ``--repeats`` times.

``--profile`` adds where the time goes: a fresh process's imports (what each actor pays), and
per Ray variant the decode and model cost per image on one thread, one extractor actor's
start, decode alone through Ray Data, and each operator's wall time in the same pipeline
(``Dataset.stats()``).

Last line: one JSON object (``ratio`` = best Ray variant / best plain variant end to end,
target >= 0.8; ``ratio_steady`` the same on the steady phase; ``scaling_2_vs_1`` = 2 actors /
1 actor).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _ray_bench import NUM_CPUS, ROOT, emit, start_ray  # sets Ray's environment before Ray is imported


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="demo", choices=["tiny", "demo", "city"])
    ap.add_argument("--data-root", default=None, help="default: data/synth-<preset>")
    ap.add_argument("--images", type=int, default=800, help="images extracted per run (0 = all query+gallery)")
    ap.add_argument("--backbone", default="resnet10t")
    ap.add_argument("--head", default="attribute", choices=["bnneck", "attribute", "agnet"])
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=None, help="default: configs/tiny.yaml extract.batch_size")
    ap.add_argument("--tta", default="original,flip,crop,crop_flip")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per variant on the full set (best is kept)")
    ap.add_argument("--plain-inline", action="store_true",
                    help="also time the plain loop decoding inline (usually slower than with a loader worker)")
    ap.add_argument("--profile", action="store_true", help="also break the Ray time down by stage")
    ap.add_argument("--two-stores", action="store_true", help="also time two stores in one pass vs two passes")
    ap.add_argument("--no-nice", action="store_true", help="keep this process's priority")
    return ap.parse_args(argv)


def make_model_dir(run_dir: Path, args, num_classes: int = 100) -> Path:
    import torch

    from vreid.models import build_model
    from vreid.models.trained import export_trained_model

    torch.manual_seed(0)
    attr = args.head != "bnneck"
    build = dict(backbone=args.backbone, head=args.head, task="reid", num_classes=num_classes,
                 input_size=[args.input_size, args.input_size], num_colors=10 if attr else 0,
                 num_types=7 if attr else 0)
    model = build_model(**{**build, "input_size": tuple(build["input_size"])}).eval()
    return export_trained_model(model.state_dict(), build, {"key": "k", "name": "m"}, run_dir / "models" / "m")


class _Images:
    """Decode + test transform of one image (a ``torch.utils.data.Dataset``)."""

    def __init__(self, ids, root: Path, transform):
        self.ids, self.root, self.transform = ids, root, transform

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        from vreid.data.images import decode_image

        return self.transform(decode_image(self.root / str(self.ids[i])))


def plain_extract(model_dir: Path, rows, root: Path, ecfg, out: Path, threads: int,
                  loader_workers: int) -> tuple[int, float]:
    """Decode + transform + TTA + Parquet with plain PyTorch, the same work as the Ray path:
    ``loader_workers`` 0 decodes in this process, 1 in a DataLoader worker process. Returns the
    rows written and the steady window (first batch in hand to last batch done)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from vreid.data.transforms import build_test_transform
    from vreid.features.store import to_fixed_list
    from vreid.features.tta import PROB_COLUMNS, tta_outputs
    from vreid.models.trained import load_trained_model

    torch.set_num_threads(threads)
    model, meta = load_trained_model(model_dir)
    transform = build_test_transform(tuple(meta["build_args"]["input_size"]))
    ids = np.asarray(rows.column("image_id").to_pylist(), dtype=object)
    splits = np.asarray(rows.column("split").to_pylist(), dtype=object)
    loader = torch.utils.data.DataLoader(_Images(ids, root, transform), batch_size=ecfg.batch_size,
                                         num_workers=loader_workers)
    parts, s, first = [], 0, None
    for images in loader:
        first = first or time.perf_counter()
        bid, bsplit = ids[s:s + len(images)], splits[s:s + len(images)]
        s += len(images)
        res = tta_outputs(model, images, list(ecfg.tta), ecfg.crop_ratio)
        cols = {"image_id": pa.array(bid.tolist(), pa.string()), "split": pa.array(bsplit.tolist(), pa.string()),
                "feature": to_fixed_list(res["feature"].numpy(), ecfg.dtype)}
        for key in PROB_COLUMNS:
            if key in res:
                cols[key] = pa.array(list(res[key].numpy().astype(np.float32)), type=pa.list_(pa.float32()))
        parts.append(pa.table(cols))
    window = time.perf_counter() - first
    table = pa.concat_tables(parts)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "part-0.parquet")
    return table.num_rows, window


def _timed_extractor(log_dir: str):
    """``FeatureExtractor`` plus a wall-clock stamp at the start and end of every batch, appended
    to one file per actor process (defined here so that cloudpickle ships it by value)."""
    from vreid.features.extract import FeatureExtractor

    class TimedFeatureExtractor(FeatureExtractor):
        def __call__(self, batch):
            t0 = time.time()
            out = super().__call__(batch)
            with open(os.path.join(log_dir, f"{os.getpid()}.txt"), "a") as fh:
                fh.write(f"{t0} {time.time()} {len(batch['image_id'])}\n")
            return out

    return TimedFeatureExtractor


def ray_extract(model_dir: Path, rows, root: Path, ecfg, uri: Path, log_dir: Path) -> tuple[int, dict]:
    """``extract_stores`` of one store end to end, with the actor class wrapped by ``_timed_extractor`` (two
    clock reads and a line of text per batch). Returns the rows written and the phases: start
    (call to the first batch an actor begins: actor processes, imports, model load, decode of
    the first batches), steady (first batch begun to last batch done, all actors), tail (last
    batch done to return: last writes, row count, ``_SUCCESS.json``)."""
    import vreid.features.extract as fx

    shutil.rmtree(uri, ignore_errors=True)  # never the "already complete" skip
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True)
    original = fx.FeatureExtractor
    fx.FeatureExtractor = _timed_extractor(str(log_dir))
    try:
        t0 = time.time()
        meta = fx.extract_stores(model_dir, {str(uri): rows}, root, ecfg)[str(uri)]
        t1 = time.time()
    finally:
        fx.FeatureExtractor = original
    if meta["rows"] != rows.num_rows:
        raise RuntimeError(f"extract_stores wrote {meta['rows']} rows for {rows.num_rows} images")
    stamps = [line.split() for f in log_dir.iterdir() for line in f.read_text().splitlines()]
    begin, end = min(float(a) for a, _, _ in stamps), max(float(b) for _, b, _ in stamps)
    if sum(int(n) for _, _, n in stamps) != rows.num_rows:
        raise RuntimeError("the actors' batch stamps do not add up to the rows extracted")
    return meta["rows"], {"start_s": begin - t0, "steady_s": end - begin, "tail_s": t1 - end,
                          "actor_processes": len(list(log_dir.iterdir()))}


def two_stores(model_dir: Path, rows, root: Path, ecfg, work: Path, repeats: int) -> dict:
    """Two stores (alternate rows) in one ``extract_stores`` call vs one call per store; best of
    ``repeats`` alternating runs each."""
    import vreid.features.extract as fx

    halves = {str(work / "two" / "a"): rows.take(list(range(0, rows.num_rows, 2))),
              str(work / "two" / "b"): rows.take(list(range(1, rows.num_rows, 2)))}
    one, two = [], []
    for _ in range(repeats):
        for runs, groups in ((one, [halves]), (two, [{u: r} for u, r in halves.items()])):
            shutil.rmtree(work / "two", ignore_errors=True)
            t = time.perf_counter()
            metas = [m for g in groups for m in fx.extract_stores(model_dir, g, root, ecfg).values()]
            runs.append(time.perf_counter() - t)
            if sorted(m["rows"] for m in metas) != sorted(r.num_rows for r in halves.values()):
                raise RuntimeError("the two stores do not hold their rows")
    return {"one_pass_s": round(min(one), 2), "two_passes_s": round(min(two), 2),
            "speedup": round(min(two) / min(one), 3)}


def profile(model_dir: Path, rows, root: Path, ecfg, out: Path) -> dict:
    """Where the time goes: per-image decode and model (TTA) cost on one thread in this process,
    the start of one extractor actor, decode alone through Ray Data, and the wall time of each
    operator of the ``extract_stores`` pipeline from ``Dataset.stats()`` (rebuilt here on the
    materialised decode output, so that decoding and the model show as separate operators)."""
    import re

    import ray
    import torch

    from vreid.data.images import decode_image
    from vreid.data.transforms import build_test_transform
    from vreid.features.extract import FeatureExtractor, decode_batch
    from vreid.features.tta import tta_outputs
    from vreid.models.trained import load_trained_model

    prof: dict = {}
    input_size = tuple(read_input_size(model_dir))
    sample = rows.slice(0, min(rows.num_rows, 4 * ecfg.batch_size)).column("image_id").to_pylist()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        transform = build_test_transform(input_size)
        t = time.perf_counter()
        images = torch.stack([transform(decode_image(root / i)) for i in sample])
        prof["decode_ms_per_img_1thread"] = round(1e3 * (time.perf_counter() - t) / len(sample), 2)
        model, _ = load_trained_model(model_dir)
        tta_outputs(model, images[: ecfg.batch_size], list(ecfg.tta), ecfg.crop_ratio)  # warm-up
        t = time.perf_counter()
        for s in range(0, len(images), ecfg.batch_size):
            tta_outputs(model, images[s:s + ecfg.batch_size], list(ecfg.tta), ecfg.crop_ratio)
        prof["model_ms_per_img_1thread"] = round(1e3 * (time.perf_counter() - t) / len(images), 2)
    finally:
        torch.set_num_threads(threads)
    t = time.perf_counter()
    actor = ray.remote(num_cpus=ecfg.cpus_per_actor)(FeatureExtractor).remote(
        str(model_dir), list(ecfg.tta), ecfg.crop_ratio, ecfg.dtype, "cpu")
    ray.get(actor.__ray_ready__.remote())
    prof["actor_start_s"] = round(time.perf_counter() - t, 2)
    ray.kill(actor)
    t = time.perf_counter()
    ids = rows.select(["image_id", "split"])
    ds = ray.data.from_arrow([ids.slice(i, ecfg.batch_size) for i in range(0, ids.num_rows, ecfg.batch_size)])
    ds = ds.map_batches(decode_batch, fn_kwargs={"root": str(root), "input_size": input_size},
                        batch_size=ecfg.batch_size, num_cpus=ecfg.cpus_per_decode_task, batch_format="numpy")
    ds.materialize()
    prof["ray_decode_only_s"] = round(time.perf_counter() - t, 2)
    ds = ds.map_batches(FeatureExtractor,
                        fn_constructor_kwargs={"model_dir": str(model_dir), "views": list(ecfg.tta),
                                               "crop_ratio": ecfg.crop_ratio, "dtype": ecfg.dtype, "device": "cpu"},
                        batch_size=ecfg.batch_size, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=ecfg.actors), num_cpus=ecfg.cpus_per_actor)
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    ds.write_parquet(str(out))
    prof["ray_pipeline_s"] = round(time.perf_counter() - t, 2)
    ops = {}
    for line in ds.stats().splitlines():
        m = re.match(r"Operator \d+ (.+?): (\d+) tasks executed.* in ([\d.]+)s", line)
        if m:
            ops[m.group(1)] = {"tasks": int(m.group(2)), "wall_s": float(m.group(3))}
    prof["ray_operators"] = ops
    return prof


def import_cost() -> float:
    """Seconds a fresh Python process takes to import what an extractor actor imports."""
    import subprocess

    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import ray.data, timm, vreid.features.extract, vreid.models"],
                   check=True, cwd=ROOT)
    return round(time.perf_counter() - t, 2)


def read_input_size(model_dir: Path):
    from vreid.models.trained import read_trained_meta

    return read_trained_meta(model_dir)["build_args"]["input_size"]


def main(argv=None) -> dict:
    args = parse_args(argv)
    import numpy as np
    import pyarrow as pa

    from vreid.config import load_config
    from vreid.data import dataset_root, load_manifest, split_table
    from vreid.data.synth import generate

    nice = start_ray(match_niceness=not args.no_nice)
    data_root = Path(args.data_root or ROOT / "data" / f"synth-{args.preset}")
    generate(data_root, args.preset, seed=0, progress=False)
    manifest = load_manifest(data_root, "synth")
    root = dataset_root(manifest)
    rows = pa.concat_tables([split_table(manifest, s) for s in ("query", "gallery")])
    if args.images and args.images < rows.num_rows:  # spread over both splits
        rows = rows.take(np.linspace(0, rows.num_rows - 1, args.images).round().astype(np.int64))
    work = Path(tempfile.mkdtemp(prefix="vreid-bench-extract-"))
    base = load_config(ROOT / "configs" / "tiny.yaml", [f"run_dir={work}"]).extract
    base = base.model_copy(update={"tta": args.tta.split(","),
                                   **({"batch_size": args.batch_size} if args.batch_size else {})})
    variants = {
        "ray_1x1": base.model_copy(update={"actors": 1, "cpus_per_actor": 1.0}),
        "ray_2x0.5": base.model_copy(update={"actors": 2, "cpus_per_actor": 0.5}),
    }
    plains = {"plain_loader1": 1, **({"plain_inline": 0} if args.plain_inline else {})}  # decode workers
    times: dict[str, list[float]] = {k: [] for k in [*plains, *variants]}
    steady: dict[str, list[float]] = {k: [] for k in times}
    phases: dict[str, list[dict]] = {k: [] for k in variants}
    prof = None
    try:
        model_dir = make_model_dir(work, args)
        for r in range(args.repeats):
            for name, workers in plains.items():
                t = time.perf_counter()
                n, window = plain_extract(model_dir, rows, root, base, work / name, NUM_CPUS, workers)
                times[name].append(time.perf_counter() - t)
                steady[name].append(window)
                if n != rows.num_rows:
                    raise RuntimeError(f"{name} extracted {n} rows for {rows.num_rows} images")
            for name, ecfg in variants.items():
                t = time.perf_counter()
                _, ph = ray_extract(model_dir, rows, root, ecfg, work / "features" / name, work / "stamps")
                times[name].append(time.perf_counter() - t)
                steady[name].append(ph["steady_s"])
                phases[name].append(ph)
            print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.1f} s (steady {steady[k][-1]:.1f} s)"
                                             for k, v in times.items()), flush=True)
        pair = two_stores(model_dir, rows, root, variants["ray_2x0.5"], work, args.repeats) if args.two_stores else None
        if args.profile:
            prof = {"fresh_process_imports_s": import_cost(),
                    **{name: profile(model_dir, rows, root, ecfg, work / f"profile-{name}")
                       for name, ecfg in variants.items()}}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n = rows.num_rows
    ips = {k: n / min(v) for k, v in times.items()}
    sips = {k: n / min(v) for k, v in steady.items()}
    best_ray = max(variants, key=lambda k: ips[k])
    best_plain = max(plains, key=lambda k: ips[k])
    fastest = {k: phases[k][int(np.argmin(times[k]))] for k in variants}
    result = {
        "bench": "extract",
        "images": n,
        "model": f"{args.backbone}/{args.head}@{args.input_size}x{args.input_size}",
        "tta_views": len(base.tta),
        "batch_size": base.batch_size,
        "cpus": NUM_CPUS,
        "plain_threads": NUM_CPUS,
        "plain_img_s": round(ips[best_plain], 1),
        "plain_best": best_plain,
        "ray_1actor_img_s": round(ips["ray_1x1"], 1),
        "ray_2actors_img_s": round(ips["ray_2x0.5"], 1),
        "ray_best": best_ray,
        "ratio": round(ips[best_ray] / ips[best_plain], 3),
        "ratio_1actor": round(ips["ray_1x1"] / ips[best_plain], 3),
        "ratio_2actors": round(ips["ray_2x0.5"] / ips[best_plain], 3),
        "scaling_2_vs_1": round(ips["ray_2x0.5"] / ips["ray_1x1"], 3),
        "target_ratio": 0.8,
        "target_met": ips[best_ray] / ips[best_plain] >= 0.8,
        "steady_img_s": {k: round(v, 1) for k, v in sips.items()},
        "ratio_steady": round(sips[best_ray] / sips[best_plain], 3),
        "scaling_2_vs_1_steady": round(sips["ray_2x0.5"] / sips["ray_1x1"], 3),
        "ray_phases_s": {k: {p: round(v, 2) for p, v in ph.items()} for k, ph in fastest.items()},
        "runs_s": {k: [round(x, 2) for x in v] for k, v in times.items()},
        **({"two_stores": pair} if pair else {}),
        **({"profile": prof} if prof else {}),
        "niceness": nice,
    }
    return emit(result)


if __name__ == "__main__":
    main()
