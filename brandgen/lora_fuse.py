"""LoRA switching by merging into the base weights in place: the default of performance mode.

The H100 run of scripts/e2e_bench.py (docs/PERFORMANCE.md) showed why an adapter slot is not enough: a peft slot
adds two small matmuls to each of SDXL's 722 target layers on every step, so performance mode ran slower than
plain fused weights. Here the active LoRAs are merged into the weights the compiled graphs already read,
W = W0 + sum(weight_i * B_i @ A_i), with copy_ and addmm_ on the parameters' own storage. torch.compile takes
parameters as graph inputs, so a switch, a weight change or several LoRAs at once compile nothing, and the step
costs what a plain fused model costs. W0 of each touched layer is kept once (on the GPU when it fits, else in pinned
host memory), so switching never accumulates rounding.

Fused QKV projections (acceleration.fuse_qkv) stay on: a LoRA on to_q/to_k/to_v (add_q_proj/...) goes into its
rows of to_qkv (to_kv, to_added_qkv).

fp8 weights with one scale per output row (torchao's Float8Tensor, PerRow: what BRANDGEN_QUANTIZATION=fp8 makes)
take a merge too: W = requant(dequant(W0) + sum(...)), written into the weight's own qdata and scale, so the
compiled graphs (which read those two tensors) compile nothing, and the kept W0 is the fp8 original (1 byte a
weight), so a switch back restores it bit for bit. Without this, performance mode kept every LoRA layer in bf16
and fp8 sped up almost nothing (H100: 21 of SDXL's 743 Linear layers were fp8). Other quantized weights (int8)
keep the family's LoRA layers unquantized (quantization.quantize_weights' `keep`), and a LoRA on another such
layer is refused with the reason instead of being applied wrongly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from brandgen.acceleration import FUSED_PARTS, find_denoiser
from brandgen.errors import LoraError
from brandgen.lora_hotswap import LoraCache
from brandgen.loras import LoraFactors

log = logging.getLogger(__name__)

HOST_MARGIN = 2 * 2**30  # free accelerator memory left after keeping W0 copies there
# fp8 rows are merged in bf16: its rounding (2^-9) is far below e4m3's step (2^-4), and float32 intermediates
# doubled the memory traffic of a switch (FLUX fp8: 169 ms back to a cached LoRA vs 40 ms in bf16, H100 run 4)
MERGE_DTYPE = torch.bfloat16


@dataclass(frozen=True)
class Fp8Rows:
    """A per-row fp8 weight (or some of its rows) as the two tensors compiled code reads: W ~ qdata * scale."""

    qdata: torch.Tensor  # [out, in] float8
    scale: torch.Tensor  # [out, 1] float32

    @property
    def device(self) -> torch.device:
        return self.qdata.device

    def rows(self, start: int, stop: int) -> "Fp8Rows":
        return Fp8Rows(self.qdata[start:stop], self.scale[start:stop])

    def copy_(self, other: "Fp8Rows", non_blocking: bool = False) -> None:
        self.qdata.copy_(other.qdata, non_blocking=non_blocking)
        self.scale.copy_(other.scale, non_blocking=non_blocking)

    def clone_to(self, device: torch.device) -> "Fp8Rows":
        return Fp8Rows(self.qdata.detach().to(device, copy=True), self.scale.detach().to(device, copy=True))

    def pin_memory(self) -> "Fp8Rows":
        return Fp8Rows(self.qdata.pin_memory(), self.scale.pin_memory())

    def nbytes(self) -> int:
        return self.qdata.numel() * self.qdata.element_size() + self.scale.numel() * self.scale.element_size()

    def dequantize(self, device: torch.device, dtype: torch.dtype = MERGE_DTYPE) -> torch.Tensor:
        """The rows in `dtype`, on `device` (the kept W0 may live in host memory)."""
        rows = self.qdata.to(device, non_blocking=True).to(dtype)
        return rows.mul_(self.scale.to(device, non_blocking=True).to(dtype).view(-1, 1))

    def store(self, weight: torch.Tensor) -> None:
        """Quantize rows into qdata and scale, consuming `weight` (divided in place): each row's largest magnitude
        maps to the format's max. Four passes over the weight, none in float32 (the merge is memory-bound)."""
        top = torch.finfo(self.qdata.dtype).max
        amax = torch.linalg.vector_norm(weight, ord=float("inf"), dim=1, keepdim=True, dtype=torch.float32)
        scale = (amax / top).clamp_min(torch.finfo(torch.float32).tiny).to(weight.dtype)
        self.qdata.copy_(weight.div_(scale).clamp_(-top, top))
        self.scale.copy_(scale.view(self.scale.shape).to(self.scale.dtype))  # the scale the rows were divided by


Target = torch.Tensor | Fp8Rows
FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)


def merge_target(model: torch.nn.Module, module_name: str) -> Target:
    """The weight a LoRA on `module_name` must change: the layer's own, or its rows of the fused projection the
    forward pass really uses. LoraError when it is neither a plain nor a per-row fp8 Linear/Conv2d weight."""
    parent_name, _, leaf = module_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if getattr(parent, "fused_projections", False):
        for fused_name, parts in FUSED_PARTS.items():  # rows in the order of the layers it joins
            fused = getattr(parent, fused_name, None)
            if leaf in parts and isinstance(fused, torch.nn.Linear):
                start = sum(getattr(parent, p).out_features for p in parts[:parts.index(leaf)])
                target, stop = _plain(fused.weight, module_name), start + getattr(parent, leaf).out_features
                return target.rows(start, stop) if isinstance(target, Fp8Rows) else target[start:stop]
    layer = model.get_submodule(module_name)
    layer = getattr(layer, "base_layer", layer)
    if not isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
        raise LoraError(f"layer {module_name} is a {type(layer).__name__}; LoRAs merge into Linear and Conv2d only.")
    return _plain(layer.weight, module_name)


def _plain(weight: torch.Tensor, name: str) -> Target:
    data = weight.data
    if type(data) is torch.Tensor:
        return data
    qdata, scale = getattr(data, "qdata", None), getattr(data, "scale", None)
    if (isinstance(qdata, torch.Tensor) and isinstance(scale, torch.Tensor) and qdata.dtype in FP8
            and qdata.dim() == 2 and scale.numel() == qdata.shape[0] and scale.shape[0] == qdata.shape[0]):
        return Fp8Rows(qdata, scale)
    raise LoraError(f"layer {name} holds {type(data).__name__} weights (quantized), which a LoRA cannot be "
                    "merged into; to use this LoRA, start with BRANDGEN_LORA_HOTSWAP=slot (an adapter over the "
                    "quantized layers), with BRANDGEN_QUANTIZATION=fp8, or without BRANDGEN_QUANTIZATION.")


class LoraFuser:
    """The pipeline's active LoRAs, merged into its weights; any number at once, in any key format."""

    def __init__(self, pipe: Any):
        self.pipe = pipe
        self.active: tuple[tuple[Path, float], ...] = ()
        self._base: dict[tuple[str, str], torch.Tensor] = {}  # (component, module) -> W0
        self._merged: set[tuple[str, str]] = set()  # layers now holding a LoRA delta
        self._cache = LoraCache(pipe, find_denoiser(pipe)[1])

    @property
    def path(self) -> Path | None:
        """The single active LoRA's file (None when none or several): LoraHotswapper's attribute."""
        return self.active[0][0] if len(self.active) == 1 else None

    @property
    def holds_loras(self) -> bool:
        """Whether LoRAs are merged in (a refused set leaves the previous one merged)."""
        return bool(self.active)

    def activate(self, path: Path | None, weight: float = 1.0, name: str = "") -> str:
        """LoraHotswapper's call: make the LoRA at `path` (None: no LoRA) the only active one at `weight`."""
        return self.set([] if path is None else [(Path(path), weight, name)])

    def set(self, loras: Sequence[tuple[Path, float, str]]) -> str:
        """Make exactly `loras` (file, weight, name) active. Every file is read and every target checked before
        any weight changes, so a LoRA that does not fit leaves the model as it was. Returns '' (no note)."""
        live = [(Path(p), float(w), n) for p, w, n in loras if float(w) != 0.0]
        wanted = tuple((p, w) for p, w, _ in live)
        if wanted == self.active:
            return ""
        read = [(self._factors(p, n or p.stem), w) for p, w, n in live]
        plan: dict[tuple[str, str], list[tuple[torch.Tensor, torch.Tensor, float]]] = {}
        targets: dict[tuple[str, str], Target] = {}
        for lora, weight in read:
            for component, layers in lora.factors.items():
                model = getattr(self.pipe, component, None)
                if not isinstance(model, torch.nn.Module):
                    raise LoraError(f"LoRA {lora.name!r} targets {component}, which this pipeline does not have.")
                for module, (down, up) in layers.items():
                    key = (component, module)
                    try:
                        targets.setdefault(key, merge_target(model, module))
                    except LoraError as exc:
                        raise LoraError(f"LoRA {lora.name!r}: {exc}") from exc
                    plan.setdefault(key, []).append((down, up, weight))
        self._keep_bases(targets)
        try:
            self._write(plan, targets)
        except Exception:  # e.g. out of memory half-way: back to the base weights rather than a mix
            self._write({}, {}, also=set(plan))
            self.active = ()
            raise
        self.active = wanted
        return ""

    def reset(self) -> None:
        """Back to the base weights."""
        self._write({}, {})
        self.active = ()

    @torch.no_grad()
    def _write(self, plan: dict, targets: dict[tuple[str, str], Target],
               also: set[tuple[str, str]] = frozenset()) -> None:
        for key in (self._merged | also) - set(plan):  # layers the new set leaves alone go back to W0
            component, module = key
            merge_target(getattr(self.pipe, component), module).copy_(self._base[key], non_blocking=True)
        for key, parts in plan.items():
            target = targets[key]
            if isinstance(target, Fp8Rows):  # merge in bf16, then one rounding to fp8
                weight = self._base[key].dequantize(target.device)
            else:
                weight = target
                weight.copy_(self._base[key], non_blocking=True)
            rows = weight.reshape(weight.shape[0], -1) if weight.is_contiguous() else None
            for down, up, strength in parts:
                down = down.to(weight.device, weight.dtype).reshape(down.shape[0], -1)
                up = up.to(weight.device, weight.dtype).reshape(up.shape[0], -1)
                if rows is not None:  # one kernel, one rounding: W += strength * B @ A
                    rows.addmm_(up, down, alpha=strength)
                else:  # channels_last conv weights: no flat view
                    weight.add_((up @ down).view(weight.shape), alpha=strength)
            if isinstance(target, Fp8Rows):
                target.store(weight)
        self._merged = set(plan)

    def _keep_bases(self, targets: dict[tuple[str, str], Target]) -> None:
        """Copy W0 of layers touched for the first time: beside the weights when the device has room."""
        new = {key: w for key, w in targets.items() if key not in self._base}
        if not new:
            return
        device = next(iter(new.values())).device
        keep_on = device
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if sum(_nbytes(w) for w in new.values()) + HOST_MARGIN > free:
                keep_on = torch.device("cpu")
                log.info("LoRA merge: keeping %d base weights in pinned host memory (GPU memory is short)", len(new))
        for key, weight in new.items():
            copy = weight.clone_to(keep_on) if isinstance(weight, Fp8Rows) else weight.detach().to(keep_on, copy=True)
            self._base[key] = copy.pin_memory() if keep_on.type == "cpu" and device.type == "cuda" else copy

    def read_ahead(self, items: Sequence[tuple[Path, str]]) -> int:
        """Read LoRA files into the cache before their first switch (LoraCache.read_ahead)."""
        return self._cache.read_ahead(items)

    def _factors(self, path: Path, name: str) -> LoraFactors:
        return self._cache.get(path, name)


def _nbytes(target: Target) -> int:
    return target.nbytes() if isinstance(target, Fp8Rows) else target.numel() * target.element_size()
