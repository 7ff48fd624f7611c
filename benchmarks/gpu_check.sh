#!/usr/bin/env bash
# GPU check (issue #10): the per-video pipeline with every stage on CUDA (MTCNN, FaceNet identities,
# Depth Anything, EfficientNet embeddings of crops and depth maps) over the real fixtures repeated to
# ~200 videos, in several worker processes sharing the GPU; prints videos/s, GPU busy % (nvidia-smi),
# per-stage seconds and a projection for ForgeryNet's 221,247 videos. No Prefect, no Ray, no polars.
#
#   benchmarks/gpu_check.sh [--videos 200] [--workers 4] [--json-out gpu.json]
#   benchmarks/gpu_check.sh --device cpu --videos 4 --workers 2 --depth-size 70   # smoke run anywhere
#
# The GPU machine is bare (torch, torchvision, timm, transformers, opencv, numpy, scipy, networkx,
# pyyaml, fsspec, typer are there; ../shared/ENVIRONMENT.md "The GPU machine"). What is missing
# travels as wheels in $WHEELS (default benchmarks/wheels, made here by benchmarks/gpu_wheels.sh):
# av, facenet-pytorch, pydantic, pydantic-core, annotated-types, typing-inspection.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-benchmarks/wheels}
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import av, facenet_pytorch, pydantic" 2>/dev/null; then
  "$PYTHON" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" \
    av facenet-pytorch pydantic pydantic-core annotated-types typing-inspection
fi
FIXTURES=${FIXTURES:-}
for candidate in "$FIXTURES" shared/fixtures ../shared/fixtures; do
  if [ -n "$candidate" ] && [ -d "$candidate" ]; then FIXTURES=$candidate; break; fi
done
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m faceshard.bench.gpu_check --device cuda --fixtures "$FIXTURES" "$@"
