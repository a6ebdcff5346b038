"""PipelineManager: the one owner of loaded models and LoRAs, and the only door to the accelerator."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar

import torch

from brandgen import __version__
from brandgen.acceleration import FastPathOptions, apply_fast_path
from brandgen.brand_decoder import DecoderBlend
from brandgen.device import (
    MEMORY_MODES, DeviceInfo, ThreadPlan, detect_device, free_memory, free_memory_after, free_vram_gb,
    is_out_of_memory, others_running, peak_memory_gb, reset_peak_memory,
)
from brandgen.errors import Cancelled, InvalidInput, ModelUnavailable, OutOfMemory
from brandgen.generation import GenerationRequest, GenerationResult, model_guidance
from brandgen.lora_adapters import brand_decoders, ensure_adapter, set_brand_decoders, switch
from brandgen.lora_hotswap import read_ahead_in_background
from brandgen.loras import LoraInfo, LoraLibrary
from brandgen.model_loading import availability, load_pipeline
from brandgen.paths import AppPaths
from brandgen.performance_mode import StageFn, options_from_env, prepare_performance
from brandgen.pipeline_call import ProgressFn, call_kwargs
from brandgen.prompt_cache import PromptCache
from brandgen.presets import LanczosUpscaler, QualityPreset, Upscaler, get_preset, load_quality_presets
from brandgen.registry import ModelEntry, ModelRegistry
from brandgen.step_cache import for_preset
from brandgen.templates import AssetType, build_prompt, clean_prompt, load_asset_types, truncation_note
from brandgen.warmup import prime

log = logging.getLogger(__name__)


@dataclass
class _Loaded:
    """The pipeline in memory and the LoRA state applied to it."""

    entry: ModelEntry
    pipe: Any
    load_seconds: float
    loras: dict[str, LoraInfo] = field(default_factory=dict)  # adapter name -> file
    active: tuple[tuple[str, float], ...] = ()
    fused: bool = False
    hotswap: Any = None  # performance mode's LoRA switcher: lora_fuse.LoraFuser or lora_hotswap.LoraHotswapper
    prompts: PromptCache = field(default_factory=PromptCache)  # text embeddings of recent prompts
    decoder: DecoderBlend = field(default_factory=DecoderBlend)  # active LoRAs' brand decoders (brand_decoder.py)


class PipelineManager:
    """Loads, swaps and runs diffusers pipelines; one lock keeps the accelerator to one job at a time.

    `PipelineManager.instance()` is the app's singleton; tests build their own with explicit arguments.
    """

    _instance: ClassVar["PipelineManager | None"] = None
    _instance_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        registry: ModelRegistry | None = None,
        paths: AppPaths | None = None,
        device: DeviceInfo | None = None,
        memory_mode: str = "auto",
        vae_tiling: bool = False,
        upscaler: Upscaler | None = None,
        fuse_single_lora: bool = True,
        fast_path: FastPathOptions | None = None,
        prime_on_load: bool = True,
    ):
        self.registry = registry or ModelRegistry.from_file()
        self.paths = paths or AppPaths.from_env()
        self.device = device or detect_device()
        self.asset_types: dict[str, AssetType] = load_asset_types()
        self.presets: dict[str, QualityPreset] = load_quality_presets()
        self.lora_library = LoraLibrary(self.paths.loras)
        self.read_ahead: threading.Thread | None = None  # performance mode: LoRA files read after a model load
        self._read_ahead_lock = threading.Lock()  # guards read_ahead and its pipeline, not generation (see lock)
        self.upscaler = upscaler or LanczosUpscaler()
        self.fuse_single_lora = fuse_single_lora
        self.prime_on_load = prime_on_load  # a 1-step image at load on the CPU (warmup.prime)
        self.fast_path = fast_path.validated() if fast_path else None  # performance mode (GPU fast path)
        self.fast_path_report: dict[str, Any] = {}
        self.memory_mode = "auto"
        self.vae_tiling = vae_tiling
        self.set_memory_mode(memory_mode, vae_tiling)
        self.lock = threading.RLock()
        self._loaded: _Loaded | None = None
        self._cancel = threading.Event()
        self._owner: str | None = None  # the browser session whose generation is running, if known
        self.stage = ""  # what a long load is doing now ("Compiling ..."), for progress text in the UI
        self.thread_plan: ThreadPlan | None = None  # the served app's CPU threads per request (`brandgen serve`)

    @classmethod
    def instance(cls) -> "PipelineManager":
        """The process's manager, created on first use with the start-up settings (performance mode from the
        environment: brandgen.performance_mode)."""
        with cls._instance_lock:
            if cls._instance is None:
                paths = AppPaths.from_env()
                cls._instance = cls(paths=paths, fast_path=options_from_env(cache_default=paths.compile_cache))
            return cls._instance

    # ----- models -------------------------------------------------------------------------------
    # These read `_loaded` once: another thread may unload between a check and a second read.
    @property
    def current_model(self) -> str | None:
        loaded = self._loaded
        return loaded.entry.id if loaded else None

    @property
    def pipeline(self) -> Any:
        """The loaded diffusers pipeline (for the trainer and benchmark, which hold `lock` while using it)."""
        loaded = self._loaded
        if loaded is None:
            raise ModelUnavailable("No model is loaded.")
        return loaded.pipe

    @property
    def last_load_seconds(self) -> float | None:
        loaded = self._loaded
        return loaded.load_seconds if loaded else None

    def model_summary(self, model_id: str) -> str:
        """Markdown for the UI: what the model is, its licence, and whether it can load right now."""
        entry = self.registry.get(model_id)
        return f"{entry.summary()}\n\n{availability(entry)}"

    def set_memory_mode(self, memory_mode: str, vae_tiling: bool | None = None) -> None:
        """Takes effect at the next model load (offload hooks cannot be removed from a live pipeline)."""
        if memory_mode not in MEMORY_MODES:
            raise InvalidInput(f"Memory mode must be one of {MEMORY_MODES}, got {memory_mode!r}.")
        changed = memory_mode != self.memory_mode or (vae_tiling is not None and vae_tiling != self.vae_tiling)
        self.memory_mode = memory_mode
        if vae_tiling is not None:
            self.vae_tiling = vae_tiling
        if changed and getattr(self, "_loaded", None) is not None:
            self.unload()

    def load_model(self, model_id: str | None = None, progress: ProgressFn | None = None) -> ModelEntry:
        """Make `model_id` the loaded model, freeing the previous one first so two never share memory.

        In performance mode this is also where compilation happens (`_warm_up`), with `progress` per warm-up
        call, so that no click after the load recompiles."""
        entry = self.registry.get(model_id or self.registry.default_id)
        with self.lock:
            if self._loaded and self._loaded.entry.id == entry.id:
                return entry
            self.unload()
            start = time.perf_counter()
            try:
                pipe = load_pipeline(entry, self.device.dtype)
                self._place(pipe, entry)
                pipe.set_progress_bar_config(disable=True)
                hotswap = prepare_performance(pipe, entry, self.fast_path, self.fast_path_report,
                                              self._stage_reporter(progress))
                if self.prime_on_load and self.device.device == "cpu":
                    prime(pipe, *entry.native_resolution, entry.default_guidance)
            except Exception as exc:
                free_memory_after(exc)
                if is_out_of_memory(exc):
                    raise OutOfMemory(
                        f"Not enough accelerator memory to load {entry.label} (~{entry.vram_gb:g} GB). "
                        "Choose memory mode 'model_offload' or 'sequential_offload', or a smaller model."
                    ) from exc
                raise
            finally:
                self.stage = ""
            with self._read_ahead_lock:
                self._loaded = _Loaded(entry=entry, pipe=pipe, load_seconds=time.perf_counter() - start,
                                       hotswap=hotswap)
                if hotswap is not None:
                    self.read_ahead = read_ahead_in_background(hotswap, self.lora_library, entry.family)
            return entry

    swap_model = load_model

    def _stage_reporter(self, progress: ProgressFn | None) -> StageFn:
        def report(text: str, done: int, total: int) -> None:
            self.stage = text
            log.info("%s (%d/%d)", text, done, total)
            if progress is not None:
                progress(done, total)
        return report

    def unload(self) -> None:
        with self.lock:
            with self._read_ahead_lock:
                if self.read_ahead is not None:  # it holds the pipeline: wait (a few file reads), then free it
                    self.read_ahead.join()
                    self.read_ahead = None
                self._loaded = None
            free_memory()

    def _place(self, pipe: Any, entry: ModelEntry) -> None:
        mode = self.memory_mode
        if mode == "auto":
            free = free_vram_gb()
            mode = "model_offload" if free is not None and entry.vram_gb > 0.9 * free else "resident"
        if self.device.device != "cuda" or mode == "resident":
            pipe.to(self.device.device)
        elif mode == "model_offload":
            pipe.enable_model_cpu_offload()
        elif mode == "group_offload":  # layer by layer, overlapped with compute: 17B HiDream on a 24 GB card
            pipe.enable_group_offload(torch.device("cuda"), offload_type="leaf_level", use_stream=True)
        else:
            pipe.enable_sequential_cpu_offload()
        if self.vae_tiling and getattr(pipe, "vae", None) is not None and hasattr(pipe.vae, "enable_tiling"):
            pipe.vae.enable_tiling()
        if self.fast_path is not None:
            from brandgen.training.families import FAMILIES  # its LoRA layers stay unquantized for merging

            family = FAMILIES.get(entry.family)
            self.fast_path_report = apply_fast_path(pipe, self.fast_path, self.device.device,
                                                    family.default_targets if family else ())

    # ----- LoRAs --------------------------------------------------------------------------------
    def list_loras(self) -> list[LoraInfo]:
        return self.lora_library.scan()

    def read_loras_ahead(self) -> bool:
        """Performance mode, after the LoRA list is refreshed: read files added since the load into the switch
        cache in the background, as the load did for the rest. Returns whether a read-ahead started. It does not
        take the generation lock, so a Refresh during a running generation answers at once."""
        with self._read_ahead_lock:
            loaded = self._loaded
            if loaded is None or loaded.hotswap is None or (self.read_ahead and self.read_ahead.is_alive()):
                return False
            self.read_ahead = read_ahead_in_background(loaded.hotswap, self.lora_library, loaded.entry.family)
            return True

    def set_loras(self, wanted: list[tuple[str, float]] | tuple[tuple[str, float], ...]) -> list[str]:
        """Make exactly `wanted` active with those weights; a single LoRA is fused for full speed.

        Returns notes for the user (a hotswap slot that had to be rebuilt, so the next image recompiles)."""
        wanted = tuple((name, float(weight)) for name, weight in wanted if name and float(weight) != 0.0)
        if len({name for name, _ in wanted}) != len(wanted):
            raise InvalidInput("The same LoRA is selected twice; pick it once with one weight.")
        with self.lock:
            loaded = self._require_loaded()
            if wanted == loaded.active:
                return []
            if loaded.hotswap is not None:  # switched in place (merged, or the slot): no recompiles
                infos = [ensure_adapter(loaded, self.lora_library, name) for name, _ in wanted]
                decoders = brand_decoders(loaded, infos, wanted)
                previous = loaded.active
                try:
                    note = loaded.hotswap.set([(info.path, w, info.name) for info, (_, w) in zip(infos, wanted)])
                except Exception:  # the merge refuses before changing anything; the slot empties itself
                    loaded.active = previous if loaded.hotswap.holds_loras else ()
                    if not loaded.active:
                        set_brand_decoders(loaded, [])
                    raise
                loaded.active = wanted
                set_brand_decoders(loaded, decoders)
                return [note] if note else []
            # load (and validate) new adapters and brand decoders first: a LoRA that fails leaves the weights untouched
            infos = [ensure_adapter(loaded, self.lora_library, name) for name, _ in wanted]
            decoders = brand_decoders(loaded, infos, wanted)
            try:
                switch(loaded, infos, wanted, self.fuse_single_lora)
            except Exception:  # switch fell back to no LoRA: the base decoder too
                set_brand_decoders(loaded, [])
                raise
            set_brand_decoders(loaded, decoders)
            return []

    def unload_loras(self) -> None:
        with self.lock:
            loaded = self._require_loaded()
            if loaded.fused:  # unload_lora_weights drops the adapters but leaves a fused LoRA in the weights
                loaded.pipe.unfuse_lora()
            if loaded.loras:
                loaded.pipe.unload_lora_weights()
            if loaded.hotswap is not None:
                loaded.hotswap.reset()
            set_brand_decoders(loaded, [])
            loaded.loras.clear()
            loaded.active, loaded.fused = (), False

    def _require_loaded(self) -> _Loaded:
        if self._loaded is None:
            self.load_model()
        assert self._loaded is not None
        return self._loaded

    # ----- generation ---------------------------------------------------------------------------
    def cancel(self, owner: str | None = None) -> bool:
        """Ask the running generation to stop after its current denoising step; returns whether it was asked.

        With `owner` (a browser session) only that session's own generation stops: on a shared app one
        designer's Cancel must not throw away another's images. Without it (CLI, scripts) any run stops."""
        if owner is not None and owner != self._owner:
            return False
        self._cancel.set()
        return True

    @contextlib.contextmanager
    def _running(self, owner: str | None, others_waiting: int | None = None) -> Iterator[None]:
        """Held with the lock around one generation: a fresh cancel flag, who may cancel it, and its CPU threads
        under `thread_plan` (torch's count is per calling thread: set in the one that denoises, then set back so
        no thread that starts torch work meanwhile inherits the lone request's count)."""
        self._cancel.clear()
        self._owner = owner
        plan = self.thread_plan if self.device.device == "cpu" else None
        if plan is not None:
            torch.set_num_threads(plan.threads(others_waiting, others_running() if others_waiting == 0 else None))
        try:
            yield
        finally:
            self._owner = None
            if plan is not None:
                torch.set_num_threads(plan.busy)

    def generate(self, request: GenerationRequest, progress: ProgressFn | None = None,
                 owner: str | None = None, others_waiting: int | None = None) -> GenerationResult:
        """Run one request end to end: template, model, LoRAs, denoising, upscale, metadata.
        `owner` names who started it (a browser session), for `cancel(owner)`; `others_waiting`, the requests
        queued behind it (None: unknown), picks the CPU threads under `thread_plan`."""
        request = request.validated()
        entry = self.registry.get(request.model_id or self.current_model or self.registry.default_id)
        preset = get_preset(request.preset, self.presets)
        triggers = self._lora_triggers(request.active_loras)
        if request.use_template:
            pair = build_prompt(request.prompt, request.asset_type, request.negative_prompt, triggers, self.asset_types)
            prompt, negative = pair.prompt, pair.negative
        else:
            prompt, negative = clean_prompt(request.prompt), " ".join(request.negative_prompt.split())
            if request.asset_type not in self.asset_types:
                raise InvalidInput(f"Unknown asset type {request.asset_type!r}.")
        steps, guidance = self._steps_and_guidance(entry, preset, request)
        width = request.width or entry.native_resolution[0]
        height = request.height or entry.native_resolution[1]
        seed = request.resolved_seed()
        seeds = [seed + i for i in range(request.count)]
        with self.lock, self._running(owner, others_waiting):
            self.load_model(entry.id, progress)
            notes = self.set_loras(request.loras) + entry.prompt_hints_for(request.prompt)
            if request.active_loras and request.guidance_scale is None and entry.lora_guidance is not None:
                notes.append(f"Guidance {guidance:g} with a LoRA, this model's setting (at {entry.default_guidance:g} "
                             "a brand LoRA's colours drift off its palette); set Guidance to choose another.")
            loaded = self._require_loaded()
            pipe = loaded.pipe
            notes += [n for n in [truncation_note(pipe, prompt)] if n]
            until = entry.guided_share(bool(request.active_loras))
            kwargs = call_kwargs(pipe, prompt, negative, steps, guidance, width, height, seeds, progress,
                                 self._cancel, until)
            reset_peak_memory()
            start = time.perf_counter()
            try:
                with torch.inference_mode(), for_preset(pipe, preset.step_cache, notes) as cached:
                    images = pipe(**loaded.prompts.apply(pipe, kwargs, loaded.active)).images
            except Exception as exc:
                if is_out_of_memory(exc):
                    free_memory_after(exc)
                    raise OutOfMemory(
                        f"Out of accelerator memory generating {request.count} image(s) at {width}x{height}. "
                        "Memory was freed. Lower the count or size, or choose memory mode 'model_offload' "
                        "and VAE tiling in Advanced settings."
                    ) from exc
                raise
            if self._cancel.is_set():
                raise Cancelled("Generation cancelled.")
            seconds = time.perf_counter() - start
            peak = peak_memory_gb()
            threads = torch.get_num_threads() if self.device.device == "cpu" else None  # what `seconds` ran on
        images = [self.upscaler(image, preset.upscale) for image in images]
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        common = {
            "user_prompt": request.prompt, "prompt": prompt, "negative_prompt": negative,
            "asset_type": request.asset_type, "model": entry.id, "model_label": entry.label,
            "loras": [{"name": n, "weight": w} for n, w in request.active_loras],
            "preset": preset.id, "steps": steps, "guidance_scale": guidance, "guidance_until": until, "width": width,
            "height": height, "upscale": preset.upscale, "upscaler": self.upscaler.name,
            "step_cache": cached.to_dict() if cached else None,
            "seconds": round(seconds, 3), "seconds_per_image": round(seconds / request.count, 3),
            "peak_memory_gb": None if peak is None else round(peak, 3), "device": self.device.describe(),
            "cpu_threads": threads,
            "commercial_use": entry.commercial_use, "app_version": __version__, "created_at": created,
        }
        metadata = [{**common, "seed": s, "output_width": im.width, "output_height": im.height}
                    for s, im in zip(seeds, images)]
        return GenerationResult(images=images, metadata=metadata, seconds=seconds, notes=notes)

    def _lora_triggers(self, loras: tuple[tuple[str, float], ...]) -> tuple[str, ...]:
        triggers = []
        for name, _weight in loras:
            trigger = self.lora_library.get(name).trigger
            if trigger and trigger not in triggers:
                triggers.append(trigger)
        return tuple(triggers)

    @staticmethod
    def _steps_and_guidance(entry: ModelEntry, preset: QualityPreset, request: GenerationRequest) -> tuple[int, float]:
        """Distilled models run their own step count; elsewhere the preset sets steps."""
        steps = request.steps or (entry.default_steps if entry.distilled else preset.steps)
        default = entry.default_guidance_for(bool(request.active_loras))
        return int(steps), model_guidance(request.guidance_scale, default, entry.label)
