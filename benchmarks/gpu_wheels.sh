#!/usr/bin/env bash
# Download the wheels benchmarks/gpu_check.sh installs on the bare GPU machine (Python 3.12, x86_64),
# into benchmarks/wheels (git-ignored; ~40 MB, under the 64 MiB a device call may carry).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p benchmarks/wheels
# the versions uv.lock resolved (pydantic and pydantic-core must match each other)
pins=$(.venv/bin/python - <<'PY'
from importlib.metadata import version
names = ["av", "facenet-pytorch", "pydantic", "pydantic-core", "annotated-types", "typing-inspection"]
print(" ".join(f"{n}=={version(n)}" for n in names))
PY
)
for pkg in $pins; do
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d benchmarks/wheels "$pkg"
done
ls -la benchmarks/wheels
