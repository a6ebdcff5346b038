"""Gradio layer: one module per tab, thin over the core (no torch here)."""
