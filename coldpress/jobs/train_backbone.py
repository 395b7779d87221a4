"""`coldpress train --stage diffusion --decoder-backbone PATH`: train (or resume) the control branch of the
optional Stable Diffusion backbone (``coldpress.codec.diffusion.backbone``) with the backbone and the codec
frozen, on the same pairs as the pixel decoder's job (``train_diffusion.PairMaker``), then export it with
``--model-id``: float16 branch weights and a model card, not registered (restore needs the backbone folder).

Run state in ``--run DIR`` under names of its own, so that a pixel decoder run can share the folder:
``branch.safetensors``, ``branch_optimizer.pt``, ``branch_state.json``, ``branch_log.csv``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from coldpress.codec.diffusion.backbone import (
    Backbone, ControlBranch, load_backbone, load_branch, save_branch, target_of,
)
from coldpress.codec.diffusion.denoiser import parameter_count
from coldpress.codec.diffusion.relay import make_scheduler, relay_state, sample
from coldpress.errors import ColdpressError
from coldpress.jobs.train_diffusion import W_FREQ, W_MS_SSIM, frequency_loss, ms_ssim_loss, next_batch, training_pairs
from coldpress.jobs.finite_steps import refuse_non_finite
from coldpress.jobs.training_segment import history_summary, run_segment

#: Files of a branch training run (distinct from the pixel decoder's, so both can share a --run folder).
CHECKPOINT, OPTIMIZER, STATE, LOG = "branch.safetensors", "branch_optimizer.pt", "branch_state.json", "branch_log.csv"


def branch_losses(branch: ControlBranch, backbone: Backbone, scheduler, x0: torch.Tensor, c: torch.Tensor,
                  bpp: torch.Tensor, fixed_steps: int, seed: int) -> dict[str, torch.Tensor]:
    """The diffusion loss in the backbone's parameterisation at a random relay timestep, and (with
    ``fixed_steps``) the whole decode chain through the VAE decoder on pixels (MSE, MS-SSIM, frequency)."""
    cfg = branch.cfg
    with torch.no_grad():
        z0, zc = backbone.encode(x0), backbone.encode(c)
    g = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn(z0.shape, generator=g).to(z0.device)
    t = torch.randint(1, cfg.start_timestep + 1, (z0.shape[0],), generator=g).to(z0.device)
    z_t = relay_state(scheduler, cfg, z0, zc, noise, t)
    a_t = scheduler.alphas_cumprod.to(z0.device)[t].reshape(-1, 1, 1, 1)
    pred = branch(backbone.unet, z_t, t, c, bpp)
    out = {"diffusion": F.mse_loss(pred, target_of(z0, z_t, a_t, cfg.prediction_type))}
    if fixed_steps:
        z_hat = sample(branch.denoiser(backbone, c, bpp), cfg, zc, fixed_steps, 1.0, g)
        x_hat = backbone.decode(z_hat)
        out["chain_mse"] = F.mse_loss(x_hat, x0)
        out["chain_ms_ssim"] = ms_ssim_loss(x_hat, x0)
        out["chain_freq"] = frequency_loss(x_hat, x0)
        out["loss"] = out["diffusion"] + out["chain_mse"] + W_MS_SSIM * out["chain_ms_ssim"] + W_FREQ * out["chain_freq"]
    else:
        out["loss"] = out["diffusion"]
    return out


def _save_run(run: Path, branch: ControlBranch, backbone: Backbone, optimizer, state: dict) -> None:
    refuse_non_finite({k: v.detach() for k, v in branch.state_dict().items()}, run, state["step"])
    save_branch(branch, backbone, run / CHECKPOINT, "run", {"step": str(state["step"])}, half=False)
    torch.save(optimizer.state_dict(), run / f".{OPTIMIZER}.tmp")
    os.replace(run / f".{OPTIMIZER}.tmp", run / OPTIMIZER)
    (run / f".{STATE}.tmp").write_text(json.dumps(state, indent=1))
    os.replace(run / f".{STATE}.tmp", run / STATE)


def _check_args(args: argparse.Namespace) -> None:
    if getattr(args, "eval", None):
        raise ColdpressError("--eval is not supported with --decoder-backbone; evaluate the exported branch with "
                             "coldpress bench rd")
    if getattr(args, "register", False):
        raise ColdpressError("a backbone branch is not registered in MODELS.json (it needs its backbone folder at "
                             "restore); drop --register and pass the exported file at restore")


def train_branch(args: argparse.Namespace) -> dict:
    """Train (or resume) the control branch in ``args.run`` with the backbone and the codec frozen."""
    _check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    backbone = load_backbone(args.decoder_backbone, device)
    if args.crop % backbone.align:
        raise ColdpressError(f"--crop {args.crop} is not a multiple of {backbone.align} (the backbone's VAE factor x its "
                             f"UNet's downsamplings); pass e.g. --crop {max(1, round(args.crop / backbone.align)) * backbone.align}")
    run = Path(args.run)
    if (run / CHECKPOINT).exists():
        branch, _, _ = load_branch(run / CHECKPOINT, backbone)
        state = json.loads((run / STATE).read_text())
        print(f"train: resuming the backbone branch in {run} at step {state['step']}", file=sys.stderr)
    else:
        if (run / "checkpoint.safetensors").exists():
            raise ColdpressError(f"{run} holds a codec training run; give the backbone branch its own --run folder")
        torch.manual_seed(args.seed)
        branch = ControlBranch.fresh(backbone, default_steps=args.fixed_steps or 2)
        state = {"step": 0, "config": branch.cfg.to_dict(), "backbone_fingerprint": backbone.fingerprint,
                 "history": [], "seconds": 0.0}
    branch.train().to(device)
    folders, images, rng, maker = training_pairs(args, state)
    params = [p for p in branch.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=args.lr)
    if (run / OPTIMIZER).exists() and not args.reset_optimizer:
        optimizer.load_state_dict(torch.load(run / OPTIMIZER, weights_only=True))
        for group in optimizer.param_groups:
            group["lr"] = args.lr
    scheduler = make_scheduler(branch.cfg)
    started = time.time()
    print(f"train: backbone control branch, {parameter_count(branch) / 1e6:.2f} M trainable parameters on a frozen "
          f"{parameter_count(backbone.unet) / 1e6:.2f} M UNet, {len(images)} images on {device}; pool of {args.pool} "
          "pairs", file=sys.stderr)
    pool = [maker.make() for _ in range(args.pool)]

    def step_losses() -> dict[str, torch.Tensor]:
        x0, c, bpp = next_batch(pool, maker, rng, args.batch, args.refresh)
        return branch_losses(branch, backbone, scheduler, x0.to(device), c.to(device), bpp.to(device),
                             args.fixed_steps, seed=rng.randrange(1 << 62))

    fields = ("step", "seconds", "loss", "diffusion", "chain_mse", "chain_ms_ssim", "chain_freq", "lr")
    return run_segment(args, state, run, log_name=LOG, fields=fields, step_losses=step_losses, params=params,
                       optimizer=optimizer, save=lambda st: _save_run(run, branch, backbone, optimizer, st),
                       device=device, folders=folders, started=started)


def export_branch(args: argparse.Namespace, state: dict) -> Path:
    """Float16 branch weights and a model card as ``args.model_id`` in ``args.export_to`` (default: the run)."""
    run = Path(args.run)
    backbone = load_backbone(args.decoder_backbone, "cpu")
    branch, _, _ = load_branch(run / CHECKPOINT, backbone)
    folder = Path(args.export_to) if args.export_to else run
    path = folder / f"{args.model_id}.safetensors"
    digest = save_branch(branch, backbone, path, args.model_id, {"step": str(state["step"]), "history": state["history"]})
    size_mb = path.stat().st_size / 1e6
    card = [
        f"# Model card: {args.model_id} (diffusion decoder, Stable Diffusion backbone branch)", "",
        "A ControlNet branch (diffusers ControlNetModel.from_unet, with a rate embedding and a learned null text "
        "embedding) on a frozen Stable Diffusion UNet and VAE: relay residual diffusion (RDEIC) in the VAE latent "
        "from the coarse reconstruction plus noise, conditioned on the coarse image and the bitstream's bits per "
        "pixel. Restore needs the backbone folder it was trained on (not stored here; checked by fingerprint).",
        "",
        f"- weights: `{path.name}`, sha256 `{digest}`, {size_mb:.1f} MB (float16)",
        f"- backbone fingerprint: `{backbone.fingerprint}` (configs), weights probe `{backbone.weights_probe[:16]}`",
        f"- branch: {parameter_count(branch) / 1e6:.2f} M parameters; relay start {branch.cfg.start_timestep} of "
        f"{branch.cfg.num_train_timesteps}, prediction {branch.cfg.prediction_type}, default steps {branch.cfg.default_steps}",
        f"- training: {history_summary(state)}",
        "- losses: diffusion (the backbone's parameterisation of the folded noise) + the fixed-step chain's pixel MSE, "
        "MS-SSIM and Laplacian band-energy L1 through the frozen VAE decoder; no downloaded networks",
        "- reproduce: `coldpress train --stage diffusion --decoder-backbone PATH --run RUN ...` (history in the "
        f"run's {STATE})",
    ]
    path.with_suffix(".md").write_text("\n".join(card) + "\n")
    print(f"train: exported {path} ({size_mb:.1f} MB, sha256 {digest[:16]}); not registered in MODELS.json",
          file=sys.stderr)
    return path


def train_backbone(args: argparse.Namespace) -> int:
    """``coldpress train --stage diffusion --decoder-backbone PATH``: train, then export with --model-id."""
    _check_args(args)
    run = Path(args.run)
    if args.steps > 0 or not (run / CHECKPOINT).exists():
        state = train_branch(args)
    else:
        state = json.loads((run / STATE).read_text())
    if args.model_id:
        export_branch(args, state)
    return 0
