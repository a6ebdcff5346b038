"""Generation settings inside image files: the A1111 "parameters" text and BrandGen's full JSON.

Writing both makes BrandGen PNGs readable by A1111, ComfyUI and Civitai; reading both lets a user bring any
such PNG back into the Generate tab.
"""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from brandgen.errors import InvalidInput
from brandgen.generation import MAX_SIDE, MIN_SIDE, GenerationRequest
from brandgen.templates import AssetType, load_asset_types

log = logging.getLogger(__name__)
MAX_IMAGE_PIXELS = 8192 * 8192  # user images above this are refused unread: decoded they take ~200 MB or more
# Settings text longer than this is refused unread. A1111 writes a few hundred characters; BrandGen's own longest
# (two 2,000-character prompts, the template and every field) stays under 6,000.
MAX_SETTINGS_CHARS = 32_768
MAX_SETTINGS_JSON_CHARS = 262_144  # BrandGen's JSON chunk: the same settings, plus metrics and palette
_KEY_PUNCTUATION = frozenset(" -/")
_LORA_WEIGHT = re.compile(r"[-+]?\d{0,32}\.?\d{1,32}")


def _quote(value: Any) -> str:
    """A1111 quotes values that would break its 'Key: value, Key: value' line."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ',:\n"') else text


def a1111_parameters(meta: dict[str, Any]) -> str:
    """The settings as A1111 writes them, so Civitai, A1111 and ComfyUI readers understand BrandGen PNGs."""
    tags = "".join(f" <lora:{lora['name']}:{float(lora['weight']):g}>" for lora in meta.get("loras") or [])
    fields: dict[str, Any] = {"Steps": meta.get("steps")}
    if meta.get("sampler"):
        fields["Sampler"] = meta["sampler"]
    fields.update({
        "CFG scale": f"{float(meta.get('guidance_scale') or 0):g}", "Seed": meta.get("seed"),
        "Size": f"{meta.get('width')}x{meta.get('height')}", "Model": meta.get("model"),
        "Asset type": meta.get("asset_type"), "Preset": meta.get("preset"),
    })
    if (meta.get("upscale") or 1) > 1:
        fields.update({"Upscale": meta["upscale"], "Upscaler": meta.get("upscaler")})
    if meta.get("palette_lock"):
        fields["Palette"] = " ".join(meta.get("palette", []))
    fields["Version"] = f"BrandGen {meta.get('app_version', '')}".strip()
    line = ", ".join(f"{key}: {_quote(value)}" for key, value in fields.items() if value not in (None, ""))
    return f"{meta.get('prompt', '')}{tags}\nNegative prompt: {meta.get('negative_prompt', '')}\n{line}"


def png_info(meta: dict[str, Any]) -> PngImagePlugin.PngInfo:
    """Text chunks for a PNG: 'parameters' (A1111 format) and 'brandgen' (the full JSON)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", a1111_parameters(meta))
    info.add_text("brandgen", json.dumps(meta, ensure_ascii=False, default=str))
    return info


def png_bytes(image: Image.Image, meta: dict[str, Any]) -> bytes:
    """The image encoded as a PNG that carries `meta` (see png_info): one encoder for gallery and export."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG", pnginfo=png_info(meta))
    return buffer.getvalue()


def _is_word(char: str) -> bool:
    """What `\\w` matches in a str pattern (A1111's parser is a regex; this scanner keeps its meaning)."""
    return char.isalnum() or char == "_"


def _key_at(line: str, start: int) -> tuple[int, int, int]:
    """(key start, key end, where to look next). The key is A1111's `\\s*(\\w[\\w \\-/]+):`; when none starts here,
    key start == -1 and `next` skips the whole run of key characters, which is what keeps the scan linear."""
    n, i = len(line), start
    while i < n and line[i].isspace():
        i += 1
    if i >= n or not _is_word(line[i]):
        return -1, -1, i + 1
    end = i + 1
    while end < n and (_is_word(line[end]) or line[end] in _KEY_PUNCTUATION):
        end += 1
    if end < n and line[end] == ":" and end - i >= 2:
        return i, end, end + 1
    return -1, -1, end


def _quoted_end(line: str, start: int) -> int:
    """End of a `"..."` value at `start` (escapes allowed, not empty) followed by ',' or the line's end; else -1."""
    n, i, chars = len(line), start + 1, 0
    while i < n and line[i] != '"':
        if line[i] == "\\":
            if i + 1 >= n:
                return -1
            i += 1
        i, chars = i + 1, chars + 1
    if i >= n or not chars or (i + 1 < n and line[i + 1] != ","):
        return -1
    return i + 1


def _param_pairs(line: str) -> list[tuple[str, str]]:
    """The (key, value) pairs of A1111's last line, exactly as `re.findall` of A1111's pattern
    `\\s*(\\w[\\w \\-/]+):\\s*("(?:\\\\.|[^\\\\"])+"|[^,]*)(?:,|$)` finds them, in one pass: the regex
    retries every position of a long run without ':' and took 3.7 s for 16,000 characters."""
    pairs, n, pos = [], len(line), 0
    while pos < n:
        key_start, key_end, pos = _key_at(line, pos)
        if key_start < 0:
            continue
        value = pos
        while value < n and line[value].isspace():
            value += 1
        end = _quoted_end(line, value) if value < n and line[value] == '"' else -1
        if end < 0:
            comma = line.find(",", value)
            end = n if comma < 0 else comma
        pairs.append((line[key_start:key_end], line[value:end]))
        pos = end + 1
    return pairs


def _check_length(text: str, limit: int = MAX_SETTINGS_CHARS) -> str:
    if len(text) > limit:
        raise InvalidInput(f"The image's settings text has {len(text):,} characters; BrandGen reads settings up to "
                           f"{limit:,} characters (A1111 and BrandGen write far fewer).")
    return text


def parse_a1111(text: str) -> dict[str, Any]:
    """A1111 'parameters' text -> {'prompt', 'negative_prompt', key: value...}, as A1111 itself parses it.
    Linear time; text over MAX_SETTINGS_CHARS is refused (InvalidInput) before any parsing."""
    lines = _check_length(text).strip().split("\n")
    params: dict[str, Any] = {}
    pairs = _param_pairs(lines[-1]) if lines else []
    if len(pairs) >= 3:
        lines.pop()
        for key, value in pairs:
            if value.startswith('"') and value.endswith('"'):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    pass
            params[key.strip()] = value.strip() if isinstance(value, str) else value
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    return {"prompt": "\n".join(prompt).strip(), "negative_prompt": "\n".join(negative).strip(), **params}


def lora_tags(prompt: str) -> tuple[list[dict[str, Any]], str]:
    """(LoRAs named by `<lora:name:weight>` tags, the prompt without them): what A1111's tag regex finds, in one
    pass (each '>' is searched for once, however many tags share it)."""
    loras, kept, pos, end = [], [], 0, -1
    while (start := prompt.find("<lora:", pos)) >= 0:
        if end < start:
            end = prompt.find(">", start)
            if end < 0:
                break
        name, _, rest = prompt[start + 6:end].partition(":")
        if not name:  # `<lora::...>` is no tag; one may still start inside it
            kept.append(prompt[pos:start + 6])
            pos = start + 6
            continue
        weight = _LORA_WEIGHT.match(rest)
        loras.append({"name": name, "weight": float(weight.group()) if weight else 1.0})
        kept.append(prompt[pos:start] + " ")
        pos = end + 1
    kept.append(prompt[pos:])
    return loras, "".join(kept)


def _number(value: Any, kind: type) -> Any:
    try:
        return kind(float(value)) if kind is int else kind(value)
    except (TypeError, ValueError, OverflowError):  # "inf" or 400 digits as a seed
        return None


def _settings_from_a1111(text: str) -> dict[str, Any]:
    params = parse_a1111(text)
    loras, prompt = lora_tags(params["prompt"])
    prompt = " ".join(prompt.split()).replace(" ,", ",").strip(" ,")
    size = re.match(r"^(\d+)x(\d+)$", str(params.get("Size", "")))
    return {
        "source": "a1111", "prompt": prompt, "negative_prompt": params["negative_prompt"],
        "asset_type": params.get("Asset type"), "model": params.get("Model"), "preset": params.get("Preset"),
        "seed": _number(params.get("Seed"), int), "steps": _number(params.get("Steps"), int),
        "guidance_scale": _number(params.get("CFG scale"), float),
        "width": int(size.group(1)) if size else None, "height": int(size.group(2)) if size else None,
        "loras": loras, "use_template": False, "metadata": params,
    }


def extra_negative(meta: dict[str, Any], asset_types: dict[str, AssetType] | None = None) -> str:
    """The user's own negative words: the stored negative minus the asset type's built-in one."""
    negative = meta.get("negative_prompt") or ""
    kind = (asset_types or load_asset_types()).get(meta.get("asset_type") or "")
    if kind and negative.startswith(kind.negative):
        return negative[len(kind.negative):].lstrip(", ").strip()
    return negative


def _settings_from_brandgen(meta: dict[str, Any], asset_types: dict[str, AssetType] | None) -> dict[str, Any]:
    return {
        "source": "brandgen", "prompt": meta.get("user_prompt") or meta.get("prompt", ""),
        "negative_prompt": extra_negative(meta, asset_types), "asset_type": meta.get("asset_type"),
        "model": meta.get("model"), "preset": meta.get("preset"), "seed": meta.get("seed"),
        "steps": meta.get("steps"), "guidance_scale": meta.get("guidance_scale"), "width": meta.get("width"),
        "height": meta.get("height"), "loras": list(meta.get("loras") or []), "use_template": True,
        "metadata": meta,
    }


def _open_image(source: str | Path | bytes | Image.Image) -> Image.Image:
    """Open lazily; refuse before decoding what is too big (reading PNG text may decode the whole image)."""
    if isinstance(source, Image.Image):
        return source
    name = "The upload" if isinstance(source, bytes) else Path(source).name
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else Path(source))
    except Image.DecompressionBombError as exc:
        raise InvalidInput(f"{name} is too large to open safely; settings are read from images up to "
                           f"{MAX_IMAGE_PIXELS // 10**6} megapixels.") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InvalidInput(f"{name} is not an image BrandGen can read (expected a PNG).") from exc
    if image.width * image.height > MAX_IMAGE_PIXELS:
        image.close()
        raise InvalidInput(f"{name} is {image.width}x{image.height} px; settings are read from images up to "
                           f"{MAX_IMAGE_PIXELS // 10**6} megapixels.")
    return image


def _exif_comment(image: Image.Image) -> str | None:
    """A1111 JPEG/WebP files keep the parameters in EXIF UserComment instead of a PNG chunk."""
    raw = image.getexif().get_ifd(0x8769).get(0x9286)
    if isinstance(raw, bytes):
        body = raw[8:] if raw[:8] in (b"UNICODE\0", b"ASCII\0\0\0") else raw
        encoding = "utf-16-be" if raw.startswith(b"UNICODE\0") else "utf-8"
        return body.decode(encoding, errors="ignore").strip("\0") or None
    return raw or None


def _embedded_text(image: Image.Image) -> tuple[dict[str, Any], str | None]:
    """(PNG text chunks, EXIF comment). Chunks before the pixels (where PIL, A1111 and ComfyUI write them) are
    in `info` without decoding; only a PNG without them is decoded, to look for chunks after the pixels."""
    info = image.info
    if not (info.get("brandgen") or info.get("parameters")):
        info = getattr(image, "text", None) or info
    return info, None if info.get("parameters") else _exif_comment(image)


def read_parameters(
    source: str | Path | bytes | Image.Image, asset_types: dict[str, AssetType] | None = None,
) -> dict[str, Any]:
    """Settings for the Generate tab from a BrandGen or A1111 image; a clear error when it has none."""
    image = _open_image(source)
    try:
        info, comment = _embedded_text(image)
    except (OSError, ValueError, SyntaxError) as exc:  # a cut-off file, a bad chunk: "image file is truncated"
        name = "The upload" if isinstance(source, (bytes, Image.Image)) else Path(source).name
        raise InvalidInput(f"{name} is damaged (cut off or corrupt), so its settings cannot be read: {exc}.") from exc
    finally:
        if image is not source:
            image.close()
    if info.get("brandgen"):
        try:
            meta = json.loads(_check_length(str(info["brandgen"]), MAX_SETTINGS_JSON_CHARS))
            if isinstance(meta, dict):
                return _settings_from_brandgen(meta, asset_types)
        except json.JSONDecodeError:
            log.warning("Unreadable brandgen chunk; falling back to the A1111 parameters.")
    text = info.get("parameters") or comment
    if not text or not str(text).strip():
        raise InvalidInput(
            "This image has no generation settings: BrandGen and A1111 write them into the PNG, but "
            "screenshots, and images re-saved by most editors or chat apps, lose them."
        )
    return _settings_from_a1111(str(text))


def settings_to_request(settings: dict[str, Any]) -> GenerationRequest:
    """A request that reproduces the image: same words, model, preset, LoRAs, seed, steps and guidance."""
    return GenerationRequest(
        prompt=settings.get("prompt") or "", asset_type=settings.get("asset_type") or "icons",
        model_id=settings.get("model") or None, preset=settings.get("preset") or "standard",
        loras=tuple((str(lora["name"]), float(lora["weight"])) for lora in settings.get("loras") or []),
        seed=-1 if settings.get("seed") is None else int(settings["seed"]), count=1,
        negative_prompt=settings.get("negative_prompt") or "", steps=settings.get("steps"),
        guidance_scale=settings.get("guidance_scale"), width=_side(settings.get("width")),
        height=_side(settings.get("height")), use_template=bool(settings.get("use_template", True)),
    )


def _side(value: Any) -> int | None:
    """A recorded size the request accepts, else None (the model's native size, which it then was)."""
    side = _number(value, int)
    return side if side is not None and MIN_SIDE <= side <= MAX_SIDE and side % 8 == 0 else None
