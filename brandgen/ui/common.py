"""Helpers shared by the tabs: turning core errors into messages the user sees, and who is asking."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, TypeVar

import gradio as gr

from brandgen.errors import BrandGenError
from brandgen.ownership import OPERATOR, Access, Sessions, owner_key

F = TypeVar("F", bound=Callable[..., Any])
NO_LORA = "(none)"


def session_of(request: gr.Request | None) -> str | None:
    """Who is behind an event, as an ownership key: the logged-in user, else the browser (or gradio_client)
    session; None outside a request (tests, scripts), which acts as the operator."""
    if request is None:
        return None
    return owner_key(getattr(request, "username", None), getattr(request, "session_hash", None))


def sessions_for(manager: Any) -> Sessions:
    """The app's open sessions, kept on the manager (like its training jobs) so a rebuilt UI shares them."""
    sessions = getattr(manager, "sessions", None)
    if not isinstance(sessions, Sessions):
        sessions = manager.sessions = Sessions()
    return sessions


def access_of(request: gr.Request | None, manager: Any) -> Access:
    """What the caller behind an event may see and change (brandgen.ownership); the operator outside a request."""
    if request is None:
        return OPERATOR
    return sessions_for(manager).access(getattr(request, "username", None), getattr(request, "session_hash", None))


def others_waiting(app: gr.Blocks | None) -> int | None:
    """Requests waiting in the app's queue besides the running one, for the CPU thread plan (device.ThreadPlan);
    None when unknown (no app, or a Gradio that keeps its queue elsewhere: the plan then counts the server busy)."""
    try:
        return len(app._queue)  # type: ignore[union-attr]  # events queued, not those running (gradio.queueing)
    except (AttributeError, TypeError):
        return None


def user_errors(fn: F) -> F:
    """Show BrandGenError messages as a gr.Error toast (and API error) instead of a stack trace."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BrandGenError as exc:
            raise gr.Error(str(exc), print_exception=False) from exc

    return wrapper  # type: ignore[return-value]


def readable_input_errors(demo: gr.Blocks) -> None:
    """Name the field when an input cannot take a value (text where a number belongs, a malformed upload):
    Gradio's own message is "Could not preprocess input component at index N", written for a developer. Whole-
    number fields (precision 0) refuse 1.5 instead of rounding it."""
    for block in demo.blocks.values():
        if isinstance(block, gr.components.Component) and not block.stateful:
            block.preprocess = _named_preprocess(block)  # type: ignore[method-assign]


def _named_preprocess(block: gr.components.Component) -> Callable[[Any], Any]:
    original = block.preprocess
    field = str(getattr(block, "label", None) or block.get_block_name())

    whole = getattr(block, "precision", None) == 0  # Gradio would round 1.5 to 2 without a word

    @functools.wraps(original)
    def preprocess(payload: Any) -> Any:
        if whole and isinstance(payload, float) and math.isfinite(payload) and not payload.is_integer():
            raise gr.Error(f"{field} must be a whole number, got {payload:g}.", print_exception=False)
        try:
            return original(payload)
        except gr.Error:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure here is a value the field cannot hold
            shown = repr(payload)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise gr.Error(f"{field}: {shown} is not a value this field accepts ({type(exc).__name__}).",
                           print_exception=False) from exc

    return preprocess
