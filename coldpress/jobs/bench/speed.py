"""``coldpress bench speed``: frames per second, parameters and GFLOPs of a codec on one device."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from coldpress.jobs.bench.common import _device_name, _load_codec, _write_csv
from coldpress.versions import coldpress_version

SPEED_FIELDS = (
    "codec", "device", "stage", "batch", "width", "height", "megapixels", "repeat", "mean_s", "median_s", "min_s",
    "fps", "mp_s", "status", "note",
)
#: --sizes shortcuts: Kodak (768x512), 1 and 4 megapixels (4:3 photos), 1080p.
NAMED_SIZES = {"kodak": (768, 512), "1mp": (1152, 864), "4mp": (2304, 1728), "1080p": (1920, 1080)}


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
            "megapixels": w * h / 1e6, "repeat": len(times), "mean_s": mean, "median_s": statistics.median(times),
            "min_s": min(times), "fps": batch / mean, "mp_s": batch * w * h / 1e6 / mean, "status": "ok", "note": "",
            **extra}


def parse_size(text: str) -> tuple[int, int]:
    """A frame size: WIDTHxHEIGHT (768x512) or a name of NAMED_SIZES (kodak, 1mp, 4mp, 1080p)."""
    if text.lower() in NAMED_SIZES:
        return NAMED_SIZES[text.lower()]
    w, sep, h = text.lower().partition("x")
    if sep and w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0:
        return int(w), int(h)
    raise argparse.ArgumentTypeError(f"{text!r} is not a frame size; write WIDTHxHEIGHT (768x512) or one of "
                                     f"{', '.join(NAMED_SIZES)}")


def run_speed(args: argparse.Namespace) -> int:
    import datetime
    import json

    import torch

    from coldpress.errors import ColdpressError
    from coldpress.jobs.cli import say

    sizes = list(getattr(args, "sizes", None) or [(args.width, args.height)])
    if min(min(wh) for wh in sizes) < 1 or args.repeat < 1 or args.warmup < 0 or min(args.batch) < 1:
        raise ColdpressError("--width, --height, --repeat and --batch must be at least 1 and --warmup at least 0")
    threads = getattr(args, "threads", None)
    if threads is not None:
        if threads < 1:
            raise ColdpressError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    codec, reason = _load_codec(args.codec, args)
    if codec is None:
        raise ColdpressError(f"cannot time {args.codec}: {reason}")
    device = str(getattr(codec, "device", "cpu"))
    device_name = _device_name(device)
    is_cuda = torch.device(device).type == "cuda"

    def sync() -> None:
        if is_cuda:
            torch.cuda.synchronize(device)

    rows: list[dict[str, Any]] = []
    report: dict[str, Any] = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "coldpress_version": coldpress_version(), "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(), "load_average": _load_average(),
        "codec": codec.describe(), "codec_options": codec.options(), "device": device, "device_name": device_name,
        "bpp": args.bpp, "repeat": args.repeat, "warmup": args.warmup, "sizes": [],
        "stages": {
            "g_a, g_a+h_a": "the analysis networks alone, untiled, no grad, at each --batch (the codec API codes "
                            "one image per call: only these stages are batched)",
            "encode": "codec.encode (analysis, rate and scale search with real entropy codings)",
            "encode+verify": "codec.encode then codec.decode of its bitstream, timed together: what archiving an "
                             "image costs (records.encode_record's verify-on-write; the learned codec's decode "
                             "reuses the reconstruction its scale search made, when it made one, and the "
                             "entropy parameters its codings derived, once the decoded hyper-latent and "
                             "anchors are checked equal: coldpress/codec/decode_memo.py)",
            "decode": "codec.decode of the bitstream (entropy decoding and synthesis in the model's precision)",
        },
    }
    for w, h in sizes:
        size_rows, info = _time_size(codec, args, device, sync, is_cuda, w, h)
        rows += size_rows
        report["sizes"].append(info)
    if len(sizes) == 1:  # one size: its facts at the top level too (as before --sizes existed)
        report.update(report["sizes"][0])
    report["rows"] = rows
    report["load_average_after"] = _load_average()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    _write_csv(out / "speed.csv", SPEED_FIELDS, rows)

    say(args, f"{args.codec} on {device_name}")
    for info in report["sizes"]:
        if "params" in info:
            say(args, f"{info['width']}x{info['height']}: parameters g_a {info['params']['g_a'] / 1e6:.3f} M, h_a "
                 f"{info['params']['h_a'] / 1e6:.3f} M; GFLOPs per frame: "
                 + ", ".join(f"{k} {v:.1f}" for k, v in info["gflops_per_frame"].items()))
    for r in rows:
        if r["status"] == "ok":
            say(args, f"{r['width']:>5}x{r['height']:<5} {r['stage']:<14} batch {r['batch']:<3} {r['fps']:8.3f} frames/s "
                 f"{r['mp_s']:8.3f} MP/s  (mean {r['mean_s']:.2f} s)")
        else:
            say(args, f"{r['width']:>5}x{r['height']:<5} {r['stage']:<14} batch {r['batch']:<3} {r['status']}: {r['note']}")
    say(args, f"wrote {out}/speed.json, speed.csv")
    return 0


def _load_average() -> list[float] | None:
    import os

    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _time_size(codec, args: argparse.Namespace, device: str, sync, is_cuda: bool, w: int, h: int):
    """Rows and facts for one frame size: the analysis networks (batched), encode, encode+verify, decode."""
    import json

    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from coldpress.errors import RateUnreachableError

    image, source = _speed_image(args.image, w, h)
    rows: list[dict[str, Any]] = []
    info: dict[str, Any] = {"width": w, "height": h, "image": source}
    net = getattr(codec, "net", None)
    if net is not None:
        stride = net.cfg.total_stride
        x1 = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float().div(255)
        x1 = F.pad(x1, (0, (-w) % stride, 0, (-h) % stride), mode="replicate").to(device)
        q = float(net.cfg.rate_points - 1) / 2

        g_a = getattr(getattr(codec, "loaded", None), "analysis_channels_last", net.g_a)  # as the codec runs it

        def run_g_a(x: torch.Tensor) -> torch.Tensor:
            return g_a(x.contiguous(memory_format=torch.channels_last)).contiguous()

        def analysis(x: torch.Tensor) -> torch.Tensor:
            gain, _ = net.gains(torch.full((x.shape[0],), q, device=x.device))
            return net.h_a(run_g_a(x) * gain)

        stages = {"g_a": run_g_a, "g_a+h_a": analysis}
        flops = {}
        with torch.no_grad():
            for stage, fn in stages.items():
                counter = FlopCounterMode(display=False)
                with counter:
                    fn(x1)
                flops[stage] = counter.get_total_flops() / 1e9
        info.update({
            "network_input": [int(x1.shape[-1]), int(x1.shape[-2])],
            "network_note": f"the frame is padded to a multiple of {stride} px and run untiled, channels-last as "
                            f"the codec runs g_a (its encode tiles images above {getattr(codec, 'tile', '?')} px a side)",
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
        info["network_note"] = f"{args.codec} has no networks: only its encode and decode calls are timed"

    results = []
    codings = []

    def encode() -> None:
        before = getattr(codec, "codings", 0)
        results.append(codec.encode(image, args.bpp))
        codings.append(getattr(codec, "codings", 0) - before)

    try:
        times = _timings(encode, args.repeat, min(args.warmup, 1), sync)
    except RateUnreachableError as exc:
        for stage in ("encode", "encode+verify", "decode"):
            rows.append({"codec": args.codec, "device": device, "stage": stage, "batch": 1, "width": w, "height": h,
                         "status": "unreachable", "note": str(exc)})
        return rows, info
    result = results[-1]
    note = (f"codec.encode at {args.bpp:g} bpp: achieved {result.achieved_bpp:.4f} bpp, params "
            f"{json.dumps(result.params, sort_keys=True)}" + (f", {codings[-1]} latent codings" if net is not None else ""))
    rows.append(_speed_row(args.codec, device, "encode", 1, w, h, times, note=note))
    def encode_and_verify() -> None:  # as records.encode_record archives an image
        codec.decode(codec.encode(image, args.bpp).bitstream)

    both = _timings(encode_and_verify, args.repeat, min(args.warmup, 1), sync)
    def decode() -> None:  # a restore: nothing kept from an encode
        codec.forget_decodes()
        codec.decode(result.bitstream)

    decode_times = _timings(decode, args.repeat, min(args.warmup, 1), sync)
    rows.append(_speed_row(args.codec, device, "encode+verify", 1, w, h, both, note=note + "; then codec.decode"))
    rows.append(_speed_row(args.codec, device, "decode", 1, w, h, decode_times,
                           note=f"codec.decode of the {len(result.bitstream)}-byte bitstream"))
    from coldpress.jobs.bench.speed_decoders import diffusion_rows

    rows += diffusion_rows(args, codec, result.bitstream, rows[-1], device, sync, w, h)
    return rows, info
