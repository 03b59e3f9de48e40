"""Extract query/gallery features of every trained model into Parquet feature stores (Ray Data)."""

from vreid.cli import job_config, job_parser, run_job
from vreid.data import load_dataset
from vreid.features.extract import extract_features
from vreid.features.store import redact


def main() -> None:
    p = job_parser(__doc__)
    p.add_argument("--sets", nargs="+", choices=["test", "val"], default=["test"],
                   help="test: the dataset's query/gallery; val: the validation split (one pass per model for all)")
    p.add_argument("--models", nargs="*", help="extract only these model names")
    args = p.parse_args()
    cfg = job_config(args)
    for name, uris in extract_features(cfg, load_dataset(cfg.data), args.sets, args.models).items():
        for store_set, uri in uris.items():
            print(f"{name} {store_set}: {redact(uri)}")


if __name__ == "__main__":
    run_job(main)
