"""Serve the build flow on a schedule from this process (no work pool needed).

    python -m faceshard.deployments.serve --manifest /data/ff++/manifest.csv --out s3://bucket/ffpp \
        --preset megatron --cron "0 3 * * *"

For work pools and several deployments use `prefect deploy --all` with the repository's prefect.yaml.
Both name the flow by its installed module (`faceshard.flows.build.build_dataset`), so runs load it
from the installed package whatever the working directory.
"""

from __future__ import annotations

import argparse

from prefect import serve
from prefect.deployments.runner import EntrypointType, RunnerDeployment

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


def scheduled_build(
    manifest: str, out: str, preset: str, cron: str, name: str | None = None
) -> RunnerDeployment:
    """The deployment `main` serves: the build flow by module path, on `cron`, resumable parameters."""
    return build_dataset.to_deployment(
        name=name or f"{preset}-build",
        cron=cron,
        parameters=deployment_parameters(manifest, out, preset),
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


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
    serve(scheduled_build(args.manifest, args.out, args.preset, args.cron, args.name))


if __name__ == "__main__":
    main()
