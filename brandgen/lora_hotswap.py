"""LoRA hotswap: one adapter slot whose weights are replaced in place, so a compiled denoiser never recompiles.

Performance mode (acceleration.FastPathOptions.lora_hotswap) prepares the pipeline with `enable_lora_hotswap`;
PipelineManager owns the slot and switches brand LoRAs through it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from brandgen.errors import LoraError

if TYPE_CHECKING:
    from brandgen.acceleration import FastPathOptions

log = logging.getLogger(__name__)

HOTSWAP_ADAPTER = "brandgen_hotswap"


class LoraHotswapper:
    """One LoRA slot whose weights are replaced in place, so a compiled denoiser never recompiles.

    The user's LoRA strength is written into peft's scaling tensors; `set_adapters` would replace them with
    Python floats, which torch.compile guards on (one recompile per new weight). One LoRA at a time.
    """

    def __init__(self, pipe: Any, target_rank: int):
        self.pipe = pipe
        self.target_rank = target_rank
        self.path: Path | None = None
        self._base: dict[torch.nn.Module, float] = {}

    def activate(self, path: Path | None, weight: float = 1.0, name: str = "") -> None:
        """Make the LoRA at `path` the one in the slot at `weight`; None turns the slot off (scale 0)."""
        if path is None:
            self._scale(0.0)
            return
        if self.path != Path(path):
            self._load(Path(path), name or Path(path).stem)
        self._scale(weight)

    def reset(self) -> None:
        """Empty the slot and get ready for a fresh first load."""
        try:
            loaded = any(names for names in self.pipe.get_list_adapters().values())
        except Exception:  # no peft layers at all
            loaded = False
        if loaded:
            self.pipe.unload_lora_weights()
        self.path, self._base = None, {}
        self.pipe.enable_lora_hotswap(target_rank=self.target_rank, check_compiled="ignore")

    def _load(self, path: Path, name: str) -> None:
        try:
            self.pipe.load_lora_weights(str(path), adapter_name=HOTSWAP_ADAPTER, hotswap=self.path is not None)
        except Exception as exc:
            if self.path is None:
                self.reset()
                raise LoraError(f"LoRA {name!r} does not fit this model: {str(exc)[:300]}") from exc
            # other layers or a higher rank than the slot holds: reload fresh, at the cost of one recompile
            log.warning("LoRA %s cannot be hotswapped (%s); reloading it (one recompile).", name, exc)
            self.reset()
            try:
                self.pipe.load_lora_weights(str(path), adapter_name=HOTSWAP_ADAPTER)
            except Exception as exc2:
                self.reset()
                raise LoraError(f"LoRA {name!r} does not fit this model: {str(exc2)[:300]}") from exc2
        from peft.tuners.lora import LoraLayer

        modules = [m for c in self.pipe.components.values() if isinstance(c, torch.nn.Module)
                   for m in c.modules() if isinstance(m, LoraLayer) and HOTSWAP_ADAPTER in m.scaling]
        self.path = path
        self._base = {m: float(m.scaling[HOTSWAP_ADAPTER]) for m in modules}
        if not self._base:
            self.reset()
            raise LoraError(f"LoRA {name!r} matched no layer of this model: it was made for another model.")

    def _scale(self, weight: float) -> None:
        for module, base in self._base.items():
            scaling = module.scaling[HOTSWAP_ADAPTER]
            if torch.is_tensor(scaling):
                scaling.fill_(base * weight)
            else:
                module.scaling[HOTSWAP_ADAPTER] = base * weight


def hotswapper_for(pipe: Any, options: FastPathOptions | None) -> LoraHotswapper | None:
    if options is None or not options.lora_hotswap or not hasattr(pipe, "load_lora_weights"):
        return None
    return LoraHotswapper(pipe, options.hotswap_rank)
