"""Typed run configuration: pydantic models, YAML loading and ``--set a.b=c`` overrides.

Every job takes ``--config FILE`` plus any number of ``--set dotted.key=value``. Unknown keys
and wrong types fail with the field path (pydantic), before any work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A configuration file or override is invalid."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ValidationSplitConfig(StrictModel):
    """Held-out training identities used as query/gallery for validation (METHODS.md, Evaluation)."""

    num_ids: int = Field(0, ge=0, description="training identities held out (0 = no validation split)")
    queries_per_id: int = Field(3, ge=1, description="queries sampled per held-out identity (001: 3)")
    seed: int = 0


class DataConfig(StrictModel):
    format: Literal["aic", "veri776", "vehicleid", "vehiclex", "synth", "manifest"] = "synth"
    root: str = Field("data/synth-tiny", description="dataset root (or manifest file for 'manifest')")
    synth_preset: Literal["tiny", "demo", "city"] | None = Field(
        "tiny", description="with format 'synth': generate this preset at root when absent"
    )
    seed: int = Field(0, description="seed of the synthetic city and of the VehicleID gallery draw")
    on_bad_image: Literal["fail", "skip"] = Field(
        "fail", description="unreadable images: fail naming the file, or skip and record the reason"
    )
    verify_images: bool = Field(False, description="decode every image when reading the dataset")
    vehicleid_test_size: int = Field(800, description="VehicleID test list (800, 1600, 2400, ...)")
    validation: ValidationSplitConfig = ValidationSplitConfig()


class RunConfig(StrictModel):
    """The whole run. Later stages add their own sections."""

    name: str = "run"
    run_dir: str = Field("runs/tiny", description="all outputs of the run live here (path or URI)")
    seed: int = 0
    data: DataConfig = DataConfig()

    @model_validator(mode="after")
    def _strip_run_dir(self) -> RunConfig:
        if not self.run_dir.strip():
            raise ValueError("run_dir must not be empty")
        return self


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected dotted.key=value")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override '{item}': empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{item}': value is not valid YAML: {exc}") from exc
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML; list items by index) in place."""
    for item in overrides:
        path, value = _parse_override(item)
        node: Any = data
        for i, part in enumerate(path[:-1]):
            where = ".".join(path[: i + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override '{item}': '{where}' is not an index of the list")
                node = node[int(part)]
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, (dict, list)):
                    raise ConfigError(f"override '{item}': '{where}' is a value, not a section")
        last = path[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(f"override '{item}': '{last}' is not an index of the list")
            node[int(last)] = value
        else:
            node[last] = value
    return data


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        lines.append(f"  {loc}: {err['msg']} (got {err.get('input')!r})"[:400])
    return "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                model: type[BaseModel] = RunConfig) -> Any:
    """Load a YAML config file, apply overrides and validate it."""
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level")
        data = loaded or {}
    apply_overrides(data, list(overrides or []))
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def dump_config(cfg: BaseModel) -> str:
    """The resolved config as YAML (what a run records next to its outputs)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
