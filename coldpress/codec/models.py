"""The model registry: shipped learned-codec weights by id, verified by sha256, loaded pickle-free.

``coldpress/codec/weights/MODELS.json`` lists the shipped models (id -> file, sha256) and the default.
A weights file is a safetensors file whose metadata holds the architecture config and the model id;
its tensors are the float networks (encoder, decoder, hyper-analysis, gains), the entropy models'
tables and the fixed-point hyper-synthesis. Loading checks the sha256 and the exact key set: a
missing or unexpected tensor is an error, never silently dropped.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from coldpress.codec.fixedpoint import FixedPointHyperSynthesis
from coldpress.codec.networks import ExtremeCodecNet, NetConfig, scale_table
from coldpress.errors import ColdpressError

WEIGHTS_DIR = Path(__file__).parent / "weights"
REGISTRY_FILE = WEIGHTS_DIR / "MODELS.json"
FIXED_PREFIX = "hs_fixed."
_CACHE: dict[tuple[str, str], "LoadedModel"] = {}
_LOCK = threading.Lock()


def registry() -> dict:
    if not REGISTRY_FILE.exists():
        return {"default": None, "models": {}}
    return json.loads(REGISTRY_FILE.read_text())


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class LoadedModel:
    model_id: str
    sha256: str
    path: Path
    net: ExtremeCodecNet  # float32 parts used for encoding (h_s replaced by the fixed-point module)
    hs_fixed: FixedPointHyperSynthesis
    synthesis64: nn.Module  # float64 copy of the decoder
    metadata: dict

    @torch.no_grad()
    def entropy_parameters(self, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(means float64, scale-table indexes int32), both on CPU, bit-identical on every device."""
        means, scales = self.hs_fixed(z_hat.to(self.hs_fixed.w0.device))
        table = self.net.gaussian_conditional.scale_table.double().to(scales.device)
        scales = scales.clamp_min(float(table[0]))
        indexes = torch.searchsorted(table[:-1].contiguous(), scales.contiguous(), right=False)
        return means.cpu(), indexes.to(torch.int32).cpu()

    def card_summary(self) -> dict:
        return {"model_sha256": self.sha256, "latent_stride": self.net.cfg.latent_stride}


def _resolve(model: str | None) -> tuple[str, Path, str | None]:
    """(model id, weights path, expected sha256 or None) for a registry id or a file path."""
    reg = registry()
    if model is None:
        model = reg.get("default")
        if not model:
            raise ColdpressError(
                "no learned model is bundled with this coldpress installation; train one with "
                "`coldpress train` and export it, or pass --codec avif-half"
            )
    if model in reg["models"]:
        entry = reg["models"][model]
        return model, WEIGHTS_DIR / entry["file"], entry["sha256"]
    path = Path(model)
    if path.suffix == ".safetensors" and path.exists():
        return "", path, None
    raise ColdpressError(
        f"unknown learned model {model!r}; shipped models: {', '.join(reg['models']) or 'none'}; "
        "or pass the path of an exported .safetensors file"
    )


def load_weights(path: Path, expected_sha256: str | None = None) -> tuple[dict[str, torch.Tensor], dict, str]:
    """Tensors, metadata and sha256 of a weights file (safetensors: no pickle)."""
    from safetensors import safe_open

    if not path.exists():
        raise ColdpressError(f"weights file {path} is missing; reinstall coldpress or re-export the model")
    digest = file_sha256(path)
    if expected_sha256 and digest != expected_sha256:
        raise ColdpressError(
            f"weights file {path} has sha256 {digest}, the registry expects {expected_sha256}: the file is "
            "corrupted or was replaced; reinstall coldpress"
        )
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, meta, digest


def build(tensors: dict[str, torch.Tensor], meta: dict, device: torch.device) -> tuple[ExtremeCodecNet, FixedPointHyperSynthesis, nn.Module]:
    """Networks from exported tensors; the key sets must match exactly."""
    cfg = NetConfig.from_dict(json.loads(meta["config"]))
    net = ExtremeCodecNet(cfg)
    layout = FixedPointHyperSynthesis.layout_of(net.h_s)
    net.h_s = nn.Identity()  # replaced by the fixed-point module
    fixed = FixedPointHyperSynthesis(layout, layout.count("conv"))
    net_sd = {k: v for k, v in tensors.items() if not k.startswith(FIXED_PREFIX)}
    fixed_sd = {k[len(FIXED_PREFIX):]: v for k, v in tensors.items() if k.startswith(FIXED_PREFIX)}
    expected = set(net.state_dict())
    if set(net_sd) != expected:
        missing, extra = sorted(expected - set(net_sd)), sorted(set(net_sd) - expected)
        raise ColdpressError(
            f"weights do not match the architecture (missing {missing[:5]}, unexpected {extra[:5]}); "
            "the file was exported by another coldpress version: use the matching version or re-export"
        )
    net_sd = {k: (v.float() if v.is_floating_point() and net.state_dict()[k].is_floating_point() else v) for k, v in net_sd.items()}
    net.load_state_dict(net_sd, strict=True)
    fixed.load_state_dict(fixed_sd, strict=True)
    synthesis64 = copy.deepcopy(net.g_s).double()
    net.eval()
    synthesis64.eval()
    return net.to(device), fixed.to(device), synthesis64.to(device)


def load_model(model: str | None = None, device: torch.device | str = "cpu") -> LoadedModel:
    """Load (once per process and device) a shipped model by id, the default, or a weights file."""
    model_id, path, expected = _resolve(model)
    device = torch.device(device)
    key = (str(path.resolve()), str(device))
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        tensors, meta, digest = load_weights(path, expected)
        net, fixed, synthesis64 = build(tensors, meta, device)
        loaded = LoadedModel(
            model_id=model_id or meta.get("model_id", path.stem), sha256=digest, path=path, net=net,
            hs_fixed=fixed, synthesis64=synthesis64, metadata=meta,
        )
        _CACHE[key] = loaded
        return loaded


@functools.lru_cache(maxsize=1)
def default_model_available() -> bool:
    try:
        _, path, _ = _resolve(None)
    except ColdpressError:
        return False
    return path.exists()


__all__ = ["LoadedModel", "load_model", "registry", "scale_table", "default_model_available"]
