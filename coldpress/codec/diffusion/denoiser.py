"""The relay-residual denoiser: a diffusers ``UNet2DModel`` on space-to-depth pixels, conditioned on the
coarse reconstruction (SPRDiff's distortion-aware condition) and on the rate.

Why pixel space, folded 4x4 (``fold``): the decoder must run in a few seconds on 2 CPU cores and serve
every codec model, old and new. A learned latent (a VAE, as Stable Diffusion's) would add an encoder pass
over the coarse image and a decoder pass per restore, and a VAE of its own to train on CPU; folding 4x4
pixel blocks into 48 channels is the cheapest invertible "latent": the UNet runs at 1/4 of the resolution
(the default widths, 32-64-128, take about 0.6 s per step on a Kodak image on 2 idle cores, against 5 s for the v2 coarse decode; 64-128-192 took 1.9 s, and trains 3x slower on CPU),
and its output unfolds back to pixels exactly. The condition is the coarse image, folded the same way, and
the rate (bits per pixel of the bitstream, which every bitstream has, so that nothing here depends on the
codec's latent: a new codec model needs no new decoder).

The UNet has no attention (``add_attention=False``, ``DownBlock2D``/``UpBlock2D`` only): it is fully
convolutional apart from its GroupNorms, which is what lets large images run tile by tile.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

#: Rate labels map log2(bpp / RATE_LABEL_FLOOR_BPP) * RATE_LABEL_PER_OCTAVE into the timestep range.
RATE_LABEL_FLOOR_BPP = 0.001
RATE_LABEL_PER_OCTAVE = 100.0


@dataclass(frozen=True)
class DenoiserConfig:
    """Architecture and diffusion schedule of a diffusion decoder (stored in its weights' metadata)."""

    fold: int = 4
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    norm_num_groups: int = 8
    #: Diffusion schedule (a diffusers DDPMScheduler): training timesteps, betas.
    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    #: The relay start: decoding starts at this timestep from the coarse image plus noise.
    start_timestep: int = 250
    #: Steps of the decode when the user gives none (the steps the decoder was fine-tuned for).
    default_steps: int = 2
    extra: dict = field(default_factory=dict)

    @property
    def align(self) -> int:
        """Image sides are padded to a multiple of this (fold x the UNet's downsamplings)."""
        return self.fold * 2 ** (len(self.block_out_channels) - 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DenoiserConfig":
        d = dict(d)
        d["block_out_channels"] = tuple(d["block_out_channels"])
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            from coldpress.errors import ColdpressError

            raise ColdpressError(f"diffusion decoder config has unknown fields {sorted(unknown)}; it was made by "
                                 "a newer coldpress: upgrade coldpress")
        return cls(**d)


def rate_label(bpp: torch.Tensor | float) -> torch.Tensor:
    """The rate condition: log2 of the bits per pixel, scaled into the timestep embedding's range."""
    bpp = torch.as_tensor(bpp, dtype=torch.float32)
    return (torch.log2(bpp.clamp_min(RATE_LABEL_FLOOR_BPP) / RATE_LABEL_FLOOR_BPP) * RATE_LABEL_PER_OCTAVE).clamp(0, 999)


class RelayDenoiser(nn.Module):
    """Predicts the clean image x0 (in [-1, 1]) from the noisy relay state x_t, the coarse image c and
    the rate; inputs and output are (N, 3, H, W) with H and W multiples of ``cfg.align``."""

    def __init__(self, cfg: DenoiserConfig):
        super().__init__()
        from diffusers import UNet2DModel

        self.cfg = cfg
        f2 = cfg.fold * cfg.fold
        n = len(cfg.block_out_channels)
        self.unet = UNet2DModel(
            in_channels=6 * f2, out_channels=3 * f2, block_out_channels=cfg.block_out_channels,
            layers_per_block=cfg.layers_per_block, down_block_types=("DownBlock2D",) * n,
            up_block_types=("UpBlock2D",) * n, add_attention=False, norm_num_groups=cfg.norm_num_groups,
            class_embed_type="timestep",
        )
        # diffusers projects the rate label in float32 whatever the UNet's dtype: cast it to the
        # embedding's dtype, so the denoiser also runs in float64 (the reproducible CPU decode).
        self.unet.class_embedding.register_forward_pre_hook(
            lambda module, args: tuple(a.to(module.linear_1.weight.dtype) for a in args))
        # The output layer starts at zero: a fresh decoder returns the coarse image exactly, so training
        # starts from the coarse decode's quality and only adds to it.
        nn.init.zeros_(self.unet.conv_out.weight)
        nn.init.zeros_(self.unet.conv_out.bias)

    def forward(self, x_t: torch.Tensor, coarse: torch.Tensor, timestep: torch.Tensor | int,
                bpp: torch.Tensor | float) -> torch.Tensor:
        f = self.cfg.fold
        n = x_t.shape[0]
        labels = rate_label(bpp).to(x_t.device).reshape(-1).expand(n)
        timestep = torch.as_tensor(timestep, device=x_t.device)
        if timestep.dim() == 0:
            timestep = timestep.expand(n)
        h = torch.cat([F.pixel_unshuffle(x_t, f), F.pixel_unshuffle(coarse, f)], dim=1)
        out = self.unet(h, timestep, class_labels=labels).sample
        # Predict the residual over the coarse image: at initialisation the decoder returns about c.
        return coarse + F.pixel_shuffle(out, f)


def pad_to(x: torch.Tensor, align: int) -> torch.Tensor:
    """Replicate-pad the bottom and right of (N, C, H, W) to multiples of ``align``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % align, (-w) % align
    if not (ph or pw):
        return x
    mode = "replicate" if min(h, w) > 1 else "constant"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def receptive_radius(cfg: DenoiserConfig) -> int:
    """A generous bound of the UNet's receptive radius in pixels (3x3 convs: 2 per resnet, per level)."""
    per_level = 2 * (cfg.layers_per_block * 2 + 2)
    radius = sum(per_level * 2 ** i for i in range(len(cfg.block_out_channels)))
    return int(math.ceil(radius * cfg.fold))
