"""How captions say more than the icon: where it goes (contexts, made-up places), the medium ("app", "ui"),
modifiers next to the concept word and made-up names (a brand, a LoRA trigger). Each option draws from its own
generator (make_variants), so turning one on leaves every other caption as earlier runs had it; concepts.json holds
the word lists.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from pathlib import Path

from brandgen.tiny.data import article

CONCEPTS = json.loads(Path(__file__).with_name("concepts.json").read_text(encoding="utf-8"))
MEDIUM_WORDS = frozenset(CONCEPTS["medium_words"])  # tags naming the medium: never a concept word with drop_medium_tags
# the medium words a caption can put next to the concept word (data.medium_modifiers); "icon", "glyph" ... are the
# phrasings' own nouns already
MEDIUM_MODIFIERS = sorted(MEDIUM_WORDS - {"icon", "icons", "glyph", "symbol", "symbols"})


def with_context(captions: list[str], share: float, rng: random.Random, places: random.Random | None = None,
                 place_share: float = 0.0, vocabulary: list[str] | None = None) -> list[str]:
    """About `share` of the captions with a context phrase before or after them (see make_variants); place_share
    of those name a made-up place of one or two `vocabulary` words instead, never before the caption."""
    out = []
    for cap in captions:
        if rng.random() >= share:
            out.append(cap)
            continue
        where = rng.choice(CONCEPTS["contexts"])
        form = rng.randrange(3)
        if places and vocabulary and places.random() < place_share:
            where = " ".join(places.choice(vocabulary) for _ in range(places.randint(1, 2)))
            form = min(form, 1)  # "kiosk bell icon" would read as a compound subject
        out.append(f"{cap} for {article(where)} {where}" if form == 0 else f"{cap}, {where}" if form == 1
                   else f"{where} {cap}")
    return out


def place_vocabulary(meta: list[dict]) -> list[str]:
    """Words of the training icons' names and tags (3+ letters), less the control phrasings' words: the made-up
    places of data.random_places, so the control set still meets its places' words unseen."""
    control = {w for p in CONCEPTS["control_phrasings"] for w in re.findall(r"[a-z]+", p.replace("{word}", ""))}
    words = {w for m in meta if not m.get("heldout")
             for t in [m.get("phrase") or "", *(m.get("tags") or [])] for w in re.findall(r"[a-z]+", t.lower())}
    stems = [c for c in control if len(c) >= 4]  # "tablets", "reports": the control words' own forms stay out too
    return sorted(w for w in words - control if len(w) >= 3 and not any(w.startswith(c) for c in stems))


def medium_form(rng: random.Random) -> str:
    word = rng.choice(MEDIUM_MODIFIERS)
    return f"{word} {{}}" if rng.random() < 0.5 else f"{{}} {word}"


def first_modifier(sources: list[tuple[random.Random | None, float, Callable[[random.Random], str]]]) -> str | None:
    """The first source (own generator, share, form) that fires: a context word, else a medium word, else a
    format noun; each source draws from its own generator, so one at 0 leaves the others' captions as they were."""
    for rng, share, form in sources:
        if rng and rng.random() < share:
            return form(rng)
    return None


_ONSETS = "b c d f g h j k l m n p r s t v w z br cr dr fl gr kl pr qu st tr vr zh".split()
_VOWELS = "a e i o u y ae ia io ou".split()
_CODAS = ["", "", "", "n", "r", "x", "s", "l", "m", "th", "ck"]


def made_up_name(rng: random.Random, known: frozenset[str] | set[str]) -> str:
    """A word no caption otherwise has: a pronounceable brand-like one ("zorvex", "quantrix") three times in four,
    else a trigger-like letter string ("qxv"); never one of `known` (icon names, tags, held-out words)."""
    while True:
        if rng.random() < 0.75:
            word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                           for _ in range(rng.randint(2, 3)))
        else:
            word = "".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(rng.randint(3, 6)))
        if word not in known:
            return word


NAME_FORMS = 3  # name_caption's forms: 0 and 1 put the name first, 2 after the caption


def name_caption(caption: str, name: str, form: int) -> str:
    """The caption with a name first as a trigger ("zorvex, bell icon"), before it ("zorvex bell icon") or after
    it ("bell icon by zorvex")."""
    return f"{name}, {caption}" if form == 0 else f"{name} {caption}" if form == 1 else f"{caption} by {name}"


def with_made_up_names(captions: list[str], share: float, rng: random.Random, known: frozenset[str]) -> list[str]:
    """About `share` of the captions with a made-up name in one of name_caption's forms."""
    out = []
    for cap in captions:
        if rng.random() >= share:
            out.append(cap)
            continue
        name, form = made_up_name(rng, known), rng.randrange(NAME_FORMS)
        out.append(name_caption(cap, name, form))
    return out


def icon_words(meta: list[dict]) -> set[str]:
    """The words of the icons' names, phrases and tags (held-out icons too)."""
    return {w for m in meta for t in [m.get("phrase") or "", m.get("name") or "", *(m.get("tags") or [])]
            for w in re.findall(r"[a-z]+", t.lower())}


def known_words(meta: list[dict]) -> frozenset[str]:
    """Every word a made-up name must not be: the icons' names and tags and the held-out phrasings' words."""
    words = icon_words(meta)
    for key in (k for k in CONCEPTS if k.endswith("_phrasings")):  # every held-out set, later ones too
        words |= {w for p in CONCEPTS[key] for w in re.findall(r"[a-z]+", p)}
    return frozenset(words)
