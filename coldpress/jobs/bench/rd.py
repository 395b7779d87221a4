"""``coldpress bench rd``: rate, PSNR, MS-SSIM, timings and Bjøntegaard deltas of codecs on a folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from coldpress.jobs.bench.common import _device_name, _list_images, _load_codec, _note, _write_csv, default_eval_folder
from coldpress.transforms.sources import IMAGE_SUFFIXES, read_rgb
from coldpress.versions import coldpress_version

DEFAULT_RD_CODECS = ("learned", "avif-best", "avif", "avif-half", "avif-quarter", "jpeg2000", "webp", "jpeg")
DEFAULT_BPPS = (0.03, 0.05, 0.1)
#: Codecs the Bjøntegaard deltas are computed against, the primary one first.
BD_ANCHORS = ("avif-half", "avif-best", "avif")
PER_IMAGE_FIELDS = (
    "image", "width", "height", "codec", "target_bpp", "status", "achieved_bpp", "psnr", "ms_ssim",
    "encode_s", "decode_s", "encode_mp_s", "decode_mp_s", "needed_bpp", "params", "message",
)
SUMMARY_FIELDS = (
    "codec", "target_bpp", "images", "reached", "unreachable", "errors", "complete", "mean_achieved_bpp",
    "mean_psnr", "mean_ms_ssim", "mean_encode_s", "mean_decode_s", "encode_mp_s", "decode_mp_s",
    "max_needed_bpp",
)
BD_FIELDS = (
    "anchor", "codec", "bd_rate_psnr_pct", "bd_psnr_db", "bd_rate_ms_ssim_pct", "bd_ms_ssim_db", "points", "notes",
)


def _needed_bpp(message: str) -> float | None:
    """The bpp a codec says it needs, from a RateUnreachableError message (None when it does not say)."""
    import re

    m = re.search(r"needs\b[^;]*?(\d*\.?\d+)\s*bpp", message)
    return float(m.group(1)) if m else None


def measure(codec, codec_name: str, image_name: str, image, bpp: float) -> dict[str, Any]:
    """Encode, decode and score one image at one target; never raises for a codec failure."""
    import json
    import time

    from coldpress import metrics
    from coldpress.errors import RateUnreachableError

    h, w = image.shape[:2]
    megapixels = w * h / 1e6
    row: dict[str, Any] = {f: None for f in PER_IMAGE_FIELDS}
    row.update(image=image_name, width=w, height=h, codec=codec_name, target_bpp=bpp, params="", message="")
    start = time.perf_counter()
    try:
        result = codec.encode(image, bpp)
    except RateUnreachableError as exc:
        row.update(status="unreachable", encode_s=time.perf_counter() - start, needed_bpp=_needed_bpp(str(exc)),
                   message=str(exc))
        return row
    except Exception as exc:  # noqa: BLE001 - one failing image must not stop the benchmark
        row.update(status="error", message=f"encode failed: {type(exc).__name__}: {exc}")
        return row
    encode_s = time.perf_counter() - start
    row.update(achieved_bpp=result.achieved_bpp, encode_s=encode_s, encode_mp_s=megapixels / encode_s,
               params=json.dumps(result.params, sort_keys=True))
    start = time.perf_counter()
    try:
        decoded = codec.decode(result.bitstream)
    except Exception as exc:  # noqa: BLE001
        row.update(status="error", message=f"decode failed: {type(exc).__name__}: {exc}")
        return row
    decode_s = time.perf_counter() - start
    row.update(decode_s=decode_s, decode_mp_s=megapixels / decode_s)
    if decoded.shape != image.shape:
        row.update(status="error", message=f"decoded shape {decoded.shape} differs from the source's {image.shape}")
        return row
    row.update(status="ok", psnr=metrics.psnr(image, decoded))
    try:
        row["ms_ssim"] = metrics.ms_ssim(image, decoded)
    except ValueError as exc:  # images under 11 px a side: PSNR only
        row["message"] = f"no MS-SSIM: {exc}"
    return row


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarize(rows: list[dict[str, Any]], codecs: list[str], targets: list[float]) -> list[dict[str, Any]]:
    """One summary row per codec x target (means over the images that reached the target)."""
    out = []
    for codec in codecs:
        for target in targets:
            group = [r for r in rows if r["codec"] == codec and r["target_bpp"] == target]
            ok = [r for r in group if r["status"] == "ok"]
            unreachable = [r for r in group if r["status"] == "unreachable"]
            needed = [r["needed_bpp"] for r in unreachable if r["needed_bpp"] is not None]
            enc_s, dec_s = sum(r["encode_s"] for r in ok), sum(r["decode_s"] for r in ok)
            mp = sum(r["width"] * r["height"] for r in ok) / 1e6
            out.append({
                "codec": codec, "target_bpp": target, "images": len(group), "reached": len(ok),
                "unreachable": len(unreachable), "errors": len(group) - len(ok) - len(unreachable),
                "complete": bool(group) and len(ok) == len(group),
                "mean_achieved_bpp": _mean([r["achieved_bpp"] for r in ok]),
                "mean_psnr": _mean([r["psnr"] for r in ok]),
                "mean_ms_ssim": _mean([r["ms_ssim"] for r in ok]) if all(r["ms_ssim"] is not None for r in ok) else None,
                "mean_encode_s": _mean([r["encode_s"] for r in ok]),
                "mean_decode_s": _mean([r["decode_s"] for r in ok]),
                "encode_mp_s": mp / enc_s if ok and enc_s > 0 else None,
                "decode_mp_s": mp / dec_s if ok and dec_s > 0 else None,
                "max_needed_bpp": max(needed) if needed else None,
            })
    return out


def curve_points(summary: list[dict[str, Any]], codec: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(points used for the codec's RD curve, targets left out with the reason), by target."""
    from coldpress.metrics import ms_ssim_db

    used, excluded = [], []
    for s in sorted((s for s in summary if s["codec"] == codec), key=lambda s: s["target_bpp"]):
        if not s["complete"]:
            excluded.append({"target_bpp": s["target_bpp"], "reason": (
                f"{s['reached']} of {s['images']} images reached it ({s['unreachable']} unreachable, "
                f"{s['errors']} failed)")})
            continue
        msssim = s["mean_ms_ssim"]
        used.append({
            "target_bpp": s["target_bpp"], "bpp": s["mean_achieved_bpp"], "psnr": s["mean_psnr"],
            "ms_ssim": msssim, "ms_ssim_db": ms_ssim_db(msssim) if msssim is not None and msssim < 1 else None,
        })
    return used, excluded


def bjontegaard(summary: list[dict[str, Any]], codecs: list[str], anchors=BD_ANCHORS) -> dict[str, Any]:
    """Bjøntegaard deltas of every codec against each anchor, from the per-codec mean points."""
    from coldpress import metrics

    points = {}
    for codec in codecs:
        used, excluded = curve_points(summary, codec)
        points[codec] = {"used": used, "excluded": excluded}
    against: dict[str, Any] = {}
    for anchor in anchors:
        if anchor not in points:
            against[anchor] = {"available": False, "reason": f"{anchor} was not benchmarked (add it to --codecs)"}
            continue
        a = points[anchor]["used"]
        if len(a) < 2:
            against[anchor] = {"available": False, "reason": (
                f"{anchor} reached {len(a)} target(s) on every image; a Bjøntegaard curve needs at least 2 "
                "(add --bpp targets it can reach)")}
            continue
        results = {}
        for codec in codecs:
            if codec == anchor:
                continue
            t = points[codec]["used"]
            entry: dict[str, Any] = {"points": len(t), "notes": []}
            if len(t) < 2:
                entry.update({k: None for k in BD_FIELDS[2:6]})
                entry["notes"].append(
                    f"{codec} reached {len(t)} target(s) on every image; a Bjøntegaard curve needs at least 2")
                results[codec] = entry
                continue
            for key, quality, fn in (
                ("bd_rate_psnr_pct", "psnr", metrics.bd_rate), ("bd_psnr_db", "psnr", metrics.bd_psnr),
                ("bd_rate_ms_ssim_pct", "ms_ssim_db", metrics.bd_rate), ("bd_ms_ssim_db", "ms_ssim_db", metrics.bd_psnr),
            ):
                ap = [p for p in a if p[quality] is not None]
                tp = [p for p in t if p[quality] is not None]
                try:
                    entry[key] = fn([p["bpp"] for p in ap], [p[quality] for p in ap],
                                    [p["bpp"] for p in tp], [p[quality] for p in tp])
                except ValueError as exc:
                    entry[key] = None
                    note = f"{key}: {exc}"
                    entry["notes"].append(note)
            results[codec] = entry
        against[anchor] = {"available": True, "results": results}
    return {
        "method": metrics.BD_METHOD + " (scipy.interpolate.PchipInterpolator)",
        "rate": "mean achieved bpp over the images (log-scaled)",
        "quality": {
            "psnr": "mean PSNR over the images, dB",
            "ms_ssim_db": "mean MS-SSIM over the images, then -10 log10(1 - mean)",
        },
        "points_rule": "only targets that every image reached; the others are listed under 'excluded'",
        "points": points,
        "against": against,
    }


def _bd_rows(bd: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for anchor, entry in bd["against"].items():
        if not entry["available"]:
            rows.append({"anchor": anchor, "codec": "", "notes": entry["reason"]})
            continue
        for codec, r in entry["results"].items():
            rows.append({"anchor": anchor, "codec": codec, **{k: r.get(k) for k in BD_FIELDS[2:-1]},
                         "notes": " | ".join(r["notes"])})
    return rows


def plot_rd(path: Path, summary: list[dict[str, Any]], codecs: list[str], title: str) -> None:
    """PSNR and MS-SSIM against achieved bpp; complete points joined, partial ones hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = "osD^v<>ph*"
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for i, codec in enumerate(codecs):
        rows = sorted((s for s in summary if s["codec"] == codec and s["reached"]), key=lambda s: s["target_bpp"])
        colour = f"C{i % 10}"
        for ax, key in zip(axes, ("mean_psnr", "mean_ms_ssim")):
            full = [s for s in rows if s["complete"] and s[key] is not None]
            part = [s for s in rows if not s["complete"] and s[key] is not None]
            if full:
                ax.plot([s["mean_achieved_bpp"] for s in full], [s[key] for s in full],
                        marker=markers[i % len(markers)], color=colour, label=codec)
            if part:
                ax.plot([s["mean_achieved_bpp"] for s in part], [s[key] for s in part], linestyle="none",
                        marker=markers[i % len(markers)], markerfacecolor="none", color=colour,
                        label=f"{codec} (some images unreachable)")
    for ax, label in zip(axes, ("PSNR (dB)", "MS-SSIM")):
        ax.set_xlabel("achieved bits per pixel")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_rd(args: argparse.Namespace) -> int:
    import datetime
    import json

    from tqdm import tqdm

    from coldpress.errors import ColdpressError
    from coldpress.jobs.cli import say, show_progress

    folder = Path(args.folder) if args.folder else default_eval_folder()
    if not folder.is_dir():
        raise ColdpressError(
            f"benchmark folder {folder} does not exist or is not a folder; pass a folder of images as FOLDER "
            "(the default is the Kodak set in ../shared/data/eval/kodak beside the repository)"
        )
    targets = sorted(dict.fromkeys(float(b) for b in args.bpp))
    if any(not b > 0 for b in targets):
        raise ColdpressError(f"--bpp targets must be positive, got {targets}")
    if args.limit is not None and args.limit < 1:
        raise ColdpressError(f"--limit must be at least 1, got {args.limit}")
    from coldpress.jobs.bench.rd_raster import raster_files, run_rd_raster

    rasters, others = raster_files(folder)
    if rasters:  # geospatial rasters: coldpress's raster package against JPEG 2000 and COG-WebP
        return run_rd_raster(args, folder, rasters, others, targets)
    paths = _list_images(folder)[: args.limit]
    if not paths:
        raise ColdpressError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}; pass a folder of images")

    images, skipped_images = [], {}
    for p in paths:
        try:
            images.append((p.name, read_rgb(str(p))))
        except Exception as exc:  # noqa: BLE001 - an unreadable file is reported and left out
            skipped_images[p.name] = f"{type(exc).__name__}: {exc}"
            _note(f"skipping {p.name}: it does not open as an image ({exc})")
    if not images:
        raise ColdpressError(f"none of the {len(paths)} files in {folder} opens as an image")

    codecs, skipped_codecs = {}, {}
    for name in dict.fromkeys(args.codecs or DEFAULT_RD_CODECS):
        codec, reason = _load_codec(name, args)
        if codec is None:
            skipped_codecs[name] = reason
            _note(f"{name} skipped: {reason}")
        else:
            codecs[name] = codec
    if not codecs:
        raise ColdpressError("no codec left to benchmark; see the notes above")

    rows = []
    with tqdm(total=len(codecs) * len(images) * len(targets), desc="bench rd", unit="code",
              disable=not show_progress(args)) as bar:
        for name, codec in codecs.items():
            bar.set_postfix_str(name)
            measure(codec, name, images[0][0], images[0][1], targets[-1])  # warm-up, untimed
            for image_name, image in images:
                for target in targets:
                    rows.append(measure(codec, name, image_name, image, target))
                    bar.update()

    names = list(codecs)
    summary = summarize(rows, names, targets)
    bd = bjontegaard(summary, names)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "per_image.csv", PER_IMAGE_FIELDS, rows)
    _write_csv(out / "summary.csv", SUMMARY_FIELDS, summary)
    _write_csv(out / "bd.csv", BD_FIELDS, _bd_rows(bd))
    report = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "coldpress_version": coldpress_version(),
        "folder": str(folder.resolve()),
        "images": [name for name, _ in images],
        "skipped_images": skipped_images,
        "targets_bpp": targets,
        "codecs": {name: codec.describe() for name, codec in codecs.items()},
        "skipped_codecs": skipped_codecs,
        "cpu": _device_name(None),
        "learned_device": _device_name(codecs["learned"].device) if "learned" in codecs else None,
        "summary": summary,
        "bjontegaard": bd,
    }
    (out / "summary.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    plot_rd(out / "rd.png", summary, names, f"{len(images)} images from {folder.name}")

    say(args, f"{'codec':<14}{'target':>8}{'reached':>9}{'bpp':>9}{'PSNR':>8}{'MS-SSIM':>9}{'enc MP/s':>10}{'dec MP/s':>10}")
    def fmt(v, spec):
        width = int(spec.split(".")[0])
        return format(v, spec) if v is not None else "-".rjust(width)

    for s in summary:
        say(args, f"{s['codec']:<14}{s['target_bpp']:>8g}{s['reached']:>5}/{s['images']:<3}"
             f"{fmt(s['mean_achieved_bpp'], '9.4f')}{fmt(s['mean_psnr'], '8.2f')}{fmt(s['mean_ms_ssim'], '9.4f')}"
             f"{fmt(s['encode_mp_s'], '10.2f')}{fmt(s['decode_mp_s'], '10.2f')}")
    for row in _bd_rows(bd):
        if row["codec"]:
            def pct(v):
                return "-" if v is None else f"{v:+.1f} %"

            def db(v):
                return "-" if v is None else f"{v:+.2f} dB"

            say(args, f"vs {row['anchor']}: {row['codec']:<14} BD-rate (PSNR) {pct(row.get('bd_rate_psnr_pct'))}, "
                 f"BD-PSNR {db(row.get('bd_psnr_db'))}, BD-rate (MS-SSIM) {pct(row.get('bd_rate_ms_ssim_pct'))}")
        else:
            say(args, f"vs {row['anchor']}: {row['notes']}")
    say(args, f"wrote {out}/per_image.csv, summary.csv, summary.json, bd.csv, rd.png")
    return 0
