"""Text embeddings reused across calls: a designer regenerates the same prompt with new seeds, counts, presets
and sizes, and the text encoders (FLUX's T5-XXL above all, and with CPU offload its trip to the GPU) need not run
again. The pipeline's own `encode_prompt` makes the embeddings, so a cached call gets exactly what an uncached
one would; they are passed back through the `prompt_embeds` arguments every diffusers text-to-image pipeline has.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

# pipeline class -> what its encode_prompt returns, named as its __call__ takes them (None: not passed back)
OUTPUTS: dict[str, tuple[str | None, ...]] = {
    "StableDiffusionPipeline": ("prompt_embeds", "negative_prompt_embeds"),
    "StableDiffusionXLPipeline": ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
                                  "negative_pooled_prompt_embeds"),
    "StableDiffusion3Pipeline": ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
                                 "negative_pooled_prompt_embeds"),
    "FluxPipeline": ("prompt_embeds", "pooled_prompt_embeds", None),
}
MAX_ENTRIES = 16  # FLUX: ~4 MB per prompt in bf16


def _uses_cfg(pipe: Any, guidance: float) -> bool:
    """The pipelines' own test for classifier-free guidance (LCM-style UNets with a guidance embedding: off)."""
    unet = getattr(pipe, "unet", None)
    return guidance > 1 and (unet is None or getattr(unet.config, "time_cond_proj_dim", None) is None)


class PromptCache:
    """A small LRU of encode_prompt outputs for one loaded pipeline, keyed by the text and the LoRA state (a LoRA
    may change the text encoders). `hits` and `misses` are for tests and the benchmark."""

    def __init__(self, max_entries: int = MAX_ENTRIES):
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, dict[str, Any]] = OrderedDict()
        self.hits = self.misses = 0

    def clear(self) -> None:
        self._entries.clear()

    def apply(self, pipe: Any, kwargs: dict[str, Any], lora_state: Hashable) -> dict[str, Any]:
        """`kwargs` for pipe(...) with the prompts replaced by their (cached) embeddings; unchanged for a
        pipeline this module does not know. Call under torch.inference_mode(), like the pipeline call."""
        names = OUTPUTS.get(type(pipe).__name__)
        if names is None or "prompt" not in kwargs or not hasattr(pipe, "encode_prompt"):
            return kwargs
        prompt, negative = kwargs["prompt"], kwargs.get("negative_prompt")
        cfg = _uses_cfg(pipe, float(kwargs.get("guidance_scale", 1.0)))
        uses_negative = cfg and any(name and name.startswith("negative") for name in names)
        key = (type(pipe).__name__, prompt, negative if uses_negative else None, cfg, lora_state)
        embeds = self._entries.get(key)
        if embeds is None:
            self.misses += 1
            embeds = self._encode(pipe, names, prompt, negative, cfg)
            self._entries[key] = embeds
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        else:
            self.hits += 1
            self._entries.move_to_end(key)
        # One copy per image, and num_images_per_prompt=1: not every pipeline repeats given embeddings (SD3 and
        # FLUX do not), while all of them size the latents as batch x num_images_per_prompt.
        count = int(kwargs.get("num_images_per_prompt", 1))
        rest = {k: v for k, v in kwargs.items() if k not in ("prompt", "negative_prompt")}
        rest["num_images_per_prompt"] = 1
        return {**rest, **{name: value.repeat(count, *[1] * (value.dim() - 1)) for name, value in embeds.items()}}

    @staticmethod
    def _encode(pipe: Any, names: tuple[str | None, ...], prompt: str, negative: str | None,
                cfg: bool) -> dict[str, Any]:
        wanted = {"prompt": prompt, "prompt_2": None, "prompt_3": None, "device": pipe._execution_device,
                  "num_images_per_prompt": 1, "do_classifier_free_guidance": cfg, "negative_prompt": negative}
        accepted = inspect.signature(pipe.encode_prompt).parameters
        outputs = pipe.encode_prompt(**{k: v for k, v in wanted.items() if k in accepted})
        return {name: value for name, value in zip(names, outputs) if name is not None and value is not None}
