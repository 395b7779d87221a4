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
#: Decoders of the learned codec's bitstreams the bench scores by default: the coarse decode and the
#: diffusion decoder at 1, 2 and 4 steps (detail 1) and at 2 steps with detail 0.5 and 1.5.
DEFAULT_DECODERS = ("coarse", "diffusion:1:1", "diffusion:2:1", "diffusion:4:1", "diffusion:2:0.5", "diffusion:2:1.5")
REALISM_FIELDS = ("niqe", "swd_x1e3", "hf_energy_ratio")
PER_IMAGE_FIELDS = (
    "image", "width", "height", "codec", "target_bpp", "status", "achieved_bpp", "psnr", "ms_ssim",
    *REALISM_FIELDS, "encode_s", "decode_s", "encode_mp_s", "decode_mp_s", "needed_bpp", "params", "message",
)
SUMMARY_FIELDS = (
    "codec", "target_bpp", "images", "reached", "unreachable", "errors", "complete", "mean_achieved_bpp",
    "mean_psnr", "mean_ms_ssim", *(f"mean_{k}" for k in REALISM_FIELDS), "mean_encode_s", "mean_decode_s",
    "encode_mp_s", "decode_mp_s", "max_needed_bpp",
)
#: Side of the square crops of the crops figure, in pixels.
CROP_SIDE = 160
BD_FIELDS = (
    "anchor", "codec", "bd_rate_psnr_pct", "bd_psnr_db", "bd_rate_ms_ssim_pct", "bd_ms_ssim_db", "points", "notes",
)


def _needed_bpp(message: str) -> float | None:
    """The bpp a codec says it needs, from a RateUnreachableError message (None when it does not say)."""
    import re

    m = re.search(r"needs\b[^;]*?(\d*\.?\d+)\s*bpp", message)
    return float(m.group(1)) if m else None


def timed_encode(row: dict[str, Any], encode) -> tuple[Any, float]:
    """(``encode()``'s result, seconds), or (None, seconds) with ``row`` marked unreachable (and the bpp the
    codec says it needs) or failed: one failing image must not stop the benchmark."""
    import time

    from coldpress.errors import RateUnreachableError

    start = time.perf_counter()
    try:
        result = encode()
    except RateUnreachableError as exc:
        row.update(status="unreachable", encode_s=time.perf_counter() - start, needed_bpp=_needed_bpp(str(exc)),
                   message=str(exc))
        return None, time.perf_counter() - start
    except Exception as exc:  # noqa: BLE001
        row.update(status="error", message=f"encode failed: {type(exc).__name__}: {exc}")
        return None, time.perf_counter() - start
    return result, time.perf_counter() - start


def decoder_variants(specs: list[str], model: str | None) -> list[tuple[str, Any]]:
    """(name suffix, DecoderChoice or None for the coarse decode) of --decoders entries: ``coarse`` or
    ``diffusion:STEPS:DETAIL``."""
    from coldpress.codec.diffusion import DecoderChoice
    from coldpress.errors import ColdpressError

    out = []
    for spec in dict.fromkeys(specs):
        if spec == "coarse":
            out.append(("", None))
            continue
        parts = spec.split(":")
        try:
            if parts[0] != "diffusion" or len(parts) != 3:
                raise ValueError
            steps, detail = int(parts[1]), float(parts[2])
        except ValueError:
            raise ColdpressError(f"--decoders entry {spec!r} is neither 'coarse' nor 'diffusion:STEPS:DETAIL' "
                                 "(e.g. diffusion:2:1)") from None
        out.append((f"+diffusion-s{steps}-d{detail:g}", DecoderChoice("diffusion", steps, detail, model)))
    return out


def _score(row: dict[str, Any], image, decoded, realism: bool) -> None:
    from coldpress import metrics

    if decoded.shape != image.shape:
        row.update(status="error", message=f"decoded shape {decoded.shape} differs from the source's {image.shape}")
        return
    row.update(status="ok", psnr=metrics.psnr(image, decoded))
    try:
        row["ms_ssim"] = metrics.ms_ssim(image, decoded)
    except ValueError as exc:  # images under 11 px a side: PSNR only
        row["message"] = f"no MS-SSIM: {exc}"
    if realism:
        from coldpress import realism as measures

        try:
            row.update(measures.realism_row(image, decoded))
        except ValueError as exc:  # NIQE needs 192 px a side
            row["message"] = (row["message"] + "; " if row["message"] else "") + f"no realism measures: {exc}"


def measure_decoders(codec, codec_name: str, image_name: str, image, bpp: float, variants: list[tuple[str, Any]],
                     realism: bool = False, keep: dict | None = None) -> list[dict[str, Any]]:
    """``measure`` for the learned codec's bitstream decoded by each of ``variants`` (the coarse decode,
    then the diffusion decoder refining that same coarse decode: its decode time is the coarse decode's
    plus the refinement's); one row per variant, named codec_name + suffix. ``keep``: a dict that
    receives each variant's decoded image by row name."""
    import json
    import time

    from coldpress.codec.diffusion import refiner

    first = measure(codec, codec_name, image_name, image, bpp, realism=realism, keep=keep, _coarse=True)
    rows = []
    coarse = first.pop("_decoded", None)
    coarse_s = first.get("decode_s")
    h, w = image.shape[:2]
    for suffix, choice in variants:
        if choice is None:
            rows.append({**first, "codec": codec_name})
            continue
        row = {**first, "codec": codec_name + suffix, "psnr": None, "ms_ssim": None,
               **{k: None for k in REALISM_FIELDS}, "message": ""}
        if first["status"] != "ok":
            rows.append(row)
            continue
        start = time.perf_counter()
        try:
            decoded = refiner(choice, first["_bitstream"], w, h)(coarse)
        except Exception as exc:  # noqa: BLE001 - a failing decoder must not stop the benchmark
            row.update(status="error", message=f"diffusion decode failed: {type(exc).__name__}: {exc}")
            rows.append(row)
            continue
        decode_s = coarse_s + time.perf_counter() - start
        row.update(decode_s=decode_s, decode_mp_s=w * h / 1e6 / decode_s,
                   params=json.dumps({**json.loads(first["params"]), "decoder": choice.to_dict()}, sort_keys=True))
        _score(row, image, decoded, realism)
        if keep is not None:
            keep[row["codec"]] = decoded
        rows.append(row)
    for row in rows:
        row.pop("_bitstream", None)
    return rows


def measure(codec, codec_name: str, image_name: str, image, bpp: float, realism: bool = False,
            keep: dict | None = None, _coarse: bool = False) -> dict[str, Any]:
    """Encode, decode and score one image at one target; never raises for a codec failure.

    ``realism`` adds NIQE, the sliced Wasserstein distance and the high-frequency energy ratio;
    ``keep`` (a dict) receives the decoded image under ``codec_name``."""
    import json
    import time


    h, w = image.shape[:2]
    megapixels = w * h / 1e6
    row: dict[str, Any] = {f: None for f in PER_IMAGE_FIELDS}
    row.update(image=image_name, width=w, height=h, codec=codec_name, target_bpp=bpp, params="", message="")
    result, encode_s = timed_encode(row, lambda: codec.encode(image, bpp))
    if result is None:
        return row
    row.update(achieved_bpp=result.achieved_bpp, encode_s=encode_s, encode_mp_s=megapixels / encode_s,
               params=json.dumps(result.params, sort_keys=True))
    codec.forget_decodes()  # time a restore: nothing kept from the encode
    start = time.perf_counter()
    try:
        decoded = codec.decode(result.bitstream)
    except Exception as exc:  # noqa: BLE001
        row.update(status="error", message=f"decode failed: {type(exc).__name__}: {exc}")
        return row
    decode_s = time.perf_counter() - start
    row.update(decode_s=decode_s, decode_mp_s=megapixels / decode_s)
    _score(row, image, decoded, realism)
    if keep is not None and row["status"] == "ok":
        keep[codec_name] = decoded
    if _coarse:
        row.update(_decoded=decoded, _bitstream=result.bitstream)
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
                **{f"mean_{k}": (_mean([r.get(k) for r in ok]) if ok and all(r.get(k) is not None for r in ok)
                                 else None) for k in REALISM_FIELDS},
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

    variants, skipped_decoders = _usable_variants(args, codecs)
    realism = not getattr(args, "no_realism", False)
    crops_target = _crops_target(args, targets)
    crop_images = {name for name, _ in images[: max(0, getattr(args, "crops", 3))]} if crops_target else set()
    kept: dict[str, dict[str, Any]] = {name: {} for name in crop_images}
    rows = []
    with tqdm(total=len(codecs) * len(images) * len(targets), desc="bench rd", unit="code",
              disable=not show_progress(args)) as bar:
        for name, codec in codecs.items():
            bar.set_postfix_str(name)
            learned = getattr(codec, "name", "") == "learned" and variants
            measure(codec, name, images[0][0], images[0][1], targets[-1])  # warm-up, untimed
            if learned:  # the diffusion decoder's load and first run, untimed too
                measure_decoders(codec, name, images[0][0], images[0][1][:64, :64], targets[-1] * 4, variants[:2])
            for image_name, image in images:
                for target in targets:
                    keep = kept[image_name] if image_name in kept and target == crops_target else None
                    if learned:
                        rows.extend(measure_decoders(codec, name, image_name, image, target, variants, realism, keep))
                    else:
                        rows.append(measure(codec, name, image_name, image, target, realism, keep))
                    bar.update()

    names = list(dict.fromkeys(r["codec"] for r in rows))
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
        "decoders": [{"suffix": suffix or "(coarse)", **(choice.to_dict() if choice else {"decoder": "coarse"})}
                     for suffix, choice in variants] if variants else ["coarse"],
        "diffusion_decoder": _decoder_identity(variants),
        "skipped_decoders": skipped_decoders,
        "realism": None if not realism else {
            "measures": "coldpress.realism: niqe (of the reconstruction; coldpress's own pristine model, not "
                        "comparable with published NIQE), swd_x1e3 (sliced Wasserstein distance of Laplacian-"
                        "pyramid patches, original vs reconstruction, per image, x1e3), hf_energy_ratio (finest "
                        "Laplacian band energy, reconstruction over original; 1 is ideal, blur < 1)",
            "niqe_originals": _mean([_niqe(image) for _, image in images]),
        },
        "cpu": _device_name(None),
        "learned_device": _device_name(codecs["learned"].device) if "learned" in codecs else None,
        "summary": summary,
        "bjontegaard": bd,
    }
    (out / "summary.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    plot_rd(out / "rd.png", summary, names, f"{len(images)} images from {folder.name}")
    if crops_target and kept:
        report["crops"] = _write_crops(out / "crops.png", images, kept, crops_target, names)
        (out / "summary.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")

    say(args, f"{'codec':<30}{'target':>8}{'reached':>9}{'bpp':>9}{'PSNR':>8}{'MS-SSIM':>9}{'NIQE':>7}{'SWD':>7}"
              f"{'HF':>6}{'enc MP/s':>10}{'dec MP/s':>10}")
    def fmt(v, spec):
        width = int(spec.split(".")[0])
        return format(v, spec) if v is not None else "-".rjust(width)

    for s in summary:
        say(args, f"{s['codec']:<30}{s['target_bpp']:>8g}{s['reached']:>5}/{s['images']:<3}"
             f"{fmt(s['mean_achieved_bpp'], '9.4f')}{fmt(s['mean_psnr'], '8.2f')}{fmt(s['mean_ms_ssim'], '9.4f')}"
             f"{fmt(s['mean_niqe'], '7.2f')}{fmt(s['mean_swd_x1e3'], '7.1f')}{fmt(s['mean_hf_energy_ratio'], '6.2f')}"
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
    say(args, f"wrote {out}/per_image.csv, summary.csv, summary.json, bd.csv, rd.png"
              + (", crops.png" if (out / "crops.png").exists() and crops_target else ""))
    return 0


def _usable_variants(args: argparse.Namespace, codecs: dict) -> tuple[list[tuple[str, Any]], dict[str, str]]:
    """The --decoders variants to score, and those skipped with the reason (no diffusion decoder)."""
    specs = list(getattr(args, "decoders", None) or DEFAULT_DECODERS)
    if not any(getattr(c, "name", "") == "learned" for c in codecs.values()):
        return [], {}
    variants = decoder_variants(specs, getattr(args, "decoder_model", None))
    diffusion = [v for v in variants if v[1] is not None]
    if not diffusion:
        return variants, {}
    from coldpress.codec.diffusion.decoder import get_decoder
    from coldpress.errors import ColdpressError

    try:
        get_decoder(diffusion[0][1].model)
    except ColdpressError as exc:
        _note(f"diffusion decoders skipped: {exc}")
        return [v for v in variants if v[1] is None], {s: str(exc) for s in specs if s != "coarse"}
    return variants, {}


def _decoder_identity(variants: list[tuple[str, Any]]) -> dict[str, Any] | None:
    diffusion = [c for _, c in variants if c is not None]
    if not diffusion:
        return None
    from coldpress.codec.diffusion import provenance

    ident = provenance(diffusion[0])
    return {"decoder_id": ident["decoder_id"], "decoder_sha256": ident["decoder_sha256"]}


def _niqe(image) -> float | None:
    from coldpress import realism

    try:
        return realism.niqe(image)
    except ValueError:
        return None


def _crops_target(args: argparse.Namespace, targets: list[float]) -> float | None:
    """The target whose reconstructions the crops figure shows: --crops-bpp, else 0.03 when benchmarked."""
    wanted = getattr(args, "crops_bpp", None)
    if getattr(args, "crops", 3) <= 0:
        return None
    if wanted is None:
        wanted = 0.03
    return min(targets, key=lambda t: abs(t - wanted)) if any(abs(t - wanted) < 1e-9 for t in targets) else None


def _crop_box(image, side: int) -> tuple[int, int]:
    """(top, left) of the ``side`` px square with the most fine detail (gradient energy) of ``image``."""
    import numpy as np

    gray = image.astype(np.float32).mean(axis=2) if image.ndim == 3 else image.astype(np.float32)
    energy = np.abs(np.diff(gray, axis=0))[:, :-1] + np.abs(np.diff(gray, axis=1))[:-1, :]
    h, w = energy.shape
    side = min(side, h, w)
    integral = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    step = max(1, side // 4)
    best, where = -1.0, (0, 0)
    for top in range(0, h - side + 1, step):
        for left in range(0, w - side + 1, step):
            total = (integral[top + side, left + side] - integral[top, left + side]
                     - integral[top + side, left] + integral[top, left])
            if total > best:
                best, where = total, (top, left)
    return where


def _write_crops(path: Path, images, kept: dict[str, dict[str, Any]], target: float, names: list[str]) -> dict:
    """crops.png: the same crop of each kept image, original then avif-half, the coarse decode and the
    diffusion decoder at its default settings (when benchmarked), at ``target`` bpp."""
    from coldpress import realism

    diffusion = next((n for n in names if n.startswith("learned+diffusion-s2-d1")), None) or next(
        (n for n in names if "+diffusion" in n), None)
    columns = [c for c in ("avif-half", "learned", diffusion) if c and all(c in k for k in kept.values())]
    labels = {"learned": "coarse", diffusion: "diffusion " + diffusion.split("+diffusion-")[-1] if diffusion else ""}
    by_name = dict(images)
    grid: dict[str, list] = {"original": []}
    for c in columns:
        grid[labels.get(c, c)] = []
    boxes = {}
    for image_name, decoded in kept.items():
        if not all(c in decoded for c in columns):
            continue
        image = by_name[image_name]
        top, left = _crop_box(image, CROP_SIDE)
        boxes[image_name] = [top, left, CROP_SIDE]
        grid["original"].append(image[top:top + CROP_SIDE, left:left + CROP_SIDE])
        for c in columns:
            grid[labels.get(c, c)].append(decoded[c][top:top + CROP_SIDE, left:left + CROP_SIDE])
    if not grid["original"]:
        return {"written": False, "reason": "no image had every column decoded"}
    realism.crops_figure(path, grid, zoom=2, title=f"the same crops at {target:g} bpp: " + ", ".join(grid))
    return {"written": True, "file": path.name, "target_bpp": target, "columns": list(grid),
            "crops": boxes, "crop": "the most detailed square of each image (top, left, side in pixels)"}


def add_decoder_options(parser: argparse.ArgumentParser) -> None:
    """``bench rd``'s options for decoders, realism measures and the crops figure."""
    group = parser.add_argument_group("decoders and realism")
    group.add_argument("--decoders", nargs="+", default=None, metavar="SPEC",
                       help="decoders of the learned codec's bitstreams to score: coarse, diffusion:STEPS:DETAIL "
                       f"(default: {' '.join(DEFAULT_DECODERS)}; the diffusion ones only when a diffusion decoder "
                       "is shipped or given with --decoder-model)")
    group.add_argument("--decoder-model", default=None, metavar="ID_OR_PATH",
                       help="diffusion decoder weights (default: the shipped default decoder)")
    group.add_argument("--no-realism", action="store_true",
                       help="skip NIQE, the sliced Wasserstein distance and the high-frequency energy ratio")
    group.add_argument("--crops", type=int, default=3, metavar="N",
                       help="crops.png: the same crop of the first N images, original, avif-half, coarse and "
                       "diffusion side by side (default: 3; 0: none)")
    group.add_argument("--crops-bpp", type=float, default=None, metavar="BPP",
                       help="target of the crops figure (default: 0.03, when benchmarked)")
