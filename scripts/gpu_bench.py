#!/usr/bin/env python
"""Step micro-benchmark of the denoiser alone: eager vs the fast path, on full-size random-weight backbones.

Not an end-to-end figure: it times one denoiser forward (no text encoders, scheduler, VAE or host work), so its
speed-ups are per step. Image times and the recipes a user runs are measured by scripts/e2e_bench.py.

Per model (SDXL UNet, FLUX.1-dev transformer, HiDream-I1 Full transformer):
  eager = bf16, resident, diffusers' default attention
  fast  = brandgen.acceleration (the app's own code): SDPA, fused QKV, channels_last UNet, regional torch.compile
          with a persistent inductor cache, optional torchao fp8/int8 weights.
It reports per-step ms (median after warm-up), TFLOP/s from FlopCounterMode, compile time (run twice: --phase
cold, then --phase warm with the same --cache-dir), a denoiser-level LoRA hotswap (peft keys) with a no-recompile
check, peak memory, and HiDream weights in fp8 (torchao). Sections that cannot run are skipped with the reason.

  python scripts/gpu_bench.py --out results.json --cache-dir /tmp/brandgen-inductor --phase cold
  python scripts/gpu_bench.py --tiny --out /tmp/tiny.json     # CPU smoke test of the same code paths
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_common import BenchClock, log  # noqa: E402
from gpu_bench_models import (  # noqa: E402
    CASES,
    CORE_ESTIMATE_S,
    TEXT_ENCODER_PARAMS_B,
    random_lora,
)

from brandgen import acceleration as acc  # noqa: E402  (the app's fast path, measured as the app runs it)
from brandgen import quantization  # noqa: E402
from brandgen.attention import cudnn_attention_first  # noqa: E402


def first_output(out: Any) -> torch.Tensor:
    """The prediction of a denoiser call, whether it returned a tuple or an output object, in fp32."""
    return (out[0] if isinstance(out, (tuple, list)) else out.sample).float()


def relative_error(out: Any, reference: Any) -> float:
    """Relative L2 error of a model output against a reference output (e.g. fp8 weights vs bf16)."""
    a, b = first_output(out), first_output(reference)
    return round(float((a - b).norm() / b.norm().clamp_min(1e-12)), 5)


# ----- measuring -----------------------------------------------------------------------------------------
class Bench(BenchClock):
    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.dtype = torch.float32 if args.tiny else torch.bfloat16
        self.results = {"meta": self.meta(), "models": {}}

    def meta(self) -> dict[str, Any]:
        import diffusers

        meta = {"args": vars(self.args), "torch": torch.__version__, "diffusers": diffusers.__version__,
                "python": platform.python_version(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "torchao_missing": quantization.torchao_missing_reason()}
        if torch.cuda.is_available():
            meta.update(gpu=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability()),
                        cuda=torch.version.cuda)
        return meta

    def save(self) -> None:
        self.write_json()

    def reset_peak(self) -> None:
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def peak_gb(self) -> float | None:
        return round(torch.cuda.max_memory_allocated() / 2**30, 2) if self.device == "cuda" else None

    def steps(self, forward: Callable[[], Any], warmup: int | None = None) -> dict[str, Any]:
        """Median step time after warm-up, peak memory, and whether dynamo compiled anything while timing."""
        from torch._dynamo.utils import counters

        for _ in range(self.args.warmup if warmup is None else warmup):
            self.timed(forward)
        graphs = counters["stats"]["unique_graphs"]
        self.reset_peak()
        times = [self.timed(forward)[1] for _ in range(self.args.measure)]
        return {"step_ms_median": round(statistics.median(times) * 1e3, 2),
                "step_ms_all": [round(t * 1e3, 2) for t in times], "peak_gb": self.peak_gb(),
                "graphs_compiled_while_timing": counters["stats"]["unique_graphs"] - graphs}

    def free(self) -> None:
        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()

    # ----- one model -----------------------------------------------------------------------------------
    def run_model(self, name: str, reserve_s: float) -> None:
        import diffusers

        case, tiny = CASES[name], self.args.tiny
        res: dict[str, Any] = {"label": case["label"], "steps": case["steps"], "batch": case["batch"],
                               "resolution": 32 if tiny else 1024, "skipped": {}, "errors": {}}
        self.results["models"][name] = res
        state: dict[str, Any] = {}

        def section(key: str, fn: Callable[[], Any], estimate_s: float = 0.0, optional: bool = False) -> None:
            if optional and self.left() - reserve_s < estimate_s:
                res["skipped"][key] = f"time budget: ~{estimate_s:.0f} s needed, {self.left() - reserve_s:.0f} s left"
                log(f"{name}: skip {key} ({res['skipped'][key]})")
                return
            log(f"{name}: {key} ...")
            try:
                value = fn()
                if value is not None:
                    res[key] = value
                log(f"{name}: {key} done {json.dumps(value, default=str)[:300] if value else ''}")
            except Exception as exc:  # noqa: BLE001 - a failed section is recorded; the run goes on
                res["errors"][key] = f"{type(exc).__name__}: {exc}"[:2000]
                log(f"{name}: {key} FAILED {type(exc).__name__}: {str(exc)[:500]}")
                traceback.print_exc()
                self.free()
            self.save()

        def make() -> torch.nn.Module:
            cls = getattr(diffusers, case["cls"])
            previous = torch.get_default_dtype()
            torch.set_default_dtype(self.dtype)  # random init directly in bf16 on the GPU: seconds, not minutes
            try:
                with torch.device(self.device):
                    torch.manual_seed(0)
                    return cls(**case["config"](tiny)).eval().requires_grad_(False)
            finally:
                torch.set_default_dtype(previous)

        def build() -> dict[str, Any]:
            model, seconds = self.timed(make)
            state["model"], state["make"] = model, make
            state["inputs"] = case["inputs"](model, case["batch"], self.device, self.dtype, tiny)
            params = sum(p.numel() for p in model.parameters())
            return {"build_s": round(seconds, 2), "params_b": round(params / 1e9, 3),
                    "weights_gb": round(params * torch.finfo(self.dtype).bits / 8 / 2**30, 2)}

        def forward() -> Any:
            with torch.inference_mode():
                return state["model"](**state["inputs"])

        section("build", build)
        if "model" not in state:
            return
        warm = self.args.phase == "warm"
        if not warm:
            section("flops", lambda: self.count_flops(forward, state))
            section("eager", lambda: self.with_tflops(self.steps(forward), state))
        section("fast", lambda: self.fast(forward, state), estimate_s=0 if tiny else 45, optional=True)
        if "fast" in res and "eager" in res:
            res["speedup"] = {"per_step": round(res["eager"]["step_ms_median"] / res["fast"]["step_ms_median"], 2)}
        if "fast" in res and warm and self.args.cold_json and Path(self.args.cold_json).is_file():
            cold = json.loads(Path(self.args.cold_json).read_text())["models"].get(name, {}).get("fast", {})
            res["fast"]["compile_s_cold"] = cold.get("compile_s")
        compile_s = res.get("fast", {}).get("compile_s", 30.0)
        if not warm and case["hotswap"] and not self.args.no_hotswap:
            section("hotswap", lambda: self.hotswap(forward, state), estimate_s=1.5 * compile_s + 15, optional=True)
        if not warm and case["fp8"]:
            section("memory", lambda: self.memory(name, res, forward, state), estimate_s=40, optional=True)
        state.clear()
        self.free()
        self.save()

    def count_flops(self, forward: Callable[[], Any], state: dict[str, Any]) -> dict[str, Any]:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            forward()
        state["flops"] = counter.get_total_flops()
        return {"flops_per_step": state["flops"], "tflop_per_step": round(state["flops"] / 1e12, 2)}

    def with_tflops(self, timing: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        if state.get("flops"):
            timing["tflops_achieved"] = round(state["flops"] / (timing["step_ms_median"] / 1e3) / 1e12, 1)
        return timing

    def fast(self, forward: Callable[[], Any], state: dict[str, Any]) -> dict[str, Any]:
        options = acc.FastPathOptions(compile="off" if self.args.no_compile else "regional",
                                      compile_mode=self.args.compile_mode, compile_backend=self.args.compile_backend,
                                      allow_cpu=self.args.tiny, cache_dir=self.args.cache_dir,
                                      quantization=self.args.quantization)
        report: dict[str, Any] = {"applied": [], "skipped": {}}
        if self.args.cache_dir:
            report["compile_cache"] = acc.configure_compile_cache(self.args.cache_dir)
        reference = forward() if options.quantization != "none" else None  # bf16 output, to size the fp8 error
        _, report["prepare_s"] = self.timed(lambda: acc.accelerate_model(state["model"], options, gpu_ok=True,
                                                                         report=report))
        log(f"fast path applied in {report['prepare_s']:.1f} s: {report['applied']}")
        report["cudnn_attention_first"] = attention = self.args.attention == "cudnn" and not self.args.tiny
        with cudnn_attention_first(attention):  # experiment; the app keeps PyTorch's own SDPA order
            _, first = self.timed(forward)
            log(f"first call (compiles) {first:.1f} s")
            timing = self.with_tflops(self.steps(forward), state)
        timing.update(report=report, first_call_s=round(first, 2),
                      compile_s=round(first - timing["step_ms_median"] / 1e3, 2))
        if reference is not None:
            timing["quantization_rel_error"] = relative_error(forward(), reference)
        return timing

    def hotswap(self, forward: Callable[[], Any], state: dict[str, Any]) -> dict[str, Any]:
        """Two random rank-32 LoRAs on the attention projections: swap time, and no recompilation after it."""
        from safetensors.torch import load_file, save_file
        from torch._dynamo.utils import counters

        model, rank = state["model"], 4 if self.args.tiny else 32
        acc.unfuse_qkv(model)  # LoRAs live on to_q/to_k/to_v
        model.enable_lora_hotswap(target_rank=rank, check_compiled="ignore")
        first_lora, second_lora = (random_lora(model, rank, seed, self.device, self.dtype) for seed in (1, 2))
        _, load_s = self.timed(lambda: model.load_lora_adapter(first_lora, prefix=None, adapter_name="brand"))
        out_a, recompile_s = self.timed(forward)
        timing = self.steps(forward, warmup=max(1, self.args.warmup))
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder, "second.safetensors")
            save_file({k: v.contiguous().cpu() for k, v in second_lora.items()}, str(path))
            graphs = counters["stats"]["unique_graphs"]

            def swap() -> None:
                model.load_lora_adapter(load_file(str(path), device=self.device), prefix=None,
                                        adapter_name="brand", hotswap=True)

            _, switch_s = self.timed(swap)
        error = None
        try:
            with torch._dynamo.config.patch(error_on_recompile=True):
                out_b = forward()
        except Exception as exc:  # noqa: BLE001 - a recompile is the finding, not a crash
            error, out_b = f"{type(exc).__name__}: {str(exc)[:500]}", forward()
        after = self.steps(forward, warmup=0)
        return {"lora_rank": rank, "lora_modules": len(first_lora) // 2, "first_load_s": round(load_s, 2),
                "first_call_after_load_s": round(recompile_s, 2), "lora_step_ms": timing["step_ms_median"],
                "graphs_compiled_while_timing_lora": timing["graphs_compiled_while_timing"],
                "switch_ms": round(switch_s * 1e3, 1), "step_ms_after_switch": after["step_ms_median"],
                "recompiled_after_switch": error is not None or counters["stats"]["unique_graphs"] != graphs,
                "recompile_error": error,
                "outputs_differ": bool((first_output(out_a) - first_output(out_b)).abs().max() > 0)}

    def group_offload(self, state: dict[str, Any], forward: Callable[[], Any]) -> dict[str, Any]:
        """The denoiser streamed to the GPU layer by layer (memory mode 'group_offload'): peak and step time.
        Leaves a freshly built resident model in state["model"] for the sections after it."""
        model = state["model"]
        for module in model.modules():  # eager: offload hooks and compiled regions do not mix
            if getattr(module, "_compiled_call_impl", None) is not None:
                module._compiled_call_impl = None
        torch._dynamo.reset()
        _, to_cpu_s = self.timed(lambda: model.to("cpu"))
        self.free()
        model.enable_group_offload(torch.device("cuda"), offload_type="leaf_level", use_stream=True)
        out = {"to_host_s": round(to_cpu_s, 1), "resident_gb_before_first_step":
               round(torch.cuda.memory_allocated() / 2**30, 2), **self.steps(forward, warmup=1)}
        state["model"] = model = None
        self.free()
        state["model"] = state["make"]()
        return out

    def memory(self, name: str, res: dict[str, Any], forward: Callable[[], Any],
               state: dict[str, Any]) -> dict[str, Any]:
        """Peak memory under model offload (denoiser alone on the GPU), group offload and fp8 weights (torchao)."""
        model = state["model"]
        te_gb = TEXT_ENCODER_PARAMS_B[name] * 2e9 / 2**30
        eager_peak = res.get("eager", {}).get("peak_gb")
        out: dict[str, Any] = {
            "model_offload_peak_gb": eager_peak,
            "resident_pipeline_estimate_gb": None if eager_peak is None else round(eager_peak + te_gb, 1),
            "text_encoders_gb": round(te_gb, 1)}
        if self.device == "cuda":
            out["group_offload"] = self.group_offload(state, forward)
        reason = quantization.torchao_missing_reason()
        if self.device != "cuda" or torch.cuda.get_device_capability() < (8, 9):
            reason = "fp8 needs a CUDA GPU with compute capability 8.9+"
        if reason:
            out["fp8_skipped"] = reason
            return out
        for module in model.modules():  # back to eager: quantized weights need a fresh compile
            if getattr(module, "_compiled_call_impl", None) is not None:
                module._compiled_call_impl = None
        torch._dynamo.reset()
        self.free()
        _, quant_s = self.timed(lambda: quantization.quantize_weights(model, "fp8"))
        self.free()
        out["fp8_quantize_s"] = round(quant_s, 1)
        out["fp8_weights_gb"] = round(torch.cuda.memory_allocated() / 2**30, 2)
        out["fp8_eager"] = self.with_tflops(self.steps(forward), state)
        if self.left() > 120:
            acc.compile_regions(model, self.args.compile_mode, backend=self.args.compile_backend)
            _, first = self.timed(forward)
            out["fp8_compiled"] = self.with_tflops(self.steps(forward), state)
            out["fp8_compiled"]["first_call_s"] = round(first, 2)
        return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON results path (rewritten after every section)")
    parser.add_argument("--cache-dir", default=None, help="persistent inductor cache (same dir for cold and warm)")
    parser.add_argument("--phase", choices=("cold", "warm"), default="cold",
                        help="warm: second process with the same --cache-dir; only build + compile + fast steps")
    parser.add_argument("--cold-json", default=None, help="with --phase warm: the cold run's JSON, to compare")
    parser.add_argument("--models", default=None, help="comma list of sdxl,flux,hidream (default: all)")
    parser.add_argument("--quick", action="store_true", help="one model (sdxl unless --models), fewer steps")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny configs, same code paths")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    parser.add_argument("--compile-backend", default=None, help="default: inductor (eager with --tiny)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--measure", type=int, default=None, help="timed steps per measurement")
    parser.add_argument("--budget-s", type=float, default=510.0, help="stop optional sections to finish in time")
    parser.add_argument("--no-hotswap", action="store_true")
    parser.add_argument("--no-compile", action="store_true", help="fast path without torch.compile (diagnosis)")
    parser.add_argument("--quantization", choices=acc.QUANTIZATIONS, default="none",
                        help="fast path weights: none (bf16) or a torchao config, e.g. fp8 (rows-scaled fp8 GEMMs)")
    parser.add_argument("--attention", choices=("default", "cudnn"), default="default",
                        help="fast path SDPA order: PyTorch's own (as the app runs) or cuDNN first (experiment)")
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in (args.models or ("sdxl" if args.quick else "sdxl,flux,hidream")).split(",")]
    unknown = set(args.models) - set(CASES)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {list(CASES)}")
    args.compile_backend = args.compile_backend or ("eager" if args.tiny else "inductor")
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick or args.tiny else 2)
    args.measure = args.measure if args.measure is not None else (2 if args.tiny else 3 if args.quick else 5)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        print("No CUDA GPU: run on the GPU machine, or use --tiny for the CPU smoke test.", file=sys.stderr)
        return 2
    for key in ("recompile_limit", "cache_size_limit"):  # SDXL's blocks come in two widths; leave room
        if hasattr(torch._dynamo.config, key):
            setattr(torch._dynamo.config, key, 64)
    if args.tiny:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    bench = Bench(args)
    log(f"gpu_bench phase={args.phase} models={args.models} budget={args.budget_s:.0f}s "
        f"torch={torch.__version__} device={bench.results['meta'].get('gpu', 'cpu')}")
    for i, name in enumerate(args.models):
        later = 0.0 if args.tiny else sum(CORE_ESTIMATE_S[m] for m in args.models[i + 1:])
        if bench.left() < (0 if args.tiny else 30):
            bench.results["models"][name] = {"skipped": {"all": "time budget spent"}}
            log(f"{name}: skipped, time budget spent")
            continue
        bench.run_model(name, reserve_s=later)
    bench.results["meta"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    bench.results["meta"]["total_s"] = round(args.budget_s - bench.left(), 1)
    bench.save()
    log(f"wrote {args.out} in {bench.results['meta']['total_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
