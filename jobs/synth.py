"""Generate the synthetic city (the embedded default dataset) in the AI City layout."""

import argparse

from vreid.cli import run_job
from vreid.data.synth import PRESETS, generate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--out", required=True, help="output folder (AI City 2021 layout + gt/ + masks/)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = generate(args.out, args.preset, seed=args.seed)
    print(f"synthetic city '{args.preset}' (seed {args.seed}) at {out}")


if __name__ == "__main__":
    run_job(main)
