"""The gallery: every generated image kept as a PNG that carries its settings, plus a SQLite index to search.

The PNG is the source of truth (an A1111-style "parameters" chunk for other tools, a "brandgen" JSON chunk
for exact reuse); the index is a cache that `rebuild_index()` can recreate from the PNGs at any time.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from PIL import Image

from brandgen.errors import InvalidInput
from brandgen.ownership import OPERATOR, Access
from brandgen.paths import writing
from brandgen.png_settings import (  # noqa: F401  (re-exported: the gallery's public API)
    a1111_parameters, parse_a1111, png_bytes, png_info, read_parameters, settings_to_request,
)

ID_PATTERN = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{8}$")
DAY_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")
INDEX_NAME = "gallery.sqlite"
THUMB_SIDE = 320
MAX_PAGE_SIZE = 200
_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY, created_at TEXT NOT NULL, rel_path TEXT NOT NULL,
    asset_type TEXT, model TEXT, loras TEXT, search TEXT, metadata TEXT NOT NULL, owner TEXT);
CREATE INDEX IF NOT EXISTS items_newest ON items(created_at DESC, id DESC);
"""
_COLUMNS = "id, created_at, rel_path, asset_type, model, loras, search, metadata, owner"
_INSERT = f"INSERT OR REPLACE INTO items ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)"
_READ = "SELECT id, created_at, rel_path, metadata, owner FROM items"


@dataclass(frozen=True)
class GalleryItem:
    id: str
    path: Path
    metadata: dict[str, Any]
    created_at: str
    owner: str | None = None  # brandgen.ownership.owner_key of who made it; None: made before owners were kept


@dataclass(frozen=True)
class GalleryPage:
    items: list[GalleryItem]
    total: int
    page: int
    pages: int


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _row_values(item_id: str, created_at: str, rel_path: str, meta: dict[str, Any]) -> tuple:
    names = [str(lora.get("name", "")) for lora in meta.get("loras") or []]
    # the user's words, not the template's: "icon" or "blurry" would otherwise match every image
    words = [meta.get(k) or "" for k in ("user_prompt", "model", "model_label", "asset_type", "preset", "brand_kit")]
    search = " ".join([*map(str, words), *names]).lower()
    loras = "|" + "|".join(names) + "|" if names else ""
    return (item_id, created_at, rel_path, meta.get("asset_type"), meta.get("model"), loras, search,
            json.dumps(meta, ensure_ascii=False, default=str), meta.get("owner"))


class GalleryStore:
    """Images under `root/YYYY-MM-DD/<id>.png`, their settings in PNG chunks, and a WAL SQLite index."""

    read_parameters = staticmethod(read_parameters)  # also for any PNG, e.g. an upload

    def __init__(self, root: Path, quarantine: Path | None = None):
        """`quarantine`: where an unreadable index is set aside (default: `quarantine/` beside `root`, i.e.
        AppPaths.quarantine). Never inside `root`: outputs/ is served over HTTP and the index holds every prompt."""
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.quarantine = Path(quarantine).resolve() if quarantine else self.root.parent / "quarantine"
        self.index_path = self.root / INDEX_NAME
        self.problems: list[str] = []  # what was skipped or repaired, for the UI to report
        self._lock = threading.RLock()
        self._move_old_copies()
        self._conn = self._connect()

    def _move_old_copies(self) -> None:
        """Copies an older version set aside inside outputs/ (where the file route served them) go to quarantine."""
        for old in self.root.glob(f"{INDEX_NAME}.corrupt-*"):
            self.quarantine.mkdir(parents=True, exist_ok=True)
            os.replace(old, self.quarantine / old.name)

    def _connect(self) -> sqlite3.Connection:
        """Open the index; a file SQLite cannot read is moved aside and rebuilt from the PNGs."""
        conn = None
        try:
            conn = self._open_db()
            if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("quick_check failed")
            return conn
        except sqlite3.DatabaseError as exc:
            if conn is not None:
                conn.close()
            self.quarantine.mkdir(parents=True, exist_ok=True)
            aside = self.quarantine / f"{INDEX_NAME}.corrupt-{datetime.now():%Y%m%d-%H%M%S}"
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{self.index_path}{suffix}")
                if src.exists():
                    os.replace(src, f"{aside}{suffix}")
            self._report(f"The gallery index was unreadable ({exc}); it was rebuilt from the images.")
            self._conn = self._open_db()
            self.rebuild_index()
            return self._conn

    def _open_db(self) -> sqlite3.Connection:
        """Connect and set up; closed again on failure so the unreadable file can be moved aside."""
        conn = sqlite3.connect(self.index_path, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            if "owner" not in {row[1] for row in conn.execute("PRAGMA table_info(items)")}:  # an older index:
                conn.execute("ALTER TABLE items ADD COLUMN owner TEXT")  # its images have no owner recorded
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # paths -------------------------------------------------------------------------------------
    def _inside(self, rel_path: str) -> Path:
        path = (self.root / rel_path).resolve()
        if self.root not in path.parents:
            raise InvalidInput(f"Gallery path {rel_path!r} points outside {self.root.name}/.")
        return path

    @staticmethod
    def validate_id(item_id: str) -> str:
        item_id = str(item_id or "").strip()
        if not ID_PATTERN.match(item_id):
            raise InvalidInput(f"{item_id!r} is not a gallery image id (like 20261122-101500-1a2b3c4d).")
        return item_id

    @staticmethod
    def _thumb_path(item: GalleryItem) -> Path:
        return item.path.parent / "thumbs" / f"{item.id}.webp"

    def thumbnail(self, item: GalleryItem, image: Image.Image | None = None) -> Path:
        """A small WebP next to the image, made on first use, so a page of 48 loads fast.

        `image`: the item's pixels when the caller holds them already, which saves decoding the PNG again.
        """
        thumb = self._thumb_path(item)
        if not thumb.exists() and item.path.exists():
            tmp = thumb.with_name(f".{thumb.name}.tmp")
            try:
                thumb.parent.mkdir(exist_ok=True)
                with (image.copy() if image is not None else Image.open(item.path)) as small:
                    small.thumbnail((THUMB_SIDE, THUMB_SIDE))
                    small.save(tmp, "WEBP", quality=85)
                os.replace(tmp, thumb)
            except OSError as exc:  # no thumbnail is no reason to hide the image: show the full one
                tmp.unlink(missing_ok=True)
                self._report(f"{item.id}: no thumbnail ({exc}); showing the full image.")
                return item.path
        return thumb

    def _report(self, message: str) -> None:
        """Remember a problem once (most recent last), for the UI to show without flooding it."""
        if message in self.problems:
            self.problems.remove(message)
        self.problems.append(message)
        del self.problems[:-50]

    # writes ------------------------------------------------------------------------------------
    def add(self, image: Image.Image, metadata: dict[str, Any], owner: str | None = None) -> GalleryItem:
        """Write the PNG atomically (temp + fsync + replace), then index it in one transaction. `owner` (an
        ownership.owner_key) goes into the PNG too, so a rebuilt index still knows whose image it is."""
        now = datetime.now(timezone.utc)
        item_id = f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(4)}"
        created = now.isoformat(timespec="microseconds")
        meta = {**metadata, "gallery_id": item_id, "stored_at": created, **({"owner": owner} if owner else {})}
        rel_path = f"{now:%Y-%m-%d}/{item_id}.png"
        path = self._inside(rel_path)
        data = png_bytes(image, meta)
        tmp = path.with_name(f".{path.name}.tmp")
        with writing("the image", self.root):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(tmp, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            try:
                with self._lock, self._conn:
                    self._conn.execute("BEGIN")
                    self._conn.execute(_INSERT, _row_values(item_id, created, rel_path, meta))
            except Exception:
                path.unlink(missing_ok=True)
                raise
        item = GalleryItem(item_id, path, meta, created, meta.get("owner"))
        self.thumbnail(item, image)
        return item

    def delete(self, item_id: str, access: Access = OPERATOR) -> None:
        """Forget the row first, then the files: a crash in between leaves a PNG a rebuild brings back.
        Only the image's owner may delete it (see brandgen.ownership)."""
        item = self.get(item_id, access)
        if not access.may_change(item.owner):
            raise InvalidInput(f"Image {item.id} was made in another browser session or by another user; only "
                               "they can delete it.")
        with self._lock, self._conn:
            self._conn.execute("BEGIN")
            self._conn.execute("DELETE FROM items WHERE id = ?", (item.id,))
        item.path.unlink(missing_ok=True)
        self._thumb_path(item).unlink(missing_ok=True)

    def rebuild_index(self) -> int:
        """Recreate the index from the PNGs' own chunks (one transaction); returns how many were indexed."""
        rows = []
        for day in sorted(p for p in self.root.iterdir() if p.is_dir() and DAY_PATTERN.match(p.name)):
            for stale in day.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
            for path in sorted(day.glob("*.png")):
                if not ID_PATTERN.match(path.stem):
                    continue
                try:
                    meta = self._metadata_from_png(path)
                except Exception as exc:  # one bad file must not stop the rest
                    self._report(f"{path.name}: skipped while rebuilding ({exc}).")
                    continue
                created = meta.get("stored_at") or datetime.fromtimestamp(
                    path.stat().st_mtime, timezone.utc).isoformat(timespec="microseconds")
                rows.append(_row_values(path.stem, created, f"{day.name}/{path.name}", meta))
        with self._lock, self._conn:
            self._conn.execute("BEGIN")
            self._conn.execute("DELETE FROM items")
            self._conn.executemany(_INSERT, rows)
        return len(rows)

    @staticmethod
    def _metadata_from_png(path: Path) -> dict[str, Any]:
        settings = read_parameters(path)
        if settings["source"] == "brandgen":
            return settings["metadata"]
        meta = {k: settings[k] for k in ("asset_type", "model", "preset", "seed", "steps", "guidance_scale",
                                         "width", "height", "loras", "negative_prompt")}
        return {**meta, "prompt": settings["prompt"], "user_prompt": settings["prompt"], "source": "a1111"}

    # reads -------------------------------------------------------------------------------------
    def _item(self, row: tuple) -> GalleryItem | None:
        """A row whose JSON is broken is repaired from its PNG, or skipped and reported, never fatal."""
        item_id, created, rel_path, raw, owner = row
        try:
            path = self._inside(rel_path)
        except InvalidInput as exc:
            self._report(f"{item_id}: {exc}")
            return None
        try:
            meta = json.loads(raw)
            if not isinstance(meta, dict):
                raise ValueError("not an object")
        except ValueError:
            try:
                meta = self._metadata_from_png(path)
            except Exception as exc:
                self._report(f"{item_id}: index entry unreadable and its PNG too ({exc}); skipped.")
                return None
            with self._lock, self._conn:
                self._conn.execute("UPDATE items SET metadata = ? WHERE id = ?",
                                   (json.dumps(meta, ensure_ascii=False, default=str), item_id))
            self._report(f"{item_id}: index entry was unreadable; repaired from the PNG.")
        return GalleryItem(item_id, path, meta, created, owner)

    def get(self, item_id: str, access: Access = OPERATOR) -> GalleryItem:
        """One image; in private mode another caller's image is "not found", as if it did not exist."""
        item_id = self.validate_id(item_id)
        with self._lock:
            row = self._conn.execute(f"{_READ} WHERE id = ?", (item_id,)).fetchone()
        item = self._item(row) if row and access.sees(row[4]) else None
        if item is None:
            raise InvalidInput(f"No gallery image {item_id} (it may have been deleted).")
        return item

    def search(
        self, text: str = "", asset_type: str | None = None, model: str | None = None,
        lora: str | None = None, page: int = 1, page_size: int = 48, access: Access = OPERATOR,
    ) -> GalleryPage:
        """Newest first; every word of `text` must appear in the user's prompt, model or LoRA names, or start the id.
        In private mode (`access`) only the caller's own images."""
        page_size = int(page_size)
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidInput(f"Page size must be between 1 and {MAX_PAGE_SIZE}, got {page_size}.")
        where, args = self._visible(access)
        for word in (text or "").lower().split():
            where.append("(search LIKE ? ESCAPE '\\' OR id LIKE ? ESCAPE '\\')")
            args += [_like(word), _like(word)[1:]]
        for column, value in (("asset_type", asset_type), ("model", model)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        if lora:
            where.append("loras LIKE ? ESCAPE '\\'")
            args.append(_like(f"|{lora}|"))
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._lock:
            total = self._conn.execute(f"SELECT COUNT(*) FROM items {clause}", args).fetchone()[0]
            pages = max(1, math.ceil(total / page_size))
            page = min(max(1, int(page or 1)), pages)
            rows = self._conn.execute(
                f"{_READ} {clause} "
                "ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?", [*args, page_size, (page - 1) * page_size],
            ).fetchall()
        items = [item for item in map(self._item, rows) if item is not None]
        return GalleryPage(items=items, total=total, page=page, pages=pages)

    @staticmethod
    def _visible(access: Access) -> tuple[list[str], list[Any]]:
        """The WHERE terms that keep a private caller to their own rows (none for a shared gallery)."""
        return (["owner = ?"], [access.owner]) if access.owner is not None and access.private else ([], [])

    def facets(self, access: Access = OPERATOR) -> dict[str, list[str]]:
        """The asset types, models and LoRAs present (of the caller's images in private mode), for the menus."""
        where, args = self._visible(access)
        clause = f"WHERE {where[0]}" if where else ""
        with self._lock:
            def distinct(column: str) -> list[str]:
                return [r[0] for r in self._conn.execute(f"SELECT DISTINCT {column} FROM items {clause}", args) if r[0]]

            types, models = distinct("asset_type"), distinct("model")
            loras = {name for value in distinct("loras") for name in value.strip("|").split("|") if name}
        return {"asset_types": sorted(types), "models": sorted(models), "loras": sorted(loras)}

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
