"""Serve the build flow on a schedule from this process (no work pool needed).

    python -m deployments.serve --manifest /data/ff++/manifest.csv --out s3://bucket/ffpp --preset megatron \
        --cron "0 3 * * *"

For work pools and several deployments use `prefect deploy --all` with the repository's prefect.yaml.
"""

from __future__ import annotations

import argparse

from faceshard.flows.build import build_dataset


def deployment_parameters(manifest: str, out: str, preset: str, retry_failed: bool = False) -> dict:
    """The flow parameters a scheduled build runs with: resumable, never `--rebuild`."""
    return {
        "manifest": manifest,
        "out": out,
        "config": {"preset": preset},
        "rebuild": False,
        "retry_failed": retry_failed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--preset", default="mintime")
    parser.add_argument("--cron", default="0 2 * * *")
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    build_dataset.serve(
        name=args.name or f"{args.preset}-build",
        cron=args.cron,
        parameters=deployment_parameters(args.manifest, args.out, args.preset),
    )


if __name__ == "__main__":
    main()
