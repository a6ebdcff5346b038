"""Command line: `brandgen serve | generate` (train and benchmark join as their tabs land)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path

from brandgen.errors import BrandGenError, InvalidInput
from brandgen.gallery import INDEX_NAME
from brandgen.paths import TRUTHY, AppPaths


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """'user:password' -> (user, password); the password may itself hold ':'. Blank means no login."""
    if not (value or "").strip():
        return None
    user, sep, password = value.partition(":")
    if not sep or not user.strip() or not password:
        raise InvalidInput("--auth / BRANDGEN_AUTH must be user:password, both non-empty (e.g. designer:s3cret).")
    return user.strip(), password


def default_host() -> str:
    """BRANDGEN_HOST, else GRADIO_SERVER_NAME, else all interfaces on a Hugging Face Space (its proxy must reach
    the app), else loopback only."""
    return (os.environ.get("BRANDGEN_HOST") or os.environ.get("GRADIO_SERVER_NAME")
            or ("0.0.0.0" if os.environ.get("SPACE_ID") else "127.0.0.1"))


DEFAULT_UPLOAD_MB = 50  # a training image or a PNG to read settings from; far below what a disk or RAM fears
DEFAULT_QUEUE_SIZE = 64  # requests waiting at once (all endpoints); more are answered "busy" at once


def _env_int(name: str, default: int, least: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = least - 1
    if number < least:
        raise InvalidInput(f"{name} must be a whole number of at least {least}, got {value!r}.")
    return number


def launch_options(args: argparse.Namespace, paths: AppPaths) -> dict:
    """The keyword arguments for `Blocks.launch`. Only outputs/ and benchmarks/ are served as files, and not the
    gallery's SQLite index in outputs/ (LoRAs, brand kits, training runs and the repository never). Uploads over
    BRANDGEN_MAX_UPLOAD_MB are refused (HTTP 413) before they are stored."""
    index = paths.outputs / INDEX_NAME
    return {
        "server_name": args.host, "server_port": args.port, "share": args.share, "auth": parse_auth(args.auth),
        "allowed_paths": [str(paths.outputs), str(paths.benchmarks)],
        "blocked_paths": [f"{index}{suffix}" for suffix in ("", "-wal", "-shm")], "show_error": True,
        "max_file_size": f"{_env_int('BRANDGEN_MAX_UPLOAD_MB', DEFAULT_UPLOAD_MB, 1)}mb",
    }


def queue_options() -> dict:
    """`Blocks.queue` arguments: one event of each kind at a time (generation holds the accelerator anyway), and
    at most BRANDGEN_QUEUE_SIZE waiting. Each waiting client is told its position (the browser shows
    "queue: 3/12", gradio_client's job.status().rank); beyond the limit the answer is "busy" (HTTP 503: the
    browser says "This application is currently busy", gradio_client raises QueueError)."""
    return {"default_concurrency_limit": 1, "max_size": _env_int("BRANDGEN_QUEUE_SIZE", DEFAULT_QUEUE_SIZE, 1)}


def performance_env(args: argparse.Namespace) -> None:
    """--performance / --quantization set the same variables a Space sets, before the manager is created."""
    from brandgen.performance_mode import ENV_ON, ENV_QUANTIZATION, options_from_env

    if getattr(args, "performance", False):
        os.environ[ENV_ON] = "1"
    if getattr(args, "quantization", None):
        os.environ[ENV_QUANTIZATION] = args.quantization
    options_from_env()  # a bad value fails here, with the variable named, before any model loads


def _serve(args: argparse.Namespace) -> None:
    from brandgen import spaces_support

    options = launch_options(args, AppPaths.from_env())  # a bad --auth fails before any model loads
    queue = queue_options()
    spaces_support.zero_gpu_enabled()  # imports `spaces` on ZeroGPU before torch looks for CUDA, as it must
    performance_env(args)  # imports torch (acceleration), so after `spaces`
    import torch

    from brandgen.device import server_thread_plan

    plan = server_thread_plan()
    torch.set_num_threads(plan.busy)  # leave a core to the server while it loads and serves (device.ThreadPlan)
    if options["share"] and not options["auth"]:
        print("warning: --share publishes the app to anyone with the link; consider --auth user:password",
              file=sys.stderr)
    from brandgen.manager import PipelineManager
    from brandgen.ui.app import build_app

    manager = PipelineManager.instance()
    manager.thread_plan = plan  # every core for a request nobody waits behind
    if not spaces_support.prepare(manager):
        # load the default model while the page comes up, so the first click only pays for generation
        threading.Thread(target=_preload, args=(manager,), name="brandgen-preload", daemon=True).start()
    demo = build_app(manager)
    demo.queue(**queue).launch(**options)


def _preload(manager) -> None:
    try:
        manager.load_model()
    except BrandGenError as exc:  # the Generate tab reports it again when the user asks for that model
        print(f"warning: default model not loaded: {exc}", file=sys.stderr)


def lora_args(values: list[str]) -> tuple[tuple[str, float], ...]:
    """['acme:0.8', 'flat'] -> (('acme', 0.8), ('flat', 1.0)): a missing weight means full strength."""
    pairs = []
    for value in values:
        name, _, weight = value.partition(":")
        try:
            pairs.append((name, float(weight) if weight else 1.0))
        except ValueError:
            raise InvalidInput(f"--lora {value!r}: write name:weight, e.g. acme:0.8.") from None
    return tuple(pairs)


def _generate(args: argparse.Namespace) -> None:
    from brandgen.generation import GenerationRequest
    from brandgen.manager import PipelineManager

    performance_env(args)
    manager = PipelineManager.instance()
    loras = lora_args(args.lora)
    request = GenerationRequest(
        prompt=args.prompt, asset_type=args.asset_type, model_id=args.model, preset=args.preset,
        seed=args.seed, count=args.count, loras=loras,
    )
    result = manager.generate(request)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for image, meta in zip(result.images, result.metadata):
        path = out / f"{meta['model']}_{meta['seed']}.png"
        image.save(path)
        meta["file"] = str(path)
    print(json.dumps(result.to_dict(), indent=2))


def _benchmark(args: argparse.Namespace) -> None:
    from brandgen.benchmark import DEFAULT_PALETTE, DEFAULT_PROMPTS, BenchmarkSpec, display_table, run_benchmark
    from brandgen.manager import PipelineManager

    performance_env(args)
    manager = PipelineManager.instance()
    prompts = Path(args.prompts_file).read_text(encoding="utf-8").splitlines() if args.prompts_file else DEFAULT_PROMPTS
    spec = BenchmarkSpec(
        models=tuple(args.model or [manager.registry.default_id]), prompts=tuple(prompts),
        presets=tuple(args.preset or ["draft"]),
        palette=tuple(args.palette.split(",")) if args.palette else DEFAULT_PALETTE,
        loras=lora_args(args.lora),
        seed=args.seed, asset_type=args.asset_type, steps=args.steps,
    )
    result = run_benchmark(manager, spec, progress=lambda done, total, row: print(
        f"[{done}/{total}] {row['model']} · {row['prompt'] or '-'} · {row['status']} {row['error'] or ''}",
        file=sys.stderr, flush=True), out_root=Path(args.out) if args.out else None)
    print(display_table(result.summary_df).to_string(index=False))
    print(f"\n{'cancelled' if result.cancelled else 'done'}: {result.csv_path}\n{result.summary_csv_path}")


def _train(args: argparse.Namespace) -> None:
    from brandgen.training.command import train_command

    train_command(args.config, resume=args.resume, device=args.device, log_every=args.log_every)


QUANTIZATION_CHOICES = ("none", "fp8", "int8wo")  # acceleration.QUANTIZATIONS, without importing torch here


def add_performance_flags(parser: argparse.ArgumentParser) -> None:
    # torch must not be imported while the parser is built: on ZeroGPU `spaces` has to come first (_serve)
    parser.add_argument("--performance", action="store_true",
                        help="GPU performance mode: resident bf16, compiled at load, LoRAs merged "
                             "(env BRANDGEN_PERFORMANCE=1; see README)")
    parser.add_argument("--quantization", choices=QUANTIZATION_CHOICES, default=None,
                        help="with --performance: torchao weights (env BRANDGEN_QUANTIZATION)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brandgen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the web app")
    serve.add_argument("--host", default=default_host())
    serve.add_argument("--port", type=int,  # argparse converts a string default, so a bad env is a usage error
                       default=os.environ.get("BRANDGEN_PORT") or os.environ.get("GRADIO_SERVER_PORT") or "7860")
    serve.add_argument("--share", action="store_true",
                       default=os.environ.get("BRANDGEN_SHARE", "").strip().lower() in TRUTHY,
                       help="also publish a temporary public gradio.live link (env BRANDGEN_SHARE=1)")
    serve.add_argument("--auth", default=os.environ.get("BRANDGEN_AUTH"),
                       help="user:password required to open the app (env BRANDGEN_AUTH)")
    add_performance_flags(serve)
    serve.set_defaults(run=_serve)
    gen = sub.add_parser("generate", help="generate images to a folder")
    gen.add_argument("prompt")
    gen.add_argument("--asset-type", default="icons")
    gen.add_argument("--model", default=None)
    gen.add_argument("--preset", default="standard")
    gen.add_argument("--seed", type=int, default=-1)
    gen.add_argument("--count", type=int, default=1)
    gen.add_argument("--lora", action="append", default=[], help="name:weight (repeatable)")
    gen.add_argument("--out", default="outputs/cli")
    add_performance_flags(gen)
    gen.set_defaults(run=_generate)
    bench = sub.add_parser("benchmark", help="models x prompts x presets: timings, memory, quality -> CSV")
    bench.add_argument("--model", action="append", help="model id (repeatable; default: the registry default)")
    bench.add_argument("--prompts-file", help="one prompt per line (default: the 5 fintech icon prompts)")
    bench.add_argument("--preset", action="append", help="quality preset (repeatable; default: draft)")
    bench.add_argument("--palette", help="brand hex colours, comma separated")
    bench.add_argument("--lora", action="append", default=[], help="name:weight")
    bench.add_argument("--asset-type", default="icons")
    bench.add_argument("--seed", type=int, default=42)
    bench.add_argument("--steps", type=int, default=None, help="override the preset's step count")
    bench.add_argument("--out", default=None, help="folder for the run folder (default: <BRANDGEN_HOME>/benchmarks)")
    add_performance_flags(bench)
    bench.set_defaults(run=_benchmark)
    train = sub.add_parser("train", help="train a brand LoRA from a JSON config (works under accelerate launch)")
    train.add_argument("--config", help="JSON file of TrainConfig fields (see docs/TRAINING.md)")
    train.add_argument("--resume", default=None, help="run folder to continue from its newest checkpoint")
    train.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: CUDA when available")
    train.add_argument("--log-every", type=int, default=10)
    train.set_defaults(run=_train)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except BrandGenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
