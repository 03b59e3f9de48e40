"""Ray Tune sweep of post-processing hyperparameters on the validation split.

Every seed paper hand-picks k1/k2/λ, δ_t/δ_c, θ, α, β, λ1/λ2 and the WF threshold; here a
``Tuner`` searches them (Optuna TPE when installed, random otherwise). The validation features
and the k-NN graph for the largest k1 of the space are computed once and handed to every trial
through the object store (``tune.with_parameters``); each trial only redoes the sparse
re-ranking and the query x gallery steps.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from pathlib import Path
from typing import Any

import yaml

from vreid.config import STEP_NAMES, PostprocessConfig, RunConfig, SearchDimension, TuneConfig
from vreid.errors import InputError
from vreid.fault_points import pause_point
from vreid.postprocess.pipeline import FEATURE_STEPS, PostprocessInputs, prepare_cache, run_postprocess

log = logging.getLogger("vreid.tune")


class SweepError(InputError):
    """A search space or sweep that cannot run or produced no usable trial."""


def check_space(base: PostprocessConfig, space: dict[str, SearchDimension]) -> None:
    """Every key names a step of the base pipeline (and a parameter of that step)."""
    present = {s.step: s for s in base.steps}
    for key, dim in space.items():
        step, _, param = key.partition(".")
        if step not in STEP_NAMES:
            raise SweepError(f"tune.space '{key}': '{step}' is not a post-processing step {STEP_NAMES}")
        if step not in present:
            raise SweepError(f"tune.space '{key}': names no step of the pipeline (steps: {list(present)}); "
                             f"add '{step}' to postprocess.steps")
        if not param and dim.type != "switch":
            raise SweepError(f"tune.space '{key}': a bare step name needs type 'switch'")
        if param and param not in type(present[step]).model_fields or param == "step":
            raise SweepError(f"tune.space '{key}': step '{step}' has no parameter '{param}' "
                             f"(parameters: {[f for f in type(present[step]).model_fields if f != 'step']})")
        ends = dim.values if dim.type == "choice" else [] if dim.type == "switch" else [
            int(dim.low) if dim.type == "int" else dim.low, int(dim.high) if dim.type == "int" else dim.high]
        for value in ends:
            try:
                apply_params(base, {key: value})
            except ValueError as exc:
                raise SweepError(f"tune.space '{key}': value {value!r} is outside what the step accepts: "
                                 f"{exc.errors()[0]['msg'] if hasattr(exc, 'errors') else exc}") from None


def apply_params(base: PostprocessConfig, params: dict[str, Any]) -> PostprocessConfig:
    """The base pipeline with ``step.param`` values set and switched-off steps removed."""
    data = base.model_dump(mode="json")
    off = set()
    for key, value in params.items():
        step, _, param = key.partition(".")
        for s in data["steps"]:
            if s["step"] == step:
                if param:
                    s[param] = value
                elif not value:
                    off.add(step)
    data["steps"] = [s for s in data["steps"] if s["step"] not in off]
    return PostprocessConfig.model_validate(data)


def param_space(space: dict[str, SearchDimension]) -> dict[str, Any]:
    from ray import tune

    out = {}
    for key, d in space.items():
        if d.type == "int":
            out[key] = tune.randint(int(d.low), int(d.high) + 1)
        elif d.type == "float":
            out[key] = tune.uniform(d.low, d.high)
        elif d.type == "loguniform":
            out[key] = tune.loguniform(d.low, d.high)
        elif d.type == "choice":
            out[key] = tune.choice(d.values)
        else:
            out[key] = tune.choice([True, False])
    return out


def largest_k(base: PostprocessConfig, space: dict[str, SearchDimension]) -> int:
    """k of the shared k-NN graph: the largest k1 (and k2 - 1) any trial can ask for."""
    from vreid.postprocess.steps.rerank import LEVEL_DEFAULTS

    # unset k1 / k2 take their level's default; the level itself may be a dimension: take the largest
    ks = [max(s.resolved(lv)[0], s.resolved(lv)[1] - 1) for s in base.steps if s.step == "rerank"
          for lv in LEVEL_DEFAULTS]
    k1 = space.get("rerank.k1")
    k2 = space.get("rerank.k2")
    if k1 is not None:
        ks.append(int(k1.high) if k1.type != "choice" else max(k1.values))
    if k2 is not None:
        ks.append((int(k2.high) if k2.type != "choice" else max(k2.values)) - 1)
    return max(ks) if ks else 0


def shared_cache(inputs: PostprocessInputs, base: PostprocessConfig, space: dict[str, SearchDimension]) -> dict:
    """Feature states and k-NN graphs for every on/off combination of switched feature steps
    (and every re-ranking level, when ``rerank.level`` is a dimension)."""
    switches = [k for k, d in space.items() if d.type == "switch" and k in FEATURE_STEPS]
    level = space.get("rerank.level")
    levels = [{"rerank.level": v} for v in level.values] if level is not None and level.values else [{}]
    k = largest_k(base, space)
    cache: dict = {}
    for combo in itertools.product([True, False], repeat=len(switches)):
        for lv in levels:
            cfg = apply_params(base, {**dict(zip(switches, combo)), **lv})
            if k:
                prepare_cache(inputs, cfg, cache, k)
    return cache


def _trial(params: dict[str, Any], inputs: PostprocessInputs, cache: dict, base: dict, metric: str) -> None:
    from ray import tune

    pause_point("tune.trial", params=params)
    pcfg = apply_params(PostprocessConfig.model_validate(base), params)
    result = run_postprocess(inputs, pcfg, dict(cache), with_ablation=False)
    tune.report({k: v for k, v in result.final.items() if k != "step"})


def default_point(base: PostprocessConfig, space: dict[str, SearchDimension]) -> dict[str, Any] | None:
    """The base pipeline's own values, evaluated first so the sweep never ends below them;
    None when one of them lies outside the space."""
    steps = {s.step: s for s in base.steps}
    point = {}
    for key, dim in space.items():
        step, _, param = key.partition(".")
        value = getattr(steps[step], param) if param else True
        if value is None and step == "rerank":  # unset k1 / k2 / lambda: the level's default
            level = steps[step].level if steps[step].level != "auto" else "track" if "tracklet" in steps else "image"
            value = steps[step].resolved(level)[("k1", "k2", "lambda_value").index(param)]
        inside = (dim.values is not None and value in dim.values) if dim.type == "choice" else \
            dim.type == "switch" or (dim.low <= value <= dim.high)
        if not inside:
            return None
        point[key] = value
    return point


def _search_alg(tcfg: TuneConfig, first: dict[str, Any] | None):
    points = [first] if first is not None else None
    if tcfg.search in ("auto", "optuna"):
        try:
            from ray.tune.search.optuna import OptunaSearch

            import optuna  # noqa: F401
        except ImportError:
            if tcfg.search == "optuna":
                raise SweepError("tune.search is 'optuna' but optuna is not installed (pip install optuna)") from None
        else:
            return OptunaSearch(metric=tcfg.metric, mode="max", seed=tcfg.seed, points_to_evaluate=points)
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=tcfg.seed, points_to_evaluate=points)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def plot_scores(df, keys: list[str], metric: str, path: Path) -> None:
    """Score against each parameter (one panel per parameter), for the report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    cols = [f"config/{k}" for k in keys]
    n = max(1, len(cols))
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3), squeeze=False)
    for ax, col, key in zip(axes[0], cols, keys):
        # a choice of strings (e.g. rerank.level) is pandas' str dtype, not object, from pandas 3 on
        x = df[col].astype(float) if pd.api.types.is_numeric_dtype(df[col]) else df[col].astype(str)
        ax.scatter(x, df[metric], s=14, alpha=0.7)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.suptitle(f"validation {metric} per trial")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_sweep(cfg: RunConfig, inputs: PostprocessInputs, base: PostprocessConfig | None = None,
              callbacks: list | None = None) -> dict[str, Any]:
    """Run (or resume) the sweep; write the best post-processing YAML, the trial table and a plot.
    ``callbacks``: Tune callbacks, e.g. the MLflow trial logger of :mod:`vreid.tracking`.

    Returns ``{"best_config", "best_score", "default_score", "out_dir", "num_trials"}``.
    """
    from ray import tune

    tcfg = cfg.tune
    base = base or cfg.postprocess
    if not inputs.has_ground_truth:
        raise SweepError("the validation split has no ground truth (pid for every query and gallery image)")
    if not tcfg.space:
        raise SweepError("tune.space is empty: name at least one 'step.param' to search")
    check_space(base, tcfg.space)
    default = run_postprocess(inputs, base, with_ablation=False).final[tcfg.metric]
    cache = shared_cache(inputs, base, tcfg.space)
    trainable = tune.with_resources(
        tune.with_parameters(_trial, inputs=inputs, cache=cache, base=base.model_dump(mode="json"),
                             metric=tcfg.metric),
        {**tcfg.resources_per_trial, "cpu": tcfg.cpus_per_trial})
    storage = str(Path(cfg.run_dir).resolve() / "tune")
    path = os.path.join(storage, tcfg.name)
    if tune.Tuner.can_restore(path):
        log.info("tune: resuming the sweep at %s", path)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space=param_space(tcfg.space),
            tune_config=tune.TuneConfig(metric=tcfg.metric, mode="max", num_samples=tcfg.num_samples,
                                        search_alg=_search_alg(tcfg, default_point(base, tcfg.space)),
                                        max_concurrent_trials=tcfg.max_concurrent_trials,
                                        time_budget_s=tcfg.time_budget_s,
                                        reuse_actors=True),  # one actor (and one copy of the inputs) per slot
            # a trial whose actor died (its node lost) is started again instead of ending as an error
            run_config=tune.RunConfig(name=tcfg.name, storage_path=storage, verbose=0, callbacks=callbacks,
                                      failure_config=tune.FailureConfig(max_failures=tcfg.max_failures)))
    log.info("tune: %d trials over %s, %d at a time, metric %s", tcfg.num_samples, sorted(tcfg.space),
             tcfg.max_concurrent_trials, tcfg.metric)
    results = tuner.fit()
    ok = [r for r in results if r.error is None and r.metrics and tcfg.metric in r.metrics]
    if not ok:
        err = next((r.error for r in results if r.error is not None), None)
        cause = getattr(err, "cause", None) or err
        first = f"{type(cause).__name__}: {cause}" if cause is not None else "no trial reported a result"
        raise SweepError(f"every trial failed; the first error: {first}")
    best = max(ok, key=lambda r: r.metrics[tcfg.metric])
    params = {k: best.config[k] for k in tcfg.space}
    best_cfg = apply_params(base, params).model_copy(update={"name": f"{base.name}-tuned"})
    out = Path(path)
    _write_atomic(out / "best_postprocess.yaml", yaml.safe_dump(best_cfg.model_dump(mode="json"), sort_keys=False))
    df = results.get_dataframe()
    df.to_csv(out / "trials.csv", index=False)
    plot_scores(df[df[tcfg.metric].notna()], list(tcfg.space), tcfg.metric, out / "scores.png")
    summary = {"metric": tcfg.metric, "best_score": best.metrics[tcfg.metric], "default_score": default,
               "best_params": params, "num_trials": len(df), "failed_trials": len(results) - len(ok)}
    _write_atomic(out / "summary.json", json.dumps(summary, indent=1, default=str))
    log.info("tune: best %s %.4f (defaults %.4f) with %s; written to %s", tcfg.metric,
             summary["best_score"], default, params, out / "best_postprocess.yaml")
    return {"best_config": best_cfg, "out_dir": str(out), **summary}
