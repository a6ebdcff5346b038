"""The Gallery tab: past images newest first, their settings, reuse in Generate, delete, export, PNG upload."""

from __future__ import annotations

from typing import Any

import gradio as gr

from brandgen.errors import InvalidInput
from brandgen.export import export_items
from brandgen.gallery import GalleryItem, GalleryPage, GalleryStore
from brandgen.manager import PipelineManager
from brandgen.png_settings import read_parameters
from brandgen.ownership import Access, private_gallery
from brandgen.ui.common import NO_LORA, access_of, user_errors
from brandgen.ui.generate_tab import GenerateControls

PAGE_SIZE = 48
ALL = "(all)"
FORMAT_CHOICES = [("PNG", "png"), ("Transparent PNG", "transparent_png"), ("SVG (icons, logos)", "svg")]


def item_summary(store: GalleryStore, item: GalleryItem) -> dict[str, Any]:
    """One gallery entry for API clients: what it is and where it lives under outputs/."""
    meta = item.metadata
    return {"id": item.id, "created_at": item.created_at, "file": item.path.relative_to(store.root).as_posix(),
            "user_prompt": meta.get("user_prompt"), "asset_type": meta.get("asset_type"),
            "model": meta.get("model"), "preset": meta.get("preset"), "seed": meta.get("seed"),
            "loras": meta.get("loras", []), "palette_adherence": meta.get("palette_adherence")}


def caption(item: GalleryItem) -> str:
    meta = item.metadata
    words = str(meta.get("user_prompt") or "")[:40]
    adherence = f" · palette {meta['palette_adherence']:.0%}" if meta.get("palette_adherence") is not None else ""
    return f"{words} · seed {meta.get('seed')} · {meta.get('model')}{adherence}"


def controls_from_settings(settings: dict[str, Any], manager: PipelineManager) -> tuple[dict[str, Any], list[str]]:
    """Generate-tab values for `settings` (None = leave that control as it is) and what could not be matched.

    Steps and guidance become 'default' (0 / -1) when they equal what the preset and model would pick anyway,
    so a later change of preset still means something.
    """
    warnings: list[str] = []
    values: dict[str, Any] = {"prompt": settings.get("prompt") or None, "count": 1,
                              "negative": settings.get("negative_prompt") or ""}
    seed = settings.get("seed")
    values["seed"] = int(seed) if seed is not None else None
    asset_type = settings.get("asset_type")
    values["asset_type"] = asset_type if asset_type in manager.asset_types else None
    preset = settings.get("preset")
    values["preset"] = preset if preset in manager.presets else None
    model_id = _match_model(settings.get("model"), manager)
    values["model"] = model_id
    if settings.get("model") and model_id is None:
        warnings.append(f"Model {settings['model']!r} is not in this app's list; the current model is kept.")
    entry = manager.registry.get(model_id) if model_id else None
    steps = settings.get("steps")
    preset_steps = manager.presets[preset].steps if preset in manager.presets else None
    default_steps = (entry.default_steps if entry and entry.distilled else preset_steps)
    values["steps"] = 0 if not steps or steps == default_steps else int(steps)
    guidance = settings.get("guidance_scale")
    with_lora = any(float(lora.get("weight") or 0) for lora in settings.get("loras") or [])
    default_guidance = entry.default_guidance_for(with_lora) if entry else None
    values["guidance"] = -1 if guidance is None or guidance == default_guidance else float(guidance)
    available = {info.name for info in manager.list_loras()}
    loras = []
    for lora in settings.get("loras") or []:
        if lora["name"] in available:
            loras.append((lora["name"], float(lora["weight"])))
        else:
            warnings.append(f"LoRA {lora['name']!r} is not in loras/; its slot is left empty.")
    values["loras"] = loras
    if settings.get("source") == "a1111":
        warnings.append("A1111 prompt: the asset type's template is added to it when you generate.")
    return values, warnings


def _match_model(name: str | None, manager: PipelineManager) -> str | None:
    if not name:
        return None
    for entry in manager.registry.entries():
        if name.lower() in (entry.id.lower(), entry.label.lower(), entry.source.lower()):
            return entry.id
    return None


def build_gallery_tab(
    manager: PipelineManager, store: GalleryStore, controls: GenerateControls, tabs: gr.Tabs | None = None,
) -> None:
    """Lay out the tab and wire its events and named API endpoints. Every handler, named or not (an unnamed one
    can still be called by its fn_index), takes the caller's Access: own images only in private mode, and
    deleting is for the image's owner."""
    # private: the menus start empty and fill with the caller's own values when the tab opens
    facets = store.facets() if not private_gallery(logged_in=False) else {k: [] for k in ("asset_types", "models",
                                                                                          "loras")}
    with gr.Row():
        text = gr.Textbox(label="Search", placeholder="words from the prompt, a model, a LoRA or an id", scale=3)
        asset_type = gr.Dropdown([ALL, *facets["asset_types"]], value=ALL, label="Asset type", scale=1)
        model = gr.Dropdown([ALL, *facets["models"]], value=ALL, label="Model", scale=1)
        lora = gr.Dropdown([ALL, *facets["loras"]], value=ALL, label="LoRA", scale=1)
        refresh = gr.Button("Refresh", size="sm", scale=0)
    grid = gr.Gallery(label="Past images, newest first", columns=6, height=520, allow_preview=False,
                      interactive=False, elem_id="gallery-grid")
    with gr.Row():
        prev_page = gr.Button("◀ Previous", size="sm")
        page = gr.Number(value=1, precision=0, minimum=1, label="Page", scale=0, min_width=90)
        page_info = gr.Markdown()
        next_page = gr.Button("Next ▶", size="sm")
    page_ids = gr.State([])
    with gr.Row():
        with gr.Column():
            preview = gr.Image(label="Selected image", type="filepath", interactive=False, height=300)
            selected_id = gr.Textbox(label="Image id", interactive=False)
            settings = gr.JSON(label="Settings", elem_id="gallery-settings")
            use = gr.Button("Use these settings in Generate", variant="primary")
            with gr.Row():
                sure = gr.Checkbox(value=False, label="I'm sure")
                delete = gr.Button("Delete this image", variant="stop")
        with gr.Column():
            with gr.Accordion("Export", open=True):
                export_ids = gr.Dropdown([], value=[], multiselect=True, allow_custom_value=True,
                                         label="Images to export (ids)")
                with gr.Row():
                    add_selected = gr.Button("Add selected image", size="sm")
                    add_page = gr.Button("Add this page", size="sm")
                formats = gr.CheckboxGroup(FORMAT_CHOICES, value=["png"], label="Formats")
                sizes = gr.CheckboxGroup(["1x", "2x", "4x"], value=["1x"], label="Sizes")
                export = gr.Button("Export zip")
                export_file = gr.File(label="Zip (PNG, transparent PNG, SVG + manifest.csv/json)")
            with gr.Accordion("Read settings from a PNG", open=False):
                upload = gr.File(label="A PNG made by BrandGen or A1111", file_types=["image"], type="filepath")
                gr.Markdown("Its settings appear under *Settings*; *Use these settings* sends them to Generate.")

    filters = [text, asset_type, model, lora]

    def find(text: str, asset_type: str | None, model: str | None, lora: str | None, page: Any,
             page_size: int, access: Access) -> GalleryPage:
        """store.search with the menus' '(all)' meaning no filter."""
        asset_type, model, lora = (None if value == ALL else value for value in (asset_type, model, lora))
        return store.search(text, asset_type, model, lora, int(page or 1), int(page_size), access)

    def search(
        text: str = "", asset_type: str | None = None, model: str | None = None, lora: str | None = None,
        page: int = 1, page_size: int = PAGE_SIZE, request: gr.Request | None = None,
    ) -> dict[str, Any]:
        """Gallery items newest first, filtered by words, asset type, model and LoRA; one page at a time (on a
        shared app with a private gallery: the caller's own)."""
        result = find(text, asset_type, model, lora, page, page_size, access_of(request, manager))
        return {"items": [item_summary(store, i) for i in result.items], "total": result.total,
                "page": result.page, "pages": result.pages}

    def settings_of(item: GalleryItem) -> dict[str, Any]:
        return {"id": item.id, **read_parameters(item.path, manager.asset_types)}

    def item_settings(item_id: str, request: gr.Request | None = None) -> dict[str, Any]:
        """The settings of one gallery image, read back from its PNG (seed, prompt, model, LoRAs...)."""
        return settings_of(store.get(item_id, access_of(request, manager)))

    def delete_item(item_id: str, confirm: bool = False, request: gr.Request | None = None) -> str:
        """Delete a gallery image (file and index entry); `confirm` must be true; only its owner may."""
        if not confirm:
            raise InvalidInput("Tick 'I'm sure' (confirm=true) to delete an image; this cannot be undone.")
        store.delete(item_id, access_of(request, manager))
        return f"Deleted {item_id}."

    @user_errors
    def show_page(text: str, asset_type: str, model: str, lora: str, page: float | None,
                  request: gr.Request | None = None) -> tuple:
        result = find(text, asset_type, model, lora, page, PAGE_SIZE, access_of(request, manager))
        shown = [i for i in result.items if i.path.exists()]
        note = "".join(f"\n\n⚠️ {p}" for p in store.problems[-3:])
        info = f"Page {result.page} of {result.pages} · {result.total} image(s){note}"
        return ([(str(store.thumbnail(i)), caption(i)) for i in shown], result.page, info, [i.id for i in shown])

    page_outputs = [grid, page, page_info, page_ids]

    def refresh_all(text: str, asset_type: str, model: str, lora: str, page: float | None,
                    request: gr.Request | None = None) -> tuple:
        found = store.facets(access_of(request, manager))
        menus = [gr.Dropdown(choices=[ALL, *found[key]]) for key in ("asset_types", "models", "loras")]
        return (*menus, *show_page(text, asset_type, model, lora, page, request))

    def first_page(text: str, asset_type: str, model: str, lora: str, request: gr.Request | None = None) -> tuple:
        return show_page(text, asset_type, model, lora, 1, request)

    def step(delta: int) -> Any:
        def go(text: str, asset_type: str, model: str, lora: str, current: float | None,
               request: gr.Request | None = None) -> tuple:
            return show_page(text, asset_type, model, lora, max(1, int(current or 1) + delta), request)
        return go

    @user_errors
    def select(ids: list[str], evt: gr.SelectData, request: gr.Request | None = None) -> tuple:
        if evt.index is None or evt.index >= len(ids):
            return gr.skip(), gr.skip(), gr.skip()
        item = store.get(ids[evt.index], access_of(request, manager))
        return str(item.path), item.id, settings_of(item)

    @user_errors
    def on_upload(path: str | None) -> tuple:
        if not path:
            return gr.skip(), gr.skip()
        return read_parameters(path, manager.asset_types), ""

    control_list = [controls.prompt, controls.asset_type, controls.model, controls.preset, controls.seed,
                    controls.count, controls.negative, controls.steps, controls.guidance,
                    *[c for pair in controls.loras for c in pair]]

    @user_errors
    def use_settings(current: dict[str, Any] | None) -> list:
        if not current:
            raise InvalidInput("Select an image or upload a PNG first.")
        try:
            values, warnings = controls_from_settings(current, manager)
        except (TypeError, ValueError, KeyError, OverflowError, AttributeError) as exc:  # a hand-made PNG's JSON
            raise InvalidInput(f"These settings hold values BrandGen cannot use ({type(exc).__name__}: "
                               f"{str(exc)[:200]}).") from exc
        for message in warnings:
            gr.Warning(message)
        keep = gr.update()
        out = [keep if values[k] is None else values[k]
               for k in ("prompt", "asset_type", "model", "preset", "seed", "count", "negative", "steps",
                         "guidance")]
        if len(values["loras"]) > len(controls.loras):
            gr.Warning(f"Only the first {len(controls.loras)} LoRAs fit the Generate tab's slots.")
        for i in range(len(controls.loras)):
            name, weight = values["loras"][i] if i < len(values["loras"]) else (NO_LORA, keep)
            out += [name, weight]
        return out + ([gr.Tabs(selected="generate")] if tabs is not None else [])

    @user_errors
    def on_delete(item_id: str, confirm: bool, text: str, asset_type: str, model: str, lora: str,
                  page: float | None, request: gr.Request | None = None) -> tuple:
        message = delete_item(item_id, confirm, request)
        gr.Info(message)
        return (None, "", None, False, *show_page(text, asset_type, model, lora, page, request))

    @user_errors
    def on_export(ids: list[str], chosen_formats: list[str], chosen_sizes: list[str],
                  request: gr.Request | None = None) -> str:
        result = export_items(store, ids, chosen_formats, chosen_sizes, manager.upscaler, access_of(request, manager))
        return str(result.zip_path)

    def add_ids(current: list[str] | None, new: list[str]) -> Any:
        merged = list(dict.fromkeys([*(current or []), *[i for i in new if i]]))
        return gr.Dropdown(choices=merged, value=merged)

    # Everything that redraws the grid runs in one queue, in arrival order: otherwise the refresh started by
    # opening the tab could finish after a search typed right away and overwrite its results.
    view = {"concurrency_id": "gallery_view", "concurrency_limit": 1}
    for trigger in (text.submit, asset_type.change, model.change, lora.change):
        trigger(first_page, filters, page_outputs, api_name=False, **view)
    refresh.click(refresh_all, [*filters, page], [asset_type, model, lora, *page_outputs], api_name=False, **view)
    page.submit(show_page, [*filters, page], page_outputs, api_name=False, **view)
    prev_page.click(step(-1), [*filters, page], page_outputs, api_name=False, **view)
    next_page.click(step(+1), [*filters, page], page_outputs, api_name=False, **view)
    grid.select(select, page_ids, [preview, selected_id, settings], api_name=False)
    upload.upload(on_upload, upload, [settings, selected_id], api_name="read_parameters")
    use.click(use_settings, settings, [*control_list, *([tabs] if tabs is not None else [])], api_name=False)
    delete.click(on_delete, [selected_id, sure, *filters, page],
                 [preview, selected_id, settings, sure, *page_outputs], api_name=False, **view)
    add_selected.click(lambda cur, sel: add_ids(cur, [sel]), [export_ids, selected_id], export_ids, api_name=False)
    add_page.click(add_ids, [export_ids, page_ids], export_ids, api_name=False)
    export.click(on_export, [export_ids, formats, sizes], export_file, api_name="gallery_export")
    gr.api(user_errors(search), api_name="gallery_search")
    gr.api(user_errors(item_settings), api_name="gallery_item")
    gr.api(user_errors(delete_item), api_name="gallery_delete")

    parent = gr.context.Context.block  # the Gallery tab itself, when built inside one
    opened = parent.select if isinstance(parent, gr.Tab) else (tabs.select if tabs is not None else None)
    if opened is not None:
        opened(refresh_all, [*filters, page], [asset_type, model, lora, *page_outputs], api_name=False, **view)
    if getattr(controls, "event", None) is not None:
        controls.event.then(show_page, [*filters, page], page_outputs, api_name=False, **view)
