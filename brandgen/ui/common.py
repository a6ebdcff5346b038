"""Helpers shared by the tabs: turning core errors into messages the user sees, and who is asking."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import gradio as gr

from brandgen.errors import BrandGenError

F = TypeVar("F", bound=Callable[..., Any])
NO_LORA = "(none)"


def session_of(request: gr.Request | None) -> str | None:
    """The browser (or gradio_client) session behind an event; None outside a request (tests, scripts)."""
    return getattr(request, "session_hash", None) if request is not None else None


def user_errors(fn: F) -> F:
    """Show BrandGenError messages as a gr.Error toast (and API error) instead of a stack trace."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BrandGenError as exc:
            raise gr.Error(str(exc), print_exception=False) from exc

    return wrapper  # type: ignore[return-value]
