"""The peer in the `trl` benchmark section: TRL's GRPOTrainer on the project's benchmark setting.

Imported only by the benchmark's TRL worker process, never by the pipeline or the tests; TRL is a benchmark-only
dependency (bench/requirements-trl.txt, `make bench-trl`). What is held equal to the project's GRPO step
(bench.sections.grpo_step_metrics): the model (the same tiny Qwen3-VL, seed 0, fp32), the prompts (the same
examples, rendered by the same chat messages with their images), 4 prompts × 8 rollouts × at most 64 new tokens,
sampling at temperature 1 with the four vision tokens suppressed, HF `generate` (no vLLM), β = 0 (no reference
model), one update per batch, AdamW at the GRPO preset's learning rate, and the reward: the real grader runs on
every completion and a seeded U(0, 1) is handed back, so that every group has advantages to learn from.
"""

import io
import time
from pathlib import Path

import torch

import batching
from bench import sections
from data import VISION_TOKENS


def trl_grpo_steps(args, d, data_dir: Path) -> list[dict]:
    """Run args.repeats + 1 GRPOTrainer steps; per step: time of the step, of its generation-and-scoring
    phase (the rest is the loss forward/backward and the optimizer step) and the mean completion length."""
    from datasets import Dataset
    from PIL import Image
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tokenizer, processor = sections.tiny_tokenizer_and_processor(args.image_size)
    hf = sections.build_hf(sections.world_shape(args), tokenizer, d.device, sections.world_dtype(args))
    examples = sections.load_examples(data_dir, "rl", args.prompts, args.image_size)
    a = sections.grpo_settings(args)

    def image(ref):
        with Image.open(io.BytesIO(ref) if isinstance(ref, bytes) else ref) as img:
            return img.convert("RGB")

    rows = Dataset.from_list([{"prompt": batching.chat_messages(e.system, [("user", e.question)]),
                               "image": image(e.images[0]), "example": k} for k, e in enumerate(examples)])
    graded = sections.benchmark_reward(torch.Generator().manual_seed(0))  # the project side's reward

    def reward(completions, example, **_) -> list[float]:
        return [graded(completion[0]["content"], examples[k])[0] for completion, k in zip(completions, example)]

    steps, phase = [], {}

    class Clock(TrainerCallback):
        def on_step_begin(self, *_, **__):
            phase["begin"], phase["generate"] = time.perf_counter(), 0.0

        def on_step_end(self, *_, **__):
            steps.append({"step_s": time.perf_counter() - phase["begin"], "rollout_s": phase["generate"]})

        def on_log(self, _args, _state, _control, logs=None, **__):
            if logs and "completions/mean_length" in logs and steps:
                steps[-1]["length_mean"] = logs["completions/mean_length"]

    config = GRPOConfig(
        output_dir=str(data_dir / "trl_out"), max_steps=args.repeats + 1, per_device_train_batch_size=len(examples)
        * args.rollouts, num_generations=args.rollouts, gradient_accumulation_steps=1, steps_per_generation=1,
        num_iterations=1, beta=0.0, max_completion_length=args.max_new_tokens, temperature=a.temperature,
        top_p=a.top_p, learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=a.max_grad_norm,
        generation_kwargs={"suppress_tokens": [tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS]},
        gradient_checkpointing=False,  # TRL turns it on by default; the project's CPU step does not recompute
        use_cpu=True, bf16=False, logging_steps=1, report_to=[], save_strategy="no", seed=0,
        dataloader_num_workers=0, remove_unused_columns=False, shuffle_dataset=False, disable_tqdm=True)
    trainer = GRPOTrainer(model=hf, reward_funcs=reward, args=config, train_dataset=rows, processing_class=processor,
                          callbacks=[Clock()])
    generate = trainer._generate_and_score_completions

    def timed_generate(inputs):
        t0 = time.perf_counter()
        out = generate(inputs)
        phase["generate"] += time.perf_counter() - t0
        return out

    trainer._generate_and_score_completions = timed_generate
    trainer.train()
    return steps


def run_trl(args, d, data_dir: Path) -> list[sections.Row]:
    steps = trl_grpo_steps(args, d, data_dir)[1:]  # the first step is the warm-up
    return [
        sections.Row("trl: step total", [m["step_s"] for m in steps], "s", "GRPOTrainer.training_step"),
        sections.Row("trl: rollout", [m["rollout_s"] for m in steps], "s",
                     "GRPOTrainer._generate_and_score_completions: prompts, generate, reward, advantages"),
        sections.Row("trl: update", [m["step_s"] - m["rollout_s"] for m in steps], "s",
                     "the rest of the step: loss forward + backward, optimizer step"),
        sections.Row("trl: mean response length", [m.get("length_mean", float("nan")) for m in steps], "tokens"),
        sections.peak_memory_row("trl", d),
    ]
