"""`coldpress train --stage diffusion`: train the diffusion decoder with the codec frozen; resumable.

Training pairs come from the frozen codec itself: a random crop of a training image is coded at a random
rate knob and downscale factor (real bitstreams: ``_code_latent``), reconstructed by the codec's coarse
decoder, and kept with the bitstream's bits per pixel. A pool of such pairs (``--pool``) is made at the
start and refreshed a few pairs per step (coding a crop costs about as much as a training step).

Each step has two losses, both on pixels and needing no downloaded network:

- the diffusion loss: a random timestep t <= N of the relay-residual forward process (noise and the
  coarse-minus-original residual folded together, ``relay.relay_state``), the denoiser predicts x0, MSE;
- fixed-step fine-tuning (RDEIC): the whole ``--fixed-steps``-step decode chain from the relay start with
  gradients through every step, on MSE + (1 - MS-SSIM) and a frequency loss that matches the local
  energy of the Laplacian bands (the texture the coarse decode smears), so that the decoder restores
  detail of the right strength without having to guess its phase.

Run state (``--run DIR``, shared with nothing of the codec's): ``decoder.safetensors`` (float weights),
``optimizer.pt``, ``state.json`` (step, config, history of segments), ``log.csv``. ``--model-id`` exports
float16 weights plus a model card into the package's weights folder (``--export-to`` elsewhere) and lists
them under ``decoders`` in MODELS.json (``--register`` makes them the default decoder).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from coldpress.codec.diffusion.denoiser import DenoiserConfig, RelayDenoiser, parameter_count
from coldpress.codec.diffusion.relay import make_scheduler, relay_state, sample
from coldpress.codec.diffusion.weights import save_decoder
from coldpress.jobs.finite_steps import refuse_non_finite
from coldpress.jobs.training_segment import history_summary, run_segment

CHECKPOINT = "decoder.safetensors"
#: Loss weights of the fixed-step chain.
W_MS_SSIM = 0.2
W_FREQ = 1.0


# -- training pairs from the frozen codec ----------------------------------------------------------
class PairMaker:
    """(original, coarse, bpp) crops coded by the frozen learned codec at random rates and scales."""

    def __init__(self, images: list[np.ndarray], crop: int, codec_models: list[str | None], rng: random.Random):
        from coldpress.codec import get_codec

        self.images, self.crop, self.rng = images, crop, rng
        self.codecs = [get_codec("learned", model=m, device="cpu", scale_search=False) if m else
                       get_codec("learned", device="cpu", scale_search=False) for m in codec_models]

    def make(self) -> tuple[np.ndarray, np.ndarray, float]:
        from coldpress.codec import container
        from coldpress.codec.learned import Q_STEPS, SCALES_EIGHTHS

        rng, crop = self.rng, self.crop
        img = self.images[rng.randrange(len(self.images))]
        h, w = img.shape[:2]
        top, left = rng.randrange(h - crop + 1), rng.randrange(w - crop + 1)
        x = np.ascontiguousarray(img[top:top + crop, left:left + crop])
        codec = self.codecs[rng.randrange(len(self.codecs))]
        eighths = rng.choice(SCALES_EIGHTHS)
        q16 = rng.randrange(0, (codec.net.cfg.rate_points - 1) * Q_STEPS + 1)
        payload = codec._code_latent(codec.analysis(x, eighths), q16)
        params = {"q": q16, "s": eighths}
        coarse = codec._reconstruct(payload, params, crop, crop, preview=True)
        data = container.pack(container.Bitstream(
            codec="learned", width=crop, height=crop, mode="RGB", payload=payload, params=params,
            model_id=codec.model_id, weights_hash=codec.weights_hash))
        return x, coarse, 8.0 * len(data) / (crop * crop)


def to_unit(batch: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1]."""
    return torch.from_numpy(np.array(batch)).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def augment(x: torch.Tensor, c: torch.Tensor, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    k = rng.randrange(4)
    if k:
        x, c = torch.rot90(x, k, (-2, -1)), torch.rot90(c, k, (-2, -1))
    if rng.random() < 0.5:
        x, c = x.flip(-1), c.flip(-1)
    return x, c


def next_batch(pool: list, maker: PairMaker, rng: random.Random, batch: int, refresh: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Replace ``refresh`` random pairs of ``pool`` with new ones, then draw ``batch`` pairs, augmented:
    (originals, coarse decodes) in [-1, 1] and their bits per pixel."""
    for _ in range(refresh):
        pool[rng.randrange(len(pool))] = maker.make()
    picks = [pool[rng.randrange(len(pool))] for _ in range(batch)]
    x0, c = augment(to_unit(np.stack([p[0] for p in picks])), to_unit(np.stack([p[1] for p in picks])), rng)
    return x0, c, torch.tensor([p[2] for p in picks])


# -- losses -------------------------------------------------------------------------------------
def _blur(x: torch.Tensor) -> torch.Tensor:
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=x.device, dtype=x.dtype) / 16
    k2 = (k[:, None] * k[None, :]).expand(x.shape[1], 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), k2, groups=x.shape[1])


def band_energies(x: torch.Tensor, levels: int = 3, window: int = 8) -> list[torch.Tensor]:
    """Local mean absolute value of each Laplacian band (finest first), pooled over ``window`` px."""
    out = []
    for _ in range(levels):
        low = _blur(x)
        out.append(F.avg_pool2d((x - low).abs(), window, stride=window // 2))
        x = F.avg_pool2d(low, 2)
    return out


def frequency_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return sum(F.l1_loss(a, b) for a, b in zip(band_energies(x_hat), band_energies(x)))


def ms_ssim_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    from pytorch_msssim import ms_ssim

    a, b = x_hat.add(1).div(2).clamp(0, 1), x.add(1).div(2)
    if min(x.shape[-2:]) > 160:
        return 1 - ms_ssim(a, b, data_range=1.0, size_average=True)  # 5 scales need more than 160 px
    from pytorch_msssim import ssim

    return 1 - ssim(a, b, data_range=1.0, size_average=True)


def losses(net: RelayDenoiser, scheduler, cfg: DenoiserConfig, x0: torch.Tensor, c: torch.Tensor,
           bpp: torch.Tensor, fixed_steps: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn(x0.shape, generator=g).to(x0.device)
    t = torch.randint(1, cfg.start_timestep + 1, (x0.shape[0],), generator=g).to(x0.device)
    x_t = relay_state(scheduler, cfg, x0, c, noise, t)
    diffusion = F.mse_loss(net(x_t, c, t, bpp), x0)
    out = {"diffusion": diffusion}
    if fixed_steps:
        x_hat = sample(lambda x, step: net(x, c, step, bpp), cfg, c, fixed_steps, 1.0, g)
        out["chain_mse"] = F.mse_loss(x_hat, x0)
        out["chain_ms_ssim"] = ms_ssim_loss(x_hat, x0)
        out["chain_freq"] = frequency_loss(x_hat, x0)
        out["coarse_freq"] = frequency_loss(c, x0).detach()
        out["loss"] = diffusion + out["chain_mse"] + W_MS_SSIM * out["chain_ms_ssim"] + W_FREQ * out["chain_freq"]
    else:
        out["loss"] = diffusion
    return out


# -- run state ----------------------------------------------------------------------------------
def _save(run: Path, net: RelayDenoiser, optimizer, state: dict) -> None:
    from safetensors.torch import save_file

    run.mkdir(parents=True, exist_ok=True)
    tmp = run / f".{CHECKPOINT}.tmp"
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    refuse_non_finite(tensors, run, state["step"])
    save_file(tensors, str(tmp),
              metadata={"kind": "coldpress-diffusion-decoder", "config": json.dumps(net.cfg.to_dict()),
                        "step": str(state["step"])})
    os.replace(tmp, run / CHECKPOINT)
    if optimizer is not None:
        torch.save(optimizer.state_dict(), run / ".optimizer.pt.tmp")
        os.replace(run / ".optimizer.pt.tmp", run / "optimizer.pt")
    tmp = run / ".state.json.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, run / "state.json")


def load_run(run: Path) -> tuple[RelayDenoiser, dict]:
    from coldpress.codec.diffusion.weights import build_decoder
    from coldpress.codec.models import load_weights

    tensors, meta, _ = load_weights(run / CHECKPOINT)
    _, net = build_decoder(tensors, meta)
    return net.train(), json.loads((run / "state.json").read_text())


def _load_images(folders: list[str], min_side: int, seed: int) -> list[np.ndarray]:
    from coldpress.transforms.sources import list_images, read_rgb

    images = []
    for folder in folders:
        for uri in list_images(folder):
            try:
                im = read_rgb(uri)
            except Exception as exc:  # noqa: BLE001 - a broken training file is skipped, with a note
                print(f"train: skipping {uri}: {exc}", file=sys.stderr)
                continue
            if min(im.shape[:2]) >= min_side:
                images.append(im)
    return images


def training_pairs(args: argparse.Namespace, state: dict) -> tuple[list[str], list[np.ndarray], random.Random, PairMaker]:
    """(folders, images, rng, maker): the training images of ``--data`` (at least ``--crop`` a side) and the
    pair maker over them, seeded by ``--seed`` and the run's step so that a resumed run goes on, not repeats."""
    from coldpress.errors import ColdpressError
    from coldpress.jobs.train import DEFAULT_DATA

    folders = args.data or [DEFAULT_DATA]
    images = _load_images(folders, args.crop, args.seed)
    if not images:
        raise ColdpressError(f"no training image of at least {args.crop} px a side in {folders}; pass --data FOLDER")
    rng = random.Random(args.seed * 1_000_003 + state["step"])
    return folders, images, rng, PairMaker(images, args.crop, args.codec_model or [None], rng)


def train(args: argparse.Namespace) -> dict:
    from coldpress.errors import ColdpressError

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    run = Path(args.run)
    if (run / CHECKPOINT).exists():
        net, state = load_run(run)
        print(f"train: resuming {run} at step {state['step']}", file=sys.stderr)
    else:
        if (run / "checkpoint.safetensors").exists():
            raise ColdpressError(f"{run} holds a codec training run; give the diffusion decoder its own --run folder")
        cfg = DenoiserConfig(default_steps=args.fixed_steps or 2)
        torch.manual_seed(args.seed)
        net = RelayDenoiser(cfg).train()
        state = {"step": 0, "config": cfg.to_dict(), "history": [], "seconds": 0.0}
    cfg = net.cfg
    net.to(device)
    folders, images, rng, maker = training_pairs(args, state)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    if (run / "optimizer.pt").exists() and not args.reset_optimizer:
        optimizer.load_state_dict(torch.load(run / "optimizer.pt", weights_only=True))
        for group in optimizer.param_groups:
            group["lr"] = args.lr
    scheduler = make_scheduler(cfg)
    print(f"train: diffusion decoder, {parameter_count(net) / 1e6:.2f} M parameters, {len(images)} images from "
          f"{folders} on {device}; making a pool of {args.pool} pairs", file=sys.stderr)
    started = time.time()
    pool = [maker.make() for _ in range(args.pool)]
    print(f"train: pool made in {time.time() - started:.0f} s", file=sys.stderr)

    def step_losses() -> dict[str, torch.Tensor]:
        x0, c, bpp = next_batch(pool, maker, rng, args.batch, args.refresh)
        return losses(net, scheduler, cfg, x0.to(device), c.to(device), bpp.to(device), args.fixed_steps,
                      seed=rng.randrange(1 << 62))

    def chain_psnr(row: dict) -> None:
        if "chain_mse" in row:
            row["chain_psnr"] = 10 * math.log10(4.0 / max(row["chain_mse"], 1e-12))

    fields = ("step", "seconds", "loss", "diffusion", "chain_mse", "chain_ms_ssim", "chain_freq", "coarse_freq",
              "chain_psnr", "lr")
    return run_segment(args, state, run, log_name="log.csv", fields=fields, step_losses=step_losses,
                       params=list(net.parameters()), optimizer=optimizer,
                       save=lambda st: _save(run, net, optimizer, st), device=device, folders=folders,
                       derived=chain_psnr, started=started)


# -- evaluation and export -------------------------------------------------------------------------
@torch.no_grad()
def evaluate(args: argparse.Namespace, net: RelayDenoiser, limit: int = 4) -> dict:
    """Coarse vs diffusion decode (default steps, detail 1) of the first ``limit`` images of ``--eval``
    coded at 0.03 and 0.05 bpp: PSNR and high-frequency energy ratio."""
    from coldpress import metrics
    from coldpress.codec import get_codec
    from coldpress.codec.diffusion.decoder import bitstream_bpp, seed_of
    from coldpress.codec.diffusion.denoiser import pad_to
    from coldpress.transforms.sources import list_images, read_rgb

    codec = get_codec("learned", device="cpu")
    net.eval()
    cfg = net.cfg
    rows = []
    for uri in list_images(args.eval)[:limit]:
        img = read_rgb(uri)
        for target in (0.03, 0.05):
            data = codec.encode(img, target).bitstream
            coarse = codec.decode(data)
            h, w = img.shape[:2]
            c = pad_to(to_unit(coarse[None]), cfg.align)
            bpp = bitstream_bpp(data, w, h)
            x0 = sample(lambda x, t: net(x, c, t, bpp), cfg, c, cfg.default_steps, 1.0,
                        torch.Generator("cpu").manual_seed(seed_of(data)))
            out = x0[0, :, :h, :w].add(1).mul(127.5).clamp(0, 255).round().byte().permute(1, 2, 0).numpy()
            e_orig = float(band_energies(to_unit(img[None]), 1)[0].mean())
            rows.append({"image": Path(uri).name, "target_bpp": target, "bpp": bpp,
                         "psnr_coarse": metrics.psnr(img, coarse), "psnr_diffusion": metrics.psnr(img, out),
                         "hf_coarse": float(band_energies(to_unit(coarse[None]), 1)[0].mean()) / e_orig,
                         "hf_diffusion": float(band_energies(to_unit(out[None]), 1)[0].mean()) / e_orig})
    net.train()
    means = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0] if k not in ("image",)} if rows else {}
    return {"folder": f"first {limit} images of {args.eval}", "rows": rows, "means": means}


def export(args: argparse.Namespace, state: dict, evaluation: dict | None) -> Path:
    from coldpress.codec.models import REGISTRY_FILE, WEIGHTS_DIR, registry

    net, _ = load_run(Path(args.run))
    folder = Path(args.export_to) if args.export_to else WEIGHTS_DIR
    path = folder / f"{args.model_id}.safetensors"
    digest = save_decoder(net, path, args.model_id, {"step": str(state["step"]), "history": state["history"]})
    size_mb = path.stat().st_size / 1e6
    card = [
        f"# Model card: {args.model_id} (diffusion decoder)", "",
        "The diffusion decoder of coldpress (`coldpress restore --decoder diffusion`): relay residual diffusion "
        "(RDEIC) in pixel space folded 4x4, a diffusers UNet2DModel without attention conditioned on the coarse "
        "reconstruction and the bitstream's bits per pixel, sampled by a diffusers DDPMScheduler with custom "
        "timesteps from the relay start. It serves every codec model (it sees only the coarse image and the rate).",
        "",
        f"- weights: `{path.name}`, sha256 `{digest}`, {size_mb:.1f} MB (float16)",
        f"- architecture: `{json.dumps(net.cfg.to_dict())}`; {parameter_count(net) / 1e6:.2f} M parameters",
        f"- training: {history_summary(state)}",
        "- losses: diffusion (x0 MSE at a random relay timestep) + the fixed-step decode chain's MSE, "
        f"{W_MS_SSIM} x (1 - MS-SSIM; SSIM on crops of 160 px or less) and {W_FREQ} x Laplacian band-energy L1; "
        "no downloaded networks",
        f"- training folders: {', '.join(state['history'][-1]['data']) if state['history'] else '-'}",
        f"- evaluation: `{json.dumps(evaluation['means']) if evaluation else 'not run'}` "
        f"({evaluation['folder'] if evaluation else ''})",
        "- reproduce: `coldpress train --stage diffusion --run RUN ...` (history in the run's state.json)",
    ]
    path.with_suffix(".md").write_text("\n".join(card) + "\n")
    if folder.resolve() == WEIGHTS_DIR.resolve():
        reg = registry()
        reg.setdefault("decoders", {})[args.model_id] = {"file": path.name, "sha256": digest}
        if args.register or not reg.get("default_decoder"):
            reg["default_decoder"] = args.model_id
        REGISTRY_FILE.write_text(json.dumps(reg, indent=1) + "\n")
    print(f"train: exported {path} ({size_mb:.1f} MB, sha256 {digest[:16]})", file=sys.stderr)
    return path


def run(args: argparse.Namespace) -> int:
    if args.decoder_backbone:
        from coldpress.jobs.train_backbone import train_backbone

        return train_backbone(args)
    run_dir = Path(args.run)
    if args.steps > 0 or not (run_dir / CHECKPOINT).exists():
        state = train(args)
    else:
        state = json.loads((run_dir / "state.json").read_text())
    evaluation = None
    if args.eval:
        net, _ = load_run(run_dir)
        evaluation = evaluate(args, net)
        print(json.dumps(evaluation["means"], indent=1), file=sys.stderr)
        state["evaluation"] = evaluation
        (run_dir / "state.json").write_text(json.dumps(state, indent=1))
    if args.model_id:
        export(args, state, evaluation)
    return 0
