"""Real sizes without a GPU: the sharding plan on the published 30B-A3B MoE (meta device, 8 simulated ranks),
and load_sharded on 2 gloo ranks — each rank holds only its shards and the logits equal the one-process load."""

import json

import pytest
import torch
import torch.distributed as dist
from conftest import run_script

import model
from toy.models import real_config


def _shard_bytes_per_rank(config, world: int) -> list[int]:
    """Each simulated rank's parameter bytes (float32) under shard_plan, nothing allocated (meta device)."""
    from accelerate import init_empty_weights
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore
    from transformers import AutoModelForImageTextToText

    per_rank = []
    for rank in range(world):
        dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
        try:
            with init_empty_weights():
                hf = AutoModelForImageTextToText.from_config(config)
            module = model.Policy(hf)
            model.shard_plan(module, init_device_mesh("cpu", (world,)), bf16=False)
            local = [p.to_local() for p in module.parameters()]
            assert all(type(p).__name__ == "DTensor" for p in module.parameters())  # every parameter sharded
            per_rank.append(sum(t.numel() * 4 for t in local))
        finally:
            dist.destroy_process_group()
    return per_rank


@pytest.mark.parametrize("name", ["30B-A3B", "32B"])
def test_sharding_plan_balances_the_published_shapes_over_8_ranks(name):
    config = real_config(name)
    per_rank = _shard_bytes_per_rank(config, 8)
    total = sum(per_rank)
    print(f"{name}: {total / 4 / 1e9:.1f}B parameters, per rank {[f'{b / 2**30:.2f}' for b in per_rank]} GiB")
    assert total / 4 > (29e9 if name == "30B-A3B" else 32e9)
    assert max(per_rank) <= 1.05 * min(per_rank)


def test_load_sharded_two_ranks_hold_half_and_give_the_same_logits(tiny_dir, tmp_path):
    """scripts/sharded_load.py's worker on the tiny model: one rank, then two."""
    results = {}
    for ranks in (1, 2):
        record = tmp_path / f"ranks{ranks}.json"
        run_script(["scripts/sharded_load.py", "--out", tiny_dir, "--worker", record], nproc=ranks)
        results[ranks] = json.loads(record.read_text())
        results[ranks]["logits"] = torch.load(record.with_suffix(".pt"), weights_only=True)
    one, two = results[1], results[2]
    assert torch.equal(one["logits"], two["logits"])
    whole = one["local_param_mib"][0]
    assert all(abs(half - whole / 2) <= 0.01 * whole for half in two["local_param_mib"])

    # --param-dtype bfloat16: each rank holds half the bytes again, and the logits move only by bf16 rounding.
    record = tmp_path / "bf16.json"
    run_script(["scripts/sharded_load.py", "--out", tiny_dir, "--worker", record, "--param-dtype", "bfloat16"], nproc=2)
    bf16 = json.loads(record.read_text())
    assert all(abs(quarter - whole / 4) <= 0.01 * whole for quarter in bf16["local_param_mib"])
    logits = torch.load(record.with_suffix(".pt"), weights_only=True)
    err = (logits - one["logits"]).abs().max().item() / one["logits"].abs().max().item()
    print(f"bfloat16 weights on 2 ranks: max logit error {err:.1e} of the largest logit")
    assert 0 < err < 0.05


def test_meta_load_refuses_a_checkpoint_it_cannot_fill(tiny_dir, tmp_path):
    """A stored tensor of the wrong shape is an error naming it, before any rank allocates or reads."""
    import shutil

    from safetensors.torch import load_file, save_file

    import hf_checkpoint
    from data import DataError

    bad = tmp_path / "bad"
    shutil.copytree(tiny_dir, bad)
    (weights,) = bad.glob("*.safetensors")
    state = load_file(weights)
    name = next(k for k in state if k.endswith("norm.weight"))
    state[name] = torch.ones(3)
    save_file(state, weights)
    with pytest.raises(DataError, match=f"of the wrong shape: {name.replace('.', '[.]')}"):
        hf_checkpoint.empty_hf_model(bad)


LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FP8_CONFIG = {  # llm-compressor's FP8_DYNAMIC recipe as it writes config.json: W8A8, weights per channel
    "quant_method": "compressed-tensors", "format": "float-quantized", "quantization_status": "compressed",
    "config_groups": {"group_0": {
        "targets": ["Linear"],
        "weights": {"num_bits": 8, "type": "float", "strategy": "channel", "symmetric": True, "dynamic": False,
                    "observer": "minmax"},
        "input_activations": {"num_bits": 8, "type": "float", "strategy": "token", "symmetric": True,
                              "dynamic": True, "observer": None},
        "output_activations": None}},
    "ignore": ["lm_head", "re:.*visual.*"], "kv_cache_scheme": None, "sparsity_config": {}}


def _fp8_checkpoint(tiny_dir, out):
    """The tiny model in the compressed-tensors float-quantized layout: every text Linear's `weight` in
    float8_e4m3fn with a per-output-channel bf16 `weight_scale`; the vision tower, embeddings, norms and
    lm_head left as they were. Returns the dequantised weights the loader must reproduce."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny_dir, out)
    (weights,) = out.glob("*.safetensors")
    state, expected = load_file(weights), {}
    for name in [n for n in state if n.endswith(".weight") and n.split(".")[-2] in LINEARS and ".visual." not in n]:
        w = state[name].float()
        scale = (w.abs().amax(1, keepdim=True) / 448).to(torch.bfloat16)
        state[name] = (w / scale.float()).to(torch.float8_e4m3fn)
        state[name.removesuffix("weight") + "weight_scale"] = scale
        expected[name] = state[name].float() * scale.float()
    save_file(state, weights, metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(config | {"quantization_config": FP8_CONFIG}, indent=2))
    return expected


def test_fp8_compressed_tensors_checkpoint_loads_dequantised(tiny_dir, tmp_path):
    import hf_checkpoint

    expected = _fp8_checkpoint(tiny_dir, tmp_path / "fp8")
    assert len(expected) >= 7 * 4  # every Linear of the 4 text layers
    original = hf_checkpoint.load_hf_model(tiny_dir)
    loaded = hf_checkpoint.load_hf_model(tmp_path / "fp8")
    assert not hasattr(loaded.config, "quantization_config") and loaded.dtype == torch.float32
    state, reference = loaded.state_dict(), original.state_dict()
    for name, value in state.items():
        if name in expected:
            # q · scale, up to the bf16 rounding the library dequantises in (2⁻⁸ relative)
            assert torch.allclose(value, expected[name], rtol=2**-8, atol=0), name
            # FP8 e4m3 keeps 3 mantissa bits: each weight within 1/16 of its own size, or of a tiny scale's step.
            err = (value - reference[name]).abs()
            assert (err <= reference[name].abs() / 16 + 2e-3 * reference[name].abs().amax()).all(), name
        else:
            assert torch.equal(value, reference[name]), name
    # Logits: against the model dequantised by hand (the loader's own error), and against the original
    # (the FP8 error itself, large on a random 1.2M-parameter model whose logits are small).
    by_hand = hf_checkpoint.load_hf_model(tiny_dir)
    by_hand.load_state_dict(reference | expected)
    ids = torch.arange(3, 35).unsqueeze(0)
    with torch.no_grad():
        a, b, c = (m(input_ids=ids).logits for m in (original, loaded, by_hand))
    loader_error, fp8_error = ((b - c).norm() / c.norm()).item(), ((b - a).norm() / a.norm()).item()
    print(f"FP8: max weight error {max((state[n] - reference[n]).abs().max().item() for n in expected):.2e}, "
          f"relative logit error against the hand-dequantised model {loader_error:.2e}, against the original "
          f"{fp8_error:.2e}")
    assert loader_error < 0.01 and fp8_error < 0.15
    # Saved again, it is a plain checkpoint in the training dtype.
    policy = model.Policy.from_pretrained(tmp_path / "fp8")
    processor = __import__("hf_checkpoint").load_processor(tiny_dir)
    policy.save_pretrained(processor, tmp_path / "saved", __import__("run").Dist())
    assert "quantization_config" not in json.loads((tmp_path / "saved" / "config.json").read_text())
    again = hf_checkpoint.load_hf_model(tmp_path / "saved").state_dict()
    assert all(torch.equal(again[n], state[n]) for n in state)


def test_other_quantisation_methods_are_refused(tiny_dir, tmp_path):
    import shutil

    import hf_checkpoint
    from data import DataError

    shutil.copytree(tiny_dir, tmp_path / "q")
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    (tmp_path / "q" / "config.json").write_text(json.dumps(config | {"quantization_config": {"quant_method": "gptq"}}))
    with pytest.raises(DataError, match="quant_method 'gptq' is not read; only compressed-tensors"):
        hf_checkpoint.load_hf_model(tmp_path / "q")


def test_the_final_directory_is_consolidated_in_files_of_bounded_size(tiny_dir, processor, tmp_path, monkeypatch):
    """save_pretrained writes model-0000k-of-0000n files of at most run.MAX_FILE_BYTES (a tensor larger than
    that alone in its file) and their index, leaves no per-rank slices behind, and plain transformers reads
    the directory back to the same weights. (Two ranks writing it: tests/test_model.py.)"""
    from safetensors import safe_open
    from transformers import AutoModelForImageTextToText

    import run

    limit = 1 << 20
    monkeypatch.setattr(run, "MAX_FILE_BYTES", limit)
    policy = model.Policy.from_pretrained(tiny_dir)
    out = tmp_path / "saved"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"stale")  # a previous save's file is replaced, not left beside
    policy.save_pretrained(processor, out, run.Dist())
    files = sorted(out.glob("*.safetensors"))
    assert len(files) >= 3 and all(f.name.startswith("model-0") for f in files)
    assert not (out / "sharded").exists()
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            sizes = [st.get_slice(k).get_shape() for k in st.keys()]
        nbytes = sum(4 * torch.Size(s).numel() for s in sizes)
        assert nbytes <= limit or len(sizes) == 1, f.name
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(index.values()) == {f.name for f in files}
    again = AutoModelForImageTextToText.from_pretrained(out).state_dict()
    original = policy.hf.state_dict()
    assert again.keys() == original.keys() and all(torch.equal(again[k], original[k]) for k in original)
