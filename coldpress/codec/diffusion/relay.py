"""Relay residual diffusion (RDEIC) on a diffusers ``DDPMScheduler`` with custom timesteps.

Forward process (training): with the coarse image ``c``, the original ``x0`` and the relay start ``N``,
the noise is folded with the residual, ``eps' = eps + (c - x0) / lam`` with ``lam = sqrt(1 - a_N) / sqrt(a_N)``
(``a`` = the scheduler's cumulative alphas), and ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps'``. At ``t = N``
this is ``sqrt(a_N) c + sqrt(1 - a_N) eps``: what the decoder can make without knowing ``x0``. Between
``N`` and 0 the residual shrinks with the noise, so each step removes both.

Reverse process (decoding): start at ``x_N = sqrt(a_N) c + sqrt(1 - a_N) eps``, then for the timesteps
``N > t_1 > ... > 0`` (``steps`` of them, evenly spaced) the denoiser predicts ``x0`` and the scheduler
steps (spaced DDPM sampling, as RDEIC). The detail knob is RDEIC's guidance scale in x0 form:
``x0_s = c + s (x0_theta - c)``: ``s = 0`` returns the coarse image exactly, 1 the trained decoder, above
1 sharper, between 0 and 1 smoother.

All noise comes from one CPU ``torch.Generator`` (seeded by the caller: the bitstream's hash), drawn on
the CPU at the full image size and moved to the device, so it does not depend on the device or tiling.
"""

from __future__ import annotations

from typing import Callable

import torch

from coldpress.codec.diffusion.denoiser import DenoiserConfig

MAX_STEPS = 5


def make_scheduler(cfg: DenoiserConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps, beta_start=cfg.beta_start, beta_end=cfg.beta_end,
        beta_schedule=cfg.beta_schedule, prediction_type="sample", clip_sample=False,
        variance_type="fixed_small",
    )


def relay_timesteps(cfg: DenoiserConfig, steps: int) -> list[int]:
    """``steps`` timesteps from the relay start down, evenly spaced (e.g. 2 steps from 250: 250, 125)."""
    if not 1 <= int(steps) <= MAX_STEPS:
        from coldpress.errors import ColdpressError

        raise ColdpressError(f"--steps must be between 1 and {MAX_STEPS}, got {steps}")
    n = cfg.start_timestep
    return [int(round(n * (steps - i) / steps)) for i in range(steps)]


def _alpha_bar(scheduler, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    a = scheduler.alphas_cumprod.to(like.device, like.dtype)[torch.as_tensor(t, device=like.device)]
    return a.reshape(-1, *([1] * (like.dim() - 1)))


def relay_state(scheduler, cfg: DenoiserConfig, x0: torch.Tensor, coarse: torch.Tensor, noise: torch.Tensor,
                t: torch.Tensor) -> torch.Tensor:
    """The forward relay state x_t (training): noise and residual folded, see the module docstring."""
    a_n = _alpha_bar(scheduler, cfg.start_timestep, x0)
    lam = torch.sqrt(1 - a_n) / torch.sqrt(a_n)
    folded = noise + (coarse - x0) / lam
    a_t = _alpha_bar(scheduler, t, x0)
    return torch.sqrt(a_t) * x0 + torch.sqrt(1 - a_t) * folded


def relay_start(scheduler, cfg: DenoiserConfig, coarse: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    a_n = _alpha_bar(scheduler, cfg.start_timestep, coarse)
    return torch.sqrt(a_n) * coarse + torch.sqrt(1 - a_n) * noise


def sample(denoise: Callable[[torch.Tensor, int], torch.Tensor], cfg: DenoiserConfig, coarse: torch.Tensor,
           steps: int, detail: float, generator: torch.Generator) -> torch.Tensor:
    """Run the relay chain; ``denoise(x_t, t)`` predicts x0 given the coarse image it closes over.

    Differentiable (fixed-step fine-tuning runs it with gradients). ``coarse`` is in [-1, 1]."""
    scheduler = make_scheduler(cfg)
    scheduler.set_timesteps(timesteps=relay_timesteps(cfg, steps))
    noise = torch.randn(coarse.shape, generator=generator, dtype=torch.float32).to(coarse.device, coarse.dtype)
    x = relay_start(scheduler, cfg, coarse, noise)
    x0 = coarse
    for t in scheduler.timesteps:
        x0 = coarse + detail * (denoise(x, int(t)) - coarse)
        x = scheduler.step(x0, t, x, generator=generator).prev_sample
    return x0
