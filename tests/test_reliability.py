"""Fault injection: what each fault does to a run, on CPU with the tiny model.

Preemption (SIGTERM) in every stage, kill -9 in SFT (all stages share run.save_checkpoint),
corrupted and pickle-bearing checkpoints,
non-finite losses (also on one rank of two), ranks with nothing to learn from, hostile responses
and hostile data. docs/FAILURE_BEHAVIOUR.md tables every fault with the test that shows it.

Faults covered elsewhere, not repeated here: resume from a periodic checkpoint
(tests/test_sft.py, test_rlvr.py, test_align.py, test_upcycle.py); an align rank whose rollouts are
all malformed (tests/test_align.py::test_two_ranks_with_invalid_rollouts_stay_in_lockstep); weights
only from safetensors (tests/test_model.py::test_refuses_weights_that_are_not_safetensors);
malformed, truncated and doubled response formats (tests/test_data.py); crafted LaTeX, a hanging
symbolic check and 100 KB answers given straight to the judge (tests/test_grading.py); empty
assistant turns, bad records, truncated / grey / alpha / decompression-bomb images and a wrongly
typed parquet column (tests/test_data.py).

Subprocesses run side by side where they are independent: each is single-threaded
(OMP_NUM_THREADS=1) and the test machine has two cores.
"""

import io
import json
import os
import random
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_script
from PIL import Image

import batching
import data
import grading
import hf_checkpoint
import model
import upcycle_moe
from run import (
    MANIFEST,
    Dist,
    TrainingError,
    _sha256,
    latest_checkpoint,
    load_checkpoint,
    make_optimizer,
    read_sharded,
    save_checkpoint,
    verify_checkpoint,
)
from toy.models import SPECIAL_TOKENS

SFT_STEPS = 12
RL_SMALL = ["--prompts-per-step", 2, "--rollouts-per-prompt", 4, "--max-new-tokens", 16]


# ----------------------------------------------------------------------------------------------
# Running stages in the background
# ----------------------------------------------------------------------------------------------


@dataclass
class Run:
    """A stage started in the background; its output goes to LOG.out / LOG.err."""

    proc: subprocess.Popen
    log: Path

    def output(self) -> tuple[str, str]:
        return self.log.with_suffix(".out").read_text(), self.log.with_suffix(".err").read_text()

    def finish(self, timeout: float = 240) -> subprocess.CompletedProcess:
        """Wait for the exit; a run still going after `timeout` (a rank stuck in a collective) fails."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group holds torchrun's workers too
            self.proc.wait()
            tail = self.output()[1][-4000:]
            raise AssertionError(f"{self.proc.args} still running after {timeout} s:\n{tail}") from None
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, *self.output())

    def succeed(self, timeout: float = 240) -> subprocess.CompletedProcess:
        done = self.finish(timeout)
        assert done.returncode == 0, f"{done.args} failed ({done.returncode}):\n{done.stderr[-6000:]}"
        return done


_started: list[Run] = []


@pytest.fixture(scope="module", autouse=True)
def no_stage_outlives_the_module():
    """A fixture that fails half-way leaves its other runs going: end them with the module."""
    yield
    for run in _started:
        if run.proc.poll() is None:
            os.killpg(run.proc.pid, signal.SIGKILL)
            run.proc.wait()


def start(args: list, log: Path, env: dict | None = None, nproc: int = 1) -> Run:
    cmd = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                              if nproc > 1 else []) + [str(a) for a in args]
    full_env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"} | (env or {})
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=out, stderr=err, start_new_session=True)
    _started.append(Run(proc, log))
    return _started[-1]


def metrics(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def logged_steps(out: Path) -> int:
    """Complete lines in out/metrics.jsonl (a line being written is not counted)."""
    path = out / "metrics.jsonl"
    return path.read_text().count("\n") if path.is_file() else 0


def wait_for_steps(out: Path, n: int, run: Run, timeout: float = 120) -> None:
    """Until out/metrics.jsonl holds n complete lines (the stage is then mid-training)."""
    deadline = time.monotonic() + timeout
    while logged_steps(out) < n:
        assert run.proc.poll() is None, f"exited ({run.proc.returncode}) before step {n}:\n{run.output()[1][-4000:]}"
        assert time.monotonic() < deadline, f"no step {n} after {timeout} s"
        time.sleep(0.05)


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def policy_weights(path: Path) -> dict:
    return hf_checkpoint.load_hf_model(path).state_dict()


def ckpt_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step_{step:08d}"


def ckpt_weights(path: Path) -> dict:
    """A training checkpoint's policy weights (every rank's shards assembled), by HF name."""
    return {k.removeprefix("hf."): v for k, v in read_sharded(path).items()}


def no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr[-4000:]


# ----------------------------------------------------------------------------------------------
# Shared runs
# ----------------------------------------------------------------------------------------------


def sft_flags(tiny_dir: Path, synth_dir: Path) -> list:
    return ["--policy", tiny_dir, "--data", synth_dir / "sft_teacher.jsonl", "--steps", SFT_STEPS,
            "--micro-batch", 2, "--lr", 1e-3]


@pytest.fixture(scope="module")
def sft_ref_run(tiny_dir, synth_dir, tmp_path_factory) -> Run:
    """One uninterrupted SFT run (checkpoints at steps 4, 8, 12), the reference of every SFT fault.

    Started here and left running, so that it overlaps with the preemption runs that first need it.
    """
    root = tmp_path_factory.mktemp("sft_ref")
    return start(["sft.py", *sft_flags(tiny_dir, synth_dir), "--save-every", 4, "--out", root / "run"], root / "log")


@pytest.fixture(scope="module")
def sft_ref(sft_ref_run) -> Path:
    sft_ref_run.succeed()
    return sft_ref_run.log.parent / "run"


@pytest.fixture(scope="module")
def disc_dir(tiny_dir, processor, tmp_path_factory) -> Path:
    """A float32 discriminator upcycled in-process (the CLI is tested in tests/test_upcycle.py)."""
    disc, _ = upcycle_moe.upcycle(hf_checkpoint.load_hf_model(tiny_dir), seed=0)
    out = tmp_path_factory.mktemp("disc") / "disc"
    disc.save_pretrained(processor, out, Dist())
    return out


# ----------------------------------------------------------------------------------------------
# Preemption (SIGTERM) in every stage
# ----------------------------------------------------------------------------------------------

STAGES = ("sft", "warmup", "rlvr", "align")


def stage_flags(stage: str, tiny_dir: Path, synth_dir: Path, disc_dir: Path) -> list:
    return {
        "sft": lambda: sft_flags(tiny_dir, synth_dir),
        "warmup": lambda: ["--discriminator", disc_dir, "--data", synth_dir / "pairs.jsonl", "--steps", 3,
                           "--disc-micro-batch", 2, "--grad-accum", 1, "--disc-lr", 1e-3],
        "rlvr": lambda: ["--policy", tiny_dir, "--data", synth_dir / "rl.parquet", "--steps", 3, *RL_SMALL,
                         "--lr", 1e-4, "--micro-batch-tokens", 8],
        "align": lambda: ["--policy", tiny_dir, "--discriminator", disc_dir, "--data", synth_dir / "align.parquet",
                          "--steps", 3, *RL_SMALL, "--lr", 1e-4, "--disc-lr", 1e-4],
    }[stage]()


def final_weights(stage: str, out: Path) -> dict:
    weights = {}
    if stage != "warmup":
        weights |= {"policy." + k: v for k, v in policy_weights(out / "model").items()}
    if stage in ("warmup", "align"):
        disc = model.Discriminator.from_pretrained(out / "discriminator").state_dict()
        weights |= {"disc." + k: v for k, v in disc.items()}
    return weights


@pytest.fixture(scope="module")
def preemptions(tiny_dir, synth_dir, disc_dir, sft_ref_run, tmp_path_factory) -> dict:
    """Every stage preempted after step 2 and resumed, beside its uninterrupted reference run.

    All runs go at once (two cores kept busy). Each preempted run gets SIGTERM as soon as it has
    logged step 2; what it left behind is recorded before its resume starts.
    """
    root = tmp_path_factory.mktemp("preempt")
    jobs = {}
    for stage in STAGES:
        worker = ["tests/fault_worker.py", stage, *stage_flags(stage, tiny_dir, synth_dir, disc_dir),
                  "--save-every", 1000]
        env = {"VALID_RANKS": "0"} if stage == "align" else {}  # align: the main path, with valid rollouts
        job = jobs[stage] = dict(worker=worker, env=env, out=root / stage / "preempted")
        if stage == "sft":
            job["ref"], job["reference"] = sft_ref_run, sft_ref_run.log.parent / "run"
        else:
            job["reference"] = root / stage / "reference"
            job["ref"] = start(worker + ["--out", job["reference"]], root / stage / "reference", env)
        # The worker holds still after step 2 until the signal is in, so it lands mid-run on any machine.
        job["run"] = start(worker + ["--out", job["out"]], root / stage / "preempted",
                           env | {"FAULT_PAUSE_AFTER_STEP": "2"})
    waiting, deadline = set(STAGES), time.monotonic() + 300
    while waiting and time.monotonic() < deadline:
        for stage in sorted(waiting):
            job = jobs[stage]
            if logged_steps(job["out"]) >= 2 or job["run"].proc.poll() is not None:
                if job["run"].proc.poll() is None:
                    job["run"].proc.send_signal(signal.SIGTERM)
                waiting.discard(stage)
        time.sleep(0.05)
    for stage, job in jobs.items():
        out = job["out"]
        job["preempted"] = job["run"].finish(180)
        job["left"] = dict(checkpoints=sorted(p.name for p in (out / "checkpoints").glob("*")),
                           models=[n for n in ("model", "discriminator") if (out / n).exists()],
                           steps=[m["step"] for m in metrics(out)])
        job["resume"] = start(job["worker"] + ["--out", out, "--resume"], root / stage / "resumed", job["env"])
    for job in jobs.values():
        job["resumed"], job["ref_done"] = job["resume"].finish(), job["ref"].finish()
    return jobs


@pytest.mark.parametrize("stage", STAGES)
def test_sigterm_checkpoints_exits_cleanly_and_resume_matches_an_uninterrupted_run(stage, preemptions):
    job = preemptions[stage]
    out, done = job["out"], job["preempted"]
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"preempted: stopped after step 2 with a checkpoint in {out / 'checkpoints'}" in done.stdout
    no_traceback(done.stderr)
    # The preemption checkpoint is the only one (--save-every is far off) and complete; no model was written.
    assert job["left"] == dict(checkpoints=["step_00000002"], models=[], steps=[1, 2])
    verify_checkpoint(ckpt_dir(out, 2))

    for run in ("resumed", "ref_done"):
        assert job[run].returncode == 0, job[run].stderr[-4000:]
    diff = max_diff(final_weights(stage, job["reference"]), final_weights(stage, out))
    print(f"{stage}: preempted after step 2, resumed: max weight diff to the uninterrupted run {diff:.1e}")
    assert diff <= 1e-6
    assert [m["step"] for m in metrics(out)] == [m["step"] for m in metrics(job["reference"])]


def test_sigterm_to_torchrun_checkpoints_on_every_rank(tiny_dir, synth_dir, tmp_path):
    """torchrun forwards SIGTERM to its workers (and SIGKILLs them 30 s later): both ranks stop after
    the same step with one complete checkpoint. (Resuming 2 ranks exactly: tests/test_sft.py.)"""
    out = tmp_path / "run"
    run = start(["tests/fault_worker.py", "sft", *sft_flags(tiny_dir, synth_dir), "--save-every", 1000,
                 "--out", out], tmp_path / "log", {"FAULT_PAUSE_AFTER_STEP": "2"}, nproc=2)
    wait_for_steps(out, 2, run)
    run.proc.send_signal(signal.SIGTERM)  # to the torchrun agent, not to the workers
    done = run.finish(120)
    # The workers exit 0; the agent itself reports the signal it got (its own exit code and traceback).
    assert f"preempted: stopped after step 2 with a checkpoint in {out / 'checkpoints'}" in done.stdout
    assert sorted(p.name for p in (out / "checkpoints").glob("*")) == ["step_00000002"]
    assert not (out / "model").exists() and [m["step"] for m in metrics(out)] == [1, 2]
    verify_checkpoint(ckpt_dir(out, 2))
    assert json.loads((ckpt_dir(out, 2) / "train_state.json").read_text())["step"] == 2
    assert len(list((ckpt_dir(out, 2) / "policy").glob("shard-*.safetensors"))) == 2  # one per rank


# ----------------------------------------------------------------------------------------------
# kill -9
# ----------------------------------------------------------------------------------------------

KILL_POINTS = ("sha256", "manifest", "rename")


@pytest.fixture(scope="module")
def kills(sft_ref, tiny_dir, synth_dir, tmp_path_factory) -> dict:
    """SFT runs killed with SIGKILL: inside the save of step 8 at three points (after an intact step 4),
    and once at a seeded random moment while saving every step. Their state is recorded; the
    checksum-point and random-moment runs are then resumed."""
    root = tmp_path_factory.mktemp("kills")
    every4 = [*sft_flags(tiny_dir, synth_dir), "--save-every", 4]
    every1 = [*sft_flags(tiny_dir, synth_dir), "--save-every", 1]
    runs = {p: start(["tests/fault_worker.py", "sft", *every4, "--out", root / p], root / f"{p}-killed",
                     {"FAULT_KILL_AT": p, "FAULT_KILL_STEP": "8"}) for p in KILL_POINTS}
    delay = random.Random(20250611).uniform(0.0, 0.8)
    runs["random"] = start(["sft.py", *every1, "--out", root / "random"], root / "random-killed")
    wait_for_steps(root / "random", 1, runs["random"])
    time.sleep(delay)
    random_alive = runs["random"].proc.poll() is None
    runs["random"].proc.kill()
    result = {p: dict(out=root / p, killed=run.finish(), latest=latest_checkpoint(root / p))
              for p, run in runs.items()}
    result["random"] |= dict(alive=random_alive, delay=delay)
    partial = root / "sha256" / "checkpoints" / "step_00000008.tmp"
    result["sha256"]["partial"] = sorted(str(p.relative_to(partial)) for p in partial.rglob("*"))
    resumes = {p: start(["sft.py", *flags, "--out", root / p, "--resume"], root / f"{p}-resumed")
               for p, flags in (("sha256", every4), ("random", every1))}
    for p, run in resumes.items():
        result[p]["resumed"] = run.finish()
    return result


def test_kill_9_while_checksumming_a_checkpoint_keeps_the_previous_one(kills, sft_ref):
    """Killed after every file of step 8 is written but before its manifest: step 4 stays the newest."""
    run = kills["sha256"]
    assert run["killed"].returncode == -signal.SIGKILL
    assert "train_state.json" in run["partial"] and MANIFEST not in run["partial"]
    assert run["latest"] == ckpt_dir(run["out"], 4)
    verify_checkpoint(run["latest"])
    assert run["resumed"].returncode == 0, run["resumed"].stderr[-4000:]
    assert max_diff(policy_weights(sft_ref / "model"), policy_weights(run["out"] / "model")) <= 1e-6
    # The resumed run's own save of step 8 replaced the leftover staging directory.
    assert not (run["out"] / "checkpoints" / "step_00000008.tmp").exists()
    assert [m["step"] for m in metrics(run["out"])] == list(range(1, SFT_STEPS + 1))


@pytest.mark.parametrize("point", ["manifest", "rename"])
def test_kill_9_between_manifest_and_rename_keeps_the_previous_checkpoint(point, kills, sft_ref, tiny_dir,
                                                                          synth_dir, tmp_path):
    run = kills[point]
    assert run["killed"].returncode == -signal.SIGKILL
    assert (run["out"] / "checkpoints" / "step_00000008.tmp" / MANIFEST).is_file()
    assert run["latest"] == ckpt_dir(run["out"], 4)
    start(["sft.py", *sft_flags(tiny_dir, synth_dir), "--save-every", 4, "--out", run["out"], "--resume"],
          tmp_path / "resumed").succeed()
    assert max_diff(policy_weights(sft_ref / "model"), policy_weights(run["out"] / "model")) <= 1e-6


def test_kill_9_at_a_random_moment_then_resume_reproduces_the_run(kills, sft_ref):
    run = kills["random"]
    assert run["alive"], "the run ended before the kill: nothing was tested"
    assert run["killed"].returncode == -signal.SIGKILL
    print(f"killed {run['delay']:.2f} s after step 1; newest complete checkpoint: {run['latest']}")
    if run["latest"] is not None:
        verify_checkpoint(run["latest"])
    assert run["resumed"].returncode == 0, run["resumed"].stderr[-4000:]
    assert max_diff(policy_weights(sft_ref / "model"), policy_weights(run["out"] / "model")) <= 1e-6
    assert [m["step"] for m in metrics(run["out"])] == list(range(1, SFT_STEPS + 1))


# ----------------------------------------------------------------------------------------------
# Corrupted and malicious checkpoints
# ----------------------------------------------------------------------------------------------


def copy_checkpoint(src: Path, out: Path) -> Path:
    """out/checkpoints/<src.name>: a run directory whose only checkpoint is a copy of src."""
    dst = out / "checkpoints" / src.name
    shutil.copytree(src, dst)
    return dst


def flip_bytes(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 16] = bytes(b ^ 0xFF for b in raw[middle:middle + 16])
    path.write_bytes(bytes(raw))  # same size: only the checksum can tell


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


SHARD = "shard-00001-model-00001-of-00001.safetensors"  # rank 0's file in each directory of a checkpoint
DAMAGE = {f"policy/{SHARD}": flip_bytes, "train_state.json": truncate, f"policy.optimizer/{SHARD}": flip_bytes,
          # load_checkpoint treats a missing RNG file as optional; only the manifest notices it is gone
          "rng_rank0.safetensors": Path.unlink}
WARMUP_DAMAGE = f"discriminator/{SHARD}"


class Payload:
    """Pickles as a call to os.system: what a tampered training-state file would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def plant(ckpt: Path, rel: str, obj) -> None:
    """Replace a checkpoint file and re-sign the manifest, so only the loader stands in the way."""
    torch.save(obj, ckpt / rel)
    manifest = json.loads((ckpt / MANIFEST).read_text())
    manifest[rel] = _sha256(ckpt / rel)
    (ckpt / MANIFEST).write_text(json.dumps(manifest))
    verify_checkpoint(ckpt)


@pytest.fixture(scope="module")
def refused_resumes(sft_ref, disc_dir, tiny_dir, synth_dir, tmp_path_factory) -> dict:
    """--resume from checkpoints that must be refused, all at once: one damage per DAMAGE entry, a
    pickle in place of train_state.json, and a warm-up checkpoint with a flipped discriminator shard."""
    root = tmp_path_factory.mktemp("refused")
    sft = ["sft.py", *sft_flags(tiny_dir, synth_dir), "--resume"]
    outs, runs = {}, {}
    for rel, damage in DAMAGE.items():
        outs[rel] = root / rel.replace("/", "_")
        damage(copy_checkpoint(ckpt_dir(sft_ref, SFT_STEPS), outs[rel]) / rel)
    outs["pickle"] = root / "pickle"
    plant(copy_checkpoint(ckpt_dir(sft_ref, SFT_STEPS), outs["pickle"]), "train_state.json",
          {"step": SFT_STEPS, "extra": Payload(root / "payload-ran")})
    for name, out in outs.items():
        runs[name] = start(sft + ["--out", out], root / f"{name.replace('/', '_')}.log")
    # The warm-up through its real entry point, `upcycle_moe.py warmup`.
    outs["warmup"] = root / "warmup"
    disc = model.Discriminator.from_pretrained(disc_dir)
    optimizer, scheduler = make_optimizer(disc, 1e-3, 0.01, 4, 1)
    ckpt = save_checkpoint(outs["warmup"], 1, *[{"discriminator": x} for x in (disc, optimizer, scheduler)], Dist())
    flip_bytes(ckpt / WARMUP_DAMAGE)
    runs["warmup"] = start(["upcycle_moe.py", "warmup", "--discriminator", disc_dir, "--data",
                            synth_dir / "pairs.jsonl", "--out", outs["warmup"], "--steps", 4, "--resume"],
                           root / "warmup.log")
    return {name: (outs[name], run.finish()) for name, run in runs.items()} | {"marker": root / "payload-ran"}


@pytest.mark.parametrize("rel", DAMAGE)
def test_a_corrupted_checkpoint_stops_resume_with_an_error_naming_the_file(rel, refused_resumes):
    out, done = refused_resumes[rel]
    assert done.returncode != 0
    assert f"error: checkpoint {ckpt_dir(out, SFT_STEPS)}" in done.stderr and rel in done.stderr, done.stderr
    no_traceback(done.stderr)
    # Resuming from the final step would write the model at once: nothing was taken from the checkpoint.
    assert not (out / "model").exists() and not (out / "metrics.jsonl").exists()


def test_verification_comes_before_anything_is_loaded(sft_ref, tiny_dir, tmp_path):
    ckpt = copy_checkpoint(ckpt_dir(sft_ref, SFT_STEPS), tmp_path)
    truncate(ckpt / "policy.optimizer" / SHARD)  # the file load_checkpoint reads after the (intact) weights
    policy = model.Policy.from_pretrained(tiny_dir)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    optimizer, scheduler = make_optimizer(policy, 1e-3, 0.0, SFT_STEPS, 1)
    with pytest.raises(TrainingError, match=f"policy.optimizer/{SHARD} does not match its checksum"):
        load_checkpoint(ckpt, {"policy": policy}, {"policy": optimizer}, {"policy": scheduler}, Dist())
    assert all(torch.equal(before[k], v) for k, v in policy.state_dict().items())
    assert not optimizer.state and scheduler.last_epoch == 0


def test_a_damaged_manifest_is_a_named_error(sft_ref, tmp_path):
    ckpt = copy_checkpoint(ckpt_dir(sft_ref, SFT_STEPS), tmp_path)
    truncate(ckpt / MANIFEST)
    with pytest.raises(TrainingError, match=MANIFEST):
        verify_checkpoint(ckpt)


def test_warmup_reports_a_corrupted_checkpoint_without_a_traceback(refused_resumes):
    _, done = refused_resumes["warmup"]
    assert done.returncode != 0
    assert WARMUP_DAMAGE in done.stderr
    no_traceback(done.stderr)


def test_a_pickle_bearing_checkpoint_is_refused_without_running_it(refused_resumes, sft_ref, tiny_dir, tmp_path):
    """Nothing in a checkpoint is unpickled: a pickle put in place of the training state or of a rank's RNG
    file, re-signed in the manifest, is refused as unreadable before any weight is loaded; its payload never runs."""
    out, done = refused_resumes["pickle"]
    marker = refused_resumes["marker"]
    assert done.returncode != 0 and "train_state.json cannot be read" in done.stderr, done.stderr[-3000:]
    no_traceback(done.stderr)
    assert not marker.exists() and not (out / "model").exists()

    ckpt = copy_checkpoint(ckpt_dir(sft_ref, SFT_STEPS), tmp_path)
    plant(ckpt, "rng_rank0.safetensors", {"torch": Payload(marker)})
    policy = model.Policy.from_pretrained(tiny_dir)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    optimizer, scheduler = make_optimizer(policy, 1e-3, 0.0, SFT_STEPS, 1)
    with pytest.raises(TrainingError, match="rng_rank0.safetensors cannot be read"):
        load_checkpoint(ckpt, {"policy": policy}, {"policy": optimizer}, {"policy": scheduler}, Dist())
    assert not marker.exists()
    assert all(torch.equal(before[k], v) for k, v in policy.state_dict().items())

    # The payload is live: an unrestricted load runs it, so its absence above is the loader's doing.
    torch.load(ckpt_dir(out, SFT_STEPS) / "train_state.json", weights_only=False)
    assert marker.exists()


def test_remote_code_in_a_model_directory_is_never_run(tiny_dir, tmp_path):
    evil, marker = tmp_path / "model", tmp_path / "code-ran"
    shutil.copytree(tiny_dir, evil)
    (evil / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    for name, auto_map in (("config.json", {"AutoConfig": "evil.Config", "AutoModelForImageTextToText": "evil.Model"}),
                           ("processor_config.json", {"AutoProcessor": "evil.Processor"})):
        config = json.loads((evil / name).read_text())
        (evil / name).write_text(json.dumps(config | {"auto_map": auto_map}))
    assert type(hf_checkpoint.load_hf_model(evil)).__name__ == "Qwen3VLForConditionalGeneration"
    assert type(hf_checkpoint.load_processor(evil)).__name__ == "Qwen3VLProcessor"
    assert not marker.exists()
    subprocess.run([sys.executable, str(evil / "evil.py")], check=True)  # the module does run when imported
    assert marker.exists()


# ----------------------------------------------------------------------------------------------
# Non-finite losses
# ----------------------------------------------------------------------------------------------


def odd_sft_file(synth_dir: Path, out: Path, n: int = 5) -> Path:
    """n SFT records with absolute image paths: an odd count that no global batch divides."""
    records = [json.loads(line) for line in (synth_dir / "sft_teacher.jsonl").read_text().splitlines()[:n]]
    for r in records:
        r["images"] = [str(synth_dir / image) for image in r["images"]]
    out.write_text("".join(json.dumps(r) + "\n" for r in records))
    return out


@pytest.fixture(scope="module")
def non_finite_runs(tiny_dir, synth_dir, tmp_path_factory) -> dict:
    """Three SFT runs at once, with the loss poisoned by the worker:

    two: 2 ranks, 5 records, NaN at step 2 on rank 1 only; one: the same global batches on 1 rank,
    NaN at step 2; inf: inf at every step, with --max-skipped-steps 2.
    """
    root = tmp_path_factory.mktemp("nonfinite")
    odd = odd_sft_file(synth_dir, root / "odd.jsonl")
    common = ["tests/fault_worker.py", "sft", "--policy", tiny_dir, "--data", odd, "--steps", 3,
              "--micro-batch", 2, "--lr", 1e-3, "--save-every", 1]
    runs = {
        "two": start(common + ["--grad-accum", 1, "--out", root / "two"], root / "two", nproc=2,
                     env={"FAULT_NAN_STEPS": "2", "FAULT_NAN_RANKS": "1"}),
        "one": start(common + ["--grad-accum", 2, "--out", root / "one"], root / "one",
                     env={"FAULT_NAN_STEPS": "2", "FAULT_NAN_RANKS": "0"}),
        "inf": start(["tests/fault_worker.py", "sft", *sft_flags(tiny_dir, synth_dir), "--save-every", 1,
                      "--max-skipped-steps", 2, "--out", root / "inf"], root / "inf",
                     env={"FAULT_NAN_STEPS": "all", "FAULT_NAN_VALUE": "inf"}),
    }
    # A rank that stepped while the other skipped would leave it waiting in a collective: the time bound.
    return {name: (root / name, run.finish(timeout=180)) for name, run in runs.items()}


def test_a_non_finite_step_is_skipped_on_every_rank_together(non_finite_runs):
    for name in ("one", "two"):
        out, done = non_finite_runs[name]
        assert done.returncode == 0, done.stderr[-4000:]
        lines = metrics(out)
        assert [m["optim/skipped_step"] for m in lines] == [0.0, 1.0, 0.0], name
        assert not torch.isfinite(torch.tensor(lines[1]["optim/grad_norm"]))
    one, two = non_finite_runs["one"][0], non_finite_runs["two"][0]
    # The skipped step left weights and optimizer state exactly as step 1 had them, on both shards.
    after1, after2 = (ckpt_weights(ckpt_dir(two, s) / "policy") for s in (1, 2))
    assert all(torch.equal(after1[k], after2[k]) for k in after1)
    assert max_diff(after2, ckpt_weights(ckpt_dir(two, 3) / "policy")) > 0  # step 3 trained again
    states = [read_sharded(ckpt_dir(two, s) / "policy.optimizer") for s in (1, 2)]
    assert any(k.endswith(".exp_avg") for k in states[0]) and any(k.endswith(".step") for k in states[0])
    assert states[0].keys() == states[1].keys() and all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    # And the two-rank run is the one-rank run: both ranks skipped, as the single rank did.
    diff = max_diff(policy_weights(one / "model"), policy_weights(two / "model"))
    print(f"NaN at step 2 (on rank 1 of 2, vs 1 rank): max weight diff {diff:.1e}")
    assert diff < 1e-4
    for a, b in zip(metrics(one), metrics(two)):
        if a["step"] != 2:
            assert a["loss/sft"] == pytest.approx(b["loss/sft"], abs=1e-4)


def test_repeated_non_finite_steps_stop_the_run_with_a_clear_error(non_finite_runs, tiny_dir):
    out, done = non_finite_runs["inf"]
    assert done.returncode == 1
    assert "error: step 2: 2 optimizer steps in a row had a non-finite gradient" in done.stderr, done.stderr[-3000:]
    assert "--max-skipped-steps" in done.stderr
    no_traceback(done.stderr)
    assert [(m["step"], m["optim/skipped_step"]) for m in metrics(out)] == [(1, 1.0)]
    # The run's only finished step was non-finite: its checkpoint holds the initial weights, bit for bit.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000001"]
    initial, after = policy_weights(tiny_dir), ckpt_weights(ckpt_dir(out, 1) / "policy")
    assert all(torch.equal(initial[k], after[k]) for k in initial)


# ----------------------------------------------------------------------------------------------
# Distributed lockstep
# ----------------------------------------------------------------------------------------------


def test_rlvr_rank_whose_dynamic_sampling_keeps_nothing_stays_in_lockstep(tiny_dir, synth_dir, tmp_path):
    # 2 steps × 1 round × 4 prompts come from the first epoch of the stream; in each round rank 0 takes
    # positions 0-1 and rank 1 positions 2-3. Rank 1's prompts are all always-right or never-right
    # under rlvr_worker's scripted judge, so its groups never vary and it keeps nothing.
    records = [json.loads(line) for line in (synth_dir / "test.jsonl").read_text().splitlines()]
    order = batching.stream_indices(len(records), 0, 0, 8)
    for k, i in enumerate(order):
        records[i]["answer"] = ("NEVER", "ALWAYS")[k % 2] if k % 4 >= 2 else "5"
    for r in records:
        r["images"] = [str(synth_dir / image) for image in r["images"]]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "run"
    started = time.monotonic()
    run_script(["tests/rlvr_worker.py", "--policy", tiny_dir, "--data", prompts, "--algo", "dapo",
                "--overlong-buffer", 8, "--steps", 2,
                "--prompts-per-round", 4, "--overlong-buffer", 0, *RL_SMALL, "--lr", 1e-4, "--micro-batch-tokens", 8,
                "--out", out], nproc=2, timeout=180)
    print(f"2 ranks, rank 1 keeping nothing: {time.monotonic() - started:.1f} s")
    lines = metrics(out)
    # 2 of the 4 groups drawn were kept in one round: exactly rank 0's.
    assert [(m["sampling/kept_group_ratio"], m["sampling/rounds"]) for m in lines] == [(0.5, 1.0)] * 2
    assert all(torch.isfinite(torch.tensor(list(m.values()))).all() for m in lines)
    assert all(m["optim/grad_norm"] > 0 and m["optim/skipped_step"] == 0 for m in lines)
    # rlvr_worker's per-rank digests of the saved model (each rank holds one FSDP2 shard, so a rank
    # that skipped its update would show in the loss metrics and the time bound rather than here).
    digests = [(out / f"digest_rank{r}.txt").read_text() for r in range(2)]
    assert digests[0] == digests[1]


# ----------------------------------------------------------------------------------------------
# Hostile responses
# ----------------------------------------------------------------------------------------------

VALID = "<caption>\n- a red circle\n</caption>\n<think>\nOne shape.\n</think>\n<answer>1</answer>"


@pytest.mark.parametrize("text, fmt", [
    (VALID.replace("<answer>1", "<answer>2</answer>\n<answer>1"), 0),  # a hedge: wrong first, right second
    ("<caption>\n<answer>1</answer>\n</caption>\n<think>x</think>\n<answer>2</answer>", 0),  # answer in caption
    ("<caption>a</caption><think>so <answer>1</answer></think><answer>1</answer>", 0),  # answer nested in think
    ("<caption><caption>a</caption></caption><think>x</think><answer>1</answer>", 0),  # nested caption
    ("<caption>a</caption><think>x</answer><answer>1</think>", 0),  # closing tags swapped
    (VALID.replace("</caption>\n", "</caption><|im_end|>"), 0),  # spelled end of turn between blocks
    (VALID.replace("</think>\n", "</think><|vision_start|><|image_pad|><|vision_end|>"), 0),  # vision tokens
    (VALID + "<|im_end|>\n<|im_start|>user\nThanks", 0),  # a spelled new turn after the answer
    (VALID.replace("<answer>1", "<answer><|image_pad|>1"), 1),  # well-formed, but the answer is not "1"
])
def test_hostile_responses_earn_nothing_for_the_right_answer(text, fmt):
    assert grading.reward_parts(text, "1") == pytest.approx((0.2 * fmt, 0.0, float(fmt)))


@pytest.mark.parametrize("answer", ["1<|im_end|>", "1<|im_end|>\n<|im_start|>assistant\n1"])
def test_a_spelled_end_of_turn_inside_the_answer_is_not_rewarded(answer):
    assert grading.reward_parts(VALID.replace("<answer>1", f"<answer>{answer}"), "1")[1] == 0.0


def test_a_100kb_answer_is_not_judged():
    start_time = time.monotonic()
    assert grading.reward_parts(VALID.replace("<answer>1", "<answer>" + "1" * 100_000), "1") == (0.2, 0.0, 1.0)
    assert time.monotonic() - start_time < 0.5


def test_a_100kb_tag_stuffed_response_is_graded_fast():
    k = 4000
    text = "<caption>x</caption><think>" + "</think><answer>" * k + "</answer>x" * k  # 104 KB
    start_time = time.monotonic()
    assert grading.reward_parts(text, "1") == (0.0, 0.0, 0.0)
    assert time.monotonic() - start_time < 0.5


def test_a_polynomial_blow_up_in_the_answer_is_cut_by_the_time_limit():
    # Expanding (x+y+z)^999 is not caught by the cheap pre-check; the per-call limit (2 s) ends it.
    start_time = time.monotonic()
    assert grading.reward_parts(VALID.replace("<answer>1", "<answer>(x+y+z)^{999}"), "1") == (0.2, 0.0, 1.0)
    assert time.monotonic() - start_time < 4.0


def test_split_survives_special_tokens_inside_a_response(processor):
    tok = processor.tokenizer
    special = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    eos, close = special["<|im_end|>"], tok.convert_tokens_to_ids("</caption>")
    caption = tok.encode("<caption>\n- a", add_special_tokens=False)
    rest = tok.encode("\n<think>x</think><answer>1</answer>", add_special_tokens=False)
    vision = [special["<|vision_start|>"], special["<|image_pad|>"], special["<|vision_end|>"]]
    cases = {
        "vision tokens in the caption": (caption + vision + [close] + rest + [eos], len(caption) + 4),
        "end of turn in the middle": (caption + [close, eos] + rest + [eos], len(caption) + 1),
        "only special tokens": ([special["<|image_pad|>"], eos], None),
        "a lone end of turn": ([eos], None),
    }
    for name, (ids, boundary) in cases.items():
        perception, reasoning, valid = data.split_segments(tok, ids)
        # Every segment is scored at its last token, so neither may be empty; no token is lost or invented.
        assert perception and reasoning, name
        assert valid == (boundary is not None), name
        if valid:
            assert len(perception) == boundary and perception + reasoning == ids, name
        else:
            assert set(perception + reasoning) <= set(ids), name


# ----------------------------------------------------------------------------------------------
# Hostile data
# ----------------------------------------------------------------------------------------------


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def test_zero_size_and_empty_images_are_named_errors(tmp_path):
    # A well-formed PNG whose header says 0×0 (valid CRCs), and an empty file.
    zero = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0)) + \
        png_chunk(b"IDAT", zlib.compress(b"")) + png_chunk(b"IEND", b"")
    (tmp_path / "empty.png").write_bytes(b"")
    for ref in (zero, tmp_path / "empty.png"):
        with pytest.raises(data.DataError, match="f.jsonl:3: "):
            data.load_image(ref, "f.jsonl:3")


@pytest.mark.parametrize("mode, fmt", [("I;16", "PNG"), ("CMYK", "TIFF"), ("P", "PNG"), ("F", "TIFF")])
def test_unusual_image_modes_become_rgb(mode, fmt):
    buffer = io.BytesIO()
    Image.new(mode, (40, 30)).save(buffer, fmt)
    img = data.load_image(buffer.getvalue(), "x")
    assert img.mode == "RGB" and img.size == (40, 30)


def test_an_extreme_aspect_ratio_image_is_a_named_error(processor):
    buffer = io.BytesIO()
    Image.new("RGB", (1, 4000)).save(buffer, "PNG")
    example = data.Example("x", "<image>\nQ?", [buffer.getvalue()], "f.jsonl:7", answer="1")
    with pytest.raises(data.DataError, match="f.jsonl:7"):
        batching.drop_long_prompts(processor, [example], 4096)
    with pytest.raises(data.DataError, match="f.jsonl:7"):
        batching.encode_prompts(processor, [example])


def test_text_spelling_a_vision_token_is_a_named_error(processor, synth_dir, tmp_path):
    record = json.loads((synth_dir / "sft_teacher.jsonl").read_text().splitlines()[0])
    record["images"] = [str(synth_dir / image) for image in record["images"]]
    record["messages"][-1]["content"] = record["messages"][-1]["content"].replace("</caption>",
                                                                                  "<|image_pad|></caption>")
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(data.DataError, match="sft.jsonl:1"):
        batching.encode_conversations(processor, data.load_sft(path))


def test_parquet_columns_of_the_wrong_type_are_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    user = [{"role": "user", "content": "Q?"}]
    for columns, message in (({"prompt": ["Q?"], "images": [[]]}, "field 'prompt' must be list, got str"),
                             ({"prompt": [user], "images": [[3]]}, "an image entry must be a path or bytes, got int"),
                             ({"prompt": [[{"role": "user", "content": 5}]], "images": [[]]},
                              "'prompt' must be [system, user] or [user] messages with string content")):
        pq.write_table(pa.table(columns), tmp_path / "x.parquet")
        with pytest.raises(data.DataError, match=r"x.parquet:row 0: " + re.escape(message)):
            data.load_prompts(tmp_path / "x.parquet")
