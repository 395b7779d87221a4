"""``coldpress bench pipeline``: a distributed engine's throughput against the plain loop, and the warm
restore service's latency."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from coldpress.jobs.bench.common import _list_images, _write_csv, default_eval_folder
from coldpress.transforms.sources import IMAGE_SUFFIXES
from coldpress.versions import coldpress_version

PIPELINE_FIELDS = (
    "stage", "engine", "runner", "codec", "target_bpp", "images", "archived", "rejected", "megapixels", "seconds",
    "images_per_s", "megapixels_per_s", "speedup", "identical_bitstreams", "peak_rss_mb",
)
#: Engines with a warm restore service, timed by `bench pipeline`: name -> (module, service class).
PIPELINE_SERVICES = {
    "ray": ("coldpress.pipelines.ray", "RestoreService"),
}

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
