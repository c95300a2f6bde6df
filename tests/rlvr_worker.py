"""Worker for tests/test_rlvr.py: rlvr.main with a scripted judge, so group outcomes are controlled.

Prompts whose answer is "ALWAYS" are always right, "NEVER" never right; others alternate right
and wrong from rollout to rollout. Format is always valid. Every rank then writes a digest of
the full weights it ends with to OUT/digest_rank{r}.txt.
"""

import hashlib
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import model  # noqa: E402
import rlvr  # noqa: E402
import run  # noqa: E402

_alternate = itertools.cycle([1.0, 0.0])


def scripted_reward(text: str, example):
    truth = example.answer
    acc = {"ALWAYS": 1.0, "NEVER": 0.0}.get(truth) if truth in ("ALWAYS", "NEVER") else next(_alternate)
    return 0.8 * acc + 0.2, acc, 1.0


if __name__ == "__main__":
    args = run.parse_args(rlvr.Args, sys.argv[1:])
    rlvr.main(args, reward_fn=scripted_reward)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    d = run.init_distributed(args.device)
    policy = model.shard(model.Policy.from_pretrained(Path(args.out) / "model"), d, bf16=False)
    state = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False))
    digest = hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()
    (Path(args.out) / f"digest_rank{d.rank}.txt").write_text(digest)
