"""A brand LoRA's own decoder: the autoencoder's decoder tuned on the brand's images, stored as a weight delta.

A LoRA on the denoiser can only ask for latents; the colours a designer sees are whatever the decoder makes of them.
brandgen-tiny's small autoencoder decodes the latents of a brand's exact teal and coral as blue and orange (its
round trip keeps 0.45 of the demo set's glyph pixels on the palette, docs/TINY_MODEL.md), which caps any LoRA there.
Tuning post_quant_conv + decoder on the brand's own latents (encoder frozen, so the latent space the denoiser draws
in does not move) lifts that to 0.90 in ~60 s on a 2-core CPU (150 steps). The delta (tuned - base) ships beside
the LoRA in its folder (`brand_decoder.safetensors`) and is blended in with the LoRA's weight whenever that LoRA is
active; other tools that load only the LoRA file are unaffected. A model opts in with `lora_settings.decoder_steps`.
"""

from __future__ import annotations

import contextlib
import random
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch
import torch.nn.functional as F

from brandgen.errors import LoraError
from brandgen.loras import DECODER_FILE, DIFFUSERS_FILE
TUNED_PREFIXES = ("post_quant_conv.", "decoder.")
CACHED_DECODERS = 4  # the most LoRAs a request activates is 3


def tuned_parameters(vae: Any) -> dict[str, torch.nn.Parameter]:
    """The parameters a brand decoder changes (everything after the latent: what a latent looks like)."""
    return {name: p for name, p in vae.named_parameters() if name.startswith(TUNED_PREFIXES)}


def train_decoder_delta(
    vae: Any,
    images: list[torch.Tensor],
    steps: int,
    lr: float = 2e-4,
    batch: int = 2,
    crop: int = 256,
    latent_noise: float = 0.05,
    seed: int = 0,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    step_guard: Callable[[], ContextManager] | None = None,
) -> dict[str, torch.Tensor] | None:
    """Tune the decoder on `images` ([3, H, W] in [-1, 1]) for `steps` and return tuned - base per parameter
    (fp16, on the CPU); the VAE's weights are left as they were. None when `should_stop` asks to stop.

    Each step decodes `batch` images' latents, or random `crop`-pixel windows of them when smaller (a 128 px window
    costs a quarter of a 256 px image and teaches the same colours, but the canvas edges then decode lighter:
    measured on brandgen-tiny's demo, so whole images are the default), with a little Gaussian noise on the latents
    so that the slightly-off latents a denoiser draws decode in the brand's colours too. `step_guard` (the
    accelerator's lock) is held for each step, not for the whole stage, so a generation can run in between."""
    params = tuned_parameters(vae)
    if not params:
        raise LoraError("This model's autoencoder has no decoder to tune.")
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    device, dtype = next(iter(params.values())).device, next(iter(params.values())).dtype
    base = {name: p.detach().clone() for name, p in params.items()}
    was_training = vae.training
    generator, rng = torch.Generator().manual_seed(seed), random.Random(seed)
    with torch.no_grad():
        targets = [img.to(device, torch.float32) for img in images]
        latents = [vae.encode(t[None].to(dtype)).latent_dist.mean[0].float() for t in targets]
    spread = torch.cat([z.flatten() for z in latents]).std().item()
    size = min([crop // factor] + [min(z.shape[-2:]) for z in latents])  # square windows: buckets differ in shape
    frozen = [p for name, p in vae.named_parameters() if name not in params]
    grads = [(p, p.requires_grad) for p in vae.parameters()]
    for p in frozen:
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(list(params.values()), lr=lr, weight_decay=0.0)
    vae.train()
    try:
        for step in range(steps):
            if should_stop is not None and should_stop():
                return None
            zs, xs = [], []
            for _ in range(batch):
                i = rng.randrange(len(latents))
                z, x = latents[i], targets[i]
                top, left = rng.randrange(z.shape[-2] - size + 1), rng.randrange(z.shape[-1] - size + 1)
                zs.append(z[:, top:top + size, left:left + size])
                xs.append(x[:, top * factor:(top + size) * factor, left * factor:(left + size) * factor])
            z, x = torch.stack(zs), torch.stack(xs)
            z = z + latent_noise * spread * torch.randn(z.shape, generator=generator).to(device)
            with step_guard() if step_guard is not None else contextlib.nullcontext():
                loss = F.mse_loss(vae.decode(z.to(dtype)).sample.float(), x)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if on_step is not None:
                on_step(step + 1, loss.item())
        return {name: (p.detach() - base[name]).to("cpu", torch.float16).contiguous() for name, p in params.items()}
    finally:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(base[name])
        for p, flag in grads:
            p.requires_grad_(flag)
        vae.train(was_training)


def save_decoder_delta(delta: dict[str, torch.Tensor], folder: Path, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    path = Path(folder) / DECODER_FILE
    save_file(delta, str(path), metadata={"format": "brandgen.brand_decoder", **(metadata or {})})
    return path


def decoder_file(lora_path: Path) -> Path | None:
    """The brand decoder beside a LoRA folder's diffusers weights (what the trainer writes), if it has one; a
    single-file LoRA never has one, whatever else lies in the folder it sits in."""
    path = Path(lora_path).parent / DECODER_FILE
    return path if Path(lora_path).name == DIFFUSERS_FILE and path.is_file() else None


def load_decoder_delta(path: Path, vae: Any, lora_name: str, model_label: str) -> dict[str, torch.Tensor]:
    """Read a brand decoder and check it against this model's autoencoder, naming the LoRA in any error."""
    from safetensors import safe_open

    params = tuned_parameters(vae)
    try:  # names and shapes from the header first: a file that does not fit is never read into memory
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            wrong = [k for k, shape in shapes.items() if k not in params or shape != tuple(params[k].shape)]
            delta = {} if wrong or not shapes else {k: f.get_tensor(k) for k in shapes}
    except Exception as exc:  # truncated or not a safetensors file
        raise LoraError(f"LoRA {lora_name!r}: its {DECODER_FILE} cannot be read ({str(exc)[:200]}).") from exc
    if wrong or not shapes or not all(v.is_floating_point() for v in delta.values()):
        raise LoraError(f"LoRA {lora_name!r}: its {DECODER_FILE} was made for another autoencoder than "
                        f"{model_label}'s ({len(wrong)} of {len(shapes)} tensors do not fit); move it out of the "
                        "LoRA's folder to use the LoRA without it.")
    return delta


class DecoderBlend:
    """The base decoder's weights plus the active LoRAs' brand decoders, each at its LoRA's weight.

    The base is copied the first time a brand decoder is applied (a few MB) and written back when none is active,
    so a model whose LoRAs have no decoder is never touched. The last few deltas read stay cached, per file version."""

    def __init__(self) -> None:
        self.base: dict[str, torch.Tensor] | None = None
        self.applied: tuple[tuple[str, float], ...] = ()
        self._cache: OrderedDict[str, tuple[float, dict[str, torch.Tensor]]] = OrderedDict()  # newest last

    def delta_for(self, lora_path: Path, vae: Any, lora_name: str, model_label: str) -> dict[str, torch.Tensor] | None:
        path = decoder_file(lora_path)
        if path is None:
            return None
        stamp = path.stat().st_mtime
        cached = self._cache.get(str(path))
        if cached is None or cached[0] != stamp:
            cached = (stamp, load_decoder_delta(path, vae, lora_name, model_label))
            self._cache[str(path)] = cached
        self._cache.move_to_end(str(path))
        while len(self._cache) > CACHED_DECODERS:  # an SDXL-size decoder delta is ~100 MB
            self._cache.popitem(last=False)
        return cached[1]

    @torch.no_grad()
    def set(self, vae: Any, active: list[tuple[str, dict[str, torch.Tensor], float]]) -> None:
        """Make the decoder base + sum(weight * delta) over `active` (name, delta, weight); [] restores the base."""
        key = tuple((name, float(weight)) for name, _, weight in active)
        if key == self.applied:
            return
        params = tuned_parameters(vae)
        if self.base is None:
            if not active:
                return
            self.base = {name: p.detach().clone() for name, p in params.items()}
        for name, p in params.items():
            p.copy_(self.base[name])
        for _, delta, weight in active:
            for name, d in delta.items():
                params[name].add_(d.to(params[name].device, params[name].dtype), alpha=float(weight))
        self.applied = key
