"""LoRA hotswap: one adapter slot per pipeline component whose weights are replaced in place, so a compiled
denoiser never recompiles when the designer switches brand LoRAs or changes a LoRA's weight.

Performance mode (acceleration.FastPathOptions.lora_hotswap) builds the denoiser's slot at model load, on the
layers the family's trainer targets (brandgen.training.families) at `hotswap_rank`, before the compile warm-up,
so the compiled graphs already contain the (zeroed) LoRA layers. Any LoRA file the app reads (diffusers, peft or
kohya keys: brandgen.loras.read_lora_factors) is normalised to (A, B) factors with its alpha folded into B,
padded with zeros to the slot's rank and copied in; its strength is a tensor peft multiplies by, so changing it
is a fill, not a recompile. A LoRA on layers outside the slot, or of a higher rank, rebuilds the slot to hold it
(one recompile, said in the Generate tab's status); text-encoder parts go into uncompiled slots of their own.

The slot is the opt-in style (BRANDGEN_LORA_HOTSWAP=slot): its extra matmuls on every step made SDXL slower than
plain fused weights on an H100, so performance mode merges LoRAs into the weights by default (lora_fuse.py). The
slot remains for fp8: it can wrap quantized base layers, which a merge cannot change.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from brandgen.errors import InvalidInput, LoraError
from brandgen.loras import LoraFactors, read_lora_factors

if TYPE_CHECKING:
    from brandgen.acceleration import FastPathOptions

log = logging.getLogger(__name__)

HOTSWAP_ADAPTER = "brandgen_hotswap"
CACHED_LORAS = 16  # normalised LoRAs kept on the host, so switching to a recent or read-ahead one skips the file
CACHE_BYTES = 6 * 2**30  # ... and at most this much host memory (and an eighth of the machine's), pinned on a GPU


def cache_bytes() -> int:
    """The LoRA cache's host-memory budget: CACHE_BYTES, or an eighth of physical memory when that is less
    (a rank-32 FLUX LoRA on the trainer's 342 default layers is 0.17 GiB in bf16)."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return CACHE_BYTES
    return min(CACHE_BYTES, physical // 8)


def slot_modules(model: torch.nn.Module, targets: tuple[str, ...]) -> set[str]:
    """Names of the Linear layers of `model` that peft's `target_modules=targets` would wrap."""
    return {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)
            and any(name == t or name.endswith("." + t) for t in targets)}


class AdapterSlot:
    """peft LoRA layers on a fixed set of layers of one model at a fixed rank, with tensor strengths."""

    def __init__(self, model: torch.nn.Module, modules: set[str], rank: int):
        self.model, self.modules, self.rank = model, set(modules), rank
        self.layers: dict[str, Any] = {}
        if modules:
            self._build()

    def _build(self) -> None:
        from diffusers.models.modeling_utils import ModelMixin
        from peft import LoraConfig, inject_adapter_in_model

        config = LoraConfig(r=self.rank, lora_alpha=self.rank, target_modules=sorted(self.modules),
                            init_lora_weights=False)
        if isinstance(self.model, ModelMixin):  # diffusers' bookkeeping, so get_list_adapters() shows the slot
            self.model.add_adapter(config, adapter_name=HOTSWAP_ADAPTER)
        else:  # text encoders: peft directly (transformers' add_adapter wants a newer peft than diffusers does)
            inject_adapter_in_model(config, self.model, adapter_name=HOTSWAP_ADAPTER)
        self.layers = {name: self.model.get_submodule(name) for name in self.modules}
        for layer in self.layers.values():  # peft multiplies by the tensor: a new strength is a fill, not a guard
            device = layer.lora_A[HOTSWAP_ADAPTER].weight.device
            layer.scaling[HOTSWAP_ADAPTER] = torch.zeros((), device=device)
        self.clear()

    def remove(self) -> None:
        """Take the LoRA layers out again (the base layers return unchanged)."""
        from diffusers.utils import recurse_remove_peft_layers

        if self.layers:
            recurse_remove_peft_layers(self.model)
            if hasattr(self.model, "peft_config"):
                del self.model.peft_config
            self.model._hf_peft_config_loaded = False
        self.layers, self.modules = {}, set()

    def misfit(self, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> str:
        """Why `factors` cannot be copied into this slot ('' when they can)."""
        outside = sorted(set(factors) - self.modules)
        if outside:
            return (f"trains {len(outside)} layer(s) outside the LoRA slot (e.g. {outside[0]})")
        rank = max(a.shape[0] for a, _ in factors.values()) if factors else 0
        if rank > self.rank:
            return f"has rank {rank}, above the slot's rank {self.rank}"
        return ""

    @torch.no_grad()
    def clear(self) -> None:
        for layer in self.layers.values():
            layer.lora_A[HOTSWAP_ADAPTER].weight.zero_()
            layer.lora_B[HOTSWAP_ADAPTER].weight.zero_()

    @torch.no_grad()
    def load(self, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Copy the factors in, zero-padded to the slot's rank; layers the LoRA does not train get zeros.

        Two multi-tensor calls instead of four ops per layer: SDXL's slot has 722 layers, and per-layer copies
        cost ~80 ms of every switch on an H100."""
        params, targets, sources = [], [], []
        for name, layer in self.layers.items():
            a_param, b_param = layer.lora_A[HOTSWAP_ADAPTER].weight, layer.lora_B[HOTSWAP_ADAPTER].weight
            params += [a_param, b_param]
            if name in factors:
                down, up = factors[name]
                rank = down.shape[0]
                targets += [a_param[:rank], b_param[:, :rank]]
                sources += [down.reshape(a_param[:rank].shape), up.reshape(b_param[:, :rank].shape)]
        if params:
            torch._foreach_zero_(params)
        if targets:
            torch._foreach_copy_(targets, sources, non_blocking=True)

    def set_strength(self, weight: float) -> None:
        for layer in self.layers.values():
            layer.scaling[HOTSWAP_ADAPTER].fill_(weight)


class LoraHotswapper:
    """The pipeline's LoRA slots: one LoRA at a time, switched by copying weights, never by new modules."""

    def __init__(self, pipe: Any, target_rank: int, targets: tuple[str, ...] = ()):
        self.pipe, self.target_rank, self.targets = pipe, target_rank, tuple(targets)
        self.denoiser = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
        self.slots: dict[str, AdapterSlot] = {}
        self.path: Path | None = None
        self._cache = LoraCache(pipe, getattr(pipe, self.denoiser))

    def read_ahead(self, items: Sequence[tuple[Path, str]]) -> int:
        return self._cache.read_ahead(items)

    def prepare(self) -> int:
        """Build the denoiser's slot on the family's default LoRA layers; returns how many layers it holds.

        Called at model load, before the compile warm-up, so the first LoRA does not change the graph."""
        model = getattr(self.pipe, self.denoiser)
        self.slots[self.denoiser] = AdapterSlot(model, slot_modules(model, self.targets), self.target_rank)
        return len(self.slots[self.denoiser].modules)

    def activate(self, path: Path | None, weight: float = 1.0, name: str = "") -> str:
        """Make the LoRA at `path` the one in the slots at `weight`; None turns them off (strength 0).

        Returns a note for the user when the LoRA could not be swapped in place (the slot was rebuilt)."""
        note = ""
        if path is None:
            self._strength(0.0)
            return note
        if self.path != Path(path):
            try:
                note = self._load(self._cache.get(Path(path), name or Path(path).stem))
            except Exception:
                self.reset()  # no half-copied LoRA left in the slots
                raise
            self.path = Path(path)
        self._strength(weight)
        return note

    def set(self, loras: list[tuple[Path, float, str]]) -> str:
        """LoraFuser's call: at most one LoRA (file, weight, name) for a slot."""
        if len(loras) > 1:
            raise InvalidInput("With the LoRA slot (BRANDGEN_LORA_HOTSWAP=slot) use one LoRA at a time; the default "
                               "merge hotswap takes several.")
        return self.activate(*loras[0]) if loras else self.activate(None)

    def reset(self) -> None:
        """Empty the slots (zeros, strength 0); the layers stay, so nothing recompiles."""
        for slot in self.slots.values():
            slot.clear()
        self._strength(0.0)
        self.path = None

    @property
    def holds_loras(self) -> bool:
        """Whether the slots hold a LoRA (after a failed load they are emptied)."""
        return self.path is not None

    def _load(self, lora: LoraFactors) -> str:
        note = ""
        for component in {self.denoiser, *self.slots, *lora.factors}:
            factors = lora.factors.get(component, {})
            slot = self.slots.get(component)
            model = getattr(self.pipe, component, None)
            if model is None:
                raise LoraError(f"LoRA {lora.name!r} targets {component}, which this pipeline does not have.")
            if slot is None or slot.misfit(factors):
                reason = slot.misfit(factors) if slot is not None else ""
                modules = (slot.modules if slot is not None else set()) | set(factors)
                rank = max([self.target_rank if component == self.denoiser else 1, lora.rank,
                            slot.rank if slot is not None else 0])
                if slot is not None:
                    slot.remove()
                if not modules:
                    self.slots.pop(component, None)
                    continue
                self.slots[component] = slot = AdapterSlot(model, modules, rank)
                if component == self.denoiser and reason:
                    note = (f"LoRA {lora.name!r} {reason}, so the LoRA slot was rebuilt to hold it (now {rank} rank "
                            f"on {len(modules)} layers): this image recompiles the model once; switching between "
                            "LoRAs that fit the slot stays instant.")
                    log.warning(note)
            slot.load(factors)
        return note

    def _strength(self, weight: float) -> None:
        for slot in self.slots.values():
            slot.set_strength(weight)


@dataclass
class PackedLora:
    """A read LoRA as one flat host buffer (pinned when bound for a GPU) and where each factor lies in it."""

    name: str
    flat: torch.Tensor | None
    layout: list[tuple[str, str, torch.Size, torch.Size]]  # component, module, A's shape, B's shape

    @classmethod
    def of(cls, lora: LoraFactors, dtype: torch.dtype, device: torch.device | None) -> PackedLora:
        pairs = [(c, m, a, b) for c, layers in lora.factors.items() for m, (a, b) in layers.items()]
        flat = torch.cat([t.to(dtype).reshape(-1) for *_, a, b in pairs for t in (a, b)]) if pairs else None
        if flat is not None and device is not None and device.type == "cuda":
            flat = flat.pin_memory()
        return cls(lora.name, flat, [(c, m, a.shape, b.shape) for c, m, a, b in pairs])

    def nbytes(self) -> int:
        return 0 if self.flat is None else self.flat.numel() * self.flat.element_size()

    def to(self, device: torch.device | None) -> LoraFactors:
        """The factors as views into one copy of the buffer on `device`."""
        flat = self.flat.to(device, non_blocking=True) if self.flat is not None and device is not None else self.flat
        factors: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        offset = 0
        for component, module, a_shape, b_shape in self.layout:
            a_size, b_size = a_shape.numel(), b_shape.numel()
            middle = offset + a_size
            factors.setdefault(component, {})[module] = (
                flat[offset:middle].view(a_shape), flat[middle:middle + b_size].view(b_shape))
            offset = middle + b_size
        return LoraFactors(self.name, factors)


class LoraCache:
    """Read LoRAs of one pipeline, the CACHED_LORAS most recent kept on the host as PackedLora (one flat buffer,
    pinned for a GPU), so switching back skips the file read and a switch is one copy to the model's device."""

    def __init__(self, pipe: Any, model: torch.nn.Module, max_bytes: int | None = None):
        self.pipe, self.model = pipe, model
        self.max_bytes = cache_bytes() if max_bytes is None else max_bytes
        self._packed: OrderedDict[tuple[str, float, int], PackedLora] = OrderedDict()
        self._lock = threading.Lock()  # the read-ahead thread fills the cache while switches read it

    def get(self, path: Path, name: str) -> LoraFactors:
        """The LoRA's factors on the model's device, in its dtype; a changed file (mtime, size) is read again."""
        return self._packed_for(path, name, recent=True).to(getattr(self.model, "device", None))

    def read_ahead(self, items: Sequence[tuple[Path, str]]) -> int:
        """Read LoRAs into the free places of the cache (never evicting one; up to CACHED_LORAS and the memory
        budget), so a first switch to them costs what a switch back costs (SDXL on an H100: 61-64 ms vs 177-246 ms
        with the file read). A file that cannot be read is left for its switch to report. Returns how many were
        read."""
        read = 0
        for path, name in items:
            if len(self._packed) >= CACHED_LORAS:
                break
            try:
                if self._packed_for(Path(path), name, recent=False) is None:
                    break  # the memory budget is full
                read += 1
            except Exception as exc:  # noqa: BLE001 - the switch that uses it raises the real error
                log.info("LoRA read-ahead skipped %s: %s", path, exc)
        return read

    def nbytes(self) -> int:
        return sum(p.nbytes() for p in self._packed.values())

    def _packed_for(self, path: Path, name: str, recent: bool) -> PackedLora | None:
        """The cached LoRA, read if needed; a read-ahead (not `recent`) that would pass the budget returns None,
        and one that finds the budget already full returns None without reading the file. Files are read outside
        the lock, so a designer's switch never waits for a read-ahead's file (nor the reverse)."""
        stat = os.stat(path)
        key = (str(path), stat.st_mtime, stat.st_size)
        dtype, device = getattr(self.model, "dtype", torch.float32), getattr(self.model, "device", None)
        with self._lock:
            packed = self._packed.get(key)
            if packed is None and not recent and self.nbytes() >= self.max_bytes:
                return None
        if packed is None:
            packed = PackedLora.of(read_lora_factors(self.pipe, path, name), dtype, device)
        with self._lock:
            if key not in self._packed:  # (another thread may have read it meanwhile: keep that one)
                if not recent and self.nbytes() + packed.nbytes() > self.max_bytes:
                    return None
                self._packed[key] = packed
                if not recent:  # read ahead: the least recent place, so it never pushes out a LoRA in use
                    self._packed.move_to_end(key, last=False)
            if recent:
                self._packed.move_to_end(key)
            packed = self._packed[key]
            while len(self._packed) > 1 and (len(self._packed) > CACHED_LORAS or self.nbytes() > self.max_bytes):
                self._packed.popitem(last=False)  # the least recent; the newest always stays
            return packed


def read_ahead_in_background(switcher: Any, library: Any, family: str) -> threading.Thread:
    """Start reading the library's LoRAs for this model family (most recently changed first) into the switcher's
    cache: performance mode calls it after a model load, so the designer's first switch to a LoRA skips the read."""
    def run() -> None:
        try:
            infos = [i for i in library.scan() if i.fits(family)]
            infos.sort(key=lambda i: i.path.stat().st_mtime, reverse=True)
            switcher.read_ahead([(i.path, i.name) for i in infos])
        except Exception as exc:  # noqa: BLE001 - a convenience: a switch reads what this did not
            log.info("LoRA read-ahead stopped: %s", exc)

    thread = threading.Thread(target=run, name="lora-read-ahead", daemon=True)
    thread.start()
    return thread


def hotswapper_for(pipe: Any, options: FastPathOptions | None, targets: tuple[str, ...] = ()) -> Any:
    """Performance mode's LoRA switcher: merged into the weights (LoraFuser, the default) or a peft slot."""
    if options is None or not options.lora_hotswap or not hasattr(pipe, "load_lora_weights"):
        return None
    if options.hotswap_style == "merge":
        from brandgen.lora_fuse import LoraFuser

        return LoraFuser(pipe)
    return LoraHotswapper(pipe, options.hotswap_rank, targets)
