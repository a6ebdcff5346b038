"""Which words of a held-out phrasing derail brandgen-tiny: the held-out eval's prompts of one phrasing, then the
same concepts, colours and seeds with words taken out, scored like `python -m brandgen.tiny.icon_eval`.

A diagnosis, not the eval: the variants are training-like phrasings. Run 7 (2026-12-07): "gear ui icon, brown
color" 26% top-5, "gear ui icon, brown" 28%, "gear icon, brown color" 86%, "gear icon, brown" 98%: the word "ui"
between the concept and "icon" (a tag of 63 layout icons) is what the model takes for the concept.

    python scripts/phrasing_ablation.py --model .work/v2run7/model --out ablation.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from brandgen.tiny import icon_eval  # noqa: E402

HELD = "{word} ui icon, {color} color"
VARIANTS = {"held-out": HELD, "without 'color'": "{word} ui icon, {color}",
            "without 'ui'": "{word} icon, {color} color", "without both": "{word} icon, {color}"}


def ablate(pipe, phrasing: str, variants: dict[str, str], per_concept: int = 4) -> dict[str, dict]:
    """Each variant on the held-out items of `phrasing` (same concept word, colour and seed per item), from either
    held-out set (concepts.json heldout_, control_, blind_ or fresh_phrasings)."""
    sets = [name for name in icon_eval.PHRASING_SETS if phrasing in icon_eval.CONCEPTS[f"{name}_phrasings"]]
    if not sets:
        known = [p for name in icon_eval.PHRASING_SETS for p in icon_eval.CONCEPTS[f"{name}_phrasings"]]
        raise SystemExit(f"{phrasing!r} is not a held-out phrasing: {known}")
    items = [it for it in icon_eval.heldout_prompts(per_concept, phrasings=sets[0]) if it["phrasing"] == phrasing]
    out = {}
    for name, form in variants.items():
        chunk = [{**it, "prompt": form.format(word=it["word"], color=it["color"])} for it in items]
        summary = icon_eval.evaluate_pipeline(pipe, chunk, 28, 6.0, 25)
        out[name] = {"phrasing": form, "example": chunk[0]["prompt"], "n": len(chunk),
                     **{k: summary[k] for k in ("top1", "top5", "color_accuracy", "text_top1", "text_top5")}}
        print(json.dumps({name: out[name]}), flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="assets/brandgen-tiny")
    parser.add_argument("--phrasing", default=HELD,
                        help="one of concepts.json heldout_, control_, blind_ or fresh_phrasings")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=FORM",
                        help="a phrasing with {word} and {color} (repeatable; default: the 'ui icon' ablation)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    # the built-in variants are the ui phrasing's words; another phrasing gets only its own variants
    given = dict(v.split("=", 1) for v in args.variant)
    variants = VARIANTS if args.phrasing == HELD and not given else {"held-out": args.phrasing, **given}
    result = {"model": args.model, "variants": ablate(icon_eval.load_pipeline(args.model, args.device),
                                                      args.phrasing, variants)}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
