"""The Brand kit accordion on the Generate tab: pick, save or delete a kit; apply it; palette lock."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr

from brandgen.brandkit import BrandKit, BrandKitStore, kit_state, split_words
from brandgen.errors import InvalidInput
from brandgen.manager import PipelineManager
from brandgen.metrics import parse_palette
from brandgen.ui.common import NO_LORA, user_errors
from brandgen.ui.generate_tab import GenerateControls

NO_KIT = "(no kit)"


@dataclass
class BrandKitPanel:
    kit: gr.Dropdown
    name: gr.Textbox
    palette: gr.Textbox
    trigger_words: gr.Textbox
    palette_lock: gr.Checkbox
    status: gr.Markdown


def swatches(palette_text: str) -> str:
    """Little colour squares so a typo in a hex code is seen before it is saved."""
    try:
        colors = parse_palette(palette_text) if (palette_text or "").strip() else []
    except InvalidInput as exc:
        return f"<span style='color:#b00020'>{html.escape(str(exc))}</span>"
    return "".join(
        f"<span title='{c}' style='display:inline-block;width:28px;height:28px;margin-right:4px;"
        f"border:1px solid #8884;border-radius:4px;background:{c}'></span>" for c in colors
    )


def with_triggers(prompt: str, words: list[str]) -> str:
    """Put the kit's trigger words in front of the prompt, once each."""
    prompt = (prompt or "").strip()
    missing = [w for w in words if w.lower() not in prompt.lower()]
    return ", ".join([*missing, prompt] if prompt else missing)


def build_brandkit_panel(manager: PipelineManager, controls: GenerateControls) -> BrandKitPanel:
    """Lay out the accordion; the active kit lives in controls.brand_kit (a per-browser gr.State)."""
    store = BrandKitStore(manager.paths.home / "brandkits")
    if controls.brand_kit is None:
        raise ValueError("build_brandkit_panel needs GenerateControls.brand_kit (a gr.State).")
    with gr.Accordion("Brand kit", open=False):
        with gr.Row():
            kit = gr.Dropdown([NO_KIT, *store.names()], value=NO_KIT, label="Brand kit", scale=2)
            name = gr.Textbox(label="Kit name", placeholder="acme", scale=2)
        palette = gr.Textbox(label="Palette (hex colours; include the background colour)",
                             placeholder="#ffffff, #1a73e8, #fbbc04")
        preview = gr.HTML()
        trigger_words = gr.Textbox(label="Trigger words (comma-separated; Apply puts them in the prompt)")
        palette_lock = gr.Checkbox(value=False, label="Palette lock: recolour every output to the palette")
        with gr.Row():
            apply = gr.Button("Apply to Generate", variant="primary")
            save = gr.Button("Save kit (with the LoRAs now in the slots)")
            sure = gr.Checkbox(value=False, label="I'm sure", scale=0, min_width=100)
            delete = gr.Button("Delete kit", variant="stop")
        status = gr.Markdown("No kit active: palette adherence is shown under images once one is.")
    state = controls.brand_kit
    slot_components = [c for pair in controls.loras for c in pair]

    def describe(active: dict[str, Any] | None) -> str:
        if not active:
            return "No kit active."
        lock = "on: outputs are recoloured to the palette" if active["palette_lock"] else "off"
        return (f"Active kit **{active['name']}** · palette {' '.join(active['palette'])} · palette lock {lock} · "
                "each image's palette adherence is shown in its caption and settings.")

    @user_errors
    def choose(kit_name: str, lock: bool) -> tuple:
        if not kit_name or kit_name == NO_KIT:
            return "", "", "", "", None, describe(None)
        loaded = store.get(kit_name)
        palette_text = ", ".join(loaded.palette)
        active = kit_state(loaded, lock)
        return (loaded.name, palette_text, swatches(palette_text), ", ".join(loaded.trigger_words), active,
                describe(active))

    def form_kit(kit_name: str, palette_text: str, words: str, loras: list[tuple[str, float]]) -> BrandKit:
        return BrandKit(kit_name or "", parse_palette(palette_text), split_words(words), loras).validated()

    @user_errors
    def apply_kit(kit_name: str, new_name: str, palette_text: str, words: str, lock: bool, prompt: str,
                  *slots: Any) -> list:
        """Fill the kit's LoRAs into the slots and its trigger words into the prompt; remember the palette."""
        saved = store.get(kit_name) if kit_name and kit_name != NO_KIT else None
        label = (new_name or "").strip() or (saved.name if saved else "unsaved")
        current = form_kit(label, palette_text, words, saved.loras if saved else [])
        available = {info.name for info in manager.list_loras()}
        missing = [n for n, _ in current.loras if n not in available]
        if missing:
            gr.Warning(f"LoRA(s) not in loras/: {', '.join(missing)}; add the files and press Refresh.")
        usable = [(n, w) for n, w in current.loras if n in available]
        filled: list[Any] = list(slots)
        if usable:  # a kit with LoRAs replaces the slots; one without leaves them alone
            for i in range(len(controls.loras)):
                filled[2 * i:2 * i + 2] = usable[i] if i < len(usable) else (NO_LORA, slots[2 * i + 1])
        active = kit_state(current, lock)
        return [with_triggers(prompt, current.trigger_words), *filled, active, describe(active)]

    @user_errors
    def save_kit(kit_name: str, palette_text: str, words: str, *slots: Any) -> tuple:
        loras = [(slots[i], float(slots[i + 1])) for i in range(0, len(slots), 2)
                 if slots[i] and slots[i] != NO_LORA]
        saved = store.save(form_kit(kit_name, palette_text, words, loras))
        gr.Info(f"Saved brand kit {saved.name} with {len(saved.loras)} LoRA(s).")
        return gr.Dropdown(choices=[NO_KIT, *store.names()], value=saved.name)

    @user_errors
    def delete_kit(kit_name: str, confirm: bool) -> tuple:
        if not kit_name or kit_name == NO_KIT:
            raise InvalidInput("Choose a saved kit to delete.")
        if not confirm:
            raise InvalidInput("Tick 'I'm sure' to delete the kit.")
        store.delete(kit_name)
        gr.Info(f"Deleted brand kit {kit_name}.")
        return gr.Dropdown(choices=[NO_KIT, *store.names()], value=NO_KIT), False

    def set_lock(active: dict[str, Any] | None, lock: bool) -> tuple:
        if active:
            active = {**active, "palette_lock": bool(lock)}
        return active, describe(active)

    kit.change(choose, [kit, palette_lock], [name, palette, preview, trigger_words, state, status], api_name=False)
    palette.change(swatches, palette, preview, api_name=False, show_progress="hidden")
    apply.click(apply_kit, [kit, name, palette, trigger_words, palette_lock, controls.prompt, *slot_components],
                [controls.prompt, *slot_components, state, status], api_name=False)
    save.click(save_kit, [name, palette, trigger_words, *slot_components], kit, api_name=False)
    delete.click(delete_kit, [kit, sure], [kit, sure], api_name=False)
    palette_lock.change(set_lock, [state, palette_lock], [state, status], api_name=False)
    return BrandKitPanel(kit, name, palette, trigger_words, palette_lock, status)
