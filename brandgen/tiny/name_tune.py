"""Teach a trained brandgen-tiny text encoder that a made-up name in a prompt changes nothing.

A designer types a brand name ("zorvex bell icon") and a LoRA puts its trigger first; run 11, trained on captions
without such words, drew "zorvex teal telephone icon" as a telephone 58% of the time against 100% without the name
(docs/TINY_MODEL.md). Retraining with data.made_up_names needs a GPU; this distils the encoder into itself on the
CPU instead: the student reads "zorvex, bell icon", "zorvex bell icon" or "bell icon by zorvex" and must give, at
every one of the 77 positions the UNet attends to, the frozen teacher's state for "bell icon" at the matching
position (the name's own tokens: the teacher's begin token, an attention sink, or the caption's end token). The
plain caption must keep its states too. The UNet, the autoencoder and the tokenizer are not touched.

    python -m brandgen.tiny.name_tune --model assets/brandgen-tiny --out DIR [--steps 700] [--set data.context=0.3 ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from brandgen.tiny.caption_options import NAME_FORMS, made_up_name, name_caption


def position_map(caption_tokens: int, name_tokens: int, form: int, length: int) -> list[int]:
    """For each position of the named prompt, the plain prompt's position whose state it must take. Forms: 0 and 1
    put the name's tokens right after the begin token (they map to it), 2 right before the end token (they map to
    the caption's end token); every other position is the plain one shifted past the name."""
    k, end = name_tokens, caption_tokens + 1
    if form < 2:
        out = [0 if p <= k else p - k for p in range(length)]
    else:
        out = [p if p < end else end if p <= end + k - 1 else p - k for p in range(length)]
    return [min(p, length - 1) for p in out]


def named_example(caption: str, rng: random.Random, known: frozenset[str], tokenizer) -> tuple[str, list[int]]:
    """The caption with a made-up name (as data.made_up_names writes it) and its position map."""
    name, form = made_up_name(rng, known), rng.randrange(NAME_FORMS)
    named = name_caption(caption, name, form)
    count = lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)  # noqa: E731
    n_caption = count(caption)
    return named, position_map(n_caption, count(named) - n_caption, form, tokenizer.model_max_length)


def tune(text_encoder, tokenizer, captions: list[str], known: frozenset[str], seconds: float = 600.0,
         max_steps: int = 100_000, lr: float = 1e-4, batch: int = 64, seed: int = 0) -> tuple[object, dict]:
    """A tuned copy of `text_encoder` (the original stays the teacher) and the run's figures."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    teacher = text_encoder.float().eval().requires_grad_(False)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    length = tokenizer.model_max_length
    ids = lambda texts: tokenizer(texts, padding="max_length", max_length=length, truncation=True,  # noqa: E731
                                  return_tensors="pt").input_ids
    log, step, start = [], 0, time.perf_counter()
    while step < max_steps and time.perf_counter() - start < seconds:
        plain = rng.sample(captions, min(batch, len(captions)))
        pairs = [named_example(c, rng, known, tokenizer) for c in plain]
        plain_ids, named_ids = ids(plain), ids([named for named, _ in pairs])
        with torch.no_grad():
            target = teacher(plain_ids).last_hidden_state
        index = torch.tensor([m for _, m in pairs])[..., None].expand(-1, -1, target.shape[-1])
        loss_named = F.mse_loss(student(named_ids).last_hidden_state, torch.gather(target, 1, index))
        loss_plain = F.mse_loss(student(plain_ids).last_hidden_state, target)
        opt.zero_grad()
        (loss_named + loss_plain).backward()
        opt.step()
        step += 1
        if step % 50 == 0 or step == 1:
            log.append({"step": step, "named": round(loss_named.item(), 5), "plain": round(loss_plain.item(), 5),
                        "seconds": round(time.perf_counter() - start, 1)})
            print(json.dumps(log[-1]), flush=True)
    return student.eval(), {"steps": step, "seconds": round(time.perf_counter() - start, 1), "lr": lr,
                            "batch": batch, "captions": len(captions), "log": log}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a saved brandgen-tiny folder")
    parser.add_argument("--out", required=True, help="a copy of it with the tuned text encoder")
    parser.add_argument("--pack", default=".work/icons/iconpack.npz")
    parser.add_argument("--config", default=str(Path(__file__).with_name("recipe.json")))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="recipe overrides for the captions (the model's own training options)")
    parser.add_argument("--captions", type=int, default=40_000, help="variants sampled, one caption each")
    parser.add_argument("--steps", type=int, default=700, help="steps of 64 captions (2-core CPU: ~0.9 s each)")
    parser.add_argument("--seconds", type=float, default=3600.0, help="a time limit as well")
    parser.add_argument("--lr", type=float, default=1e-4)
    args = parser.parse_args(argv)
    from transformers import CLIPTextModel, CLIPTokenizer

    from brandgen.tiny import icon_data
    from brandgen.tiny.caption_options import known_words

    meta, variants = icon_data.recipe_variants(args.config, args.set, args.pack)
    captions = [v.captions[0] for v in random.Random(0).sample(variants, min(args.captions, len(variants)))]
    tokenizer = CLIPTokenizer.from_pretrained(Path(args.model) / "tokenizer")
    encoder = CLIPTextModel.from_pretrained(Path(args.model) / "text_encoder", torch_dtype=torch.float32)
    student, report = tune(encoder, tokenizer, captions, known_words(meta), args.seconds, args.steps, args.lr)
    shutil.copytree(args.model, args.out, dirs_exist_ok=True)
    student.half().save_pretrained(Path(args.out) / "text_encoder")
    report.update(model=args.model, out=args.out, overrides=args.set)
    (Path(args.out) / "name_tune.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
