"""TrainConfig: every knob of one LoRA training run, as plain JSON so the UI, CLI and resume share it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from brandgen.errors import InvalidInput
from brandgen.paths import safe_name

OPTIMIZERS = ("auto", "adamw", "adamw8bit")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
MIXED_PRECISIONS = ("auto", "no", "bf16", "fp16")
TIMESTEP_SAMPLING = ("uniform", "high-noise")
MAX_DECODER_STEPS = 5000


_JSON_TYPES: dict[str, type | tuple[type, ...]] = {"str": str, "int": int, "float": (int, float), "bool": bool}


# a registry entry's lora_settings: TrainConfig fields, plus the Train tab's "convs" checkbox (-> target_modules)
LORA_SETTINGS = ("resolution", "rank", "alpha", "lr", "epochs", "convs", "timesteps", "decoder_steps")


def suggested_lora_settings(native_size: int, model_settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """LoRA settings to start from for a base model of this native size: small embedded models learn fast and
    cheaply; big ones use the design defaults (rank 32, lr 1e-4). The Train tab fills them in.

    The tiny model's are scripts/bench_train_tiny.py's figures (docs/TINY_MODEL.md): 24 epochs (600 steps) of the
    25-icon brand example at lr 3e-4 move it into the palette in < 3 min on 2 CPU cores; lr 1e-3 drifts off it.
    `model_settings` (a registry entry's `lora_settings`) wins: what works depends on the weights, not only on the
    size (a model whose palette is decided at high noise wants `timesteps: high-noise`)."""
    if native_size <= 256:
        values = {"resolution": native_size, "rank": 16, "alpha": 16, "lr": 3e-4, "epochs": 24, "convs": True}
    else:
        values = {"resolution": native_size, "rank": 32, "alpha": 16, "lr": 1e-4, "epochs": 10, "convs": False}
    return {**values, "timesteps": "uniform", "decoder_steps": 0, **(model_settings or {})}


def lora_settings_problems(settings: Any, family: str) -> list[str]:
    """Why a registry entry's `lora_settings` cannot be used (empty when it can)."""
    if not isinstance(settings, dict):
        return ["lora_settings must be an object"]
    types = {f.name: f.type for f in fields(TrainConfig)} | {"convs": "bool"}  # TrainConfig.from_dict's check
    problems = [f"lora_settings.{key} is not a setting ({', '.join(LORA_SETTINGS)})"
                for key in settings if key not in LORA_SETTINGS]
    problems += [f"lora_settings.{key} must be {'a number' if types[key] == 'float' else types[key]}"
                 for key in LORA_SETTINGS if key in settings and not _fits(settings[key], types[key])]
    decoder = settings.get("decoder_steps", 0)
    if isinstance(decoder, int) and not isinstance(decoder, bool) and not 0 <= decoder <= MAX_DECODER_STEPS:
        problems.append(f"lora_settings.decoder_steps must be 0..{MAX_DECODER_STEPS}")
    steps = settings.get("timesteps", "uniform")
    if steps not in TIMESTEP_SAMPLING:
        problems.append(f"lora_settings.timesteps must be one of {TIMESTEP_SAMPLING}")
    elif steps != "uniform" and family not in ("sd15", "sdxl"):
        problems.append("lora_settings.timesteps other than uniform is for the sd15 and sdxl families")
    return problems


def _fits(value: Any, annotation: str) -> bool:
    """Whether a JSON value suits a field (annotations are strings here); true/false is never a number."""
    if annotation == "list[str]":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if isinstance(value, bool):
        return annotation == "bool"
    return isinstance(value, _JSON_TYPES[annotation])


@dataclass
class TrainConfig:
    """One LoRA training run. Defaults follow the design notes (rank 32, alpha 16, lr 1e-4, 10 epochs, batch 1).

    `base_model` is a registry id (presets/models.json) or a path to a diffusers model folder.
    `max_steps` > 0 caps the optimizer steps and wins over `epochs`.
    """

    name: str
    base_model: str = "brandgen-tiny"
    asset_type: str = "icons"
    data_dir: str = "assets/brand_example/icons_v2"
    trigger: str = ""  # the LoRA's own trigger word; prepended to every caption that lacks it
    resolution: int = 0  # 0: the base model's native resolution
    bucketing: bool = False  # aspect-ratio buckets instead of a centre crop
    rank: int = 32
    alpha: float = 16.0
    lr: float = 1e-4
    epochs: int = 10
    max_steps: int = 0
    batch_size: int = 1
    grad_accum: int = 1
    gradient_checkpointing: bool = True
    optimizer: str = "auto"  # auto: 8-bit AdamW when bitsandbytes works on CUDA, else AdamW
    weight_decay: float = 1e-4
    max_grad_norm: float = 1.0
    warmup_steps: int = 0
    lr_scheduler: str = "constant"
    seed: int = 42
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    validate_every: int = 0  # 0: only at the end
    validation_prompt: str = ""
    validation_images: int = 2
    validation_steps: int = 0  # 0: the model's default step count
    mixed_precision: str = "auto"  # auto: bf16 on CUDA when supported, fp32 elsewhere
    allow_small_dataset: bool = False  # below the asset type's minimum is an error unless this is set
    target_modules: list[str] = field(default_factory=list)  # empty: the family's default layers
    family: str = ""  # empty: from the registry entry or the model folder's pipeline class
    compile: bool = False  # CUDA: regional torch.compile of the denoiser's repeated blocks (docs/PERFORMANCE.md)
    cuda_graph: bool = False  # CUDA, UNet models: each step replayed as one CUDA graph (training/cuda_graph.py)
    fp8_base: bool = False  # CUDA, Ada/Hopper+: frozen linear layers multiply in fp8 (brandgen/training/fp8_base.py)
    fused_lora: bool = True  # SD1.5/SDXL: LoRA as one merged-weight GEMM each way (brandgen/training/fused_lora.py)
    cudnn_attention: bool = True  # CUDA: cuDNN SDPA first, with contiguous attention gradients (brandgen/attention.py)
    # SD1.5/SDXL: "high-noise" draws training timesteps with a density rising with the noise level (t = T * sqrt(u)),
    # where colour and layout are decided; brandgen-tiny run 8's palette LoRA +1.1 -> +25.6 points (docs/TINY_MODEL.md)
    timesteps: str = "uniform"
    # > 0: after the LoRA, tune the autoencoder's decoder on the dataset for this many steps and ship the delta with
    # it (brandgen/brand_decoder.py): brandgen-tiny's decoder cannot return a brand's exact colours otherwise
    decoder_steps: int = 0

    def validated(self) -> "TrainConfig":
        """Check ranges here so a bad value fails before minutes of model loading, with a clear message."""
        safe_name(self.name, "LoRA name")
        if self.trigger and not self.trigger.replace("_", "").replace("-", "").isalnum():
            raise InvalidInput(f"Trigger word {self.trigger!r}: use one word of letters, digits, '_' or '-'.")
        checks = [
            (
                self.resolution == 0 or (self.resolution >= 16 and self.resolution % 16 == 0),
                "resolution must be 0 (native) or a multiple of 16",
            ),
            (1 <= self.rank <= 256, "rank must be 1..256"),
            (self.alpha > 0, "alpha must be > 0"),
            (0 < self.lr < 1, "learning rate must be between 0 and 1"),
            (self.epochs >= 1 or self.max_steps >= 1, "give epochs >= 1 or max_steps >= 1"),
            (self.max_steps >= 0 and self.epochs >= 0, "epochs and max_steps cannot be negative"),
            (1 <= self.batch_size <= 64, "batch size must be 1..64"),
            (1 <= self.grad_accum <= 128, "gradient accumulation must be 1..128"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
            (self.lr_scheduler in LR_SCHEDULERS, f"lr scheduler must be one of {LR_SCHEDULERS}"),
            (self.mixed_precision in MIXED_PRECISIONS, f"mixed precision must be one of {MIXED_PRECISIONS}"),
            (self.warmup_steps >= 0, "warmup steps cannot be negative"),
            (self.checkpoint_every >= 0 and self.keep_checkpoints >= 1, "checkpoint_every >= 0, keep >= 1"),
            (self.validate_every >= 0, "validate_every cannot be negative"),
            (0 <= self.validation_images <= 8, "validation images must be 0..8"),
            (self.validation_steps >= 0, "validation steps cannot be negative"),
            (self.timesteps in TIMESTEP_SAMPLING, f"timesteps must be one of {TIMESTEP_SAMPLING}"),
            (0 <= self.decoder_steps <= MAX_DECODER_STEPS, f"brand decoder steps must be 0..{MAX_DECODER_STEPS}"),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise InvalidInput("Training settings: " + "; ".join(problems) + ".")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def save(self, path: Path) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Unknown keys are an error (a typo would otherwise silently train with a default)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInput(f"Unknown training setting(s): {', '.join(unknown)}. Known: {', '.join(sorted(known))}.")
        if "name" not in data:
            raise InvalidInput("The training config needs a 'name' (the LoRA's name).")
        wrong = [f"{f.name} ({f.type})" for f in fields(cls) if f.name in data and not _fits(data[f.name], f.type)]
        if wrong:  # "rank": "4" would otherwise fail later as a bare TypeError
            raise InvalidInput(f"Training setting(s) of the wrong type: {', '.join(wrong)}.")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InvalidInput(f"Config file not found: {path}.") from None
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{path.name} is not valid JSON: {exc}.") from None
        if not isinstance(data, dict):
            raise InvalidInput(f"{path.name} must hold one JSON object of settings.")
        return cls.from_dict(data)
