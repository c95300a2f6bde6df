"""The run machinery every stage shares, and nothing of the algorithm.

  - where this process sits in the job (torchrun's environment), collectives, seeding;
  - the command line, built from a stage's `Args` dataclass by transformers' HfArgumentParser;
  - the optimizer (AdamW with a warm-up schedule) and the guarded optimizer step;
  - `TrainingRun`: the one loop of every training stage — resume from the newest verified
    checkpoint, one log line per step, a checkpoint every N steps and at the end, a clean exit on
    preemption — with atomic, checksummed checkpoints and the metrics log.

Stages call their step function from `TrainingRun.loop`; this module calls no model code except
the `save_pretrained` / `load_weights` methods of the modules it checkpoints.
"""

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from data import DataError

# ----------------------------------------------------------------------------------------------
# Where this process sits in the job
# ----------------------------------------------------------------------------------------------


@dataclass
class Dist:
    """Where this process sits in the job. A plain `python` run is rank 0 of a world of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> Dist:
    """Read torchrun's environment; NCCL on GPUs, gloo on CPU. `device` forces "cpu" or "cuda"."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world_size, local_rank, dev)


def all_reduce(x: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce over all ranks (a no-op in a single process). op: sum | max | min."""
    if dist.is_initialized():
        dist.all_reduce(x, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return x


def global_sum(value: float, d: Dist) -> float:
    return all_reduce(torch.tensor(float(value), dtype=torch.float64, device=d.device)).item()


def global_max(value: int, d: Dist) -> int:
    """The largest value over all ranks; also the number of passes every rank must run in lockstep
    (FSDP2's collectives need the same number of forwards and backwards everywhere)."""
    return int(all_reduce(torch.tensor(int(value), device=d.device), "max").item())


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def rank_share(items: list, d: Dist) -> list:
    """This rank's contiguous share of a global batch (every rank draws the same global batch)."""
    n = len(items)
    return items[d.rank * n // d.world_size:(d.rank + 1) * n // d.world_size]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every generator a step draws from, in plain types and tensors so weights_only loading accepts it."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                     gauss), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


# ----------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """What a flag's value must be, as the error says it: `--top-p 1.5: must be in (0, 1]`."""

    rule: str
    holds: Callable[[object], bool]


POSITIVE = Check("must be > 0", lambda v: v > 0)
AT_LEAST_ONE = Check("must be at least 1", lambda v: v >= 1)
NON_NEGATIVE = Check("must be ≥ 0", lambda v: v >= 0)
PROBABILITY = Check("must be in (0, 1]", lambda v: 0 < v <= 1)
FRACTION = Check("must be in [0, 1]", lambda v: 0 <= v <= 1)
BELOW_ONE = Check("must be in [0, 1)", lambda v: 0 <= v < 1)
LEARNING_RATE = Check("must be in (0, 1]", lambda v: 0 < v <= 1)  # an AdamW step moves each weight by about lr
DUAL_CLIP = Check("must be 0 (off) or above 1", lambda v: v == 0 or v > 1)


class FlagError(DataError):
    """A flag value that cannot work, found before any model is loaded."""


def arg(default, help: str, check: Check | None = None, **metadata):
    """A documented field of a stage's Args dataclass: `help` is its --help text, `default` its value
    when the flag is not given (required=True makes the flag mandatory), `check` what its value must be."""
    factory = dict(default_factory=lambda: list(default)) if isinstance(default, list) else dict(default=default)
    return dataclasses.field(**factory, metadata=dict(help=help, check=check, **metadata))


def flag_error(name: str, value, rule: str) -> FlagError:
    return FlagError(f"--{name.replace('_', '-')} {value}: {rule}")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written; "(default: …)" after every optional flag that has a default value;
    switches shown as `--flag` rather than `--flag [FLAG]`."""

    def _get_help_string(self, action):
        if action.default is None or action.required or action.const is False:  # the last: a --no-flag
            return action.help
        return super()._get_help_string(action)

    def _format_action_invocation(self, action):
        if action.nargs == "?" and action.const is True:
            return ", ".join(action.option_strings)
        return super()._format_action_invocation(action)


def parse_args(cls, argv=None):
    """Args dataclass → command line, by transformers' HfArgumentParser: field `max_new_tokens` is the flag
    `--max-new-tokens`; bool fields are switches (`--resume`, `--no-std-normalize` where the default is on,
    or `--flag false`); list fields take several values; Literal fields restrict the choices. Abbreviated or
    underscore spellings of a flag are refused, so that each knob has exactly one name. Each field's
    `check` is applied: a value that cannot work is a FlagError, before any model is loaded."""
    from transformers import HfArgumentParser

    class Parser(HfArgumentParser):
        def add_argument(self, *names, check=None, **kwargs):
            return super().add_argument(*([n for n in names if "_" not in n] or names), **kwargs)

    parser = Parser(cls, description=sys.modules[cls.__module__].__doc__, formatter_class=_HelpFormatter,
                    allow_abbrev=False)
    args = cls(**vars(parser.parse_args(argv)))
    for field in dataclasses.fields(cls):
        value, check = getattr(args, field.name), field.metadata.get("check")
        if isinstance(value, float) and not math.isfinite(value):
            raise flag_error(field.name, value, "must be a finite number")
        if check and value is not None and not check.holds(value):
            raise flag_error(field.name, value, check.rule)
    return args


def run_stage(main: Callable, args_cls) -> None:
    """A stage's entry point: parse its Args; bad input ends the run with one clear line, no traceback."""
    try:
        main(parse_args(args_cls))
    except (DataError, TrainingError) as e:
        sys.exit(f"error: {e}")


# ----------------------------------------------------------------------------------------------
# Optimisation
# ----------------------------------------------------------------------------------------------


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def constant_with_warmup(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warm-up over `warmup` steps, then 1."""
    return (step + 1) / warmup if step < warmup else 1.0


def make_optimizer(module: nn.Module, lr: float, weight_decay: float, total_steps: int, warmup_steps: int,
                   schedule: str = "cosine"):
    """AdamW over the trainable parameters, with a LambdaLR schedule (cosine or constant, both warm-up)."""
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999))
    fn = {"cosine": cosine_with_warmup, "constant": constant_with_warmup}[schedule]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: fn(s, total_steps, max(1, warmup_steps)))
    return optimizer, scheduler


def clip_and_step(module: nn.Module, optimizer, scheduler, max_norm: float) -> tuple[float, bool]:
    """Clip the global grad norm, then step — unless the norm is not finite.

    The norm is a global reduction, so every rank takes the same decision: a NaN/inf gradient
    skips the step everywhere and leaves the weights untouched. Returns (grad_norm, stepped).
    """
    params = [p for p in module.parameters() if p.requires_grad]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    norm = float(norm)
    stepped = math.isfinite(norm)
    if stepped:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return norm, stepped


class TrainingError(RuntimeError):
    """A run that cannot go on: a corrupted checkpoint, gradients that stay non-finite."""


def weights_finite(module: nn.Module, d: Dist) -> bool:
    """True when every weight of `module` is finite on every rank (a collective). A finite gradient can
    still make weights inf or NaN, under a learning rate far too large; such weights are never saved."""
    bad = any(not torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all() for p in module.parameters())
    return not global_max(int(bad), d)


class RunGuard:
    """What may end a training run early, decided the same way on every rank.

    Preemption: SIGTERM (what schedulers and torchrun send) only raises a flag; the loop finishes
    its step, writes a resumable checkpoint and exits cleanly. Numerical faults: clip_and_step
    already skips a step whose gradient norm is not finite; after `max_skipped` such steps in a
    row the run stops with a clear error instead of training on nothing.
    """

    def __init__(self, d: Dist, max_skipped: int):
        self.d, self.max_skipped, self.skipped_in_a_row, self._signalled = d, max_skipped, 0, False
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        self._signalled = True

    def record(self, step: int, stepped: bool) -> None:
        self.skipped_in_a_row = 0 if stepped else self.skipped_in_a_row + 1
        if self.skipped_in_a_row >= self.max_skipped:
            raise TrainingError(f"step {step}: {self.skipped_in_a_row} optimizer steps in a row had a non-finite "
                                "gradient and were skipped; stopping (see --max-skipped-steps)")

    def preempted(self) -> bool:
        """True on every rank as soon as any rank has received SIGTERM (a collective: call it every step)."""
        return bool(global_max(int(self._signalled), self.d))

    def exit(self, step: int, out: Path) -> None:
        if self.d.is_main:
            print(f"preempted: stopped after step {step} with a checkpoint in {out / 'checkpoints'}; "
                  "continue with --resume")
        barrier()
        sys.exit(0)


# ----------------------------------------------------------------------------------------------
# Training checkpoints: atomic directories, verified on resume
# ----------------------------------------------------------------------------------------------

MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(out: Path, step: int, models: dict[str, nn.Module], optimizers: dict, schedulers: dict,
                    processor, d: Dist, extra: dict | None = None) -> Path:
    """Write out/checkpoints/step_N atomically: HF dirs, optimizer/scheduler state, per-rank RNG.

    Everything is written under a temporary name and renamed at the end, with a manifest of
    SHA-256 sums written last, so an interrupted save never looks like a complete checkpoint.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    final = out / "checkpoints" / f"step_{step:08d}"
    tmp = final.with_name(final.name + ".tmp")
    if d.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    for name, module in models.items():
        module.save_pretrained(processor, tmp / name, d)
    train_state = {"step": step, "extra": extra or {}, "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
                   "optimizers": {}}
    for name, opt in optimizers.items():
        train_state["optimizers"][name] = get_optimizer_state_dict(
            models[name], opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if d.is_main:
        torch.save(train_state, tmp / "train_state.pt")
    torch.save(rng_state(), tmp / f"rng_rank{d.rank}.pt")
    barrier()
    if d.is_main:
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {str(p.relative_to(tmp)): _sha256(p) for p in files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    barrier()
    return final


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint (one with a manifest) under out/checkpoints, if any."""
    done = sorted(p for p in (out / "checkpoints").glob("step_*") if p.suffix != ".tmp" and (p / MANIFEST).is_file())
    return done[-1] if done else None


def verify_checkpoint(path: Path) -> None:
    """Raise naming the file if any file of the checkpoint is missing or differs from the manifest."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise TrainingError(f"checkpoint {path} is corrupted: {MANIFEST} cannot be read ({e})") from None
    for rel, digest in manifest.items():
        f = path / rel
        if not f.is_file():
            raise TrainingError(f"checkpoint {path} is incomplete: {rel} is missing")
        if _sha256(f) != digest:
            raise TrainingError(f"checkpoint {path} is corrupted: {rel} does not match its checksum")


def load_checkpoint(path: Path, models: dict[str, nn.Module], optimizers: dict, schedulers: dict,
                    d: Dist) -> dict:
    """Restore weights, optimizer and scheduler states and this rank's RNG; returns the train state.

    Training state is read with weights_only=True: a pickle that carries code is refused.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    verify_checkpoint(path)
    for name, module in models.items():
        module.load_weights(path / name)
    train_state = torch.load(path / "train_state.pt", weights_only=True, map_location="cpu")
    for name, opt in optimizers.items():
        set_optimizer_state_dict(models[name], opt, train_state["optimizers"][name],
                                 options=StateDictOptions(full_state_dict=True))
    for name, sched in schedulers.items():
        sched.load_state_dict(train_state["schedulers"][name])
    rng_file = path / f"rng_rank{d.rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=True))
    return train_state


# ----------------------------------------------------------------------------------------------
# Metrics and the training loop
# ----------------------------------------------------------------------------------------------


class MetricsLog:
    """Namespaced metrics (`loss/...`, `reward/...`, `time/...`), one JSON line per step in
    out/metrics.jsonl, and a console line with the few that matter (rank 0 only).

    On resume, lines after the resumed step are dropped so the file matches the weights.
    """

    def __init__(self, out: Path, d: Dist, console: tuple[str, ...], resume_step: int = 0):
        self.path = out / "metrics.jsonl"
        self.enabled = d.is_main
        self.console = console
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= resume_step] \
                if resume_step and self.path.is_file() else []
            self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, step: int, metrics: dict, bar=None) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **{k: float(v) for k, v in metrics.items()}}) + "\n")
        line = f"step {step:>5} | " + " | ".join(f"{k} {_fmt(metrics[k])}" for k in self.console if k in metrics)
        (bar.write if bar is not None else print)(line)


def _fmt(v: float) -> str:
    v = float(v)
    return f"{v:.3e}" if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5) else f"{v:.4f}"


class TrainingRun:
    """The loop of every training stage, written once.

        run = TrainingRun(out, d, processor, models, optimizers, schedulers, args, console)
        run.loop(total_steps, step_fn, desc)       # step_fn(step) -> metrics of that step

    On creation it resumes (with args.resume) from the newest checkpoint under out/checkpoints, after
    verifying every file of it: weights, optimizer and scheduler states, this rank's RNG, and
    `progress` — a small dict the stage keeps its own position in (for example the prompts consumed),
    saved with every checkpoint. Each step then gets one line in out/metrics.jsonl (and a console
    line), a checkpoint every args.save_every steps and at the end, and a clean exit with a
    checkpoint when any rank has received SIGTERM. A step whose metrics say an optimizer step was
    skipped (`optim/…skipped_step`) counts towards args.max_skipped_steps.
    """

    def __init__(self, out: Path, d: Dist, processor, models: dict[str, nn.Module], optimizers: dict,
                 schedulers: dict, args, console: tuple[str, ...], progress: dict | None = None):
        self.out, self.d, self.processor = out, d, processor
        self.models, self.optimizers, self.schedulers = models, optimizers, schedulers
        self.save_every = args.save_every
        self.start, self.progress = 0, dict(progress or {})
        if args.resume and (ckpt := latest_checkpoint(out)):
            state = load_checkpoint(ckpt, models, optimizers, schedulers, d)
            self.start = state["step"]
            self.progress |= state["extra"]
        self.guard = RunGuard(d, args.max_skipped_steps)
        self.log = MetricsLog(out, d, console, resume_step=self.start)

    def loop(self, total_steps: int, step_fn: Callable[[int], dict], desc: str) -> None:
        bar = tqdm(range(self.start, total_steps), initial=self.start, total=total_steps, disable=not self.d.is_main,
                   desc=desc)
        for step in bar:
            t0 = time.time()
            try:
                metrics = step_fn(step)
            except TrainingError as e:
                raise TrainingError(f"step {step + 1}: {e}") from None
            metrics["time/step_s"] = time.time() - t0
            skipped = any(v for k, v in metrics.items() if k.startswith("optim/") and k.endswith("skipped_step"))
            self.guard.record(step + 1, not skipped)
            self.log.write(step + 1, metrics, bar)
            preempted = self.guard.preempted()
            if preempted or (step + 1) % self.save_every == 0 or step + 1 == total_steps:
                if broken := [name for name, m in self.models.items() if not weights_finite(m, self.d)]:
                    raise TrainingError(f"step {step + 1}: the {broken[0]}'s weights are no longer finite (is the "
                                        "learning rate too large?); nothing was saved")
                save_checkpoint(self.out, step + 1, self.models, self.optimizers, self.schedulers, self.processor,
                                self.d, extra=self.progress)
            if preempted:
                self.guard.exit(step + 1, self.out)
