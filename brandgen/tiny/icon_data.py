"""Training images and captions from the icon pack: each mask tinted in a colour on a background.

A *variant* is one (icon, colour, background, placement) choice, fixed by the seed, with K captions
that describe it in the words designers type: the icon's name, its tags and synonyms, a style word
(outline / filled / duotone / fluent), the colour as a name or hex, the background, and the app's
templates. Images are composed on the training device from the masks, so the pack stays small.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from brandgen.tiny import icon_sets
from brandgen.tiny.caption_options import (  # noqa: F401 (CONCEPTS, MEDIUM_* are icon_data's API too)
    CONCEPTS,
    MEDIUM_MODIFIERS,
    MEDIUM_WORDS,
    first_modifier,
    known_words,
    medium_form,
    place_vocabulary,
    with_context,
    with_made_up_names,
)
from brandgen.tiny.data import COLORS, NEGATIVES, TEMPLATES, article
from brandgen.tiny.eval import color_family
from brandgen.tiny.icons import load_pack
from brandgen.tiny.recipe import load_config, set_value

LIGHT_BG = {"white": (255, 255, 255), "off-white": (250, 248, 242), "light gray": (238, 238, 240)}
DARK_BG = {"dark": (24, 26, 32), "black": (14, 14, 14), "dark navy": (20, 28, 52)}
DARK_FG = {"black", "navy", "brown", "crimson", "purple"}  # too dark to read on a dark background
CANON_SCALE = 0.78  # fraction of the canvas an icon's 24-unit grid fills (the rest is margin)
FILL_LEVEL = 51  # Phosphor's duotone fill (opacity 0.2) in the pack's 16-level alpha masks


def _words_for(meta: dict) -> list[str]:
    """The words that may name this icon in a caption, most specific first."""
    concept = meta.get("concept")
    words = [meta["phrase"]]
    if concept:
        words += CONCEPTS["concepts"][concept]["words"]
    return [w for w in dict.fromkeys(words) if w]


def hex_of(rgb) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb))


@dataclass
class Variant:
    icon: int
    fg: tuple[int, int, int]
    bg: tuple[int, int, int]
    scale: float
    dx: float
    dy: float
    captions: list[str]
    fg2: tuple[int, int, int] | None = None  # a duotone icon's fill in a second colour (two-tone variant)


def _jitter(rgb, rng: random.Random, amount: int = 14) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, c + rng.randint(-amount, amount)))) for c in rgb)


def _colour_and_background(rng: random.Random) -> tuple[tuple, tuple, str, str]:
    """(fg rgb, bg rgb, colour words, background words)."""
    kind = rng.random()
    if kind < 0.62:
        bg_name = rng.choice(list(LIGHT_BG))
        bg, bg_words = LIGHT_BG[bg_name], rng.choice([f"{bg_name} background", f"plain {bg_name} background"])
        if bg_name == "white" and rng.random() < 0.25:
            bg_words = "transparent background"
        names = [n for n in COLORS if n != "white"]
    elif kind < 0.82:
        tint = rng.choice([n for n in COLORS if n not in ("white", "black", "gray")])
        bg = tuple(int(255 - (255 - c) * 0.16) for c in COLORS[tint][0])
        bg_words = rng.choice([f"light {tint} background", f"soft {tint} tint background", f"pale {tint} background"])
        names = [n for n in COLORS if n not in ("white", tint) and COLORS[n][1] != COLORS[tint][1]]
    else:
        bg_name = rng.choice(list(DARK_BG))
        bg, bg_words = DARK_BG[bg_name], f"{bg_name} background"
        names = [n for n in COLORS if n not in DARK_FG]
    name = rng.choice(names)
    fg = _jitter(COLORS[name][0], rng)
    colour_words = hex_of(fg) if rng.random() < 0.15 else name
    return fg, bg, colour_words, bg_words


def caption(meta: dict, colour: str, background: str, rng: random.Random, modifier: str | None = None,
            drop_medium: bool = False) -> str:
    """One caption in a randomly chosen training phrasing (never the held-out ones in concepts.json).
    `modifier` (a context word) follows the concept word as a compound: "bell dashboard icon" (make_variants);
    one with "{}" is a template for the concept word instead ("app {}": "app bell icon");
    `drop_medium`: a tag naming the medium ("ui", "app", concepts.json medium_words) is never the concept word."""
    words = _words_for(meta)
    word = words[0] if rng.random() < 0.55 or len(words) == 1 else rng.choice(words[1:])
    tags = [t for t in meta.get("tags") or [] if not (drop_medium and t in MEDIUM_WORDS)]
    if meta.get("tags") and rng.random() < 0.12 and tags:
        word = rng.choice(tags)
    if modifier:
        word = modifier.format(word) if "{}" in modifier else f"{word} {modifier}"
    style = rng.choice(icon_sets.STYLE_WORDS[(meta["set"], meta["style"])])
    trigger, prefix, suffix = TEMPLATES["icons"]
    form = rng.randrange(9)
    if form == 0:
        return f"{word} icon"
    if form == 1:
        return f"{style} {word} icon, {colour}"
    if form == 2:
        return f"{article(colour)} {colour} {word} icon on a {background}"
    if form == 3:
        head = f"{trigger}, " if rng.random() < 0.5 else ""
        return f"{head}{prefix} {article(colour)} {colour} {word}, {style}, {suffix}"
    if form == 4:
        return f"{word}, {style} icon in {colour}, {background}"
    if form == 5:
        return f"{colour} {style} {word} symbol"
    if form == 6:
        ltrig, lprefix, lsuffix = TEMPLATES["logo"]
        return f"{ltrig}, {lprefix} {article(colour)} {colour} {word}, {lsuffix}"
    if form == 7:
        extra = f", {meta['category'].lower()}" if meta.get("category") else ""
        return f"{style} icon of {article(word)} {word}{extra}, {colour} on {background}"
    return f"{colour} {word}"


def readable_colour(bg: tuple, rng: random.Random) -> tuple[int, int, int]:
    """A uniformly random colour far enough from `bg` (L1 distance > 160) to read on it."""
    while True:
        rgb = tuple(rng.randrange(256) for _ in range(3))
        if sum(abs(a - b) for a, b in zip(rgb, bg)) > 160:
            return rgb


def _any_colour(bg: tuple, rng: random.Random) -> tuple[tuple[int, int, int], str]:
    """A uniformly random colour that reads on `bg`, and its words: the hex, or the family the evaluator sees."""
    rgb = readable_colour(bg, rng)
    return rgb, hex_of(rgb) if rng.random() < 0.5 else color_family(rgb)


def _second_colour(fg: tuple, bg: tuple, rng: random.Random) -> tuple[tuple[int, int, int], str]:
    """A fill colour of another family than the line, readable against the background."""
    def far(rgb: tuple, other: tuple) -> bool:
        return sum(abs(a - b) for a, b in zip(rgb, other)) > 150

    names = [n for n in COLORS if n not in ("white", "black", "gray") and far(COLORS[n][0], fg)
             and far(COLORS[n][0], bg)]
    name = rng.choice(names)
    return _jitter(COLORS[name][0], rng), name


def make_variants(meta: list[dict], per_icon: int, captions_per_variant: int, seed: int,
                  concept_boost: int = 1, two_tone: float = 0.0, context: float = 0.0,
                  any_colour: float = 0.0, modifiers: float = 0.0, drop_medium_tags: bool = False,
                  medium_modifiers: float = 0.0, format_modifiers: float = 0.0,
                  random_places: float = 0.0, made_up_names: float = 0.0) -> list[Variant]:
    """per_icon variants of every training (not held-out) icon, deterministic for a seed; icons of the
    everyday concepts (concepts.json) get concept_boost times as many, as designers ask for them most.

    two_tone: the share of duotone icons' variants whose fill gets a second colour ("teal and orange"), so the
    autoencoder and the UNet see two-colour icons, as brand sets are (issue #18's LoRA demo: teal line, coral
    fill). Its draws come from a separate generator: with 0 the variants are those of earlier runs.

    context: the share of captions that also say where the icon goes ("bell icon for a dashboard", "toolbar bell
    icon"). Many context words name icons themselves (menu, sidebar, dashboard), and run 5 drew an app window for
    "bell symbol for a mobile app": these captions teach that the icon asked for is the one drawn. Separate
    generator too, so 0 keeps the captions of earlier runs.

    any_colour: the share of variants drawn in a uniformly random colour (named by its hex or its family) instead of
    the 18 named ones: brand palettes are arbitrary, and run 5's VAE returned the LoRA demo's dark teal and coral as
    navy-teal and orange-pink. Separate generator; 0 keeps earlier runs' variants.

    modifiers: the share of captions whose concept word is followed by a context word, as a compound ("bell
    dashboard icon", "teal gear toolbar icon"). Without it the word just before "icon" was always the concept,
    and the models drew "gear ui icon" as a gear 26% of the time against 98% for "gear icon, brown" (run 7,
    scripts/phrasing_ablation.py): they took "ui", a tag of 63 layout icons, for the concept. Context words are
    none of the held-out phrasings' words (a test), so the eval still measures "ui", "app", "mobile" unseen.
    Separate generator; 0 keeps earlier runs' captions.

    drop_medium_tags: tags that name the medium, not the subject (concepts.json medium_words: an icon set tags its
    layout icons "ui", its app window "app", its antenna bars "mobile") are never a caption's concept word, so
    "app telephone icon" does not ask for an app window (run 7: 50% top-5 vs 100% for "telephone icon", same seeds).

    medium_modifiers: the share of the captions without a context modifier whose concept word gets a medium word
    (MEDIUM_MODIFIERS: "app", "ui", "mobile", "web" ...) before or after it: "app bell icon", "bell ui icon". Dropping
    the tags only stops teaching "ui" as a layout; these captions teach what a designer means by it (run 9-short
    with drop_medium_tags alone: "gear ui icon" 20% top-5). This puts the held-out phrasings' words into training on
    purpose, chosen after seeing their failures: concepts.json control_phrasings is the held-out set for such models.
    Separate generator; 0 keeps earlier runs' captions.

    format_modifiers: the share of the captions left whose concept word is followed by a format noun (concepts.json
    format_words: "bell decal icon", "teal gear seal"): a designer's "bell badge" or "bell sticker" asks for a bell
    drawn as one. Run 10-short already draws "teal telephone badge" as a telephone (88% top-5; its control misses
    come from the place, see random_places), so this is for format nouns that are icons of their own ("seal",
    "tile", "sign"). The control phrasings' nouns are not format words (a test). Separate generator; 0 keeps
    earlier runs' captions.

    random_places: the share of context phrases (data.context) that name a made-up place of one or two words from
    the icons' names and tags ("bell icon for a rocket ledger") instead of the 24 contexts: run 10-short drew "teal
    telephone badge" right (88% top-5) and "teal telephone for a tablet kiosk" wrong (14%), so an unseen place that
    names an icon ("tablet") takes over the drawing. The control phrasings' words are left out of the vocabulary
    (place_vocabulary), so they measure whether "for a ..." is learned as a place. Separate generator.

    made_up_names: the share of captions with a made-up word (a brand-like name or a trigger-like letter string, never
    an icon's name or tag) first, before the caption or after it ("zorvex, bell icon", "bell icon by zorvex"): a
    designer types a brand name and a LoRA puts its trigger first, and run 11 draws "teal telephone icon" 100% top-5
    but "zorvex teal telephone icon" 58% and "northwind, teal telephone icon" 18% (run 5: 42%, 20%;
    scripts/phrasing_ablation.py). known_words keeps the held-out sets' words out. Separate generator."""
    out = []
    vocabulary = place_vocabulary(meta) if random_places > 0 else None
    known = known_words(meta) if made_up_names > 0 else None
    for i, m in enumerate(meta):
        if m.get("heldout"):
            continue
        for v in range(per_icon * (concept_boost if m.get("concept") else 1)):
            rng = random.Random(seed * 1_000_003 + i * 131 + v)
            fg, bg, colour, background = _colour_and_background(rng)
            if any_colour > 0:
                free = random.Random(seed * 11_000_027 + i * 131 + v)
                if free.random() < any_colour:
                    fg, colour = _any_colour(bg, free)
            fg2 = None
            if two_tone > 0 and m.get("style") == "duotone":
                extra = random.Random(seed * 7_000_003 + i * 131 + v)
                if extra.random() < two_tone:
                    fg2, name2 = _second_colour(fg, bg, extra)
                    colour = f"{colour} and {name2}"
            # a string seed: the integer ones above all coincide at seed 0, which tied modifiers to contexts
            mods = random.Random(f"modifiers:{seed}:{i}:{v}") if modifiers > 0 else None
            medium = random.Random(f"medium:{seed}:{i}:{v}") if medium_modifiers > 0 else None
            fmt = random.Random(f"format:{seed}:{i}:{v}") if format_modifiers > 0 else None
            sources = [(mods, modifiers, lambda r: r.choice(CONCEPTS["contexts"])),
                       (medium, medium_modifiers, medium_form),
                       (fmt, format_modifiers, lambda r: "{} " + r.choice(CONCEPTS["format_words"]))]
            caps = [caption(m, colour, background, rng, first_modifier(sources),
                            drop_medium_tags)
                    for _ in range(captions_per_variant)]
            if context > 0:
                places = random.Random(f"places:{seed}:{i}:{v}") if vocabulary else None
                caps = with_context(caps, context, random.Random(seed * 9_000_011 + i * 131 + v), places,
                                    random_places, vocabulary)
            if known:
                caps = with_made_up_names(caps, made_up_names, random.Random(f"names:{seed}:{i}:{v}"), known)
            out.append(Variant(i, fg, bg, rng.uniform(0.72, 0.84), rng.uniform(-0.03, 0.03),
                               rng.uniform(-0.03, 0.03), caps, fg2))
    return out


def recipe_variants(config: str | Path, overrides: list[str], pack: str | Path) -> tuple[list[dict], list[Variant]]:
    """The pack's icons and the variants a run with this recipe and these --set overrides trains on: for the CPU
    tools that must see a run's exact captions (scripts/caption_words.py, name_tune)."""
    cfg = load_config(config)
    for item in overrides:
        set_value(cfg, item)
    _, meta, _ = load_pack(pack)
    return meta, variants_for(meta, cfg["data"])


def variants_for(meta: list[dict], dcfg: dict) -> list[Variant]:
    """The variants a recipe's data section asks for: text pretraining and the UNet stage must read the same
    ones (the text stage once left out two_tone, so its encoder never saw "teal and orange" captions)."""
    return make_variants(meta, dcfg["variants_per_icon"], dcfg.get("captions_per_image", 1), dcfg["seed"],
                         dcfg.get("concept_boost", 1), dcfg.get("two_tone", 0.0), dcfg.get("context", 0.0),
                         dcfg.get("any_colour", 0.0), dcfg.get("modifiers", 0.0),
                         dcfg.get("drop_medium_tags", False), dcfg.get("medium_modifiers", 0.0),
                         dcfg.get("format_modifiers", 0.0), dcfg.get("random_places", 0.0),
                         dcfg.get("made_up_names", 0.0))


def split_duotone(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fill alpha, line alpha) in [0, 1] from uint8 duotone masks [B, 1, H, W]: the fill is the 20% level grown
    by 2 px, so the line's anti-aliased edges over the fill stay inside it and edges over the background stay
    plain (brand_icons draws the LoRA demo with it too)."""
    m = masks.float()
    region = F.max_pool2d(((m - FILL_LEVEL).abs() <= 17).float(), 5, stride=1, padding=2) > 0
    fill = torch.where(region, (m / FILL_LEVEL).clamp(0, 1), torch.zeros_like(m))
    line = torch.where(region, ((m - FILL_LEVEL) / (255 - FILL_LEVEL)).clamp(0, 1), m / 255)
    return fill, line


class Composer:
    """Masks on the training device; compose(variants) -> uint8 images [B, H, W, 3]."""

    def __init__(self, masks: np.ndarray, device: torch.device | str, out_size: int | None = None):
        self.masks = torch.from_numpy(masks).to(device)
        self.device = torch.device(device)
        self.size = out_size or masks.shape[-1]

    def alpha(self, icons, scale, dx, dy) -> torch.Tensor:
        """Each mask scaled about the centre and shifted: [B, 1, size, size] in [0, 1]."""
        m = self.masks[torch.as_tensor(icons, device=self.device)].unsqueeze(1).float().div(255)
        return self._place(m, scale, dx, dy)

    def _place(self, m: torch.Tensor, scale, dx, dy) -> torch.Tensor:
        s = torch.as_tensor(scale, device=self.device, dtype=torch.float32)
        theta = torch.zeros(len(m), 2, 3, device=self.device)
        theta[:, 0, 0] = theta[:, 1, 1] = 1 / s
        theta[:, 0, 2] = -torch.as_tensor(dx, device=self.device, dtype=torch.float32) * 2 / s
        theta[:, 1, 2] = -torch.as_tensor(dy, device=self.device, dtype=torch.float32) * 2 / s
        grid = F.affine_grid(theta, [len(m), 1, self.size, self.size], align_corners=False)
        return F.grid_sample(m, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def compose(self, variants: list[Variant]) -> torch.Tensor:
        a = self.alpha([v.icon for v in variants], [v.scale for v in variants], [v.dx for v in variants],
                       [v.dy for v in variants])
        fg = torch.tensor([v.fg for v in variants], device=self.device, dtype=torch.float32)[:, :, None, None]
        bg = torch.tensor([v.bg for v in variants], device=self.device, dtype=torch.float32)[:, :, None, None]
        img = bg * (1 - a) + fg * a
        two = [k for k, v in enumerate(variants) if v.fg2 is not None]
        if two:  # fill in the second colour under the line in the first
            picked = [variants[k] for k in two]
            fill, line = split_duotone(self.masks[torch.as_tensor([v.icon for v in picked], device=self.device)]
                                       .unsqueeze(1))
            both = self._place(torch.cat([fill, line], 1), [v.scale for v in picked], [v.dx for v in picked],
                               [v.dy for v in picked])
            fill, line = both[:, :1], both[:, 1:]
            fg2 = torch.tensor([v.fg2 for v in picked], device=self.device, dtype=torch.float32)[:, :, None, None]
            index = torch.as_tensor(two, device=self.device)
            under = bg[index] * (1 - fill) + fg2 * fill
            img[index] = under * (1 - line) + fg[index] * line
        return img.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def tokenizer_corpus(meta: list[dict], n: int = 60000, seed: int = 99) -> list[str]:
    """Text the tokenizer's BPE merges are learned from: training captions, negatives, the generic words."""
    from brandgen.tiny.tokenizer import generic_lines

    rng = random.Random(seed)
    train = [m for m in meta if not m.get("heldout")]
    lines = []
    for _ in range(n):
        m = rng.choice(train)
        _, _, colour, background = _colour_and_background(rng)
        lines.append(caption(m, colour, background, rng))
    return lines + NEGATIVES * 50 + generic_lines(20)


def synthetic_pack(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, list[dict]]:
    """A small pack of drawn shapes in the pack's format, for smoke runs and tests (no npm, no SVGs)."""
    from brandgen.tiny.data import SHAPES, Element, element_mask

    rng = random.Random(seed)
    masks, meta = [], []
    for i in range(n):
        shape, style = SHAPES[i % len(SHAPES)], ("outline", "filled")[(i // len(SHAPES)) % 2]
        el = Element(shape, "black", 0.5, 0.5, rng.uniform(0.8, 0.95), rng.uniform(-10, 10))
        masks.append((element_mask(el, "outline" if style == "outline" else "flat", size) * 255).astype(np.uint8))
        meta.append({"set": "tabler", "style": style, "name": shape.replace(" ", "-"), "phrase": shape,
                     "tags": ["shape", "geometry"], "category": "Shapes", "concept": None, "heldout": False})
    return np.stack(masks), meta


def glyph_weights(x: torch.Tensor, backgrounds: list[tuple[int, int, int]], weight: float) -> torch.Tensor:
    """[B, 1, H, W] loss weights for images x in [-1, 1]: 1 on each image's background colour, 1 + weight where a
    pixel differs from it. Icons are mostly canvas, so a plain pixel loss spends little on a thin line's hue."""
    if not weight:
        return torch.ones_like(x[:, :1])
    bg = torch.tensor(backgrounds, dtype=x.dtype, device=x.device)[:, :, None, None] / 127.5 - 1
    return 1 + weight * ((x - bg).abs().amax(dim=1, keepdim=True) > 0.08).to(x.dtype)


def to_pixels(images_uint8: torch.Tensor) -> torch.Tensor:
    """Composed uint8 images [B, H, W, 3] -> model input in [-1, 1], channels_last (what the convs prefer)."""
    return images_uint8.permute(0, 3, 1, 2).float().div(127.5).sub(1).contiguous(memory_format=torch.channels_last)


def from_pixels(x: torch.Tensor) -> np.ndarray:
    """A decoder's output [B, 3, H, W] in [-1, 1] -> uint8 images [B, H, W, 3], clamped and rounded (to_pixels'
    inverse)."""
    return x.detach().float().clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


class ImageSource:
    """Variants as an indexable image set: source[idx] -> uint8 [B, H, W, 3] on the composer's device."""

    def __init__(self, composer: Composer, variants: list[Variant]):
        self.composer, self.variants = composer, variants

    def __len__(self) -> int:
        return len(self.variants)

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, slice):
            picked = self.variants[index]
        else:
            picked = [self.variants[i] for i in torch.as_tensor(index).tolist()]
        return self.composer.compose(picked)
