"""Worker for tests/test_reliability.py: one training stage with a fault injected from the environment.

    python tests/fault_worker.py STAGE [the stage's own flags ...]        STAGE: sft | warmup | rlvr | align

The stage runs through run.run_stage, the production entry point, so errors surface exactly as
they would from `python sft.py ...`. rlvr uses tests/rlvr_worker.py's scripted judge (so groups
carry signal with a random policy) and align uses tests/align_worker.py's forced validity
(VALID_RANKS). Faults, each off unless its variable is set:

  FAULT_PAUSE_AFTER_STEP=k   after step k's metrics line is written, wait (at most 60 s) until the
                             process has received SIGTERM: the signal then lands mid-run whatever
                             the machine's speed, and the stage's own handler does the rest.
  FAULT_NAN_STEPS=2,3|all    sft: multiply the loss of those optimizer steps by FAULT_NAN_VALUE
  FAULT_NAN_VALUE=nan|inf    (default nan), on the ranks in FAULT_NAN_RANKS (default: all).
  FAULT_NAN_RANKS=1
  FAULT_KILL_AT=sha256|manifest|rename, FAULT_KILL_STEP=N
                             SIGKILL this process while checkpoint step N is being written: while
                             the manifest's checksums are computed (all files written, no
                             manifest yet), half-way through writing the manifest, or just before
                             the directory is renamed into place.
"""

import os
import pathlib
import signal
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling workers
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import align_worker  # noqa: E402
import rlvr_worker  # noqa: E402

import align  # noqa: E402
import rlvr  # noqa: E402
import run  # noqa: E402
import sft  # noqa: E402
import upcycle_moe  # noqa: E402

STAGES = {"sft": (sft.main, sft.Args), "warmup": (upcycle_moe.main_warmup, upcycle_moe.WarmupArgs),
          "rlvr": (partial(rlvr.main, reward_fn=rlvr_worker.scripted_reward), rlvr.Args),
          "align": (align.main, align.Args)}
RANK = int(os.environ.get("RANK", "0"))


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def pause_for_sigterm(after_step: int) -> None:
    got = []
    on_sigterm, write = run.RunGuard._on_sigterm, run.MetricsLog.write

    def noting_sigterm(self, signum, frame):
        on_sigterm(self, signum, frame)
        got.append(signum)

    def write_then_wait(self, step, metrics, bar=None):
        write(self, step, metrics, bar)
        deadline = time.monotonic() + 60
        while step == after_step and not got and time.monotonic() < deadline:
            time.sleep(0.02)

    run.RunGuard._on_sigterm = noting_sigterm
    run.MetricsLog.write = write_then_wait


def non_finite_loss(steps: str, value: float, ranks: set[int] | None) -> None:
    # The step number is the count of optimizer steps taken so far (+1); clip_and_step is only counted.
    done = [0]
    loss_fn, clip_and_step = sft.sft_loss, run.clip_and_step

    def counted(*args, **kwargs):
        done[0] += 1
        return clip_and_step(*args, **kwargs)

    def faulty(*args, **kwargs):
        loss = loss_fn(*args, **kwargs)
        hit = steps == "all" or done[0] + 1 in {int(s) for s in steps.split(",")}
        return loss * value if hit and (ranks is None or RANK in ranks) else loss

    run.clip_and_step = counted
    sft.sft_loss = faulty


def kill_while_saving(where: str, step: int) -> None:
    tmp_name = f"step_{step:08d}.tmp"
    if where == "sha256":
        sha256 = run._sha256

        def dying_sha256(path):
            if tmp_name in Path(path).parts:
                _die()
            return sha256(path)

        run._sha256 = dying_sha256
    elif where == "manifest":
        write_text = pathlib.Path.write_text

        def dying_write_text(self, text, *args, **kwargs):
            if self.name == run.MANIFEST and self.parent.name == tmp_name:
                with open(self, "w") as f:
                    f.write(text[:len(text) // 2])
                _die()
            return write_text(self, text, *args, **kwargs)

        pathlib.Path.write_text = dying_write_text
    elif where == "rename":
        replace = os.replace

        def dying_replace(src, dst, *args, **kwargs):
            if Path(src).name == tmp_name:
                _die()
            return replace(src, dst, *args, **kwargs)

        os.replace = dying_replace
    else:
        raise SystemExit(f"unknown FAULT_KILL_AT {where!r}")


if __name__ == "__main__":
    stage = sys.argv.pop(1)
    env = os.environ
    main, args_cls = STAGES[stage]
    if stage == "align" and "VALID_RANKS" in env:
        main = partial(align.main, split=align_worker.forced_split)
    if "FAULT_PAUSE_AFTER_STEP" in env:
        pause_for_sigterm(int(env["FAULT_PAUSE_AFTER_STEP"]))
    if "FAULT_NAN_STEPS" in env:
        ranks = {int(r) for r in env["FAULT_NAN_RANKS"].split(",")} if env.get("FAULT_NAN_RANKS") else None
        non_finite_loss(env["FAULT_NAN_STEPS"], float(env.get("FAULT_NAN_VALUE", "nan")), ranks)
    if "FAULT_KILL_AT" in env:
        kill_while_saving(env["FAULT_KILL_AT"], int(env["FAULT_KILL_STEP"]))
    run.run_stage(main, args_cls)
