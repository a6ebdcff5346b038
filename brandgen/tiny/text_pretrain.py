"""Contrastive pretraining of brandgen-tiny's text encoder against the icons it must draw.

    python -m brandgen.tiny.text_pretrain --pack .work/icons/iconpack.npz --out .work/text-init \
        --seconds 2400 [--resume]

Why: trained from scratch together with the UNet, the text encoder only learns what "bell" means through
the denoising loss, which mostly rewards local detail; in 3,000 GPU steps v2 drew clean line art but not
the asked concept (docs/TINY_MODEL.md). Imagen-style text-to-image models start from a text encoder that
already separates concepts. Here that encoder is learned CLIP-style on the same captions and icons
(a small CNN sees each variant at 64 px, in its colour on its background), which is cheap enough for a
2-core CPU. The saved folder (CLIPTextModel + tokenizer) is what the training recipe's "text_init" loads.

The held-out check uses what the UNet's evaluation uses: held-out icons (never seen here) and held-out
phrasings (icon_eval.heldout_prompts), ranked among the 50 evaluated concepts.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from brandgen.tiny import icon_data, icon_eval, icons, model
from brandgen.tiny import tokenizer as tiny_tokenizer
from brandgen.tiny.recipe import RECIPE_PATH, load_config

IMAGE_SIZE = 64
EVAL_COLORS = icon_eval.EVAL_COLORS
PRINT = functools.partial(print, flush=True)


class IconEncoder(nn.Module):
    """A small CNN: RGB 64 px -> embedding (only used to teach the text encoder; not shipped)."""

    def __init__(self, dim: int, width: int = 32):
        super().__init__()
        layers, ch = [], 3
        for mult in (1, 2, 4, 8):
            out = width * mult
            layers += [nn.Conv2d(ch, out, 3, 2, 1), nn.GroupNorm(8, out), nn.SiLU(),
                       nn.Conv2d(out, out, 3, 1, 1), nn.GroupNorm(8, out), nn.SiLU()]
            ch = out
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(ch * 4 * 4, dim)  # keeps where strokes are, which a global pool would lose

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(pixels).flatten(1))


def text_embedding(text: CLIPTextModel, ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Mean of the token states up to and including the first EOS, plus the EOS state: every position the
    UNet cross-attends to is trained, not only the pooled token."""
    hidden = text(ids)[0]
    is_eos = ids == eos_id
    first = torch.where(is_eos.any(1), is_eos.float().argmax(1), torch.full_like(ids[:, 0], ids.shape[1] - 1))
    upto = torch.arange(ids.shape[1], device=ids.device)[None] <= first[:, None]
    mean = (hidden * upto[..., None]).sum(1) / upto.sum(1, keepdim=True)
    return mean + hidden[torch.arange(len(ids), device=ids.device), first]


class Towers(nn.Module):
    """Text encoder + icon encoder + projections and a learned temperature (CLIP's recipe)."""

    def __init__(self, text: CLIPTextModel, dim: int = 256):
        super().__init__()
        self.text, self.icon = text, IconEncoder(dim)
        self.text_proj = nn.Linear(text.config.hidden_size, dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(text_embedding(self.text, ids, self.text.config.eos_token_id)), dim=-1)

    def embed_icons(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.icon(pixels), dim=-1)

    def loss(self, ids: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        logits = self.embed_text(ids) @ self.embed_icons(pixels).T * self.logit_scale.clamp(max=math.log(100)).exp()
        target = torch.arange(len(ids), device=ids.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def small_masks(masks: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Area-downsampled masks (thin strokes survive as grey, instead of aliasing away)."""
    f = masks.shape[-1] // size
    out = [masks[i:i + 512].reshape(-1, size, f, size, f).mean(axis=(2, 4)) for i in range(0, len(masks), 512)]
    return np.concatenate(out).round().astype(np.uint8)


def trim(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Cut padding after the longest caption: CLIP's causal mask makes the states up to EOS identical."""
    length = int(((ids != eos_id).sum(1) + 1).max().clamp(max=ids.shape[1]))
    return ids[:, :length]


def heldout_gallery(composer: icon_data.Composer, meta: list[dict]) -> tuple[torch.Tensor, list[str], list[str]]:
    """Every held-out icon of an evaluated concept, drawn in each evaluation colour on white."""
    picked = [i for i, m in enumerate(meta) if m.get("heldout") and m.get("concept")]
    variants, concepts, colours = [], [], []
    for colour in EVAL_COLORS:
        for i in picked:
            variants.append(icon_data.Variant(i, icon_data.COLORS[colour][0], (255, 255, 255),
                                              icon_data.CANON_SCALE, 0.0, 0.0, []))
            concepts.append(meta[i]["concept"])
            colours.append(colour)
    return composer.compose(variants), concepts, colours


@torch.no_grad()
def evaluate(towers: Towers, tokenizer: CLIPTokenizer, composer: icon_data.Composer, meta: list[dict],
             per_concept: int = 4) -> dict:
    """Held-out prompt -> rank of its concept among the 50 (best match over that concept's held-out icons
    in the asked colour), and whether the asked colour wins among the concept's icons in 10 colours."""
    if not any(m.get("heldout") and m.get("concept") for m in meta):
        return {"n": 0}  # a pack without held-out concept icons (the synthetic smoke pack)
    towers.eval()
    gallery, g_concepts, g_colours = heldout_gallery(composer, meta)
    img = torch.cat([towers.embed_icons(icon_data.to_pixels(gallery[i:i + 256])) for i in range(0, len(gallery), 256)])
    evaluated = set(g_concepts)
    items = [it for it in icon_eval.heldout_prompts(per_concept) if it["concept"] in evaluated]
    ids = torch.from_numpy(tiny_tokenizer.encode_padded(tokenizer, [it["prompt"] for it in items])).long()
    txt = towers.embed_text(trim(ids, tokenizer.eos_token_id).to(img.device))
    sims = (txt @ img.T).float().cpu().numpy()
    g_concepts, g_colours = np.array(g_concepts), np.array(g_colours)
    ranks, colour_ok = [], []
    for row, item in zip(sims, items):
        same_colour = g_colours == item["color"]
        best = {c: row[same_colour & (g_concepts == c)].max() for c in set(g_concepts[same_colour])}
        order = sorted(best, key=lambda c: -best[c])
        ranks.append(order.index(item["concept"]) + 1 if item["concept"] in order else len(order) + 1)
        own = g_concepts == item["concept"]
        colour_ok.append(bool(own.any()) and g_colours[own][row[own].argmax()] == item["color"])
    towers.train()
    ranks = np.array(ranks)
    return {"n": len(items), "concepts": len(evaluated), "top1": float((ranks == 1).mean()),
            "top5": float((ranks <= 5).mean()), "colour": float(np.mean(colour_ok))}


def save(towers: Towers, tokenizer: CLIPTokenizer, out: Path, info: dict) -> Path:
    """The text encoder in float16 + its tokenizer, the folder layout the recipe's "text_init" reads."""
    out.mkdir(parents=True, exist_ok=True)
    half = CLIPTextModel(towers.text.config)
    half.load_state_dict(towers.text.state_dict())
    half.to(torch.float16).save_pretrained(out / "text_encoder", safe_serialization=True)
    tiny_tokenizer.save_tokenizer(tokenizer, out / "tokenizer")
    (out / "pretrain.json").write_text(json.dumps(info, indent=1))
    return out


def load(path: str | Path) -> tuple[CLIPTextModel, CLIPTokenizer]:
    path = Path(path)
    text = CLIPTextModel.from_pretrained(path / "text_encoder", torch_dtype=torch.float32)
    return text, CLIPTokenizer.from_pretrained(path / "tokenizer")


def recipe_tokenizer(cfg: dict, meta: list[dict], tok_dir: Path) -> CLIPTokenizer:
    """The recipe's BPE tokenizer, learned on this pack's captions and saved to tok_dir."""
    lines = icon_data.tokenizer_corpus(meta, cfg["tokenizer"].get("corpus_captions", 60000))
    tokenizer = tiny_tokenizer.train_tokenizer(cfg["tokenizer"]["vocab_size"], lines)
    tiny_tokenizer.save_tokenizer(tokenizer, tok_dir)
    return tokenizer


def pretrain(cfg: dict, masks: np.ndarray, meta: list[dict], tokenizer: CLIPTokenizer, out: Path, ckpt: Path,
             seconds: float, max_steps: int, batch: int = 256, lr: float = 1e-3, eval_every: int = 500,
             resume: bool = False, device: str = "cpu", ckpt_seconds: float = 120,
             log: Callable[[str], None] = PRINT) -> dict:
    """Train until seconds or max_steps (cosine LR over whichever ends first); checkpoint to ckpt every
    ckpt_seconds (resume picks it up), evaluate every eval_every steps, save the text encoder to out."""
    torch.manual_seed(cfg["seed"])
    dev = torch.device(device)
    dcfg = cfg["data"]
    variants = icon_data.variants_for(meta, dcfg)
    k = len(variants[0].captions)
    ids = torch.from_numpy(tiny_tokenizer.encode_padded(tokenizer, [c for v in variants for c in v.captions]))
    ids = ids.view(len(variants), k, -1).long()
    composer = icon_data.Composer(small_masks(masks), dev, IMAGE_SIZE)
    towers = Towers(CLIPTextModel(model.text_config_for(cfg, tokenizer))).to(dev)
    decay, rest = [], []
    for name, p in towers.named_parameters():
        (decay if p.ndim >= 2 and "embedding" not in name else rest).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))
    step, elapsed, history, losses = 0, 0.0, [], []
    if resume and ckpt.exists():
        state = torch.load(ckpt, map_location=dev)
        towers.load_state_dict(state["towers"])
        opt.load_state_dict(state["opt"])
        step, elapsed, history, losses = state["step"], state["elapsed"], state["history"], state["losses"]
        log(f"[text] resumed at step {step}")
    gen = torch.Generator().manual_seed(cfg["seed"] + step)
    t_resume, last_ckpt, warmup = time.time() - elapsed, time.time(), min(200, max(1, max_steps // 10))
    while True:
        elapsed = time.time() - t_resume
        progress = max(step / max_steps, elapsed / seconds)
        if progress >= 1:
            break
        scale = (step + 1) / warmup if step < warmup else 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))
        for group in opt.param_groups:
            group["lr"] = lr * scale
        idx = torch.randint(0, len(variants), (batch,), generator=gen)
        tok = trim(ids[idx, torch.randint(0, k, (batch,), generator=gen)], tokenizer.eos_token_id).to(dev)
        pixels = icon_data.to_pixels(composer.compose([variants[i] for i in idx.tolist()]))
        loss = towers.loss(tok, pixels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(towers.parameters(), 1.0)
        opt.step()
        step += 1
        losses.append(round(loss.item(), 4))
        if step % 50 == 0 or step == 1:
            log(f"[text] step {step} loss {loss.item():.4f} lr {lr * scale:.3g} elapsed {elapsed:.0f}s")
        if step % eval_every == 0:
            history.append({"step": step, "seconds": round(elapsed), **evaluate(towers, tokenizer, composer, meta)})
            log(f"[text] eval {json.dumps(history[-1])}")
        if time.time() - last_ckpt >= ckpt_seconds:
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"towers": towers.state_dict(), "opt": opt.state_dict(), "step": step, "losses": losses,
                        "elapsed": time.time() - t_resume, "history": history}, tmp)
            tmp.replace(ckpt)
            last_ckpt = time.time()
    final = {"step": step, "seconds": round(time.time() - t_resume), **evaluate(towers, tokenizer, composer, meta)}
    info = {"steps": step, "batch": batch, "lr": lr, "variants": len(variants), "captions_per_variant": k,
            "image_size": IMAGE_SIZE, "device": str(dev), "final": final, "history": history,
            "loss_first_50": float(np.mean(losses[:50])), "loss_last_50": float(np.mean(losses[-50:]))}
    save(towers.cpu(), tokenizer, out, info)
    log(f"[text] done {json.dumps(final)}")
    return info


def load_into(text: CLIPTextModel, path: str | Path) -> CLIPTextModel:
    """Copy a pretrained text encoder's weights into the recipe's one; a clear error if they do not fit."""
    pretrained, _ = load(path)
    theirs, ours = pretrained.config, text.config
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "max_position_embeddings")
    wrong = [f"{k}: {getattr(theirs, k)} vs {getattr(ours, k)}" for k in keys if getattr(theirs, k) != getattr(ours, k)]
    if wrong:
        raise ValueError(f"text_init {path} does not fit this recipe's text encoder ({'; '.join(wrong)})")
    text.load_state_dict(pretrained.state_dict())
    return text


def stage(run, masks: np.ndarray, meta: list[dict], tok_dir: Path) -> Path | None:
    """The training recipe's "text" stage: the folder whose text encoder the UNet stage starts from.

    cfg["text_init"] names a finished folder (its tokenizer is then the run's); cfg["text_pretrain"]
    trains one inside the run (resumable, checkpointed with the run's other *.pt files); neither: None."""
    if run.cfg.get("text_init"):
        return Path(run.cfg["text_init"])
    tcfg = run.cfg.get("text_pretrain")
    if not tcfg:
        return None
    out = run.work / "text_init"
    if run.done("text"):
        return out
    info = pretrain(run.cfg, masks, meta, CLIPTokenizer.from_pretrained(tok_dir), out, run.work / "text_ckpt.pt",
                    tcfg["seconds"], tcfg["max_steps"], tcfg.get("batch", 256), tcfg.get("lr", 1e-3),
                    tcfg.get("eval_every", 500), resume=True, device=str(run.device))
    run.finish("text", info["final"]["seconds"], text_steps=info["steps"],
               text_retrieval={k: info["final"].get(k) for k in ("top1", "top5", "colour")})
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(RECIPE_PATH))
    parser.add_argument("--pack", default=".work/icons/iconpack.npz")
    parser.add_argument("--out", default=".work/text-init")
    parser.add_argument("--work-dir", default=".work/text-pretrain", help="tokenizer + checkpoint")
    parser.add_argument("--seconds", type=float, default=2400)
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--resume", action="store_true", help="continue from --work-dir's checkpoint and tokenizer")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    masks, meta, _ = icons.load_pack(args.pack)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    tok_dir = work / "tokenizer"
    resumable = args.resume and (tok_dir / "tokenizer_config.json").exists()  # the checkpoint's ids need it
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir) if resumable else recipe_tokenizer(cfg, meta, tok_dir)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return pretrain(cfg, masks, meta, tokenizer, Path(args.out), work / "pretrain_ckpt.pt", args.seconds,
                    args.max_steps, args.batch, args.lr, args.eval_every, args.resume, device)


if __name__ == "__main__":
    main()
