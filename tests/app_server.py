"""The real app (`python app.py`) in a subprocess on 127.0.0.1, for browser and gradio_client tests.

Everything it writes goes under a temporary BRANDGEN_HOME (outputs, loras, training runs, benchmarks) and a
temporary GRADIO_TEMP_DIR, so a test run leaves the repository as it found it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = REPO_ROOT / "assets" / "brandgen-tiny"
START_TIMEOUT_S = 120


@dataclass(frozen=True)
class AppServer:
    url: str
    home: Path
    log: Path

    @property
    def loras(self) -> Path:
        return self.home / "loras"

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-chars:] if self.log.is_file() else ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with {process.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
        try:
            with urllib.request.urlopen(url + "config", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    tail = log.read_text(errors="replace")[-4000:]
    raise RuntimeError(f"app.py did not answer on {url} in {START_TIMEOUT_S} s:\n{tail}")


@contextmanager
def running_app(home: Path):
    """Start `python app.py --host 127.0.0.1 --port <free>` with BRANDGEN_HOME=home; stop it afterwards."""
    home = Path(home)
    (home / "loras").mkdir(parents=True, exist_ok=True)
    (home / "gradio_tmp").mkdir(exist_ok=True)
    port = free_port()
    env = {
        **os.environ,
        "BRANDGEN_HOME": str(home),
        "GRADIO_TEMP_DIR": str(home / "gradio_tmp"),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    for key in ("BRANDGEN_LORAS_DIR", "BRANDGEN_PORT", "BRANDGEN_HOST", "BRANDGEN_SHARE", "BRANDGEN_AUTH"):
        env.pop(key, None)
    log = home / "app.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_up(url, process, log)
        yield AppServer(url=url, home=home, log=log)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


def make_lora(out_file: Path, model_dir: Path = DEFAULT_MODEL_DIR, trigger: str = "", seed: int = 1,
              rank: int = 4) -> Path:
    """A small real peft LoRA (diffusers format) on a model's UNet attention, tagged with its base family."""
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet")
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    tensors = {f"unet.{key}": value.contiguous() for key, value in layers.items()}
    metadata = {"brandgen.base_family": "sd15", "format": "pt"}
    if trigger:
        metadata["brandgen.trigger"] = trigger
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_file), metadata=metadata)
    return out_file
