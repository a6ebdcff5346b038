"""Does brandgen-tiny draw the icon that was asked for, in the colour asked for?

    python -m brandgen.tiny.icon_eval --model assets/brandgen-tiny --per-concept 4 --out results.json \
        [--sheet docs/tiny/contact_sheet.png]

Prompts name the 50 everyday concepts of concepts.json in phrasings never used in training, each in a named colour
(`--phrasings control`: the second set, for models whose captions use the first set's words, data.medium_modifiers;
`--phrasings blind`: a third, in words no run 11 caption has; `--phrasings fresh`: a fourth, written before run 12 in
words no icon name or tag has). Each image is read back with classic image analysis
(no learned model, so the metric cannot share the generator's mistakes): the background is the border median, the
foreground the pixels far from it in Lab. Colour family = family of the strongest foreground pixels' median.
Silhouette retrieval = rank of the asked concept when the blurred foreground mask is compared (cosine) with the
reference masks of all 50 concepts from every icon set, held-out icons included.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from brandgen.metrics import border_pixels
from brandgen.tiny import data
from brandgen.tiny.eval import color_family, load_pipeline, report, save_grid

REFS_PATH = Path(__file__).with_name("eval_refs.npz")
CONCEPTS = json.loads(Path(__file__).with_name("concepts.json").read_text(encoding="utf-8"))
EVAL_COLORS = ["red", "orange", "yellow", "green", "teal", "blue", "purple", "pink", "brown", "black"]
FG_DISTANCE = 22.0
RES = 64
# concepts.json {name}_phrasings, in the order they were written
PHRASING_SETS = ("heldout", "control", "blind", "fresh")
SEED = 424242


def silhouette(alpha: np.ndarray, res: int = RES) -> np.ndarray:
    """Coverage [H, W] in 0..1 -> a blurred, unit-norm res x res vector: small offsets and stroke
    differences between sets still compare as similar, different concepts do not."""
    img = Image.fromarray((np.clip(alpha, 0, 1) * 255).astype(np.uint8)).resize((res, res), Image.BOX)
    img = img.filter(ImageFilter.GaussianBlur(1.5))
    v = np.asarray(img, np.float32).ravel()
    return v / max(float(np.linalg.norm(v)), 1e-6)


def foreground(image: Image.Image) -> dict:
    """Background colour, foreground coverage (soft, 0..1) and the foreground's colour family."""
    rgb = np.asarray(image.convert("RGB"), np.float64)
    bg = np.median(border_pixels(rgb, 3), axis=0)
    dist = np.linalg.norm(data.srgb_to_lab(rgb) - data.srgb_to_lab(bg), axis=-1)
    strong = dist > max(FG_DISTANCE, np.percentile(dist, 99) * 0.6)
    out = {"background": [int(v) for v in bg], "alpha": np.clip(dist / max(np.percentile(dist, 99.5), 1e-6), 0, 1),
           "fg_fraction": float((dist > FG_DISTANCE).mean()), "color": None}
    if strong.sum() >= 20:
        out["color"] = color_family(np.median(rgb[strong], axis=0))
    return out


def load_refs(path: Path = REFS_PATH) -> tuple[np.ndarray, list[str], list[dict]]:
    """Reference silhouettes [M, RES*RES], their concept names, and which icon each one is."""
    from brandgen.tiny.icons import from_json_array

    with np.load(path) as z:
        return z["vectors"], from_json_array(z["concepts"]), from_json_array(z["icons"])


def make_refs(pack_path: str | Path, out: Path = REFS_PATH) -> Path:
    """Reference silhouettes of every evaluated concept's icons (all sets and styles) from the icon pack,
    placed as training places them on average."""
    from brandgen.tiny import icon_data, icons

    masks, meta, _ = icons.load_pack(pack_path)
    picked = [i for i, m in enumerate(meta) if m.get("concept")]
    comp = icon_data.Composer(masks[picked], "cpu")
    n = len(picked)
    alpha = comp.alpha(list(range(n)), [icon_data.CANON_SCALE] * n, [0.0] * n, [0.0] * n)[:, 0].numpy()
    vectors = np.stack([silhouette(a) for a in alpha]).astype(np.float16)
    info = [{k: meta[i][k] for k in ("set", "style", "name", "heldout")} for i in picked]
    np.savez_compressed(out, vectors=vectors, concepts=icons.json_array([meta[i]["concept"] for i in picked]),
                        icons=icons.json_array(info))
    return out


def rank_concepts(vector: np.ndarray, refs: np.ndarray, ref_concepts: list[str]) -> list[tuple[str, float]]:
    """Concepts ordered by their best-matching reference silhouette."""
    sims = refs.astype(np.float32) @ vector
    best: dict[str, float] = {}
    for concept, s in zip(ref_concepts, sims):
        best[concept] = max(best.get(concept, -1.0), float(s))
    return sorted(best.items(), key=lambda kv: -kv[1])


def heldout_prompts(per_concept: int = 4, seed: int = SEED, phrasings: str = "heldout") -> list[dict]:
    """per_concept prompts a concept, in a set of held-out phrasings ("heldout"; "control": the set written
    before training captions used the first set's words; "blind": written after run 11, in words none of its
    captions has; "fresh": written before run 12, in words no icon name or tag has), each with its own colour
    and seed."""
    rng = random.Random(seed)
    phrasings = CONCEPTS[f"{phrasings}_phrasings"]
    out = []
    for ci, (concept, spec) in enumerate(CONCEPTS["concepts"].items()):
        for j in range(per_concept):
            word = spec["words"][j % len(spec["words"])]
            color = EVAL_COLORS[(ci * per_concept + j) % len(EVAL_COLORS)]
            phrasing = phrasings[(ci + j) % len(phrasings)]
            out.append({"concept": concept, "word": word, "color": color,
                        "prompt": phrasing.format(word=word, color=color),
                        "seed": seed + ci * 100 + j, "phrasing": phrasing})
    rng.shuffle(out)
    return out


def score_image(image: Image.Image, item: dict, refs, ref_concepts) -> dict:
    fg = foreground(image)
    ranking = rank_concepts(silhouette(fg["alpha"]), refs, ref_concepts)
    names = [c for c, _ in ranking]
    rank = names.index(item["concept"]) + 1 if item["concept"] in names else len(names) + 1
    return {**item, "pred_color": fg["color"], "color_ok": fg["color"] == data.COLORS[item["color"]][1],
            "rank": rank, "top1": rank == 1, "top5": rank <= 5, "best": names[:5],
            "fg_fraction": round(fg["fg_fraction"], 4)}


def text_side_ranks(pipe, items: list[dict]) -> list[int]:
    """Where each prompt's own concept ranks when its pooled text embedding is compared with "<concept> icon"
    for every evaluated concept: separates what the text encoder confuses from what the UNet fails to draw."""
    import torch

    from brandgen.tiny import text_pretrain
    from brandgen.tiny.tokenizer import encode_padded

    concepts = sorted({it["concept"] for it in items})

    def embed(texts: list[str]) -> torch.Tensor:
        ids = torch.from_numpy(encode_padded(pipe.tokenizer, texts)).long().to(pipe.text_encoder.device)
        with torch.no_grad():
            pooled = text_pretrain.text_embedding(pipe.text_encoder, ids, pipe.tokenizer.eos_token_id)
        return torch.nn.functional.normalize(pooled.float(), dim=-1)

    sims = embed([it["prompt"] for it in items]) @ embed([f"{c} icon" for c in concepts]).T
    order = sims.argsort(dim=1, descending=True).cpu().tolist()
    return [[concepts[j] for j in row].index(it["concept"]) + 1 for row, it in zip(order, items)]


def vae_colour_round_trip(vae, masks: np.ndarray, meta: list[dict], n: int = 16, seed: int = 0) -> dict[str, float]:
    """Share of n icons whose foreground colour family survives the VAE's encode -> decode, per base colour on
    white: a colour the autoencoder loses cannot come out of the UNet either."""
    import torch

    from brandgen.tiny import icon_data

    composer = icon_data.Composer(masks, "cpu", vae.config.sample_size)
    icon_ids = [int(i) for i in np.random.default_rng(seed).choice(len(meta), n, replace=False)]
    out = {}
    for name in [c for c in data.BASE_COLORS if c != "white"]:
        variants = [icon_data.Variant(icon=i, fg=data.COLORS[name][0], bg=(255, 255, 255), scale=0.8, dx=0.0,
                                      dy=0.0, captions=[]) for i in icon_ids]
        with torch.no_grad():
            x = icon_data.to_pixels(composer.compose(variants))
            rec = icon_data.from_pixels(vae.decode(vae.encode(x).latent_dist.mean).sample)
        out[name] = float(np.mean([foreground(Image.fromarray(r))["color"] == name for r in rec]))
    return out


def summarise(results: list[dict], **extra) -> dict:
    n = max(len(results), 1)
    out = {"n": len(results), **extra,
           "top1": sum(r["top1"] for r in results) / n, "top5": sum(r["top5"] for r in results) / n,
           "color_accuracy": sum(r["color_ok"] for r in results) / n}
    if results and "phrasing" in results[0]:  # which wordings the model follows (run 5: 88% vs 26-30% top-5)
        groups: dict[str, list[bool]] = {}
        for r in results:
            groups.setdefault(r["phrasing"], []).append(r["top5"])
        out["top5_by_phrasing"] = {p: round(sum(v) / len(v), 4) for p, v in groups.items()}
    if results and "text_rank" in results[0]:
        text_hits = [r for r in results if r["text_rank"] <= 5]
        out["text_top1"] = sum(r["text_rank"] == 1 for r in results) / n
        out["text_top5"] = len(text_hits) / n
        out["image_top5_given_text_top5"] = sum(r["top5"] for r in text_hits) / max(len(text_hits), 1)
    return {**out, "results": results}


def evaluate_pipeline(pipe, items: list[dict], steps: int = 28, guidance: float = 6.0, batch: int = 25,
                      keep_images: bool = False, refs_path: Path = REFS_PATH, guidance_until: float = 1.0) -> dict:
    """Generate every held-out prompt and score silhouette retrieval and colour family. guidance_until < 1 stops
    classifier-free guidance after that share of the steps, as the app does for a model that sets it."""
    import torch

    from brandgen.pipeline_call import guidance_interval_kwargs

    extra = guidance_interval_kwargs(pipe, steps, guidance_until)
    refs, ref_concepts, _ = load_refs(refs_path)
    results, images = [], []
    for s in range(0, len(items), batch):
        chunk = items[s:s + batch]
        gens = [torch.Generator(device="cpu").manual_seed(it["seed"]) for it in chunk]
        out = pipe([it["prompt"] for it in chunk], num_inference_steps=steps, guidance_scale=guidance,
                   generator=gens, **extra).images
        results += [score_image(img, it, refs, ref_concepts) for it, img in zip(chunk, out)]
        images += out if keep_images else []
    for result, rank in zip(results, text_side_ranks(pipe, items)):
        result["text_rank"] = rank
    summary = summarise(results, steps=steps, guidance=guidance, guidance_until=guidance_until)
    if keep_images:
        summary["images"] = images
    return summary


def contact_sheet(images: list[Image.Image], results: list[dict], path: str | Path, cols: int = 10,
                  tile: int = 128) -> Path:
    """Tiles with the prompt's concept/colour and a mark for retrieval (top-1 / top-5 / miss) and colour."""
    rows = math.ceil(len(images) / cols)
    sheet = Image.new("RGB", (cols * tile, rows * (tile + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (img, r) in enumerate(zip(images, results)):
        x, y = (i % cols) * tile, (i // cols) * (tile + 14)
        sheet.paste(img.resize((tile, tile), Image.LANCZOS), (x, y))
        mark = "1" if r["top1"] else "5" if r["top5"] else "x"
        draw.text((x + 2, y + tile + 1), f"{r['concept'][:12]} {r['color'][:3]} {mark}{'' if r['color_ok'] else '!'}",
                  fill="black" if r["top5"] else "red")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return Path(path)


SAMPLE_PROMPTS = [
    "bank transfer icon", "notification bell icon", "shopping cart icon", "a teal wallet icon",
    "outline credit card icon, blue", "filled heart icon in red", "duotone rocket icon, purple",
    "fluent design calendar icon, teal",
    "bgicon, flat vector icon of a green lock, minimal, centered, simple shapes, clean edges, plain background",
    "orange map pin icon on a dark background", "#1a73e8 user icon", "gear icon on a light blue background",
    "coffee cup icon, brown", "minimal fintech payment icon", "pink gift icon", "black camera icon",
]


def render_samples(pipe, path: str | Path, steps: int = 28, guidance: float = 6.0, seed: int = 7) -> Path:
    """A 4x4 grid of everyday icon prompts (the README's picture)."""
    import torch

    gens = [torch.Generator(device="cpu").manual_seed(seed + i) for i in range(len(SAMPLE_PROMPTS))]
    images = pipe(SAMPLE_PROMPTS, num_inference_steps=steps, guidance_scale=guidance, generator=gens).images
    return save_grid(images, path, cols=4)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Score brandgen-tiny on held-out everyday-icon prompts")
    parser.add_argument("--model", default="assets/brandgen-tiny")
    parser.add_argument("--per-concept", type=int, default=4, help="prompts per concept (50 concepts)")
    parser.add_argument("--out", default=None, help="write the results JSON here")
    parser.add_argument("--sheet", default=None, help="write a labelled contact sheet PNG here")
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--guidance", type=float, default=6.0, help="the app default for brandgen-tiny")
    parser.add_argument("--guidance-until", type=float, default=1.0,
                        help="stop classifier-free guidance after this share of the steps (1 = every step)")
    parser.add_argument("--phrasings", choices=PHRASING_SETS, default="heldout",
                        help="concepts.json heldout_phrasings, control_phrasings (unseen words for models trained "
                             "with data.medium_modifiers, which puts the first set's words into captions) or "
                             "blind_phrasings (words no run 11 caption has) or fresh_phrasings (written before "
                             "run 12, in words no icon name or tag or run 12 caption has)")
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--device", default=None)
    parser.add_argument("--make-refs", default=None, metavar="PACK", help="rebuild eval_refs.npz from an icon pack")
    parser.add_argument("--vae-colours", default=None, metavar="PACK",
                        help="only check which base colours survive the model's VAE (icons from this pack)")
    args = parser.parse_args(argv)
    if args.make_refs:
        print(make_refs(args.make_refs))
        return {}
    if args.vae_colours:
        import torch
        from diffusers import AutoencoderKL

        from brandgen.tiny import icons

        masks, meta, _ = icons.load_pack(args.vae_colours)
        vae = AutoencoderKL.from_pretrained(Path(args.model) / "vae", torch_dtype=torch.float32)
        result = {"vae_colour_round_trip": vae_colour_round_trip(vae.eval(), masks, meta)}
        print(json.dumps(result))
        return result
    pipe = load_pipeline(args.model, args.device)
    items = heldout_prompts(args.per_concept, phrasings=args.phrasings)
    summary = evaluate_pipeline(pipe, items, args.steps, args.guidance, args.batch,
                                keep_images=bool(args.sheet), guidance_until=args.guidance_until)
    if args.sheet:
        contact_sheet(summary.pop("images"), summary["results"], args.sheet)
    return report(summary, args.out)


if __name__ == "__main__":
    main()
