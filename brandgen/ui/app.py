"""Builds the four-tab BrandGen app over one PipelineManager."""

from __future__ import annotations

from typing import Any

import gradio as gr

from brandgen import __version__
from brandgen.brand_decoder import decoder_file
from brandgen.gallery import GalleryStore
from brandgen.manager import PipelineManager
from brandgen.training.jobs import TrainingJobs
from brandgen.ui.benchmark_tab import build_benchmark_tab
from brandgen.ui.brandkit_panel import build_brandkit_panel
from brandgen.ui.common import readable_input_errors, session_of, sessions_for
from brandgen.ui.gallery_tab import build_gallery_tab
from brandgen.ui.generate_tab import build_generate_tab
from brandgen.ui.train_tab import build_train_tab

COMING = "🚧 **Coming soon.** {what} is being built; nothing here works yet, and nothing pretends to."


def _api_endpoints(manager: PipelineManager) -> None:
    """Read-only endpoints for gradio_client users: what can be asked for."""

    def list_models() -> list[dict[str, Any]]:
        return [
            {"id": e.id, "label": e.label, "family": e.family, "source": e.source,
             "native_resolution": list(e.native_resolution), "vram_gb": e.vram_gb,
             "license": e.license, "commercial_use": e.commercial_use,
             "lora_settings": e.suggested_lora_settings()}  # what the Train tab starts from for this model
            for e in manager.registry.entries()
        ]

    def list_loras() -> list[dict[str, Any]]:
        return [
            {"name": i.name, "format": i.format, "size_bytes": i.size_bytes,
             "base_family": i.base_family, "trigger": i.trigger,
             "brand_decoder": decoder_file(i.path) is not None}  # brandgen/brand_decoder.py
            for i in manager.list_loras()
        ]

    def list_presets() -> dict[str, Any]:
        return {
            "quality": {p.id: {"label": p.label, "steps": p.steps, "upscale": p.upscale, "step_cache": p.step_cache}
                        for p in manager.presets.values()},
            "asset_types": {t.id: {"label": t.label, "trigger": t.trigger} for t in manager.asset_types.values()},
        }

    gr.api(list_models, api_name="list_models")
    gr.api(list_loras, api_name="list_loras")
    gr.api(list_presets, api_name="list_presets")


def build_app(manager: PipelineManager | None = None) -> gr.Blocks:
    manager = manager or PipelineManager.instance()
    store = GalleryStore(manager.paths.outputs, manager.paths.quarantine)
    with gr.Blocks(title="BrandGen") as demo:
        gr.Markdown(
            f"# BrandGen\nOn-brand icons, logos and illustrations from diffusion models · v{__version__} · "
            f"running on {manager.device.describe()}"
        )
        with gr.Tabs(selected="generate") as tabs:
            with gr.Tab("Generate", id="generate"):
                controls = build_generate_tab(manager, store, demo)
                build_brandkit_panel(manager, controls)
            with gr.Tab("Train LoRA", id="train"):
                build_train_tab(manager, TrainingJobs.for_manager(manager))
            with gr.Tab("Benchmark", id="benchmark"):
                build_benchmark_tab(manager)
            with gr.Tab("Gallery", id="gallery"):
                build_gallery_tab(manager, store, controls, tabs)
        _api_endpoints(manager)
        sessions = sessions_for(manager)

        def session_ended(request: gr.Request) -> None:  # a closed or reloaded tab: see brandgen.ownership
            sessions.ended(session_of(request))

        demo.unload(session_ended)
    readable_input_errors(demo)
    return demo
