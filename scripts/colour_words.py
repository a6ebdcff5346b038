"""How exactly does a model draw a colour it is asked for by name or hex? (brandgen-tiny's colour vocabulary)

For each model and each `WORDS=HEX` pair, draws the LoRA demo's held subjects ("a shopping cart, teal") through
the icons template at the app's settings and reports the share of glyph pixels within the palette tolerance of HEX
(brandgen.metrics.foreground_palette_adherence). A model trained on 18 jittered named colours draws "teal" close to
its own teal; one trained on uniformly random colours named by family (data.any_colour) spreads a family wider;
neither need follow a hex code.

    python scripts/colour_words.py --model assets/brandgen-tiny .work/v2run8/model \
        --colours "#0f766e=#0f766e" "#f97360=#f97360" "teal=#0f766e" [--out colours.json]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_COLOURS = ("#0f766e=#0f766e", "#f97360=#f97360", "teal=#0f766e", "coral=#f97360")


def parse_colour(spec: str) -> tuple[str, str]:
    """'WORDS=#rrggbb' -> (words, hex): the words go into the prompt, the hex is what the pixels are scored on."""
    words, sep, hex_code = spec.rpartition("=")
    if not sep or not words.strip() or not re.fullmatch(r"#[0-9a-fA-F]{6}", hex_code.strip()):
        raise ValueError(f"{spec!r}: expected WORDS=#rrggbb")
    return words.strip(), hex_code.strip()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", required=True, help="saved model folders (or registry ids)")
    parser.add_argument("--colours", nargs="+", default=list(DEFAULT_COLOURS), help="WORDS=#rrggbb pairs")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=6.0)
    parser.add_argument("--guidance-until", type=float, default=0.5)
    parser.add_argument("--size", type=int, default=None, help="image side (default: the model's)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    try:
        colours = [parse_colour(c) for c in args.colours]
    except ValueError as exc:
        parser.error(str(exc))

    import torch
    from diffusers import DiffusionPipeline

    from brandgen.metrics import foreground_palette_adherence
    from brandgen.pipeline_call import guidance_interval_kwargs
    from brandgen.templates import build_prompt
    from brandgen.tiny.brand_icons import load_brand
    from brandgen.training.loading import resolve_base_model

    subjects = load_brand()["held_subjects"]
    result = {"subjects": subjects, "seeds": args.seeds, "steps": args.steps, "models": {}}
    for model in args.model:
        pipe = DiffusionPipeline.from_pretrained(resolve_base_model(model, None)[0], torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        size = args.size or pipe.unet.config.sample_size * pipe.vae_scale_factor
        scores = {}
        for words, hex_code in colours:
            values = []
            for subject in subjects:
                pair = build_prompt(f"a {subject}, {words}", "icons")
                for seed in range(args.seeds):
                    with torch.inference_mode():
                        image = pipe(prompt=pair.prompt, negative_prompt=pair.negative, num_inference_steps=args.steps,
                                     guidance_scale=args.guidance, width=size, height=size,
                                     generator=torch.Generator().manual_seed(seed),
                                     **guidance_interval_kwargs(pipe, args.steps, args.guidance_until)).images[0]
                    values.append(foreground_palette_adherence(image, [hex_code]))
            scores[f"{words} -> {hex_code}"] = round(statistics.mean(values), 3)
        result["models"][model] = scores
        print(model, json.dumps(scores), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
