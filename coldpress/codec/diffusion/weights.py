"""Diffusion decoder weights: shipped by id in ``MODELS.json``'s ``decoders`` section (file, sha256), or
given as a file; safetensors whose metadata holds the denoiser's config and the decoder id.

Bitstreams keep naming the codec model; the decoder model is chosen at restore time, and a restored file
records which one made it (id and sha256).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from coldpress.codec.diffusion.denoiser import DenoiserConfig, RelayDenoiser
from coldpress.codec.models import WEIGHTS_DIR, file_sha256, load_weights, model_files, registry
from coldpress.errors import ColdpressError

#: Metadata keys of a decoder weights file.
KIND_KEY, KIND = "kind", "coldpress-diffusion-decoder"
_CACHE: dict[tuple[str, str], "LoadedDecoder"] = {}
_LOCK = threading.Lock()


@dataclass
class LoadedDecoder:
    decoder_id: str
    sha256: str
    path: Path
    cfg: DenoiserConfig
    net: RelayDenoiser
    metadata: dict


def decoders() -> dict:
    """The shipped decoders' registry entries by id."""
    return registry().get("decoders", {})


def default_decoder_id() -> str | None:
    return registry().get("default_decoder")


def _resolve(decoder: str | None) -> tuple[str, Path, str | None]:
    if decoder is None:
        decoder = default_decoder_id()
        if not decoder:
            raise ColdpressError(
                "no diffusion decoder is bundled with this coldpress installation; train one with "
                "`coldpress train --stage diffusion` and pass its weights with --decoder-model PATH, "
                "or restore with the coarse decoder (the default)"
            )
    shipped = decoders()
    if decoder in shipped:
        entry = shipped[decoder]
        return decoder, WEIGHTS_DIR / entry["file"], entry["sha256"]
    path = Path(decoder)
    if path.suffix == ".safetensors" and path.exists():
        return "", path, None
    if decoder in model_files():
        return "", model_files()[decoder], None
    raise ColdpressError(
        f"unknown diffusion decoder {decoder!r}; shipped decoders: {', '.join(shipped) or 'none'}; pass the "
        "path of a decoder .safetensors file (from `coldpress train --stage diffusion --model-id ...`)"
    )


def build_decoder(tensors: dict[str, torch.Tensor], meta: dict) -> tuple[DenoiserConfig, RelayDenoiser]:
    if meta.get(KIND_KEY) != KIND:
        raise ColdpressError(f"this weights file is not a coldpress diffusion decoder (kind {meta.get(KIND_KEY)!r}); "
                             "pass a file written by `coldpress train --stage diffusion`")
    cfg = DenoiserConfig.from_dict(json.loads(meta["config"]))
    net = RelayDenoiser(cfg)
    expected = set(net.state_dict())
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise ColdpressError(f"decoder weights do not match the architecture (missing {missing[:5]}, unexpected "
                             f"{extra[:5]}); the file was written by another coldpress version: use that version")
    net.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
    return cfg, net.eval()


def load_decoder(decoder: str | None = None, device: torch.device | str = "cpu") -> LoadedDecoder:
    """Load (once per process and device) a shipped decoder by id, the default one, or a weights file."""
    decoder_id, path, expected = _resolve(decoder)
    device = torch.device(device)
    key = (str(path.resolve()), str(device))
    with _LOCK:
        if key not in _CACHE:
            tensors, meta, digest = load_weights(path, expected)
            cfg, net = build_decoder(tensors, meta)
            for p in net.parameters():
                p.requires_grad_(False)
            _CACHE[key] = LoadedDecoder(decoder_id or meta.get("decoder_id", path.stem), digest, path, cfg,
                                        net.to(device), meta)
        return _CACHE[key]


def save_decoder(net: RelayDenoiser, path: Path, decoder_id: str, extra_meta: dict | None = None,
                 half: bool = True) -> str:
    """Write decoder weights (float16 unless ``half`` is false) with their config; return the sha256."""
    from safetensors.torch import save_file

    tensors = {k: (v.detach().half() if half and v.is_floating_point() else v.detach()).contiguous().cpu()
               for k, v in net.state_dict().items()}
    meta = {KIND_KEY: KIND, "config": json.dumps(net.cfg.to_dict()), "decoder_id": decoder_id,
            **{k: (v if isinstance(v, str) else json.dumps(v)) for k, v in (extra_meta or {}).items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return file_sha256(path)
