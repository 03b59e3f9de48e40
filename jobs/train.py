"""Train every model of a config, each as its own Ray Train TorchTrainer, all concurrently."""

from vreid.cli import job_config, job_parser, run_job
from vreid.data import load_dataset
from vreid.train.launcher import require_trained, train_models


def main() -> None:
    p = job_parser(__doc__)
    p.add_argument("--models", nargs="*", help="train only these model names")
    args = p.parse_args()
    cfg = job_config(args)
    require_trained(train_models(cfg, load_dataset(cfg.data), only=args.models))


if __name__ == "__main__":
    run_job(main)
