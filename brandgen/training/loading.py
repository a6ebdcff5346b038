"""Getting a base model ready to train: which folder, which family, which dtype, which optimizer."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from brandgen.errors import InvalidInput, ModelUnavailable
from brandgen.model_loading import LOAD_LOCK, load_component
from brandgen.paths import REPO_ROOT, AppPaths
from brandgen.registry import ModelEntry, ModelRegistry
from brandgen.training.config import TrainConfig
from brandgen.training.families import PIPELINE_FAMILIES


def resolve_base_model(
    base_model: str, registry: ModelRegistry | None, family: str = ""
) -> tuple[str, str, ModelEntry | None]:
    """(source folder or hub id, family, registry entry) for a registry id or a diffusers folder path."""
    registry = registry or ModelRegistry.from_file()
    if base_model in registry.ids():
        entry = registry.get(base_model)
        return entry.resolved_source(), family or entry.family, entry
    path = Path(base_model).expanduser()
    index = path / "model_index.json"
    if not index.is_file():
        raise ModelUnavailable(
            f"Base model {base_model!r} is neither a registry id ({', '.join(registry.ids()[:4])}, ...) "
            "nor a diffusers model folder (with model_index.json)."
        )
    class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
    detected = family or PIPELINE_FAMILIES.get(class_name, "")
    if not detected:
        raise ModelUnavailable(f"{path.name} holds a {class_name}, which BrandGen cannot train LoRAs for.")
    return str(path), detected, None


def resolve_precision(mixed_precision: str, device_type: str) -> str:
    """'auto' means bf16 on CUDA GPUs that support it, fp16 on older ones, full precision elsewhere."""
    if mixed_precision != "auto":
        return "no" if device_type == "cpu" else mixed_precision
    if device_type != "cuda":
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


WEIGHT_DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_training_pipeline(source: str, family: str, entry: ModelEntry | None, dtype: torch.dtype) -> Any:
    """The full pipeline on the CPU in `dtype`; HiDream's transformer is asked for image-shaped outputs in
    training mode too (force_inference_output), as the diffusers HiDream LoRA script does."""
    from diffusers import DiffusionPipeline

    kwargs: dict[str, Any] = {"dtype": dtype}
    if entry is None or entry.source_type == "local":
        kwargs["use_safetensors"] = True
    try:
        with LOAD_LOCK:  # never beside another load in this process (see brandgen/model_loading.py)
            for name, spec in (entry.extra_components if entry else {}).items():
                kwargs[name] = load_component(spec, dtype)
            if family == "hidream":
                from diffusers import HiDreamImageTransformer2DModel

                kwargs["transformer"] = HiDreamImageTransformer2DModel.from_pretrained(
                    source, subfolder="transformer", dtype=dtype, force_inference_output=True
                )
            pipe = DiffusionPipeline.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        label = entry.label if entry else source
        raise ModelUnavailable(
            f"Could not load {label} for training: {type(exc).__name__}: {str(exc)[:300]}. Hub models must be "
            "downloaded first (`hf download <id>`); BrandGen Tiny works offline."
        ) from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_optimizer(
    name: str, params: list[torch.nn.Parameter], lr: float, weight_decay: float, device_type: str
) -> tuple[torch.optim.Optimizer, str]:
    """8-bit AdamW (bitsandbytes) on CUDA when asked or when 'auto' finds it; plain AdamW otherwise."""
    if name in ("auto", "adamw8bit") and device_type == "cuda":
        try:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay), "adamw8bit"
        except Exception:  # not installed, or no kernel for this GPU: fall back rather than fail the run
            pass
    fused = device_type == "cuda"  # one kernel for all LoRA tensors instead of a launch per tensor
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused), "adamw"


def add_lora(model: Any, cfg: TrainConfig, default_targets: tuple[str, ...], dtype: torch.dtype) -> None:
    """peft LoRA layers on the config's targets (or the family's defaults), trained in fp32 over the frozen base."""
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    torch.manual_seed(cfg.seed)  # LoRA init draws from the global generator
    model.requires_grad_(False)
    targets = list(cfg.target_modules or default_targets)
    model.add_adapter(
        LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian", target_modules=targets)
    )
    if dtype != torch.float32:
        cast_training_params(model, dtype=torch.float32)  # LoRA weights train in fp32 over bf16 base weights
    if cfg.gradient_checkpointing and getattr(model, "_supports_gradient_checkpointing", False):
        model.enable_gradient_checkpointing()
    model.train()


# SD3 declares no _repeated_blocks; its joint blocks compile for training (graph breaks allowed there): 462 -> 185 ms
# per SD3.5 Large step on an H200. The generation fast path (fullgraph) does not list them: not measured there.
TRAINING_REGIONS = {"SD3Transformer2DModel": ("JointTransformerBlock",)}


def maybe_compile(model: Any, enabled: bool, device_type: str) -> int:
    """Regional compile on CUDA only: FLUX's and SDXL's repeated blocks, SD3's joint blocks, HiDream's attention
    and experts (brandgen.acceleration.region_names); returns how many blocks were compiled. On an H200 it took
    the FLUX LoRA step from 508 to 348 ms, SD3.5 Large 462 -> 185, HiDream 793 -> 605 (docs/PERFORMANCE.md);
    a CPU gains nothing."""
    if not enabled or device_type != "cuda":
        return 0
    from brandgen.acceleration import region_names

    names = TRAINING_REGIONS.get(type(model).__name__) or region_names(model)
    blocks = [module for module in model.modules() if type(module).__name__ in names]
    for block in blocks:
        block.compile(fullgraph=False, dynamic=False)
    return len(blocks)


def compile_note(requested: bool, device_type: str, blocks: int, model: Any) -> str | None:
    """Why a compile request compiled nothing (None when it did; "off" when not asked for)."""
    if not requested:
        return "off"
    if device_type != "cuda":
        return "needs a CUDA GPU"
    return None if blocks else f"no known blocks to compile in {type(model).__name__}"


def new_run_dir(paths: AppPaths, name: str) -> Path:
    """A fresh folder name: two runs started in the same second (CLI and app) must not share one."""
    base = f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    candidate, n = paths.training_runs / base, 2
    while candidate.exists():
        candidate, n = paths.training_runs / f"{base}-{n}", n + 1
    return candidate


def resolve_data_dir(data_dir: str) -> Path:
    """Relative folders are looked up from the working directory, then from the repository root."""
    if "\0" in str(data_dir):  # os.stat would raise a bare "embedded null byte"
        raise InvalidInput("The dataset folder name contains a NUL byte; give a plain folder path.")
    path = Path(data_dir).expanduser()
    return path if path.is_absolute() or path.exists() else REPO_ROOT / path


def make_accelerator(config: TrainConfig, device: str | None, run_dir: Path) -> Any:
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.state import AcceleratorState

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:  # in-process runs may differ in precision; start clean
        AcceleratorState._reset_state(reset_partial_state=True)
    cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
    kind = "cpu" if cpu else ("cuda" if torch.cuda.is_available() else "mps")
    precision = resolve_precision(config.mixed_precision, kind)
    handlers = []
    if config.cuda_graph:  # autocast's weight-cast cache cannot live across CUDA graph replays
        from accelerate.utils import AutocastKwargs

        handlers.append(AutocastKwargs(cache_enabled=False))
    return Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=config.grad_accum,
        cpu=cpu,
        project_dir=str(run_dir),
        kwargs_handlers=handlers,
        # batches come from pinned memory (the trainer's DataLoader) and are copied without a host sync
        dataloader_config=DataLoaderConfiguration(non_blocking=kind == "cuda"),
    )
