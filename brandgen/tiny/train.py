"""Train brandgen-tiny from scratch: data -> text encoder -> VAE -> latents -> UNet -> saved pipeline.

    python -m brandgen.tiny.train --config brandgen/tiny/recipe.json --work-dir .work/tiny \
        --out assets/brandgen-tiny [--resume] [--smoke] [--samples docs/tiny_samples.png]

Each stage caches its output in --work-dir and checkpoints while it runs, so --resume continues
where a run stopped. Stages stop by step count or by their time budget (config "seconds"), whichever
comes first, and the learning rate decays over that same progress so a time-cut run still anneals.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from brandgen.tiny import data, icon_data, icons, model, text_pretrain
from brandgen.tiny import icon_eval as tiny_eval
from brandgen.tiny import tokenizer as tiny_tokenizer
from brandgen.tiny.recipe import load_config, set_value
from brandgen.tiny.run_state import Run, StopRequested, log, lr_factor
from brandgen.tiny.vae_stage import stage_latents, stage_vae, vae_fresh

STAGES = ("data", "text", "vae", "latents", "unet", "save")


def _pack(run: Run) -> tuple[np.ndarray, list[dict]]:
    """The icon pack's masks and metadata (a synthetic pack of drawn shapes when none is configured)."""
    dcfg = run.cfg["data"]
    if dcfg.get("pack"):
        masks, meta, _ = icons.load_pack(dcfg["pack"])
        return masks, meta
    return icon_data.synthetic_pack(dcfg.get("synthetic_icons", 32), run.cfg["image_size"], dcfg["seed"])


def stage_data(run: Run, masks: np.ndarray, meta: list[dict]) -> tuple[icon_data.ImageSource, torch.Tensor, Path]:
    """Variant images (composed on the device from the pack's masks), the tokenizer, and tokenized
    captions [N, K, 77]. The variant table is rebuilt from the seed on resume (it is deterministic)."""
    dcfg, t0 = run.cfg["data"], time.time()
    ids_path, tok_dir = run.work / "caption_ids.pt", run.work / "tokenizer"
    variants = icon_data.variants_for(meta, dcfg)
    source = icon_data.ImageSource(icon_data.Composer(masks, run.device, run.cfg["image_size"]), variants)
    if run.done("data"):
        return source, torch.load(ids_path).to(run.device), tok_dir
    log("data", run.start, icons=len(meta), variants=len(variants), seconds=time.time() - t0)
    init = run.cfg.get("init_model") or run.cfg.get("text_init")
    if init:  # a pretrained text encoder brings the tokenizer its ids must match
        tokenizer = tiny_tokenizer.CLIPTokenizer.from_pretrained(Path(init) / "tokenizer")
        tiny_tokenizer.save_tokenizer(tokenizer, tok_dir)
    else:
        tokenizer = text_pretrain.recipe_tokenizer(run.cfg, meta, tok_dir)
    flat = [c for v in variants for c in v.captions]
    k = len(variants[0].captions)
    ids = torch.from_numpy(tiny_tokenizer.encode_padded(tokenizer, flat)).view(len(variants), k, -1)
    torch.save(ids, ids_path)
    (run.work / "captions_sample.json").write_text(json.dumps([v.captions for v in variants[::97][:500]], indent=0))
    concepts = sorted({m["phrase"] for m in meta if not m.get("heldout")})
    run.finish("data", time.time() - t0, vocab_size=len(tokenizer), icons=len(meta), variants=len(variants),
               train_concepts=len(concepts))
    log("data", run.start, captions=len(flat), vocab=len(tokenizer), seconds=time.time() - t0)
    return source, ids.to(run.device), tok_dir


def _uncond_ids(tokenizer, device) -> torch.Tensor:
    """Prompts trained as 'unconditional': empty, and the app's negative prompts, so CFG with them works."""
    texts = [""] + data.NEGATIVES + [", ".join(n.split(", ")[:3]) for n in data.NEGATIVES]
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids.to(device, torch.int32)


def stage_unet(run: Run, comps: dict, latents: torch.Tensor, ids: torch.Tensor) -> None:
    """UNet (+ text encoder at text_lr_scale x lr; 0 = frozen): epsilon loss with min-SNR weighting, CFG
    dropout, EMA of what trains."""
    tcfg, unet, text = run.cfg["train_unet"], comps["unet"], comps["text_encoder"]
    done_path = run.work / "unet_done.pt"
    if run.done("unet"):
        state = torch.load(done_path, map_location="cpu")
        unet.load_state_dict(state["unet"])
        text.load_state_dict(state["text_encoder"])
        return
    dev = run.device
    unet.to(dev, memory_format=torch.channels_last).train()
    text_scale = tcfg.get("text_lr_scale", 1.0)
    text.to(dev).train(text_scale > 0).requires_grad_(text_scale > 0)
    groups = [{"params": list(unet.parameters()), "lr_scale": 1.0}]
    if text_scale > 0:
        groups.append({"params": list(text.parameters()), "lr_scale": text_scale})
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=tcfg["lr"], weight_decay=tcfg["weight_decay"], betas=(0.9, 0.99),
                            fused=dev.type == "cuda")
    ema = [p.detach().clone().float() for p in params]
    step, elapsed, ckpt = 0, 0.0, run.work / "unet_ckpt.pt"
    if ckpt.exists():
        state = torch.load(ckpt, map_location=dev)
        unet.load_state_dict(state["unet"])
        text.load_state_dict(state["text_encoder"])
        opt.load_state_dict(state["opt"])
        ema = [e.to(dev) for e in state["ema"]]
        step, elapsed = state["step"], state["elapsed"]
        log("unet", run.start, resumed_at_step=step)
    unet_fwd = torch.compile(unet) if run.cfg.get("compile") else unet
    sched = comps["noise_scheduler"]
    abar = sched.alphas_cumprod.to(dev, torch.float32)
    snr = abar / (1 - abar)
    weights = torch.clamp(snr, max=tcfg["snr_gamma"]) / snr if tcfg.get("snr_gamma") else torch.ones_like(snr)
    uncond = _uncond_ids(comps["tokenizer"], dev)
    scale, n, k = comps["vae"].config.scaling_factor, len(latents), ids.shape[1]
    gen = torch.Generator(device=dev).manual_seed(run.cfg["seed"] + 1 + step)
    bs = tcfg["batch_size"]
    t_resume, last_ckpt, last_log = time.time() - elapsed, time.time(), time.time()
    while True:
        elapsed = time.time() - t_resume
        progress = max(step / tcfg["max_steps"], elapsed / tcfg["seconds"])
        if progress >= 1:
            break
        lr = tcfg["lr"] * lr_factor(progress, step, tcfg["warmup_steps"], tcfg["min_lr_ratio"])
        for group in opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
        idx = torch.randint(0, n, (bs,), device=dev, generator=gen)
        x0 = latents[idx].float() * scale
        tok = ids[idx, torch.randint(0, k, (bs,), device=dev, generator=gen)]
        drop = torch.rand(bs, device=dev, generator=gen) < tcfg["caption_dropout"]
        neg = torch.rand(bs, device=dev, generator=gen) < tcfg["negative_as_uncond"]
        which = torch.where(neg, torch.randint(1, len(uncond), (bs,), device=dev, generator=gen), 0)
        tok = torch.where(drop[:, None], uncond[which], tok).long()
        noise = torch.randn(x0.shape, device=dev, generator=gen)
        t = torch.randint(0, len(abar), (bs,), device=dev, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        noisy = (a.sqrt() * x0 + (1 - a).sqrt() * noise).contiguous(memory_format=torch.channels_last)
        with run.autocast:
            with torch.set_grad_enabled(text_scale > 0):
                cond = text(tok)[0]
            pred = unet_fwd(noisy, t, encoder_hidden_states=cond).sample
        loss = ((pred.float() - noise) ** 2).mean(dim=(1, 2, 3)).mul(weights[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tcfg["grad_clip"])
        opt.step()
        step += 1
        decay = min(tcfg["ema_decay"], (1 + step) / (10 + step))
        torch._foreach_lerp_(ema, [p.detach().float() for p in params], 1 - decay)
        if step % tcfg["log_every"] == 0 or step == 1:
            its = (tcfg["log_every"] if step > 1 else 1) / (time.time() - last_log)
            log("unet", run.start, step=step, loss=loss.item(), lr=lr, its=its, progress=progress)
            last_log = time.time()
        if time.time() - last_ckpt > tcfg["ckpt_seconds"] or run.maybe_stop("unet", step):
            run.save_ckpt("unet_ckpt", {"unet": unet.state_dict(), "text_encoder": text.state_dict(),
                                       "opt": opt.state_dict(), "ema": ema, "step": step,
                                       "elapsed": time.time() - t_resume})
            last_ckpt = time.time()
            if run.maybe_stop("unet", step):
                raise StopRequested(f"unet:{step}")
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    unet.eval()
    text.eval()
    torch.save({"unet": unet.state_dict(), "text_encoder": text.state_dict()}, done_path)
    run.finish("unet", time.time() - t_resume, unet_steps=step)


def train(cfg: dict, work_dir: str | Path, out: str | Path, resume: bool = False, device: str | None = None,
          samples: str | None = None, stop_after: str | None = None, eval_n: int = 0) -> dict:
    """Run (or resume) every stage; returns a summary with timings, sizes and parameter counts."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    random.seed(cfg["seed"])
    np.random.seed(cfg["seed"])
    torch.manual_seed(cfg["seed"])
    run = Run(cfg, Path(work_dir), device, resume, stop_after)
    log("setup", run.start, device=device, resume=resume, done=",".join(run.state["done"]) or "-")
    masks, meta = _pack(run)
    images, ids, tok_dir = stage_data(run, masks, meta)
    comps = model.build_components(cfg, tokenizer=tiny_tokenizer.CLIPTokenizer.from_pretrained(tok_dir))
    text_dir = None if cfg.get("init_model") else text_pretrain.stage(run, masks, meta, tok_dir)
    del masks, meta
    if cfg.get("init_model"):
        model.load_trained(comps, cfg["init_model"], fresh_vae=vae_fresh(cfg))
    elif text_dir is not None:
        text_pretrain.load_into(comps["text_encoder"], text_dir)
    stage_vae(run, comps["vae"], images)
    latents = stage_latents(run, comps["vae"], images)
    del images
    stage_unet(run, comps, latents, ids)
    t0 = time.time()
    pipe = model.assemble_pipeline(comps).to("cpu", torch.float32)
    model.save_pipeline(pipe, out, data=model.trained_on(cfg))
    total, largest = model.folder_size(out)
    counts = model.parameter_counts(pipe)
    summary = {"out": str(out), "bytes": total, "largest_file": largest, "params": counts,
               "timings": run.state["timings"], **run.state.get("info", {})}
    log("save", run.start, out=str(out), megabytes=total / 2**20, largest_mib=largest / 2**20)
    if samples:
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        tiny_eval.render_samples(pipe, samples, cfg["sample"]["steps"], cfg["sample"]["guidance_scale"])
        log("samples", run.start, path=samples)
    if eval_n:
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        scores = tiny_eval.evaluate_pipeline(pipe, tiny_eval.heldout_prompts(eval_n), cfg["sample"]["steps"],
                                             cfg["sample"]["guidance_scale"], keep_images=True)
        tiny_eval.contact_sheet(scores.pop("images"), scores["results"], run.work / "contact_sheet.png")
        (run.work / "eval.json").write_text(json.dumps(scores, indent=1))
        summary["eval"] = {k: v for k, v in scores.items() if k != "results"}
        log("eval", run.start, **summary["eval"])
        control = tiny_eval.evaluate_pipeline(pipe, tiny_eval.heldout_prompts(eval_n, phrasings="control"),
                                              cfg["sample"]["steps"], cfg["sample"]["guidance_scale"])
        (run.work / "eval_control.json").write_text(json.dumps(control, indent=1))
        summary["eval_control"] = {k: v for k, v in control.items() if k != "results"}
        log("eval_control", run.start, **summary["eval_control"])
    summary["timings"]["save_samples_eval"] = round(time.time() - t0, 1)
    summary["total_seconds"] = round(time.time() - run.start, 1)
    (run.work / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary), flush=True)
    return summary


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(Path(__file__).with_name("recipe.json")))
    parser.add_argument("--work-dir", default=".work/tiny")
    parser.add_argument("--out", default=".work/tiny/model", help="the shipped model is assets/brandgen-tiny")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints in --work-dir")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and steps (CPU, seconds)")
    parser.add_argument("--samples", default=None, help="write a 4x4 sample grid PNG here")
    parser.add_argument("--device", default=None)
    parser.add_argument("--eval", type=int, default=0, metavar="N",
                        help="score N held-out prompts per concept at the end")
    parser.add_argument("--stop-after", default=None, help="STAGE or STAGE:STEP; stop there (for testing resume)")
    parser.add_argument("--text-init", default=None, help="a text_pretrain output folder (skips the text stage)")
    parser.add_argument("--init-model", default=None,
                        help="a saved brandgen-tiny folder: continue its UNet (its VAE, text encoder, tokenizer stay)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="override one recipe value, e.g. train_unet.seconds=1200 (repeatable)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, smoke=args.smoke)
    if args.text_init:
        cfg["text_init"] = args.text_init
    if args.init_model:
        cfg["init_model"] = args.init_model
    for item in args.set:
        set_value(cfg, item)
    try:
        return train(cfg, args.work_dir, args.out, args.resume, args.device, args.samples, args.stop_after,
                     args.eval)
    except StopRequested as stop:
        print(f"[stop] stopped after {stop} as requested; continue with --resume", flush=True)
        return None


if __name__ == "__main__":
    main()
