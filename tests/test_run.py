"""run.py: the one training loop (resume, logging, checkpoints, errors), the command line, and the module layers."""

import ast
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_script

import align
import eval as evaluation
import rlvr
import run
import sft
import upcycle_moe


class Counter(torch.nn.Module):
    """The smallest checkpointable module: one weight, saved and loaded as the stages' models are."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))


@dataclass
class LoopArgs:
    resume: bool = False
    save_every: int = 2
    max_skipped_steps: int = 3


def _training(out: Path, resume: bool):
    module = Counter()
    optimizer, scheduler = run.make_optimizer(module, 0.1, 0.0, 10, 1, "constant")
    training = run.TrainingRun(out, run.Dist(), {"m": module}, {"m": optimizer}, {"m": scheduler},
                               LoopArgs(resume=resume), console=("loss",), progress={"seen": 0})
    return module, optimizer, scheduler, training


def _step(module, optimizer, scheduler, training, skip_at=()):
    def step(k: int) -> dict:
        training.progress["seen"] += 3
        loss = (module.w - torch.tensor([1.0, -1.0])).square().sum()
        loss.backward()
        if k + 1 in skip_at:
            module.w.grad.fill_(float("nan"))
        norm, stepped = run.clip_and_step(module, optimizer, scheduler, 10.0)
        return {"loss": loss.item(), "optim/skipped_step": float(not stepped)}
    return step


def test_loop_logs_checkpoints_and_resumes_exactly(tmp_path):
    module, optimizer, scheduler, training = _training(tmp_path / "full", resume=False)
    training.loop(5, _step(module, optimizer, scheduler, training), "test")
    lines = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4, 5] and all(x["time/step_s"] >= 0 for x in lines)
    names = sorted(p.name for p in (tmp_path / "full" / "checkpoints").iterdir())
    assert names == ["step_00000002", "step_00000004", "step_00000005"]  # every 2 steps and at the end
    # Resume from step 4: the loop starts at step 5, with the weights, optimizer and progress of step 4.
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    for name in ("step_00000002", "step_00000004"):
        (resumed / "checkpoints" / name).symlink_to(tmp_path / "full" / "checkpoints" / name)
    (resumed / "metrics.jsonl").write_text((tmp_path / "full" / "metrics.jsonl").read_text())
    again, optimizer, scheduler, training = _training(resumed, resume=True)
    assert training.start == 4 and training.progress == {"seen": 12}
    training.loop(5, _step(again, optimizer, scheduler, training), "test")
    assert torch.equal(again.w, module.w)
    assert training.progress == {"seen": 15}
    relogged = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in relogged] == [1, 2, 3, 4, 5] and relogged[4]["loss"] == lines[4]["loss"]


def test_skipped_steps_in_a_row_stop_the_loop_and_errors_name_the_step(tmp_path):
    module, optimizer, scheduler, training = _training(tmp_path / "a", resume=False)
    with pytest.raises(run.TrainingError, match="step 4: 3 optimizer steps in a row had a non-finite gradient"):
        training.loop(6, _step(module, optimizer, scheduler, training, skip_at=(2, 3, 4)), "test")

    def failing(k: int) -> dict:
        raise run.TrainingError("dynamic sampling kept 0 of 2 groups")

    _, _, _, training = _training(tmp_path / "b", resume=False)
    with pytest.raises(run.TrainingError, match="^step 1: dynamic sampling kept 0 of 2 groups$"):
        training.loop(2, failing, "test")


class Tied(torch.nn.Module):
    """An output layer that is the input embedding, as in the 2B and 4B Qwen3-VL."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(5, 3)
        self.head = torch.nn.Linear(3, 5, bias=False)
        self.head.weight = self.embed.weight


def test_a_tied_weight_is_stored_once_and_restored_tied(tmp_path):
    torch.manual_seed(0)
    module = Tied()
    optimizer, scheduler = run.make_optimizer(module, 1e-2, 0.0, 4, 1)
    module.head(module.embed(torch.tensor([1, 2]))).square().sum().backward()
    run.clip_and_step(module, optimizer, scheduler, 10.0)
    ckpt = run.save_checkpoint(tmp_path, 1, {"m": module}, {"m": optimizer}, {"m": scheduler}, run.Dist())
    assert set(run.read_sharded(ckpt / "m")) == {"embed.weight"}
    fresh = Tied()
    assert not torch.equal(fresh.embed.weight, module.embed.weight)
    fresh_optimizer, fresh_scheduler = run.make_optimizer(fresh, 1e-2, 0.0, 4, 1)
    run.load_checkpoint(ckpt, {"m": fresh}, {"m": fresh_optimizer}, {"m": fresh_scheduler}, run.Dist())
    assert torch.equal(fresh.embed.weight, module.embed.weight) and fresh.head.weight is fresh.embed.weight
    moments = [fresh_optimizer.state[p]["exp_avg"] for p in fresh.parameters()]
    assert len(moments) == 1 and torch.equal(moments[0], optimizer.state[module.embed.weight]["exp_avg"])


def test_weights_made_non_finite_by_a_step_are_never_saved(tmp_path):
    module, optimizer, scheduler, training = _training(tmp_path / "a", resume=False)

    def step(k: int) -> dict:  # a finite gradient, and an update that still overflows the weights
        with torch.no_grad():
            module.w.fill_(float("inf") if k >= 2 else 1.0)
        return {"loss": 0.0}

    with pytest.raises(run.TrainingError, match=r"^step 4: the m's weights are no longer finite"):
        training.loop(4, step, "test")
    assert sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir()) == ["step_00000002"]


# ----------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------

STAGES = {"sft": sft.Args, "warmup": upcycle_moe.WarmupArgs, "upcycle": upcycle_moe.UpcycleArgs,
          "align": align.Args, "rlvr": rlvr.Args, "eval": evaluation.Args}


def test_one_name_per_knob_across_stages():
    fields = {stage: {f: t for f, t in cls.__annotations__.items()} for stage, cls in STAGES.items()}
    # The policy, its learning rate and its clip range have one name each, wherever they appear.
    for stage in ("sft", "align", "rlvr", "eval"):
        assert "policy" in fields[stage] and "model" not in fields[stage], stage
    for stage in ("sft", "align", "rlvr"):
        assert "lr" in fields[stage] and "policy_lr" not in fields[stage], stage
    for stage in ("warmup", "align"):
        assert {"disc_lr", "disc_micro_batch", "disc_loss", "score_clip", "score_reg"} <= set(fields[stage]), stage
        assert "micro_batch" not in fields[stage] and "lr" not in fields["warmup"]
    for stage in ("align", "rlvr"):
        assert {"clip_low", "clip_high", "dual_clip", "micro_batch_tokens"} <= set(fields[stage])
        assert "clip_ratio" not in fields[stage]
    # A knob shared by several stages has one type everywhere (optional per-algorithm defaults aside; a stage
    # may take several of a thing, as eval.py takes several policies).
    seen = {}
    for stage, names in fields.items():
        for name, kind in names.items():
            kind = typing.get_args(kind)[0] if typing.get_origin(kind) in (list, types.UnionType) else kind
            base = kind.__name__ if isinstance(kind, type) else str(kind)
            assert seen.setdefault(name, base) == base, (stage, name, kind, seen[name])


def test_help_shows_per_algorithm_defaults_and_flags_are_exact(tmp_path):
    help_text = run_script(["rlvr.py", "--help"]).stdout
    assert "default per --algo: grpo 0.2, dapo 0.28, gspo 0.0004" in " ".join(help_text.split())
    assert "(default: None)" not in help_text
    args = run.parse_args(rlvr.Args, ["--policy", "p", "--data", "d", "--out", "o", "--clip-high", "0.3",
                                      "--dynamic-sampling", "--no-std-normalize"])
    assert args.clip_high == 0.3 and args.dynamic_sampling is True and args.std_normalize is False
    assert rlvr.with_preset(args).clip_low == 0.2 and rlvr.with_preset(args).clip_high == 0.3
    with pytest.raises(SystemExit):  # an abbreviation of --micro-batch-tokens is not a flag
        run.parse_args(rlvr.Args, ["--policy", "p", "--data", "d", "--out", "o", "--micro-batch", "8"])


# ----------------------------------------------------------------------------------------------
# The module layers
# ----------------------------------------------------------------------------------------------

# Each module may import only modules of lower layers; toy/ and bench.py serve the demo, the tests and
# the benchmark, and no pipeline module imports them.
LAYERS = [{"data", "symbolic", "logprobs"}, {"quantities", "batching", "hf_checkpoint", "benchmarks"},
          {"grading", "run"}, {"model"}, {"policy_gradient"}, {"sft", "upcycle_moe", "align", "rlvr", "eval"},
          {"toy"}, {"bench"}]


def _project_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_imports_keep_their_layers_and_files_their_size():
    layer_of = {m: k for k, layer in enumerate(LAYERS) for m in layer}
    files = list(ROOT.glob("*.py")) + list((ROOT / "toy").glob("*.py")) + list((ROOT / "bench").glob("*.py"))
    for path in files:
        module = path.parent.name if path.parent != ROOT else path.stem
        assert module in layer_of, f"{path.name} belongs to no layer"
        for imported in _project_imports(path) & set(layer_of):
            if imported == module:
                continue
            assert layer_of[imported] < layer_of[module], f"{path.name} imports {imported}"
        limit = 450 if module in ("sft", "upcycle_moe", "align", "rlvr") else 700
        assert len(path.read_text().splitlines()) <= limit, path.name


class TwoParts(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.used = torch.nn.Parameter(torch.ones(3))
        self.unused = torch.nn.Parameter(torch.ones(2))  # trainable, but no loss has reached it yet


def test_a_parameter_without_gradient_yet_resumes_without_moments(tmp_path):
    """AdamW keeps no state for a parameter that never had a gradient (a vision tower seeing only text so
    far); the checkpoint has none for it, and the resumed optimizer has none either, as the uninterrupted one."""
    module = TwoParts()
    optimizer, scheduler = run.make_optimizer(module, 1e-2, 0.0, 4, 1)
    module.used.square().sum().backward()
    run.clip_and_step(module, optimizer, scheduler, 10.0)
    assert module.unused not in optimizer.state
    ckpt = run.save_checkpoint(tmp_path, 1, {"m": module}, {"m": optimizer}, {"m": scheduler}, run.Dist())
    fresh = TwoParts()
    fresh_optimizer, fresh_scheduler = run.make_optimizer(fresh, 1e-2, 0.0, 4, 1)
    run.load_checkpoint(ckpt, {"m": fresh}, {"m": fresh_optimizer}, {"m": fresh_scheduler}, run.Dist())
    assert torch.equal(fresh.used, module.used) and fresh.unused not in fresh_optimizer.state
    assert torch.equal(fresh_optimizer.state[fresh.used]["exp_avg_sq"], optimizer.state[module.used]["exp_avg_sq"])


def test_a_checkpoint_file_the_manifest_does_not_list_is_refused(tmp_path):
    module = Counter()
    optimizer, scheduler = run.make_optimizer(module, 1e-2, 0.0, 4, 1)
    ckpt = run.save_checkpoint(tmp_path, 1, {"m": module}, {"m": optimizer}, {"m": scheduler}, run.Dist())
    (ckpt / "m" / "shard-00002-model-00001-of-00001.safetensors").write_bytes(b"stray")
    with pytest.raises(run.TrainingError, match="holds m/shard-00002-model-00001-of-00001.safetensors, which its "
                                                "manifest does not list"):
        run.verify_checkpoint(ckpt)


def test_a_checkpoint_of_another_model_is_a_named_error(tmp_path):
    """Resuming into a model of another shape stops before any weight is read, naming the tensor."""
    module = Counter()
    optimizer, scheduler = run.make_optimizer(module, 1e-2, 0.0, 4, 1)
    ckpt = run.save_checkpoint(tmp_path, 1, {"m": module}, {"m": optimizer}, {"m": scheduler}, run.Dist())
    other = Counter()
    other.w = torch.nn.Parameter(torch.ones(3))
    other_optimizer, other_scheduler = run.make_optimizer(other, 1e-2, 0.0, 4, 1)
    with pytest.raises(run.TrainingError, match=r"m/w is stored with shape \(2,\), the model has \(3,\)"):
        run.load_checkpoint(ckpt, {"m": other}, {"m": other_optimizer}, {"m": other_scheduler}, run.Dist())
    assert torch.equal(other.w, torch.ones(3))
    bigger = Counter()
    bigger.v = torch.nn.Parameter(torch.zeros(1))
    bigger_optimizer, bigger_scheduler = run.make_optimizer(bigger, 1e-2, 0.0, 4, 1)
    with pytest.raises(run.TrainingError, match="m has no v; it was written for another model"):
        run.load_checkpoint(ckpt, {"m": bigger}, {"m": bigger_optimizer}, {"m": bigger_scheduler}, run.Dist())
