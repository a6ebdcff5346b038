"""Teach a trained brandgen-tiny decoder arbitrary brand colours without moving its latent space.

Run 6's autoencoder returned the LoRA demo's dark teal (#0f766e) as blue and its coral (#f97360) as orange
(docs/TINY_MODEL.md): it learned the 18 named training colours, not colour, so a brand LoRA cannot draw a palette
its decoder will not return. Retraining the whole autoencoder moves the latents the UNet learned; tuning only the
decoder (encoder and quant_conv frozen) keeps every latent the UNet draws and changes only what they decode to.
Images are pack icons in uniformly random colours on random light, tinted or dark backgrounds, duotone icons half
the time with a random second fill colour: nothing from the demo's palette or icons is chosen on purpose.

    python -m brandgen.tiny.vae_tune --model DIR --out DIR [--pack .work/icons/iconpack.npz] [--seconds 600]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from brandgen.tiny import icon_data, icons
from brandgen.tiny.run_state import lr_factor


def _background(rng: random.Random) -> tuple[int, int, int]:
    """Light (white-ish or a pale tint of any hue, like a brand's cream) 70%, dark 30%."""
    if rng.random() < 0.7:
        return tuple(rng.randrange(215, 256) for _ in range(3))
    return tuple(rng.randrange(0, 60) for _ in range(3))


def random_colour_variants(meta: list[dict], n: int, seed: int) -> list[icon_data.Variant]:
    """n variants of training icons (never held-out ones) in random colours; deterministic for a seed."""
    rng = random.Random(seed)
    pool = [i for i, m in enumerate(meta) if not m.get("heldout")]
    out = []
    for _ in range(n):
        i = rng.choice(pool)
        bg = _background(rng)
        fg = icon_data.readable_colour(bg, rng)
        fg2 = icon_data.readable_colour(bg, rng) if meta[i].get("style") == "duotone" and rng.random() < 0.5 else None
        out.append(icon_data.Variant(i, fg, bg, rng.uniform(0.72, 0.84), rng.uniform(-0.03, 0.03),
                                     rng.uniform(-0.03, 0.03), [], fg2))
    return out


def _psnr(mse: float) -> float:
    return 10 * math.log10(4.0 / max(mse, 1e-10))


@torch.no_grad()
def round_trip_rgb(vae, rgb: np.ndarray) -> np.ndarray:
    """One [H, W, 3] image (0..255) through encode-mean -> decode, as a LoRA's target latents come back: [H, W, 3]
    float, rounded to 0..255."""
    x = torch.from_numpy(np.asarray(rgb, np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    y = vae.decode(vae.encode(x.to(vae.device, vae.dtype)).latent_dist.mean).sample
    return icon_data.from_pixels(y)[0].astype(np.float32)


@torch.no_grad()
def round_trip_psnr(vae, images: torch.Tensor) -> float:
    """PSNR (dB) of encode-mean -> decode over [-1, 1] images, as the app decodes the UNet's latents."""
    rec = vae.decode(vae.encode(images).latent_dist.mean).sample.clamp(-1, 1)
    return _psnr(F.mse_loss(rec, images).item())


def tune_decoder(vae, masks: np.ndarray, meta: list[dict], seconds: float, max_steps: int = 100_000,
                 batch: int = 8, lr: float = 2e-4, seed: int = 0, device: str = "cpu", size: int | None = None,
                 log_every: int = 50, eval_n: int = 32, encoder_anchor: float | None = None,
                 fg_weight: float = 0.0, latent_noise: float = 0.0) -> dict:
    """Train post_quant_conv + decoder on random-colour icons for `seconds` (or max_steps). The encoder is
    frozen, so every latent keeps its place, unless encoder_anchor is set: then encoder + quant_conv train too,
    held near the original latents by that weight. latent_noise > 0 decodes latents with Gaussian noise of that
    std in the UNet's (scaled) units added, so the decoder learns to return a clean canvas from the imperfect
    latents a UNet draws (run 8's speckle, docs/TINY_MODEL.md). Returns steps, seconds, held-out PSNR before/after
    and, with the encoder trained, the held-out latents' relative drift."""
    composer = icon_data.Composer(masks, device, size or masks.shape[-1])
    held = icon_data.to_pixels(composer.compose(random_colour_variants(meta, eval_n, seed + 7919)))
    vae.to(device).eval()
    before = round_trip_psnr(vae, held)
    vae.requires_grad_(False)
    reference = None
    trained = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    if encoder_anchor is not None:
        reference = copy.deepcopy(vae)  # the original latents, as the UNet learned them
        trained += list(vae.encoder.parameters()) + (list(vae.quant_conv.parameters()) if vae.quant_conv else [])
        vae.encoder.train()
    for p in trained:
        p.requires_grad_(True)
    vae.decoder.train()
    opt = torch.optim.AdamW(trained, lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    rng, step, t0 = random.Random(seed), 0, time.time()
    while True:
        progress = max(step / max_steps, (time.time() - t0) / seconds)
        if progress >= 1:
            break
        for group in opt.param_groups:  # short warm-up, then cosine to 5% over the time budget
            group["lr"] = lr * lr_factor(progress, step, 20, 0.05)
        variants = random_colour_variants(meta, batch, rng.randrange(2**31))
        x = icon_data.to_pixels(composer.compose(variants))
        if reference is None:
            with torch.no_grad():
                z = vae.encode(x).latent_dist.mean
            drift = torch.zeros(())
        else:
            z = vae.encode(x).latent_dist.mean
            with torch.no_grad():
                z_old = reference.encode(x).latent_dist.mean
            drift = F.mse_loss(z, z_old) / z_old.var().clamp_min(1e-6)
        if latent_noise:
            z = z + (latent_noise / vae.config.scaling_factor) * torch.randn_like(z)
        rec = vae.decode(z).sample
        w = icon_data.glyph_weights(x, [v.bg for v in variants], fg_weight)
        err = rec - x
        loss = ((err.abs() + err.square()) * w).mean() / w.mean() + (encoder_anchor or 0.0) * drift
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        step += 1
        if step % log_every == 0 or step == 1:
            print(json.dumps({"step": step, "loss": round(loss.item(), 5), "drift": round(drift.item(), 5),
                              "elapsed": round(time.time() - t0, 1)}), flush=True)
    vae.requires_grad_(False).eval()
    out = {"steps": step, "seconds": round(time.time() - t0, 1), "batch": batch, "lr": lr, "latent_noise": latent_noise,
           "heldout_psnr_before": round(before, 2), "heldout_psnr_after": round(round_trip_psnr(vae, held), 2)}
    if encoder_anchor is not None:
        with torch.no_grad():
            held_latents = reference.encode(held).latent_dist.mean
            moved = F.mse_loss(vae.encode(held).latent_dist.mean, held_latents) / held_latents.var()
        out.update(encoder_anchor=encoder_anchor, heldout_latent_drift=round(moved.item(), 5))
    return out


def main(argv: list[str] | None = None) -> dict:
    from diffusers import AutoencoderKL

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a saved brandgen-tiny folder")
    parser.add_argument("--out", required=True, help="where the model with the tuned decoder is written")
    parser.add_argument("--pack", default=".work/icons/iconpack.npz")
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=None,
                        help="training image size (default: the pack's); the decoder is convolutional, so a CPU can "
                             "tune at 128 px for a quarter of the cost")
    parser.add_argument("--encoder-anchor", type=float, default=None,
                        help="also train the encoder, penalising its latents' relative drift by this weight")
    parser.add_argument("--fg-weight", type=float, default=0.0,
                        help="extra loss weight on the icon's pixels (0: every pixel alike)")
    parser.add_argument("--latent-noise", type=float, default=0.0,
                        help="std of Gaussian noise on the decoded latents, in the UNet's scaled units (0: none)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    src, out = Path(args.model), Path(args.out)
    if out.resolve() == src.resolve():
        parser.error("--out must be another folder than --model (the source stays as it was)")
    if not (src / "vae" / "config.json").is_file():
        parser.error(f"no autoencoder at {src / 'vae'}: --model must be a saved brandgen-tiny folder")
    if not Path(args.pack).is_file():
        parser.error(f"no icon pack at {args.pack}: build it with `python -m brandgen.tiny.icons build`")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    masks, meta, _ = icons.load_pack(args.pack)
    vae = AutoencoderKL.from_pretrained(src, subfolder="vae")
    torch.manual_seed(args.seed)
    result = tune_decoder(vae, masks, meta, args.seconds, batch=args.batch, lr=args.lr, seed=args.seed,
                          device=args.device, size=args.size, encoder_anchor=args.encoder_anchor,
                          fg_weight=args.fg_weight, latent_noise=args.latent_noise)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src, out)
    vae.to("cpu").save_pretrained(out / "vae")
    result.update(model=str(src), out=str(out), pack=args.pack)
    (out / "vae" / "decoder_tune.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
