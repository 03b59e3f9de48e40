"""Tune the post-processing hyperparameters on the validation split with Ray Tune."""

from vreid.cli import job_config, job_parser, run_job
from vreid.data import load_dataset
from vreid.postprocess.actor import load_inputs
from vreid.tune.sweep import run_sweep


def main() -> None:
    cfg = job_config(job_parser(__doc__).parse_args())
    out = run_sweep(cfg, load_inputs(cfg, load_dataset(cfg.data), "val"))
    print(f"best {out['metric']} {out['best_score']:.4f} (defaults {out['default_score']:.4f}): "
          f"{out['out_dir']}/best_postprocess.yaml")


if __name__ == "__main__":
    run_job(main)
