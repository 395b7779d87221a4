"""``coldpress encode SRC DST --bpp B``: encode every image under SRC into the archive DST."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from coldpress.defaults import DEFAULT_CODEC
from coldpress.jobs.engines import add_engine_options, engine_kwargs, positive_int

#: Engines by name: (module, encode function). The local engine runs in this process.
ENGINES = {
    "local": ("coldpress.pipelines.local", "encode_local"),
    "beam": ("coldpress.pipelines.beam", "encode_beam"),
    "ray": ("coldpress.pipelines.ray", "encode_ray"),
}
#: Rejected inputs listed in the summary (all of them are in the archive's rejected table).
SHOWN_REJECTIONS = 20


def _bpp(text: str) -> float:
    from coldpress.codec.base import check_bpp

    try:
        return check_bpp(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of bits per pixel; pass e.g. 0.05") from None


def _effort(text: str) -> int:
    from coldpress.codec.refine import EFFORTS

    try:
        effort = int(text)
    except ValueError:
        effort = None
    if effort not in EFFORTS:
        raise argparse.ArgumentTypeError(f"{text!r} is not an effort level; pass one of {', '.join(map(str, EFFORTS))}")
    return effort


def dataset_src(args: argparse.Namespace) -> str:
    """SRC with --image-column/--id-column added to a parquet: source (an error for other SRCs)."""
    from coldpress.errors import ColdpressError

    query = [f"{k}={v}" for k, v in (("image", args.image_column), ("id", args.id_column)) if v]
    if not query:
        return args.src
    if not str(args.src).startswith("parquet:"):
        raise ColdpressError("--image-column and --id-column apply to a Parquet source; write SRC as "
                             f"parquet:{args.src} or drop them")
    return args.src + ("&" if "?" in args.src else "?") + "&".join(query)


def local_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``{"workers": N}`` for the local engine when --workers was given; an error with another engine."""
    from coldpress.errors import ColdpressError

    workers = getattr(args, "workers", None)
    if workers is None:
        return {}
    if args.engine != "local":
        raise ColdpressError(f"--workers applies to --engine local only (this run uses --engine {args.engine}); "
                             "drop it (--actors sets the Ray engine's processes)")
    return {"workers": workers}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "encode",
        help="encode images into a Parquet archive",
        description=(
            "Encode every file under SRC into the archive DST at BPP bits per pixel. Files that cannot "
            "be archived go to DST's rejected table with the reason. Running again on the same DST "
            "adds only the inputs not yet archived."
        ),
    )
    p.add_argument("src", metavar="SRC", help="folder, file or URL of the source images (s3://bucket/prefix); or a "
                   "dataset: parquet:PATH (Parquet files with an image column), webdataset:PATH (tar shards), "
                   "listing:FILE (text, CSV or Parquet list of URIs)")
    p.add_argument("dst", metavar="DST", help="archive directory to write, local or URL")
    p.add_argument("--image-column", default=None, metavar="COLUMN",
                   help="with SRC parquet:PATH: the column of encoded image bytes (default: image)")
    p.add_argument("--id-column", default=None, metavar="COLUMN",
                   help="with SRC parquet:PATH: the column of ids (default: <file stem>/<row number>)")
    p.add_argument("--bpp", type=_bpp, required=True, help="target bits per pixel, e.g. 0.05 (container bytes included)")
    p.add_argument("--codec", default=DEFAULT_CODEC, help=f"codec name (default: {DEFAULT_CODEC}); see `coldpress encode --list-codecs`")
    p.add_argument("--list-codecs", action=_ListCodecs, nargs=0, help="list the available codecs and exit")
    learned = p.add_argument_group("learned codec (--codec learned)")
    learned.add_argument("--model", default=None, metavar="ID_OR_PATH",
                         help="shipped model id or an exported .safetensors file (default: the bundled default "
                         "model); every engine's workers load the same file")
    learned.add_argument("--device", default=None, metavar="DEVICE",
                         help="where the codec runs: cpu, cuda, cuda:1 (default: cuda when present, else cpu)")
    learned.add_argument("--tile", type=int, default=None, metavar="PX",
                         help="encoder analysis tile in pixels for large images (default 1024); decoding always "
                         "uses the model's own tiling")
    learned.add_argument("--no-scale-search", dest="scale_search", action="store_false", default=None,
                         help="do not try a smaller scale at the lowest rates (faster encode)")
    learned.add_argument("--effort", type=_effort, default=None, metavar="N",
                         help="encoder effort: 0 fast (default); 1 and 2 refine each image's latent for rate and "
                         "distortion with the networks frozen (same bitstream format, every decoder restores it; "
                         "much slower encode, see results/rd-effort)")
    p.add_argument("--engine", choices=sorted(ENGINES), default="local", help="engine that runs the job (default: local)")
    add_beam_option(p)
    add_engine_options(p)
    local = p.add_argument_group("local engine (--engine local)")
    local.add_argument("--workers", type=positive_int, default=None, metavar="N",
                       help="encode processes (default: one per CPU core; one for --codec learned, whose threads "
                       "use every core); the archive is the same for any N")
    p.add_argument("--strict", action="store_true", help="exit with status 2 when any input was rejected")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="refuse to add to an existing archive instead of skipping the inputs it already holds")
    p.add_argument("--report", action="store_true", help="print a table of every archived image: bytes, bpp, PSNR")
    p.add_argument("--compare", default=None, metavar="CODEC",
                   help="with --report, also encode each source with CODEC (e.g. avif-half) at the bytes its "
                        "archived bitstream takes, and print the PSNR CODEC reaches there (slow on big folders)")
    return p


#: Learned-codec options of the command line: argparse dest -> codec option.
CODEC_OPTIONS = {"model": "model", "device": "device", "tile": "tile", "scale_search": "scale_search",
                 "effort": "effort"}


def codec_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``{"codec_options": {...}}`` from the learned-codec options given, or {} when none was given."""
    from coldpress.errors import ColdpressError

    given = {opt: getattr(args, dest) for dest, opt in CODEC_OPTIONS.items() if getattr(args, dest, None) is not None}
    if given.get("effort") == 0:
        del given["effort"]  # the default: the codec is built (and its workers rebuilt) exactly as without it
    if not given:
        return {}
    if args.codec != "learned":
        flags = ", ".join("--no-scale-search" if k == "scale_search" else f"--{k}" for k in given)
        raise ColdpressError(f"{flags} only apply to --codec learned (this run uses --codec {args.codec}); drop them")
    if "tile" in given and given["tile"] < 64:
        raise ColdpressError(f"--tile {given['tile']} is too small; pass at least 64 (pixels)")
    return {"codec_options": given}


def add_beam_option(p: argparse.ArgumentParser) -> None:
    """``--beam-option``: Beam pipeline flags passed through to the runner (also used by restore)."""
    p.add_argument("--beam-option", dest="beam_options", action="append", default=[], metavar="FLAG",
                   help="with --engine beam: a Beam pipeline option, passed to the runner; write it with '=' "
                   "and repeat it, e.g. --beam-option=--runner=FlinkRunner --beam-option=--flink_master=host:8081 "
                   "(default runner: FnApiRunner in this process, one worker per CPU core)")


def beam_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The engine's extra keyword arguments: ``pipeline_args`` for beam; --beam-option elsewhere is an error."""
    import shlex

    from coldpress.errors import ColdpressError

    flags = [flag for option in getattr(args, "beam_options", None) or [] for flag in shlex.split(option)]
    if args.engine == "beam":
        return {"pipeline_args": flags}
    if flags:
        raise ColdpressError(f"--beam-option applies to --engine beam only (this run uses --engine {args.engine}); "
                             "add --engine beam or drop the option")
    return {}


class _ListCodecs(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):  # noqa: D102
        from coldpress.codec import codec_names

        for name in codec_names():
            print(name)
        parser.exit()


def run(args: argparse.Namespace) -> int:
    from coldpress.errors import RejectedInputs
    from coldpress.jobs.cli import show_progress, storage_options

    args.src = dataset_src(args)
    module, function = ENGINES[args.engine]
    encode = getattr(importlib.import_module(module), function)
    options = storage_options(args)
    try:
        manifest = encode(
            args.src, args.dst, codec=args.codec, bpp=args.bpp, storage_options=options,
            resume=args.resume, strict=args.strict, progress=show_progress(args), **beam_kwargs(args),
            **engine_kwargs(args, args.engine), **codec_kwargs(args), **local_kwargs(args),
        )
        strict_failure = None
    except RejectedInputs as exc:
        manifest, strict_failure = exc.manifest, exc
    _summarize(args, manifest, options)
    if strict_failure is not None:
        print(f"coldpress encode: {strict_failure}", file=sys.stderr)
        return 2
    return 0


def _summarize(args: argparse.Namespace, manifest: dict[str, Any], options: dict[str, Any] | None) -> None:
    from coldpress.jobs.cli import say

    if args.report:
        print_report(args.dst, options, compare=getattr(args, "compare", None))
    say(args,
        f"archived {manifest.get('archived', 0)}, rejected {manifest.get('rejected', 0)}, "
        f"skipped {manifest.get('skipped', 0)} already archived; {args.dst} now holds "
        f"{manifest.get('num_rows', 0)} image(s) and {manifest.get('num_rejected', 0)} rejection(s)")
    if manifest.get("rejected") and not args.quiet:
        _print_rejections(args.dst, options)


def _print_rejections(dst: str, options: dict[str, Any] | None) -> None:
    from coldpress.transforms.archive import open_archive
    from coldpress.transforms.sources import filesystem_for

    fs, _ = filesystem_for(dst, options)
    rejected = open_archive(dst, filesystem=fs).rejected().sort_by("id").to_pylist()
    print("rejected:")
    for row in rejected[:SHOWN_REJECTIONS]:
        print(f"  {row['id']}: {row['reason']}")
    if len(rejected) > SHOWN_REJECTIONS:
        print(f"  ... and {len(rejected) - SHOWN_REJECTIONS} more: see `coldpress inspect {dst}`")


def print_report(archive: str, options: dict[str, Any] | None, compare: str | None = None) -> None:
    """Print one line per archived image: id, size, stored bytes, achieved bpp, PSNR; with
    ``compare`` (a codec name), also the PSNR that codec reaches at the same bytes."""
    from coldpress.transforms.archive import open_archive
    from coldpress.transforms.sources import filesystem_for

    fs, _ = filesystem_for(archive, options)
    columns = ["id", "source_uri", "width", "height", "source_bytes", "achieved_bpp", "psnr", "codec"]
    rows = open_archive(archive, filesystem=fs).read(columns=columns).sort_by("id").to_pylist()
    if not rows:
        print("(no images archived)")
        return
    width = max(12, *(len(r["id"]) for r in rows))
    extra = f"  {compare + ' PSNR at same B':>22}" if compare else ""
    print(f"{'id':<{width}}  {'size':>9}  {'codec':<12} {'source B':>9}  {'archived B':>10}  {'bpp':>6}  {'PSNR dB':>7}"
          + extra)
    total_pixels = total_bytes = 0
    for r in rows:
        pixels = r["width"] * r["height"]
        stored = round(r["achieved_bpp"] * pixels / 8)
        total_pixels += pixels
        total_bytes += stored
        psnr = f"{r['psnr']:.2f}" if r["psnr"] is not None else "-"
        line = (f"{r['id']:<{width}}  {r['width']:>4}x{r['height']:<4}  {r['codec']:<12} {r['source_bytes']:>9}  "
                f"{stored:>10}  {r['achieved_bpp']:>6.4f}  {psnr:>7}")
        if compare:
            line += f"  {compare_at_bytes(r['source_uri'], stored, compare, options):>22}"
        print(line)
    print(f"{'total':<{width}}  {'':>9}  {'':<12} {sum(r['source_bytes'] for r in rows):>9}  {total_bytes:>10}  "
          f"{8 * total_bytes / total_pixels:>6.4f}")
    if compare:
        print(f"(last column: the source encoded again with {compare} under the same byte budget as its archived "
              "bitstream, container included; '-' where it cannot go that low)")
    from coldpress.jobs.inspect import print_raster_quality, raster_quality

    print_raster_quality(raster_quality(open_archive(archive, filesystem=fs)))


def compare_at_bytes(source_uri: str, budget: int, codec_name: str, options: dict[str, Any] | None) -> str:
    """The PSNR (dB, as text) codec ``codec_name`` reaches on the source at ``source_uri`` with a
    bitstream of at most ``budget`` bytes (its own rate control), and the bytes it used; "-" when
    its smallest bitstream is larger."""
    from coldpress.codec import get_codec
    from coldpress.errors import InputRejected, RateUnreachableError
    from coldpress.metrics import psnr
    from coldpress.transforms.read import decode_input
    from coldpress.transforms.sources import read_bytes

    from coldpress.transforms import raster

    data = read_bytes(source_uri, options)
    codec = get_codec(codec_name)
    as_raster = raster.is_raster(data)
    if not as_raster:
        try:
            image = decode_input(data, source_uri).pixels
        except InputRejected:  # archived as a raster when GDAL reads what Pillow cannot (records.encode_record)
            if raster.is_photo_format(data) or not raster.gdal_opens(data):
                raise
            as_raster = True
    if as_raster:
        with raster.open_bytes(data) as ds:  # a raster: every band, the same package layout
            pixels = ds.width * ds.height
        try:
            enc = raster.encode_raster(data, source_uri, codec, (budget + 0.5) * 8 / pixels)
        except RateUnreachableError:
            return "-"
        return f"{enc.quality['psnr']:.2f} ({len(enc.package)} B)"
    h, w = image.shape[:2]
    try:
        result = codec.encode(image, bpp=(budget + 0.5) * 8 / (w * h))  # budget = int(bpp * W * H / 8)
    except RateUnreachableError:
        return "-"
    return f"{psnr(image, codec.decode(result.bitstream)):.2f} ({len(result.bitstream)} B)"
