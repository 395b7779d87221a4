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

On a folder of geospatial rasters (``jobs/bench/rd_raster.py``) every raster is coded as ``coldpress
encode`` codes it (all bands, --codecs default learned), and JPEG 2000 (``jp2``, GDAL JP2OpenJPEG)
and COG with WebP (``cog-webp``) are coded at the same or fewer bytes; per_image.csv then also has
each band's PSNR and RMSE in the source's units, and summary.json a per-band table.

Means over a (codec, target) whose target some images cannot reach mix easier images only: such
rows are flagged (``complete`` false), drawn as hollow markers, and left out of the Bjøntegaard
curves, which use only targets every image reached. Each codec is warmed up with one untimed
encode and decode before its timings.

``coldpress bench speed`` measures frames and megapixels per second at 1920x1080 (or --width/--height,
or several --sizes such as ``kodak 1mp 4mp``) on one device: the learned codec's analysis networks
alone (g_a, then g_a with gains and the hyper-analysis h_a; batch 1 and batched; no grad; warm-up;
synchronised on GPU), the whole ``codec.encode`` call (entropy coding and rate search included), encode
plus the verify-on-write decode, and ``codec.decode``, at batch 1 (the codec API codes one image per
call). It reports the encoder's parameters and GFLOPs per frame (torch.utils.flop_counter:
convolutions, GDN's included, one multiply-add = 2 FLOPs), the load average before and after, and
writes speed.json and speed.csv to --out (default results/speed).
"""

from __future__ import annotations

import argparse

from coldpress.jobs.bench.pipeline import _pipeline_engines, run_pipeline
from coldpress.jobs.bench.rd import DEFAULT_BPPS, DEFAULT_RD_CODECS, add_decoder_options, run_rd
from coldpress.jobs.bench.speed import run_speed


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
    rd.add_argument("--codecs", nargs="+", default=None, metavar="CODEC",
                    help=f"codecs to compare (default: {' '.join(DEFAULT_RD_CODECS)}; on a folder of geospatial "
                    "rasters: learned, against JPEG 2000 (jp2) and COG-WebP (cog-webp) at its bytes)")
    rd.add_argument("--out", default="results/rd", metavar="DIR", help="output folder (default: results/rd)")
    rd.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N images (sorted by name)")
    _learned_options(rd)
    add_decoder_options(rd)
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
    from coldpress.jobs.bench.speed import NAMED_SIZES, parse_size

    speed.add_argument("--sizes", type=parse_size, nargs="+", default=None, metavar="SIZE",
                       help="frame sizes to time one after the other, WIDTHxHEIGHT or a name ("
                       + ", ".join(f"{k} = {w}x{h}" for k, (w, h) in NAMED_SIZES.items())
                       + "); replaces --width/--height")
    speed.add_argument("--threads", type=int, default=None, metavar="N",
                       help="torch threads (default: torch's own choice, one per core)")
    speed.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8], metavar="N",
                       help="batch sizes for the network timings (default: 1 4 8)")
    speed.add_argument("--repeat", type=int, default=5, metavar="N", help="timed runs per measurement (default: 5)")
    speed.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed runs first (default: 2)")
    speed.add_argument("--bpp", type=float, default=0.05, help="target of the timed encode calls (default: 0.05)")
    speed.add_argument("--image", default=None, metavar="PATH",
                       help="image to time on, resized to the frame size (default: the sample "
                       "coldpress/samples/photos/coffee.jpg)")
    speed.add_argument("--out", default="results/speed", metavar="DIR", help="output folder (default: results/speed)")
    from coldpress.jobs.bench.speed_decoders import add_options as add_decoder_speed_options

    add_decoder_speed_options(speed)
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
    from coldpress.jobs.bench.scale import add_parser as add_scale

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
    group.add_argument("--effort", type=int, default=0, metavar="N",
                       help="encoder effort of the learned codec: 0 fast (default), 1 or 2 latent refinement; a "
                       "codec named learned:effort=N (in --codecs) sets it for that entry, and "
                       "learned:model=ID_OR_PATH its model (learned:model=ID,effort=N both), so one run can "
                       "compare efforts or models")


def run(args: argparse.Namespace) -> int:
    return int(args._bench(args) or 0)
