"""Extract query/gallery features of every trained model into Parquet feature stores (Ray Data)."""

from vreid.cli import job_config, job_parser
from vreid.data import load_dataset
from vreid.features.extract import extract_features


def main() -> None:
    p = job_parser(__doc__)
    p.add_argument("--set-name", dest="store_set", choices=["test", "val"], default="test",
                   help="test: the dataset's query/gallery; val: the validation split")
    p.add_argument("--models", nargs="*", help="extract only these model names")
    args = p.parse_args()
    cfg = job_config(args)
    for name, uri in extract_features(cfg, load_dataset(cfg.data), args.store_set, args.models).items():
        print(f"{name}: {uri}")


if __name__ == "__main__":
    main()
