"""The four recipes scripts/e2e_bench.py times: a and b drive a diffusers pipeline the way its docs show, c and d
the app's PipelineManager the way the Generate tab calls it. Each has load(), generate(count, steps) -> images,
switch(lora, format) and close()."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

PROMPT = "a minimal teal fintech app icon, flat vector, white background"
GUIDANCE = {"sdxl": 7.5, "flux": 3.5}


class DiffusersRecipe:
    """Recipes a and b: a diffusers pipeline driven the way its docs show."""

    def __init__(self, bench: Any, model: str, folder: Path, loras: dict[str, dict[str, Path]], kind: str):
        self.bench, self.model, self.folder, self.loras, self.kind = bench, model, folder, loras, kind
        self.pipe: Any = None
        self.notes: list[str] = []

    def load(self) -> dict[str, Any]:
        from diffusers import AutoPipelineForText2Image

        args, tiny = self.bench.args, self.bench.args.tiny
        dtype = torch.float32 if tiny else torch.bfloat16
        pipe = AutoPipelineForText2Image.from_pretrained(self.folder, torch_dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        if self.kind == "a":
            if self.bench.device == "cuda":
                pipe.enable_model_cpu_offload()
            else:
                self.notes.append("CPU: enable_model_cpu_offload needs an accelerator; ran resident")
            pipe.load_lora_weights(str(self.loras["a"]["diffusers"]))
            pipe.fuse_lora()
        else:
            pipe.to(self.bench.device)
            pipe.load_lora_weights(str(self.loras["a"]["peft"]))
            pipe.fuse_lora()
            pipe.unload_lora_weights()  # keeps the fused weights; no LoRA layers left in the compiled graph
            denoiser = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
            for module in (denoiser, pipe.vae):
                if hasattr(module, "fuse_qkv_projections"):
                    module.fuse_qkv_projections()
            if hasattr(pipe, "unet"):
                pipe.unet.to(memory_format=torch.channels_last)
                pipe.vae.to(memory_format=torch.channels_last)
            import torch._inductor.config as inductor

            inductor.conv_1x1_as_mm = True
            inductor.epilogue_fusion = False
            mode = None if args.expert_mode == "default" else args.expert_mode
            if mode == "max-autotune":
                inductor.coordinate_descent_tuning = True
                inductor.coordinate_descent_check_all_directions = True
            kwargs = {"fullgraph": True, "backend": "eager" if tiny else "inductor", **({"mode": mode} if mode else {})}
            if args.expert_compile == "regional":  # diffusers' compile_repeated_blocks (its torch.compile docs)
                denoiser.compile_repeated_blocks(**kwargs)
            else:
                denoiser.compile(**kwargs)
            self.notes.append(f"torch.compile(mode={mode or 'default'}, fullgraph=True), {args.expert_compile}")
        self.pipe = pipe
        return {"notes": self.notes}

    def generate(self, count: int, steps: int | None = None) -> Any:
        args = self.bench.args
        side = 32 if args.tiny else 1024
        with torch.inference_mode():
            return self.pipe(prompt=PROMPT, num_inference_steps=steps or args.steps, width=side, height=side,
                             guidance_scale=GUIDANCE[self.model], num_images_per_prompt=count,
                             generator=[torch.Generator("cpu").manual_seed(i) for i in range(count)]).images

    def switch(self, name: str, fmt: str) -> None:
        if self.kind != "a":
            raise NotImplementedError("the expert recipe fused and unloaded its LoRA: a switch reloads the model")
        self.pipe.unfuse_lora()
        self.pipe.unload_lora_weights()
        self.pipe.load_lora_weights(str(self.loras[name][fmt]))
        self.pipe.fuse_lora()

    def close(self) -> None:
        self.pipe = None


class ManagerRecipe:
    """Recipes c and d: the app's PipelineManager, as the Generate tab calls it."""

    def __init__(self, bench: Any, model: str, folder: Path, loras: dict[str, dict[str, Path]], kind: str):
        self.bench, self.model, self.folder, self.kind = bench, model, folder, kind
        self.home = Path(bench.args.work_dir) / f"home-{model}"
        self.active = "a_peft"
        self.notes: list[str] = []
        shutil.rmtree(self.home, ignore_errors=True)
        (self.home / "loras").mkdir(parents=True)
        for name, files in loras.items():
            for fmt, path in files.items():
                target = self.home / "loras" / f"{name}_{fmt}.safetensors"
                try:
                    os.link(path, target)  # the LoRA library reads a loras/ folder; no copy of hundreds of MB
                except OSError:
                    shutil.copyfile(path, target)
        self.manager: Any = None

    def load(self) -> dict[str, Any]:
        from dataclasses import replace

        from brandgen.device import DeviceInfo, detect_device
        from brandgen.manager import PipelineManager
        from brandgen.paths import AppPaths
        from brandgen.performance_mode import options_from_env
        from brandgen.registry import ModelRegistry

        args, tiny = self.bench.args, self.bench.args.tiny
        base = ModelRegistry.from_file().get("sdxl-base" if self.model == "sdxl" else "flux1-dev")
        side = 32 if tiny else 1024
        entry = replace(base, id=f"bench-{self.model}", source_type="local", source=str(self.folder),
                        native_resolution=(side, side), default_guidance=GUIDANCE[self.model], vram_gb=1.0)
        fast = None
        if self.kind == "d":  # exactly what BRANDGEN_PERFORMANCE=1 starts the app with
            env = {"BRANDGEN_PERFORMANCE": "1", "BRANDGEN_QUANTIZATION": args.quantization,
                   "BRANDGEN_COMPILE_MODE": args.perf_compile_mode, "BRANDGEN_LORA_HOTSWAP": args.hotswap,
                   "BRANDGEN_COMPILE": args.perf_compile}
            fast = options_from_env(env, cache_default=Path(args.cache_dir) if args.cache_dir else None)
            fast = replace(fast, unet_regions=args.unet_regions)
            if tiny:  # the same code path on the CPU, with dynamo's eager backend
                fast = replace(fast, allow_cpu=True, bf16=False, compile_backend="eager")
        device = DeviceInfo("cpu", torch.float32, "CPU") if tiny else detect_device()
        self.manager = PipelineManager(registry=ModelRegistry({entry.id: entry}), paths=AppPaths(self.home),
                                       device=device, memory_mode="resident", fast_path=fast)
        stages: list[str] = []
        self.manager.load_model(entry.id, progress=lambda done, total: stages.append(
            f"{self.manager.stage} {done}/{total}"))
        start = time.perf_counter()
        if self.manager.read_ahead is not None:  # the app reads the library's LoRAs after a load: let it finish,
            self.manager.read_ahead.join()  # so it does not overlap the timed calls
        waited = time.perf_counter() - start
        self.manager.set_loras(((self.active, 1.0),))
        return {"fast_path_report": self.manager.fast_path_report, "progress": stages,
                "dtype": str(device.dtype), "lora_read_ahead_wait_s": round(waited, 2)}

    def request(self, count: int, steps: int | None, lora: str, preset: str) -> Any:
        from brandgen.generation import GenerationRequest

        return GenerationRequest(prompt=PROMPT, model_id=f"bench-{self.model}", steps=steps or self.bench.args.steps,
                                 guidance_scale=GUIDANCE[self.model], seed=0, count=count, loras=((lora, 1.0),),
                                 use_template=False, preset=preset)

    def generate(self, count: int, steps: int | None = None, preset: str = "standard") -> Any:
        """`preset="fast"`: the Fast preset's step cache (same steps, one in two computed in full)."""
        result = self.manager.generate(self.request(count, steps, self.active, preset))
        self.notes = result.notes
        return result.images

    def switch(self, name: str, fmt: str) -> None:
        self.active = f"{name}_{fmt}"
        self.notes = self.manager.set_loras(((self.active, 1.0),))

    def close(self) -> None:
        if self.manager is not None:
            self.manager.unload()
        self.manager = None
