"""The permissively licensed icon sets brandgen-tiny learns from: pinned npm packages and their metadata.

Each set is fetched with `npm pack` at a pinned version and checked against the registry's sha512
integrity, so the training data is the same bytes on every machine. Brand/logo icons (real
trademarks) are left out. `iter_icons` yields one record per SVG with the words a caption can use.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class IconSet:
    key: str
    package: str
    version: str
    integrity: str
    licence: str
    copyright: str
    styles: tuple[str, ...]


SETS: dict[str, IconSet] = {s.key: s for s in (
    IconSet("tabler", "@tabler/icons", "3.52.0",
            "sha512-dldKlJNfO/gZnGLcIY0X2EFFKIMGwL/rEvTqglvBgAPFiwj9pZOCN5V3Sf0Gyjq6foX4VQmLdOmsS4w5FdWKAw==",
            "MIT", "Copyright (c) 2020-2024 Paweł Kuna", ("outline", "filled")),
    IconSet("lucide", "lucide-static", "1.62.0",
            "sha512-WBZA/m2PvkFpMGHDtsBck5P2A9G4ehLlYu4GwwICcmEm1BvYVgj00lCDxKRWLlbMlOibLaiwdQ88G5pHkSWgwA==",
            "ISC (parts from Feather: MIT)", "Copyright (c) Lucide Icons and Contributors", ("outline",)),
    IconSet("phosphor", "@phosphor-icons/core", "2.1.1",
            "sha512-v4ARvrip4qBCImOE5rmPUylOEK4iiED9ZyKjcvzuezqMaiRASCHKcRIuvvxL/twvLpkfnEODCOJp5dM4eZilxQ==",
            "MIT", "Copyright (c) 2023 Phosphor Icons", ("regular", "fill", "duotone")),
    IconSet("fluent", "@fluentui/svg-icons", "1.1.343",
            "sha512-+rlKFnM2MkAg2G0qMD3BM/K3jC+Jc+VAKgxE7x9cpCPDDNpwKaOSD0DntUkVXrZGOjBvfmID0DoRslsXbC8X5Q==",
            "MIT", "Copyright (c) Microsoft Corporation", ("regular", "filled")),
)}

# Style words a caption may use for each (set, style): outline / filled / duotone / fluent.
STYLE_WORDS: dict[tuple[str, str], tuple[str, ...]] = {
    ("tabler", "outline"): ("outline", "line", "stroke"),
    ("tabler", "filled"): ("filled", "solid"),
    ("lucide", "outline"): ("outline", "line", "stroke"),
    ("phosphor", "regular"): ("outline", "line", "regular"),
    ("phosphor", "fill"): ("filled", "solid"),
    ("phosphor", "duotone"): ("duotone", "two-tone"),
    ("fluent", "regular"): ("fluent outline", "fluent design", "fluent line"),
    ("fluent", "filled"): ("fluent filled", "fluent design filled", "fluent solid"),
}

BRAND_CATEGORIES = {"brand", "brands"}


@dataclass
class IconRecord:
    set: str
    style: str
    name: str
    svg: bytes
    tags: list[str] = field(default_factory=list)
    category: str = ""

    @property
    def phrase(self) -> str:
        """The name as words: "building-bank" / "building_bank" -> "building bank"."""
        return re.sub(r"[-_]+", " ", self.name).strip()


class FetchError(RuntimeError):
    """A package could not be fetched or did not match its pinned integrity."""


def integrity_of(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def fetch(icon_set: IconSet, cache: Path) -> Path:
    """The set's tarball in `cache` (fetched with `npm pack` once), unpacked; its integrity is checked."""
    cache.mkdir(parents=True, exist_ok=True)
    tgz = cache / f"{icon_set.key}-{icon_set.version}.tgz"
    if not tgz.exists():
        if shutil.which("npm") is None:
            raise FetchError("npm is needed to fetch the icon sets: `apt-get install npm` (or install Node.js)")
        spec = f"{icon_set.package}@{icon_set.version}"
        done = subprocess.run(["npm", "pack", spec, "--json", "--pack-destination", str(cache)],
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise FetchError(f"npm pack {spec} failed: {done.stderr.strip()[-500:]}")
        (cache / json.loads(done.stdout)[0]["filename"]).replace(tgz)
    if integrity_of(tgz) != icon_set.integrity:
        tgz.unlink()
        raise FetchError(f"{tgz.name}: integrity does not match the pinned {icon_set.integrity[:24]}...")
    root = cache / f"{icon_set.key}-{icon_set.version}"
    if not (root / "package").exists():
        with tarfile.open(tgz) as tar:
            tar.extractall(root, filter="data")
    return root / "package"


def _brand_words(tabler_root: Path) -> set[str]:
    """Names of brands (from Tabler's Brand category) so the same marks in other sets are left out too."""
    meta = json.loads((tabler_root / "icons.json").read_text(encoding="utf-8"))
    return {v["name"].removeprefix("brand-") for v in meta.values() if v.get("category", "").lower() == "brand"}


def _tabler(root: Path, brands: set[str]) -> Iterator[IconRecord]:
    meta = json.loads((root / "icons.json").read_text(encoding="utf-8"))
    for name, info in sorted(meta.items()):
        if info.get("category", "").lower() in BRAND_CATEGORIES or name.startswith("brand-"):
            continue
        for style in ("outline", "filled"):
            path = root / "icons" / style / f"{name}.svg"
            if style in info.get("styles", {}) and path.exists():
                yield IconRecord("tabler", style, name, path.read_bytes(), [str(t) for t in info.get("tags", [])],
                                 info.get("category", ""))


def _lucide(root: Path, brands: set[str]) -> Iterator[IconRecord]:
    tags = json.loads((root / "tags.json").read_text(encoding="utf-8"))
    for path in sorted((root / "icons").glob("*.svg")):
        name = path.stem
        if name in brands or name.split("-")[0] in brands:
            continue
        yield IconRecord("lucide", "outline", name, path.read_bytes(), [str(t) for t in tags.get(name, [])])


_PHOSPHOR_ENTRY = re.compile(r'name:\s*"([^"]+)",.*?categories:\s*\[([^\]]*)\].*?tags:\s*\[([^\]]*)\]', re.DOTALL)


def _phosphor(root: Path, brands: set[str]) -> Iterator[IconRecord]:
    """Categories and tags come from the package's JS index (no JSON ships with it)."""
    source = (root / "dist" / "index.mjs").read_text(encoding="utf-8")
    enum = dict(re.findall(r'i\.(\w+) = "([^"]+)"', source.split("const n")[0]))
    meta = {}
    for name, cats, tags in _PHOSPHOR_ENTRY.findall(source):
        categories = [enum.get(c.strip().split(".")[-1], "") for c in cats.split(",") if c.strip()]
        meta[name] = ([t for t in re.findall(r'"([^"]+)"', tags) if not t.startswith("*")], categories)
    for style in ("regular", "fill", "duotone"):
        for path in sorted((root / "assets" / style).glob("*.svg")):
            name = path.stem.removesuffix(f"-{style}") if style != "regular" else path.stem
            tags, cats = meta.get(name, ([], []))
            if "brands" in cats or name in brands or name.removesuffix("-logo") in brands or name.endswith("-logo"):
                continue
            yield IconRecord("phosphor", style, name, path.read_bytes(), tags, cats[0] if cats else "")


def _fluent(root: Path, brands: set[str]) -> Iterator[IconRecord]:
    """24 px regular and filled only; Fluent ships names, no tags."""
    for style in ("regular", "filled"):
        for path in sorted((root / "icons").glob(f"*_24_{style}.svg")):
            name = path.name.removesuffix(f"_24_{style}.svg")
            if name in brands:
                continue
            yield IconRecord("fluent", style, name, path.read_bytes())


READERS = {"tabler": _tabler, "lucide": _lucide, "phosphor": _phosphor, "fluent": _fluent}


def iter_icons(roots: dict[str, Path]) -> Iterator[IconRecord]:
    """Every non-brand icon of the given unpacked sets (keys of SETS), in a stable order."""
    brands = _brand_words(roots["tabler"]) if "tabler" in roots else set()
    for key, root in roots.items():
        yield from READERS[key](root, brands)


MIT_TEXT = """Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
associated documentation files (the "Software"), to deal in the Software without restriction, including
without limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is furnished to do so, subject to the
following conditions:

The above copyright notice and this permission notice shall be included in all copies or substantial
portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT
LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO
EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER
IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE
USE OR OTHER DEALINGS IN THE SOFTWARE."""


def notices(roots: dict[str, Path]) -> str:
    """THIRD_PARTY_NOTICES text: each set's package, version, copyright and licence text as shipped
    (Fluent's tarball has none, so the MIT text is given with Microsoft's copyright line)."""
    parts = ["Third-party notices for the icon sets brandgen-tiny was trained on (assets/brandgen-tiny) and the "
             "example brand dataset (assets/brand_example). Brand/logo icons of every set were left out.\n"]
    for key, root in roots.items():
        s = SETS[key]
        licence_file = root / "LICENSE"
        text = licence_file.read_text(encoding="utf-8").strip() if licence_file.exists() \
            else f"MIT License\n\n{s.copyright}\n\n{MIT_TEXT}"
        parts.append(f"== {s.package} {s.version} ({s.licence}) ==\n{text}\n")
    return "\n".join(parts)
