"""Batching: token rows and the images they show, ready for a forward or for generate.

  - rendering: the chat template, what it renders (one image span per image, in user turns), and
    the length filters that drop, never truncate;
  - `VLBatch`: rows of tokens with each distinct image stored (and encoded) once;
  - prompts to generate from, SFT conversations with their target masks, discriminator inputs
    (prompt ⊕ segment);
  - token-budget micro-batches and the seeded stream of shuffled epochs every stage draws from;
  - `Rollouts`: the rows generate returns, n responses per prompt, and their micro-batches.
"""

import dataclasses
import functools
import io
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from data import VISION_TOKENS, Conversation, DataError, Example, ImageRef, check_aspect, load_image

# ----------------------------------------------------------------------------------------------
# Rendering: the chat template, what it renders, and length filters
# ----------------------------------------------------------------------------------------------


def chat_messages(system: str, turns: list[tuple[str, str]]) -> list[dict]:
    """(role, text) turns → chat-template messages; "<image>" becomes an image part in place."""
    messages = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
    for role, text in turns:
        parts = []
        for j, piece in enumerate(text.split("<image>")):
            if j:
                parts.append({"type": "image"})
            if piece:
                parts.append({"type": "text", "text": piece})
        messages.append({"role": role, "content": parts})
    return messages


def _image_tokens(processor, ref: ImageRef, where: str) -> int:
    """Tokens an image will take, from its header alone (no pixel decoding)."""
    try:
        with Image.open(io.BytesIO(ref) if isinstance(ref, bytes) else ref) as img:
            width, height = img.size
        check_aspect(width, height)
    except DataError as e:
        raise DataError(f"{where}: {e}") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{where}: cannot read image: {e}") from None
    ip = processor.image_processor
    return ip.get_number_of_image_patches(height, width) // ip.merge_size**2


def _rendered_length(processor, text: str, images: list[ImageRef], where: str) -> int:
    """Token length of a rendered chat text once each image placeholder is expanded."""
    n_text = len(processor.tokenizer(text, add_special_tokens=False).input_ids)
    return n_text - len(images) + sum(_image_tokens(processor, ref, where) for ref in images)


def drop_long_prompts(processor, examples: list[Example], max_len: int) -> tuple[list[Example], int]:
    """Keep prompts of at most max_len tokens (images expanded); the rest are dropped and counted.

    Never truncated: a cut through image tokens would leave features without placeholders.
    """
    kept = [e for e in examples
            if _rendered_length(processor, prompt_text(processor, e), e.images, e.where) <= max_len]
    return kept, len(examples) - len(kept)


def require_some_kept(kept: list, total: int, what: str, flag: str, limit: int) -> None:
    """After a length filter: a run with nothing left to train on stops here, saying why."""
    if total and not kept:
        raise DataError(f"all {total} {what} are longer than {flag} {limit} tokens; nothing is left to train on")


def drop_long_conversations(processor, conversations: list[Conversation], max_len: int):
    """As drop_long_prompts, for SFT conversations: returns (kept, number dropped). Each conversation is first
    checked as the chat template renders it (check_rendered_images)."""
    texts = [conversation_text(processor, c) for c in conversations]
    for c, text in zip(conversations, texts):
        check_rendered_images(text, len(c.images), c.where)
    kept = [c for c, text in zip(conversations, texts)
            if _rendered_length(processor, text, c.images, c.where) <= max_len]
    return kept, len(conversations) - len(kept)


_TURN_START = "<|im_start|>"
_IMAGE_SPAN = "<|vision_start|>"


def check_rendered_images(text: str, n_images: int, where: str) -> None:
    """A rendered conversation must hold exactly one image span per image, each inside a user turn: a
    template that drops an image fails the processor hours into a run, and one that renders it in the
    assistant's turn makes its vision tokens SFT targets."""
    spans = [k for k in range(len(text)) if text.startswith(_IMAGE_SPAN, k)]
    if len(spans) != n_images:
        raise DataError(f"{where}: the chat template renders {len(spans)} image(s) for {n_images} image(s)")
    for k in spans:
        turn = text.rfind(_TURN_START, 0, k)
        if turn >= 0 and not text.startswith(_TURN_START + "user", turn):
            role = text[turn + len(_TURN_START):].split("\n", 1)[0]
            raise DataError(f"{where}: the chat template renders an image in a {role} turn; images go in user turns")


def prompt_text(processor, e: Example) -> str:
    return processor.apply_chat_template(chat_messages(e.system, [("user", e.question)]), tokenize=False,
                                         add_generation_prompt=True)


def conversation_text(processor, c: Conversation) -> str:
    system = next((text for role, text in c.messages if role == "system"), "")
    turns = [(role, text) for role, text in c.messages if role != "system"]
    return processor.apply_chat_template(chat_messages(system, turns), tokenize=False)


# ----------------------------------------------------------------------------------------------
# Token rows
# ----------------------------------------------------------------------------------------------


@dataclass
class VLBatch:
    """Token rows plus the images they show, each distinct image stored (and encoded) once.

    input_ids, attention_mask, mm_token_type_ids: (B, L). pixel_values: (patches, C·T·P·P), the
    patches of U distinct images one after another; image_grid_thw: (U, 3). images_per_row: (B,);
    image_index: (Σ images_per_row,), for each row in order, which distinct image it shows where.
    The n rollouts of a prompt therefore share one copy of its images, and the training forward
    runs the vision encoder once per prompt, not once per rollout.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mm_token_type_ids: torch.Tensor
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    images_per_row: torch.Tensor
    image_index: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def text_inputs(self) -> dict:
        return dict(input_ids=self.input_ids, attention_mask=self.attention_mask,
                    mm_token_type_ids=self.mm_token_type_ids)

    def model_inputs(self) -> dict:
        """Keyword arguments of a plain HF forward or generate: every image occurrence spelled out."""
        inputs = self.text_inputs()
        if self.pixel_values is not None:
            patches = self.image_grid_thw.prod(-1)
            first = torch.cumsum(patches, 0) - patches
            pixel_values = torch.cat([self.pixel_values[first[i]:first[i] + patches[i]]
                                      for i in self.image_index.tolist()])
            inputs |= dict(pixel_values=pixel_values, image_grid_thw=self.image_grid_thw[self.image_index])
        return inputs

    def to(self, device) -> "VLBatch":
        move = (lambda t: None if t is None else t.to(device))
        return VLBatch(*(move(getattr(self, f)) for f in self.__dataclass_fields__))

    def select(self, rows) -> "VLBatch":
        """Rows `rows` (any order, repeats allowed), keeping only the distinct images they show.

        Images move as whole patch blocks: repeating pixel rows one by one would keep the counts
        right but pair patches with the wrong images.
        """
        rows = torch.as_tensor(rows, dtype=torch.long)
        r = rows.to(self.input_ids.device)
        pixel_values = image_grid_thw = None
        image_index = self.image_index[:0]
        if self.image_grid_thw is not None:
            first_of_row = torch.cumsum(self.images_per_row, 0) - self.images_per_row
            shown = torch.cat([self.image_index[first_of_row[i]:first_of_row[i] + self.images_per_row[i]]
                               for i in rows.tolist()]) if len(rows) else self.image_index[:0]
            used, image_index = torch.unique(shown, return_inverse=True)
            patches = self.image_grid_thw.prod(-1)
            first = torch.cumsum(patches, 0) - patches
            pixel_values = torch.cat([self.pixel_values[first[i]:first[i] + patches[i]] for i in used.tolist()]) \
                if len(used) else self.pixel_values[:0]
            image_grid_thw = self.image_grid_thw[used]
        return VLBatch(self.input_ids[r], self.attention_mask[r], self.mm_token_type_ids[r], pixel_values,
                       image_grid_thw, self.images_per_row[rows], image_index)

    def repeat_interleave(self, n: int) -> "VLBatch":
        return self.select(torch.arange(len(self)).repeat_interleave(n))

    def columns(self, keep: torch.Tensor) -> "VLBatch":
        """Only the token columns where `keep` (L,) is true; the images are untouched."""
        return dataclasses.replace(self, input_ids=self.input_ids[:, keep], attention_mask=self.attention_mask[:, keep],
                                   mm_token_type_ids=self.mm_token_type_ids[:, keep])

    def padded(self, left: int, right: int, pad_id: int) -> "VLBatch":
        """Widen with `left` padding columns in front and `right` at the end."""
        def pad(t, value):
            return F.pad(t, (left, right), value=value)
        return dataclasses.replace(self, input_ids=pad(self.input_ids, pad_id),
                                   attention_mask=pad(self.attention_mask, 0),
                                   mm_token_type_ids=pad(self.mm_token_type_ids, 0))

    @staticmethod
    def concat(batches: list["VLBatch"]) -> "VLBatch":
        """Rows of equal-width batches, one after another; each batch's images keep their own entries."""
        def cat(field):
            parts = [getattr(b, field) for b in batches if getattr(b, field) is not None]
            return torch.cat(parts) if parts else None
        offsets = torch.tensor([0] + [len(b.image_grid_thw) if b.image_grid_thw is not None else 0
                                      for b in batches]).cumsum(0)
        image_index = torch.cat([b.image_index + offsets[k] for k, b in enumerate(batches)])
        return VLBatch(*(cat(f) for f in ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values",
                                          "image_grid_thw", "images_per_row")), image_index)

    def extend(self, tokens: torch.Tensor, mask: torch.Tensor) -> "VLBatch":
        """Append text columns (B, T) with their attention mask (B, T)."""
        return dataclasses.replace(self, input_ids=torch.cat([self.input_ids, tokens], 1),
                                   attention_mask=torch.cat([self.attention_mask, mask], 1),
                                   mm_token_type_ids=torch.cat([self.mm_token_type_ids, torch.zeros_like(tokens)], 1))


def _encode(processor, texts: list[str], images: list[list[ImageRef]], wheres: list[str]) -> VLBatch:
    """Processor call over rendered texts, left-padded."""
    flat = [load_image(ref, where) for refs, where in zip(images, wheres) for ref in refs]
    enc = processor(text=texts, images=flat or None, padding=True, padding_side="left", return_tensors="pt")
    return VLBatch(enc["input_ids"], enc["attention_mask"], enc["mm_token_type_ids"], enc.get("pixel_values"),
                   enc.get("image_grid_thw"), torch.tensor([len(refs) for refs in images], dtype=torch.long),
                   torch.arange(len(flat)))


def without_images(example: Example) -> Example:
    """The prompt a text-only discriminator reads (the paper's ablation, spec §9.2): the same system prompt
    and question with every "<image>" placeholder removed and no images, so it renders to no vision token
    (<|vision_start|>, <|image_pad|>, <|vision_end|>)."""
    return dataclasses.replace(example, question=example.question.replace("<image>", "").strip(), images=[])


def encode_prompts(processor, examples: list[Example]) -> VLBatch:
    """Prompts ready to generate from: system, user turn with images, then the assistant header."""
    texts = [prompt_text(processor, e) for e in examples]
    return _encode(processor, texts, [e.images for e in examples], [e.where for e in examples])


def encode_conversations(processor, conversations: list[Conversation]) -> tuple[VLBatch, torch.Tensor]:
    """SFT batch and its target mask (B, L): 1 exactly on assistant content tokens and their <|im_end|>.

    Assistant spans are found on the token ids: after each "<|im_start|>assistant\\n" header,
    up to and including the next <|im_end|>. System, user and vision tokens are never targets.
    """
    tok = processor.tokenizer
    texts = [conversation_text(processor, c) for c in conversations]
    batch = _encode(processor, texts, [c.images for c in conversations], [c.where for c in conversations])
    vision = torch.tensor([tok.convert_tokens_to_ids(t) for t in VISION_TOKENS])
    header = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    target = torch.zeros_like(batch.input_ids)
    for row, ids in enumerate(batch.input_ids.tolist()):
        t = 0
        while t < len(ids):
            if ids[t:t + len(header)] == header:
                start = t + len(header)
                end = ids.index(im_end, start) if im_end in ids[start:] else len(ids) - 1
                target[row, start:end + 1] = 1
                t = end + 1
            else:
                t += 1
    return batch, target * ~torch.isin(batch.input_ids, vision)  # a vision token is never a target


def encode_scored(prompts: VLBatch, prompt_len: int, segments: list[list[int]], pad_id: int) -> VLBatch:
    """Discriminator inputs: each row's real prompt tokens ⊕ its segment, left-padded (spec §3.4, §0.1).

    prompts: a batch whose first `prompt_len` columns are left-padded prompts (a prompt batch or
    rollouts); segments: one token list per row. The score is read at the last token, which is the
    segment's last token for teacher and student alike; positions are the model's own M-RoPE.
    """
    device = prompts.input_ids.device  # built where the prompts are: no round trip through the CPU
    rows = []
    for i, seg in enumerate(segments):
        keep = prompts.attention_mask[i, :prompt_len].bool()
        ids = torch.cat([prompts.input_ids[i, :prompt_len][keep], torch.tensor(seg, dtype=torch.long, device=device)])
        mm = torch.cat([prompts.mm_token_type_ids[i, :prompt_len][keep].long(),
                        torch.zeros(len(seg), dtype=torch.long, device=device)])
        rows.append((ids, mm))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    attention = torch.zeros_like(input_ids)
    mm_types = torch.zeros_like(input_ids)
    for i, (ids, mm) in enumerate(rows):
        input_ids[i, width - len(ids):] = ids
        attention[i, width - len(ids):] = 1
        mm_types[i, width - len(ids):] = mm
    return VLBatch(input_ids, attention, mm_types, prompts.pixel_values, prompts.image_grid_thw,
                   prompts.images_per_row, prompts.image_index)


def token_budget_batches(lengths: list[int], budget: int) -> list[list[int]]:
    """Group rows into micro-batches whose padded size (rows × longest row) stays within `budget` tokens.

    Rows are taken longest first, so rows of similar length share a micro-batch and little of
    each forward is padding; a row longer than the budget gets a micro-batch of its own.
    """
    batches, current, longest = [], [], 0
    for row in sorted(range(len(lengths)), key=lambda r: -lengths[r]):
        if current and (len(current) + 1) * max(longest, lengths[row]) > budget:
            batches.append(current)
            current, longest = [], 0
        current.append(row)
        longest = max(longest, lengths[row])
    return batches + ([current] if current else [])


def stream_indices(n_items: int, seed: int, start: int, count: int) -> list[int]:
    """Items start … start+count−1 of an endless stream of shuffled epochs over n_items.

    Epoch e is a permutation drawn from (seed, e) alone, so any position of the stream is
    reproducible from its index: resuming needs only the step number, and every rank can take
    its own slice of the same global batch without communicating.
    """
    out = []
    for k in range(start, start + count):
        epoch, pos = divmod(k, n_items)
        out.append(int(_epoch_permutation(n_items, seed, epoch)[pos]))
    return out


@functools.lru_cache(maxsize=4)
def _epoch_permutation(n_items: int, seed: int, epoch: int):
    return torch.randperm(n_items, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


# ----------------------------------------------------------------------------------------------
# Rollouts: the rows a generate call returns
# ----------------------------------------------------------------------------------------------


@dataclass
class SharedPrompt:
    """Rows of a batch that continue the same prompt: columns 0 … length−1 (tokens and images) of row b
    are those of row first[of[b]], so the policy's forward can run each distinct prompt once.

    length: P, the prompt columns. first: (G,) one row showing each distinct prompt. of: (B,) each
    row's prompt, an index into `first`.
    """

    length: int
    first: torch.Tensor
    of: torch.Tensor


@dataclass
class Rollouts:
    """n sampled responses for each of G prompts: B = G·n rows, prompt-major (row = g·n + j).

    batch:          prompt ⊕ response, (B, P + R): prompts left-padded to P, responses right-padded;
                    images repeated per row, ready for the training forward.
    response_mask:  (B, R) 1 for response tokens up to and including the first <|im_end|>.
    truncated:      (B,) True where the response hit the length limit before <|im_end|>.
    group:          (B,) index of the prompt each row answers.
    prompt_len:     P.
    """

    batch: VLBatch
    response_mask: torch.Tensor
    truncated: torch.Tensor
    group: torch.Tensor
    prompt_len: int

    @property
    def response_ids(self) -> torch.Tensor:
        return self.batch.input_ids[:, self.prompt_len:]

    @property
    def target_mask(self) -> torch.Tensor:
        """(B, P + R) mask of the response tokens, the targets of the policy's log-probs."""
        prompt = torch.zeros_like(self.batch.input_ids[:, :self.prompt_len])
        return torch.cat([prompt, self.response_mask], dim=1)

    def micro_batch(self, rows: list[int]) -> tuple[VLBatch, torch.Tensor, int, "SharedPrompt"]:
        """Rows `rows` as a forward batch without the columns that are padding in all of them.

        Returns (batch, target_mask, R', prompt): the batch's last R' columns are response positions
        0 … R'−1, and `prompt` says which of its rows continue the same prompt. Prompts are left-padded
        and responses right-padded, so the dropped columns are a prefix and a suffix, and a micro-batch
        of short responses costs only its own length.
        """
        batch = self.batch.select(rows)
        keep = batch.attention_mask.bool().any(0)
        R = int(keep[self.prompt_len:].sum())
        batch = batch.columns(keep)
        groups, of = torch.unique(self.group.cpu()[torch.as_tensor(rows, dtype=torch.long)], return_inverse=True)
        first = torch.full((len(groups),), len(rows)).scatter_reduce_(0, of, torch.arange(len(rows)), "amin")
        return batch, self.target_mask[rows][:, keep], R, SharedPrompt(batch.input_ids.shape[1] - R, first, of)

    def responses(self) -> list[list[int]]:
        """Each row's response tokens up to and including the EOS, as lists."""
        return [ids[mask.bool()].tolist() for ids, mask in zip(self.response_ids, self.response_mask)]

    def select(self, rows: list[int]) -> "Rollouts":
        idx = torch.as_tensor(rows, dtype=torch.long)
        return Rollouts(self.batch.select(idx), self.response_mask[idx], self.truncated[idx], self.group[idx],
                        self.prompt_len)

    @staticmethod
    def concat(parts: list["Rollouts"], pad_id: int) -> "Rollouts":
        """Rollouts of several generate calls as one: prompts padded on the left, responses on the right,
        groups renumbered so that they stay distinct."""
        if len(parts) == 1:
            return parts[0]
        P = max(p.prompt_len for p in parts)
        R = max(p.response_mask.shape[1] for p in parts)
        batches, masks, groups, offset = [], [], [], 0
        for p in parts:
            batches.append(p.batch.padded(P - p.prompt_len, R - p.response_mask.shape[1], pad_id))
            masks.append(F.pad(p.response_mask, (0, R - p.response_mask.shape[1])))
            groups.append(p.group - p.group.min() + offset)
            offset = int(groups[-1].max()) + 1
        return Rollouts(VLBatch.concat(batches), torch.cat(masks), torch.cat([p.truncated for p in parts]),
                        torch.cat(groups), P)


def response_mask_through_eos(response_ids: torch.Tensor, eos_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, R) → (mask (B, R): 1 up to and including the first EOS, truncated (B,): no EOS at all)."""
    is_eos = torch.isin(response_ids, torch.as_tensor(eos_ids, device=response_ids.device))
    before_or_at_eos = (is_eos.long().cumsum(-1) - is_eos.long()) == 0
    return before_or_at_eos.long(), ~is_eos.any(-1)
