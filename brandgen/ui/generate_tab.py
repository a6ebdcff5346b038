"""The Generate tab: prompt + asset type + model + preset + brand LoRAs -> images with their settings."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import gradio as gr

from brandgen.brandkit import apply_brand_kit
from brandgen.device import MEMORY_MODES
from brandgen.errors import Cancelled, InvalidInput
from brandgen.generation import MAX_COUNT, GenerationRequest
from brandgen.manager import PipelineManager
from brandgen.performance_mode import describe
from brandgen.spaces_support import on_gpu
from brandgen.ui.common import NO_LORA, access_of, others_waiting, session_of, user_errors

LORA_SLOTS = 3


def performance_text(manager: PipelineManager) -> str:
    """Performance mode as the Generate tab shows it: off, waiting for a model, or what was applied and why not."""
    return describe(manager.fast_path, manager.fast_path_report)


@dataclass
class GenerateControls:
    """The tab's inputs, exposed so other tabs (Gallery's "use these settings") can fill them."""

    prompt: gr.Textbox
    asset_type: gr.Radio
    model: gr.Dropdown
    preset: gr.Radio
    seed: gr.Number
    count: gr.Slider
    negative: gr.Textbox
    steps: gr.Number
    guidance: gr.Number
    loras: list[tuple[gr.Dropdown, gr.Slider]]
    brand_kit: gr.State | None = None  # the active brand kit (palette, lock), set by the Brand kit panel

    def inputs(self) -> list[gr.components.Component]:
        slots = [c for pair in self.loras for c in pair]
        return [self.prompt, self.asset_type, self.model, self.preset, self.seed, self.count,
                self.negative, self.steps, self.guidance, *slots]


def lora_choices(manager: PipelineManager) -> list[str]:
    return [NO_LORA, *(info.name for info in manager.list_loras())]


def request_from_ui(
    prompt: str, asset_type: str, model_id: str, preset: str, seed: float | None, count: float,
    negative: str, steps: float | None, guidance: float | None, *lora_slots: Any,
) -> GenerationRequest:
    """Translate widget values (floats, '(none)', 0 = default) into a core request."""
    pairs = [(lora_slots[i], lora_slots[i + 1]) for i in range(0, len(lora_slots), 2)]
    try:
        loras = tuple((str(name), float(weight or 0.0)) for name, weight in pairs if name and name != NO_LORA)
        return GenerationRequest(
            prompt=prompt or "", asset_type=asset_type, model_id=model_id or None, preset=preset,
            seed=-1 if seed is None else _whole("Seed", seed), count=_whole("Count", count or 1),
            negative_prompt=negative or "", steps=_whole("Steps", steps) if steps else None,
            guidance_scale=_guidance(guidance), loras=loras,
        )
    except InvalidInput:
        raise
    except (TypeError, ValueError, OverflowError) as exc:  # NaN, infinity or text where a number belongs
        raise InvalidInput(f"Seed, count, steps, guidance and LoRA weights must be plain numbers ({exc}).") from exc


def _whole(label: str, value: Any) -> int:
    """A whole number from a widget value: 2.5 images or seed 1.5 is a mistake to report, not to round."""
    number = float(value)
    if math.isfinite(number) and not number.is_integer():
        raise InvalidInput(f"{label} must be a whole number, got {value:g}.")
    return int(number)  # NaN and infinity raise here, reported as "plain numbers"


def _guidance(value: Any) -> float | None:
    """-1 (or blank) means the model's default; any other negative number is a typo, not a default."""
    if value in (None, ""):
        return None
    number = float(value)
    if number == -1:
        return None
    if not 0 <= number <= 30:  # also NaN and -inf, which would otherwise have meant "default"
        raise InvalidInput(f"Guidance must be -1 (the model's default) or between 0 and 30, got {value}.")
    return number


def caption_for(meta: dict[str, Any]) -> str:
    loras = ", ".join(f"{lora['name']}:{lora['weight']:g}" for lora in meta["loras"]) or "no LoRA"
    adherence = f" · palette {meta['palette_adherence']:.0%}" if "palette_adherence" in meta else ""
    return f"seed {meta['seed']} · {meta['model']} · {meta['preset']} · {loras}{adherence}"


def build_generate_tab(manager: PipelineManager, gallery_store: Any = None,
                       app: gr.Blocks | None = None) -> GenerateControls:
    """Lay out the tab and wire its events; returns the controls for cross-tab wiring. `app`, the Blocks it is
    built in, tells a generation how many requests wait behind it (CPU threads: device.ThreadPlan)."""
    registry = manager.registry
    model_choices = [(entry.label, entry.id) for entry in registry.entries()]
    default_entry = registry.get(registry.default_id)

    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox(label="Prompt", placeholder="a blue shield icon", lines=2, max_lines=6)
            asset_type = gr.Radio(
                [(t.label, t.id) for t in manager.asset_types.values()], value="icons", label="Asset type",
            )
            examples = [[text, t.id] for t in manager.asset_types.values() for text in t.examples]
            if examples:  # clicking one fills the prompt and its asset type
                gr.Examples(examples, [prompt, asset_type], label="Examples", examples_per_page=len(examples))
            preset = gr.Radio(
                [(p.choice_label, p.id) for p in manager.presets.values()],
                value="standard", label="Quality",
            )
            with gr.Row():
                model = gr.Dropdown(model_choices, value=default_entry.id, label="Model", scale=3)
                seed = gr.Number(value=-1, label="Seed (-1 = random)", precision=0, scale=1)
                count = gr.Slider(1, MAX_COUNT, value=1, step=1, label="Count", scale=1)
            model_info = gr.Markdown(manager.model_summary(default_entry.id))
            with gr.Accordion("Brand LoRAs", open=False):
                slots = []
                choices = lora_choices(manager)
                for i in range(LORA_SLOTS):
                    with gr.Row():
                        name = gr.Dropdown(choices, value=NO_LORA, label=f"LoRA {i + 1}", scale=3)
                        weight = gr.Slider(-2.0, 2.0, value=0.8, step=0.05, label="Weight", scale=2)
                    slots.append((name, weight))
                refresh = gr.Button("Refresh LoRA list", size="sm")
                lora_status = gr.Markdown()
            with gr.Accordion("Advanced", open=False):
                negative = gr.Textbox(label="Extra negative prompt (added to the asset type's)", lines=1)
                with gr.Row():
                    steps = gr.Number(value=0, label="Steps (0 = preset)", precision=0)
                    guidance = gr.Number(value=-1, label="Guidance (-1 = model default; with a LoRA, its LoRA default)")
                with gr.Row():
                    memory_mode = gr.Dropdown(list(MEMORY_MODES), value=manager.memory_mode, label="Memory mode")
                    vae_tiling = gr.Checkbox(value=manager.vae_tiling, label="VAE tiling (large images)")
                performance = gr.Markdown(performance_text(manager), elem_id="performance-mode")
            with gr.Row():
                run = gr.Button("Generate", variant="primary", scale=3)
                stop = gr.Button("Cancel", scale=1)
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="Results", columns=2, height=520, format="png", interactive=False,
                                 elem_id="generate-results")
            status = gr.Markdown(elem_id="generate-status")
            settings = gr.JSON(label="Settings of the selected image", elem_id="generate-settings")
    metadata_state = gr.JSON(visible=False, label="Settings of every image")  # also the API's metadata output
    brand_kit = gr.State(None)  # a gr.State input is not part of the /generate API signature
    controls = GenerateControls(prompt, asset_type, model, preset, seed, count, negative, steps, guidance, slots,
                                brand_kit)

    run_generation = on_gpu(manager.generate)  # spaces.GPU on a ZeroGPU Space, else manager.generate itself
    live_progress = run_generation == manager.generate  # a ZeroGPU worker gets pickled arguments: no callbacks

    @user_errors
    def generate(session: gr.Request, *values: Any, progress: gr.Progress = gr.Progress()) -> tuple:
        *values, kit = values
        request = request_from_ui(*values)
        caller = access_of(session, manager)
        progress((0, 1), desc="Loading model" if manager.current_model != request.model_id else "Starting")
        try:
            on_step = (lambda i, n: progress((i, n), desc=manager.stage or "Denoising")) if live_progress else None
            result = run_generation(request, progress=on_step, owner=caller.owner, others_waiting=others_waiting(app))
        except Cancelled:
            gr.Info("Generation cancelled.")
            return [], [], "Cancelled.", None
        result.images = apply_brand_kit(result.images, result.metadata, kit)
        if gallery_store is not None:
            for image, meta in zip(result.images, result.metadata):
                meta["gallery_id"] = gallery_store.add(image, meta, owner=caller.owner).id
        items = [(image, caption_for(meta)) for image, meta in zip(result.images, result.metadata)]
        first = result.metadata[0]
        note = "" if first["commercial_use"] else " · ⚠️ model not cleared for commercial use"
        text = (f"{len(items)} image(s) in {result.seconds:.2f} s on {first['device']} · "
                f"{first['steps']} steps · seed {first['seed']}{note}") + "".join(f"\n\n⚠️ {n}" for n in result.notes)
        return items, result.metadata, text, first

    def show_settings(metadata: list[dict], evt: gr.SelectData) -> dict | None:
        return metadata[evt.index] if metadata and evt.index is not None and evt.index < len(metadata) else None

    @user_errors
    def on_model_change(model_id: str) -> str:
        entry = registry.get(model_id)
        if not entry.commercial_use:
            gr.Warning(f"{entry.label}: not cleared for commercial use ({entry.license}).")
        return manager.model_summary(model_id)

    def refresh_loras() -> list:
        choices = lora_choices(manager)
        manager.read_loras_ahead()  # performance mode: new files switch without a file read too
        problems = manager.lora_library.problems
        text = f"{len(choices) - 1} LoRA(s) found." + "".join(f"\n- ⚠️ {n}: {p}" for n, p in problems.items())
        return [gr.Dropdown(choices=choices) for _ in slots] + [text]

    @user_errors
    def on_memory(mode: str, tiling: bool, request: gr.Request | None = None) -> None:
        if access_of(request, manager).private:  # one setting for every user of the accelerator
            raise InvalidInput("On a shared app the memory mode is the same for everyone; it stays as the server "
                               "set it.")
        manager.set_memory_mode(mode, tiling)
        gr.Info(f"Memory mode {mode}{' + VAE tiling' if tiling else ''}: applies from the next generation.")

    event = run.click(generate, [*controls.inputs(), brand_kit], [gallery, metadata_state, status, settings],
                      api_name="generate")
    submitted = prompt.submit(generate, [*controls.inputs(), brand_kit], [gallery, metadata_state, status, settings],
                              api_name=False)
    for done in (event, submitted):  # the fast path is applied when a model loads: show what it did
        done.then(lambda: performance_text(manager), None, performance, api_name=False, show_progress="hidden")
    def cancel(session: gr.Request) -> None:
        manager.cancel(owner=session_of(session))  # this session's own generation, no one else's

    stop.click(cancel, None, None, api_name="cancel_generation", queue=False)
    gallery.select(show_settings, metadata_state, settings, api_name=False)
    model.change(on_model_change, model, model_info, api_name=False)
    refresh.click(refresh_loras, None, [s[0] for s in slots] + [lora_status], api_name="refresh_loras")
    memory_mode.change(on_memory, [memory_mode, vae_tiling], None, api_name=False)
    vae_tiling.change(on_memory, [memory_mode, vae_tiling], None, api_name=False)
    controls.event = event  # type: ignore[attr-defined]
    return controls
