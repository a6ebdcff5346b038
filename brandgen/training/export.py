"""Writing a trained LoRA: the diffusers/peft file, a kohya-style single file for A1111/ComfyUI, metadata,
an atomic move into loras/, and an optional upload to the Hugging Face Hub.

kohya naming per family (what each file can be loaded by is in docs/TRAINING.md):
- sd15: lora_unet_<diffusers module path> (what kohya-ss sd-scripts writes for SD 1.x);
- sdxl: lora_unet_<sgm path> (input_blocks/middle_block/output_blocks, as sd-scripts writes for SDXL);
- flux: lora_unet_double_blocks_N_img_attn_qkv ... (BFL names, q/k/v fused as sd-scripts does; the
  fused down weights are stacked and the up weights block-diagonal, alpha scaled by the fusion count);
- sd3, hidream: lora_transformer_<diffusers module path> (the OneTrainer/ComfyUI spelling).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from brandgen.errors import InvalidInput
from brandgen.loras import DIFFUSERS_FILE
from brandgen.training.families import PIPELINE_FAMILIES

PIPELINE_CLASSES = {family: class_name for class_name, family in PIPELINE_FAMILIES.items()}
KOHYA_BASE_VERSION = {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0", "sd3": "sd3", "flux": "flux1", "hidream": "hidream_i1"}
KOHYA_MODULE = {
    "sd15": "networks.lora",
    "sdxl": "networks.lora",
    "sd3": "networks.lora_sd3",
    "flux": "networks.lora_flux",
    "hidream": "networks.lora_hidream",
}


class KohyaUnsupported(Exception):
    """The trained layers have no kohya name for this family; only the diffusers file is written."""


@dataclass
class LoraExport:
    lora_dir: Path
    diffusers_file: Path
    kohya_file: Path | None
    kohya_note: str
    metadata: dict[str, str]


def brandgen_metadata(family: str, base_model: str, trigger: str, details: dict[str, Any]) -> dict[str, str]:
    """Header keys LoraLibrary reads (base family, trigger) plus the training facts as JSON."""
    details = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **details}
    return {
        "brandgen.base_family": family,
        "brandgen.base_model": base_model,
        "brandgen.trigger": trigger,
        "brandgen": json.dumps(details, sort_keys=True),
    }


def _add_header(path: Path, extra: dict[str, str]) -> None:
    """Merge keys into a safetensors header (diffusers' save_lora_weights takes no free-form metadata)."""
    with safe_open(str(path), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        metadata = dict(handle.metadata() or {})
    metadata.update(extra)
    save_file(tensors, str(path), metadata=metadata)


def write_diffusers_lora(
    out_dir: Path,
    family: str,
    denoiser: str,
    peft_state: dict[str, torch.Tensor],
    lora_config: dict[str, Any],
    metadata: dict[str, str],
) -> Path:
    """pytorch_lora_weights.safetensors via the family pipeline's own save_lora_weights (peft key layout)."""
    import diffusers

    pipeline_cls = getattr(diffusers, PIPELINE_CLASSES[family])
    kwargs = {f"{denoiser}_lora_layers": peft_state, f"{denoiser}_lora_adapter_metadata": lora_config}
    pipeline_cls.save_lora_weights(out_dir, weight_name=DIFFUSERS_FILE, safe_serialization=True, **kwargs)
    path = Path(out_dir) / DIFFUSERS_FILE
    _add_header(path, metadata)
    return path


def _group(peft_state: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    parts: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for key, value in peft_state.items():
        for tag in ("lora_A", "lora_B"):
            if f".{tag}." in key:
                parts[key.split(f".{tag}.")[0]][tag] = value
    return {m: (p["lora_A"], p["lora_B"]) for m, p in parts.items() if len(p) == 2}


_SGM_SIMPLE = {
    "conv_in": "input_blocks.0.0",
    "conv_out": "out.2",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}
_SGM_RESNET = {
    "conv1": "in_layers.2",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}


def sgm_module_name(module: str, unet: Any) -> str:
    """diffusers SDXL UNet path -> the original (sgm) path that kohya-ss uses for SDXL."""
    if module in _SGM_SIMPLE:
        return _SGM_SIMPLE[module]
    per_block = unet.config.layers_per_block
    if not isinstance(per_block, int):
        raise KohyaUnsupported("layers_per_block differs per block; no sgm names")
    p = module.split(".")
    kind = {"attentions": "1", "resnets": "0"}

    def tail(part: str, rest: list[str]) -> list[str]:
        return [_SGM_RESNET.get(rest[0], rest[0]), *rest[1:]] if part == "resnets" else rest

    if p[0] == "down_blocks" and p[2] in kind:
        index = int(p[1]) * (per_block + 1) + int(p[3]) + 1
        return ".".join(["input_blocks", str(index), kind[p[2]], *tail(p[2], p[4:])])
    if p[0] == "down_blocks" and p[2] == "downsamplers":
        return f"input_blocks.{(int(p[1]) + 1) * (per_block + 1)}.0.op"
    if p[0] == "up_blocks" and p[2] in kind:
        index = int(p[1]) * (per_block + 1) + int(p[3])
        return ".".join(["output_blocks", str(index), kind[p[2]], *tail(p[2], p[4:])])
    if p[0] == "up_blocks" and p[2] == "upsamplers":
        position = "2" if hasattr(unet.up_blocks[int(p[1])], "attentions") else "1"
        return f"output_blocks.{int(p[1]) * (per_block + 1) + per_block}.{position}.conv"
    if p[0] == "mid_block" and p[1] in kind:
        index = "1" if p[1] == "attentions" else ("0" if p[2] == "0" else "2")
        return ".".join(["middle_block", index, *tail(p[1], p[3:])])
    raise KohyaUnsupported(f"no sgm name for SDXL module {module}")


def _flux_kohya(groups: dict[str, tuple[torch.Tensor, torch.Tensor]], alpha: float, model: Any) -> dict[str, Any]:
    """FLUX in kohya-ss sd-scripts names, fusing q/k/v (and the single blocks' MLP input) like its linear1."""
    out: dict[str, Any] = {}
    used: set[str] = set()
    rank = next(iter(groups.values()))[0].shape[0]

    def fused(name: str, modules: list[str]) -> None:
        if not any(m in groups for m in modules):
            return
        downs, ups = [], []
        for m in modules:
            if m in groups:
                a, b = groups[m]
            else:  # an untrained part of a fused layer: a zero block keeps the layout kohya expects
                layer = model.get_submodule(m)
                a, b = torch.zeros(rank, layer.in_features), torch.zeros(layer.out_features, rank)
            downs.append(a.float())
            ups.append(b.float())
            used.add(m)
        out[name] = (torch.cat(downs), torch.block_diag(*ups), alpha * len(modules))

    def single(name: str, module: str) -> None:
        if module in groups:
            out[name] = (*groups[module], alpha)
            used.add(module)

    for i in range(len(model.transformer_blocks)):
        p, n = f"transformer_blocks.{i}", f"double_blocks_{i}"
        fused(f"{n}_img_attn_qkv", [f"{p}.attn.to_q", f"{p}.attn.to_k", f"{p}.attn.to_v"])
        fused(f"{n}_txt_attn_qkv", [f"{p}.attn.add_q_proj", f"{p}.attn.add_k_proj", f"{p}.attn.add_v_proj"])
        for tail, module in (
            ("img_attn_proj", "attn.to_out.0"),
            ("txt_attn_proj", "attn.to_add_out"),
            ("img_mlp_0", "ff.net.0.proj"),
            ("img_mlp_2", "ff.net.2"),
            ("txt_mlp_0", "ff_context.net.0.proj"),
            ("txt_mlp_2", "ff_context.net.2"),
            ("img_mod_lin", "norm1.linear"),
            ("txt_mod_lin", "norm1_context.linear"),
        ):
            single(f"{n}_{tail}", f"{p}.{module}")
    for i in range(len(model.single_transformer_blocks)):
        p, n = f"single_transformer_blocks.{i}", f"single_blocks_{i}"
        fused(f"{n}_linear1", [f"{p}.attn.to_q", f"{p}.attn.to_k", f"{p}.attn.to_v", f"{p}.proj_mlp"])
        single(f"{n}_linear2", f"{p}.proj_out")
        single(f"{n}_modulation_lin", f"{p}.norm.linear")
    missing = sorted(set(groups) - used)
    if missing:
        raise KohyaUnsupported(f"no kohya FLUX name for {missing[0]} (+{len(missing) - 1} more)")
    return {f"lora_unet_{k}": v for k, v in out.items()}


def kohya_state_dict(
    family: str, peft_state: dict[str, torch.Tensor], alpha: float, model: Any
) -> dict[str, torch.Tensor]:
    """lora_down/lora_up/alpha tensors under kohya names (see the module docstring)."""
    groups = _group(peft_state)
    if not groups:
        raise KohyaUnsupported("the state dict holds no LoRA pairs")
    if family == "flux":
        named = _flux_kohya(groups, alpha, model)
    elif family == "sd15":
        named = {"lora_unet_" + m.replace(".", "_"): (a, b, alpha) for m, (a, b) in groups.items()}
    elif family == "sdxl":
        named = {
            "lora_unet_" + sgm_module_name(m, model).replace(".", "_"): (a, b, alpha) for m, (a, b) in groups.items()
        }
    else:
        named = {"lora_transformer_" + m.replace(".", "_"): (a, b, alpha) for m, (a, b) in groups.items()}
    tensors = {}
    for name, (down, up, a) in named.items():
        tensors[f"{name}.lora_down.weight"] = down.detach().cpu().contiguous()
        tensors[f"{name}.lora_up.weight"] = up.detach().cpu().contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(float(a))
    return tensors


def write_kohya_lora(
    out_dir: Path,
    name: str,
    family: str,
    peft_state: dict[str, torch.Tensor],
    rank: int,
    alpha: float,
    model: Any,
    metadata: dict[str, str],
    details: dict[str, Any],
) -> tuple[Path | None, str]:
    """<name>.safetensors in kohya layout with ss_* keys; returns (None, reason) when the family cannot be mapped."""
    try:
        tensors = kohya_state_dict(family, peft_state, alpha, model)
    except KohyaUnsupported as exc:
        return None, f"kohya file not written: {exc}"
    ss = {
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(float(alpha)),
        "ss_network_module": KOHYA_MODULE[family],
        "ss_base_model_version": KOHYA_BASE_VERSION[family],
        "ss_output_name": name,
        "ss_steps": str(details.get("steps", "")),
        "ss_resolution": str(details.get("resolution", "")),
        "ss_training_comment": "trained with BrandGen",
        "ss_v2": "False",
    }
    path = Path(out_dir) / f"{name}.safetensors"
    save_file(tensors, str(path), metadata={**metadata, **ss})
    return path, f"kohya file: {path.name} ({KOHYA_BASE_VERSION[family]} naming)"


def model_card(name: str, family: str, base_model: str, trigger: str, details: dict[str, Any]) -> str:
    return (
        f"---\nlibrary_name: diffusers\nbase_model: {base_model}\ninstance_prompt: {trigger}\n"
        f"tags: [lora, text-to-image, diffusers, brandgen, {family}]\n---\n"
        f"# {name}\n\nA brand-style LoRA trained with BrandGen on {details.get('images', '?')} images "
        f"({details.get('asset_type', '')}) at {details.get('resolution', '?')} px, rank {details.get('rank')}, "
        f"alpha {details.get('alpha')}, {details.get('steps')} steps.\n\n"
        f"Start prompts with the trigger word `{trigger}`.\n\n"
        f"- `{DIFFUSERS_FILE}`: diffusers/peft format:\n"
        f'  `pipe.load_lora_weights(repo, weight_name="{DIFFUSERS_FILE}")`.\n'
        f"- `{name}.safetensors`: kohya-style single file for A1111 / ComfyUI (when present).\n"
    )


def export_lora(
    out_dir: Path,
    name: str,
    family: str,
    denoiser: str,
    model: Any,
    peft_state: dict[str, torch.Tensor],
    lora_config: dict[str, Any],
    base_model: str,
    trigger: str,
    details: dict[str, Any],
) -> LoraExport:
    """Write every output file of a finished run into `out_dir` (a staging folder, not loras/)."""
    out_dir = Path(out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    metadata = brandgen_metadata(family, base_model, trigger, details)
    diffusers_file = write_diffusers_lora(out_dir, family, denoiser, peft_state, lora_config, metadata)
    kohya_file, note = write_kohya_lora(
        out_dir, name, family, peft_state, details["rank"], details["alpha"], model, metadata, details
    )
    (out_dir / "README.md").write_text(model_card(name, family, base_model, trigger, details), encoding="utf-8")
    return LoraExport(out_dir, diffusers_file, kohya_file, note, metadata)


DETAIL_FIELDS = ("rank", "alpha", "resolution", "asset_type", "lr", "batch_size", "grad_accum", "seed")


def export_trained(
    out_dir: Path, config: Any, family: Any, model: Any, base_model: str, extra: dict[str, Any]
) -> LoraExport:
    """export_lora for a model trained with `config` (a TrainConfig) by the trainer of `family`."""
    from peft.utils import get_peft_model_state_dict

    peft_state = {k: v.detach().float().cpu() for k, v in get_peft_model_state_dict(model).items()}
    details = {**{k: getattr(config, k) for k in DETAIL_FIELDS}, **extra}
    lora_config = model.peft_config["default"].to_dict()
    return export_lora(
        out_dir,
        config.name,
        family.name,
        family.denoiser,
        model,
        peft_state,
        lora_config,
        base_model,
        config.trigger,
        details,
    )


def ensure_lora_name_free(loras_root: Path, name: str) -> None:
    """Refuse a name the LoRA library already shows (a folder or a single file): checked before a run starts
    and again when it is published."""
    if (loras_root / name).exists() or (loras_root / f"{name}.safetensors").exists():
        raise InvalidInput(f"A LoRA named {name!r} already exists in {loras_root.name}/; pick another name.")


def publish(staging: Path, loras_root: Path, name: str) -> Path:
    """Move a finished LoRA folder into loras/<name> in one rename, so the library never sees half a LoRA."""
    loras_root.mkdir(parents=True, exist_ok=True)
    target = loras_root / name
    ensure_lora_name_free(loras_root, name)
    try:
        os.replace(staging, target)
    except OSError:  # another filesystem: copy beside the target under a hidden name, then rename
        tmp = loras_root / f".tmp-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(staging, tmp)
        os.replace(tmp, target)
        shutil.rmtree(staging, ignore_errors=True)
    return target


def push_to_hub(lora_dir: Path, repo_id: str, token: str | None = None, private: bool = True) -> dict[str, str]:
    """Upload a LoRA folder (with its model card). Offline or without a token it is skipped, never raised."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return {"status": "skipped", "message": "HF_HUB_OFFLINE is set, so nothing was uploaded."}
    import huggingface_hub

    token = token or huggingface_hub.get_token()
    if not token:
        return {"status": "skipped", "message": "No Hugging Face token (set HF_TOKEN or run `hf auth login`)."}
    try:
        api = huggingface_hub.HfApi(token=token)
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(lora_dir), repo_id=repo_id, commit_message="Upload BrandGen LoRA")
    except Exception as exc:  # network, auth and permission errors all end the same way for the user
        return {"status": "failed", "message": f"Upload to {repo_id} failed: {type(exc).__name__}: {str(exc)[:300]}"}
    return {"status": "uploaded", "message": f"Uploaded to {url}", "url": str(url)}
