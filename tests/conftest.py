"""Shared test fixtures: one torch thread, and a tiny random-weight Stable Diffusion folder.

The tests never download: the Hugging Face Hub is put offline before anything imports it (a Hub id
then fails at once instead of after connection retries, ~20 s each on a machine without network).
``HF_HUB_OFFLINE=0`` lets the opt-in ``-m sd14`` tests fetch SD v1.4 weights that are not cached.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402
from typing import Iterator  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from pipelines.tiny import build_tiny_pipeline  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread for the whole session (module fixtures included): tiny convolutions run
    several times faster on one thread when the CPU is shared, and in-process results then
    match the single-threaded subprocesses bit for bit (resume and determinism tests)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved `build_tiny_pipeline(seed=0)` (32x32 images, 4x16x16 latents), shared by the session."""
    folder = tmp_path_factory.mktemp("tiny-sd") / "pipeline"
    build_tiny_pipeline(seed=0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def fast_default_model(tmp_path_factory, one_thread):
    """The default model's fast build (same architecture, a few steps: draws noise), built once."""
    from pipelines.default_model import DefaultModelConfig, build_default_model

    return build_default_model(tmp_path_factory.mktemp("fast-default") / "model", seed=0,
                               config=DefaultModelConfig.fast())
