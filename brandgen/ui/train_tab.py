"""The Train LoRA tab: dataset check, settings, start/cancel/resume, and live progress of the one job."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
import torch
from PIL import Image

from brandgen.manager import PipelineManager
from brandgen.ownership import Access, private_gallery
from brandgen.training.config import LORA_SETTINGS, TrainConfig
from brandgen.training.dataset import import_uploads, validate_dataset, write_template_captions
from brandgen.training.export import push_to_hub
from brandgen.training.families import UNET_CONV_TARGETS, get_family
from brandgen.training.jobs import ACTIVE, JobState, TrainingJobs
from brandgen.training.loading import resolve_data_dir
from brandgen.ui.common import access_of, user_errors

DEFAULT_DATA = "assets/brand_example/icons_v2"
ICONS = {"queued": "⏳", "running": "🏃", "cancelling": "✋", "cancelled": "⏹️", "failed": "❌", "done": "✅"}


def config_from_ui(
    folder: str,
    asset_type: str,
    model_id: str,
    name: str,
    trigger: str,
    rank: float,
    alpha: float,
    lr: float,
    epochs: float,
    max_steps: float,
    resolution: float,
    batch_size: float,
    grad_accum: float,
    validate_every: float,
    checkpoint_every: float,
    allow_small: bool,
    bucketing: bool,
    convs: bool = False,
    compile_blocks: bool = False,
    cudnn_attention: bool = True,
    cuda_graph: bool = False,
    fp8_base: bool = False,
    timesteps: str = "uniform",
    decoder_steps: float = 0,
    family: str = "",
    checkpointing: bool = True,
) -> TrainConfig:
    """Widget values (floats, blanks) -> a validated TrainConfig; `convs` adds a UNet's resnet layers."""
    targets = [*get_family(family).default_targets, *UNET_CONV_TARGETS] if convs and family in ("sd15", "sdxl") else []
    timesteps = timesteps or "uniform"
    if family:  # a flow model refuses high-noise timesteps here, before a job starts
        get_family(family).use_timesteps(timesteps)
    return TrainConfig(
        name=(name or "").strip(),
        base_model=model_id,
        asset_type=asset_type,
        data_dir=str(resolve_data_dir(folder or DEFAULT_DATA)),
        trigger=(trigger or "").strip(),
        resolution=int(resolution or 0),
        rank=int(rank or 32),
        alpha=float(alpha or 16),
        lr=float(lr or 1e-4),
        epochs=int(epochs or 0),
        max_steps=int(max_steps or 0),
        batch_size=int(batch_size or 1),
        grad_accum=int(grad_accum or 1),
        validate_every=int(validate_every or 0),
        checkpoint_every=int(checkpoint_every or 0),
        allow_small_dataset=bool(allow_small),
        bucketing=bool(bucketing),
        target_modules=targets,
        compile=bool(compile_blocks),
        cudnn_attention=bool(cudnn_attention),
        cuda_graph=bool(cuda_graph),
        fp8_base=bool(fp8_base),
        timesteps=timesteps,
        decoder_steps=int(decoder_steps or 0),
        gradient_checkpointing=checkpointing,
    ).validated()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def status_text(state: JobState | None) -> str:
    if state is None:
        return "No training job yet. Check the dataset, then press **Start training**."
    head = f"{ICONS.get(state.status, '')} **{state.name}** · {state.status}"
    if state.total:
        head += f" · step {state.step}/{state.total}"
    if state.loss is not None:
        head += f" · loss {state.loss:.4f}"
    if state.status == "running" and state.eta_seconds is not None:
        head += f" · ETA {_duration(state.eta_seconds)}"
    lines = [head]
    if state.status == "failed":
        lines.append(f"Error: {state.error}")
    elif state.message:
        lines.append(state.message)
    if state.status == "done":
        lines.append(
            f"LoRA **{state.name}** is ready: in **Generate → Brand LoRAs** press *Refresh LoRA list* and pick it."
        )
        if state.metrics:
            m = state.metrics
            base, final = m.get("eval_loss_base", 0.0), m.get("eval_loss_final", 0.0)
            lines.append(f"Fixed-noise loss on the dataset: {base:.4f} → {final:.4f}.")
    return "\n\n".join(lines)


def _read_image(path: str) -> Image.Image:
    """A decoded copy, so the sample file is closed now rather than whenever the image is collected."""
    with Image.open(path) as image:
        return image.copy()


def loss_frame(state: JobState | None) -> pd.DataFrame:
    return pd.DataFrame(state.history if state else [], columns=["step", "loss"])


def poll_view(state: JobState | None, shown_samples: list[str], shown_curve: list | None) -> tuple:
    """What one poll (once a second while a job runs) sends: the status line always; the loss curve (up to
    2,000 points) and the samples only when they changed. The hidden job JSON (the API's start/cancel replies) is
    not a poll output at all. Outputs: status, curve, samples, samples shown, curve shown, timer."""
    finished = state is None or state.status not in ACTIVE
    paths = state.samples if state else []
    gallery: Any = gr.skip() if paths == shown_samples else [(_read_image(p), Path(p).name) for p in paths]
    history = state.history if state else []
    curve = [state.id, len(history), history[-1]["step"] if history else 0] if state else None
    return (
        status_text(state),
        gr.skip() if curve == shown_curve else loss_frame(state),
        gallery,
        paths,
        curve,
        gr.Timer(active=not finished),
    )


def visible_state(state: JobState | None, job_owner: str | None, access: Access) -> JobState | None:
    """A job as this caller may see it: in private mode another user's job shows only that the accelerator is busy
    (no name, samples, loss curve or folder); once it is over, not at all."""
    if state is None or access.sees(job_owner):
        return state
    if state.status not in ACTIVE:
        return None
    return JobState(id="", name="another user's LoRA", run_dir="", status=state.status, step=state.step,
                    total=state.total, eta_seconds=state.eta_seconds,
                    message="The accelerator is training another user's LoRA; yours can start when it is done.")


def build_train_tab(manager: PipelineManager, jobs: TrainingJobs) -> None:
    """Lay out the tab and wire its events; the job itself lives in `jobs`, owned by the app."""
    entries = manager.registry.entries()
    default = manager.registry.get(manager.registry.default_id)
    start_values = default.suggested_lora_settings()

    with gr.Row():
        with gr.Column(scale=2):
            folder = gr.Textbox(DEFAULT_DATA, label="Dataset folder (images + .txt captions)")
            upload = gr.File(
                label="…or upload images (PNG/JPEG/WebP, optional .txt captions)",
                file_count="multiple",
                type="filepath",
            )
            asset_type = gr.Radio(
                [(t.label, t.id) for t in manager.asset_types.values()], value="icons", label="Asset type"
            )
            model = gr.Dropdown(
                [(f"{e.label} · {e.family}", e.id) for e in entries], value=default.id, label="Base model"
            )
            with gr.Row():
                name = gr.Textbox("my-brand", label="LoRA name")
                trigger = gr.Textbox("mybrand", label="Trigger word")
            with gr.Accordion("Training settings", open=False):
                with gr.Row():
                    rank = gr.Number(start_values["rank"], label="Rank", precision=0)
                    alpha = gr.Number(start_values["alpha"], label="Alpha")
                    lr = gr.Number(start_values["lr"], label="Learning rate")
                with gr.Row():
                    epochs = gr.Number(start_values["epochs"], label="Epochs", precision=0)
                    max_steps = gr.Number(0, label="Max steps (0 = epochs)", precision=0)
                    resolution = gr.Number(start_values["resolution"], label="Resolution", precision=0)
                with gr.Row():
                    batch_size = gr.Number(1, label="Batch size", precision=0)
                    grad_accum = gr.Number(1, label="Gradient accumulation", precision=0)
                    validate_every = gr.Number(0, label="Samples every N steps (0 = end)", precision=0)
                    checkpoint_every = gr.Number(100, label="Checkpoint every N steps", precision=0)
                with gr.Row():
                    allow_small = gr.Checkbox(False, label="Allow fewer images than the asset type's minimum")
                    bucketing = gr.Checkbox(False, label="Aspect-ratio buckets (instead of centre crop)")
                    convs = gr.Checkbox(start_values["convs"], label="Also train UNet convolutions (stronger style)")
                    timesteps = gr.Dropdown(  # the model's own choice is filled in (presets/models.json lora_settings)
                        [("Uniform", "uniform"), ("High noise (palette, layout)", "high-noise")],
                        value=start_values["timesteps"], label="Training timesteps",
                        info="SD1.5/SDXL: high noise teaches colour and layout; flow models sample their own",
                    )
                    decoder_steps = gr.Number(  # brandgen-tiny: 150 (presets/models.json lora_settings)
                        start_values["decoder_steps"], label="Brand decoder steps (0 = off)", precision=0,
                        info="then tunes the model's decoder to the images' exact colours (150: ~60 s, 2-core CPU)",
                    )
                with gr.Row():  # GPU speed options; no effect on the CPU (docs/TRAINING.md has the measurements)
                    compile_blocks = gr.Checkbox(
                        False, label="GPU: compile the model", info="faster after a 20-50 s start"
                    )
                    cudnn_attention = gr.Checkbox(
                        True, label="GPU: cuDNN attention", info="turn off if training misbehaves"
                    )
                with gr.Row():
                    cuda_graph = gr.Checkbox(  # on where it can run: a UNet step replays 4-6x faster on a GPU
                        torch.cuda.is_available(), label="GPU: CUDA graph", info="SD1.5/SDXL: 4-6x faster steps"
                    )
                    fp8_base = gr.Checkbox(  # measured: FLUX 13% faster, SD3 2%, SDXL/HiDream slower (PERFORMANCE.md)
                        False, label="GPU: fp8 base weights", info="FLUX with compile on H100/RTX 40: ~13% faster"
                    )
            with gr.Row():
                check = gr.Button("Validate dataset")
                captions = gr.Button("Write template captions")
            with gr.Row():
                start = gr.Button("Start training", variant="primary", scale=2)
                cancel = gr.Button("Cancel", scale=1)
            with gr.Accordion("Share a finished LoRA on the Hugging Face Hub (optional)", open=False):
                with gr.Row():
                    hub_repo = gr.Textbox(label="Repository (user/name)", placeholder="acme/acme-icons-lora", scale=3)
                    hub_private = gr.Checkbox(True, label="Private", scale=1)
                push = gr.Button("Upload LoRA named above", size="sm")
                hub_status = gr.Markdown()
            with gr.Row():
                runs = gr.Dropdown([], label="Earlier run to resume", scale=3, allow_custom_value=True)
                refresh_runs = gr.Button("↻", scale=0, min_width=40)
                resume = gr.Button("Resume", scale=1)
        with gr.Column(scale=3):
            shown = None if private_gallery(logged_in=False) else jobs.status()  # private: the poll fills it
            status = gr.Markdown(status_text(shown), elem_id="train-status")
            refresh = gr.Button("Refresh status", size="sm")
            plot = gr.LinePlot(loss_frame(shown), x="step", y="loss", title="Training loss", height=260)
            samples = gr.Gallery(label="Latest samples", columns=4, height=220, interactive=False)
            report_text = gr.Markdown()
            report_table = gr.Dataframe(label="Files", interactive=False, wrap=True)
    job_json = gr.JSON(visible=False, label="Job state")
    shown_samples = gr.State([])
    plotted = gr.State(None)  # (job, points, last step) of the loss curve on screen: unchanged -> not resent
    timer = gr.Timer(1.0, active=False)
    settings = [
        folder,
        asset_type,
        model,
        name,
        trigger,
        rank,
        alpha,
        lr,
        epochs,
        max_steps,
        resolution,
        batch_size,
        grad_accum,
        validate_every,
        checkpoint_every,
        allow_small,
        bucketing,
        convs,
        compile_blocks,
        cudnn_attention,
        cuda_graph,
        fp8_base,
        timesteps,
        decoder_steps,
    ]

    def dataset_dir(folder_value: str, write: bool = False) -> Path:
        """The folder the user named, if this server may read (or write captions into) it: AppPaths.dataset_roots."""
        return manager.paths.dataset_folder(resolve_data_dir(folder_value or DEFAULT_DATA), write)

    @user_errors
    def validate(folder_value: str, kind: str, size: float, small: bool) -> tuple[str, pd.DataFrame]:
        report = validate_dataset(
            dataset_dir(folder_value),
            kind,
            int(size or 512),
            manager.asset_types,
            allow_small=bool(small),
        )
        return report.summary(), report.table()

    @user_errors
    def write_captions(folder_value: str, kind: str, word: str, size: float, small: bool) -> tuple[str, pd.DataFrame]:
        written = write_template_captions(
            dataset_dir(folder_value, write=True), kind, (word or "").strip(), manager.asset_types
        )
        gr.Info(f"Wrote {len(written)} template caption file(s); edit them to describe each image.")
        return validate(folder_value, kind, size, small)

    @user_errors
    def on_upload(files: list[str] | None, kind: str, size: float, small: bool) -> tuple[str, str, pd.DataFrame]:
        dest = manager.paths.training_data / f"upload-{time.strftime('%Y%m%d-%H%M%S')}"
        import_uploads(files or [], dest)
        return (str(dest), *validate(str(dest), kind, size, small))

    def on_model(model_id: str) -> list:
        values = manager.registry.get(model_id).suggested_lora_settings()
        return [values[key] for key in LORA_SETTINGS]

    @user_errors
    def start_training(request: gr.Request | None, *values: Any) -> tuple[dict, str]:
        entry = manager.registry.get(values[2])
        # a small model's activations are a few MB: checkpointing them only recomputes (the tiny demo: 112 -> ~72 s)
        config = config_from_ui(*values, family=entry.family, checkpointing=entry.native_resolution[0] > 256)
        manager.paths.dataset_folder(config.data_dir)
        state = jobs.start(config, owner=access_of(request, manager).owner)
        return state.to_dict(), status_text(state)

    @user_errors
    def resume_training(run: str, request: gr.Request | None = None) -> tuple[dict, str]:
        if not run:
            raise gr.Error("Pick a run to resume (press ↻ to list them).")
        state = jobs.resume(run, access_of(request, manager))
        return state.to_dict(), status_text(state)

    @user_errors
    def cancel_training(request: gr.Request | None = None) -> tuple[dict, str]:
        access = access_of(request, manager)
        state = visible_state(jobs.cancel(access=access), jobs.owner(), access)
        return (state.to_dict() if state else {}), status_text(state)

    @user_errors
    def push_to_hub_ui(lora_name: str, repo: str, private: bool) -> str:
        if "/" not in (repo or ""):
            raise gr.Error("Give the repository as user/name.")
        info = manager.lora_library.get(lora_name)
        if info.path.parent == manager.lora_library.root:
            raise gr.Error("Only LoRA folders trained here (loras/<name>/) are uploaded, with their model card.")
        result = push_to_hub(info.path.parent, repo.strip(), private=bool(private))
        return f"**{result['status']}**: {result['message']}"

    def list_runs(request: gr.Request | None = None) -> gr.Dropdown:
        runs = jobs.list_runs(access_of(request, manager))
        choices = [(f"{r['run']} ({r['status']})", r["run"]) for r in runs if r["resumable"]]
        return gr.Dropdown(choices=choices, value=choices[0][1] if choices else None)

    def caller_view(request: gr.Request | None) -> JobState | None:
        return visible_state(jobs.status(), jobs.owner(), access_of(request, manager))

    def poll(previous: list[str], shown_curve: list | None, request: gr.Request | None = None) -> tuple:
        return poll_view(caller_view(request), previous, shown_curve)

    def training_status(request: gr.Request | None = None) -> dict[str, Any]:
        """The newest job's live state (status, step, total, loss, ETA, samples, loss history, error)."""
        state = caller_view(request)
        return state.to_dict() if state else {"status": "none"}

    poll_outputs = [status, plot, samples, shown_samples, plotted, timer]
    check.click(
        validate,
        [folder, asset_type, resolution, allow_small],
        [report_text, report_table],
        api_name="validate_dataset",
    )
    captions.click(
        write_captions,
        [folder, asset_type, trigger, resolution, allow_small],
        [report_text, report_table],
        api_name="write_template_captions",
    )
    upload.upload(
        on_upload, [upload, asset_type, resolution, allow_small], [folder, report_text, report_table], api_name=False
    )
    model.change(on_model, model, [resolution, rank, alpha, lr, epochs, convs, timesteps, decoder_steps],
                 api_name=False)
    start.click(start_training, settings, [job_json, status], api_name="start_training").then(
        lambda: gr.Timer(active=True), None, timer, api_name=False
    )
    resume.click(resume_training, runs, [job_json, status], api_name="resume_training").then(
        lambda: gr.Timer(active=True), None, timer, api_name=False
    )
    cancel.click(cancel_training, None, [job_json, status], api_name="cancel_training", queue=False)
    refresh_runs.click(list_runs, None, runs, api_name=False)
    push.click(push_to_hub_ui, [name, hub_repo, hub_private], hub_status, api_name="push_lora_to_hub")
    refresh.click(poll, [shown_samples, plotted], poll_outputs, api_name=False)
    timer.tick(poll, [shown_samples, plotted], poll_outputs, api_name=False, show_progress="hidden")
    gr.api(training_status, api_name="training_status")
