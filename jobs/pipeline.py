"""The main job: every stage of the flow in order, each skipping work already complete."""

from vreid.cli import job_config, job_parser, run_job
from vreid.pipeline import run_pipeline


def main() -> None:
    args = job_parser(__doc__).parse_args()
    run_pipeline(job_config(args))


if __name__ == "__main__":
    run_job(main)
