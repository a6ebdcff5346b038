"""brandgen-tiny v2's held-out evaluation: the text-side ranks that split encoder errors from UNet errors."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from script_loader import load_script

from brandgen.tiny import icon_eval, model, recipe


@pytest.fixture(scope="module")
def text_parts():
    torch.manual_seed(0)
    comps = model.build_components(recipe.load_config(smoke=True))
    comps["text_encoder"].eval()
    return comps["tokenizer"], comps["text_encoder"]


def test_text_side_rank_is_one_for_the_reference_phrase_itself(text_parts):
    tokenizer, text = text_parts
    pipe = SimpleNamespace(tokenizer=tokenizer, text_encoder=text)
    items = icon_eval.heldout_prompts(1)
    exact = [{**it, "prompt": f"{it['concept']} icon"} for it in items]
    assert icon_eval.text_side_ranks(pipe, exact) == [1] * len(exact)
    ranks = icon_eval.text_side_ranks(pipe, items)
    assert len(ranks) == len(items) and all(1 <= r <= len(items) for r in ranks)
    assert len(set(ranks)) > 1  # an untrained encoder does not put every held-out phrasing first


def test_evaluate_pipeline_reports_text_and_image_ranks(text_parts):
    tokenizer, text = text_parts

    class BlankPipeline:
        def __init__(self):
            self.tokenizer, self.text_encoder = tokenizer, text

        def __call__(self, prompts, **_):  # a blank page: no foreground, so no colour
            return SimpleNamespace(images=[Image.fromarray(np.full((64, 64, 3), 255, np.uint8)) for _ in prompts])

    items = icon_eval.heldout_prompts(1)[:10]
    summary = icon_eval.evaluate_pipeline(BlankPipeline(), items, steps=1, batch=4)
    rows = summary["results"]
    assert summary["color_accuracy"] == 0 and all(r["pred_color"] is None for r in rows)
    assert [r["text_rank"] for r in rows] == icon_eval.text_side_ranks(BlankPipeline(), items)
    assert summary["text_top5"] == sum(r["text_rank"] <= 5 for r in rows) / len(rows)
    both = [r["top5"] for r in rows if r["text_rank"] <= 5]
    assert summary["image_top5_given_text_top5"] == (sum(both) / len(both) if both else 0)


def test_summary_breaks_top5_down_by_phrasing():
    items = icon_eval.heldout_prompts(2)
    phrasings = icon_eval.CONCEPTS["heldout_phrasings"]
    assert {it["phrasing"] for it in items} == set(phrasings)
    for it in items:
        word = next(w for w in icon_eval.CONCEPTS["concepts"][it["concept"]]["words"]
                    if it["phrasing"].format(word=w, color=it["color"]) == it["prompt"])
        assert word
    hits = {phrasings[0]: True, phrasings[1]: False}
    rows = [{**it, "top1": False, "top5": hits.get(it["phrasing"], i % 2 == 0), "color_ok": True}
            for i, it in enumerate(items)]
    by = icon_eval.summarise(rows)["top5_by_phrasing"]
    assert by[phrasings[0]] == 1.0 and by[phrasings[1]] == 0.0 and set(by) == set(phrasings)
    rest = [r["top5"] for r in rows if r["phrasing"] == phrasings[2]]
    assert by[phrasings[2]] == round(sum(rest) / len(rest), 4)


class _ChannelSwapVAE:
    """Encodes to the pixels themselves and decodes with red and blue swapped: a VAE that loses hues."""

    config = SimpleNamespace(sample_size=64)

    def encode(self, x):
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=x))

    def decode(self, z):
        return SimpleNamespace(sample=z[:, [2, 1, 0]])


class _IdentityVAE(_ChannelSwapVAE):
    def decode(self, z):
        return SimpleNamespace(sample=z)


def test_vae_colour_round_trip_finds_the_colours_a_vae_loses():
    from brandgen.tiny import icon_data

    masks, meta = icon_data.synthetic_pack(24, 64, seed=1)
    kept = icon_eval.vae_colour_round_trip(_IdentityVAE(), masks, meta)
    swapped = icon_eval.vae_colour_round_trip(_ChannelSwapVAE(), masks, meta)
    assert "white" not in kept and all(v == 1.0 for v in kept.values())
    assert swapped["red"] == 0.0 and swapped["blue"] == 0.0  # red <-> blue
    assert swapped["gray"] == 1.0 and swapped["black"] == 1.0  # neutral colours do not care


@pytest.mark.parametrize("other", ["control", "blind", "fresh"])
def test_later_held_out_sets_ask_for_the_same_concepts_colours_and_seeds_in_other_words(other: str):
    held, control = icon_eval.heldout_prompts(2), icon_eval.heldout_prompts(2, phrasings=other)
    assert {it["phrasing"] for it in control} == set(icon_eval.CONCEPTS[f"{other}_phrasings"])
    key = lambda it: (it["concept"], it["word"], it["color"], it["seed"])  # noqa: E731
    assert sorted(map(key, held)) == sorted(map(key, control))
    assert not {it["prompt"] for it in held} & {it["prompt"] for it in control}
    for it in control:
        assert it["phrasing"].format(word=it["word"], color=it["color"]) == it["prompt"]


def test_phrasing_ablation_takes_its_items_from_either_held_out_set(text_parts):
    ablation = load_script("phrasing_ablation")
    tokenizer, text = text_parts
    asked = []

    class RecordingPipeline:
        def __init__(self):
            self.tokenizer, self.text_encoder = tokenizer, text

        def __call__(self, prompts, **_):
            asked.extend(prompts)
            return SimpleNamespace(images=[Image.fromarray(np.full((64, 64, 3), 255, np.uint8)) for _ in prompts])

    badge = "{color} {word} badge for a tablet kiosk"
    out = ablation.ablate(RecordingPipeline(), badge, {"held-out": badge, "no badge": "{color} {word} icon"}, 1)
    items = [it for it in icon_eval.heldout_prompts(1, phrasings="control") if it["phrasing"] == badge]
    assert out["held-out"]["n"] == out["no badge"]["n"] == len(items) > 5
    assert asked == [it["prompt"] for it in items] + [f"{it['color']} {it['word']} icon" for it in items]
    with pytest.raises(SystemExit, match="not a held-out phrasing"):
        ablation.ablate(RecordingPipeline(), "{word} banner", {}, 1)
