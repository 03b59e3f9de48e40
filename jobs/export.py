"""Export a trained model to ONNX (model.onnx beside it) and check it against PyTorch on the run's images."""

import sys

from vreid.cli import job_config, job_parser
from vreid.data import load_dataset
from vreid.models.export_onnx import OnnxCheckFailed, export_model


def main() -> None:
    p = job_parser(__doc__)
    p.add_argument("--model", required=True, help="name of a trained model of the config")
    args = p.parse_args()
    cfg = job_config(args)
    try:
        report = export_model(cfg, args.model, load_dataset(cfg.data))
    except (OnnxCheckFailed, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"ONNX check passed: {report.describe()}")


if __name__ == "__main__":
    main()
