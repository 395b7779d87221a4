"""``coldpress bench speed``: frames per second, parameters and GFLOPs of a codec on one device."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from coldpress.jobs.bench.common import _device_name, _load_codec, _write_csv
from coldpress.versions import coldpress_version

SPEED_FIELDS = (
    "codec", "device", "stage", "batch", "width", "height", "repeat", "mean_s", "median_s", "min_s", "fps",
    "status", "note",
)


def _speed_image(path: str | None, width: int, height: int):
    """An RGB frame of width x height: --image (or the bundled coffee photo), resized (Lanczos)."""
    import numpy as np
    from PIL import Image

    from coldpress import samples_path

    source = Path(path) if path else samples_path() / "coffee.jpg"
    with Image.open(source) as im:
        return np.asarray(im.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)), str(source)


def _timings(fn, repeat: int, warmup: int, sync) -> list[float]:
    import time

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def _speed_row(codec: str, device: str, stage: str, batch: int, w: int, h: int, times: list[float], **extra) -> dict:
    import statistics

    mean = statistics.fmean(times)
    return {"codec": codec, "device": device, "stage": stage, "batch": batch, "width": w, "height": h,
            "repeat": len(times), "mean_s": mean, "median_s": statistics.median(times), "min_s": min(times),
            "fps": batch / mean, "status": "ok", "note": "", **extra}


def run_speed(args: argparse.Namespace) -> int:
    import datetime
    import json

    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from coldpress.errors import ColdpressError, RateUnreachableError
    from coldpress.jobs.cli import say

    if args.width < 1 or args.height < 1 or args.repeat < 1 or args.warmup < 0 or min(args.batch) < 1:
        raise ColdpressError("--width, --height, --repeat and --batch must be at least 1 and --warmup at least 0")
    codec, reason = _load_codec(args.codec, args)
    if codec is None:
        raise ColdpressError(f"cannot time {args.codec}: {reason}")
    device = str(getattr(codec, "device", "cpu"))
    device_name = _device_name(device)
    is_cuda = torch.device(device).type == "cuda"

    def sync() -> None:
        if is_cuda:
            torch.cuda.synchronize(device)

    w, h = args.width, args.height
    image, source = _speed_image(args.image, w, h)
    rows: list[dict[str, Any]] = []
    report: dict[str, Any] = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "coldpress_version": coldpress_version(), "torch_version": torch.__version__,
        "codec": codec.describe(), "device": device, "device_name": device_name,
        "width": w, "height": h, "image": source, "repeat": args.repeat, "warmup": args.warmup,
    }
    net = getattr(codec, "net", None)
    if net is not None:
        stride = net.cfg.total_stride
        x1 = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float().div(255)
        x1 = F.pad(x1, (0, (-w) % stride, 0, (-h) % stride), mode="replicate").to(device)
        q = float(net.cfg.rate_points - 1) / 2

        def analysis(x: torch.Tensor) -> torch.Tensor:
            gain, _ = net.gains(torch.full((x.shape[0],), q, device=x.device))
            return net.h_a(net.g_a(x) * gain)

        stages = {"g_a": net.g_a, "g_a+h_a": analysis}
        flops = {}
        with torch.no_grad():
            for stage, fn in stages.items():
                counter = FlopCounterMode(display=False)
                with counter:
                    fn(x1)
                flops[stage] = counter.get_total_flops() / 1e9
        report.update({
            "network_input": [int(x1.shape[-1]), int(x1.shape[-2])],
            "network_note": f"the frame is padded to a multiple of {stride} px and run untiled (the codec's "
                            f"encode tiles images above {getattr(codec, 'tile', '?')} px a side)",
            "params": {"g_a": sum(p.numel() for p in net.g_a.parameters()),
                       "h_a": sum(p.numel() for p in net.h_a.parameters())},
            "gflops_per_frame": flops,
            "flops_convention": "torch.utils.flop_counter.FlopCounterMode, 2 FLOPs per multiply-add: every "
                                "convolution (GDN's 1x1 normalisation convolutions included); element-wise "
                                "operations (activations, GDN's square and root, gains) are not counted",
        })
        with torch.no_grad():
            for batch in args.batch:
                x = x1.expand(batch, -1, -1, -1).contiguous()
                for stage, fn in stages.items():
                    try:
                        times = _timings(lambda: fn(x), args.repeat, args.warmup, sync)
                    except (RuntimeError, MemoryError) as exc:  # out of memory at a large batch
                        rows.append({"codec": args.codec, "device": device, "stage": stage, "batch": batch,
                                     "width": w, "height": h, "status": "error", "note": str(exc).splitlines()[0]})
                        if is_cuda:
                            torch.cuda.empty_cache()
                        continue
                    rows.append(_speed_row(args.codec, device, stage, batch, w, h, times))
                del x
    else:
        report["network_note"] = f"{args.codec} has no networks: only its encode call is timed"

    results = []

    def encode() -> None:
        results.append(codec.encode(image, args.bpp))

    try:
        times = _timings(encode, args.repeat, min(args.warmup, 1), sync)
        achieved = results[-1].achieved_bpp
        rows.append(_speed_row(args.codec, device, "encode", 1, w, h, times,
                               note=f"codec.encode at {args.bpp:g} bpp: achieved {achieved:.4f} bpp, "
                                    f"params {json.dumps(results[-1].params, sort_keys=True)}"))
    except RateUnreachableError as exc:
        rows.append({"codec": args.codec, "device": device, "stage": "encode", "batch": 1, "width": w, "height": h,
                     "status": "unreachable", "note": str(exc)})
    report["rows"] = rows

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    _write_csv(out / "speed.csv", SPEED_FIELDS, rows)

    say(args, f"{args.codec} on {device_name}, {w}x{h}")
    if "params" in report:
        say(args, f"parameters: g_a {report['params']['g_a'] / 1e6:.3f} M, h_a {report['params']['h_a'] / 1e6:.3f} M; "
             f"GFLOPs per frame: " + ", ".join(f"{k} {v:.1f}" for k, v in report["gflops_per_frame"].items()))
    for r in rows:
        if r["status"] == "ok":
            say(args, f"{r['stage']:<8} batch {r['batch']:<3} {r['fps']:9.2f} frames/s  (mean {r['mean_s'] * 1e3:.1f} ms)")
        else:
            say(args, f"{r['stage']:<8} batch {r['batch']:<3} {r['status']}: {r['note']}")
    say(args, f"wrote {out}/speed.json, speed.csv")
    return 0
