"""One segment of a diffusion decoder's training run, shared by the pixel decoder's job (``train_diffusion.py``)
and the Stable Diffusion backbone branch's (``train_backbone.py``): steps until ``--steps`` or
``--max-minutes``, each applied only when finite (``finite_steps.FiniteSteps``), mean losses logged to the
run's CSV every ``--log-every`` steps, a checkpoint every ``--checkpoint-minutes``, and at the end the
segment's entry in the run's history and a last checkpoint."""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from coldpress.jobs.finite_steps import FiniteSteps


def run_segment(args: argparse.Namespace, state: dict, run: Path, *, log_name: str, fields: tuple[str, ...],
                step_losses: Callable[[], dict[str, torch.Tensor]], params: list, optimizer,
                save: Callable[[dict], None], device: torch.device, folders: list[str],
                derived: Callable[[dict], None] | None = None, started: float | None = None) -> dict:
    """Train from ``state["step"]``: ``step_losses()`` gives one step's losses (``loss`` the one optimised),
    ``save(state)`` writes the run's checkpoint, ``derived(row)`` adds figures computed from a logged row's
    means; ``started``: when the segment's work began (its pool of pairs counts), default now. Returns
    ``state``, saved, with the segment in its ``history``."""
    steps = FiniteSteps(state, run, args.lr)
    start_step, started = state["step"], started or time.time()
    run.mkdir(parents=True, exist_ok=True)
    log_path = run / log_name
    new_log = not log_path.exists()
    last_ckpt = time.time()
    with open(log_path, "a", newline="") as f:
        log = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new_log:
            log.writeheader()
        sums: dict[str, float] = {}
        count = 0
        while state["step"] - start_step < args.steps:
            if args.max_minutes and time.time() - started > args.max_minutes * 60:
                break
            out = step_losses()
            applied = steps.apply(out["loss"], params, optimizer)
            state["step"] += 1
            if steps.diverged:
                raise steps.error()
            if not applied:
                continue
            count += 1
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            if state["step"] % args.log_every == 0:
                row = {k: v / count for k, v in sums.items()}
                if derived is not None:
                    derived(row)
                row.update(step=state["step"], seconds=round(state["seconds"] + time.time() - started, 1), lr=args.lr)
                log.writerow(row)
                f.flush()
                if not getattr(args, "quiet", False):
                    print("train: " + " ".join(f"{k} {row[k]:.4g}" for k in fields if k in row and k != "lr"),
                          file=sys.stderr)
                sums, count = {}, 0
            if time.time() - last_ckpt > args.checkpoint_minutes * 60:
                save({**state, "seconds": state["seconds"] + time.time() - started})
                last_ckpt = time.time()
    elapsed = time.time() - started
    state["history"].append({
        "from_step": start_step, "to_step": state["step"], "minutes": round(elapsed / 60, 1),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "lr": args.lr, "batch": args.batch, "crop": args.crop, "fixed_steps": args.fixed_steps, "pool": args.pool,
        "data": folders, "codec_models": args.codec_model or ["default"],
    })
    state["seconds"] += elapsed
    save(state)
    print(f"train: stopped at step {state['step']} after {elapsed / 60:.1f} min", file=sys.stderr)
    return state


def history_summary(state: dict) -> str:
    """A run's training in one line, for model cards: its steps and minutes, and each segment's settings."""
    minutes = sum(h["minutes"] for h in state["history"])
    return f"{state['step']} steps, {minutes:.1f} minutes in all; " + "; ".join(
        f"steps {h['from_step']}-{h['to_step']}: {h['minutes']} min on {h['device']}, lr {h['lr']}, batch "
        f"{h['batch']} of {h['crop']}px crops, fixed-step chain {h['fixed_steps']}, codec {h['codec_models']}"
        for h in state["history"])
