"""Shared fixtures: one tiny Qwen3-VL and one synthetic data set per test session."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    from toy.models import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    from toy.world import synthesize

    out = tmp_path_factory.mktemp("synth")
    synthesize(out, seed=0, n_sft_teacher=32, n_sft_public=32, n_align=16, n_rl=16, n_pairs=48,
                    n_pairs_test=16, n_val=16, n_test=16)
    return out


@pytest.fixture(scope="session")
def processor(tiny_dir):
    import hf_checkpoint

    return hf_checkpoint.load_processor(tiny_dir)


def run_script(args: list[str], nproc: int = 1, timeout: int = 300, env: dict | None = None):
    """Run a project script as a subprocess (under torchrun when nproc > 1); fail with its output."""
    cmd = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                              if nproc > 1 else []) + [str(a) for a in args]
    full_env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"} | (env or {})
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=full_env)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc
