"""Plain-mode LoRA switching: each LoRA a peft adapter on the pipeline, loaded by diffusers from factors read in
any key format, and a single active LoRA fused for full speed. Performance mode merges LoRAs into the weights
instead (brandgen.lora_fuse). PipelineManager holds the lock and passes its loaded-model state (`loaded`: pipe,
entry, loras, active, fused, hotswap), which these functions change."""

from __future__ import annotations

import logging
from typing import Any

from brandgen.acceleration import prepare_for_lora
from brandgen.device import free_memory_after, is_out_of_memory
from brandgen.errors import LoraError, OutOfMemory
from brandgen.loras import LoraInfo, LoraLibrary, read_lora_factors

log = logging.getLogger(__name__)


def ensure_adapter(loaded: Any, library: LoraLibrary, name: str) -> LoraInfo:
    """The library's LoRA `name`, checked against the loaded model's family and, in plain mode, loaded as an
    adapter (once); a LoRA that fails to load leaves the pipeline as it was, with a message saying why."""
    info = library.get(name)
    if info.adapter_name in loaded.loras:
        return info
    if not info.fits(loaded.entry.family):
        raise LoraError(f"LoRA {name!r} was trained for {info.base_family} models; {loaded.entry.label} is "
                        f"{loaded.entry.family}.")
    if loaded.hotswap is not None:
        return info  # the manager's set_loras hands it to the merge (or the slot)
    pipe = loaded.pipe
    prepare_for_lora(pipe)
    factors = read_lora_factors(pipe, info.path, name, loaded.entry.label)  # any key format, one layout
    try:
        pipe.load_lora_weights(factors.peft_state_dict(), adapter_name=info.adapter_name)
    except Exception as exc:
        drop_adapter(pipe, info.adapter_name)
        if is_out_of_memory(exc):  # not the file's fault: say so, and free what the failed load held
            free_memory_after(exc)
            raise OutOfMemory(f"Not enough accelerator memory to load LoRA {name!r}. Memory was freed; "
                              "choose memory mode 'model_offload' or use fewer LoRAs.") from exc
        raise LoraError(f"LoRA {name!r} does not fit {loaded.entry.label}: {str(exc)[:300]}") from exc
    adapters = {a for names in pipe.get_list_adapters().values() for a in names}
    if info.adapter_name not in adapters:
        raise LoraError(
            f"LoRA {name!r} matched no layer of {loaded.entry.label}: it was made for another model."
        )
    loaded.loras[info.adapter_name] = info
    return info


def brand_decoders(loaded: Any, infos: list[LoraInfo], wanted: tuple[tuple[str, float], ...]
                   ) -> list[tuple[str, Any, float]]:
    """(name, delta, weight) for each wanted LoRA that brings a brand decoder (brandgen.brand_decoder), read and
    checked against the model's autoencoder before anything is switched, so a bad file changes nothing."""
    vae = getattr(loaded.pipe, "vae", None)
    if vae is None:
        return []
    found = [(info.name, loaded.decoder.delta_for(info.path, vae, info.name, loaded.entry.label), weight)
             for info, (_, weight) in zip(infos, wanted)]
    return [item for item in found if item[1] is not None]


def set_brand_decoders(loaded: Any, decoders: list[tuple[str, Any, float]]) -> None:
    """The decoder as base + the active LoRAs' brand decoders at their weights ([]: the base decoder)."""
    if getattr(loaded.pipe, "vae", None) is not None:
        loaded.decoder.set(loaded.pipe.vae, decoders)


def switch(loaded: Any, infos: list[LoraInfo], wanted: tuple[tuple[str, float], ...], fuse_single: bool) -> None:
    """Make the loaded adapters `infos` active at the weights of `wanted` (none: LoRAs off); a single one is fused.
    On failure the pipeline falls back to no LoRA and the error propagates."""
    pipe = loaded.pipe
    try:
        if loaded.fused:
            pipe.unfuse_lora()
            loaded.fused = False
        if not wanted:
            if loaded.loras:
                pipe.disable_lora()
        else:
            pipe.enable_lora()
            pipe.set_adapters([info.adapter_name for info in infos], adapter_weights=[w for _, w in wanted])
            if len(wanted) == 1 and fuse_single:
                pipe.fuse_lora(adapter_names=[infos[0].adapter_name], lora_scale=1.0)
                loaded.fused = True
    except Exception:
        fall_back_to_base(loaded)
        raise
    loaded.active = wanted


def fall_back_to_base(loaded: Any) -> None:
    """After a failed switch, leave a known state (no LoRA active) instead of a stale `active`."""
    try:
        if loaded.fused:
            loaded.pipe.unfuse_lora()
        if loaded.loras:
            loaded.pipe.disable_lora()
    except Exception:  # noqa: BLE001 - best effort; the original error is what the user sees
        log.exception("could not switch LoRAs off after a failed switch")
    loaded.active, loaded.fused = (), False


def drop_adapter(pipe: Any, adapter_name: str) -> None:
    """Undo a half-loaded adapter so a failed load leaves the model as it was."""
    try:
        if any(adapter_name in names for names in pipe.get_list_adapters().values()):
            pipe.delete_adapters(adapter_name)
    except Exception:  # nothing was registered; the pipeline is unchanged
        pass
