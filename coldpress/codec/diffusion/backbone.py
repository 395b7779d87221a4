"""The optional Stable Diffusion backbone of the diffusion decoder (issue 10, item 6): a frozen UNet and VAE
from a local diffusers folder, driven by a trained ControlNet branch (the DiffEIC/RDEIC shape).

Nothing is ever downloaded: ``load_backbone(path)`` reads ``path/unet`` (a ``UNet2DConditionModel``),
``path/vae`` (an ``AutoencoderKL``) and, if present, ``path/scheduler`` (its beta schedule and prediction
type) with ``local_files_only=True``; SD 2.1-base and SD-Turbo folders have this layout.

Relay residual diffusion in the VAE latent (RDEIC; the same forward process and sampler as the pixel
decoder, ``coldpress.codec.diffusion.relay``): ``c = vae.encode(coarse).latent_dist.mean * scaling``, the
decode starts at ``x_N = sqrt(a_N) c + sqrt(1 - a_N) eps`` and removes noise and residual in 1-5 spaced
DDPM steps. Training folds the residual into the noise, ``eps' = eps + (c - x0) / lam``, and regresses the
backbone's own parameterisation (epsilon for SD 2.1-base and SD-Turbo, ``v_prediction`` or ``sample`` when
its scheduler says so) so that the frozen UNet keeps doing what it was trained for; every prediction is
converted to x0 (``to_x0``) for the sampler and the detail knob ``x0_s = c + s (x0_theta - c)``. The result
is decoded with ``vae.decode(x0 / scaling).sample``.

The control branch (``ControlBranch``) is ``ControlNetModel.from_unet`` (a trainable copy of the UNet's
encoder and middle block with zero convolutions into the frozen UNet, as ControlNet and DiffEIC's control
module), conditioned on:

- the coarse image in [-1, 1], in pixel space at full resolution: the ControlNet's conditioning embedding
  downsamples by the VAE's factor (8 for SD: ``(16, 32, 96, 256)``, as diffusers' default), so it sees the
  coarse image's pixels rather than only its VAE latent, which already is the relay start;
- the rate, bits per pixel of the bitstream, through the ControlNet's ``class_embed_type="timestep"``
  embedding (sinusoidal + MLP, added to its time embedding) of ``denoiser.rate_label(bpp)``: the same rate
  label as the pixel decoder, and it leaves the frozen UNet's own embeddings alone. The embedding's output
  layer starts at zero, so a fresh branch is exactly ``ControlNetModel.from_unet``;
- no text: ``encoder_hidden_states`` is a learned null embedding (1 token of ``cross_attention_dim``,
  starting at zero), part of the branch's weights (a prompt learned once, not per image).

Why the full-width ``from_unet`` copy and not DiffEIC's 20 % control module: it starts from the UNet's own
weights (what ControlNet found to train fastest and most stably) and needs no projection layers of our own;
its cost is size (about 360 M parameters, 0.7 GB in float16, for SD 2.1), which is acceptable for an
optional decoder that needs a multi-GB backbone anyway.

Branch files (safetensors) hold the ControlNet's weights and the null embedding; their metadata hold the
branch's config (``BranchConfig``, with the ControlNet's diffusers config) and a fingerprint of the backbone
(sha256 of its UNet, VAE and scheduler configs, and a probe of a few of its weights: SD 2.1-base and SD-Turbo
share their configs), checked at load. The backbone's path is not stored: it is given at restore time.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from coldpress.codec.diffusion.denoiser import pad_to, rate_label
from coldpress.codec.diffusion.relay import make_scheduler, sample
from coldpress.errors import ColdpressError

#: Metadata kind of a control-branch file.
KIND_KEY, KIND = "kind", "coldpress-diffusion-backbone-branch"
#: The ControlNet's conditioning embedding for an 8x VAE (diffusers' default); fewer stages for smaller factors.
CONDITIONING_CHANNELS = (16, 32, 96, 256)
#: The backbone runs on the whole image (its UNet has attention: no tiling); larger images are refused.
MAX_PIXELS = 2048 * 2048
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
_CACHE: dict[tuple, "Backbone"] = {}
_LOCK = threading.Lock()


# -- the frozen backbone --------------------------------------------------------------------------
@dataclass
class Backbone:
    """A frozen SD UNet and VAE, the schedule read from the folder, and the backbone's fingerprint."""

    unet: Any
    vae: Any
    schedule: dict
    fingerprint: str
    weights_probe: str

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def align(self) -> int:
        """Image sides are padded to a multiple of this (the VAE's factor x the UNet's downsamplings)."""
        return self.vae_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def scaling(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def shift(self) -> float:
        return float(getattr(self.vae.config, "shift_factor", None) or 0.0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] -> the scaled latent (the VAE's posterior mean: deterministic)."""
        return (self.vae.encode(x).latent_dist.mean - self.shift) * self.scaling

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z / self.scaling + self.shift).sample


def _clean_config(config) -> dict:
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def _probe(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _schedule(scheduler_config: dict | None) -> dict:
    """The diffusion schedule of the backbone (its scheduler config; SD's defaults without one)."""
    cfg = dict(scheduler_config or {})
    if cfg.get("trained_betas") is not None or cfg.get("rescale_betas_zero_snr"):
        raise ColdpressError("the backbone's scheduler uses trained betas or zero-SNR rescaling, which the relay "
                             "decoder does not support; use an SD 1.x/2.x or SD-Turbo folder, or remove those keys "
                             "from its scheduler/scheduler_config.json if the UNet was not trained with them")
    schedule = {"num_train_timesteps": int(cfg.get("num_train_timesteps", 1000)),
                "beta_start": float(cfg.get("beta_start", 0.00085)), "beta_end": float(cfg.get("beta_end", 0.012)),
                "beta_schedule": str(cfg.get("beta_schedule", "scaled_linear")),
                "prediction_type": str(cfg.get("prediction_type", "epsilon"))}
    if schedule["prediction_type"] not in PREDICTION_TYPES:
        raise ColdpressError(f"the backbone's scheduler has prediction_type {schedule['prediction_type']!r}; "
                             f"the relay decoder supports {', '.join(PREDICTION_TYPES)}")
    return schedule


def load_backbone(path: str | os.PathLike, device: torch.device | str = "cpu") -> Backbone:
    """Load (once per process and device) the frozen UNet and VAE of a local diffusers folder."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    folder = Path(path)
    device = torch.device(device)
    missing = [sub for sub in ("unet", "vae") if not (folder / sub / "config.json").is_file()]
    if missing:
        raise ColdpressError(
            f"{folder} is not a Stable Diffusion folder: it lacks {' and '.join(f'{m}/config.json' for m in missing)}; "
            "pass --decoder-backbone a local diffusers folder with unet/ (UNet2DConditionModel) and vae/ "
            "(AutoencoderKL), e.g. one saved by StableDiffusionPipeline.save_pretrained (nothing is downloaded)")
    # Keyed by the files' sizes and times too: a folder changed on disk is loaded again.
    stamp = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for sub in ("unet", "vae", "scheduler")
                  for f in sorted((folder / sub).glob("*")) if f.is_file())
    key = (str(folder.resolve()), str(device), stamp)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        import importlib.util

        # Without accelerate, diffusers warns on every load that it falls back to this: say it ourselves.
        low_memory = {} if importlib.util.find_spec("accelerate") else {"low_cpu_mem_usage": False}
        models = {}
        for sub, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
            try:
                models[sub] = cls.from_pretrained(str(folder), subfolder=sub, local_files_only=True, **low_memory)
            except (OSError, ValueError, EnvironmentError) as exc:
                raise ColdpressError(f"cannot load {folder / sub} as a diffusers {cls.__name__}: {exc}; check that "
                                     f"{folder / sub} holds its config.json and weights "
                                     "(diffusion_pytorch_model.safetensors)") from exc
        unet, vae = models["unet"], models["vae"]
        if unet.config.class_embed_type is not None or unet.config.num_class_embeds is not None \
                or unet.config.addition_embed_type is not None:
            raise ColdpressError(f"the UNet in {folder / 'unet'} takes class labels or added conditions (SDXL, an "
                                 "upscaler): the control branch supports SD 1.x/2.x-like UNets (SD 2.1-base, SD-Turbo)")
        if unet.config.in_channels != vae.config.latent_channels or unet.config.out_channels != vae.config.latent_channels:
            raise ColdpressError(f"the UNet in {folder / 'unet'} has {unet.config.in_channels} input channels but the "
                                 f"VAE's latent has {vae.config.latent_channels} (an inpainting or depth UNet?); "
                                 "use a text-to-image SD folder")
        scheduler_config = None
        if (folder / "scheduler" / "scheduler_config.json").is_file():
            scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        schedule = _schedule(scheduler_config)
        fingerprint = hashlib.sha256(json.dumps(
            {"unet": _clean_config(unet.config), "vae": _clean_config(vae.config),
             "scheduler": _clean_config(scheduler_config) if scheduler_config else None},
            sort_keys=True, default=str).encode()).hexdigest()
        probe = _probe(unet.conv_in.weight, unet.conv_out.weight, vae.encoder.conv_in.weight,
                       vae.decoder.conv_out.weight)
        for model in (unet, vae):
            model.requires_grad_(False)
            model.eval().to(device)
        _CACHE[key] = Backbone(unet, vae, schedule, fingerprint, probe)
        return _CACHE[key]


# -- parameterisations ----------------------------------------------------------------------------
def to_x0(pred: torch.Tensor, x_t: torch.Tensor, a_t: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The clean latent from the UNet's output in its parameterisation (``a_t``: cumulative alpha)."""
    if prediction_type == "epsilon":
        return (x_t - torch.sqrt(1 - a_t) * pred) / torch.sqrt(a_t)
    if prediction_type == "v_prediction":
        return torch.sqrt(a_t) * x_t - torch.sqrt(1 - a_t) * pred
    if prediction_type == "sample":
        return pred
    raise ColdpressError(f"unknown prediction type {prediction_type!r}; one of {', '.join(PREDICTION_TYPES)}")


def target_of(x0: torch.Tensor, x_t: torch.Tensor, a_t: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """What the UNet should output for the state ``x_t`` of the clean latent ``x0``: the folded noise
    ``eps' = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t)`` (RDEIC's target), v, or x0."""
    if prediction_type == "sample":
        return x0
    eps = (x_t - torch.sqrt(a_t) * x0) / torch.sqrt(1 - a_t)
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v_prediction":
        return torch.sqrt(a_t) * eps - torch.sqrt(1 - a_t) * x0
    raise ColdpressError(f"unknown prediction type {prediction_type!r}; one of {', '.join(PREDICTION_TYPES)}")


# -- the control branch ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BranchConfig:
    """The relay schedule and the ControlNet of a branch (stored in its weights' metadata)."""

    controlnet: dict
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "epsilon"
    #: The relay start (RDEIC: 300 of SD's 1000 timesteps).
    start_timestep: int = 300
    default_steps: int = 2
    null_tokens: int = 1
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BranchConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ColdpressError(f"backbone branch config has unknown fields {sorted(unknown)}; it was made by a newer "
                                 "coldpress: upgrade coldpress")
        return cls(**d)


def _conditioning_channels(vae_factor: int) -> tuple[int, ...]:
    stages = int(round(math.log2(vae_factor)))
    if 2 ** stages != vae_factor or stages >= len(CONDITIONING_CHANNELS):
        raise ColdpressError(f"the backbone's VAE downsamples by {vae_factor}; the control branch supports 1, 2, 4 or 8")
    return CONDITIONING_CHANNELS[:stages + 1]


class ControlBranch(nn.Module):
    """The trainable part: a ControlNet (with a rate embedding) and a null text embedding."""

    def __init__(self, cfg: BranchConfig):
        super().__init__()
        from diffusers import ControlNetModel

        self.cfg = cfg
        self.controlnet = ControlNetModel.from_config(cfg.controlnet)
        cross = self.controlnet.config.cross_attention_dim
        self.null_embedding = nn.Parameter(torch.zeros(1, cfg.null_tokens, cross))

    @classmethod
    def fresh(cls, backbone: Backbone, start_timestep: int = 300, default_steps: int = 2) -> "ControlBranch":
        """``ControlNetModel.from_unet`` of the backbone's UNet, plus a zero-initialised rate embedding."""
        from diffusers import ControlNetModel

        unet = backbone.unet
        base = ControlNetModel.from_unet(unet, conditioning_channels=3,
                                         conditioning_embedding_out_channels=_conditioning_channels(backbone.vae_factor))
        config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(base.config).items()
                  if not k.startswith("_")}
        config["class_embed_type"] = "timestep"
        cfg = BranchConfig(controlnet=config, start_timestep=start_timestep, default_steps=default_steps,
                           **{k: v for k, v in backbone.schedule.items()})
        branch = cls(cfg)
        result = branch.controlnet.load_state_dict(base.state_dict(), strict=False)
        stray = [k for k in result.missing_keys if not k.startswith("class_embedding.")]
        if stray or result.unexpected_keys:
            raise RuntimeError(f"ControlNet copy mismatch: missing {stray[:5]}, unexpected {result.unexpected_keys[:5]}")
        nn.init.zeros_(branch.controlnet.class_embedding.linear_2.weight)
        nn.init.zeros_(branch.controlnet.class_embedding.linear_2.bias)
        return branch

    def forward(self, unet, x_t: torch.Tensor, timestep: torch.Tensor | int, coarse: torch.Tensor,
                bpp: torch.Tensor | float) -> torch.Tensor:
        """The frozen UNet's output (its own parameterisation) with the branch's residuals added."""
        n = x_t.shape[0]
        t = torch.as_tensor(timestep, device=x_t.device)
        t = t.expand(n) if t.dim() == 0 else t
        labels = rate_label(bpp).to(x_t.device).reshape(-1).expand(n)
        text = self.null_embedding.expand(n, -1, -1)
        down, mid = self.controlnet(x_t, t, encoder_hidden_states=text, controlnet_cond=coarse, class_labels=labels,
                                    return_dict=False)
        return unet(x_t, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid).sample

    def denoiser(self, backbone: Backbone, coarse: torch.Tensor, bpp: torch.Tensor | float):
        """``denoise(x_t, t) -> x0`` for ``relay.sample`` (the coarse image in pixels, [-1, 1])."""
        alphas = make_scheduler(self.cfg).alphas_cumprod

        def denoise(x_t: torch.Tensor, t: int) -> torch.Tensor:
            a_t = alphas[int(t)].to(x_t.device, x_t.dtype)
            return to_x0(self(backbone.unet, x_t, t, coarse, bpp), x_t, a_t, self.cfg.prediction_type)

        return denoise


def save_branch(branch: ControlBranch, backbone: Backbone, path: Path, decoder_id: str,
                extra_meta: dict | None = None, half: bool = True) -> str:
    """Write a branch's weights (float16 unless ``half`` is false) with its config; return the sha256."""
    from safetensors.torch import save_file

    from coldpress.codec.models import file_sha256

    tensors = {k: (v.detach().half() if half and v.is_floating_point() else v.detach()).contiguous().cpu()
               for k, v in branch.state_dict().items()}
    meta = {KIND_KEY: KIND, "config": json.dumps(branch.cfg.to_dict(), default=str), "decoder_id": decoder_id,
            "backbone_fingerprint": backbone.fingerprint, "backbone_weights_probe": backbone.weights_probe,
            **{k: (v if isinstance(v, str) else json.dumps(v)) for k, v in (extra_meta or {}).items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return file_sha256(path)


def is_branch_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a control-branch file (for restore plumbing choosing a decoder by its weights)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get(KIND_KEY) == KIND
    except Exception:  # noqa: BLE001 - not a safetensors file at all
        return False


def load_branch(path: str | os.PathLike, backbone: Backbone) -> tuple[ControlBranch, dict, str]:
    """(branch in float32, metadata, sha256) of a branch file, checked against ``backbone``."""
    from coldpress.codec.models import load_weights

    tensors, meta, digest = load_weights(Path(path))
    if meta.get(KIND_KEY) != KIND:
        raise ColdpressError(f"{path} is not a coldpress backbone control branch (kind {meta.get(KIND_KEY)!r}); pass "
                             "a file written by `coldpress train --stage diffusion --decoder-backbone PATH`")
    if meta.get("backbone_fingerprint") != backbone.fingerprint:
        raise ColdpressError(f"{path} was trained on another Stable Diffusion backbone (its UNet, VAE or scheduler "
                             "config differs from the folder given); pass the --decoder-backbone folder it was trained "
                             "on, or train a branch for this one")
    if meta.get("backbone_weights_probe") != backbone.weights_probe:
        raise ColdpressError(f"{path} was trained on a backbone with the same configs but other weights (e.g. SD 2.1-base "
                             "against SD-Turbo); pass the --decoder-backbone folder it was trained on")
    branch = ControlBranch(BranchConfig.from_dict(json.loads(meta["config"])))
    expected = set(branch.state_dict())
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise ColdpressError(f"branch weights in {path} do not match its architecture (missing {missing[:5]}, "
                             f"unexpected {extra[:5]}); the file was written by another coldpress version: use that one")
    branch.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
    return branch, meta, digest


# -- the decoder ----------------------------------------------------------------------------------
class BackboneDecoder:
    """A trained control branch on a frozen SD backbone: ``refine`` as ``DiffusionDecoder.refine``."""

    def __init__(self, branch: str | os.PathLike, backbone: str | os.PathLike, device: str | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.backbone = load_backbone(backbone, self.device)
        self.branch, self.metadata, self.sha256 = load_branch(branch, self.backbone)
        self.branch.requires_grad_(False)
        self.branch.eval().to(self.device)
        self.cfg = self.branch.cfg
        self.decoder_id = self.metadata.get("decoder_id") or Path(branch).stem

    def describe(self, steps: int | None = None, detail: float | None = None) -> dict[str, Any]:
        from coldpress.codec.diffusion.decoder import check_knobs

        steps, detail = check_knobs(steps, detail, self.cfg.default_steps)
        return {"decoder": "diffusion", "decoder_id": self.decoder_id, "decoder_sha256": self.sha256,
                "backbone_fingerprint": self.backbone.fingerprint, "steps": steps, "detail": detail}

    @torch.no_grad()
    def refine(self, coarse: np.ndarray, bpp: float, seed: int, steps: int | None = None,
               detail: float | None = None) -> np.ndarray:
        """The refined (H, W, 3) uint8 image of a coarse decode at ``bpp`` bits per pixel.

        ``detail`` 0 returns the coarse image exactly; any other value goes through the VAE, so its output
        includes the VAE's own reconstruction error of the coarse content."""
        from coldpress.codec.diffusion.decoder import check_knobs

        steps, detail = check_knobs(steps, detail, self.cfg.default_steps)
        if coarse.ndim != 3 or coarse.shape[2] != 3 or coarse.dtype != np.uint8:
            raise ColdpressError(f"the diffusion decoder refines (H, W, 3) uint8 images, got {coarse.shape} {coarse.dtype}")
        if detail == 0.0:
            return coarse.copy()
        h, w = coarse.shape[:2]
        if h * w > MAX_PIXELS:
            raise ColdpressError(f"the Stable Diffusion backbone decodes whole images up to {MAX_PIXELS} pixels; this "
                                 f"one is {w}x{h}: restore it with the pixel diffusion decoder (no --decoder-backbone) "
                                 "or the coarse decoder")
        c = torch.from_numpy(np.ascontiguousarray(coarse)).permute(2, 0, 1)[None].float().div(127.5).sub(1)
        c = pad_to(c, self.backbone.align).to(self.device)
        generator = torch.Generator("cpu").manual_seed(int(seed))
        z = sample(self.branch.denoiser(self.backbone, c, bpp), self.cfg, self.backbone.encode(c), steps, detail,
                   generator)
        x = self.backbone.decode(z)
        out = x[0, :, :h, :w].float().add(1).mul(127.5).clamp(0, 255).round().to(torch.uint8)
        return np.ascontiguousarray(out.permute(1, 2, 0).cpu().numpy())


_DECODERS: dict[tuple[str, str, str | None], BackboneDecoder] = {}


def get_backbone_decoder(branch: str | os.PathLike, backbone: str | os.PathLike,
                         device: str | None = None) -> BackboneDecoder:
    """A ``BackboneDecoder`` loaded once per process (for restore plumbing, as ``decoder.get_decoder``)."""
    key = (str(Path(branch).resolve()), str(Path(backbone).resolve()), device)
    with _LOCK:
        cached = _DECODERS.get(key)
    if cached is None:
        cached = _DECODERS.setdefault(key, BackboneDecoder(branch, backbone, device))
    return cached


__all__ = ["Backbone", "BackboneDecoder", "BranchConfig", "ControlBranch", "get_backbone_decoder", "is_branch_file",
           "load_backbone", "load_branch", "save_branch", "target_of", "to_x0"]
