"""Training throughput: one model through the project's Ray Train path vs a plain PyTorch loop.

Data: the training images of the first ``--train-ids`` identities of the synthetic city
(``--preset demo``; ``--train-ids 0`` = all of them), of which ``--val-ids`` are held out as the
validation split, as ``data.validation`` does. Model: configs/tiny.yaml's first model
(resnet10t, BNNeck, 48x48, Adam, P x K = 4 x 4, background substitution and random shrink).

Both sides train the same model (``vreid.models.build_model`` with the launcher's build
arguments) on the same rows (the launcher's ``training_manifest``), with the same dataset class
(``ReIDImageDataset``: same decode, background substitution), transform
(``build_train_transform`` from the stage's augment config), P x K batch sampler
(``PKSampler``, same seed and epochs, so the same batches), loss (``ReIDLoss``), optimiser,
learning-rate schedule, number of torch threads and DataLoader workers.

- ``ray``: ``vreid.train.launcher.train_models`` with that one-model config (one
  ``TorchTrainer``, 1 worker of ``--cpus-per-worker`` CPUs running
  ``vreid.train.loop.train_loop_per_worker``). Per-epoch images/s is what the loop itself
  records in the exported model's history (``model.json``): the time from the first batch to
  the last optimiser step of the epoch. Validation and checkpointing between epochs and the
  trainer's start are not in it; they are reported as ``ray_wall_s`` (the whole
  ``train_models`` call) and ``ray_outside_epochs_s`` (that minus the epochs).
- ``plain``: the same epoch body in this process (no Ray, no checkpoint), timed the same way.
  Its epochs run half before and half after the Ray run (epoch numbers continue, so the
  batches are the same as Ray's), to spread load drift over both sides.

Ray starts its workers at niceness 15; this process lowers itself to the same niceness after
``ray.init`` so that, on a shared machine, both sides compete with other load on equal terms.
The first epoch of each side is warm-up and excluded; each side's figure is its best
steady-state epoch (best-of-N, the machine may be shared); medians are reported too.

Last line: one JSON object (``ratio`` = ray / plain, target >= 0.85).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

# Without a dashboard, this cluster's State API address defaults to http://127.0.0.1:8265. On a
# machine shared with other Ray clusters, that can be another cluster's dashboard: Train V2's
# PlacementGroupCleaner then finds no such controller there, takes it for dead and removes this
# run's placement group, killing the worker after its last epoch. Point the State API at a closed
# port instead (the cleaner then just keeps polling); this does not touch the training path.
os.environ.setdefault("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:9")

from _ray_bench import ROOT, emit, start_ray  # noqa: E402  (sets Ray's environment before Ray is imported)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="demo", choices=["tiny", "demo", "city"],
                    help="synthetic city preset (generated under --data-root when absent)")
    ap.add_argument("--data-root", default=None, help="default: data/synth-<preset>")
    ap.add_argument("--config", default=str(ROOT / "configs" / "tiny.yaml"),
                    help="config whose first model is trained (default: configs/tiny.yaml 'bot')")
    ap.add_argument("--backbone", default=None, help="override the model's backbone")
    ap.add_argument("--input-size", type=int, default=None, help="square input size (config: 48)")
    ap.add_argument("--epochs", type=int, default=4, help="epochs per side (the first is warm-up)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on both sides")
    ap.add_argument("--cpus-per-worker", type=float, default=None,
                    help="Ray Train worker CPUs (default: --threads)")
    ap.add_argument("--loader-workers", type=int, default=0, help="DataLoader workers on both sides")
    ap.add_argument("--p", type=int, default=None, help="identities per batch (config: 4)")
    ap.add_argument("--k", type=int, default=None, help="images per identity (config: 4)")
    ap.add_argument("--train-ids", type=int, default=30,
                    help="use the training images of the first N identities of the city (0 = all)")
    ap.add_argument("--val-ids", type=int, default=6, help="of those, identities held out for validation")
    ap.add_argument("--keep", action="store_true", help="keep the run directories")
    ap.add_argument("--no-nice", action="store_true", help="keep this process's priority")
    return ap.parse_args(argv)


def make_config(args, data_root: Path, run_dir: Path):
    from vreid.config import load_config

    over = [f"run_dir={run_dir}", f"data.root={data_root}", f"data.synth_preset={args.preset}",
            f"data.validation.num_ids={args.val_ids}", f"train.num_threads={args.threads}",
            f"train.loader_workers={args.loader_workers}", "train.eval_every=100000", "train.max_failures=0"]
    cfg = load_config(args.config, over)
    m = cfg.models[0]
    stage = m.recipe[0].model_copy(update={
        "epochs": args.epochs,
        **({"p": args.p} if args.p else {}), **({"k": args.k} if args.k else {})})
    upd = {"recipe": [stage],
           "scaling": m.scaling.model_copy(update={"num_workers": 1,
                                                    "cpus_per_worker": args.cpus_per_worker or float(args.threads)})}
    if args.backbone:
        upd["backbone"] = args.backbone
    if args.input_size:
        upd["input_size"] = (args.input_size, args.input_size)
    cfg.models = [m.model_copy(update=upd)]
    return cfg


class PlainTrainer:
    """The body of ``train_loop_per_worker`` for a single-stage recipe, without Ray: the same
    rows, labels, model, loss, optimiser, dataset, transform and sampler; epochs run on demand
    (``run_epoch``) so they can be placed before and after the Ray run."""

    def __init__(self, cfg, manifest, threads: int):
        import pyarrow.compute as pc
        import torch

        from vreid.data import dataset_root
        from vreid.train.launcher import training_manifest
        from vreid.train.loop import make_loader, setup_model, stage_data
        from vreid.train.losses import ReIDLoss
        from vreid.train.optim import build_optimizers

        torch.set_num_threads(threads)
        mcfg = cfg.models[0]
        stage = self.stage = mcfg.recipe[0]
        table = training_manifest(cfg, manifest)
        data = stage_data(table.filter(pc.equal(table.column("split"), "train")), stage, mcfg)
        self.model, _ = setup_model(mcfg.model_copy(update={"pretrained": False}), data, None)
        self.model.freeze_stages(stage.freeze_stages)
        self.criterion = ReIDLoss.from_config(stage.loss, data.num_classes, self.model.feat_dim)
        self.optim = build_optimizers(self.model, self.criterion, stage)
        self.scaler = torch.amp.GradScaler("cuda", enabled=False)
        self.ds, self.sampler, self.loader = make_loader(mcfg, stage, data, dataset_root(manifest), seed=cfg.seed,
                                                         workers=cfg.train.loader_workers)

    def run_epoch(self, epoch: int) -> dict:
        import torch

        from vreid.train.loop import lr_factor

        self.sampler.set_epoch(epoch)
        self.ds.set_epoch(epoch)
        self.optim.set_lr_factor(lr_factor(epoch, self.stage))
        self.model.train()
        n_images, t0 = 0, time.perf_counter()
        for batch in self.loader:
            images = batch["image"]
            out = self.model(images)
            total, parts = self.criterion(out, batch["label"], color=batch["color"], vtype=batch["vtype"])
            if not torch.isfinite(total):
                raise RuntimeError(f"plain loop: loss became {float(total)} in epoch {epoch}")
            self.optim.zero_grad()
            total.backward()
            self.optim.step(self.scaler)
            for v in parts.values():
                float(v)  # the loop reads every loss part each step
            n_images += images.shape[0]
        seconds = time.perf_counter() - t0
        return {"epoch": epoch, "images": n_images, "seconds": seconds, "images_per_s": n_images / seconds}


def ray_train(cfg, manifest) -> tuple[list[dict], float]:
    from vreid.models.trained import load_trained_model
    from vreid.train.launcher import require_trained, train_models

    t0 = time.perf_counter()
    results = train_models(cfg, manifest)
    wall = time.perf_counter() - t0
    require_trained(results)
    _, meta = load_trained_model(results[0].model_dir)
    epochs = [h for h in meta["history"] if h.get("epoch", -1) >= 0 and "images_per_s" in h]
    return epochs, wall


def summary(epochs: list[dict]) -> dict:
    steady = [h["images_per_s"] for h in epochs if h["epoch"] >= 1]
    if not steady:
        raise SystemExit("need at least 2 epochs per side (the first is warm-up)")
    return {"best": max(steady), "median": statistics.median(steady), "all": steady,
            "warmup": epochs[0]["images_per_s"]}


def main(argv=None) -> dict:
    args = parse_args(argv)

    from vreid.data import load_manifest
    from vreid.data.synth import generate

    if args.epochs < 2:
        raise SystemExit("--epochs must be >= 2 (the first epoch of each side is warm-up)")
    nice = start_ray(match_niceness=not args.no_nice)  # the plain loop runs here at the workers' priority
    data_root = Path(args.data_root or ROOT / "data" / f"synth-{args.preset}")
    t0 = time.perf_counter()
    generate(data_root, args.preset, seed=0, progress=False)
    gen_s = time.perf_counter() - t0
    manifest = load_manifest(data_root, "synth")
    if args.train_ids:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        train = manifest.filter(pc.equal(manifest.column("split"), "train"))
        ids = np.unique(train.column("pid").to_numpy())[: args.train_ids]
        manifest = train.filter(pc.is_in(train.column("pid"), pa.array(ids)))
    work = Path(tempfile.mkdtemp(prefix="vreid-bench-train-"))
    plain_epochs: list[dict] = []
    cfg = make_config(args, data_root, work / "run")
    try:
        t = time.perf_counter()
        plain = PlainTrainer(cfg, manifest, args.threads)
        before = (args.epochs + 1) // 2  # plain epochs before the Ray run; the rest after it
        for epoch in range(before):
            plain_epochs.append(plain.run_epoch(epoch))
        plain_wall = time.perf_counter() - t
        print("plain: " + ", ".join(f"{h['images_per_s']:.1f}" for h in plain_epochs) + " img/s", flush=True)
        ray_epochs, ray_wall = ray_train(cfg, manifest)
        print("ray:   " + ", ".join(f"{h['images_per_s']:.1f}" for h in ray_epochs)
              + f" img/s (train_models {ray_wall:.1f} s)", flush=True)
        t = time.perf_counter()
        for epoch in range(before, args.epochs):
            plain_epochs.append(plain.run_epoch(epoch))
        plain_wall += time.perf_counter() - t
        print("plain: " + ", ".join(f"{h['images_per_s']:.1f}" for h in plain_epochs[before:]) + " img/s",
              flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    ps, rs = summary(plain_epochs), summary(ray_epochs)
    n_img = plain_epochs[-1]["images"]
    ray_epoch_s = sum(n_img / h["images_per_s"] for h in ray_epochs)
    m = cfg.models[0]
    result = {
        "bench": "train",
        "preset": args.preset,
        "model": f"{m.backbone}/{m.head}@{m.input_size[0]}x{m.input_size[1]}",
        "images_per_epoch": n_img,
        "batch": m.recipe[0].p * m.recipe[0].k,
        "epochs_per_side": args.epochs,
        "threads": args.threads,
        "train_ids": len(set(manifest.column("pid").to_pylist())) - args.val_ids,
        "loader_workers": args.loader_workers,
        "ray_train_img_s": round(rs["best"], 1),
        "plain_img_s": round(ps["best"], 1),
        "ratio": round(rs["best"] / ps["best"], 3),
        "ray_median_img_s": round(rs["median"], 1),
        "plain_median_img_s": round(ps["median"], 1),
        "ratio_median": round(rs["median"] / ps["median"], 3),
        "ray_warmup_img_s": round(rs["warmup"], 1),
        "plain_warmup_img_s": round(ps["warmup"], 1),
        "ray_wall_s": round(ray_wall, 1),
        "plain_wall_s": round(plain_wall, 1),
        "ray_outside_epochs_s": round(ray_wall - ray_epoch_s, 1),
        "target_ratio": 0.85,
        "target_met": rs["best"] / ps["best"] >= 0.85,
        "gen_s": round(gen_s, 1),
        "niceness": nice,
    }
    return emit(result)


if __name__ == "__main__":
    main()
