"""brandgen-tiny v2 data: icon-set readers, SVG rendering, the pack builder, captions and composition."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from brandgen.tiny import icon_data, icon_eval, icon_sets, icons

CIRCLE = (b'<svg xmlns="http://www.w3.org/2000/svg" width="24" height="24" viewBox="0 0 24 24" fill="none" '
          b'stroke="currentColor" stroke-width="2"><circle cx="12" cy="12" r="8"/></svg>')
BAR = b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 256 256"><rect x="40" y="100" width="176" height="56"/></svg>'


def _fake_sets(root: Path) -> dict[str, Path]:
    """Unpacked packages laid out like the real ones, with one brand icon in each that must be left out."""
    t = root / "tabler"
    (t / "icons" / "outline").mkdir(parents=True)
    meta = {"bell": {"name": "bell", "category": "System", "tags": ["alarm", "notification"],
                     "styles": {"outline": {}}},
            "home-2": {"name": "home-2", "category": "Buildings", "tags": ["house"], "styles": {"outline": {}}},
            "brand-github": {"name": "brand-github", "category": "Brand", "tags": [], "styles": {"outline": {}}}}
    (t / "icons.json").write_text(json.dumps(meta))
    for name in meta:
        (t / "icons" / "outline" / f"{name}.svg").write_bytes(CIRCLE)
    lu = root / "lucide"
    (lu / "icons").mkdir(parents=True)
    (lu / "tags.json").write_text(json.dumps({"bell": ["alarm"], "github": ["code"]}))
    for name in ("bell", "github"):
        (lu / "icons" / f"{name}.svg").write_bytes(CIRCLE)
    ph = root / "phosphor"
    (ph / "dist").mkdir(parents=True)
    (ph / "dist" / "index.mjs").write_text(
        'var e = ((i) => (i.BRAND = "brands", i.SYSTEM = "system", i))(e || {});\nconst n = [\n'
        '  { name: "bell", categories: [e.SYSTEM], tags: ["*new*", "alarm"] },\n'
        '  { name: "dribbble-logo", categories: [e.BRAND], tags: ["social"] },\n];\n')
    for style in ("regular", "fill", "duotone"):
        (ph / "assets" / style).mkdir(parents=True)
        for name in ("bell", "dribbble-logo"):
            stem = name if style == "regular" else f"{name}-{style}"
            (ph / "assets" / style / f"{stem}.svg").write_bytes(BAR)
    fl = root / "fluent"
    (fl / "icons").mkdir(parents=True)
    for name in ("alert_24_regular", "alert_24_filled", "alert_20_regular"):
        (fl / "icons" / f"{name}.svg").write_bytes(CIRCLE.replace(b"currentColor", b"none").replace(b'fill="none"', b""))
    return {"tabler": t, "lucide": lu, "phosphor": ph, "fluent": fl}


def test_readers_leave_out_brands_and_keep_names_tags_and_styles(tmp_path):
    records = list(icon_sets.iter_icons(_fake_sets(tmp_path)))
    got = {(r.set, r.style, r.name) for r in records}
    assert ("tabler", "outline", "bell") in got and ("lucide", "outline", "bell") in got
    assert {("phosphor", s, "bell") for s in ("regular", "fill", "duotone")} <= got
    assert {("fluent", "regular", "alert"), ("fluent", "filled", "alert")} <= got
    assert not any("github" in n or "dribbble" in n for _, _, n in got)  # brand marks, in every set
    assert ("fluent", "regular", "alert_20_regular") not in got and len(records) == 8
    bell = next(r for r in records if r.set == "phosphor")
    assert bell.tags == ["alarm"] and bell.category == "system"  # "*new*" markers dropped
    assert icons.clean_phrase(next(r for r in records if r.name == "home-2").phrase) == "home"


def test_render_mask_draws_strokes_in_the_viewbox_at_the_asked_size():
    mask = icons.render_mask(CIRCLE, 64)
    assert mask.shape == (64, 64) and mask.dtype == np.uint8
    assert mask[32, 32] == 0 and mask[32, 32 - 21] > 200  # hollow centre, stroke at r = 8/24 of the canvas
    q = icons.quantize(mask)
    assert len(np.unique(q)) <= icons.LEVELS and np.abs(q.astype(int) - mask).max() <= 9
    wide = icons.render_mask(BAR, 64)  # a 256-unit viewBox scales the same way
    assert wide[32, 32] == 255 and wide[5, 32] == 0


def test_fetch_refuses_a_tarball_that_does_not_match_its_pinned_integrity(tmp_path):
    spec = icon_sets.SETS["lucide"]
    bad = tmp_path / f"lucide-{spec.version}.tgz"
    bad.write_bytes(b"not the package")
    with pytest.raises(icon_sets.FetchError, match="integrity"):
        icon_sets.fetch(spec, tmp_path)
    assert not bad.exists()  # removed, so the next build fetches it again


def test_build_writes_a_pack_with_held_out_concept_icons_and_notices(tmp_path, monkeypatch):
    roots = _fake_sets(tmp_path / "sets")
    monkeypatch.setattr(icon_sets, "fetch", lambda s, cache: roots[s.key])
    summary = icons.build(tmp_path / "pack.npz", tmp_path / "cache", size=32, workers=1)
    masks, meta, stored = icons.load_pack(tmp_path / "pack.npz")
    assert masks.shape == (8, 32, 32) and len(meta) == 8 and stored["icons"] == 8 == summary["icons"]
    by = {(m["set"], m["style"], m["name"]): m for m in meta}
    # "bell" is concept 4 of concepts.json -> its tabler icon is held out; the other sets' bells train
    assert all(m["concept"] == "bell" for k, m in by.items() if k[2] in ("bell", "alert"))
    assert by[("tabler", "outline", "bell")]["heldout"] and not by[("lucide", "outline", "bell")]["heldout"]
    assert summary["train_icons"] == 7 and summary["per_set"]["phosphor"] == 3
    notices = (tmp_path / "THIRD_PARTY_NOTICES.txt").read_text()
    assert "Microsoft Corporation" in notices and "@phosphor-icons/core 2.1.1" in notices


def _meta(concept: str | None = "bell") -> dict:
    return {"set": "fluent", "style": "regular", "name": "alert", "phrase": "alert", "tags": ["alarm"],
            "category": "", "concept": concept, "heldout": False}


def test_captions_name_the_icon_colour_and_background_but_never_the_held_out_phrasings():
    variants = icon_data.make_variants([_meta(), {**_meta(None), "name": "x"}], 40, 3, seed=0)
    assert len(variants) == 80 and variants[0].captions == icon_data.make_variants([_meta()], 40, 3, 0)[0].captions
    held = ["symbol for a mobile app", "pictogram", "glyph", "ui icon"]
    words = icon_data.CONCEPTS["concepts"]["bell"]["words"]
    for v in variants[:40]:
        for cap in v.captions:
            assert not any(h in cap for h in held)
            assert any(w in cap for w in [*words, "alert", "alarm"]), cap
    colour_named = sum(any(n in c or icon_data.hex_of(v.fg)[:3] in c for n in icon_data.COLORS for c in v.captions)
                       for v in variants)
    assert colour_named == len(variants)
    assert any("fluent" in c for v in variants for c in v.captions)  # the set's style word
    boosted = icon_data.make_variants([_meta(), _meta(None)], 2, 1, seed=0, concept_boost=3)
    assert sum(v.icon == 0 for v in boosted) == 6 and sum(v.icon == 1 for v in boosted) == 2


def _caption_changes(before: list, after: list) -> list[tuple[str, str]]:
    """The (before, after) captions that differ between two variant lists whose images must be the same."""
    changed = []
    for old, new in zip(before, after):
        assert (old.icon, old.fg, old.bg, old.scale, old.fg2) == (new.icon, new.fg, new.bg, new.scale, new.fg2)
        changed += [(a, b) for a, b in zip(old.captions, new.captions) if a != b]
    return changed


def test_context_captions_say_where_the_icon_goes_and_keep_everything_else():
    plain = icon_data.make_variants([_meta(), _meta(None)], 50, 3, seed=5)
    ctx = icon_data.make_variants([_meta(), _meta(None)], 50, 3, seed=5, context=0.3)
    contexts = icon_data.CONCEPTS["contexts"]
    held = [w for p in icon_data.CONCEPTS["heldout_phrasings"] for w in p.replace(",", " ").split() if "{" not in w]
    assert not {w for c in contexts for w in c.split()} & set(held) - {"a", "for", "in", "icon"}
    changed = _caption_changes(plain, ctx)
    for a, b in changed:
        rest = b.replace(a, "", 1)
        assert a in b and any(c in rest for c in contexts), (a, b)
    assert 0.2 <= len(changed) / (len(plain) * 3) <= 0.4


def test_modifier_captions_put_a_context_word_after_the_concept_and_keep_everything_else():
    """"bell dashboard icon": the word before "icon" is not always the concept, so "gear ui icon" can mean a gear."""
    plain = icon_data.make_variants([_meta(), _meta(None)], 50, 3, seed=5, context=0.3)
    mod = icon_data.make_variants([_meta(), _meta(None)], 50, 3, seed=5, context=0.3, modifiers=0.3)
    contexts = icon_data.CONCEPTS["contexts"]
    changed = _caption_changes(plain, mod)
    for a, b in changed:
        inserted = [c for c in contexts if f" {c}" in b and b.replace(f" {c}", "", 1) == a]
        assert inserted, (a, b)  # the same caption with one context word added after a word
    assert 0.2 <= len(changed) / (len(plain) * 3) <= 0.4
    compounds = [c for v in mod for c in v.captions if re.search(r"\bbell (%s) icon\b" % "|".join(contexts), c)]
    assert compounds  # the compound lands between the concept and "icon"
    for seed in (0, 5):  # drawn apart from the context phrases (seed 0 once gave both the same generator)
        both = icon_data.make_variants([_meta()], 200, 3, seed=seed, context=0.3, modifiers=0.3)
        echoed = [c for v in both for c in v.captions if any(c.count(w) >= 2 for w in contexts)]
        assert len(echoed) < 0.02 * 600, echoed[:5]  # tied: 23% at seed 0 ("bell menu icon, menu")


def test_medium_tags_are_never_the_concept_word_when_dropped():
    """An icon set tags its layout icons "ui" and its app window "app"; with drop_medium_tags a caption never names
    the icon by such a tag (other tags still)."""
    meta = [{**_meta(), "tags": ["ui", "alarm"]},
            {**_meta(None), "name": "x", "phrase": "x", "tags": ["app", "mobile"]}]
    kept = icon_data.make_variants(meta, 60, 3, seed=1)
    held = {w for p in icon_data.CONCEPTS["heldout_phrasings"] for w in p.replace(",", " ").split() if "{" not in w}
    assert {"ui", "app", "mobile", "glyph"} <= icon_data.MEDIUM_WORDS and held & icon_data.MEDIUM_WORDS
    dropped = icon_data.make_variants(meta, 60, 3, seed=1, drop_medium_tags=True)
    words = lambda variants: {w for v in variants for c in v.captions for w in re.findall(r"[a-z]+", c)}  # noqa: E731
    assert {"ui", "app", "mobile", "alarm"} <= words(kept)
    assert not {"ui", "app", "mobile"} & words(dropped) and "alarm" in words(dropped)


def test_medium_modifiers_put_a_medium_word_before_or_after_the_concept_and_keep_everything_else():
    """"app bell icon", "bell ui icon": what a designer means by the medium words that run 9-short still drew as
    layouts; off (0) the captions are those of earlier runs."""
    opts = dict(context=0.3, modifiers=0.3, drop_medium_tags=True)
    plain = icon_data.make_variants([_meta(), _meta(None)], 50, 3, seed=5, **opts)
    assert [v.captions for v in plain] == [v.captions for v in icon_data.make_variants(
        [_meta(), _meta(None)], 50, 3, seed=5, medium_modifiers=0.0, **opts)]
    med = icon_data.make_variants([_meta(), _meta(None)], 50, 3, seed=5, medium_modifiers=0.4, **opts)
    changed = _caption_changes(plain, med)
    before = after = 0
    for a, b in changed:
        a, b = a.replace(" an ", " a "), b.replace(" an ", " a ")  # "an alarm" -> "a mobile alarm"
        hit = [w for w in icon_data.MEDIUM_MODIFIERS if a in (b.replace(f" {w} ", " ", 1), b.replace(f"{w} ", "", 1),
                                                              b.replace(f" {w}", "", 1))]
        assert hit, (a, b)
        before += any(re.search(rf"\b{w} (bell|alert|alarm|notification)", b) for w in hit)
        after += any(re.search(rf"(bell|alert|alarm|notification) {w}\b", b) for w in hit)
    assert 0.15 <= len(changed) / (len(plain) * 3) <= 0.4  # 0.4 of the ~70% without a context modifier
    assert before > 5 and after > 5
    used = {w for _, b in changed for w in re.findall(r"[a-z]+", b)} & set(icon_data.MEDIUM_MODIFIERS)
    assert {"ui", "app", "mobile"} <= used and not {"icon", "glyph", "symbol"} & set(icon_data.MEDIUM_MODIFIERS)


def test_format_modifiers_put_a_format_noun_after_the_concept_and_leave_other_options_alone():
    """"bell decal icon": a noun after the concept says what it is drawn as; the other modifiers are unchanged."""
    opts = dict(context=0.3, modifiers=0.3, drop_medium_tags=True, medium_modifiers=0.4)
    plain = icon_data.make_variants([_meta(), _meta(None)], 50, 3, seed=3, **opts)
    fmt = icon_data.make_variants([_meta(), _meta(None)], 50, 3, seed=3, format_modifiers=0.4, **opts)
    changed = _caption_changes(plain, fmt)
    formats = icon_data.CONCEPTS["format_words"]
    for a, b in changed:
        hit = [w for w in formats if re.search(rf"\b(bell|alert|alarm|notification) {w}\b", b)
               and b.replace(f" {w}", "", 1).replace(" an ", " a ") == a.replace(" an ", " a ")]
        assert hit, (a, b)
    share = len(changed) / (len(plain) * 3)
    assert 0.1 <= share <= 0.3  # 0.4 of the ~42% with neither a context nor a medium modifier
    assert len({w for _, b in changed for w in formats if f" {w}" in b}) >= 6


def test_random_places_name_made_up_places_after_the_caption_from_the_icons_words_but_not_the_controls():
    """"bell icon for a rocket ledger": what follows "for a" is a place, whatever it names; the control phrasings'
    place words (tablet, kiosk, report ...) stay out of it, and 0 leaves the captions of earlier runs."""
    rocket = {**_meta(None), "name": "rocket", "phrase": "rocket", "tags": ["launch", "tablet", "tablets", "ledger"]}
    meta = [_meta(), rocket]
    vocab = icon_data.place_vocabulary(meta)
    assert {"rocket", "launch", "ledger", "alarm", "alert"} <= set(vocab) and not {"tablet", "tablets"} & set(vocab)
    opts = dict(context=0.5, modifiers=0.3, drop_medium_tags=True)
    plain = icon_data.make_variants(meta, 40, 3, seed=4, **opts)
    assert [v.captions for v in plain] == [v.captions for v in icon_data.make_variants(
        meta, 40, 3, seed=4, random_places=0.0, **opts)]
    placed = icon_data.make_variants(meta, 40, 3, seed=4, random_places=0.5, **opts)
    changed, places = _caption_changes(plain, placed), set()
    for a, b in changed:
        tail = re.search(r"(?: for an? |, )([a-z]+(?: [a-z]+)?)$", b)
        assert tail and set(tail.group(1).split()) <= set(vocab), (a, b)  # after the caption, icon words only
        assert b[:tail.start()] in a, (a, b)  # the same caption, only its context phrase swapped
        places.update(tail.group(1).split())
    share = len(changed) / (len(plain) * 3)
    assert 0.15 <= share <= 0.35  # half of the ~50% with a context phrase
    assert len(places) >= 5 and "tablet" not in places  # a tag of the rocket, and a control phrasing's word


def test_made_up_names_come_first_before_or_after_a_caption_and_are_never_an_icon_or_held_out_word():
    """"zorvex, bell icon", "zorvex bell icon", "bell icon by zorvex": a brand name or a LoRA trigger is a word the
    model never met; the rest of the caption stays as it was, and 0 leaves the captions of earlier runs."""
    rocket = {**_meta(None), "name": "rocket", "phrase": "rocket", "tags": ["launch"]}
    meta = [_meta(), rocket]
    known = icon_data.known_words(meta)
    assert {"rocket", "launch", "alarm", "alert", "hero", "kiosk", "ui"} <= known
    opts = dict(context=0.3, modifiers=0.3, drop_medium_tags=True, random_places=0.5)
    plain = icon_data.make_variants(meta, 40, 3, seed=5, **opts)
    assert [v.captions for v in plain] == [v.captions for v in icon_data.make_variants(
        meta, 40, 3, seed=5, made_up_names=0.0, **opts)]
    named = icon_data.make_variants(meta, 40, 3, seed=5, made_up_names=0.3, **opts)
    changed, names, forms = _caption_changes(plain, named), set(), set()
    for a, b in changed:
        for form, pattern in (("first", rf"^([a-z]+), {re.escape(a)}$"), ("before", rf"^([a-z]+) {re.escape(a)}$"),
                              ("after", rf"^{re.escape(a)} by ([a-z]+)$")):
            hit = re.match(pattern, b)
            if hit:
                names.add(hit.group(1))
                forms.add(form)
                break
        else:
            raise AssertionError((a, b))
    assert 0.2 <= len(changed) / (len(plain) * 3) <= 0.4
    assert forms == {"first", "before", "after"} and len(names) > 0.9 * len(changed) and not names & known
    assert any(not re.search("[aeiouy]", n) for n in names)  # trigger-like letter strings too


def test_control_phrasings_share_no_word_with_what_training_captions_are_made_of():
    """The second held-out set stays unseen with every caption option on: no context, medium or template word."""
    control = icon_data.CONCEPTS["control_phrasings"]
    words = {w for p in control for w in re.findall(r"[a-z]+", p.replace("{word}", "").replace("{color}", ""))}
    words -= {"a", "for", "in"}
    assert len(control) == 4 and len(words) >= 10
    contexts = {w for c in icon_data.CONCEPTS["contexts"] for w in c.split()}
    held = {w for p in icon_data.CONCEPTS["heldout_phrasings"] for w in re.findall(r"[a-z]+", p)}
    templates = {w for t in icon_data.TEMPLATES.values() for part in t for w in re.findall(r"[a-z]+", part)}
    formats = set(icon_data.CONCEPTS["format_words"])
    assert not words & (contexts | icon_data.MEDIUM_WORDS | held | templates | formats)
    every = icon_data.make_variants([_meta(), _meta(None)], 60, 3, seed=2, context=0.3, modifiers=0.3,
                                    drop_medium_tags=True, medium_modifiers=0.4, two_tone=0.5, any_colour=0.2,
                                    format_modifiers=0.4, random_places=0.5, made_up_names=0.3)
    seen = {w for v in every for c in v.captions for w in re.findall(r"[a-z]+", c)}
    assert "ui" in seen and not words & seen


def test_icon_words_are_the_names_phrases_and_tags_and_made_up_names_avoid_them_and_the_held_out_sets():
    from brandgen.tiny.caption_options import icon_words, known_words

    meta = [_meta(), {**_meta(None), "name": "rocket-ship", "phrase": "rocket ship", "tags": ["Launch", "space"]}]
    assert icon_words(meta) == {"alert", "alarm", "rocket", "ship", "launch", "space"}
    assert icon_words(meta) | {"signage", "quarterly"} <= known_words(meta)


@pytest.mark.parametrize("name", ["blind", "fresh"])
def test_late_held_out_sets_use_no_word_of_the_earlier_sets_or_of_captions_with_every_option_on(name: str):
    """The third and fourth held-out sets: beyond "for", "a", "an", "the", "in", none of their words is in a caption
    (here of two synthetic icons; scripts/caption_words.py counts the whole pack's), nor in a set written before."""
    from script_loader import load_script

    words_of = load_script("caption_words")
    every = icon_data.make_variants([_meta(), _meta(None)], 60, 3, seed=2, context=0.3, modifiers=0.3,
                                    drop_medium_tags=True, medium_modifiers=0.4, two_tone=0.5, any_colour=0.2,
                                    format_modifiers=0.4, random_places=0.5, made_up_names=0.3)
    counts = words_of.caption_word_counts(every)
    late = words_of.phrasing_word_counts(counts, icon_data.CONCEPTS[f"{name}_phrasings"])
    function_words = {"for", "a", "an", "the", "in"}
    assert len(icon_data.CONCEPTS[f"{name}_phrasings"]) == 4 and len(late) >= 10
    assert {w for w, n in late.items() if n} <= function_words and late["for"] > 0
    before = icon_eval.PHRASING_SETS[:icon_eval.PHRASING_SETS.index(name)]
    earlier = {w for other in before for w in words_of.phrasing_word_counts(
        counts, icon_data.CONCEPTS[f"{other}_phrasings"])}
    contexts = {w for c in icon_data.CONCEPTS["contexts"] for w in c.split()}
    formats = set(icon_data.CONCEPTS["format_words"])
    assert not (set(late) - function_words) & (earlier | contexts | formats | icon_data.MEDIUM_WORDS)


def test_any_colour_variants_use_free_colours_that_read_on_their_background_and_say_which():
    from brandgen.tiny.eval import color_family

    plain = icon_data.make_variants([_meta(), _meta(None)], 60, 2, seed=9)
    free = icon_data.make_variants([_meta(), _meta(None)], 60, 2, seed=9, any_colour=0.4)
    palette = [rgb for rgb, _ in icon_data.COLORS.values()]
    changed = [(old, new) for old, new in zip(plain, free) if old.fg != new.fg]
    assert 0.25 <= len(changed) / len(plain) <= 0.55
    off_palette = named = 0
    for old, new in changed:
        assert (old.icon, old.bg, old.scale, old.dx) == (new.icon, new.bg, new.scale, new.dx)
        assert sum(abs(a - b) for a, b in zip(new.fg, new.bg)) > 160
        off_palette += min(max(abs(a - b) for a, b in zip(new.fg, p)) for p in palette) > 14
        words = (icon_data.hex_of(new.fg), color_family(new.fg))
        for a, b in zip(old.captions, new.captions):  # only the colour words differ ("bell icon" names none)
            assert a == b or any(w in b for w in words), (new.fg, a, b)
        named += any(any(w in c for w in words) for c in new.captions)
    assert off_palette > len(changed) // 2  # mostly colours the named palette never had
    assert named > len(changed) // 2
    for old, new in zip(plain, free):
        if old.fg == new.fg:
            assert old.captions == new.captions


def test_composer_tints_the_mask_on_the_background():
    mask = np.zeros((1, 32, 32), np.uint8)
    mask[0, 8:24, 8:24] = 255
    comp = icon_data.Composer(mask, "cpu")
    v = icon_data.Variant(0, (200, 20, 30), (250, 250, 250), 1.0, 0.0, 0.0, [])
    img = comp.compose([v])[0].numpy()
    assert tuple(img[16, 16]) == (200, 20, 30) and tuple(img[2, 2]) == (250, 250, 250)
    small = comp.compose([icon_data.Variant(0, (0, 0, 0), (255, 255, 255), 0.5, 0.0, 0.0, [])])[0].numpy()
    assert small[16, 16, 0] == 0 and small[9, 9, 0] == 255  # scaled about the centre


def test_two_tone_variants_fill_a_duotone_icon_in_a_second_colour_and_say_so():
    duo = {**_meta(), "set": "phosphor", "style": "duotone"}
    plain = icon_data.make_variants([duo, _meta(None)], 60, 2, seed=3)
    mixed = icon_data.make_variants([duo, _meta(None)], 60, 2, seed=3, two_tone=0.5)
    assert all(v.fg2 is None for v in plain)
    two = [v for v in mixed if v.fg2 is not None]
    assert all(v.icon == 0 for v in two) and 15 <= len(two) <= 45  # duotone icons only, about half of them
    for old, new in zip(plain, mixed):  # same icon, colours, placement; only the colour words gain the fill
        assert (old.icon, old.fg, old.bg, old.scale) == (new.icon, new.fg, new.bg, new.scale)
        if new.fg2 is None:
            assert new.captions == old.captions
    assert any(" and " in c for v in two for c in v.captions)
    mask = np.zeros((1, 40, 40), np.uint8)
    mask[0, 6:34, 6:34] = 255  # the line: a square ring 4 px wide
    mask[0, 10:30, 10:30] = icon_data.FILL_LEVEL  # the 20% duotone fill inside it
    comp = icon_data.Composer(mask, "cpu")
    line, fill, bg = (15, 118, 110), (249, 115, 96), (253, 246, 227)
    img = comp.compose([icon_data.Variant(0, line, bg, 1.0, 0.0, 0.0, [], fill),
                        icon_data.Variant(0, line, bg, 1.0, 0.0, 0.0, [])]).numpy()
    assert tuple(img[0, 20, 20]) == fill and tuple(img[0, 7, 20]) == line and tuple(img[0, 2, 2]) == bg
    assert tuple(img[1, 7, 20]) == line and tuple(img[1, 2, 2]) == bg  # one-colour variants as before
    assert tuple(img[1, 20, 20]) != fill


def test_tokenizer_handles_unknown_words_and_multi_word_concepts():
    from brandgen.tiny import tokenizer as tiny_tokenizer

    meta = [_meta(), {**_meta(None), "phrase": "credit card", "name": "credit-card"}]
    tok = tiny_tokenizer.train_tokenizer(700, icon_data.tokenizer_corpus(meta, n=400))
    ids = tiny_tokenizer.encode_padded(tok, ["zxqv blorptastic icon, #1a73e8", "credit card icon"])
    assert ids.shape == (2, 77) and ids.max() < len(tok)
    assert "card</w>" in tok.tokenize("credit card icon")
