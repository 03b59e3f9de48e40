"""The Ray Train launcher: concurrent models, resume after a killed worker, bad input fails fast."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from pause_points import PausePoint

from vreid.config import load_config
from vreid.models.trained import load_trained_model
from vreid.train.launcher import InfeasibleResources, train_models


def _cfg(tmp_path, tiny_city, *extra):
    return load_config("configs/tiny.yaml", [f"run_dir={tmp_path / 'run'}", f"data.root={tiny_city}", *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_city, ray_session):
    """The tiny config's two models (one on 2 workers) plus a third whose loss becomes NaN."""
    tmp = tmp_path_factory.mktemp("train")
    cfg = _cfg(tmp, tiny_city, "models.0.recipe.0.epochs=4", "models.1.recipe.0.epochs=4")
    nan_model = cfg.models[1].model_copy(update={"name": "diverges"})
    nan_model.recipe = [nan_model.recipe[0].model_copy(update={"optimizer": "sgd", "lr": 1e30})]
    cfg.models = [*cfg.models, nan_model]
    from vreid.data import load_manifest

    manifest = load_manifest(tiny_city, "synth")
    out: dict = {}
    with PausePoint("train.epoch_start") as point:
        th = threading.Thread(target=lambda: out.update(results=train_models(cfg, manifest)))
        th.start()
        # both re-ID models are held at their first epoch at the same time: they train concurrently
        # (trained one after the other, the second would never arrive while the first waits)
        for arrival in point.wait_for_all({"model": "bot", "epoch": 0}, {"model": "attr", "epoch": 0}):
            arrival.release()
    th.join()
    return cfg, manifest, {r.name: r for r in out["results"]}


def test_models_train_concurrently_and_learn(trained):
    cfg, _, results = trained
    for name in ("bot", "attr"):
        r = results[name]
        assert r.status == "trained", r.error
        model, meta = load_trained_model(r.model_dir)
        history = meta["history"]
        assert [h["epoch"] for h in history] == [-1, 0, 1, 2, 3]
        # 20 validation queries: one epoch's mAP moves by about +-0.05, so the best epoch is compared
        best = max(h["val_mAP"] for h in history[1:])
        assert best > history[0]["val_mAP"] + 0.02, f"{name}: no better than at initialisation: {history}"
        assert history[-1]["id"] < history[1]["id"]
    assert "color_prob" in load_trained_model(results["attr"].model_dir)[0](
        __import__("torch").zeros(2, 3, 48, 48))


def test_nan_loss_stops_only_that_model(trained):
    _, _, results = trained
    assert results["diverges"].status == "failed"
    assert "NaN" in results["diverges"].error
    assert results["bot"].status == "trained"


def test_rerun_skips_finished_models(trained):
    cfg, manifest, _ = trained
    cfg.models = cfg.models[:2]
    work = Path(cfg.run_dir) / "train" / "ray"
    before = {p: p.stat().st_mtime_ns for p in [*work.glob("*/*"), *(Path(cfg.run_dir) / "models").rglob("*")]}
    again = train_models(cfg, manifest)
    assert [r.status for r in again] == ["skipped", "skipped"]
    after = {p: p.stat().st_mtime_ns for p in [*work.glob("*/*"), *(Path(cfg.run_dir) / "models").rglob("*")]}
    assert after == before, "no trainer ran and no model file was rewritten"


def test_killed_worker_resumes_from_checkpoint(tmp_path, tiny_city, tiny_manifest, ray_session):
    import psutil

    cfg = _cfg(tmp_path, tiny_city, "models.0.recipe.0.epochs=5", "train.max_failures=2")
    cfg.models = cfg.models[:1]
    out: dict = {}
    ckpts = Path(cfg.run_dir) / "train" / "ray"
    with PausePoint("train.epoch_start") as point:
        th = threading.Thread(target=lambda: out.update(r=train_models(cfg, tiny_manifest)))
        th.start()
        held = point.wait_for(model="bot", epoch=2)  # a worker about to start the third epoch
        # the controller registers the reported checkpoints (and then writes this snapshot) while
        # the workers wait: the kill always finds one to resume from
        deadline = time.monotonic() + 300  # a failure guard only
        while not list(ckpts.glob("bot-*/checkpoint_manager_snapshot.json")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert psutil.Process(held.info["pid"]).cmdline()[0].startswith("ray::RayTrainWorker")
        os.kill(held.info["pid"], signal.SIGKILL)
        held.release()
    th.join(timeout=600)
    result = out["r"][0]
    assert result.status == "trained", result.error
    history = load_trained_model(result.model_dir)[1]["history"]
    epochs = [h["epoch"] for h in history]
    assert epochs == [-1, 0, 1, 2, 3, 4], "every finished epoch kept once, none lost"
    resumed = [h["resumed_from_epoch"] for h in history if "resumed_from_epoch" in h]
    assert resumed and resumed[0] >= 0


def test_infeasible_resources_fail_fast(tmp_path, tiny_city, tiny_manifest, ray_session):
    cfg = _cfg(tmp_path, tiny_city, "models.0.scaling.cpus_per_worker=16")
    with pytest.raises(InfeasibleResources, match=r"model 'bot': each of its 2 training worker\(s\) asks for "
                                                  r"\{CPU: 16\} \(2 of them\)"):
        train_models(cfg, tiny_manifest)
    assert not (tmp_path / "run").exists(), "it failed before writing a manifest or starting a trainer"
    gpu = _cfg(tmp_path, tiny_city, "models.0.scaling.use_gpu=true", "models.0.scaling.gpus_per_worker=1")
    with pytest.raises(InfeasibleResources, match="GPU"):
        train_models(gpu, tiny_manifest)


def test_bad_model_config_fails_before_workers(tmp_path, tiny_city, tiny_manifest, ray_session):
    with pytest.raises(ValueError, match=r"model 'bot'.*resnet18"):
        train_models(_cfg(tmp_path, tiny_city, "models.0.backbone=resnet18x"), tiny_manifest)
    with pytest.raises(ValueError, match=r"P x K = 40 x 4 on 2 worker\(s\) needs 80 identities"):
        train_models(_cfg(tmp_path, tiny_city, "models.0.recipe.0.p=40"), tiny_manifest)
    assert not (tmp_path / "run" / "models").exists()


def test_multi_domain_then_fine_tune_recipe(tmp_path, tiny_city, ray_session):
    """Multi-domain learning (001): real + the first N synthetic identities, then a fine-tune on
    real only with the first two stages frozen and a new classifier (two-stage learning, 002)."""
    from vreid.data import load_dataset
    from vreid.train.loop import stage_rows

    cfg = _cfg(tmp_path, tiny_city,
               f"data.extra_train=[{{format: synth, root: {tmp_path / 'synthetic'}, synth_preset: tiny, seed: 1}}]",
               "models.1.recipe=[{name: mdl, epochs: 1, optimizer: adam, lr: 1.0e-3, p: 4, k: 4, "
               "domains: [real, synthetic], synthetic_ids: 10}, {name: finetune, epochs: 1, optimizer: sgd, "
               "lr: 1.0e-3, p: 4, k: 4, domains: [real], freeze_stages: 2, new_classifier: true}]")
    cfg.models = cfg.models[1:]
    manifest = load_dataset(cfg.data)
    from vreid.train.launcher import training_manifest

    train = training_manifest(cfg, manifest)
    first = stage_rows(train.filter(__import__("pyarrow.compute").compute.equal(train.column("split"), "train")),
                       cfg.models[0].recipe[0])
    domains = first.column("domain").to_pylist()
    assert set(domains) == {"real", "synthetic"}
    syn_ids = {p for p, d in zip(first.column("pid").to_pylist(), domains) if d == "synthetic"}
    assert len(syn_ids) == 10
    (result,) = train_models(cfg, manifest)
    assert result.status == "trained", result.error
    _, meta = load_trained_model(result.model_dir)
    assert [h["stage"] for h in meta["history"]] == ["init", "mdl", "finetune"]
    assert len(meta["class_ids"]) == 30, "the fine-tune classifier covers the real training identities only"


def test_undecodable_training_image_fails_before_training_or_is_skipped(tmp_path, tiny_city, tiny_manifest,
                                                                         ray_session):
    """``data.on_bad_image``: ``fail`` names the file before any worker starts; ``skip`` trains
    without it and records it in the trained model's metadata."""
    import shutil

    import pyarrow.compute as pc

    from vreid.data import load_manifest
    from vreid.train.launcher import UnreadableTrainingImages

    root = tmp_path / "city"
    shutil.copytree(tiny_city, root)
    train = tiny_manifest.filter(pc.equal(tiny_manifest.column("split"), "train"))
    bad = train.column("image_id")[5].as_py()
    (root / bad).write_bytes(b"not a jpeg")
    manifest = load_manifest(root, "synth")  # existence only (verify_images false): it passes here

    def config(policy):
        c = _cfg(tmp_path / policy, root, f"data.on_bad_image={policy}", "models.1.recipe.0.epochs=1")
        c.models = c.models[1:]
        return c

    fail = config("fail")
    with pytest.raises(UnreadableTrainingImages, match=f"1 training image.*{root / bad}: not an image file"):
        train_models(fail, manifest)
    assert not (Path(fail.run_dir) / "train" / "ray").exists() and not (Path(fail.run_dir) / "models").exists()
    (result,) = train_models(config("skip"), manifest)
    assert result.status == "trained", result.error
    meta = load_trained_model(result.model_dir)[1]
    assert meta["skipped_images"] == [{"image_id": bad, "reason": "not an image file"}]


def test_attribute_head_on_a_dataset_without_attribute_labels(tmp_path, tiny_city, tiny_manifest, ray_session):
    import pyarrow as pa
    import pyarrow.compute as pc

    cfg = _cfg(tmp_path, tiny_city)
    cfg.models = cfg.models[1:]  # 'attr', head: attribute
    table = tiny_manifest.filter(pc.equal(tiny_manifest.column("split"), "train"))
    no_colour = table.set_column(table.schema.get_field_index("color"), "color",
                                 pa.array([-1] * table.num_rows, table.schema.field("color").type))
    with pytest.raises(ValueError, match=rf"model 'attr'.*dataset '{tiny_city}'.*no colour labels.*'color'"):
        train_models(cfg, tiny_manifest, tables={"attr": no_colour})
    assert not (tmp_path / "run" / "models").exists()



def test_out_of_memory_is_named_in_the_model_error():
    """How a worker group that ran out of memory reads in the model's error (the launcher's
    classification of Train V2's error text); other failures keep their own text."""
    from vreid.config import ModelConfig
    from vreid.train.launcher import out_of_memory_reason

    m = ModelConfig(name="huge")
    train_err = RuntimeError("Training failed due to worker errors:\n[Rank 0]\nTraceback ...\nRuntimeError: "
                             "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                             "you tried to allocate 905969664 bytes. Error code 12 (Cannot allocate memory)")
    reason = out_of_memory_reason(train_err, m)
    assert reason.startswith("out of memory: a training worker of model 'huge' could not allocate what it needed: "
                             "RuntimeError: [enforce fail"), reason
    assert "lower the batch (recipe p x k), input_size" in reason
    monitor = RuntimeError("ray.exceptions.OutOfMemoryError: Task was killed due to the node running low on memory.")
    assert out_of_memory_reason(monitor, m).startswith("out of memory: ")
    assert out_of_memory_reason(RuntimeError("ValueError: bad label column"), m) is None
