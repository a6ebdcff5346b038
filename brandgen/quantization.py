"""torchao weight quantization of a denoiser's Linear layers (fp8 on Ada/Hopper GPUs, int8 weight-only).

Used by the fast path (brandgen.acceleration.accelerate_model) inside regionally compiled code, where a quantized
weight costs no Python dispatch per call. With merged LoRAs (brandgen.lora_fuse), fp8 layers take the merge by
requantization; int8 ones cannot, so the fast path passes the LoRA layers as `keep` for int8 only.
"""

from __future__ import annotations

import torch

from brandgen.acceleration import QUANTIZATIONS, lora_layer
from brandgen.errors import InvalidInput


def torchao_missing_reason() -> str | None:
    try:
        import torchao.quantization  # noqa: F401
    except ImportError:
        return ("torchao is not installed: `pip install torchao` (a build matching your torch) to use fp8/int8 "
                "weights; running in bf16 instead")
    return None


def quantize_weights(model: torch.nn.Module, kind: str, within: tuple[str, ...] | None = None,
                     keep: tuple[str, ...] = ()) -> str:
    """Quantize the denoiser's Linear weights in place with torchao; raises InvalidInput when it cannot.

    `within`: module-name prefixes (the compiled regions) whose Linear layers are quantized; None = every one.
    `keep`: LoRA target names left in bf16, because LoRAs are merged into them (int8; empty for fp8 and the slot).
    Outside compiled code a torchao weight runs through Python tensor-subclass dispatch on every call, which cost
    more than fp8 saved (H100, docs/PERFORMANCE.md). With the slot style, LoRA target layers are quantized too: the
    slot wraps them (peft's TorchaoLoraLinear) and adds its bf16 low-rank update to the fp8 base output."""
    if kind == "none":
        return "none"
    reason = torchao_missing_reason()
    if reason:
        raise InvalidInput(reason)
    from torchao.quantization import quantize_

    if kind == "fp8":
        if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
            raise InvalidInput("fp8 weights need an NVIDIA GPU with compute capability 8.9+ (Ada, Hopper).")
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

        # set_inductor_config=False: by default torchao switches on inductor's coordinate-descent tuning, which
        # then benchmarks every kernel of the next compile (FLUX's first compiled call ran > 3 min on an H200,
        # py-spy in CoordescTuner.autotune). The app's compile must stay seconds, as for bf16.
        config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)
    elif kind == "int8wo":
        from torchao.quantization import Int8WeightOnlyConfig

        config = Int8WeightOnlyConfig(set_inductor_config=False)
    else:
        raise InvalidInput(f"Unknown quantization {kind!r}; use one of {QUANTIZATIONS}.")

    def chosen(name: str) -> bool:
        inside = within is None or any(name.startswith(prefix + ".") for prefix in within)
        return inside and not (keep and lora_layer(name, keep))

    linears = [m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and chosen(name)]
    total = sum(1 for m in model.modules() if isinstance(m, torch.nn.Linear))
    quantize_(model, config, filter_fn=lambda module, fqn: isinstance(module, torch.nn.Linear) and chosen(fqn))
    if linears and all(type(m.weight.data) is torch.Tensor for m in linears):
        # seen with torchao 0.18 on torch 2.11: its tensor subclasses failed to import and quantize_ did nothing
        raise InvalidInput(f"torchao {_torchao_version()} left every Linear layer unquantized (it does not match "
                           f"torch {torch.__version__}); install the torchao build made for this torch.")
    outside = total - len(linears)
    return f"{kind}: {len(linears)} Linear layers" + (
        f", {outside} kept (outside compiled code{' or LoRA layers' if keep else ''})" if outside else "")


def _torchao_version() -> str:
    try:
        import torchao

        return getattr(torchao, "__version__", "?")
    except Exception:  # noqa: BLE001 - only used in a message
        return "?"
