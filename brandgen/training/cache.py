"""Encode once, train many times: cached text embeddings and VAE latents, bucketed into batches.

After caching, the text encoders are dropped and the VAE leaves the accelerator, so the denoiser has
the memory to itself (for HiDream that frees an 8B-parameter Llama).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import torch

from brandgen.device import free_memory
from brandgen.training.dataset import Example
from brandgen.training.families import Cond, Family

TEXT_CHUNK = 8
IMAGE_CHUNK = 4


def encode_prompts(family: Family, pipe: Any, prompts: list[str], device: torch.device) -> dict[str, Cond]:
    """Each distinct prompt once; values are per-prompt CPU tensors without the batch dimension."""
    unique = list(dict.fromkeys(prompts))
    out: dict[str, Cond] = {}
    for start in range(0, len(unique), TEXT_CHUNK):
        chunk = unique[start : start + TEXT_CHUNK]
        cond = family.encode_text(pipe, chunk, device)
        for i, prompt in enumerate(chunk):
            out[prompt] = {k: v[i].detach().float().cpu() for k, v in cond.items()}
    return out


def move_text_encoders(family: Family, pipe: Any, device: torch.device | str) -> None:
    for name in family.text_encoders:
        module = getattr(pipe, name, None)
        if module is not None:
            module.to(device)


def drop_text_encoders(family: Family, pipe: Any) -> None:
    """Text encoders are never trained here; once captions are encoded they only cost memory."""
    for name in family.text_encoders:
        if getattr(pipe, name, None) is not None:
            setattr(pipe, name, None)
    free_memory()


@torch.no_grad()
def encode_latents(family: Family, vae: Any, examples: list[Example]) -> list[torch.Tensor]:
    """Scaled latents per example, encoded in same-size chunks."""
    result: list[torch.Tensor | None] = [None] * len(examples)
    by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        by_size[ex.bucket].append(i)
    for indices in by_size.values():
        for start in range(0, len(indices), IMAGE_CHUNK):
            chunk = indices[start : start + IMAGE_CHUNK]
            latents = family.encode_images(vae, torch.stack([examples[i].pixels for i in chunk]))
            for j, i in enumerate(chunk):
                result[i] = latents[j]
    return result  # type: ignore[return-value]


def cache_training_data(
    family: Family, pipe: Any, examples: list[Example], extra_prompts: list[str], device: torch.device
) -> tuple["CachedExamples", dict[str, Cond]]:
    """Encode every caption (and `extra_prompts`, e.g. the validation prompt) and every image once; then the
    text encoders are dropped and the VAE goes back to the CPU."""
    move_text_encoders(family, pipe, device)
    text = encode_prompts(family, pipe, [ex.caption for ex in examples] + extra_prompts, device)
    drop_text_encoders(family, pipe)
    pipe.vae.to(device, torch.float32)
    latents = encode_latents(family, pipe.vae, examples)
    pipe.vae.to("cpu")
    dataset = build_items(family, examples, latents, text)
    free_memory()
    return dataset, text


class CachedExamples(torch.utils.data.Dataset):
    """Training items as dicts of CPU tensors: latents, text embeddings, image conditioning."""

    def __init__(self, items: list[dict[str, torch.Tensor]], buckets: list[tuple[int, int]]):
        self.items = items
        self.buckets = buckets

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.items[index]


def build_items(
    family: Family, examples: list[Example], latents: list[torch.Tensor], text: dict[str, Cond]
) -> CachedExamples:
    items = []
    for ex, latent in zip(examples, latents):
        items.append(
            {"latents": latent, **text[ex.caption], **family.image_cond(ex.original_size, ex.crop_top_left, ex.bucket)}
        )
    return CachedExamples(items, [ex.bucket for ex in examples])


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


class BucketBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches drawn from one size bucket at a time, reshuffled per epoch from (seed, epoch) so a resumed
    run sees the same order as an uninterrupted one."""

    drop_last = False

    def __init__(self, buckets: list[tuple[int, int]], batch_size: int, seed: int):
        self.buckets = buckets
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        rng = random.Random(f"{self.seed}:{self.epoch}")
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, bucket in enumerate(self.buckets):
            groups[bucket].append(i)
        batches = []
        for key in sorted(groups):
            members = groups[key]
            rng.shuffle(members)
            batches += [members[s : s + self.batch_size] for s in range(0, len(members), self.batch_size)]
        rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        counts: dict[tuple[int, int], int] = defaultdict(int)
        for bucket in self.buckets:
            counts[bucket] += 1
        return sum(math.ceil(n / self.batch_size) for n in counts.values())
