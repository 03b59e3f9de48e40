"""Post-process the feature stores: ensemble, the configured steps, rankings, track2.txt, metrics."""

from vreid.cli import job_config, job_parser, run_job
from vreid.config import PostprocessConfig, load_config
from vreid.postprocess.actor import postprocess_run
from vreid.postprocess.pipeline import ablation_table


def main() -> None:
    p = job_parser(__doc__)
    p.add_argument("--postprocess", help="a post-processing YAML (e.g. the one a Tune sweep wrote); "
                                         "default: the config's postprocess section")
    args = p.parse_args()
    cfg = job_config(args)
    pcfg = load_config(args.postprocess, model=PostprocessConfig) if args.postprocess else None
    out = postprocess_run(cfg, pcfg)
    if out["ablation"]:
        print(ablation_table(out["ablation"]))
    print(f"results: {out['out_dir']}")


if __name__ == "__main__":
    run_job(main)
