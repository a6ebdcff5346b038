"""Who owns a piece of work on a shared app, and what a caller may see and change.

An owner is the logged-in user (with a login), else the browser or API-client session that made the work. Gallery
images and training jobs record their owner's key: a hash, so no stored file carries a session id that could be
replayed. Deleting an image, cancelling or resuming a job is for its owner. In private-gallery mode (a shared
app: a Space, or any app with a login) each caller also sees only their own images.

Sessions end (a reload, a closed tab, a restart). On an app that is not private, work a session left behind goes
back to whoever uses the app, so a designer who reloads can still delete yesterday's images; while that session is
open, another one cannot. Private apps never release work: without a login it stays with its session.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from brandgen.paths import TRUTHY

ENV_PRIVATE = "BRANDGEN_PRIVATE_GALLERY"
_USER, _SESSION = "user:", "session:"


def owner_key(username: str | None, session: str | None) -> str | None:
    """The key stored with an owner's work; None when there is no caller (CLI, scripts): the operator."""
    if username:
        kind, who = _USER, username
    elif session:
        kind, who = _SESSION, session
    else:
        return None
    return kind + hashlib.sha256(f"brandgen-owner\0{kind}{who}".encode()).hexdigest()[:24]


def private_gallery(logged_in: bool) -> bool:
    """BRANDGEN_PRIVATE_GALLERY=1/0 if set; otherwise on for a Hugging Face Space (SPACE_ID) and any app with a
    login, where the people using it are not one team sharing one gallery."""
    value = os.environ.get(ENV_PRIVATE, "").strip().lower()
    if value:
        return value in TRUTHY
    return bool(os.environ.get("SPACE_ID")) or logged_in


def _nothing_released(owner: str) -> bool:
    return False


@dataclass(frozen=True)
class Access:
    """What one caller may see and change. `owner` None is the operator (CLI, scripts, tests): everything."""

    owner: str | None = None
    private: bool = False
    released: Callable[[str], bool] = field(default=_nothing_released, compare=False, repr=False)

    def sees(self, item_owner: str | None) -> bool:
        """Private mode shows only the caller's own work (unowned work, made before owners were kept, to no one)."""
        return self.owner is None or not self.private or item_owner == self.owner

    def may_change(self, item_owner: str | None) -> bool:
        """Delete, cancel, resume: the owner's right, also for unowned work and, when not private, for work whose
        session has ended."""
        if self.owner is None or item_owner == self.owner:
            return True
        return self.sees(item_owner) and (item_owner is None or (not self.private and self.released(item_owner)))


OPERATOR = Access()


class Sessions:
    """The sessions seen since start and not yet ended: a session key absent here has released its work."""

    def __init__(self) -> None:
        self._open: set[str] = set()
        self._lock = threading.Lock()

    def seen(self, owner: str | None) -> None:
        if owner and owner.startswith(_SESSION):
            with self._lock:
                self._open.add(owner)

    def ended(self, owner: str | None) -> None:
        with self._lock:
            self._open.discard(owner or "")

    def released(self, owner: str) -> bool:
        """True for a session key whose session ended (or ran before this start); users never release."""
        with self._lock:
            return owner.startswith(_SESSION) and owner not in self._open

    def access(self, username: str | None, session: str | None) -> Access:
        """The Access of one request, noting its session as open."""
        owner = owner_key(username, session)
        self.seen(owner)
        return Access(owner, private_gallery(bool(username)) if owner else False, self.released)
