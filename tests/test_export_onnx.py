"""jobs/export.py: model.onnx (dynamic batch, feature + probability heads) beside the trained
model, checked with onnxruntime against PyTorch on the run's validation images; a failing check
exits non-zero naming the model and the difference and keeps no model.onnx."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vreid.config import dump_config, load_config
from vreid.models import build_model
from vreid.models.trained import export_trained_model

MODELS = {  # untrained weights, tiny inputs
    "bot-ibn": dict(backbone="resnet10t", head="bnneck", ibn=True, input_size=[48, 48]),       # ResNet-IBN-a BoT
    "dense-attr": dict(backbone="densenet121", head="attribute", input_size=[32, 32]),        # 000 attribute net
    "agnet": dict(backbone="resnet10t", head="agnet", input_size=[48, 48]),                   # 004
}


def _run(tmp: Path, city: Path, names: list[str]) -> Path:
    cfg = load_config("configs/tiny.yaml", [f"run_dir={tmp / 'run'}", f"data.root={city}"])
    cfg.models = []
    data = cfg.model_dump(mode="json")
    data["models"] = [{"name": n, **{k: v for k, v in MODELS[n].items()}} for n in names]
    path = tmp / "export.yaml"
    path.write_text(dump_config(type(cfg).model_validate(data)))
    torch.manual_seed(0)
    for n in names:
        args = {**MODELS[n], "task": "reid", "num_classes": 6}
        if args["head"] != "bnneck":
            args.update(num_colors=10, num_types=7)
        model = build_model(**{**args, "input_size": tuple(args["input_size"])})
        export_trained_model(model.state_dict(), args, {"key": "k", "name": n},
                             tmp / "run" / "models" / n)
    return path


def _job(monkeypatch, capsys, config: Path, name: str) -> tuple[int, str, str]:
    sys.path.insert(0, str(Path("jobs").resolve()))
    import export as job

    monkeypatch.setattr(sys, "argv", ["export.py", "--config", str(config), "--model", name])
    code = 0
    try:
        job.main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def export_run(tmp_path_factory, tiny_city):
    tmp = tmp_path_factory.mktemp("export")
    return tmp, _run(tmp, tiny_city, list(MODELS))


@pytest.mark.parametrize("name", list(MODELS))
def test_export_writes_a_checked_onnx_model(export_run, monkeypatch, capsys, name):
    import onnx
    import onnxruntime as ort

    tmp, config = export_run
    code, out, err = _job(monkeypatch, capsys, config, name)
    assert code == 0, err
    assert f"ONNX check passed: model '{name}'" in out
    model_dir = tmp / "run" / "models" / name
    check = json.loads((model_dir / "onnx_check.json").read_text())
    assert check["passed"] and check["split"] == "validation" and check["queries"] > 0
    assert check["max_feature_diff"] <= 1e-4 and check["rankings_differ"] == 0 and check["top_k"] == 10
    want = ["feature"] + ([] if MODELS[name]["head"] == "bnneck" else ["color_prob", "type_prob"])
    assert check["outputs"] == want

    graph = onnx.load(model_dir / "model.onnx").graph
    assert [o.name for o in graph.output] == want
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch axis
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    h, w = MODELS[name]["input_size"]
    for batch in (1, 3):
        outs = session.run(None, {"images": np.zeros((batch, 3, h, w), np.float32)})
        assert all(o.shape[0] == batch for o in outs)
        if len(outs) > 1:
            np.testing.assert_allclose(outs[1].sum(1), 1.0, atol=1e-5)  # probabilities


def test_failed_check_exits_naming_the_model_and_keeps_no_model_onnx(tmp_path, tiny_city, monkeypatch, capsys):
    """An exporter that writes a graph which does not reproduce the model (here: one BN scale off)."""
    from vreid.models import export_onnx

    config = _run(tmp_path, tiny_city, ["bot-ibn"])
    real = export_onnx.export_graph

    def broken_export(model, *args, **kwargs):
        wrong = copy.deepcopy(model)
        with torch.no_grad():
            wrong.head.neck.bn.weight.mul_(1.5).add_(torch.linspace(0, 1, wrong.head.neck.bn.weight.numel()))
        return real(wrong, *args, **kwargs)

    monkeypatch.setattr(export_onnx, "export_graph", broken_export)
    code, out, err = _job(monkeypatch, capsys, config, "bot-ibn")
    assert code == 1
    assert "ONNX check FAILED for model 'bot-ibn'" in err and "max |d feature| after L2" in err
    model_dir = tmp_path / "run" / "models" / "bot-ibn"
    assert not (model_dir / "model.onnx").exists() and not (model_dir / "onnx_check.json").exists()
    assert (model_dir / "model.onnx.failed").is_file()
    assert not json.loads((model_dir / "onnx_check.json.failed").read_text())["passed"]

    code, _, err = _job(monkeypatch, capsys, config, "nosuch")
    assert code == 1 and "--model 'nosuch' is not a model of this config" in err
