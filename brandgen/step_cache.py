"""Step caching for the Fast preset: most denoising steps reuse what the deep, expensive part of the denoiser
computed on the last full step, and recompute only its cheap shallow part.

- UNets (SD1.5, SDXL, the embedded model): DeepCache (Ma et al., 2023). On a cached step only conv_in, the first
  down block, the last up block and conv_out run; the last up block gets the fresh shallow skip features and the
  feature map the penultimate up block produced on the last full step.
- DiTs (FLUX, SD3): the first-block residual of diffusers' FirstBlockCache, but on a fixed schedule. On a cached
  step only the first transformer block runs; the output of the whole stack is that block's fresh output plus the
  residual (stack output - first block output) of the last full step.

A UNet compiled whole (performance mode's default for UNets) is cached too: forward hooks installed before its
compilation (`tap_whole_unet`) hand out, from inside the compiled graph, what a cached step reuses; on a Fast call
full steps run the compiled graph unchanged and cached steps run the few shallow blocks eagerly.

Full steps follow a fixed schedule (every `interval`-th step from step 0), not a similarity threshold, so the
speed-up is the same for every prompt and for random benchmark weights, and the cost is a measured image
difference (docs/PERFORMANCE.md). Everything is installed for one pipeline call and removed after it: block lists
are swapped for lists with the same children (parameter names, LoRA slots and compiled blocks are untouched) and
the compiled blocks are called exactly as usual, so regional compilation sees no new shapes and never recompiles.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

DIT_STACKS = {  # denoiser class -> its block lists, in the order the forward pass runs them
    "FluxTransformer2DModel": ("transformer_blocks", "single_transformer_blocks"),
    "SD3Transformer2DModel": ("transformer_blocks",),
}


class StepCacheUnsupported(Exception):
    """This denoiser cannot be step-cached; the message says why (shown to the user as a note)."""


@dataclass
class CacheStats:
    """What one call did: steps computed in full and steps served from the cache."""

    interval: int
    full: int = 0
    cached: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"interval": self.interval, "full_steps": self.full, "cached_steps": self.cached}


class _Yielding(torch.nn.ModuleList):
    """A ModuleList with the same children whose iteration the cache decides; nothing else changes."""

    def __init__(self, original: torch.nn.ModuleList, choose: Callable[[list[Any]], list[Any]]):
        super().__init__(list(original))
        self._choose = choose

    def __iter__(self) -> Iterator[Any]:
        return iter(self._choose(list(self._modules.values())))


class _Proxy:
    """Stands in for a skipped UNet block: the attributes the UNet's forward reads, and a cached output."""

    def __init__(self, block: torch.nn.Module, output: Callable[[], Any]):
        self.resnets = getattr(block, "resnets", ())
        self.has_cross_attention = getattr(block, "has_cross_attention", False)
        self._output = output

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        return _rows(self._output(), hidden.shape[0] if isinstance(hidden, torch.Tensor) else None)


def _rows(value: Any, batch: int | None) -> Any:
    """A cached output cut to the current batch: once guidance stops mid-call (a model's guidance_until), cached
    steps run the conditional half of the batch that filled the cache, its trailing rows in diffusers' [negative,
    positive] order (pipeline_call.stop_guidance_after keeps the same half)."""
    if isinstance(value, torch.Tensor):
        return value[-batch:] if batch and value.shape[0] > batch else value
    if isinstance(value, (tuple, list)):
        return type(value)(_rows(v, batch) for v in value)
    return value


def _clone(value: Any) -> Any:
    """Own copy of a block output: CUDA-graph outputs are overwritten by the next replay."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_clone(v) for v in value)
    return value


class _Schedule:
    def __init__(self, interval: int):
        self.stats = CacheStats(interval)
        self.index = -1
        self.filled = False  # a full step of this call has filled the cache

    def advance(self, *_: Any) -> None:
        self.index += 1
        if self.full:
            self.stats.full += 1
        else:
            self.stats.cached += 1

    @property
    def full(self) -> bool:
        return not self.filled or self.index % self.stats.interval == 0


def _unet_plan(unet: torch.nn.Module, schedule: _Schedule, store: dict[str, Any]) -> list[tuple[str, Any]]:
    """Replacement attributes for DeepCache on a UNet2DConditionModel."""
    if len(unet.down_blocks) < 2 or len(unet.up_blocks) < 2:
        raise StepCacheUnsupported("the UNet has fewer than two down/up blocks: nothing deep to cache")

    def record(block: Any, key: str, keep: bool) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            out = block(*args, **kwargs)
            store[key] = _clone(out) if keep else out  # down-block outputs are only placeholders later
            if keep:
                schedule.filled = True
            return out
        run.resnets, run.has_cross_attention = (getattr(block, "resnets", ()),  # type: ignore[attr-defined]
                                                getattr(block, "has_cross_attention", False))
        return run

    def down(blocks: list[Any]) -> list[Any]:
        if schedule.full:
            return [blocks[0]] + [record(b, f"down{i}", False) for i, b in enumerate(blocks) if i]
        return [blocks[0]] + [_Proxy(b, lambda i=i: store[f"down{i}"]) for i, b in enumerate(blocks) if i]

    def up(blocks: list[Any]) -> list[Any]:
        if schedule.full:
            return blocks[:-2] + [record(blocks[-2], "deep", True), blocks[-1]]
        return [_Proxy(b, lambda: store["deep"]) for b in blocks[:-1]] + [blocks[-1]]

    return [("down_blocks", _Yielding(unet.down_blocks, down)), ("up_blocks", _Yielding(unet.up_blocks, up))]


def _dit_plan(model: torch.nn.Module, names: tuple[str, ...], schedule: _Schedule,
              store: dict[str, Any]) -> list[tuple[str, Any]]:
    """Replacement block lists for the first-block residual cache on a DiT (blocks return (encoder, hidden))."""
    lists = [getattr(model, name) for name in names]
    if sum(len(blocks) for blocks in lists) < 2:
        raise StepCacheUnsupported("the transformer has a single block: nothing to cache")

    def first(block: Any) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            out = block(*args, **kwargs)
            store["first"] = _clone(out)
            return out
        return run

    def last(block: Any) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            out = block(*args, **kwargs)
            store["residual"] = tuple(None if o is None else o - f for o, f in zip(out, store["first"]))
            schedule.filled = True
            return out
        return run

    def add_residual(*_: Any, **__: Any) -> Any:
        return tuple(None if r is None else f + r for f, r in zip(store["first"], store["residual"]))

    def choose(position: int) -> Callable[[list[Any]], list[Any]]:
        is_first, is_last = position == 0, position == len(lists) - 1

        def pick(blocks: list[Any]) -> list[Any]:
            if schedule.full:
                chosen = list(blocks)
                if is_first:
                    chosen[0] = first(chosen[0])
                if is_last:
                    chosen[-1] = last(chosen[-1])
                return chosen
            chosen = [first(blocks[0])] if is_first else []
            return chosen + ([add_residual] if is_last else [])
        return pick

    if not len(lists[0]) or not len(lists[-1]):
        raise StepCacheUnsupported(f"{type(model).__name__} has an empty block list")
    return [(name, _Yielding(blocks, choose(i))) for i, (name, blocks) in enumerate(zip(names, lists))]


TAPS = "_brandgen_step_taps"  # attribute of a whole-compiled UNet: what its taps saw in the last step


def tap_whole_unet(unet: torch.nn.Module) -> bool:
    """Before a UNet is compiled whole: forward hooks that keep the deep down blocks' outputs and the penultimate
    up block's, which a cached step reuses. Dynamo traces them into the graph as extra outputs, so the Fast preset
    needs no second graph and nothing recompiles. Returns whether the taps were installed."""
    if (type(unet).__name__ != "UNet2DConditionModel" or len(unet.down_blocks) < 2 or len(unet.up_blocks) < 2
            or TAPS in unet.__dict__):
        return False
    keys = [f"down{i}" for i in range(1, len(unet.down_blocks))] + ["deep"]
    taps: dict[str, Any] = dict.fromkeys(keys)  # fixed keys: dynamo guards on the dict's keys, not on values

    def keep(key: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            taps[key] = output
        return hook

    for i, block in enumerate(unet.down_blocks):
        if i:
            block.register_forward_hook(keep(f"down{i}"))
    unet.up_blocks[-2].register_forward_hook(keep("deep"))
    unet.__dict__[TAPS] = taps
    return True


def release_taps(denoiser: torch.nn.Module | None) -> None:
    """Drop what a whole-compiled UNet's taps hold (activations of the last step), keeping the keys."""
    taps = getattr(denoiser, "__dict__", {}).get(TAPS)
    if taps is not None:
        taps.update(dict.fromkeys(taps))


def _whole(denoiser: torch.nn.Module) -> bool:
    return getattr(denoiser, "_compiled_call_impl", None) is not None


def check_supported(denoiser: torch.nn.Module | None) -> str | None:
    """None when the Fast preset can cache this denoiser, else the reason it cannot."""
    if denoiser is None:
        return "the pipeline has no unet or transformer"
    if _whole(denoiser) and TAPS not in denoiser.__dict__:
        return "the whole denoiser is compiled as one graph (use regional compilation)"
    name = type(denoiser).__name__
    if name != "UNet2DConditionModel" and name not in DIT_STACKS:
        return f"{name} has no step cache yet (UNet, FLUX and SD3 denoisers do)"
    return None


@contextlib.contextmanager
def step_cache(denoiser: torch.nn.Module, interval: int) -> Iterator[CacheStats]:
    """Cache steps of the denoising loop run inside the block: a full step every `interval` steps (from step 0).

    One call at a time (the manager holds its lock); raises StepCacheUnsupported with the reason."""
    reason = check_supported(denoiser)
    if reason:
        raise StepCacheUnsupported(reason)
    if interval < 2:
        raise StepCacheUnsupported(f"interval {interval}: every step would be computed")
    schedule, store = _Schedule(interval), {}
    name = type(denoiser).__name__
    if _whole(denoiser):
        with _whole_unet_cache(denoiser, schedule, store):
            yield schedule.stats
        return
    plan = (_unet_plan(denoiser, schedule, store) if name == "UNet2DConditionModel"
            else _dit_plan(denoiser, DIT_STACKS[name], schedule, store))
    originals = [(attr, getattr(denoiser, attr)) for attr, _ in plan]
    mid = getattr(denoiser, "mid_block", None)

    def before(module: torch.nn.Module, args: Any) -> None:
        schedule.advance()
        if mid is not None:  # a UNet's middle block is skipped by being absent on cached steps
            module._modules["mid_block"] = mid if schedule.full else None

    handle = denoiser.register_forward_pre_hook(before)
    try:
        for attr, replacement in plan:
            denoiser._modules[attr] = replacement
        yield schedule.stats
    finally:
        handle.remove()
        for attr, original in originals:
            denoiser._modules[attr] = original
        if mid is not None:
            denoiser._modules["mid_block"] = mid
        store.clear()


@contextlib.contextmanager
def _whole_unet_cache(unet: torch.nn.Module, schedule: _Schedule, store: dict[str, Any]) -> Iterator[None]:
    """DeepCache on a UNet compiled whole: the compiled call is wrapped for this pipeline call only. A full step
    runs the graph as compiled and keeps what its taps saw; a cached step runs the UNet's eager forward with the
    deep blocks standing in (the same plan as regional compilation uses), so only shallow blocks compute."""
    compiled, taps, mid = unet._compiled_call_impl, unet.__dict__[TAPS], unet.mid_block
    plan = _unet_plan(unet, schedule, store)
    originals = [(attr, unet._modules[attr]) for attr, _ in plan]

    def call(*args: Any, **kwargs: Any) -> Any:
        schedule.advance()
        if schedule.full:
            out = compiled(*args, **kwargs)
            store.update({key: _clone(value) if key == "deep" else value for key, value in taps.items()
                          if value is not None})
            schedule.filled = True
            return out
        for attr, replacement in plan:
            unet._modules[attr] = replacement
        unet._modules["mid_block"] = None
        try:
            return unet._call_impl(*args, **kwargs)
        finally:
            for attr, original in originals:
                unet._modules[attr] = original
            unet._modules["mid_block"] = mid

    unet._compiled_call_impl = call
    try:
        yield
    finally:
        unet._compiled_call_impl = compiled
        store.clear()


@contextlib.contextmanager
def for_preset(pipe: Any, interval: int, notes: list[str]) -> Iterator[CacheStats | None]:
    """The manager's entry point: step caching for a preset that asks for it, else nothing. A model that cannot
    be cached runs every step, and `notes` tells the user why the Fast preset was not faster."""
    from brandgen.acceleration import find_denoiser

    denoiser = find_denoiser(pipe)[1]
    try:
        if interval < 2:
            yield None
            return
        reason = check_supported(denoiser)
        if reason or denoiser is None:
            notes.append(f"Step caching is off for this model ({reason}): every step was computed in full.")
            yield None
            return
        with step_cache(denoiser, interval) as stats:
            yield stats
    finally:
        release_taps(denoiser)  # no activations kept between calls
