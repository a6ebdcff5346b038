"""Builds the four-tab BrandGen app over one PipelineManager."""

from __future__ import annotations

from typing import Any

import gradio as gr

from brandgen import __version__
from brandgen.manager import PipelineManager
from brandgen.ui.generate_tab import build_generate_tab

COMING = "🚧 **Coming soon.** {what} is being built; nothing here works yet, and nothing pretends to."


def _api_endpoints(manager: PipelineManager) -> None:
    """Read-only endpoints for gradio_client users: what can be asked for."""

    def list_models() -> list[dict[str, Any]]:
        return [
            {"id": e.id, "label": e.label, "family": e.family, "source": e.source,
             "native_resolution": list(e.native_resolution), "vram_gb": e.vram_gb,
             "license": e.license, "commercial_use": e.commercial_use}
            for e in manager.registry.entries()
        ]

    def list_loras() -> list[dict[str, Any]]:
        return [
            {"name": i.name, "format": i.format, "size_bytes": i.size_bytes,
             "base_family": i.base_family, "trigger": i.trigger}
            for i in manager.list_loras()
        ]

    def list_presets() -> dict[str, Any]:
        return {
            "quality": {p.id: {"label": p.label, "steps": p.steps, "upscale": p.upscale}
                        for p in manager.presets.values()},
            "asset_types": {t.id: {"label": t.label, "trigger": t.trigger} for t in manager.asset_types.values()},
        }

    gr.api(list_models, api_name="list_models")
    gr.api(list_loras, api_name="list_loras")
    gr.api(list_presets, api_name="list_presets")


def build_app(manager: PipelineManager | None = None) -> gr.Blocks:
    manager = manager or PipelineManager.instance()
    with gr.Blocks(title="BrandGen") as demo:
        gr.Markdown(
            f"# BrandGen\nOn-brand icons, logos and illustrations from diffusion models · v{__version__} · "
            f"running on {manager.device.describe()}"
        )
        with gr.Tabs():
            with gr.Tab("Generate", id="generate"):
                build_generate_tab(manager)
            with gr.Tab("Train LoRA", id="train"):
                gr.Markdown(COMING.format(what="Brand LoRA training"))
            with gr.Tab("Benchmark", id="benchmark"):
                gr.Markdown(COMING.format(what="The models x prompts benchmark"))
            with gr.Tab("Gallery", id="gallery"):
                gr.Markdown(COMING.format(what="The gallery of past images"))
        _api_endpoints(manager)
    return demo
