"""`coldpress bench`: rate-distortion and speed benchmarks of the codecs.

``coldpress bench rd [FOLDER]`` codes every image of FOLDER (default: the Kodak set in
../shared/data/eval/kodak) with every codec at every target bpp, decodes it, and measures the
achieved rate, PSNR, MS-SSIM and encode/decode times. It writes to --out (default results/rd):

    per_image.csv    one row per image x codec x target: status (ok / unreachable / error), achieved
                     bpp, PSNR, MS-SSIM, seconds and megapixels/s, the bpp a codec needs where it
                     cannot reach the target, and the message
    summary.csv      one row per codec x target: means over the images that reached the target,
                     counts of reached / unreachable / failed images, aggregate megapixels/s
    summary.json     the same, plus the run's settings, the codecs' identities and Bjøntegaard
                     deltas (BD-rate on PSNR and on MS-SSIM in dB, BD-PSNR) of every codec against
                     avif-half, avif-best and avif, with the points each curve used
    bd.csv           the Bjøntegaard deltas as a table
    rd.png           PSNR and MS-SSIM against achieved bpp, one line per codec

Means over a (codec, target) whose target some images cannot reach mix easier images only: such
rows are flagged (``complete`` false), drawn as hollow markers, and left out of the Bjøntegaard
curves, which use only targets every image reached. Each codec is warmed up with one untimed
encode and decode before its timings.

``coldpress bench speed`` measures encoder frames per second at 1920x1080 (or --width/--height) on
one device: the learned codec's analysis networks alone (g_a, then g_a with gains and the
hyper-analysis h_a; batch 1 and batched; no grad; warm-up; synchronised on GPU), and the whole
``codec.encode`` call (entropy coding and rate search included) at batch 1. It reports the
encoder's parameters and GFLOPs per frame (torch.utils.flop_counter: convolutions, GDN's included,
one multiply-add = 2 FLOPs),
and writes speed.json and speed.csv to --out (default results/speed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

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
PIPELINE_FIELDS = (
    "stage", "engine", "runner", "codec", "target_bpp", "images", "archived", "rejected", "megapixels", "seconds",
    "images_per_s", "megapixels_per_s", "speedup", "identical_bitstreams", "peak_rss_mb",
)
#: Engines with a warm restore service, timed by `bench pipeline`: name -> (module, service class).
PIPELINE_SERVICES = {
    "ray": ("coldpress.pipelines.ray", "RestoreService"),
}
SPEED_FIELDS = (
    "codec", "device", "stage", "batch", "width", "height", "repeat", "mean_s", "median_s", "min_s", "fps",
    "status", "note",
)


def default_eval_folder() -> Path:
    """The Kodak set next to the repository (../shared/data/eval/kodak), else relative to the cwd."""
    import coldpress

    beside_repo = Path(coldpress.__file__).resolve().parents[2] / "shared" / "data" / "eval" / "kodak"
    if beside_repo.is_dir():
        return beside_repo
    return Path("..") / "shared" / "data" / "eval" / "kodak"


# -- command line ----------------------------------------------------------------------------------


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench", help="rate-distortion and speed benchmarks of the codecs", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    benches = p.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)

    rd = benches.add_parser(
        "rd", help="rate, PSNR, MS-SSIM, timings and BD-rates of codecs on a folder of images",
        description="Code every image of FOLDER with every codec at every target bpp; write per-image "
        "and summary tables, Bjøntegaard deltas and RD plots to --out.",
    )
    rd.add_argument("folder", nargs="?", default=None, metavar="FOLDER",
                    help="local folder of images (default: ../shared/data/eval/kodak beside the repository)")
    rd.add_argument("--bpp", type=float, nargs="+", default=list(DEFAULT_BPPS), metavar="BPP",
                    help=f"target bits per pixel (default: {' '.join(map(str, DEFAULT_BPPS))})")
    rd.add_argument("--codecs", nargs="+", default=list(DEFAULT_RD_CODECS), metavar="CODEC",
                    help=f"codecs to compare (default: {' '.join(DEFAULT_RD_CODECS)})")
    rd.add_argument("--out", default="results/rd", metavar="DIR", help="output folder (default: results/rd)")
    rd.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N images (sorted by name)")
    _learned_options(rd)
    rd.set_defaults(_bench=run_rd)

    speed = benches.add_parser(
        "speed", help="encoder frames per second, parameters and GFLOPs on one device",
        description="Time the learned codec's analysis networks (batched) and the full encode call on "
        "one device; write speed.json and speed.csv to --out.",
    )
    speed.add_argument("--codec", default="learned", help="codec to time (default: learned; reference codecs "
                       "have no networks, only their encode call is timed)")
    speed.add_argument("--width", type=int, default=1920, help="frame width (default: 1920)")
    speed.add_argument("--height", type=int, default=1080, help="frame height (default: 1080)")
    speed.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8], metavar="N",
                       help="batch sizes for the network timings (default: 1 4 8)")
    speed.add_argument("--repeat", type=int, default=5, metavar="N", help="timed runs per measurement (default: 5)")
    speed.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed runs first (default: 2)")
    speed.add_argument("--bpp", type=float, default=0.05, help="target of the timed encode calls (default: 0.05)")
    speed.add_argument("--image", default=None, metavar="PATH",
                       help="image to time on, resized to the frame size (default: the sample "
                       "coldpress/samples/photos/coffee.jpg)")
    speed.add_argument("--out", default="results/speed", metavar="DIR", help="output folder (default: results/speed)")
    _learned_options(speed)
    speed.set_defaults(_bench=run_speed)

    pipeline = benches.add_parser(
        "pipeline", help="throughput of a distributed engine against the plain loop (the local engine)",
        description="Encode the first --limit images of FOLDER with the local engine (the plain loop: one "
        "process, one image at a time) and with --engine, check both archives hold the same bitstreams, "
        "and write images/s and the speed-up to --out (pipeline.json, pipeline.csv).",
    )
    pipeline.add_argument("folder", nargs="?", default=None, metavar="FOLDER",
                          help="local folder of images (default: ../shared/data/eval/kodak beside the repository)")
    pipeline.add_argument("--engine", required=True, choices=sorted(_pipeline_engines()),
                          help="engine to compare with the plain loop")
    pipeline.add_argument("--codec", default="jpeg", help="codec (default: jpeg, fast; learned for the real load)")
    pipeline.add_argument("--bpp", type=float, default=0.2, help="target bits per pixel (default: 0.2)")
    pipeline.add_argument("--limit", type=int, default=8, metavar="N", help="first N images, sorted by name (default: 8)")
    pipeline.add_argument("--out", default="results/pipeline", metavar="DIR", help="output folder (default: results/pipeline)")
    from coldpress.jobs.encode import add_beam_option

    add_beam_option(pipeline)
    from coldpress.jobs.engines import add_engine_options

    add_engine_options(pipeline)
    pipeline.set_defaults(_bench=run_pipeline)
    from coldpress.jobs.bench_scale import add_parser as add_scale

    scale = add_scale(benches)

    for sub in (rd, speed, pipeline, scale):  # also accept --quiet after the benchmark's name
        sub.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS,
                         help="no progress bars or summaries")
    return p


def _learned_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("learned codec")
    group.add_argument("--model", default=None, metavar="ID_OR_PATH",
                       help="learned model: a shipped model id or an exported .safetensors file "
                       "(default: the bundled model)")
    group.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="device of the learned codec (default: auto, CUDA when available)")


def run(args: argparse.Namespace) -> int:
    return int(args._bench(args) or 0)


def _note(message: str) -> None:
    print(f"coldpress bench: {message}", file=sys.stderr)


def _resolve_device(choice: str) -> str:
    import torch

    from coldpress.errors import ColdpressError

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ColdpressError("--device cuda was asked for, but torch sees no CUDA device; use --device cpu or auto")
    return choice


def _load_codec(name: str, args: argparse.Namespace):
    """(codec, None) or (None, reason it is skipped)."""
    from coldpress.codec import get_codec
    from coldpress.errors import ColdpressError

    if name != "learned":
        try:
            return get_codec(name), None
        except ValueError as exc:  # an unknown name: a usage error, said before any work
            raise ColdpressError(str(exc)) from None
    from coldpress.codec.models import default_model_available

    if args.model is None and not default_model_available():
        return None, (
            "no learned model is bundled with this installation (coldpress/codec/weights/MODELS.json); "
            "pass --model PATH.safetensors to benchmark an exported model"
        )
    try:
        return get_codec("learned", model=args.model, device=_resolve_device(args.device)), None
    except ColdpressError as exc:
        return None, str(exc)


# -- bench rd --------------------------------------------------------------------------------------


def _list_images(folder: Path) -> list[Path]:
    from coldpress.transforms.sources import list_images

    return [Path(uri) for uri in list_images(str(folder))]


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


def _write_csv(path: Path, fields, rows: list[dict[str, Any]]) -> None:
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in fields})


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
    for name in dict.fromkeys(args.codecs):
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


# -- bench pipeline --------------------------------------------------------------------------------


def _pipeline_engines() -> dict[str, tuple[str, str]]:
    """Engines the pipeline benchmark compares with the plain loop: every encode engine but local."""
    from coldpress.jobs.encode import ENGINES

    return {name: target for name, target in ENGINES.items() if name != "local"}


def run_pipeline(args: argparse.Namespace) -> int:
    """Time the plain loop (encode_local) and ``--engine`` on the same images; write pipeline.json/csv."""
    import datetime
    import importlib
    import json
    import os
    import shutil
    import tempfile
    import time

    from coldpress.errors import ColdpressError
    from coldpress.jobs.cli import say
    from coldpress.jobs.encode import beam_kwargs
    from coldpress.pipelines.local import encode_local
    from coldpress.transforms.archive import open_archive

    folder = Path(args.folder) if args.folder else default_eval_folder()
    if not folder.is_dir():
        raise ColdpressError(f"{folder} is not a folder of images; pass FOLDER (e.g. the Kodak set)")
    images = _list_images(folder)[: args.limit] if args.limit else _list_images(folder)
    if not images:
        raise ColdpressError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); pass another FOLDER")
    module, function = _pipeline_engines()[args.engine]
    encode_engine = getattr(importlib.import_module(module), function)
    from coldpress.jobs.engines import engine_kwargs
    from coldpress.jobs.restore import ENGINES as RESTORE_ENGINES
    from coldpress.pipelines.local import restore_local

    extra = {**beam_kwargs(args), **engine_kwargs(args, args.engine)}
    restore_module, restore_function = RESTORE_ENGINES[args.engine]
    restore_engine = getattr(importlib.import_module(restore_module), restore_function)
    service: dict[str, Any] | None = None
    megapixels = sum(w * h for w, h in (_size(p) for p in images)) / 1e6
    work = Path(tempfile.mkdtemp(prefix="coldpress-bench-pipeline-"))
    try:
        src = work / "src"
        src.mkdir()
        for path in images:
            shutil.copy2(path, src / path.name)
        # Warm-up, untimed: imports and the codec's first call (model load) are not the loop's cost.
        encode_local(str(src / images[0].name), str(work / "warm-up"), codec=args.codec, bpp=args.bpp, progress=False)
        runs = {}
        for engine, encode, kwargs in (("local", encode_local, {"workers": 1}), (args.engine, encode_engine, extra)):
            with _PeakMemory() as memory:
                start = time.perf_counter()
                manifest = encode(str(src), str(work / engine), codec=args.codec, bpp=args.bpp, progress=False,
                                  **kwargs)
                seconds = time.perf_counter() - start
            bitstreams = {r["id"]: r["bitstream"] for r in
                          open_archive(str(work / engine)).read(columns=["id", "bitstream"]).to_pylist()}
            runs[engine] = (manifest, seconds, bitstreams, memory.peak_mb)
        # Restore: every image of the archive into PNG files, the plain loop (restore_local) and the engine.
        restores = {}
        for engine, restore, kwargs in (("local", restore_local, {}), (args.engine, restore_engine, extra)):
            with _PeakMemory() as memory:
                start = time.perf_counter()
                restored = restore(str(work / "local"), str(work / f"restored-{engine}"), progress=False, **kwargs)
                seconds = time.perf_counter() - start
            restores[engine] = (len(restored), seconds, memory.peak_mb)
        if args.engine in PIPELINE_SERVICES:
            service = _service_latency(args, str(work / "local"), str(work / "cold"), extra)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    loop_s = runs["local"][1]
    identical = runs["local"][2] == runs[args.engine][2]
    rows = []
    for engine, (manifest, seconds, _, peak_mb) in runs.items():
        rows.append({
            "stage": "encode", "peak_rss_mb": peak_mb,
            "engine": "local (plain loop)" if engine == "local" else engine,
            "runner": manifest.get("runner", "in-process loop"), "codec": args.codec, "target_bpp": args.bpp,
            "images": len(images), "archived": manifest.get("archived"), "rejected": manifest.get("rejected"),
            "megapixels": round(megapixels, 4), "seconds": round(seconds, 3),
            "images_per_s": round(len(images) / seconds, 4), "megapixels_per_s": round(megapixels / seconds, 4),
            "speedup": round(loop_s / seconds, 3), "identical_bitstreams": identical,
        })
    loop_restore_s = restores["local"][1]
    for engine, (count, seconds, peak_mb) in restores.items():
        rows.append({
            "stage": "restore", "engine": "local (plain loop)" if engine == "local" else engine,
            "runner": runs[engine][0].get("runner", "in-process loop"), "codec": args.codec,
            "target_bpp": args.bpp, "images": count, "megapixels": round(megapixels, 4),
            "seconds": round(seconds, 3), "images_per_s": round(count / seconds, 4),
            "megapixels_per_s": round(megapixels / seconds, 4), "speedup": round(loop_restore_s / seconds, 3),
            "peak_rss_mb": peak_mb,
        })
    report = {
        "service": service,
        "peak_rss": "peak resident memory of this process and every process it started (engine workers, a "
                    "local Ray instance's workers), sampled every 0.1 s",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "coldpress_version": coldpress_version(), "folder": str(folder), "images": [p.name for p in images],
        "cpu_count": os.cpu_count(), "engine": args.engine, "engine_options": extra,
        "note": "seconds are wall-clock for the whole job, start-up included (a Beam job on FnApiRunner "
                "starts one worker process per core, each importing torch and the codecs)",
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"pipeline-{args.engine}-{args.codec}"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    _write_csv(out / f"{stem}.csv", PIPELINE_FIELDS, rows)
    for r in rows:
        say(args, f"{r['engine']:<20} {r['images']} images in {r['seconds']:8.2f} s: {r['images_per_s']:7.3f} img/s, "
                  f"{r['megapixels_per_s']:7.3f} MP/s, x{r['speedup']:.2f}")
    if service:
        say(args, f"one-image restore: warm service {service['warm_s']:.3f} s, cold {args.engine} job "
                  f"{service['cold_job_s']:.3f} s, bare decode {service['bare_decode_s']:.3f} s "
                  f"(warm / bare = {service['warm_over_bare']:.2f})")
    say(args, f"bitstreams identical: {identical}; wrote {out}/{stem}.json, {stem}.csv")
    if not identical:
        raise ColdpressError(f"the {args.engine} engine and the plain loop wrote different bitstreams; "
                             "report this with the command line")
    return 0


class _PeakMemory:
    """Peak RSS (MB) of this process plus all its descendants while the block runs, sampled at 10 Hz."""

    def __enter__(self) -> "_PeakMemory":
        import threading

        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        while True:
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak_mb = max(self.peak_mb, round(total / 2**20, 1))
            if self._stop.wait(0.1):
                return

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def _service_latency(args: argparse.Namespace, archive: str, cold_dst: str, extra: dict[str, Any]) -> dict[str, Any]:
    """One-image restore: warm service request vs a cold restore job vs a bare codec.decode, in seconds."""
    import importlib
    import os
    import statistics
    import time

    import torch

    from coldpress.codec.registry import codec_for_bitstream
    from coldpress.jobs.restore import ENGINES as RESTORE_ENGINES
    from coldpress.transforms.archive import open_archive

    row = open_archive(archive).read().to_pylist()[0]
    rid, bitstream = row["id"], row["bitstream"]
    codec = codec_for_bitstream(bitstream)
    codec.decode(bitstream)  # warm-up
    bare = []
    for _ in range(3):
        start = time.perf_counter()
        codec.decode(bitstream)
        bare.append(time.perf_counter() - start)
    module, function = RESTORE_ENGINES[args.engine]
    start = time.perf_counter()
    getattr(importlib.import_module(module), function)(archive, cold_dst, ids=[rid], progress=False, **extra)
    cold = time.perf_counter() - start
    module, cls = PIPELINE_SERVICES[args.engine]
    service_cls = getattr(importlib.import_module(module), cls)
    cpus = float(extra.get("cpus_per_actor") or os.cpu_count() or 1)
    with service_cls.start(archive, num_decoders=1, cpus_per_decoder=cpus) as service:
        service.restore_pixels([rid])  # warm-up: the first request
        warm = []
        for _ in range(5):
            start = time.perf_counter()
            service.restore_pixels([rid])
            warm.append(time.perf_counter() - start)
    bare_s, warm_s = statistics.median(bare), statistics.median(warm)
    return {
        "id": rid, "codec": row["codec"], "bare_decode_s": round(bare_s, 4), "warm_s": round(warm_s, 4),
        "warm_runs_s": [round(t, 4) for t in warm], "cold_job_s": round(cold, 3),
        "warm_over_bare": round(warm_s / bare_s, 3), "service_cpus_per_decoder": cpus,
        "note": "medians; warm = RestoreService.restore_pixels([id]) round trip (client -> router -> decoder: "
                "read the id's row group, verify, decode, return the pixels); bare = codec.decode in this "
                f"process ({torch.get_num_threads()} torch threads); cold = a whole restore job for that id "
                "(pipeline and actor start-up, model load)",
    }


def _size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


# -- bench speed -----------------------------------------------------------------------------------


def _device_name(device) -> str:
    """The GPU's name, or the CPU model and torch's thread count."""
    import torch

    if device is not None and torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        import platform

        model = platform.processor() or model
    return f"{model} ({torch.get_num_threads()} torch threads)"


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
