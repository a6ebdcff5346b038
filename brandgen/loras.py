"""The LoRA library: discovery in loras/, format detection, refusing unsafe or broken files, and reading any
supported key layout into one (peft factors with the scale folded in), so that loading and hotswapping never
depend on which tool wrote the file."""

from __future__ import annotations

import inspect
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from brandgen.errors import LoraError
from brandgen.paths import safe_name

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"
DECODER_FILE = "brand_decoder.safetensors"  # a brand decoder beside a folder LoRA's weights (brandgen/brand_decoder.py)
_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_transformer_")


@dataclass(frozen=True)
class LoraInfo:
    """A LoRA file the app may load, with what its header says about it."""

    name: str
    path: Path
    format: str  # "diffusers" (peft keys) or "kohya"
    size_bytes: int
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def adapter_name(self) -> str:
        """peft adapter names become module attributes, so only word characters are allowed."""
        return "lora_" + re.sub(r"\W", "_", self.name)

    @property
    def base_family(self) -> str | None:
        return self.metadata.get("brandgen.base_family")

    def fits(self, family: str) -> bool:
        """Whether it may go on a model of `family`: a LoRA that does not name its base family is tried anywhere."""
        return not self.base_family or self.base_family == family

    @property
    def trigger(self) -> str:
        return self.metadata.get("brandgen.trigger", "")


def detect_format(keys: list[str]) -> str:
    """kohya files (A1111/ComfyUI) name modules lora_unet_*; diffusers/peft files use dotted paths."""
    if not keys:
        raise LoraError("The LoRA file holds no tensors.")
    if any(k.startswith(_KOHYA_PREFIXES) for k in keys):
        return "kohya"
    if any(("lora_A" in k or "lora_B" in k or "lora.down" in k or "lora_down" in k) for k in keys):
        return "diffusers"
    raise LoraError("This safetensors file has no LoRA weights in a known layout (diffusers/peft or kohya).")


def inspect_lora(path: Path, name: str | None = None) -> LoraInfo:
    """Read only the safetensors header: cheap, and never executes anything from the file."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise LoraError(
            f"{path.name} is a pickle file ({path.suffix}); BrandGen loads LoRAs only from .safetensors, "
            "because pickles can run code. Convert it to safetensors first."
        )
    if path.suffix.lower() != ".safetensors":
        raise LoraError(f"{path.name} is not a .safetensors file.")
    if not path.is_file():
        raise LoraError(f"LoRA file not found: {path.name}.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
            metadata = dict(handle.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for truncated/garbage files
        raise LoraError(f"{path.name} is not a readable safetensors file (truncated or corrupt?): {exc}") from exc
    return LoraInfo(
        name=name or path.stem, path=path, format=detect_format(keys),
        size_bytes=path.stat().st_size, metadata=metadata,
    )


class LoraLibrary:
    """The LoRAs in one folder: `name.safetensors` files and `name/` folders from the trainer."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.problems: dict[str, str] = {}  # file (as under root, e.g. "evil.ckpt", "acme/x.safetensors") -> why

    def scan(self) -> list[LoraInfo]:
        """Rescan the folder; files that cannot be used are reported in `problems`, not raised, one entry per
        file (`evil.ckpt`, `evil.bin` and `evil.pt` are three warnings, not one).

        `problems` is replaced whole at the end, so a scan on another thread never shows a half-filled dict.
        """
        found: dict[str, LoraInfo] = {}
        problems: dict[str, str] = {}
        for name, candidate in self._entries():
            try:
                found[name] = inspect_lora(candidate, name=name)
            except LoraError as exc:
                problems[candidate.relative_to(self.root).as_posix()] = str(exc)
        self.problems = problems
        return list(found.values())

    def _entries(self, only: str | None = None) -> list[tuple[str, Path]]:
        """(name, file to read) for each LoRA-like entry, in sorted order (a later one of the same name wins);
        `only` keeps one name without reading any file."""
        entries = sorted(self.root.iterdir()) if self.root.is_dir() else []
        result = []
        for entry in entries:
            name = entry.stem if entry.is_file() else entry.name
            if only is not None and name != only:
                continue
            candidate = self._candidate(entry)
            if candidate is not None:
                result.append((name, candidate))
        return result

    def _candidate(self, entry: Path) -> Path | None:
        if entry.is_file() and entry.suffix.lower() in (".safetensors", *PICKLE_SUFFIXES):
            return entry
        if entry.is_dir():
            preferred = entry / DIFFUSERS_FILE
            if preferred.is_file():
                return preferred
            files = sorted(p for p in entry.glob("*.safetensors") if p.name != DECODER_FILE)
            return files[0] if files else None
        return None

    def names(self) -> list[str]:
        return [info.name for info in self.scan()]

    def get(self, name: str) -> LoraInfo:
        """One LoRA by name, reading only its own file's header (generation asks for each LoRA it applies)."""
        name = safe_name(name, "LoRA name")
        found, problem = None, None
        for _, candidate in self._entries(only=name):
            try:
                found = inspect_lora(candidate, name=name)
            except LoraError as exc:
                problem = str(exc)
        if found is not None:
            return found
        if problem is not None:
            raise LoraError(f"LoRA {name!r} cannot be used: {problem}")
        raise LoraError(f"No LoRA named {name!r} in {self.root.name}/. Refresh the list or add the file.")


def read_metadata_json(info: LoraInfo) -> dict:
    """Training metadata (base model, trigger, rank, steps) stored by our trainer, if any."""
    raw = info.metadata.get("brandgen", "")
    try:
        return json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return {}


# ----- one layout for every key format ---------------------------------------------------------------------
# diffusers' own loader converts a file only when its *first* key is not in peft layout, so a file from
# `save_lora_weights(convert_state_dict_to_diffusers(...))` that mixes `to_k.lora.down` (attention) with
# `proj_in.lora_A` (other layers) loses its attention weights, and hotswap then fails on "unexpected keys".
# Reading every key on its own avoids both.
_PART_SUFFIXES = (
    (re.compile(r"\.lora_A(?:\.default)?\.weight$"), "A"), (re.compile(r"\.lora_B(?:\.default)?\.weight$"), "B"),
    (re.compile(r"\.lora\.down\.weight$"), "A"), (re.compile(r"\.lora\.up\.weight$"), "B"),
    (re.compile(r"\.lora_linear_layer\.down\.weight$"), "A"), (re.compile(r"\.lora_linear_layer\.up\.weight$"), "B"),
    (re.compile(r"\.lora_down\.weight$"), "A"), (re.compile(r"\.lora_up\.weight$"), "B"),
)
_ATTN_PROC = re.compile(r"\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")  # old attention-processor files
_KOHYA_COMPONENTS = {"lora_unet_": None, "lora_transformer_": None, "lora_te_": "text_encoder",
                     "lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2", "lora_te3_": "text_encoder_3"}
LORA_COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")


def _split_part(key: str) -> tuple[str, str] | None:
    """'x.attn1.to_k.lora.down.weight' -> ('x.attn1.to_k', 'A'); alphas -> (module, 'alpha'); else None."""
    key = key.replace(".processor.", ".")
    if key.endswith(".alpha"):
        base = key[: -len(".alpha")]
        found = _split_part(base)
        return (found[0] if found else base, "alpha")
    match = _ATTN_PROC.search(key)
    if match:
        name = "to_out.0" if match.group(1) == "to_out" else match.group(1)
        return key[: match.start()] + "." + name, "A" if match.group(2) == "down" else "B"
    for pattern, part in _PART_SUFFIXES:
        match = pattern.search(key)
        if match:
            return key[: match.start()], part
    return None


@dataclass
class LoraFactors:
    """A LoRA as (A, B) factors per layer of each pipeline component, its strength folded into B, so that
    W' = W + weight * B @ A for every layer whatever format the file was in."""

    name: str
    factors: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]  # component -> module path -> (A, B)

    @property
    def rank(self) -> int:
        return max((a.shape[0] for layers in self.factors.values() for a, _ in layers.values()), default=0)

    def modules(self, component: str) -> set[str]:
        return set(self.factors.get(component, {}))

    def peft_state_dict(self) -> dict[str, torch.Tensor]:
        """`component.module.lora_A.weight` keys without alphas: diffusers then uses scale 1 per layer."""
        return {f"{c}.{m}.lora_{part}.weight": t for c, layers in self.factors.items() for m, (a, b) in layers.items()
                for part, t in (("A", a), ("B", b))}


def _converted_state_dict(pipe: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, float], dict[str, Any]]:
    """The file through the pipeline's own `lora_state_dict`, for layouts only diffusers knows (SDXL's sgm block
    names, FLUX's BFL names with fused qkv, xlabs, ...)."""
    loader = getattr(type(pipe), "lora_state_dict", None)
    if loader is None:
        return _raw_state_dict(path)
    params = inspect.signature(loader).parameters
    kwargs: dict[str, Any] = {"return_lora_metadata": True}
    if "return_alphas" in params:
        kwargs["return_alphas"] = True
    if getattr(pipe, "unet", None) is not None:
        kwargs["unet_config"] = pipe.unet.config  # SDXL's sgm block names depend on it
    out = loader(str(path), **kwargs)
    state, alphas, metadata = (out[0], out[1], out[2]) if len(out) == 3 else (out[0], None, out[1])
    return dict(state), {k: float(v) for k, v in (alphas or {}).items()}, dict(metadata or {})


def _raw_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, float], dict[str, Any]]:
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as handle:
        header = dict(handle.metadata() or {})
    try:
        metadata = json.loads(header.get("lora_adapter_metadata", "{}"))
    except json.JSONDecodeError:
        metadata = {}
    return load_file(str(path)), {}, metadata if isinstance(metadata, dict) else {}


class _ModuleIndex:
    """Module names of the pipeline's components, built once per read: SDXL's 722 LoRA layers looked up with
    `get_submodule` three times each cost ~100 ms of a LoRA switch."""

    def __init__(self, pipe: Any):
        self.pipe = pipe
        self._names: dict[str, dict[str, torch.nn.Module]] = {}
        self._kohya: dict[str, dict[str, str]] = {}

    def modules(self, component: str) -> dict[str, torch.nn.Module]:
        if component not in self._names:
            model = getattr(self.pipe, component, None)
            self._names[component] = dict(model.named_modules()) if isinstance(model, torch.nn.Module) else {}
        return self._names[component]

    def kohya(self, component: str) -> dict[str, str]:
        """kohya's flat names (dots as underscores) -> module paths, for the names that stay unambiguous."""
        if component not in self._kohya:
            names = list(self.modules(component))
            counts = Counter(n.replace(".", "_") for n in names)
            self._kohya[component] = {n.replace(".", "_"): n for n in names if counts[n.replace(".", "_")] == 1}
        return self._kohya[component]


def _resolve(pipe: Any, key: str, index: _ModuleIndex) -> tuple[str, str] | None:
    """(component, module path inside it) for a key's module part, or None when nothing matches."""
    for prefix, component in _KOHYA_COMPONENTS.items():
        if key.startswith(prefix):
            component = component or ("unet" if getattr(pipe, "unet", None) is not None else "transformer")
            names = index.kohya(component)
            flat = key[len(prefix):]
            # A1111 names CLIP layers text_model_encoder_...; transformers 5's CLIPTextModel has no text_model
            name = names.get(flat) or names.get(flat.removeprefix("text_model_"))
            return (component, name) if name else None
    first, _, rest = key.partition(".")
    if first in LORA_COMPONENTS and getattr(pipe, first, None) is not None:
        return (first, rest) if rest in index.modules(first) else None
    for component in ("unet", "transformer"):  # unprefixed keys: the denoiser's
        if getattr(pipe, component, None) is not None:
            return (component, key) if key in index.modules(component) else None
    return None


def _group_parts(pipe: Any, tensors: dict[str, Any], index: _ModuleIndex
                 ) -> tuple[dict[tuple[str, str], dict[str, Any]], list[str]]:
    """Factors and alphas by (component, module); the keys that name no layer of `pipe`."""
    parts: dict[tuple[str, str], dict[str, Any]] = {}
    unknown = []
    for key, value in tensors.items():
        split = _split_part(key)
        where = _resolve(pipe, split[0], index) if split else None
        if where is None:
            unknown.append(key)
        else:
            parts.setdefault(where, {})[split[1]] = value
    return parts, unknown


def _scale(component: str, module: str, rank: int, alpha: float | None, metadata: dict[str, Any]) -> float:
    """peft's alpha / r (or / sqrt(r) for rsLoRA), from the file's alphas or its saved adapter config."""
    if alpha is None and f"{component}.lora_alpha" in metadata:
        from peft.utils.other import get_pattern_key

        pattern = metadata.get(f"{component}.alpha_pattern") or {}
        alpha = float(pattern.get(get_pattern_key(pattern.keys(), module), metadata[f"{component}.lora_alpha"]))
    if alpha is None:
        return 1.0
    return alpha / (rank ** 0.5 if metadata.get(f"{component}.use_rslora") else rank)


def read_lora_factors(pipe: Any, path: Path, name: str = "", model_label: str = "this model") -> LoraFactors:
    """Read a diffusers, peft or kohya LoRA file into LoraFactors for `pipe`; LoraError names what does not fit."""
    name = name or Path(path).stem
    index = _ModuleIndex(pipe)
    with safe_open(str(path), framework="pt") as handle:  # the names first: the tensors are read once, below
        _, unknown = _group_parts(pipe, dict.fromkeys(handle.keys()), index)
    converted = False
    if unknown:  # names only diffusers' converters know; they assume published model sizes, so they may fail
        try:
            state, alphas, metadata = _converted_state_dict(pipe, Path(path))
            parts, unknown = _group_parts(pipe, {**state, **alphas}, index)
            converted = True
        except Exception as exc:  # noqa: BLE001 - reported with the key that could not be placed
            log.info("diffusers could not convert %s: %s", name, exc)
    if not converted:
        state, alphas, metadata = _raw_state_dict(Path(path))
        parts, unknown = _group_parts(pipe, {**state, **alphas}, index)
    if unknown and not parts:
        raise LoraError(f"LoRA {name!r} matched no layer of {model_label}: it was made for another model.")
    if unknown:
        raise LoraError(f"LoRA {name!r} does not fit {model_label}: {len(unknown)} of its weights are not LoRA "
                        f"factors of its layers (e.g. {unknown[0]!r}); it was made for another model or method.")
    if not parts:
        raise LoraError(f"LoRA {name!r} holds no LoRA weights.")
    factors: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    zero: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    for (component, module), got in sorted(parts.items()):
        if "A" not in got or "B" not in got:
            raise LoraError(f"LoRA {name!r}: layer {component}.{module} has only half of its factors.")
        layer = index.modules(component).get(module)
        if layer is None:
            raise LoraError(f"LoRA {name!r} targets {component}.{module}, which this model does not have: it was "
                            "made for another model.")
        down, up = got["A"], got["B"]
        alpha = float(got["alpha"]) if "alpha" in got else None
        if down.ndim < 2 or up.ndim < 2 or up.shape[1] != down.shape[0] or not _fits(layer, down, up):
            raise LoraError(f"LoRA {name!r} does not fit {component}.{module}: factors {tuple(down.shape)} / "
                            f"{tuple(up.shape)}; it was made for another model.")
        scale = _scale(component, module, down.shape[0], alpha, metadata)
        # kohya's fused qkv files carry zero blocks; count_nonzero is 2x faster than any() on bf16 (CPU)
        target = factors if torch.count_nonzero(up) and torch.count_nonzero(down) else zero
        target.setdefault(component, {})[module] = (down, up if scale == 1.0 else (up.float() * scale).to(up.dtype))
    # layers with all-zero factors change nothing and would only widen a hotswap slot; an all-zero LoRA stays whole
    return LoraFactors(name=name, factors=factors or zero)


def _fits(layer: torch.nn.Module, down: torch.Tensor, up: torch.Tensor) -> bool:
    base = getattr(layer, "base_layer", layer)  # a layer that already carries a peft adapter
    if isinstance(base, torch.nn.Linear):
        return down.ndim == 2 and down.shape[1] == base.in_features and up.shape[0] == base.out_features
    if isinstance(base, torch.nn.Conv2d):
        return down.ndim == 4 and down.shape[1] == base.in_channels and up.shape[0] == base.out_channels
    return False
