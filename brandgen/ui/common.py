"""Helpers shared by the tabs: turning core errors into messages the user sees."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import gradio as gr

from brandgen.errors import BrandGenError

F = TypeVar("F", bound=Callable[..., Any])
NO_LORA = "(none)"


def user_errors(fn: F) -> F:
    """Show BrandGenError messages as a gr.Error toast (and API error) instead of a stack trace."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BrandGenError as exc:
            raise gr.Error(str(exc), print_exception=False) from exc

    return wrapper  # type: ignore[return-value]
