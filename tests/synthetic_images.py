"""Small generated test images that code like natural ones: smooth gradients, shapes, edges, noise."""

from __future__ import annotations

import contextlib

import numpy as np


def natural_image(height: int = 96, width: int = 128, mode: str = "RGB", seed: int = 0) -> np.ndarray:
    """A deterministic uint8 image of ``mode`` ("L", "LA", "RGB", "RGBA").

    RGB: a smooth colour gradient, a few filled discs and rectangles with hard edges, a soft
    sinusoidal texture and a little Gaussian noise. The alpha plane of LA/RGBA is not opaque:
    a radial ramp with a fully transparent corner.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = x / max(width - 1, 1), y / max(height - 1, 1)
    rgb = np.stack(
        [60 + 140 * u, 40 + 160 * v, 180 - 120 * u * v], axis=2
    ) + 12 * np.sin(2 * np.pi * (3 * u + 2 * v))[:, :, None]
    for _ in range(6):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.08, 0.25) * min(width, height)
        colour = rng.uniform(0, 255, size=3)
        if rng.random() < 0.5:
            inside = (x - cx) ** 2 + (y - cy) ** 2 < r**2
        else:
            inside = (abs(x - cx) < r) & (abs(y - cy) < 0.6 * r)
        rgb[inside] = colour
    rgb += rng.normal(0, 3, size=(height, width, 1))  # sensor-like noise, mostly in luma
    rgb = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    if mode == "RGB":
        return rgb
    gray = np.round(rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
    gray = np.clip(gray, 0, 255).astype(np.uint8)
    alpha = np.clip(255 * (1.4 - np.hypot(u - 0.3, v - 0.4) * 1.6), 0, 255).astype(np.uint8)
    alpha[: height // 6, : width // 6] = 0
    if mode == "L":
        return gray
    if mode == "LA":
        return np.stack([gray, alpha], axis=2)
    if mode == "RGBA":
        return np.concatenate([rgb, alpha[:, :, None]], axis=2)
    raise ValueError(f"unknown mode {mode!r}")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """coldpress's PSNR (colour channels, capped at 99 dB) of two uint8 images of the same shape."""
    from coldpress.metrics import psnr as coldpress_psnr

    return coldpress_psnr(a, b)


def model_file(folder, model_id: str = "test-model-file", source: str | None = None, **metadata):
    """A learned model given as a file, not in the registry: the shipped default's weights saved
    under another model id (what `coldpress train --export-to DIR` gives a user)."""
    from pathlib import Path

    from safetensors import safe_open
    from safetensors.torch import save_file

    from coldpress.codec.models import load_model

    source = load_model(source).path
    with safe_open(str(source), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["model_id"] = model_id
    meta.update(metadata)  # e.g. decode_precision="float32"
    path = Path(folder) / f"{model_id}.safetensors"
    save_file(tensors, str(path), metadata=meta)
    return path


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with torch on ``n`` threads (the reproducibility tests compare this process on 2
    threads with a child process on 1: another process and another thread count at once)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
