"""Worker for tests/test_align.py: align.main with rollout validity forced per rank.

VALID_RANKS (env, comma-separated ranks; empty = none) lists the ranks whose rollouts all count
as well-formed; every other rank's rollouts all count as malformed. Every rank then writes a
digest of both full models to OUT/digest_rank{r}.txt.
"""

import hashlib
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import align  # noqa: E402
import model  # noqa: E402
import run  # noqa: E402


def forced_split(rollouts, examples, tokenizer):
    segs = align.split_rollouts(rollouts, examples, tokenizer)
    ranks = {int(r) for r in os.environ.get("VALID_RANKS", "").split(",") if r}
    segs.valid = torch.full_like(segs.valid, int(os.environ.get("RANK", "0")) in ranks)
    return segs


if __name__ == "__main__":
    args = run.parse_args(align.Args, sys.argv[1:])
    align.main(args, split=forced_split if "VALID_RANKS" in os.environ else align.split_rollouts)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    d = run.init_distributed(args.device)
    digest = hashlib.sha256()
    for module in (model.Policy.from_pretrained(Path(args.out) / "model"),
                   model.Discriminator.from_pretrained(Path(args.out) / "discriminator")):
        module = model.shard(module, d, bf16=False)
        state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True))
        digest.update(b"".join(state[k].numpy().tobytes() for k in sorted(state)))
    (Path(args.out) / f"digest_rank{d.rank}.txt").write_text(digest.hexdigest())
