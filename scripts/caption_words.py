"""How often each word of the held-out phrasings occurs in a recipe's training captions.

A held-out phrasing only measures generalisation if its words were not trained in that role; this counts, for the
exact variants a training run builds from the pack (recipe + the run's --set overrides), every word of each set in
concepts.json (heldout, control, blind, fresh), and lists which of them are words of the icons' names or tags (an
unseen word that names an icon of its own can still take over the drawing). Run 11's options, 2026-12-07:

    python scripts/caption_words.py --set data.context=0.3 --set data.modifiers=0.3 --set data.drop_medium_tags=true \
        --set data.medium_modifiers=0.4 --set data.random_places=0.5 --set data.format_modifiers=0.3 --out words.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from brandgen.tiny import icon_data  # noqa: E402
from brandgen.tiny.caption_options import icon_words  # noqa: E402
from brandgen.tiny.icon_eval import PHRASING_SETS  # noqa: E402


def caption_word_counts(variants) -> Counter:
    return Counter(w for v in variants for c in v.captions for w in re.findall(r"[a-z]+", c.lower()))


def phrasing_word_counts(counts: Counter, phrasings: list[str]) -> dict[str, int]:
    """Each word of the phrasings (placeholders left out) with its count in the captions."""
    words = {w for p in phrasings for w in re.findall(r"[a-z]+", p.replace("{word}", "").replace("{color}", ""))}
    return {w: counts.get(w, 0) for w in sorted(words)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="brandgen/tiny/recipe.json")
    parser.add_argument("--pack", default=".work/icons/iconpack.npz")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    meta, variants = icon_data.recipe_variants(args.config, args.set, args.pack)
    counts = caption_word_counts(variants)
    sets = {name: phrasing_word_counts(counts, icon_data.CONCEPTS[f"{name}_phrasings"]) for name in PHRASING_SETS}
    names_and_tags = icon_words(meta)  # a later set's words should not be icons of their own either
    in_icon_words = {name: sorted(w for w in words if w in names_and_tags) for name, words in sets.items()}
    result = {"variants": len(variants), "distinct_words": len(counts), "overrides": args.set, "sets": sets,
              "in_icon_names_or_tags": in_icon_words}
    print(json.dumps({"sets": sets, "in_icon_names_or_tags": in_icon_words}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
