"""Thread pools of the model libraries, sized to the CPUs a worker was given.

torch, OpenCV and OpenMP each default to one thread per core of the machine. Two workers on a shared
machine then run 2 × cores spinning threads: on the 2-core development box one MTCNN call took 2.8 s
with torch's default instead of 0.18 s with one thread. Each worker sizes its pools to its own share.
"""

from __future__ import annotations

import os

# Read by OpenMP / BLAS runtimes that initialise after this point (dlib's, numpy's BLAS in subprocesses).
_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def limit_threads(cpus: float) -> int:
    """Size torch's and OpenCV's thread pools to `cpus` (at least one); returns the count used."""
    import cv2
    import torch

    threads = max(1, int(cpus))
    for name in _THREAD_ENV:
        os.environ[name] = str(threads)
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    return threads
