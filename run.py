"""The run machinery every stage shares, and nothing of the algorithm.

  - where this process sits in the job (torchrun's environment), collectives, seeding;
  - the command line, built from a stage's `Args` dataclass by transformers' HfArgumentParser;
  - the optimizer (AdamW with a warm-up schedule) and the guarded optimizer step;
  - `TrainingRun`: the one loop of every training stage — resume from the newest verified
    checkpoint, one log line per step, a checkpoint every N steps and at the end, a clean exit on
    preemption — with atomic, checksummed checkpoints and the metrics log.

Stages call their step function from `TrainingRun.loop`; this module calls no model code: checkpoints
hold the modules' state dicts as torch.distributed.checkpoint shards.
"""

import argparse
import contextlib
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
import warnings
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


def save_rng_state(path: Path) -> None:
    """Every generator a step draws from, to one safetensors file: tensors as tensors, the Python and
    NumPy scalars as JSON in its header (nothing pickled)."""
    from safetensors.torch import save_file

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64))}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state()
    scalars = {"python": random.getstate(), "numpy": [kind, pos, has_gauss, gauss]}
    save_file(tensors, str(path), metadata={"scalars": json.dumps(scalars)})


def read_rng_state(path: Path) -> dict:
    """What save_rng_state wrote; a TrainingError naming the file if it is not that (a pickle, say)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {"tensors": {k: f.get_tensor(k) for k in f.keys()}, **json.loads(f.metadata()["scalars"])}
    except Exception as e:  # safetensors raises its own types for a file that is not safetensors
        raise TrainingError(f"checkpoint {path.parent}: {path.name} cannot be read ({e})") from None


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, pos, has_gauss, gauss = state["numpy"]
    tensors = state["tensors"]
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors:
        torch.cuda.set_rng_state(tensors["cuda"])


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


MAX_FILE_BYTES = 2 << 30  # of whole tensors per safetensors file; each rank serialises its part in memory


def file_numbers(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """Stored name → number (from 1) of the file it goes to: consecutive tensors, at most MAX_FILE_BYTES of
    whole tensors (sharded or not) a file, a larger tensor alone. Bounds both the files and the memory
    torch.distributed.checkpoint's safetensors writer takes, as it builds each rank's file in memory."""
    numbers, file, size = {}, 1, 0
    for name, tensor in state.items():  # in state-dict order, so that a layer's tensors share a file
        nbytes = tensor.numel() * tensor.element_size()
        if size and size + nbytes > MAX_FILE_BYTES:
            file, size = file + 1, 0
        numbers[name], size = file, size + nbytes
    return numbers


def save_checkpoint(out: Path, step: int, models: dict[str, nn.Module], optimizers: dict, schedulers: dict,
                    d: Dist, extra: dict | None = None) -> Path:
    """Write out/checkpoints/step_N, every rank writing only its own shards (nothing is gathered):

        <model>/                    the weights: torch.distributed.checkpoint's Hugging Face writer, each rank's
                                    slices in its own safetensors files (file_numbers), each slice's offsets
                                    in the file header
        <model>.optimizer/          the optimizer's tensors (moments, step counts), the same way
        train_state.json            step, progress (`extra`), scheduler states, optimizer hyperparameters
        rng_rank<r>.safetensors     each rank's generators
        manifest.json               SHA-256 of every file, written last

    Nothing is pickled. Everything is written under a temporary name and renamed at the end, so an
    interrupted save never looks like a complete checkpoint. load_checkpoint reshards to any world size.
    """
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    final = out / "checkpoints" / f"step_{step:08d}"
    tmp = final.with_name(final.name + ".tmp")
    if d.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    train_state = {"step": step, "extra": extra or {}, "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
                   "param_groups": {}}
    for name, module in models.items():
        weights = stored_weights(module)
        dcp_save(weights, _shard_writer(tmp / name, weights), d)
        if name in optimizers:
            state = get_optimizer_state_dict(module, optimizers[name])
            moments = _flat_moments(state)
            dcp_save(moments, _shard_writer(tmp / f"{name}.optimizer", moments), d)
            train_state["param_groups"][name] = state["param_groups"]
    save_rng_state(tmp / f"rng_rank{d.rank}.safetensors")
    if d.is_main:
        (tmp / "train_state.json").write_text(json.dumps(train_state, indent=1))
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


def stored_weights(module: nn.Module) -> dict:
    """The module's state dict (sharded under FSDP2) with each parameter once: a tied one (an lm_head that is
    the input embedding) is stored under its first name only, as safetensors holds no tensor twice."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    seen, tied = set(), set()
    for name, param in module.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            tied.add(name)
        seen.add(id(param))
    return {k: v for k, v in get_model_state_dict(module).items() if k not in tied}


def _flat_moments(optimizer_state: dict) -> dict[str, torch.Tensor]:
    """An optimizer state dict's tensors, `<parameter name>.<exp_avg | exp_avg_sq | step>`: the tensors themselves,
    so that loading into this dict fills the state dict it came from."""
    return {f"{param}.{key}": value for param, state in optimizer_state["state"].items()
            for key, value in state.items()}


def _shard_writer(path: Path, state: dict):
    import torch.distributed.checkpoint as dcp

    return dcp.HuggingFaceStorageWriter(str(path), fqn_to_index_mapping=file_numbers(state), save_distributed=True)


@contextlib.contextmanager
def _one_process_intended():
    """torch.distributed.checkpoint warns "assuming the intent is to save/load in a single process": it is."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def dcp_save(state: dict, storage_writer, d: Dist) -> None:
    """torch.distributed.checkpoint.save, collective over the ranks, or in this one process."""
    import torch.distributed.checkpoint as dcp

    with _one_process_intended():
        dcp.save(state, storage_writer=storage_writer, no_dist=not d.distributed)


def dcp_load(state: dict, storage_reader, d: Dist) -> None:
    """torch.distributed.checkpoint.load in place, collective over the ranks, or in this one process."""
    import torch.distributed.checkpoint as dcp

    with _one_process_intended():
        dcp.load(state, storage_reader=storage_reader, no_dist=not d.distributed)


def read_sharded(path: Path) -> dict[str, torch.Tensor]:
    """The whole tensors of one directory of a checkpoint (`<model>` or `<model>.optimizer`), assembled
    from every rank's shards, in one process: for inspection and tests, not for training."""
    import torch.distributed.checkpoint as dcp

    reader = dcp.HuggingFaceStorageReader(str(path))
    stored = reader.read_metadata().state_dict_metadata
    state = {name: torch.empty(m.size, dtype=m.properties.dtype) for name, m in stored.items()}
    dcp_load(state, reader, Dist())
    return state


def save_consolidated(weights: dict[str, torch.Tensor], out: Path, d: Dist) -> None:
    """Collective: write `weights` ({stored name: tensor, plain or FSDP2-sharded}) to `out` as consolidated
    safetensors files of at most MAX_FILE_BYTES (model-0000k-of-0000n.safetensors and their index), without
    gathering the model on any rank.

    Each rank writes its own slices (torch.distributed.checkpoint's Hugging Face writer, into out/sharded);
    rank 0 then assembles each file from the slices' byte ranges, holding one tensor in memory at a time,
    and the slices are deleted. The ranks must share the file system, as for training checkpoints.
    """
    import torch.distributed.checkpoint as dcp

    if d.is_main:  # a previous save's files would otherwise stay beside the new ones
        shutil.rmtree(out / "sharded", ignore_errors=True)
        for stale in [*out.glob("model*.safetensors"), out / "model.safetensors.index.json"]:
            stale.unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
    barrier()
    writer = dcp.HuggingFaceStorageWriter(str(out), fqn_to_index_mapping=file_numbers(weights),
                                          save_distributed=True, enable_consolidation=True)
    dcp_save(weights, writer, d)
    barrier()
    if d.is_main:
        shutil.rmtree(out / "sharded")
    barrier()


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
    # A file the manifest does not list would still be read (the shard readers take a directory's every file).
    if extra := sorted({str(f.relative_to(path)) for f in path.rglob("*") if f.is_file()} - set(manifest) - {MANIFEST}):
        raise TrainingError(f"checkpoint {path} holds {extra[0]}, which its manifest does not list")


def _require_same_shapes(path: Path, name: str, weights: dict, stored) -> None:
    """A checkpoint of another model (resumed with another --policy, say) is a named error, not a failure deep
    inside the reader; weights: this module's, stored: the checkpoint directory's metadata."""
    for key, tensor in weights.items():
        if key not in stored.state_dict_metadata:
            raise TrainingError(f"checkpoint {path}: {name} has no {key}; it was written for another model")
        if tuple(stored.state_dict_metadata[key].size) != tuple(tensor.shape):
            raise TrainingError(f"checkpoint {path}: {name}/{key} is stored with shape "
                                f"{tuple(stored.state_dict_metadata[key].size)}, the model has {tuple(tensor.shape)}; "
                                "it was written for another model")


def load_checkpoint(path: Path, models: dict[str, nn.Module], optimizers: dict, schedulers: dict,
                    d: Dist) -> dict:
    """Restore weights, optimizer and scheduler states and this rank's RNG; returns the train state.

    Every file is verified against the manifest first. Each rank reads only the slices of its own shards,
    whatever the world size that wrote them (torch.distributed.checkpoint reshards); the RNG is restored
    only on a rank that saved one, so resuming on another world size is correct but not bit-exact.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    verify_checkpoint(path)
    if (path / "train_state.pt").is_file():
        raise TrainingError(f"checkpoint {path} was written by an earlier version of this project (a pickled "
                            "train_state.pt, no longer read); start the run again from its last model directory")
    try:
        train_state = json.loads((path / "train_state.json").read_text())
    except (OSError, ValueError) as e:
        raise TrainingError(f"checkpoint {path}: train_state.json cannot be read ({e})") from None
    rng_file = path / f"rng_rank{d.rank}.safetensors"
    rng = read_rng_state(rng_file) if rng_file.is_file() else None
    for name, module in models.items():
        weights = stored_weights(module)
        _require_same_shapes(path, name, weights, dcp.HuggingFaceStorageReader(str(path / name)).read_metadata())
        dcp_load(weights, dcp.HuggingFaceStorageReader(str(path / name)), d)
        set_model_state_dict(module, weights, options=StateDictOptions(strict=False))  # a tied name is left out
        if name in optimizers:
            moments_dir = str(path / f"{name}.optimizer")
            stored = dcp.HuggingFaceStorageReader(moments_dir).read_metadata().state_dict_metadata
            state = get_optimizer_state_dict(module, optimizers[name])  # allocates the moments to read into
            # A parameter that had had no gradient when the checkpoint was written had no moments: none now either.
            state["state"] = {param: moments for param, moments in state["state"].items()
                              if all(f"{param}.{key}" in stored for key in moments)}
            dcp_load(_flat_moments(state), dcp.HuggingFaceStorageReader(moments_dir), d)
            state["param_groups"] = train_state["param_groups"][name]
            set_optimizer_state_dict(module, optimizers[name], state, options=StateDictOptions(strict=False))
    for name, sched in schedulers.items():
        sched.load_state_dict(train_state["schedulers"][name])
    if rng is not None:
        set_rng_state(rng)
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

        run = TrainingRun(out, d, models, optimizers, schedulers, args, console)
        run.loop(total_steps, step_fn, desc)       # step_fn(step) -> metrics of that step

    On creation it resumes (with args.resume) from the newest checkpoint under out/checkpoints, after
    verifying every file of it: weights, optimizer and scheduler states, this rank's RNG, and
    `progress` — a small dict the stage keeps its own position in (for example the prompts consumed),
    saved with every checkpoint. Each step then gets one line in out/metrics.jsonl (and a console
    line), a checkpoint every args.save_every steps and at the end, and a clean exit with a
    checkpoint when any rank has received SIGTERM. A step whose metrics say an optimizer step was
    skipped (`optim/…skipped_step`) counts towards args.max_skipped_steps.
    """

    def __init__(self, out: Path, d: Dist, models: dict[str, nn.Module], optimizers: dict,
                 schedulers: dict, args, console: tuple[str, ...], progress: dict | None = None):
        self.out, self.d = out, d
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
                save_checkpoint(self.out, step + 1, self.models, self.optimizers, self.schedulers, self.d,
                                extra=self.progress)
            if preempted:
                self.guard.exit(step + 1, self.out)
