"""Typed run configuration: pydantic models, YAML loading and ``--set a.b=c`` overrides.

Every job takes ``--config FILE`` plus any number of ``--set dotted.key=value``. Unknown keys
and wrong types fail with the field path (pydantic), before any work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vreid.errors import InputError


class ConfigError(InputError):
    """A configuration file or override is invalid."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# Resources with a config field of their own (or Ray's memory accounting): not custom resources.
RESERVED_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


def check_custom_resources(resources: dict[str, float], where: str) -> dict[str, float]:
    """Custom Ray resources (name -> amount per worker / actor / trial), as Ray accepts them:
    a name of their own (CPU and GPU have their fields), an amount > 0, whole above 1
    (Ray: "resource quantities >1 must be whole numbers")."""
    for name, amount in resources.items():
        if not name or not name.strip() or name.startswith("node:"):
            raise ValueError(f"{where}: '{name}' is not a custom resource name")
        if name in RESERVED_RESOURCES:
            raise ValueError(f"{where}: '{name}' is not a custom resource; use the section's own CPU / GPU / "
                             "memory fields")
        if not amount > 0:
            raise ValueError(f"{where}: {name}: {amount:g} must be > 0")
        if amount > 1 and amount != int(amount):
            raise ValueError(f"{where}: {name}: {amount:g} must be a whole number (Ray takes fractions only "
                             "below 1)")
    return resources


def _custom_resources_field(what: str) -> Any:
    return Field(default_factory=dict, description=(
        f"custom Ray resources {what} asks for, name -> amount (e.g. {{accelerator_a10g: 1}}): scheduled only "
        "on nodes that declare them (`ray start --resources`, cluster.yaml node types' `resources`); an "
        "autoscaler adds such nodes on demand"))


class ValidationSplitConfig(StrictModel):
    """Held-out training identities used as query/gallery for validation (METHODS.md, Evaluation)."""

    num_ids: int = Field(0, ge=0, description="training identities held out (0 = no validation split)")
    queries_per_id: int = Field(3, ge=1, description="queries sampled per held-out identity (001: 3)")
    seed: int = 0


class ExtraTrainData(StrictModel):
    """Another dataset whose training split joins the target's, e.g. VehicleX or a second synthetic
    city as the synthetic domain of multi-domain learning (001) or stage I of two-stage learning (002)."""

    format: Literal["aic", "veri776", "vehicleid", "vehiclex", "veriwild", "synth", "manifest"] = "vehiclex"
    root: str
    domain: Literal["real", "synthetic"] = "synthetic"
    synth_preset: Literal["tiny", "demo", "city"] | None = Field(None, description="generate when absent")
    seed: int = 1


class DataConfig(StrictModel):
    format: Literal["aic", "veri776", "vehicleid", "vehiclex", "veriwild", "synth", "manifest"] = "synth"
    root: str = Field("data/synth-tiny", description="dataset root (or manifest file for 'manifest')")
    synth_preset: Literal["tiny", "demo", "city"] | None = Field(
        "tiny", description="with format 'synth': generate this preset at root when absent"
    )
    seed: int = Field(0, description="seed of the synthetic city and of the VehicleID gallery draw")
    synth_options: dict[str, Any] = Field(
        default_factory=dict, description="preset fields to override, e.g. {test_only_cameras: 2} (a new scenario)")
    on_bad_image: Literal["fail", "skip"] = Field(
        "fail", description="unreadable images: fail naming the file, or skip and record the reason"
    )
    verify_images: bool = Field(False, description="decode every image when reading the dataset")
    vehicleid_test_size: int = Field(800, description="VehicleID test list (800, 1600, 2400, ...)")
    vehicleid_draws: int = Field(10, ge=1, description="VehicleID protocol (Liu et al. 2016): metrics are the mean "
                                                       "over this many seeded gallery draws (seeds seed, seed+1, ...)")
    veriwild_test_set: Literal["small", "medium", "large"] = Field(
        "small", description="VERI-Wild test set (Lou et al. 2019): test_3000 / test_5000 / test_10000")
    validation: ValidationSplitConfig = ValidationSplitConfig()
    extra_train: list[ExtraTrainData] = Field(default_factory=list)

    @model_validator(mode="after")
    def _synth_options(self) -> DataConfig:
        from vreid.data.synth.presets import SynthPreset

        unknown = sorted(set(self.synth_options) - set(SynthPreset.model_fields))
        if unknown:
            raise ValueError(f"synth_options {unknown} are not synthetic-city preset fields "
                             f"(those are {sorted(SynthPreset.model_fields)})")
        return self


class LossConfig(StrictModel):
    """Training losses (METHODS.md, Training recipe); the defaults are the BoT baseline of 001 and
    the library's defaults (``vreid.train.losses.ReIDLoss`` reads them from here)."""

    id_weight: float = Field(1.0, ge=0, description="ID cross-entropy weight (004 eq. 8: lambda1 = 0.5)")
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="BoT label smoothing epsilon (001: BoT's 0.1; "
                                                                "000 eq. 1, 002 and 004: plain CE; 003 drops it)")
    triplet_weight: float = Field(1.0, ge=0)
    triplet_margin: float | None = Field(
        None, description="batch-hard margin (000: 0.5); null = soft margin log(1+exp(d_ap-d_an)) (001/003)")
    center_weight: float = Field(0.0, ge=0, description="center loss beta (000 eq. 4: 5e-4; 001/003 drop it)")
    center_lr: float = Field(0.5, gt=0, description="the centers' own SGD step size (BoT code SOLVER.CENTER_LR: "
                                                    "0.5; no momentum, no weight decay, gradient rescaled by "
                                                    "1/center_weight first)")
    color_weight: float = Field(1.0, ge=0, description="colour CE weight (000 eq. 5: 1; 004 eq. 8: lambda2 = 0.5)")
    type_weight: float = Field(1.0, ge=0, description="type CE weight (000 eq. 5: 1; 004 eq. 8: lambda2 = 0.5)")
    verify_weight: float = Field(
        0.0, ge=0, description="AGNet pairwise verification loss weight (004 eq. 8: lambda3 = 1; head: agnet "
                               "only): Square Layer (f1-f2)^2 -> 2 logits on every pair of the batch (004 §III-D)")
    als: bool = Field(True, description="the verification loss is ALS (004 eqs. 6-7) instead of plain CE; the "
                                        "category CE stays plain, so no cross-entropy is counted twice")
    als_theta: float = Field(0.1, ge=0, lt=1, description="ALS theta of 004 eq. 7 (no value in 004; chosen here)")
    als_alpha: float = Field(0.01, gt=0, description="ALS alpha of 004 eq. 6 (no value in 004; chosen here)")
    als_beta: float = Field(1.0, ge=0, description="ALS beta of 004 eq. 6 (no value in 004; chosen here)")


class AugmentConfig(StrictModel):
    flip_p: float = Field(0.5, ge=0, le=1)
    pad: int = Field(10, ge=0, description="pad then random crop (BoT: 10)")
    erase_p: float = Field(0.5, ge=0, le=1, description="random erasing (BoT: 0.5)")
    shrink_p: float = Field(0.0, ge=0, le=1, description="random shrink (000: 0.5)")
    shrink_range: tuple[float, float] = Field((0.4, 0.6), description="random shrink scale (000: U(0.4, 0.6))")
    background_p: float = Field(0.0, ge=0, le=1, description="background substitution with masks (000: 0.5)")


class StageConfig(StrictModel):
    """One stage of a recipe; each starts from the previous stage's checkpoint."""

    name: str = "stage1"
    epochs: int = Field(2, ge=1)
    optimizer: Literal["sgd", "adam"] = Field("sgd", description="001/003: SGD; 000: Adam")
    lr: float = Field(1e-2, gt=0, description="001/003: 1e-2 (SGD); 000: 3.5e-4 (Adam)")
    classifier_lr: float | None = Field(
        None, gt=0, description="own lr of the ID classifier (001 MDL fine-tune: 2e-3 vs 1e-3); null = lr")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    warmup_epochs: int = Field(0, ge=0, description="BoT: 10 epochs linear from warmup_factor*lr")
    warmup_factor: float = Field(0.1, gt=0, le=1, description="warm-up starts at this x lr (000: 3.5e-5 -> "
                                                               "3.5e-4; 001/003: 1e-3 -> 1e-2)")
    milestones: list[int] = Field(default_factory=list, description="BoT: x0.1 at epochs 40 and 70")
    gamma: float = Field(0.1, gt=0, le=1)
    p: int = Field(8, ge=2, description="identities per batch (000: 64; 003 code: 12)")
    k: int = Field(4, ge=1, description="images per identity (000: 4; 003 code: 8)")
    domains: list[Literal["real", "synthetic", "crop"]] = Field(
        default_factory=lambda: ["real"],
        description="training domains; 'crop' is the heatmap re-cropped copy of the real training images "
                    "(003 §3.1 CityFlow-V2-CROP: trains on original + cropped), made by the recrop stage")
    synthetic_ids: int | None = Field(
        None, ge=1, description="multi-domain learning (001): only the first N synthetic identities")
    freeze_stages: int = Field(0, ge=0, le=4, description="freeze stem + first N stages (001 fine-tune: 2)")
    new_classifier: bool = Field(False, description="two-stage learning (002): replace the classifier")
    classifier_init: Literal["random", "centroids"] = Field(
        "random", description="a new classifier's rows: random (BoT) or the classes' mean f_bn (003 UDA)")
    loss: LossConfig = LossConfig()
    augment: AugmentConfig = AugmentConfig()


class ScalingSection(StrictModel):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    resources: dict[str, float] = _custom_resources_field("each training worker")

    @model_validator(mode="after")
    def _resources(self) -> ScalingSection:
        check_custom_resources(self.resources, "scaling.resources")
        if self.use_gpu and self.gpus_per_worker <= 0:
            raise ValueError("use_gpu is true but gpus_per_worker is 0: a worker would hold no GPU (set "
                             "gpus_per_worker, e.g. 1)")
        return self


class ModelConfig(StrictModel):
    """A model is described entirely by config (issue: Training, item 1)."""

    name: str
    preset: str | None = Field(
        None, description="a paper's training recipe (vreid.train.recipes.RECIPES: aic20_team44 = 000, dmt2020 = "
                          "001, vehiclenet = 002, dmt2021 = 003, agnet = 004); `recipe` entries then override "
                          "its stages by name")
    backbone: str = "resnet18"
    head: Literal["bnneck", "attribute", "agnet"] = "bnneck"
    task: Literal["reid", "camera", "orientation"] = "reid"
    ibn: bool = False
    last_stride: int = Field(1, ge=1, le=2)
    pooling: Literal["avg", "gem"] = "avg"
    embedding_dim: int | None = None
    input_size: tuple[int, int] = (64, 64)
    pretrained: bool = False
    pretrained_path: str | None = None
    init_from: str | None = Field(
        None, description="a trained model directory to start from, e.g. the stage-1 model of UDA stage 2; "
                          "a relative path is relative to run_dir")
    weight: float = Field(1.0, ge=0, description="ensemble weight of this model's feature (000/002)")
    recipe: list[StageConfig] = Field(default_factory=lambda: [StageConfig()])
    scaling: ScalingSection = ScalingSection()

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") is not None:
            from vreid.train.recipes import preset_recipe

            data = {**data, "recipe": preset_recipe(data["preset"], data.get("recipe"))}
        return data

    @model_validator(mode="after")
    def _names(self) -> ModelConfig:
        if not self.name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"model name '{self.name}' must be letters, digits, '-' and '_' only")
        if len({s.name for s in self.recipe}) != len(self.recipe):
            raise ValueError(f"model '{self.name}': stage names must be unique")
        verifying = [s.name for s in self.recipe if s.loss.verify_weight > 0]
        if verifying and self.head != "agnet":
            raise ValueError(f"model '{self.name}': stages {verifying} set loss.verify_weight, the AGNet "
                             f"verification branch (004), which needs head: agnet (got head: {self.head})")
        return self


class TrainConfig(StrictModel):
    max_failures: int = Field(1, ge=0, description="Ray Train FailureConfig: restarts from the last checkpoint")
    amp: bool = Field(True, description="mixed precision when on GPU")
    num_threads: int = Field(1, ge=1, description="torch threads per training worker")
    eval_every: int = Field(1, ge=1, description="validation mAP every N epochs")
    eval_batch_size: int = Field(64, ge=1)
    loader_workers: int = Field(0, ge=0, description="DataLoader worker processes per training worker")
    resource_wait_s: float = Field(
        0.0, ge=0, description="how long to wait for the autoscaler to provide the resources before failing")


class ExtractConfig(StrictModel):
    """Ray Data feature extraction (issue: Feature stores)."""

    actors: int = Field(1, ge=1, description="model actors in the pool")
    cpus_per_actor: float = Field(1.0, gt=0, description="leave a CPU free for the decode tasks on small machines")
    num_gpus_per_actor: float = Field(0.0, ge=0)
    resources_per_actor: dict[str, float] = _custom_resources_field("each model actor of the pool")
    cpus_per_decode_task: float = Field(0.5, gt=0)
    batch_size: int = Field(64, ge=1)
    tta: list[Literal["original", "flip", "crop", "crop_flip", "heatmap_crop", "heatmap_crop_flip"]] = Field(
        default_factory=lambda: ["original", "flip", "crop", "crop_flip"],
        description="views averaged before L2 normalisation (003 §3.3: image, crop, both flipped); 'crop' is a "
                    "fixed centre crop, 'heatmap_crop' the image's box from the recrop stage (003's four views: "
                    "[original, flip, heatmap_crop, heatmap_crop_flip], which need recrop.enabled)")
    crop_ratio: float = Field(0.9, gt=0, le=1, description="centre crop of the 'crop' views")
    dtype: Literal["float32", "float16"] = "float32"
    store_root: str | None = Field(
        None, description="where the feature stores live, a path shared by the nodes or a pyarrow URI such as "
                          "s3://bucket/prefix (?endpoint_override=host:port&scheme=http for MinIO and the like; "
                          "credentials from the environment); null = run_dir")

    @model_validator(mode="after")
    def _views(self) -> ExtractConfig:
        if not self.tta or len(set(self.tta)) != len(self.tta):
            raise ValueError("tta must list at least one view, each once")
        check_custom_resources(self.resources_per_actor, "extract.resources_per_actor")
        return self


class ExportConfig(StrictModel):
    """ONNX export of a trained model (jobs/export.py) and its check with onnxruntime."""

    opset: int = Field(18, ge=13, description="ONNX opset of model.onnx")
    dynamo: bool = Field(False, description="torch.onnx exporter: TorchScript-based (false) or torch.export-based")
    feature_atol: float = Field(1e-4, gt=0, description="largest |ONNX - PyTorch| of the L2-normalised features")
    prob_atol: float = Field(1e-4, gt=0, description="largest |ONNX - PyTorch| of the probability heads")
    top_k: int = Field(10, ge=1, description="the top-k gallery ranking of every query must be identical")
    max_images: int = Field(512, ge=2, description="validation (else test) images the check runs on")
    batch_size: int = Field(32, ge=1)


class TrackingConfig(StrictModel):
    """Experiment tracking with MLflow (vreid/tracking.py); off while mlflow_uri is null."""

    mlflow_uri: str | None = Field(None, description="MLflow tracking server, e.g. http://127.0.0.1:5000; null = off")
    experiment: str | None = Field(None, description="MLflow experiment of the run (null: vreid-<name>)")
    timeout_s: float = Field(5.0, gt=0, description="per request; a server that does not answer is given up on")


def _step_union():
    """The ``postprocess.steps`` item type: the config models of the registered steps
    (:mod:`vreid.postprocess.steps`, one module per step), told apart by their ``step`` tag."""
    from functools import reduce
    from operator import or_

    from vreid.postprocess.registry import load_steps

    steps = load_steps()
    return Annotated[reduce(or_, [s.config for s in steps]), Field(discriminator="step")], steps.names()


PostprocessStep, STEP_NAMES = _step_union()


class EnsembleConfig(StrictModel):
    """Which stores are identity features, and which carry the other signals (000/002/003)."""

    models: list[str] | None = Field(None, description="identity models (null: every reid-task model)")
    weights: dict[str, float] = Field(default_factory=dict, description="override each model's weight")
    divide_by_sqrt_n: bool = Field(False, description="002 code: each part / sqrt(n_models), the concatenation "
                                                      "not re-normalised (false: L2-normalised)")
    camera_model: str | None = None
    orientation_model: str | None = None
    attribute_model: str | None = Field(None, description="store with color_prob / type_prob")


class ComparisonEntry(StrictModel):
    """One post-processing variant scored beside the main step list on the same features (001 Table 1
    in kind: image-level re-ranking, AF-TRR, WF-TRR)."""

    name: str = Field(min_length=1, description="the row's name in metrics.json and the report")
    steps: list[PostprocessStep] = Field(min_length=1, description="applied in this order, as postprocess.steps")

    @model_validator(mode="wrap")
    @classmethod
    def _named(cls, data: Any, handler):
        """Errors inside an entry name the entry, not only its list index."""
        try:
            return handler(data)
        except ValidationError as exc:
            name = data.get("name") if isinstance(data, dict) else None
            why = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(entry)'}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"comparison entry {name!r}: {why}") from None


class PostprocessConfig(StrictModel):
    name: str = "final"
    ensemble: EnsembleConfig = EnsembleConfig()
    steps: list[PostprocessStep] = Field(default_factory=list, description="applied in this order")
    top_k: int = Field(100, ge=1, description="length of the rankings written (AI City: 100)")
    actor_resources: dict[str, float] = _custom_resources_field("the post-processing actor (1 CPU)")
    actor_max_restarts: int = Field(
        2, ge=0, description="times the post-process actor is restarted (and its call retried) when it dies, "
                             "e.g. with its node; its outputs are written atomically, so a retry redoes them whole")
    comparison: list[ComparisonEntry] = Field(
        default_factory=list, description="variants run by the post-process actor after the main steps, from the same "
                                          "features; one row each in metrics.json 'comparison' and the report's "
                                          "'Re-ranking level comparison' (001 Table 1 in kind)")

    @model_validator(mode="after")
    def _resources(self) -> PostprocessConfig:
        check_custom_resources(self.actor_resources, "postprocess.actor_resources")
        return self

    @model_validator(mode="after")
    def _unique_comparison_names(self) -> "PostprocessConfig":
        names = [c.name for c in self.comparison]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"comparison entries {dup} appear more than once: each name is one row")
        return self


class SearchDimension(StrictModel):
    """One dimension of a Tune search space: a range, a set of choices, or a step switch."""

    type: Literal["int", "float", "loguniform", "choice", "switch"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _range(self) -> SearchDimension:
        if self.type in ("int", "float", "loguniform"):
            if self.low is None or self.high is None:
                raise ValueError(f"a '{self.type}' dimension needs low and high")
            if not self.low < self.high:
                raise ValueError(f"empty or inverted range: low={self.low} must be < high={self.high}")
            if self.type == "loguniform" and self.low <= 0:
                raise ValueError("a 'loguniform' dimension needs low > 0")
        if self.type == "choice" and not self.values:
            raise ValueError("a 'choice' dimension needs a non-empty values list")
        return self


class TuneConfig(StrictModel):
    """Ray Tune sweep over post-processing parameters on the validation split (issue: Tune)."""

    name: str = "postprocess"
    metric: Literal["mAP", "mAP@100", "rank-1"] = "mAP"
    num_samples: int = Field(20, ge=1)
    max_concurrent_trials: int = Field(2, ge=1)
    search: Literal["auto", "optuna", "random"] = Field("auto", description="auto: Optuna TPE when installed")
    seed: int = 0
    time_budget_s: float | None = Field(None, gt=0)
    cpus_per_trial: float = Field(0.5, gt=0)
    resources_per_trial: dict[str, float] = _custom_resources_field("each trial")
    max_failures: int = Field(2, ge=0, description="times a failed trial is started again (Ray Tune "
                                                   "FailureConfig), e.g. when its node is lost")
    space: dict[str, SearchDimension] = Field(
        default_factory=dict,
        description="'step.param' -> dimension (e.g. rerank.k1), or 'step' -> {type: switch} to turn a step on/off")

    @model_validator(mode="after")
    def _resources(self) -> TuneConfig:
        check_custom_resources(self.resources_per_trial, "tune.resources_per_trial")
        return self


class DBSCANSetting(StrictModel):
    eps: float = Field(0.55, gt=0, le=1, description="003 code: 0.55")
    min_samples: int = Field(10, ge=2, description="003 code: 10")


def _uda_stage() -> StageConfig:
    return StageConfig(name="uda", epochs=3, optimizer="sgd", lr=4e-4, classifier_init="centroids")


class UDAConfig(StrictModel):
    """Stage 2: pseudo-labels on the test split, then fine-tuning on them (001 Identity Mining,
    003 DBSCAN UDA; METHODS.md, Pseudo-labels and UDA)."""

    enabled: bool = False
    method: Literal["dbscan", "identity_mining", "kmeans"] = Field("dbscan", description="labels stage 2 trains on")
    models: list[str] | None = Field(None, description="re-ID models to fine-tune (null: every reid-task model)")
    camera_alpha: float | None = Field(1.0, ge=0, description="camera-bias removal before clustering (003 eq. 2); "
                                                             "null: off")
    tracklet_beta: float | None = Field(0.0005, ge=0, le=1, description="tracklet fusion (003 §3.2: 0.0005); null: off")
    k1: int = Field(20, ge=1, description="k-reciprocal graph of the Jaccard distance (Zhong et al.: 20)")
    k2: int = Field(6, ge=1, description="Zhong et al.: 6")
    jaccard_weight: float = Field(0.9, ge=0, le=1, description="003 code: 0.9 Jaccard + 0.1 cosine")
    dbscan: list[DBSCANSetting] = Field(
        default_factory=lambda: [DBSCANSetting(), DBSCANSetting(eps=0.6)],
        description="one stage-2 model per setting and re-ID model: two settings for diversity (003)")
    d_n: float = Field(0.49, gt=0, description="Identity Mining (001): picked queries pairwise farther than d_n")
    d_p: float = Field(0.23, gt=0, description="Identity Mining (001): label images closer than d_p")
    kmeans_num_ids: int | None = Field(
        None, ge=2, description="k-means baseline (001): clusters; null = test identities in the ground truth")
    with_training_set: bool = Field(
        False, description="001: the pseudo-labelled test images expand the labelled training set; "
                           "003: stage 2 trains on them alone")
    stage: StageConfig = Field(default_factory=_uda_stage,
                               description="003: 3 epochs at constant lr 4e-4, classifier from centroids")


class RecropConfig(StrictModel):
    """Weakly supervised re-crop (003 §3.1 CityFlow-V2-CROP, after Zhu et al. [34]): the initial
    model's heatmap gives each image a tighter vehicle box; the stage writes a cropped copy of the
    dataset (training domain 'crop') and the boxes the 'heatmap_crop' TTA views use."""

    enabled: bool = False
    model: str | None = Field(None, description="the initial model (a model of `models` trained on no 'crop' "
                                                "domain) whose last feature map gives the heatmaps")
    heatmap: Literal["channel_sq_sum", "channel_mean", "cam"] = Field(
        "channel_sq_sum", description="003: 'heatmap response' of the re-ID model, on test images too (so no "
                                      "identity CAM); [34] code: sum over channels of the squared activations; "
                                      "channel_mean: mean activation; cam: class activation map of the image's "
                                      "identity (Zhou et al. 2016) where it is a training class, else channel_mean")
    threshold_rule: Literal["mean", "range"] = Field(
        "mean", description="on the heatmap normalised to [0, 1] by its range: 'mean' keeps pixels >= threshold x "
                            "the map's mean ([34] code), 'range' pixels >= threshold")
    threshold: float = Field(1.5, gt=0, description="[34] code (localize_from_map, threshold_ratio): 1.5 with rule "
                                                    "'mean'; with rule 'range' a fraction in (0, 1); 003 gives none")
    region: Literal["largest", "all"] = Field(
        "largest", description="box of the largest connected region above the threshold, or of every pixel above "
                               "it ([34] code)")
    margin: float = Field(0.05, ge=0, le=0.5, description="box grown by this x its width / height on each side, "
                                                          "then clipped (no value in 003 or [34]; chosen here)")
    batch_size: int = Field(64, ge=1)
    actors: int = Field(1, ge=1, description="model actors computing the boxes")
    cpus_per_actor: float = Field(1.0, gt=0, description="leave a CPU free for the decode and write tasks")
    cpus_per_task: float = Field(0.5, gt=0, description="decode and crop-writing tasks")
    jpeg_quality: int = Field(95, ge=50, le=100, description="JPEG quality of the cropped images")

    @model_validator(mode="after")
    def _threshold(self) -> RecropConfig:
        if self.threshold_rule == "range" and not self.threshold < 1:
            raise ValueError(f"threshold {self.threshold} with threshold_rule 'range' must lie in (0, 1): a "
                             "fraction of the heatmap's range")
        return self


class RunConfig(StrictModel):
    """The whole run. Later stages add their own sections."""

    name: str = "run"
    run_dir: str = Field("runs/tiny", description="models, results and the report of the run live here; "
                                               "the feature stores too unless extract.store_root is set")
    seed: int = 0
    data: DataConfig = DataConfig()
    models: list[ModelConfig] = Field(default_factory=list)
    train: TrainConfig = TrainConfig()
    extract: ExtractConfig = ExtractConfig()
    postprocess: PostprocessConfig = PostprocessConfig()
    tune: TuneConfig = TuneConfig()
    uda: UDAConfig = UDAConfig()
    recrop: RecropConfig = RecropConfig()
    export: ExportConfig = ExportConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _strip_run_dir(self) -> RunConfig:
        if not self.run_dir.strip():
            raise ValueError("run_dir must not be empty")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        reid = sorted(m.name for m in self.models if m.task == "reid")
        unknown = sorted(set(self.uda.models or []) - set(reid)) if self.uda.enabled else []
        if unknown:
            raise ValueError(f"uda.models {unknown} are not reid-task models of this config (those are {reid})")
        self._check_recrop(names)
        return self

    def _check_recrop(self, names: list[str]) -> None:
        on_crop = [m.name for m in self.models if any("crop" in s.domains for s in m.recipe)]
        views = [v for v in self.extract.tta if v.startswith("heatmap_crop")]
        if not self.recrop.enabled:
            if on_crop or views:
                raise ValueError(f"models {on_crop} train on domain 'crop' / extract.tta has {views}: both need the "
                                 "recrop stage (recrop.enabled: true)")
            return
        if self.data.format == "manifest":
            raise ValueError("recrop writes the cropped copy in the dataset's on-disk layout; data.format 'manifest' "
                             "has none (use the dataset's own format)")
        if self.recrop.model not in names:
            raise ValueError(f"recrop.model {self.recrop.model!r} is not a model of this config (those are {names})")
        if self.recrop.model in on_crop:
            raise ValueError(f"recrop.model {self.recrop.model!r} trains on domain 'crop', which it makes; "
                             "the initial model must train without it")

    @property
    def store_root(self) -> str:
        """Root of the feature stores: ``extract.store_root``, else the run directory."""
        return self.extract.store_root or self.run_dir


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
    """Apply ``a.b.c=value`` overrides (values parsed as YAML; list items by index, the index one
    past the end appends: ``models.4={...}`` adds a fifth model) in place."""
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
            if not last.isdigit() or int(last) > len(node):
                raise ConfigError(f"override '{item}': '{last}' is not an index of the list (0..{len(node)}, "
                                  f"{len(node)} appends)")
            if int(last) == len(node):
                node.append(value)
            else:
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
