"""Settings text from an untrusted PNG: A1111's parser, kept exact but linear in time, and a cap on the text.

A1111's own regex retried every position of a long run without ':' (16,000 characters took 3.7 s and held the
GIL, so every endpoint of the app stalled); docs/RELIABILITY.md has the figures.
"""

from __future__ import annotations

import io
import random
import re
import time
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from brandgen.errors import InvalidInput
from brandgen.png_settings import MAX_SETTINGS_CHARS, _param_pairs, lora_tags, parse_a1111, read_parameters

A1111_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')  # A1111's, as it was here
A1111_LORA = re.compile(r"<lora:([^:>]+)(?::([-+]?\d*\.?\d+))?[^>]*>")
# The slowest inputs for a backtracking parser, each at the cap: long key-like runs without ':', open quotes,
# escapes, LoRA tags without '>', and many short fields.
WORST = {
    "one word": "a" * MAX_SETTINGS_CHARS,
    "spaced words": ("ab " * MAX_SETTINGS_CHARS)[:MAX_SETTINGS_CHARS],
    "open quotes": ('k: "' + "\\x" * MAX_SETTINGS_CHARS)[:MAX_SETTINGS_CHARS],
    "lora tags": ("<lora:a" * MAX_SETTINGS_CHARS)[:MAX_SETTINGS_CHARS],
    "empty lora tags": ("<lora::" * MAX_SETTINGS_CHARS)[:MAX_SETTINGS_CHARS - 1] + ">",
    "short fields": ("Ab: 1, " * MAX_SETTINGS_CHARS)[:MAX_SETTINGS_CHARS],
    "prompt lines": ("a teal heart\n" * MAX_SETTINGS_CHARS)[:MAX_SETTINGS_CHARS],
}


def _png_with(text: str, key: str = "parameters") -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text(key, text)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "teal").save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


def test_the_linear_parser_finds_exactly_what_a1111s_regex_finds():
    alphabet = ["a", "B", " ", ":", ",", '"', "\\", "-", "/", "\t", "1", ".", "é", "_", "<lora:", ">", ":0.5"]
    rnd = random.Random(20)
    for _ in range(20000):
        text = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 16)))
        assert _param_pairs(text) == A1111_PARAM.findall(text), text
        loras, rest = lora_tags(text)
        assert loras == [{"name": n, "weight": float(w) if w else 1.0} for n, w in A1111_LORA.findall(text)], text
        assert rest.split() == A1111_LORA.sub(" ", text).split(), text
    line = 'Steps: 30, Sampler: DPM++ 2M, CFG scale: 6.5, Seed: 1234567, Size: 512x768, Lora hashes: "a: 0a, b: 2c"'
    assert _param_pairs(line) == A1111_PARAM.findall(line)


@pytest.mark.parametrize("kind", sorted(WORST))
def test_settings_text_at_the_cap_parses_in_bounded_time(kind: str, tmp_path: Path):
    text = WORST[kind]
    assert len(text) == MAX_SETTINGS_CHARS
    start = time.perf_counter()
    parse_a1111(text)
    assert time.perf_counter() - start < 0.5, kind  # A1111's regex: 3.7 s for half this length
    path = tmp_path / "hostile.png"
    path.write_bytes(_png_with(text))
    start = time.perf_counter()
    try:
        read_parameters(path)
    except InvalidInput as exc:  # settings that name nothing usable are a clear refusal, never a hang
        assert "settings" in str(exc)
    assert time.perf_counter() - start < 0.5, kind


def test_settings_text_over_the_cap_is_refused_before_parsing(tmp_path: Path):
    for size in (MAX_SETTINGS_CHARS + 1, 40_000, 30 * 2**20):
        start = time.perf_counter()
        with pytest.raises(InvalidInput, match=f"has {size:,} characters; BrandGen reads settings up to 32,768"):
            parse_a1111("a" * size)
        assert time.perf_counter() - start < 0.5
    (tmp_path / "long.png").write_bytes(_png_with("a" * 900_000))  # just under PIL's 1 MB per text chunk
    with pytest.raises(InvalidInput, match="900,000 characters"):
        read_parameters(tmp_path / "long.png")
    (tmp_path / "json.png").write_bytes(_png_with("[" + "0," * 200_000 + "0]", key="brandgen"))
    with pytest.raises(InvalidInput, match="characters; BrandGen reads settings up to 262,144"):
        read_parameters(tmp_path / "json.png")


def test_a_cut_off_png_is_called_damaged_not_a_raw_pil_error(tmp_path: Path):
    buffer = io.BytesIO()
    Image.effect_noise((256, 256), 60).convert("RGB").save(buffer, "PNG")  # no settings: PIL decodes to look
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(InvalidInput, match=r"cut\.png is damaged \(cut off or corrupt\)"):
        read_parameters(tmp_path / "cut.png")


def test_numbers_too_big_for_a_float_are_dropped_not_raised():
    text = "a fox\nNegative prompt: blurry\nSteps: " + "9" * 400 + ", Seed: inf, CFG scale: 7, Size: 512x512"
    from brandgen.png_settings import _settings_from_a1111

    settings = _settings_from_a1111(text)
    assert (settings["steps"], settings["seed"], settings["guidance_scale"]) == (None, None, 7.0)
