"""The training loop, evaluation and export behind `coldpress train` (imports torch; the CLI module does not)."""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from coldpress.codec.networks import ExtremeCodecNet, NetConfig
from coldpress.jobs.finite_steps import FiniteSteps, refuse_non_finite
from coldpress.jobs.train import DEFAULT_DATA
from coldpress.metrics import psnr_from_mse
from coldpress.transforms.sources import list_images, read_rgb

def load_images(paths: list[str], min_side: int, device: torch.device) -> list[torch.Tensor]:
    """Decode every image into a uint8 (3,H,W) tensor on ``device``; skip those smaller than a crop."""
    images = []
    for p in paths:
        try:
            im = read_rgb(p)
        except Exception as exc:  # noqa: BLE001 - a broken training file is skipped, with a note
            print(f"train: skipping {p}: {exc}", file=sys.stderr)
            continue
        if min(im.shape[:2]) < min_side:
            continue
        images.append(torch.from_numpy(im.copy()).permute(2, 0, 1).to(device))
    return images


def random_batch(images: list[torch.Tensor], batch: int, crop: int, rng: random.Random) -> torch.Tensor:
    out = []
    for _ in range(batch):
        img = images[rng.randrange(len(images))]
        _, h, w = img.shape
        top, left = rng.randrange(h - crop + 1), rng.randrange(w - crop + 1)
        patch = img[:, top : top + crop, left : left + crop]
        if rng.random() < 0.5:
            patch = patch.flip(2)
        out.append(patch)
    return torch.stack(out).float().div_(255.0)


def rd_loss(model: ExtremeCodecNet, x: torch.Tensor, q: torch.Tensor) -> dict:
    out = model(x, q)
    n_pixels = x.shape[2] * x.shape[3]
    bits = sum(torch.log(l).flatten(1).sum(1) for l in out["likelihoods"].values()) / -math.log(2)
    bpp = bits / n_pixels
    mse = (out["x_hat"] - x).pow(2).flatten(1).mean(1)
    lam = model.lambda_for(q)
    loss = (lam * 255**2 * mse + bpp).mean()
    return {"loss": loss, "bpp": bpp.mean(), "mse": mse.mean()}


@torch.no_grad()
def hyperprior_of(model: ExtremeCodecNet, x: torch.Tensor, q: torch.Tensor):
    """(gain-scaled latent y, hyperprior means, scales, inverse gain) of ``x`` at knobs ``q``, with the
    quantized hyper-latent, as coding sees them (no gradient)."""
    gain, inv_gain = model.gains(q)
    y = model.g_a(x) * gain
    z_hat, _ = model.entropy_bottleneck(model.h_a(y), training=False)
    means, scales = model.h_s(z_hat)
    return y, means, scales, inv_gain


def context_rate_loss(model: ExtremeCodecNet, x: torch.Tensor, q: torch.Tensor) -> dict:
    """Rate of the latent with the transforms frozen: only the contexts (checkerboard, channel) learn (no
    decoder run)."""
    y, means, scales, _ = hyperprior_of(model, x, q)
    c_means, c_scales = model.context_parameters(y, means, scales)
    _, y_lik = model.gaussian_conditional(y, c_scales, means=c_means)
    # The rate of the latent y (z is fixed).
    bpp = torch.log(y_lik.clamp_min(1e-9)).flatten(1).sum(1) / -math.log(2) / (x.shape[2] * x.shape[3])
    return {"loss": bpp.mean(), "bpp": bpp.mean(), "mse": torch.tensor(float("nan"))}


@torch.no_grad()
def decoded_latent(model: ExtremeCodecNet, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """What the synthesis reads when a bitstream of ``x`` at knob ``q`` is decoded: the latent rounded
    around its entropy model's means, times the inverse gain."""
    y, means, scales, inv_gain = hyperprior_of(model, x, q)
    if model.cfg.context == "checkerboard":
        means, _ = model.context_parameters(y, means, scales)
    return (torch.round(y - means) + means) * inv_gain


def synthesis_loss(model: ExtremeCodecNet, x: torch.Tensor, q: torch.Tensor) -> dict:
    """Distortion of the synthesis alone on decoded latents (the encoder and entropy models frozen, so
    the rate does not move): the mean over the batch of log MSE, i.e. of PSNR, so that every knob counts
    alike whatever its MSE."""
    mse = (model.g_s(decoded_latent(model, x, q)) - x).pow(2).flatten(1).mean(1)
    return {"loss": torch.log(mse.clamp_min(1e-10)).mean(), "bpp": torch.tensor(float("nan")), "mse": mse.mean()}


@torch.no_grad()
def channel_order_by_rate(model: ExtremeCodecNet, images: list[torch.Tensor], crop: int, rng: random.Random,
                          batches: int = 8) -> torch.Tensor:
    """The latent's channels by the bits they take (most first) on random crops at random knobs: the
    coding order of a new channel context, so that its first slices carry the most information."""
    bits = torch.zeros(model.cfg.latent_channels, dtype=torch.float64)
    for _ in range(batches):
        x = random_batch(images, 8, crop, rng)
        q = torch.rand(8, generator=torch.Generator().manual_seed(rng.randrange(1 << 30))) * (model.cfg.rate_points - 1)
        y, means, scales, _ = hyperprior_of(model, x, q.to(x.device))
        _, y_lik = model.gaussian_conditional(y, scales, means=means, training=False)
        bits += (-torch.log2(y_lik.clamp_min(1e-9))).sum(dim=(0, 2, 3)).double().cpu()
    return torch.argsort(bits, descending=True, stable=True)


@torch.no_grad()
def evaluate(model: ExtremeCodecNet, paths: list[str], qs: list[float], device: torch.device) -> list[dict]:
    """Estimated rate (from likelihoods) and PSNR of whole images at rate knobs ``qs``."""
    model.eval()
    stride = model.cfg.total_stride
    images = [read_rgb(p) for p in paths]  # read once, coded at every q
    results = []
    for q in qs:
        bpps, psnrs = [], []
        for im in images:
            h, w = im.shape[:2]
            x = torch.from_numpy(im.copy()).permute(2, 0, 1)[None].float().div(255).to(device)
            ph, pw = (-h) % stride, (-w) % stride
            xp = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")
            out = model(xp, torch.full((1,), float(q), device=device))
            bits = sum(torch.log(l).sum() for l in out["likelihoods"].values()) / -math.log(2)
            x_hat = out["x_hat"][..., :h, :w].clamp(0, 1)
            mse = float(((x_hat * 255).round() / 255 - x).pow(2).mean())
            bpps.append(float(bits) / (h * w))
            psnrs.append(psnr_from_mse(mse, peak=1.0))
        results.append({"q": q, "bpp": sum(bpps) / len(bpps), "psnr": sum(psnrs) / len(psnrs)})
    model.train()
    return results


def save_checkpoint(run: Path, model, optimizer, aux_optimizer, state: dict) -> None:
    from safetensors.torch import save_file

    run.mkdir(parents=True, exist_ok=True)
    tmp = run / ".checkpoint.safetensors.tmp"
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    refuse_non_finite(sd, run, state["step"])
    save_file(sd, str(tmp), metadata={"config": json.dumps(model.cfg.to_dict()), "step": str(state["step"])})
    os.replace(tmp, run / "checkpoint.safetensors")
    tmp = run / ".optimizer.pt.tmp"
    torch.save({"main": optimizer.state_dict(), "aux": aux_optimizer.state_dict()}, tmp)
    os.replace(tmp, run / "optimizer.pt")
    save_state(run, state)


def save_state(run: Path, state: dict) -> None:
    """Write the run's state.json atomically (a reader never sees half a file)."""
    tmp = run / ".state.json.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, run / "state.json")


def parameter_groups(model: ExtremeCodecNet, train_only: str = "all"):
    """(main, aux) parameters to optimize; with ``train_only`` "context" (the checkerboard and channel
    contexts), "channel" (the channel context alone) or "synthesis" everything else is frozen."""
    if train_only == "synthesis":
        for n, p in model.named_parameters():
            p.requires_grad_(n.startswith("g_s."))
        return [p for n, p in model.named_parameters() if n.startswith("g_s.")], []
    if train_only in ("context", "channel"):
        if model.cfg.context == "none":
            raise SystemExit("train: --train-only context needs a model with a context; add --context checkerboard")
        if train_only == "channel" and not model.cfg.slices:
            raise SystemExit("train: --train-only channel needs a channel context; add --slices 16,16,32,64,64")
        parts = _CONTEXT_PARTS if train_only == "context" else ("channel_context.",)
        for n, p in model.named_parameters():
            p.requires_grad_(n.startswith(parts))
        return [p for n, p in model.named_parameters() if n.startswith(parts)], []
    main = [p for n, p in model.named_parameters() if not n.endswith(".quantiles")]
    aux = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    return main, aux


_CONTEXT_PARTS = ("context.", "channel_context.")


def load_run_weights(model: ExtremeCodecNet, sd: dict) -> bool:
    """Load a checkpoint into ``model``; a context the checkpoint lacks starts fresh. True if it did."""
    missing = set(model.state_dict()) - set(sd)
    if missing and all(k.startswith(_CONTEXT_PARTS) for k in missing):
        model.load_state_dict({**model.state_dict(), **sd}, strict=True)
        return True
    model.load_state_dict(sd, strict=True)
    return False


def train(args: argparse.Namespace) -> dict:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Path(args.run)
    state_path = run / "state.json"
    if state_path.exists():
        state = json.loads(state_path.read_text())
        cfg = NetConfig.from_dict(state["config"])
        print(f"train: resuming {run} at step {state['step']}")
    else:
        cfg = NetConfig(latent_stride=args.latent_stride)
        state = {"step": 0, "seconds": 0.0, "config": cfg.to_dict(), "data": [], "images": 0}
    context = getattr(args, "context", None)
    train_only = getattr(args, "train_only", "all")
    if context and context != cfg.context:
        cfg = replace(cfg, context=context)
        state["config"] = cfg.to_dict()
        print(f"train: the model's context is now {context!r}")
    slices = tuple(getattr(args, "slices", None) or ())
    if slices and slices != tuple(cfg.slices):
        if cfg.slices:
            raise SystemExit(f"train: this run's channel slices are {list(cfg.slices)}; a run keeps its slices "
                             "(start another run folder from its checkpoint for others)")
        cfg = replace(cfg, slices=slices)
        state["config"] = cfg.to_dict()
        print(f"train: the model gets a channel context with slices {list(slices)}")
    dec_channels = tuple(getattr(args, "dec_channels", None) or ())
    teacher_cfg = None
    if dec_channels and dec_channels != tuple(cfg.dec_channels):
        if len(dec_channels) != len(cfg.dec_channels):
            raise SystemExit(f"train: --dec-channels needs {len(cfg.dec_channels)} counts, one per synthesis stage "
                             f"(this run's are {list(cfg.dec_channels)})")
        if train_only != "synthesis":
            raise SystemExit("train: --dec-channels cuts the synthesis out of a trained one; add --train-only synthesis")
        if not (run / "checkpoint.safetensors").exists():
            raise SystemExit(f"train: --dec-channels cuts a trained synthesis, and {run} holds no checkpoint; copy a "
                             f"trained run there first (for example cp -r checkpoints/cp-extreme-s16 {run})")
        teacher_cfg, cfg = cfg, replace(cfg, dec_channels=dec_channels)
        state["config"] = cfg.to_dict()
    model = ExtremeCodecNet(cfg).to(device)
    main_params, aux_params = parameter_groups(model, train_only)
    optimizer = torch.optim.Adam(main_params, lr=args.lr)
    aux_optimizer = torch.optim.Adam(aux_params or [torch.zeros(0, requires_grad=True)], lr=1e-3)
    if state.get("train_only", "all") != train_only:
        args.reset_optimizer = True  # another set of parameters: the saved optimizer state does not apply
    state["train_only"] = train_only
    sd = {}
    if (run / "checkpoint.safetensors").exists():
        from coldpress.codec.models import load_weights

        sd, _, _ = load_weights(run / "checkpoint.safetensors")
        if teacher_cfg is not None:
            teacher = ExtremeCodecNet(teacher_cfg).to(device)
            load_run_weights(teacher, sd)
            sd = {**{k: v for k, v in sd.items() if not k.startswith("g_s.")},
                  **{"g_s." + k: v for k, v in model.g_s.state_dict().items()}}
            args.reset_optimizer = True  # other parameter shapes
        if load_run_weights(model, sd):
            print("train: the checkpoint has no context weights; the context starts fresh")
            args.reset_optimizer = True
        if (run / "optimizer.pt").exists() and not args.reset_optimizer:
            opt = torch.load(run / "optimizer.pt", map_location=device, weights_only=True)
            optimizer.load_state_dict(opt["main"])
            aux_optimizer.load_state_dict(opt["aux"])
        for g in optimizer.param_groups:
            g["lr"] = args.lr

    folders = args.data or state["data"] or [DEFAULT_DATA]
    paths = list_images(folders)
    if not paths:
        raise SystemExit(f"train: no images found under {folders}; pass --data FOLDER (local path or fsspec URL)")
    images = load_images(paths, args.crop, device)
    print(f"train: {len(images)} images from {folders} on {device}; config {cfg.to_dict()}")
    if cfg.slices and not any(k.startswith("channel_context.") for k in sd):  # a new channel context
        model.channel_context.order.copy_(channel_order_by_rate(model, images, args.crop, random.Random(args.seed)))
        print(f"train: channel coding order by rate: {model.channel_context.order.tolist()}")
    if teacher_cfg is not None:
        prune_from(teacher, model, images, args, device)
        print(f"train: synthesis cut from {list(teacher_cfg.dec_channels)} to {list(dec_channels)} channels")
        del teacher
    for f in folders:
        if f not in state["data"]:
            state["data"].append(f)
    state["images"] = len(images)
    state["batch"], state["crop"] = args.batch, args.crop
    rng = random.Random(args.seed + state["step"])
    torch.manual_seed(args.seed + state["step"])
    log_path = run / "log.csv"
    run.mkdir(parents=True, exist_ok=True)
    new_log = not log_path.exists()
    log_file = open(log_path, "a", newline="")
    log = csv.writer(log_file)
    if new_log:
        log.writerow(["step", "seconds", "loss", "bpp", "mse", "psnr", "lr"])
    t0 = time.time()
    last_ckpt = t0
    deadline = t0 + args.max_minutes * 60 if args.max_minutes else None
    acc = {"loss": 0.0, "bpp": 0.0, "mse": 0.0, "n": 0}
    model.train()
    end_step = state["step"] + args.steps
    start_step, start_seconds = state["step"], state["seconds"]
    steps = FiniteSteps(state, run, args.lr)
    loss_of = {"all": rd_loss, "synthesis": synthesis_loss}.get(train_only, context_rate_loss)
    while state["step"] < end_step:
        x = random_batch(images, args.batch, args.crop, rng)
        q = torch.rand(args.batch, device=device) * (cfg.rate_points - 1)
        out = loss_of(model, x, q)
        applied = steps.apply(out["loss"], main_params, optimizer)
        if applied:
            if aux_params:
                aux_loss = model.aux_loss()
                aux_optimizer.zero_grad(set_to_none=True)
                if torch.isfinite(aux_loss):
                    aux_loss.backward()
                    aux_optimizer.step()
        state["step"] += 1
        if steps.diverged:
            log_file.close()
            raise steps.error()
        if applied:
            for k in ("loss", "bpp", "mse"):
                acc[k] += float(out[k].detach())
            acc["n"] += 1
        now = time.time()
        if (state["step"] % args.log_every == 0 or state["step"] == end_step) and acc["n"]:
            n = acc["n"]
            mse = acc["mse"] / n
            row = [state["step"], round(state["seconds"] + now - t0, 1), acc["loss"] / n, acc["bpp"] / n, mse,
                   psnr_from_mse(mse, peak=1.0), optimizer.param_groups[0]["lr"]]
            log.writerow(row)
            log_file.flush()
            print("train: step {} t={}s loss={:.4f} bpp={:.4f} mse={:.5f} psnr={:.2f} lr={:g}".format(*row), flush=True)
            acc = {"loss": 0.0, "bpp": 0.0, "mse": 0.0, "n": 0}
        if now - last_ckpt > args.checkpoint_minutes * 60:
            state["seconds"] += now - t0
            t0 = now
            save_checkpoint(run, model, optimizer, aux_optimizer, state)
            last_ckpt = now
        if deadline and now > deadline:
            print(f"train: --max-minutes {args.max_minutes} reached at step {state['step']}")
            break
    state["seconds"] += time.time() - t0
    state["device"] = str(device) if device.type == "cpu" else torch.cuda.get_device_name(device)
    if state["step"] > start_step:
        state.setdefault("history", []).append({
            "steps": [start_step, state["step"]], "minutes": round((state["seconds"] - start_seconds) / 60, 1),
            "device": state["device"], "threads": torch.get_num_threads() if device.type == "cpu" else None,
            "lr": args.lr, "batch": args.batch, "crop": args.crop, "train_only": train_only,
            **({"note": f"synthesis cut from {list(teacher_cfg.dec_channels)} to {list(dec_channels)} channels at "
                        "its start"} if teacher_cfg is not None else {}),
        })
    save_checkpoint(run, model, optimizer, aux_optimizer, state)
    log_file.close()
    print(f"train: checkpoint at step {state['step']} in {run}")
    if args.eval:
        evaluate_run(run, model, state, args.eval, device)
    return state


@torch.no_grad()
def prune_from(teacher: ExtremeCodecNet, model: ExtremeCodecNet, images: list[torch.Tensor],
               args: argparse.Namespace, device: torch.device) -> None:
    """Start ``model``'s lighter synthesis from ``teacher``'s most important channels, measured on the
    decoded latents of 32 training crops at random knobs (seeded)."""
    from coldpress.jobs.synthesis_pruning import prune_synthesis

    rng = random.Random(args.seed)
    x = random_batch(images, 32, args.crop, rng)
    q = torch.rand(32, generator=torch.Generator().manual_seed(args.seed)) * (teacher.cfg.rate_points - 1)
    prune_synthesis(teacher.g_s, model.g_s, decoded_latent(teacher, x, q.to(device)))


def evaluate_run(run: Path, model: ExtremeCodecNet, state: dict, folder: str, device: torch.device) -> dict:
    """Evaluate the run's model on ``folder`` at half-steps of the rate knob; saved in state.json and eval.json."""
    qs = [i * 0.5 for i in range(2 * (model.cfg.rate_points - 1) + 1)]
    paths = list_images([folder])
    if not paths:
        raise SystemExit(f"train: no images to evaluate under {folder}; pass --eval FOLDER with images in it")
    res = evaluate(model, paths, qs, device)
    state["eval"] = {"folder": folder, "step": state["step"], "points": res}
    (run / "eval.json").write_text(json.dumps(state["eval"], indent=1))
    save_state(run, state)
    for r in res:
        print(f"eval: q={r['q']:.1f} bpp={r['bpp']:.4f} psnr={r['psnr']:.2f}")
    return state


def evaluate_checkpoint(args: argparse.Namespace) -> dict:
    """``--steps 0 --eval FOLDER``: evaluate the run's checkpoint without training."""
    from coldpress.codec.export import load_checkpoint

    run = Path(args.run)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, _ = load_checkpoint(run / "checkpoint.safetensors")
    return evaluate_run(run, model, json.loads((run / "state.json").read_text()), args.eval, torch.device("cpu"))


def _segment_note(h: dict) -> str:
    """One training segment of a run's history, for the model card."""
    threads = f" ({h['threads']} threads)" if h.get("threads") else ""
    what = {"context": ", contexts only", "channel": ", channel context only",
            "synthesis": ", synthesis only"}.get(h.get("train_only"), "")
    note = f" ({h['note']})" if h.get("note") else ""
    return (f"steps {h['steps'][0]}-{h['steps'][1]}: {h['minutes']} min on {h['device']}{threads}, lr {h['lr']}, "
            f"batch {h['batch']} of {h['crop']}px crops{what}{note}")


def _licences(folders: list[str]) -> list[str]:
    """Licence notes of the training folders, from the MANIFEST.md of the data folder when present."""
    notes = []
    for folder in folders:
        root = Path(folder)
        manifest = next((p / "MANIFEST.md" for p in [root, *root.parents] if (p / "MANIFEST.md").exists()), None)
        if manifest is None:
            notes.append(f"{folder}: no MANIFEST.md found; check the licences of these images yourself")
            continue
        for line in manifest.read_text().splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 7 and cells[0].startswith("train/"):
                named = [c.strip().split("/", 1)[-1] for c in cells[0].split(",")]
                used = root.name in named or any((root / n).is_dir() for n in named)
                note = f"{cells[0]}: {cells[-1]} (origin: {cells[-2]})"
                if used and note not in notes:
                    notes.append(note)
    return notes


def export_run(args: argparse.Namespace, state: dict) -> Path:
    """Export the run's checkpoint to shippable weights, with a model card; optionally register it."""
    from coldpress.codec.export import export
    from coldpress.codec.models import REGISTRY_FILE, WEIGHTS_DIR, file_sha256, registry

    run = Path(args.run)
    calib_paths = list_images([args.eval or (state["data"] or [DEFAULT_DATA])[0]])[:8]
    calibration = [read_rgb(p) for p in calib_paths]
    eval_note = state.get("eval")
    card = {
        "training": f"{state['step']} steps, {state['seconds'] / 60:.1f} minutes in all; " + (
            "; ".join(_segment_note(h) for h in state.get("history", []))
            or f"last on {state.get('device', '?')}, random {state.get('crop', args.crop)}px square crops, "
               f"batch {state.get('batch', args.batch)}") + "; Adam",
        "training folders": ", ".join(state["data"]),
        "licences of the training data": "; ".join(_licences(state["data"])) or "see the folders' own terms",
        "final metrics (estimated rate on the eval folder)": json.dumps(eval_note) if eval_note else "not evaluated",
        "reproduce": f"coldpress train --run {run} ... (see coldpress/jobs/train.py); log in log.csv of the run",
    }
    out_dir = Path(args.export_to) if args.export_to else WEIGHTS_DIR
    path = export(run / "checkpoint.safetensors", out_dir, args.model_id, calibration, card)
    print(f"train: exported {path} (sha256 {file_sha256(path)})")
    if args.register or getattr(args, "ship", False):
        reg = registry()
        reg["models"][args.model_id] = {"file": path.name, "sha256": file_sha256(path)}
        if args.register:
            reg["default"] = args.model_id
        REGISTRY_FILE.write_text(json.dumps(reg, indent=1) + "\n")
        role = "the default learned model" if args.register else f"a learned model (default: {reg['default']})"
        print(f"train: registered {args.model_id} as {role} in {REGISTRY_FILE}")
    return path
