"""Export: PNG, transparent PNG and SVG at 1x/2x/4x in a zip with manifests; offline background removal."""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from brandgen.errors import InvalidInput
from brandgen.export import export_items, flood_from_border, remove_background, vectorize
from brandgen.gallery import GalleryStore, read_parameters

SVG = "{http://www.w3.org/2000/svg}"


def flat_icon(side: int = 96, channel: bool = False) -> Image.Image:
    """A blue ring on off-white, antialiased (drawn at 4x, then reduced), with an off-white hole inside."""
    big = Image.new("RGB", (side * 4, side * 4), (246, 244, 238))
    draw = ImageDraw.Draw(big)
    draw.ellipse((side * 0.6, side * 0.6, side * 3.4, side * 3.4), fill=(26, 115, 232))
    draw.ellipse((side * 1.6, side * 1.6, side * 2.4, side * 2.4), fill=(246, 244, 238))
    if channel:  # a cut from the hole to the edge: now the hole is background
        draw.rectangle((side * 1.9, 0, side * 2.1, side * 2), fill=(246, 244, 238))
    return big.resize((side, side), Image.Resampling.LANCZOS)


def test_transparent_background_keeps_enclosed_holes():
    alpha = np.asarray(remove_background(flat_icon()))[..., 3]
    assert alpha[0, 0] == alpha[0, -1] == alpha[-1, 0] == alpha[-1, -1] == 0
    assert alpha[30, 48] == 255  # the ring
    assert alpha[48, 48] == 255  # background-coloured hole not connected to the border stays
    edge = alpha[48, :30]
    assert ((edge > 0) & (edge < 255)).any()  # soft, antialiased edge


def test_hole_connected_to_the_border_becomes_transparent():
    alpha = np.asarray(remove_background(flat_icon(channel=True)))[..., 3]
    assert alpha[48, 48] == 0 and alpha[30, 30] == 255


def test_flood_fill_follows_winding_paths():
    allowed = np.zeros((9, 9), dtype=bool)
    allowed[0, 1] = True                   # entrance at the top edge
    allowed[1, 1:8] = True                 # right
    allowed[1:8, 7] = True                 # down
    allowed[7, 2:8] = True                 # left
    allowed[3:8, 2] = True                 # up again
    allowed[5, 5] = True                   # isolated pocket
    reached = flood_from_border(allowed)
    assert reached[3, 2] and not reached[5, 5]


def test_svg_is_xml_with_paths_and_requested_size():
    svg = vectorize(remove_background(flat_icon()), 192, 192)
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg" and root.get("width") == "192" and root.get("viewBox") == "0 0 96 96"
    assert len(root.findall(f"{SVG}path")) >= 2


@pytest.fixture
def store(tmp_path: Path) -> GalleryStore:
    return GalleryStore(tmp_path / "outputs")


def test_export_zip_has_every_format_size_and_manifest(store: GalleryStore):
    meta = {"user_prompt": "blue ring", "prompt": "p", "negative_prompt": "", "asset_type": "icons",
            "model": "tiny-sd15", "loras": [{"name": "acme", "weight": 0.8}], "preset": "draft", "steps": 2,
            "guidance_scale": 7.5, "width": 96, "height": 96, "seed": 5}
    items = [store.add(flat_icon(), {**meta, "seed": s}) for s in (5, 6)]
    result = export_items(store, [items[0].id, items[1].id, items[0].id], ["png", "transparent_png", "svg"],
                          ["1x", "2x", 4])
    assert result.zip_path.parent == store.root / "exports" and result.zip_path.name.startswith("brandgen-export-")
    assert len(result.files) == 2 * 3 * 3  # duplicates dropped
    with zipfile.ZipFile(result.zip_path) as archive:
        names = set(archive.namelist())
        assert {"manifest.csv", "manifest.json"} <= names and set(result.files) <= names
        stem = f"{items[0].id}/{items[0].id}"
        for scale in (1, 2, 4):
            png = Image.open(io.BytesIO(archive.read(f"{stem}@{scale}x.png")))
            assert png.size == (96 * scale, 96 * scale) and png.mode == "RGB"
            clear = Image.open(io.BytesIO(archive.read(f"{stem}@{scale}x-transparent.png")))
            alpha = np.asarray(clear)[..., 3]
            assert clear.mode == "RGBA" and clear.size == png.size
            assert alpha[0, 0] == 0 and alpha[-1, -1] == 0 and alpha[30 * scale, 48 * scale] == 255
            root = ET.fromstring(archive.read(f"{stem}@{scale}x.svg"))
            assert root.get("width") == str(96 * scale) and root.findall(f"{SVG}path")
        settings = read_parameters(archive.read(f"{stem}@2x-transparent.png"))  # settings travel with exports
        assert settings["seed"] == 5 and settings["prompt"] == "blue ring"
        rows = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode())))
        manifest = json.loads(archive.read("manifest.json"))
    assert len(rows) == 18 and rows[0]["loras"] == "acme:0.8" and rows[0]["seed"] == "5"
    assert {r["format"] for r in rows} == {"png", "transparent_png", "svg"}
    assert [i["id"] for i in manifest["images"]] == [items[0].id, items[1].id]
    assert manifest["scales"] == [1, 2, 4]
    assert not list((store.root / "exports").glob(".*.tmp"))


@pytest.mark.parametrize("ids, formats, sizes, message", [
    ([], ["png"], ["1x"], "at least one image"),
    (["../../etc/passwd"], ["png"], ["1x"], "not a gallery image id"),
    (["20261122-101500-1a2b3c4d"], ["png"], ["1x"], "No gallery image"),
    (None, ["gif"], ["1x"], "formats"),
    (None, ["png"], ["3x"], "sizes"),
    (None, [], ["1x"], "formats"),
])
def test_export_refuses_bad_requests(store: GalleryStore, ids, formats, sizes, message):
    item = store.add(flat_icon(), {"seed": 1, "loras": []})
    with pytest.raises(InvalidInput, match=message):
        export_items(store, [item.id] if ids is None else ids, formats, sizes)
    assert not (store.root / "exports").exists() or not list((store.root / "exports").iterdir())


def test_export_of_an_image_gone_from_disk_is_a_clear_error(store: GalleryStore):
    item = store.add(flat_icon(), {"seed": 1, "loras": []})
    item.path.unlink()
    with pytest.raises(InvalidInput, match=f"{item.id} could not be read"):
        export_items(store, [item.id], ["png"], ["1x"])
    assert not list((store.root / "exports").iterdir())


def test_each_factor_is_upscaled_once_per_image(store: GalleryStore):
    calls: list[int] = []

    class CountingUpscaler:
        name = "counting"

        def __call__(self, image: Image.Image, factor: int) -> Image.Image:
            calls.append(factor)
            return image.resize((image.width * factor, image.height * factor))

    item = store.add(flat_icon(32), {"seed": 1, "loras": []})  # 32 px: the SVG is traced at 4x
    export_items(store, [item.id], ["png", "transparent_png", "svg"], ["1x", "4x"], CountingUpscaler())
    assert sorted(calls) == [1, 4]
    calls.clear()
    export_items(store, [item.id], ["svg"], ["1x", "2x"], CountingUpscaler())
    assert calls == [4]  # SVG only: no export size is upscaled as pixels
