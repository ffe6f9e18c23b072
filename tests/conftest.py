"""Test-session settings shared by every test module.

Triton kernels run under its interpreter on machines without a GPU; the variable must be set before
anything imports ``triton.language``. A run that selects GPU tests (``-m gpu``) keeps real launches.
"""
import os
import sys

import pytest


def _gpu_run() -> bool:
    args = " ".join(sys.argv)
    return "-m gpu" in args or "-m 'gpu'" in args or '-m "gpu"' in args


if not _gpu_run():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Two cores, many processes in some tests: keep BLAS/OpenMP pools from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    """The torch-free tiny student artifact of tests/support/runtime_fixtures.py, built once per test module."""
    from tests.support.runtime_fixtures import build_tiny_artifact

    return build_tiny_artifact(tmp_path_factory.mktemp("art") / "tiny")
