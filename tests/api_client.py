"""Drive a running BrandGen app from Python, as an API user would: generate, train, benchmark, gallery.

    python tests/api_client.py http://127.0.0.1:7860

Every call goes through gradio_client and the app's named endpoints (the app's "Use via API" page lists
them). The functions are small on purpose: copy the one you need. tests/test_api_client.py runs them, and this
script, against a freshly launched app.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from gradio_client import Client

NO_LORA = "(none)"
LORA_SLOTS = 3
EXAMPLE_DATASET = "assets/brand_example/icons"  # relative paths are looked up in the app's repository
ACTIVE = ("queued", "running", "cancelling")


def connect(url: str, download_dir: str | None = None) -> Client:
    """A client for the app at `url`; output files (images, CSVs) are downloaded to `download_dir`."""
    extra = {"download_files": download_dir} if download_dir else {}
    return Client(url, verbose=False, analytics_enabled=False, **extra)


def _json(value: Any) -> Any:
    """JSON endpoints come back decoded on recent gradio_client versions, as a string on older ones."""
    return json.loads(value) if isinstance(value, str) else value


def list_models(client: Client) -> list[dict[str, Any]]:
    return _json(client.predict(api_name="/list_models"))


def default_model(client: Client) -> str:
    """The first model of the registry is the app's default (brandgen-tiny, embedded)."""
    return list_models(client)[0]["id"]


# ----- generate ------------------------------------------------------------------------------------
def generate(
    client: Client, prompt: str, *, asset_type: str = "icons", model: str | None = None, preset: str = "draft",
    seed: int = -1, count: int = 1, negative: str = "", steps: int = 0, guidance: float = -1,
    loras: Sequence[tuple[str, float]] = (),
) -> dict[str, Any]:
    """/generate: images (local files downloaded by gradio_client), their captions, and one settings dict each."""
    if len(loras) > LORA_SLOTS:
        raise ValueError(f"At most {LORA_SLOTS} LoRAs.")
    slots: list[Any] = []
    for i in range(LORA_SLOTS):
        name, weight = loras[i] if i < len(loras) else (NO_LORA, 0.8)
        slots += [name, weight]
    gallery, metadata, status, _selected = client.predict(
        prompt, asset_type, model or default_model(client), preset, seed, count, negative, steps, guidance, *slots,
        api_name="/generate",
    )
    return {
        "images": [item["image"] for item in gallery],
        "captions": [item.get("caption") for item in gallery],
        "metadata": _json(metadata),
        "status": status,
    }


def cancel_generation(client: Client) -> None:
    client.predict(api_name="/cancel_generation")


# ----- train ---------------------------------------------------------------------------------------
def start_training(
    client: Client, name: str, *, folder: str = EXAMPLE_DATASET, asset_type: str = "icons",
    model: str | None = None, trigger: str = "mybrand", rank: int = 4, alpha: float = 4, lr: float = 1e-3,
    epochs: int = 0, max_steps: int = 200, resolution: int = 0, batch_size: int = 1, grad_accum: int = 1,
    validate_every: int = 0, checkpoint_every: int = 0, allow_small: bool = False, bucketing: bool = False,
    convs: bool = False, compile_blocks: bool = False, cudnn_attention: bool = True, cuda_graph: bool = True,
    fp8_base: bool = False, timesteps: str = "uniform",
) -> dict[str, Any]:
    """/start_training: queue a LoRA run in the app's background thread; returns the job state. The GPU options
    (compile, cuDNN attention, CUDA graph, fp8 base weights) are ignored by a server without a GPU; `timesteps`
    "high-noise" (SD1.5/SDXL) trains where a palette is decided (the model's own choice is in /list_models)."""
    model = model or default_model(client)
    if not resolution:
        resolution = next(m["native_resolution"][0] for m in list_models(client) if m["id"] == model)
    state, _text = client.predict(
        folder, asset_type, model, name, trigger, rank, alpha, lr, epochs, max_steps, resolution, batch_size,
        grad_accum, validate_every, checkpoint_every, allow_small, bucketing, convs, compile_blocks, cudnn_attention,
        cuda_graph, fp8_base, timesteps, api_name="/start_training",
    )
    return _json(state)


def training_status(client: Client) -> dict[str, Any]:
    """/training_status: the newest job (status, step, total, loss, ETA, samples, history) or {"status": "none"}."""
    return _json(client.predict(api_name="/training_status"))


def wait_for_training(
    client: Client, until: Callable[[dict[str, Any]], bool], timeout: float = 300, interval: float = 0.5,
) -> dict[str, Any]:
    """Poll /training_status until `until(state)` holds or the job is over; TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        state = training_status(client)
        if until(state) or state["status"] not in ACTIVE:
            return state
        if time.monotonic() > deadline:
            raise TimeoutError(f"Training still {state['status']} at step {state['step']} after {timeout} s.")
        time.sleep(interval)


def cancel_training(client: Client) -> dict[str, Any]:
    """/cancel_training: stop after the current step (a checkpoint is saved; the run can be resumed)."""
    state, _text = client.predict(api_name="/cancel_training")
    return _json(state)


# ----- benchmark -----------------------------------------------------------------------------------
def benchmark(
    client: Client, prompts: Sequence[str], *, models: Sequence[str] | None = None,
    presets: Sequence[str] = ("draft",), asset_type: str = "icons",
    palette: str = "#1a73e8, #0b1f3a, #34a853, #ffffff", seed: int = 42, steps: int = 0,
    lora: str = NO_LORA, lora_weight: float = 0.8,
) -> dict[str, Any]:
    """/benchmark: models x prompts x presets; one row per image, one summary row per model, and the CSV."""
    rows, summary, csv_path, status = client.predict(
        list(models or [default_model(client)]), "\n".join(prompts), list(presets), asset_type, palette, seed,
        steps, lora, lora_weight, api_name="/benchmark",
    )
    return {"rows": _json(rows), "summary": _json(summary), "csv": csv_path, "status": status}


# ----- gallery -------------------------------------------------------------------------------------
def gallery_list(
    client: Client, text: str = "", *, asset_type: str | None = None, model: str | None = None,
    lora: str | None = None, page: int = 1, page_size: int = 48,
) -> dict[str, Any]:
    """/gallery_search: stored images newest first -> {"items": [...], "total", "page", "pages"}."""
    return _json(client.predict(text, asset_type, model, lora, page, page_size, api_name="/gallery_search"))


def gallery_item(client: Client, item_id: str) -> dict[str, Any]:
    """/gallery_item: one image's settings, read back from its PNG."""
    return _json(client.predict(item_id, api_name="/gallery_item"))


# ----- the tour ------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default="http://127.0.0.1:7860/")
    parser.add_argument("--prompt", default="a teal heart icon")
    args = parser.parse_args(argv)
    client = connect(args.url)
    model = default_model(client)
    print(f"models: {', '.join(m['id'] for m in list_models(client))}")

    result = generate(client, args.prompt, model=model, seed=42, count=2)
    print(f"generate: {result['status']}")
    for path, meta in zip(result["images"], result["metadata"]):
        print(f"  seed {meta['seed']} -> {path} (gallery id {meta.get('gallery_id')})")

    name = f"api-demo-{time.strftime('%Y%m%d-%H%M%S')}"
    state = start_training(client, name, model=model)
    print(f"train: started {state['name']} ({state['status']})")
    state = wait_for_training(client, lambda s: s["status"] == "running" and s["step"] >= 1)
    print(f"train: {state['status']} at step {state['step']}/{state['total']}, loss {state['loss']}")
    state = cancel_training(client)
    print(f"train: cancel requested ({state['status']})")
    state = wait_for_training(client, lambda s: False)
    print(f"train: {state['status']} at step {state['step']}: {state['message']}")

    bench = benchmark(client, [args.prompt], models=[model])
    for row in bench["rows"]:
        print(f"benchmark: {row['model']} · {row['prompt']} · {row['status']} · {row['seconds']} s")
    print(f"benchmark: {bench['status']}")

    listing = gallery_list(client)
    print(f"gallery: {listing['total']} image(s)")
    for item in listing["items"][:5]:
        print(f"  {item['id']} · seed {item['seed']} · {item['user_prompt']} · {item['file']}")
    ok = len(result["images"]) == 2 and state["status"] == "cancelled" and bench["rows"] and listing["total"] >= 2
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
