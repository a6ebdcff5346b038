"""LoRA training step cost of full-size backbones, random weights: SDXL UNet, FLUX, SD3.5 Large and HiDream-I1
transformers (--models; the default is sdxl,flux).

For each model, batch size (--batch 1,4) and with and without gradient checkpointing: ms per optimizer step
(1024x1024, bf16 autocast over bf16 base weights, fp32 LoRA r32, AdamW), peak GPU memory, and the floor
3 x forward FLOPs / 800 TFLOP/s (one forward + a backward of about twice its cost; FlopCounterMode counts).
--cuda-graph replays the whole step as one CUDA graph (what batch-1 SDXL, bound by kernel launches, needs).

Attention runs as the trainer runs it (--attention cudnn): cuDNN SDPA first, with the contiguous attention
gradients of brandgen/attention.py; --attention flash turns cuDNN SDPA off. --profile N lists the costliest ops.

    python scripts/gpu_train_bench.py --out docs/perf/train_h100.json        # H100 / H200, ~5 min
    python scripts/gpu_train_bench.py --tiny                                   # CPU smoke test of every path
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

PEAK_FLOPS = 800e12  # dense bf16 FLOP/s used for the floor (H100 SXM is ~989e12; a round, reachable figure)
SDXL_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]


def sdxl_config(tiny: bool) -> dict[str, Any]:
    if tiny:
        return dict(
            block_out_channels=(32, 64),
            layers_per_block=1,
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2),
            projection_class_embeddings_input_dim=80,
            cross_attention_dim=64,
            norm_num_groups=32,
        )
    return dict(  # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json
        sample_size=128,
        in_channels=4,
        out_channels=4,
        flip_sin_to_cos=True,
        freq_shift=0,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        downsample_padding=1,
        act_fn="silu",
        norm_num_groups=32,
        norm_eps=1e-5,
        cross_attention_dim=2048,
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )


def flux_config(tiny: bool) -> dict[str, Any]:
    if tiny:
        return dict(
            patch_size=1,
            in_channels=16,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            axes_dims_rope=(4, 4, 8),
        )
    return {}  # FluxTransformer2DModel defaults: FLUX.1 (19 double + 38 single blocks, 3072 wide)


def sd3_config(tiny: bool) -> dict[str, Any]:
    if tiny:
        return dict(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
                    num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
                    pooled_projection_dim=16, pos_embed_max_size=16, qk_norm="rms_norm")
    return dict(  # stabilityai/stable-diffusion-3.5-large transformer/config.json
        sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=38, attention_head_dim=64,
        num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432, pooled_projection_dim=2048,
        pos_embed_max_size=192, qk_norm="rms_norm",
    )


def build(name: str, tiny: bool, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """Random weights created directly on the device in the training dtype (no 48 GB fp32 detour for FLUX)."""
    from diffusers import (
        FluxTransformer2DModel,
        HiDreamImageTransformer2DModel,
        SD3Transformer2DModel,
        UNet2DConditionModel,
    )

    from gpu_bench_models import hidream_config

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            if name == "sdxl":
                return UNet2DConditionModel(**sdxl_config(tiny))
            if name == "sd3":
                return SD3Transformer2DModel(**sd3_config(tiny))
            if name == "hidream":  # image-shaped outputs in training mode too, as the trainer loads it
                return HiDreamImageTransformer2DModel(**hidream_config(tiny), force_inference_output=True)
            return FluxTransformer2DModel(**flux_config(tiny))
    finally:
        torch.set_default_dtype(previous)


def inputs(name: str, model: Any, batch: int, resolution: int, device: str, dtype: torch.dtype) -> dict[str, Any]:
    """What the trainer feeds the model for one batch (text embeddings as cached by brandgen.training)."""
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device, dtype)

    latent = resolution // 8
    if name == "sdxl":
        c = model.config
        return {
            "sample": rand(batch, 4, latent, latent),
            "timestep": torch.randint(0, 1000, (batch,), device=device),
            "encoder_hidden_states": rand(batch, 77, c.cross_attention_dim),
            "added_cond_kwargs": {
                "text_embeds": rand(batch, c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim),
                "time_ids": torch.tensor(
                    [[resolution, resolution, 0, 0, resolution, resolution]] * batch, device=device, dtype=dtype
                ),
            },
        }
    if name == "sd3":  # 1024²: 128² latents; CLIP-L/G 77 + T5 256 tokens
        c = model.config
        return {
            "hidden_states": rand(batch, c.in_channels, latent, latent),
            "encoder_hidden_states": rand(batch, 333 if c.joint_attention_dim == 4096 else 8, c.joint_attention_dim),
            "pooled_projections": rand(batch, c.pooled_projection_dim),
            "timestep": torch.rand(batch, generator=g).to(device, dtype) * 1000,
        }
    if name == "hidream":
        from gpu_bench_models import hidream_inputs

        out = hidream_inputs(model, batch, device, dtype, tiny=model.config.in_channels < 16)  # 1024² only
        out.pop("return_dict")
        return out
    from diffusers import FluxPipeline

    c = model.config
    tokens = (latent // 2) ** 2
    text = 512 if c.joint_attention_dim == 4096 else 16
    out = {
        "hidden_states": rand(batch, tokens, c.in_channels),
        "timestep": torch.rand(batch, generator=g).to(device, dtype),
        "encoder_hidden_states": rand(batch, text, c.joint_attention_dim),
        "pooled_projections": rand(batch, c.pooled_projection_dim),
        "img_ids": FluxPipeline._prepare_latent_image_ids(batch, latent // 2, latent // 2, device, dtype),
        "txt_ids": torch.zeros(text, 3, device=device, dtype=dtype),
    }
    if c.guidance_embeds:
        out["guidance"] = torch.full((batch,), 3.5, device=device)
    return out


def add_lora(model: torch.nn.Module, name: str, rank: int) -> list[torch.nn.Parameter]:
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    from brandgen.training.families import get_family

    targets = SDXL_TARGETS if name == "sdxl" else list(get_family(name).default_targets)
    model.requires_grad_(False)
    model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=targets))
    cast_training_params(model, dtype=torch.float32)
    return [p for p in model.parameters() if p.requires_grad]


def forward_flops(model: torch.nn.Module, batch: dict[str, Any], autocast: Any) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), autocast(), FlopCounterMode(display=False) as counter:
        model(**batch, return_dict=False)
    return int(counter.get_total_flops())


def cuda_graph_step(body: Any, optimizer: Any, warmup: int) -> Any:
    """The whole step (forward, backward, clip, AdamW) captured as one CUDA graph: a replay is one launch.

    Batch-1 SDXL is bound by launching ~12k small kernels per step; a graph removes the host from the loop.
    Warm-up runs on a side stream as capture requires; grads are None at capture, so replays overwrite them.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(max(warmup, 2)):
            body()
            optimizer.zero_grad(set_to_none=True)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = body()

    def step() -> float:
        graph.replay()
        return static_loss.item()

    return step


def measure(
    name: str, checkpointing: bool, batch_size: int, args: argparse.Namespace, fp8: bool = False,
    fused: bool = False,
) -> dict[str, Any]:
    device = "cpu" if args.tiny else "cuda"
    dtype = torch.float32 if args.tiny else torch.bfloat16
    row: dict[str, Any] = {
        "model": name,
        "gradient_checkpointing": checkpointing,
        "resolution": args.resolution,
        "batch": batch_size,
        "rank": args.rank,
        "dtype": str(dtype).replace("torch.", ""),
        "compile": args.compile,
        "compile_mode": args.compile_mode if args.compile else None,
        "compile_full": bool(args.compile and args.compile_full),
        "channels_last": bool(args.channels_last and name == "sdxl"),
        "attention": args.attention,
        "attention_backend": args.attention_backend,
        "cuda_graph": args.cuda_graph,
        "fp8_base": fp8,
        "fused_lora": fused,
    }
    model = params = optimizer = None
    try:
        start = time.perf_counter()
        model = build(name, args.tiny, device, dtype)
        row["build_s"] = round(time.perf_counter() - start, 1)
        row["params_b"] = round(sum(p.numel() for p in model.parameters()) / 1e9, 3)
        params = add_lora(model, name, args.rank)
        if args.attention == "cudnn":  # the trainer's fix: contiguous gradients into cuDNN's SDPA backward
            from brandgen.attention import contiguous_attention_grads

            contiguous_attention_grads(model)
        if args.attention_backend:  # diffusers attention dispatch, e.g. _native_cudnn (transformer models)
            model.set_attention_backend(args.attention_backend)
        row["lora_params_m"] = round(sum(p.numel() for p in params) / 1e6, 2)
        if checkpointing:
            model.enable_gradient_checkpointing()
        if args.channels_last and name == "sdxl":
            torch.backends.cudnn.benchmark = True
            model.to(memory_format=torch.channels_last)
        model.train()
        if args.cuda_graph and device != "cuda":
            raise ValueError("--cuda-graph needs a CUDA GPU")
        optimizer = torch.optim.AdamW(params, lr=1e-4, fused=device == "cuda", capturable=args.cuda_graph)
        batch = inputs(name, model, batch_size, args.resolution, device, dtype)

        def autocast():  # a CUDA graph cannot keep autocast's per-iteration cast cache
            return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=not args.tiny,
                                  cache_enabled=not args.cuda_graph)

        fwd = forward_flops(model, batch, autocast)
        row["forward_flops"] = fwd
        row["forward_tflop"] = round(fwd / 1e12, 3)
        row["floor_ms"] = round(3 * fwd / PEAK_FLOPS * 1000, 4)
        if fp8:  # the trainer's TrainConfig.fp8_base: frozen linear layers multiply in fp8 (after
            # the count: the floor stays the bf16 one)
            from brandgen.training.fp8_base import use_fp8_base

            row["fp8_layers"] = use_fp8_base(model)
        if fused:  # the trainer's TrainConfig.fused_lora: one merged-weight GEMM per LoRA layer each way
            from brandgen.training.fused_lora import use_fused_lora

            row["fused_lora_layers"] = use_fused_lora(model)
        if args.compile:
            # Regional compilation of the repeated blocks (diffusers `_repeated_blocks`): fuses the LoRA,
            # norm and RoPE elementwise work and cuts per-kernel launch overhead, which dominates eager batch 1.
            # After the FLOP count: dynamo skips frames first seen under FlopCounterMode.
            from brandgen.training.loading import maybe_compile

            if args.compile_full:  # experiment: the whole model as one graph (e.g. with reduce-overhead)
                model.compile(fullgraph=False, dynamic=False, mode=args.compile_mode)
            elif args.compile_mode:  # experiment: an inductor mode other than the trainer's default
                model.compile_repeated_blocks(fullgraph=False, dynamic=False, mode=args.compile_mode)
            else:
                maybe_compile(model, True, "cuda")  # the trainer's own regional compile (TrainConfig.compile)
            if args.compile_resnets and name == "sdxl":  # experiment: also the ResNet/resampling blocks
                torch._dynamo.config.cache_size_limit = 64
                for module in model.modules():
                    if type(module).__name__ in ("ResnetBlock2D", "Downsample2D", "Upsample2D"):
                        module.compile(fullgraph=False, dynamic=False)

        def body() -> torch.Tensor:
            with autocast():
                pred = model(**batch, return_dict=False)[0]
            loss = F.mse_loss(pred.float(), torch.zeros_like(pred, dtype=torch.float32))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            return loss

        def eager_step() -> float:
            loss = body()
            optimizer.zero_grad(set_to_none=True)
            return loss.item()

        if device == "cuda" and args.cuda_graph:  # a graph's memory pool is allocated at capture: count it
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        step = cuda_graph_step(body, optimizer, args.warmup) if args.cuda_graph else eager_step
        for _ in range(0 if args.cuda_graph else args.warmup):
            step()
        row["warmup_s"] = round(time.perf_counter() - start, 1)  # includes compilation with --compile
        if args.compile:
            from torch._dynamo.utils import counters

            row["compiled_graphs"] = int(counters["stats"]["unique_graphs"])
        if device == "cuda" and not args.cuda_graph:  # eager: the steady state, after compilation
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            step()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t) * 1000)
        times.sort()
        row["step_ms_median"] = round(times[len(times) // 2], 1)
        row["step_ms_min"] = round(times[0], 1)
        row["floor_fraction"] = round(row["floor_ms"] / row["step_ms_median"], 4)
        row["peak_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None
        if args.profile:
            row["profile_top_ops"], row["device_busy_ms_per_step"] = profile(step, device, args.profile)
    except torch.OutOfMemoryError as exc:
        row["error"] = f"out of memory: {str(exc)[:200]}"
    except Exception as exc:  # one failing configuration must not hide the others
        row["error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
        traceback.print_exc()  # print now: a CUDA fault kills the process at the cleanup below, before the JSON
    finally:
        model = params = optimizer = None  # free before the next configuration
        import gc

        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    return row


def profile(step: Any, device: str, top: int) -> tuple[list[dict[str, Any]], float]:
    """Where a step's time goes: the `top` operators by self device time over two profiled steps, and the
    device's busy time per step (all operators' self time; far below the step time when launch-bound)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(2):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
    key = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    averages = prof.key_averages()
    busy_ms = round(sum(getattr(e, key) for e in averages) / 2 / 1000, 1)
    events = sorted(averages, key=lambda e: getattr(e, key), reverse=True)[:top]
    print(averages.table(sort_by=key, row_limit=top), file=sys.stderr)
    return [
        {"op": e.key, "calls_per_step": e.count // 2, "ms_per_step": round(getattr(e, key) / 2 / 1000, 2)}
        for e in events
    ], busy_ms


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="sdxl,flux", help="comma list of sdxl, flux, sd3 (3.5 Large), hidream")
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--batch", default="1", help="batch size, or a comma list to sweep, e.g. 1,4,8")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--checkpointing", default="off,on", help="off,on | off | on")
    parser.add_argument("--tiny", action="store_true", help="tiny configs on the CPU: checks every code path")
    parser.add_argument("--compile", action="store_true", help="regional torch.compile of the repeated blocks")
    parser.add_argument("--compile-mode", default=None, help="with --compile: e.g. max-autotune-no-cudagraphs")
    parser.add_argument("--compile-full", action="store_true", help="with --compile: whole model, not regions")
    parser.add_argument("--compile-resnets", action="store_true", help="with --compile: SDXL ResNet blocks too")
    parser.add_argument("--channels-last", action="store_true", help="UNet weights and inputs in NHWC (+ cudnn.benchmark)")
    parser.add_argument("--attention", choices=("cudnn", "flash", "cudnn-unpatched"), default="cudnn",
                        help="cudnn: the trainer's setup (cuDNN SDPA first, contiguous attention gradients); "
                             "flash: cuDNN SDPA off; cudnn-unpatched: cuDNN first without the gradient fix "
                             "(reproduces the FLUX backward crash; run it in its own process)")
    parser.add_argument("--attention-backend", default=None,
                        help="diffusers attention backend for the model, e.g. _native_cudnn or _native_flash")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="capture the whole step as one CUDA graph (static shapes; capturable AdamW)")
    parser.add_argument("--fp8-base", default="off", help="off | on | off,on: frozen base layers in fp8 (Ada/Hopper)")
    parser.add_argument("--fused-lora", default="off",
                        help="off | on | off,on: LoRA layers on the merged-weight path (TrainConfig.fused_lora)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="after timing, profile two steps and report the N costliest operators")
    parser.add_argument("--out", default=None, help="write the JSON here too")
    args = parser.parse_args(argv)
    if args.tiny:
        args.resolution, args.warmup, args.steps = min(args.resolution, 64), min(args.warmup, 1), min(args.steps, 2)
    elif not torch.cuda.is_available():
        raise SystemExit("No CUDA GPU: run with --tiny for the CPU smoke test.")
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
    from brandgen.attention import cudnn_attention_first

    if args.attention == "flash" and not args.tiny:
        torch.backends.cuda.enable_cudnn_sdp(False)
    with cudnn_attention_first(args.attention != "flash" and not args.tiny):
        rows = [measure(name, mode == "on", int(batch), args, fp8 == "on", fused == "on")
                for name in args.models.split(",") for batch in args.batch.split(",")
                for mode in args.checkpointing.split(",") for fp8 in args.fp8_base.split(",")
                for fused in args.fused_lora.split(",")]
    import diffusers

    result = {
        "meta": {
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.tiny else "cpu",
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
            "tiny": args.tiny,
            "peak_flops_for_floor": PEAK_FLOPS,
            "attention": args.attention,
            "command": " ".join(
                ["python", "scripts/gpu_train_bench.py", *(argv if argv is not None else sys.argv[1:])]
            ),
            "date": time.strftime("%Y-%m-%d %H:%M"),
        },
        "rows": rows,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
