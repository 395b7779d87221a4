"""``coldpress restore ARCHIVE DST (--id ID ... | --all)``: decode archived images into files."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from coldpress.defaults import DEFAULT_RESTORE_FORMAT
from coldpress.jobs.encode import add_beam_option
from coldpress.jobs.engines import add_engine_options, engine_kwargs

#: Output formats offered by --format (restored_name/write_image accept these).
FORMATS = ("auto", "geotiff", "cog", "png", "webp", "tiff", "bmp", "jpeg")
#: Engines by name: (module, restore function with the signature of restore_local).
ENGINES = {
    "local": ("coldpress.pipelines.local", "restore_local"),
    "beam": ("coldpress.pipelines.beam", "restore_beam"),
    "ray": ("coldpress.pipelines.ray", "restore_ray"),
}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "restore",
        help="decode archived images into files",
        description=(
            "Decode images of ARCHIVE into files under DST, named after their ids (the source paths "
            "relative to the encoded SRC, with the extension of --format). Only the row groups "
            "holding the requested ids are read."
        ),
    )
    p.add_argument("archive", metavar="ARCHIVE", help="archive directory, local or URL (s3://bucket/archive)")
    p.add_argument("dst", metavar="DST", help="folder to write the images into, local or URL")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", dest="ids", action="append", metavar="ID",
                       help="id of an image to restore (repeat for several); `coldpress inspect --ids` lists them")
    which.add_argument("--all", action="store_true", help="restore every image of the archive")
    p.add_argument("--format", dest="fmt", choices=FORMATS, default=DEFAULT_RESTORE_FORMAT,
                   help=f"file format of the restored images (default: {DEFAULT_RESTORE_FORMAT}: PNG for photos, a Cloud "
                   "Optimized GeoTIFF for georeferenced rasters; geotiff/cog: COG for rasters; tiff: a plain GeoTIFF "
                   "for rasters; png and the others: the 8-bit view of bands 1-3 of a raster; jpeg drops alpha)")
    region = p.add_mutually_exclusive_group()
    region.add_argument("--window", nargs=4, type=int, metavar=("COL", "ROW", "WIDTH", "HEIGHT"),
                        help="restore only this pixel window of each raster (decodes only the tiles it overlaps)")
    region.add_argument("--bbox", nargs=4, type=float, metavar=("MINX", "MINY", "MAXX", "MAXY"),
                        help="restore only this bounding box of each raster, in the raster's CRS or --bbox-crs")
    p.add_argument("--bbox-crs", metavar="CRS", help="CRS of --bbox (e.g. EPSG:4326; default: the raster's own)")
    decoding = p.add_argument_group("decoder")
    decoding.add_argument("--decoder", choices=("coarse", "diffusion"), default="coarse",
                          help="coarse: the codec's own decoder, the one `verify` checks (default); diffusion: refine "
                          "it with the diffusion decoder (photos; sharper, plausible detail, slower)")
    decoding.add_argument("--steps", type=int, default=None, metavar="N",
                          help="diffusion steps, 1 to 5 (default: the decoder's, the steps it was fine-tuned for)")
    decoding.add_argument("--detail", type=float, default=None, metavar="S",
                          help="detail: 0 gives the coarse decode, 1 the trained decoder (default), above 1 sharper, "
                          "between 0 and 1 smoother")
    decoding.add_argument("--decoder-model", default=None, metavar="ID_OR_PATH",
                          help="diffusion decoder weights: a shipped decoder id or a .safetensors file (default: "
                          "the shipped default decoder)")
    decoding.add_argument("--decoder-backbone", default=None, metavar="PATH",
                          help="a local diffusers folder (unet/, vae/) of a Stable Diffusion checkpoint; "
                          "--decoder-model is then the control branch trained on it")
    p.add_argument("--engine", choices=sorted(ENGINES), default="local", help="engine that runs the job (default: local)")
    from coldpress.jobs.cli import add_models_option

    add_models_option(p)
    add_beam_option(p)
    add_engine_options(p)
    service = p.add_argument_group("warm restore service (Ray)")
    service.add_argument("--service", action="store_true",
                         help="restore through the archive's warm restore service on the Ray cluster at --address "
                         "(default: auto, the cluster `ray start` runs on this machine), starting it when none runs; "
                         "it keeps its decoders loaded for the next requests (--actors decoders, "
                         "--cpus-per-actor / --gpus-per-actor each)")
    service.add_argument("--stop-service", action="store_true",
                         help="with --service: stop the archive's service after this request")
    return p


def run(args: argparse.Namespace) -> int:
    from coldpress.jobs.cli import say, show_progress, storage_options
    from coldpress.jobs.encode import beam_kwargs

    if args.service:
        return _run_service(args, _region(args), decoder_choice(args))
    if args.stop_service:
        from coldpress.errors import ColdpressError

        raise ColdpressError("--stop-service applies to --service only; add --service")
    region = _region(args)
    decoder = decoder_choice(args)
    module, function = ENGINES[args.engine]
    restore = getattr(importlib.import_module(module), function)
    paths = restore(
        args.archive, args.dst, ids=None if args.all else args.ids, fmt=args.fmt,
        storage_options=storage_options(args), progress=show_progress(args), **beam_kwargs(args),
        **engine_kwargs(args, args.engine), **({"region": region} if region else {}),
        **({"decoder": decoder} if decoder else {}),
    )
    say(args, f"restored {len(paths)} image(s) to {args.dst}")
    return 0


def decoder_choice(args: argparse.Namespace) -> dict[str, Any] | None:
    """The fields of the --decoder choice (checked), or None for the coarse decoder with no options."""
    from coldpress.codec.diffusion import DecoderChoice

    choice = DecoderChoice(decoder=args.decoder, steps=args.steps, detail=args.detail, model=args.decoder_model,
                           backbone=args.decoder_backbone)
    return None if choice.is_coarse else choice.to_dict()


def _region(args: argparse.Namespace) -> dict[str, Any] | None:
    """The region of --window / --bbox (with --bbox-crs), or None."""
    from coldpress.errors import ColdpressError

    if args.window:
        return {"window": tuple(args.window)}
    if args.bbox:
        return {"bbox": tuple(args.bbox), "bbox_crs": args.bbox_crs}
    if args.bbox_crs:
        raise ColdpressError("--bbox-crs applies to --bbox only; add --bbox MINX MINY MAXX MAXY")
    return None


def _run_service(args: argparse.Namespace, region: dict[str, Any] | None = None,
                 decoder: dict[str, Any] | None = None) -> int:
    """``--service``: send the request to the archive's warm service (started when none runs)."""
    from coldpress.errors import ColdpressError
    from coldpress.jobs.cli import say, storage_options
    from coldpress.pipelines.ray import RestoreService, connect

    if args.engine not in ("local", "ray"):
        raise ColdpressError(f"--service runs on Ray; drop --engine {args.engine} (or use --engine ray)")
    connect(args.address or "auto", quiet=True)
    options = storage_options(args)
    try:
        service = RestoreService.connect(args.archive)
        started = False
    except ColdpressError:
        service = RestoreService.start(
            args.archive, storage_options=options, num_decoders=args.actors or 1,
            cpus_per_decoder=args.cpus_per_actor, gpus_per_decoder=args.gpus_per_actor, detached=True,
        )
        started = True
    try:
        ids = args.ids
        if args.all:
            from coldpress.transforms.archive import open_archive
            from coldpress.transforms.sources import filesystem_for

            fs, _ = filesystem_for(args.archive, options)
            ids = open_archive(args.archive, filesystem=fs).read(columns=["id"]).column("id").to_pylist()
        paths = service.restore(ids, args.dst, args.fmt, storage_options=options, region=region, decoder=decoder)
    finally:
        if args.stop_service:
            service.shutdown()
    say(args, f"restored {len(paths)} image(s) to {args.dst} through the restore service {service.name}"
              + (" (started now)" if started else "") + ("; service stopped" if args.stop_service else ""))
    return 0
