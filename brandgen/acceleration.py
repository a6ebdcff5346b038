"""The fast path: everything that makes a resident pipeline generate faster on a CUDA GPU, in one place.

bf16 weights, PyTorch SDPA attention, fused QKV projections, channels_last UNets, optional torchao weight
quantization inside compiled code (brandgen.quantization), and regional torch.compile (a DiT's repeated
transformer blocks, a UNet's attention stacks, ResNets and samplers: one graph per module shape, the glue eager)
with a persistent inductor cache. LoRAs merged into the weights (brandgen.lora_fuse, the default) keep fused QKV;
fp8 quantizes the LoRA layers too (the merge requantizes them), int8 leaves them bf16; the opt-in adapter slot of
brandgen.lora_hotswap keeps QKV unfused so it reaches to_q/to_k/to_v.
On CPU the GPU-only steps are skipped and the report says why.
The same functions back PipelineManager and scripts/gpu_bench.py, so the benchmark measures what the app runs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from brandgen.errors import InvalidInput

log = logging.getLogger(__name__)

COMPILE_MODES = ("off", "auto", "regional", "full")  # auto: see compile_choice
TORCH_COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
QUANTIZATIONS = ("none", "fp8", "int8wo")
HOTSWAP_STYLES = ("merge", "slot")
MERGEABLE_QUANTIZATIONS = ("fp8",)  # per-row fp8 weights take a LoRA merge (lora_fuse.Fp8Rows); int8 does not
FUSED_PARTS = {"to_qkv": ("to_q", "to_k", "to_v"), "to_kv": ("to_k", "to_v"),
               "to_added_qkv": ("add_q_proj", "add_k_proj", "add_v_proj")}  # fused projection -> layers it joins
DENOISER_NAMES = ("transformer", "unet")
# Classes without `_repeated_blocks` (SD3's transformer), or whose repeated block holds data-dependent code
# (HiDream's MoE routing reads expert counts on the host), are compiled at these graph-safe regions instead.
REGION_OVERRIDES: dict[str, tuple[str, ...]] = {
    "HiDreamImageTransformer2DModel": ("HiDreamAttention", "HiDreamImageFeedForwardSwiGLU"),
    "SD3Transformer2DModel": ("JointTransformerBlock",),
}


UNET_REGIONS = ("layers", "blocks")
UNET_LAYER_REGIONS = ("Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D")


def region_names(model: torch.nn.Module, unet_regions: str = "layers") -> tuple[str, ...]:
    """Class names of the blocks regional compilation compiles in this model (empty: none known).

    A UNet's regions ("layers", the default) are its attention stacks (Transformer2DModel), ResNets and samplers:
    nearly all of its compute, yet few distinct graphs, since modules of one class and one shape share a compiled
    graph (SDXL: 2 attention shapes, ~10 ResNet shapes). Its `_repeated_blocks` (transformer blocks only) left the
    ResNets eager; "blocks" (down/mid/up blocks, 7 distinct graphs for SDXL, each compiled per batch variant) was
    still compiling after 6 min at load on an H100 with fp8 (docs/PERFORMANCE.md)."""
    if type(model).__name__ == "UNet2DConditionModel":
        if unet_regions == "layers":
            return UNET_LAYER_REGIONS
        blocks = [*model.down_blocks, model.mid_block, *model.up_blocks]
        return tuple(dict.fromkeys(type(b).__name__ for b in blocks if b is not None))
    return REGION_OVERRIDES.get(type(model).__name__) or tuple(getattr(model, "_repeated_blocks", ()) or ())


def region_modules(model: torch.nn.Module, unet_regions: str = "layers") -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of each region `compile_regions` compiles, outermost only."""
    names, found = region_names(model, unet_regions), []
    for name, module in model.named_modules():
        if type(module).__name__ in names and not any(name.startswith(outer + ".") for outer, _ in found):
            found.append((name, module))
    return found


def compile_choice(model: torch.nn.Module, compile: str) -> str:
    """What `compile="auto"` compiles: a UNet whole, a DiT by its repeated blocks (a named choice stays).

    SDXL on an H100 (scripts/e2e_bench.py, docs/PERFORMANCE.md run 4): the whole UNet ran a 1024² image in 1.08 s,
    what the expert's compile gives, after 4.4 min of cold compile at load (1 min from the cache); its layer regions
    ran 1.96 s (1.39 s with the Fast preset) after 6.6 min. FLUX's transformer blocks regionally ran 3.86 s, the
    expert's whole-model compile 3.85 s, and regions keep compile short and the DiT step cache simple."""
    if compile != "auto":
        return compile
    if type(model).__name__ == "UNet2DConditionModel" or not region_names(model):
        return "full"
    return "regional"


@dataclass(frozen=True)
class FastPathOptions:
    """Which speed-ups to apply; the defaults are the recipe measured in docs/perf/benchmark.md."""

    bf16: bool = True
    sdpa: bool = True
    fuse_qkv: bool = True
    channels_last: bool = True
    compile: str = "auto"  # off, auto (compile_choice), regional or full
    compile_mode: str | None = None  # torch.compile mode; None = inductor's default
    fullgraph: bool = True
    compile_vae: bool = False
    compile_backend: str = "inductor"
    cache_dir: str | None = None  # persistent inductor cache, so a restart compiles from cache
    lora_hotswap: bool = False
    hotswap_rank: int = 64  # the highest LoRA rank the slot style swaps in
    hotswap_style: str = "merge"  # merge: LoRAs merged into the weights (lora_fuse); slot: a peft adapter slot
    unet_regions: str = "layers"  # what regional compile compiles in a UNet: layers (see region_names) or blocks
    quantization: str = "none"
    allow_cpu: bool = False  # compile/bf16 on CPU too: only for smoke tests of the code path

    def validated(self) -> "FastPathOptions":
        problems = []
        if self.compile not in COMPILE_MODES:
            problems.append(f"compile must be one of {COMPILE_MODES}, got {self.compile!r}")
        if self.compile_mode not in TORCH_COMPILE_MODES:
            problems.append(f"compile_mode must be one of {TORCH_COMPILE_MODES}, got {self.compile_mode!r}")
        if self.quantization not in QUANTIZATIONS:
            problems.append(f"quantization must be one of {QUANTIZATIONS}, got {self.quantization!r}")
        if self.unet_regions not in UNET_REGIONS:
            problems.append(f"unet_regions must be one of {UNET_REGIONS}, got {self.unet_regions!r}")
        if self.hotswap_style not in HOTSWAP_STYLES:
            problems.append(f"hotswap_style must be one of {HOTSWAP_STYLES}, got {self.hotswap_style!r}")
        if not isinstance(self.hotswap_rank, int) or not 1 <= self.hotswap_rank <= 1024:
            problems.append(f"hotswap_rank must be an integer 1..1024, got {self.hotswap_rank!r}")
        if problems:
            raise InvalidInput("Invalid fast path options: " + "; ".join(problems) + ".")
        return self


# ----- pieces that work on one model (used by apply_fast_path and by scripts/gpu_bench.py) ------------------
def find_denoiser(pipe: Any) -> tuple[str | None, torch.nn.Module | None]:
    for name in DENOISER_NAMES:
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            return name, module
    return None, None


def _processors(model: torch.nn.Module) -> list[tuple[torch.nn.Module, Any]]:
    return [(m, m.processor) for m in model.modules() if hasattr(m, "processor") and hasattr(m, "set_processor")]


def ensure_sdpa(model: torch.nn.Module) -> dict[str, int]:
    """Replace eager (matmul + softmax) attention processors with SDPA ones; count processors by class.

    diffusers defaults to SDPA; this undoes anything that forced the slow path (an old pipeline's saved
    processors, `set_default_attn_processor()`).
    """
    from diffusers.models.attention_processor import AttnProcessor2_0

    counts: dict[str, int] = {}
    for module, processor in _processors(model):
        if type(processor).__name__ == "AttnProcessor":
            module.set_processor(AttnProcessor2_0())
            processor = module.processor
            counts["replaced_eager"] = counts.get("replaced_eager", 0) + 1
        counts[type(processor).__name__] = counts.get(type(processor).__name__, 0) + 1
    return counts


def qkv_fused(model: torch.nn.Module) -> bool:
    """True when attention reads the fused to_qkv/to_kv projections (and so would bypass LoRAs on to_q/k/v)."""
    for module, processor in _processors(model):
        if type(processor).__name__.startswith("Fused"):
            return True
        if type(module).__name__ != "Attention" and getattr(module, "fused_projections", False):
            return True
    return False


def fuse_qkv(model: torch.nn.Module) -> int:
    """One matmul instead of three per attention; returns how many attention modules now use fused weights."""
    if not hasattr(model, "fuse_qkv_projections"):
        return 0
    model.fuse_qkv_projections()
    return sum(1 for module, processor in _processors(model)
               if type(processor).__name__.startswith("Fused") or getattr(module, "fused_projections", False))


def unfuse_qkv(model: torch.nn.Module) -> bool:
    """Go back to separate projections so LoRA layers on to_q/to_k/to_v take effect again."""
    if not qkv_fused(model):
        return False
    model.unfuse_qkv_projections()
    return True


# Inductor settings diffusers' torch.compile guide gives for UNets: 1x1 convolutions as matmuls (channels_last),
# no epilogue fusion. The expert recipe of scripts/e2e_bench.py uses them too, so both compile the same way.
UNET_INDUCTOR_OPTIONS = {"conv_1x1_as_mm": True, "epilogue_fusion": False}


def _compile_kwargs(mode: str | None, fullgraph: bool, backend: str,
                    model: torch.nn.Module | None = None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"fullgraph": fullgraph, "backend": backend}
    if mode not in (None, "default"):
        kwargs["mode"] = mode  # torch.compile takes a mode or inductor options, not both
    elif backend == "inductor" and type(model).__name__ == "UNet2DConditionModel":
        kwargs["options"] = dict(UNET_INDUCTOR_OPTIONS)
    return kwargs


def compile_regions(model: torch.nn.Module, mode: str | None = None, fullgraph: bool = True,
                    backend: str = "inductor", unet_regions: str = "layers") -> int:
    """Regional compilation: compile each repeated block once (they share one graph), leave the glue eager."""
    kwargs = _compile_kwargs(mode, fullgraph, backend, model)
    names = region_names(model, unet_regions)
    if not names:
        raise ValueError(f"{type(model).__name__} declares no repeated blocks to compile; use compile='full'.")
    regions = region_modules(model, unet_regions)
    if not regions:
        raise ValueError(f"None of {names} found in {type(model).__name__}.")
    for _, module in regions:
        module.compile(**kwargs)
    return len(regions)


def compile_full(model: torch.nn.Module, mode: str | None = None, fullgraph: bool = True,
                 backend: str = "inductor") -> int:
    model.compile(**_compile_kwargs(mode, fullgraph, backend, model))
    return 1


def compiled_modules(model: torch.nn.Module) -> int:
    return sum(1 for m in model.modules() if getattr(m, "_compiled_call_impl", None) is not None)


def configure_compile_cache(cache_dir: str | Path) -> dict[str, Any]:
    """Point inductor's FX-graph and autograd caches at a folder that outlives the process.

    torch reads these as process-wide settings (environment + config); a restart then reuses compiled kernels.
    """
    path = Path(cache_dir).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "1"
    os.environ["TORCHINDUCTOR_AUTOGRAD_CACHE"] = "1"
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    autograd = False
    try:
        import torch._functorch.config as functorch_config

        functorch_config.enable_autograd_cache = True
        autograd = True
    except (ImportError, AttributeError):  # older torch: FX graph cache only
        pass
    return {"cache_dir": str(path), "fx_graph_cache": True, "autograd_cache": autograd}


def lora_layer(name: str, targets: tuple[str, ...]) -> bool:
    """Whether a LoRA on the family's `targets` changes layer `name` (a fused projection counts for its parts)."""
    def hit(layer: str) -> bool:
        return any(layer == t or layer.endswith("." + t) for t in targets)

    parent, _, leaf = name.rpartition(".")
    return hit(name) or any(hit(f"{parent}.{part}" if parent else part) for part in FUSED_PARTS.get(leaf, ()))


def accelerate_model(model: torch.nn.Module, options: FastPathOptions, gpu_ok: bool,
                     report: dict[str, Any], lora_targets: tuple[str, ...] = ()) -> dict[str, Any]:
    """The denoiser half of the fast path, in the order that keeps each step valid for the next.
    `lora_targets`: the family's LoRA layers, kept unquantized when LoRAs are merged into them."""
    from brandgen.quantization import quantize_weights, torchao_missing_reason  # it imports this module

    applied, skipped = report.setdefault("applied", []), report.setdefault("skipped", {})
    compiling = compile_choice(model, options.compile)
    if options.sdpa:
        report["attention_processors"] = ensure_sdpa(model)
        applied.append("sdpa")
    if not options.fuse_qkv:
        skipped["fuse_qkv"] = "off"
    elif options.lora_hotswap and options.hotswap_style == "slot":
        skipped["fuse_qkv"] = "the LoRA slot keeps to_q/to_k/to_v separate (fused QKV would bypass the LoRA)"
    else:
        try:
            report["fused_attention_modules"] = fuse_qkv(model)
            if report["fused_attention_modules"]:
                applied.append("fuse_qkv")
            else:
                skipped["fuse_qkv"] = f"{type(model).__name__} has no fusable attention"
        except ValueError as exc:  # e.g. added-KV processors
            skipped["fuse_qkv"] = str(exc)
    if not options.channels_last:
        skipped["channels_last"] = "off"
    elif type(model).__name__ != "UNet2DConditionModel":
        skipped["channels_last"] = "only convolutional UNets gain from channels_last"
    elif not gpu_ok:
        skipped["channels_last"] = "CPU: no gain"
    else:
        model.to(memory_format=torch.channels_last)
        applied.append("channels_last")
    if options.quantization == "none":
        pass
    elif not gpu_ok:
        skipped["quantization"] = "CPU: torchao fp8/int8 kernels are for CUDA"
    elif (reason := torchao_missing_reason()) is not None:
        skipped["quantization"] = reason
        log.warning(reason)
    else:
        within = (tuple(name for name, _ in region_modules(model, options.unet_regions))
                  if compiling == "regional" and region_names(model, options.unet_regions) else None)
        merged = options.lora_hotswap and options.hotswap_style == "merge"
        keep = lora_targets if merged and options.quantization not in MERGEABLE_QUANTIZATIONS else ()
        report["quantization"] = quantize_weights(model, options.quantization, within, keep)
        applied.append(f"quantization:{options.quantization}")
    if compiling == "off":
        skipped["compile"] = "off"
    elif not gpu_ok:
        skipped["compile"] = "CPU: compile time outweighs the gain (set allow_cpu for smoke tests)"
    else:
        try:
            if compiling == "regional":
                report["compiled_regions"] = compile_regions(model, options.compile_mode, options.fullgraph,
                                                             options.compile_backend, options.unet_regions)
            else:
                from brandgen.step_cache import tap_whole_unet

                report["step_cache_taps"] = tap_whole_unet(model)  # the Fast preset on a UNet compiled whole
                report["compiled_regions"] = compile_full(model, options.compile_mode, options.fullgraph,
                                                          options.compile_backend)
            applied.append(f"compile:{compiling}")
        except ValueError as exc:
            skipped["compile"] = str(exc)
    return report


# ----- the pipeline entry point ------------------------------------------------------------------------------
def _has_offload_hooks(pipe: Any) -> bool:
    return any(getattr(c, "_hf_hook", None) is not None
               for c in getattr(pipe, "components", {}).values() if isinstance(c, torch.nn.Module))


def apply_fast_path(pipe: Any, options: FastPathOptions, device: str | None = None,
                    lora_targets: tuple[str, ...] = ()) -> dict[str, Any]:
    """Apply `options` to a loaded pipeline and report what was applied and, for the rest, why not."""
    options = options.validated()
    device = str(device or getattr(pipe, "device", "cpu"))
    on_cuda = device.startswith("cuda")
    gpu_ok = on_cuda or options.allow_cpu
    report: dict[str, Any] = {"device": device, "applied": [], "skipped": {}}
    applied, skipped = report["applied"], report["skipped"]
    name, denoiser = find_denoiser(pipe)
    report["denoiser"] = name
    if denoiser is None:
        skipped["all"] = "the pipeline has no unet or transformer"
        return report
    if not on_cuda:
        skipped["resident"] = "not a CUDA device"
    elif _has_offload_hooks(pipe):
        skipped["resident"] = "CPU offload is on (memory mode); choose 'resident' for the full speed-up"
    else:
        pipe.to(device)
        applied.append("resident")
    if options.cache_dir and options.compile != "off":
        report["compile_cache"] = configure_compile_cache(options.cache_dir)
    if not options.bf16:
        skipped["bf16"] = "off"
    elif not gpu_ok:
        skipped["bf16"] = "CPU: float32 kernels are faster than bf16 here"
    elif on_cuda and not torch.cuda.is_bf16_supported():
        skipped["bf16"] = "this GPU has no bf16; float16 stays"
    else:
        if denoiser.dtype != torch.bfloat16:
            pipe.to(dtype=torch.bfloat16)
        applied.append("bf16")
    vae = getattr(pipe, "vae", None)
    if options.fuse_qkv and vae is not None and hasattr(vae, "fuse_qkv_projections"):
        try:
            vae.fuse_qkv_projections()
            applied.append("fuse_qkv_vae")
        except ValueError as exc:
            skipped["fuse_qkv_vae"] = str(exc)
    if options.lora_hotswap and not hasattr(pipe, "load_lora_weights"):
        skipped["lora_hotswap"] = f"{type(pipe).__name__} cannot load LoRAs"
    accelerate_model(denoiser, options, gpu_ok, report, lora_targets)
    if options.compile_vae and vae is not None and gpu_ok and hasattr(vae, "decoder"):
        vae.decoder.compile(**_compile_kwargs(options.compile_mode, False, options.compile_backend))
        applied.append("compile_vae")
    return report


def prepare_for_lora(pipe: Any) -> bool:
    """Unfuse QKV before a LoRA loads: fused projections would silently bypass LoRA layers on to_q/k/v."""
    _, denoiser = find_denoiser(pipe)
    return denoiser is not None and unfuse_qkv(denoiser)
