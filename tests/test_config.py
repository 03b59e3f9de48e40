"""Config loading, overrides and errors that name the field."""

from __future__ import annotations

import pytest

from vreid.config import ConfigError, apply_overrides, dump_config, load_config


def test_tiny_and_demo_configs_load():
    for name in ("tiny", "demo"):
        cfg = load_config(f"configs/{name}.yaml")
        assert cfg.data.format == "synth" and cfg.data.synth_preset == name


def test_gpu_cluster_presets_load():
    for name in ("aic21", "veri776"):
        cfg = load_config(f"configs/{name}.yaml")
        assert cfg.models and all(m.scaling.use_gpu and (m.pretrained or m.pretrained_path) for m in cfg.models)
        assert cfg.extract.num_gpus_per_actor > 0 and cfg.tune.space


def test_overrides_typed_and_nested():
    cfg = load_config("configs/tiny.yaml", ["run_dir=/tmp/elsewhere", "data.validation.num_ids=7"])
    assert cfg.run_dir == "/tmp/elsewhere" and cfg.data.validation.num_ids == 7
    data = {"models": [{"name": "a"}, {"name": "b"}]}
    assert apply_overrides(data, ["models.1.name=c"])["models"][1]["name"] == "c"
    with pytest.raises(ConfigError, match="not an index"):
        apply_overrides(data, ["models.5.name=c"])
    assert apply_overrides(data, ["models.2={name: d}"])["models"][2] == {"name": "d"}  # one past the end appends
    with pytest.raises(ConfigError, match=r"'4' is not an index of the list \(0\.\.3, 3 appends\)"):
        apply_overrides(data, ["models.4={name: e}"])
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        apply_overrides({}, ["run_dir"])


def test_unknown_key_and_wrong_type_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.validation\.nmu_ids: Extra inputs are not permitted"):
        load_config("configs/tiny.yaml", ["data.validation.nmu_ids=3"])
    with pytest.raises(ConfigError, match=r"data\.validation\.num_ids: Input should be a valid integer"):
        load_config("configs/tiny.yaml", ["data.validation.num_ids=many"])
    with pytest.raises(ConfigError, match=r"data\.format: Input should be"):
        load_config("configs/tiny.yaml", ["data.format=cityflow"])
    with pytest.raises(ConfigError, match=r"synth_options \['test_only_cams'\] are not synthetic-city preset fields"):
        load_config("configs/tiny.yaml", ["data.synth_options.test_only_cams=2"])
    assert load_config("configs/tiny.yaml", ["data.synth_options.test_only_cameras=2"]).data.synth_options == {
        "test_only_cameras": 2}
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_dump_roundtrip(tmp_path):
    cfg = load_config("configs/demo.yaml")
    p = tmp_path / "resolved.yaml"
    p.write_text(dump_config(cfg))
    assert load_config(p) == cfg


def test_custom_resources_per_stage():
    from vreid.config import ConfigError, load_config

    cfg = load_config("configs/tiny.yaml", ["models.0.scaling.resources={fake_gpu: 1}",
                                            "extract.resources_per_actor={fake_gpu: 0.5}",
                                            "tune.resources_per_trial={spot: 0.25}",
                                            "postprocess.actor_resources={highmem: 1}"])
    assert cfg.models[0].scaling.resources == {"fake_gpu": 1.0}
    assert cfg.extract.resources_per_actor == {"fake_gpu": 0.5}
    assert cfg.tune.resources_per_trial == {"spot": 0.25}
    assert cfg.postprocess.actor_resources == {"highmem": 1.0}
    for override, message in [("models.0.scaling.resources={GPU: 1}", "'GPU' is not a custom resource"),
                              ("extract.resources_per_actor={a: 0}", "a: 0 must be > 0"),
                              ("tune.resources_per_trial={a: 1.5}", "must be a whole number"),
                              ("postprocess.actor_resources={'node:1.2.3.4': 1}", "not a custom resource name"),
                              ("models.0.scaling.use_gpu=true", r"models\.0\.scaling.*use_gpu is true but "
                                                                "gpus_per_worker is 0")]:
        with pytest.raises(ConfigError, match=message):
            load_config("configs/tiny.yaml", [override])
