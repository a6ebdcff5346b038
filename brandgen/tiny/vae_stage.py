"""brandgen-tiny's autoencoder stages: train (or retrain) the VAE, then encode every image once for the UNet stage.

Split from train.py, which runs them in order; a continued model (init_model) keeps, retunes or replaces its
autoencoder here, and the UNet stage follows whatever latents and scale this leaves."""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from brandgen.tiny import icon_data
from brandgen.tiny.run_state import Run, StopRequested, log, lr_factor


def vae_fresh(cfg: dict) -> bool:
    """train_vae.fresh: a continued model gets a new autoencoder (the recipe's, e.g. with more latent channels)
    trained from scratch for train_vae.seconds; its UNet keeps every weight whose shape still fits."""
    return bool(cfg.get("init_model")) and bool(cfg["train_vae"].get("fresh"))


def vae_retuned(cfg: dict) -> bool:
    """A continued model's autoencoder trains in this run: on, for train_vae.continue_seconds (e.g. for new kinds
    of image), or anew (vae_fresh). Either way the UNet learns this run's latents and scale."""
    return vae_fresh(cfg) or (bool(cfg.get("init_model")) and cfg["train_vae"].get("continue_seconds", 0) > 0)


def stage_vae(run: Run, vae, images: icon_data.ImageSource) -> None:
    """Autoencoder with L1 + L2 + a small KL; flat art reconstructs well after a short run.

    train_vae.two_tone_share of each batch are two-tone variants (rare in the data, and what brand sets look
    like). A continued model (init_model) keeps its autoencoder unless continue_seconds > 0: then it trains on
    from its own weights at continue_lr_scale of the LR, and the UNet stage adapts to the small latent shift; with
    train_vae.fresh it starts anew (vae_fresh). train_vae.fg_weight weighs the glyph's pixels (glyph_weights)."""
    tcfg, path = run.cfg["train_vae"], run.work / "vae_done.pt"
    trains = vae_retuned(run.cfg)
    if run.cfg.get("init_model") and not trains:  # a continued model's autoencoder stays as it is
        return
    retune = trains and not vae_fresh(run.cfg)  # a fresh one trains like a new run's
    if run.done("vae"):
        vae.load_state_dict(torch.load(path, map_location="cpu"))
        return
    vae.to(run.device, memory_format=torch.channels_last).train()
    base_lr = tcfg["lr"] * (tcfg.get("continue_lr_scale", 0.3) if retune else 1.0)
    seconds = tcfg["continue_seconds"] if retune else tcfg["seconds"]
    two = torch.tensor([i for i, v in enumerate(images.variants) if v.fg2 is not None], dtype=torch.long,
                       device=run.device)
    n_two = round(tcfg.get("two_tone_share", 0.0) * tcfg["batch_size"]) if len(two) else 0
    fg_weight = float(tcfg.get("fg_weight", 0.0))
    opt = torch.optim.AdamW(vae.parameters(), lr=base_lr, weight_decay=0.0, betas=(0.9, 0.99))
    step, elapsed = 0, 0.0
    ckpt = run.work / "vae_ckpt.pt"
    if ckpt.exists():
        state = torch.load(ckpt, map_location=run.device)
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, elapsed = state["step"], state["elapsed"]
        log("vae", run.start, resumed_at_step=step)
    gen = torch.Generator(device=run.device).manual_seed(run.cfg["seed"] + step)
    t_resume, last_ckpt, last_log, n = time.time() - elapsed, time.time(), time.time(), len(images)
    while True:
        elapsed = time.time() - t_resume
        progress = max(step / tcfg["max_steps"], elapsed / seconds)
        if progress >= 1:
            break
        for group in opt.param_groups:
            group["lr"] = base_lr * lr_factor(progress, step, tcfg["warmup_steps"], 0.05)
        index = torch.randint(0, n, (tcfg["batch_size"] - n_two,), device=run.device, generator=gen)
        if n_two:
            index = torch.cat([index, two[torch.randint(0, len(two), (n_two,), device=run.device, generator=gen)]])
        x = icon_data.to_pixels(images[index])
        with run.autocast:
            post = vae.encode(x).latent_dist
            rec = vae.decode(post.sample(generator=gen)).sample.float()
        kl = post.kl().mean() / post.mean[0].numel()
        err = rec - x
        if fg_weight:  # the glyph's pixels count 1 + fg_weight times (a thin stroke's colour, not only the canvas)
            w = icon_data.glyph_weights(x, [images.variants[i].bg for i in index.tolist()], fg_weight)
            l1, l2 = (err.abs() * w).mean() / w.mean(), (err.square() * w).mean() / w.mean()
        else:
            l1, l2 = err.abs().mean(), err.square().mean()
        loss = tcfg["l1_weight"] * l1 + tcfg["l2_weight"] * l2 + tcfg["kl_weight"] * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        if step % tcfg["log_every"] == 0 or step == 1:
            psnr = 10 * math.log10(4.0 / max(F.mse_loss(rec.detach().clamp(-1, 1), x).item(), 1e-10))
            its = (tcfg["log_every"] if step > 1 else 1) / (time.time() - last_log)
            log("vae", run.start, step=step, loss=loss.item(), psnr=psnr, its=its)
            last_log = time.time()
        if time.time() - last_ckpt > tcfg["ckpt_seconds"] or run.maybe_stop("vae", step):
            run.save_ckpt("vae_ckpt", {"model": vae.state_dict(), "opt": opt.state_dict(), "step": step,
                                      "elapsed": time.time() - t_resume})
            last_ckpt = time.time()
            if run.maybe_stop("vae", step):
                raise StopRequested(f"vae:{step}")
    vae.eval()
    torch.save(vae.state_dict(), path)
    run.finish("vae", time.time() - t_resume, vae_steps=step)


@torch.no_grad()
def stage_latents(run: Run, vae, images: icon_data.ImageSource) -> torch.Tensor:
    """Posterior means of all images, and vae.config.scaling_factor = 1 / their std."""
    path, t0 = run.work / "latents.pt", time.time()
    if run.done("latents"):
        state = torch.load(path, map_location=run.device)
        vae.register_to_config(scaling_factor=state["scaling_factor"])
        return state["latents"]
    vae.to(run.device, memory_format=torch.channels_last).eval()
    chunks, bs, mse = [], run.cfg["encode_batch"], []
    for s in range(0, len(images), bs):
        x = icon_data.to_pixels(images[s:s + bs])
        with run.autocast:
            lat = vae.encode(x).latent_dist.mean
            if s == 0:
                mse.append(F.mse_loss(vae.decode(lat).sample.float().clamp(-1, 1), x).item())
        chunks.append(lat.to(torch.float16))
    latents = torch.cat(chunks)
    # a continued model keeps the scale its UNet learned with
    keep = run.cfg.get("init_model") and not vae_retuned(run.cfg)
    scale = vae.config.scaling_factor if keep else float(1.0 / latents.float().std())
    vae.register_to_config(scaling_factor=scale)
    torch.save({"latents": latents, "scaling_factor": scale}, path)
    psnr = 10 * math.log10(4.0 / max(mse[0], 1e-10))
    log("latents", run.start, n=len(latents), scaling_factor=scale, mean=float(latents.float().mean()), psnr=psnr)
    run.finish("latents", time.time() - t0, scaling_factor=scale, vae_psnr=round(psnr, 2))
    return latents
