"""``coldpress bench scale``: the engines at dataset scale, and archives under random damage.

For each size (default 1,000, 10,000 and 100,000) the bench makes that many small synthetic JPEGs
(64x64, distinct), times a plain loop over them (read the file, ``records.process_input`` with the
jpeg codec: the per-input work every engine does, nothing else) and then each engine's encode in its
own process: images per second, the ratio to the plain loop, the driver's peak memory (its own
``ru_maxrss``) and the largest peak of its worker processes (every descendant process, sampled), and
whether every input is archived exactly once (``runner_dropped``: inputs the engine's runner dropped
without an error and a further pass encoded: ``encode_beam``). ``--damage N`` adds N random damages (a flipped byte
or a truncation of a random file of a small archive: data pages, footers, manifest, rejected table)
and counts what ``verify`` reports and any row that decodes to wrong pixels without being reported.
``--faults RATE`` runs every engine through flaky object storage (``faults.py``: a loopback S3 server
behind a fault injector): faults injected, retries counted, inputs lost and duplicated, partial
objects visible. Results go to ``--out`` (scale.json and scale.csv; faults.json and faults.csv).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ENGINES = ("local", "ray", "beam")
DEFAULT_SIZES = (1_000, 10_000, 100_000)

_ENGINE_CODE = """
import json, resource, sys, time
engine, src, dst = sys.argv[1:4]
if engine == "local":
    from coldpress.pipelines.local import encode_local as encode
elif engine == "ray":
    from coldpress.pipelines.ray import encode_ray as encode
else:
    from coldpress.pipelines.beam import encode_beam as encode
from coldpress.codec import get_codec
get_codec("jpeg")  # imports of the codec modules: not the engine's cost (the plain loop is timed after them too)
start = time.perf_counter()
manifest = encode(src, dst, codec="jpeg", bpp=2.0, progress=False)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "archived": manifest["archived"], "rejected": manifest["rejected"],
                  "runner_dropped": sum(manifest.get("runner_lost_inputs") or []),
                  "driver_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def add_parser(benches: Any) -> argparse.ArgumentParser:
    p = benches.add_parser(
        "scale", help="engines at 1,000 to 100,000 small images, and random damage of archives",
        description="Make N synthetic 64x64 JPEGs for each --sizes N, time a plain loop and each --engines "
        "engine on them (images/s, ratio to the plain loop, driver and worker peak memory, every input "
        "exactly once), with --damage N check verify on N randomly damaged archives, and with --faults RATE "
        "run the engines through flaky S3 (--sizes '' for that alone); write scale.json and scale.csv "
        "(faults.json and faults.csv) to --out.",
    )
    p.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), metavar="N,N,...",
                   help="dataset sizes (default: 1000,10000,100000)")
    p.add_argument("--engines", default=",".join(ENGINES), metavar="E,E,...", help="engines (default: local,ray,beam)")
    p.add_argument("--damage", type=int, default=0, metavar="N", help="random damages to check (e.g. 1000; default 0)")
    p.add_argument("--faults", type=float, default=0.0, metavar="RATE",
                   help="run every --engines engine through S3 that fails this fraction of requests (e.g. 0.05; "
                        "default 0: not run)")
    p.add_argument("--fault-size", type=int, default=1000, metavar="N", help="images of the --faults run (default 1000)")
    p.add_argument("--work", default=None, metavar="DIR", help="scratch folder (default: a temporary one)")
    p.add_argument("--out", default="results/scale", metavar="DIR", help="output folder (default: results/scale)")
    p.set_defaults(_bench=run_scale)
    return p


def make_images(folder: Path, n: int) -> None:
    """``n`` distinct 64x64 JPEGs in folders of 1,000."""
    import numpy as np
    from PIL import Image

    base = (np.add.outer(np.arange(64), np.arange(64)) * 2).astype(np.uint8)
    for i in range(n):
        pixels = np.stack([base, np.roll(base, i % 64, 0), np.roll(base.T, (i // 64) % 64, 1)], -1)
        pixels[i % 60:(i % 60) + 4, (i // 60) % 60:(i // 60) % 60 + 4] = (i * 37) % 256
        sub = folder / f"{i // 1000:04d}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(sub / f"{i:07d}.jpg", quality=90)


def plain_loop(folder: Path) -> dict[str, Any]:
    """The per-input work alone: read each file and run process_input with the jpeg codec."""
    from coldpress.codec import get_codec
    from coldpress.transforms.records import process_input

    codec = get_codec("jpeg")
    files = sorted(p for p in folder.rglob("*.jpg"))
    start = time.perf_counter()
    archived = 0
    for path in files:
        status, _ = process_input(str(path.relative_to(folder)), str(path), path.read_bytes(), codec, 2.0)
        archived += status == "archived"
    return {"seconds": time.perf_counter() - start, "archived": archived}


def _descendants_rss(pid: int) -> tuple[float, float]:
    """(largest RSS of a descendant process, their total), in MB."""
    import psutil

    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return 0.0, 0.0
    rss = []
    for child in children:
        try:
            rss.append(child.memory_info().rss / 2**20)
        except psutil.Error:
            pass
    return (max(rss) if rss else 0.0), sum(rss)


def run_engine(engine: str, src: Path, dst: Path) -> dict[str, Any]:
    proc = subprocess.Popen([sys.executable, "-c", _ENGINE_CODE, engine, str(src), str(dst)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"worker": 0.0, "all_workers": 0.0}

    def sample() -> None:
        while proc.poll() is None:
            largest, total = _descendants_rss(proc.pid)
            peak["worker"] = max(peak["worker"], largest)
            peak["all_workers"] = max(peak["all_workers"], total)
            time.sleep(0.5)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    watcher.join()
    if proc.returncode != 0:
        return {"error": err.strip().splitlines()[-1] if err.strip() else f"exit status {proc.returncode}"}
    result = json.loads(out.strip().splitlines()[-1])
    result.update(worker_peak_mb=round(peak["worker"], 1), all_workers_peak_mb=round(peak["all_workers"], 1))
    return result


def _exactly_once(archive: Path, n: int) -> dict[str, int]:
    import pyarrow.parquet as pq

    ids = [i for p in sorted(archive.glob("part-*.parquet")) for i in pq.read_table(p, columns=["id"]).column("id").to_pylist()]
    return {"lost": n - len(set(ids)), "duplicated": len(ids) - len(set(ids))}


def damage_bench(work: Path, cases: int, seed: int = 1) -> dict[str, Any]:
    """``cases`` random damages of a 12-image archive: what verify reports, and any silently wrong decode."""
    import numpy as np

    from coldpress.pipelines.local import encode_local, verify_local
    from coldpress.transforms.archive import open_archive
    from coldpress.transforms.archive.salvage import salvage
    from coldpress.transforms.records import decode_record

    src = work / "damage-src"
    make_images(src, 12)
    archive = work / "damage-archive"
    (src / "notes.txt").write_text("not an image")
    encode_local(src, archive, codec="jpeg", bpp=2.0, rows_per_shard=4, progress=False, workers=1)
    pixels = {r["id"]: decode_record(r) for r in open_archive(archive).read().to_pylist()}
    files = sorted(p.relative_to(archive) for p in archive.rglob("*") if p.is_file())
    rng = random.Random(seed)
    counts = {"cases": cases, "detected": 0, "silently_wrong": 0, "unreported_lost": 0, "verify_raised": 0}
    for _ in range(cases):
        case = work / "damage-case"
        shutil.rmtree(case, ignore_errors=True)
        shutil.copytree(archive, case)
        target = case / rng.choice(files)
        data = bytearray(target.read_bytes())
        if rng.random() < 0.5:
            data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
        else:
            data = data[:rng.randrange(len(data))]
        target.write_bytes(bytes(data))
        try:
            report = verify_local(case, progress=False)
        except Exception:  # noqa: BLE001 - counted: verify must not stop on damage
            counts["verify_raised"] += 1
            continue
        failed = {f["id"] for f in report["failures"]}
        counts["detected"] += bool(failed)

        def reported(rid: str) -> bool:
            return rid in failed or any(".." in f and f.split("..")[0] <= rid <= f.split("..")[1] for f in failed)

        good = set()
        for kind, item in salvage(case):
            if kind != "rows":
                continue
            for row in item.to_pylist():
                try:
                    decoded = decode_record(row)
                except Exception:  # noqa: BLE001
                    continue
                if row["id"] in pixels and np.array_equal(decoded, pixels[row["id"]]):
                    good.add(row["id"])
                elif not reported(row["id"]):
                    counts["silently_wrong"] += 1
        counts["unreported_lost"] += sum(1 for rid in pixels if rid not in good and not reported(rid))
    return counts


def run_scale(args: argparse.Namespace) -> int:
    from coldpress.errors import ColdpressError
    from coldpress.jobs.bench.faults import check_fault_bench, fault_bench

    try:
        sizes = [int(s) for s in str(args.sizes).split(",") if s.strip()]
    except ValueError:
        raise ColdpressError(f"--sizes {args.sizes!r} is not a list of whole numbers; pass e.g. 1000,10000") from None
    engines = [e.strip() for e in str(args.engines).split(",") if e.strip()]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        raise ColdpressError(f"unknown engine(s) {', '.join(unknown)}; choose from {', '.join(ENGINES)}")
    if args.faults:
        check_fault_bench(args.faults)  # before hours of the other benches
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="coldpress-bench-scale-"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    try:
        for n in sizes:
            src = work / f"src-{n}"
            if not src.exists():
                make_images(src, n)
            loop = plain_loop(src)
            loop_rate = n / loop["seconds"]
            rows.append({"size": n, "engine": "plain loop", "images_per_s": round(loop_rate, 1), "ratio": 1.0,
                         "seconds": round(loop["seconds"], 2), "lost": n - loop["archived"], "duplicated": 0})
            print(f"{n:>7} plain loop  {loop_rate:8.1f} img/s", flush=True)
            for engine in engines:
                dst = work / f"archive-{engine}-{n}"
                shutil.rmtree(dst, ignore_errors=True)
                result = run_engine(engine, src, dst)
                row: dict[str, Any] = {"size": n, "engine": engine}
                if "error" in result:
                    row["error"] = result["error"]
                else:
                    rate = n / result["seconds"]
                    row.update(images_per_s=round(rate, 1), ratio=round(rate / loop_rate, 3),
                               seconds=round(result["seconds"], 2), driver_peak_mb=round(result["driver_peak_mb"], 1),
                               worker_peak_mb=result["worker_peak_mb"],
                               all_workers_peak_mb=result["all_workers_peak_mb"],
                               runner_dropped=result.get("runner_dropped", 0), **_exactly_once(dst, n))
                rows.append(row)
                print(f"{n:>7} {engine:<11} " + ", ".join(f"{k} {v}" for k, v in row.items() if k not in ("size", "engine")),
                      flush=True)
                shutil.rmtree(dst, ignore_errors=True)
        damage = damage_bench(work, args.damage) if args.damage else None
        if damage:
            print("damage: " + ", ".join(f"{k} {v}" for k, v in damage.items()), flush=True)
        machine = {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
                   "codec": "jpeg", "bpp": 2.0, "image": "64x64 JPEG"}
        if rows or damage:  # written before the fault bench runs
            (out / "scale.json").write_text(json.dumps({**machine, "rows": rows, "damage": damage}, indent=2))
            fields = ["size", "engine", "images_per_s", "ratio", "seconds", "driver_peak_mb", "worker_peak_mb",
                      "all_workers_peak_mb", "lost", "duplicated", "runner_dropped", "error"]
            _write_csv(out / "scale.csv", rows, fields)
        if args.faults:
            faults = fault_bench(work, args.fault_size, args.faults, engines)
            (out / "faults.json").write_text(json.dumps({**machine, "faults": faults}, indent=2))
            _write_csv(out / "faults.csv", faults)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def _write_csv(path: Path, rows: list[dict[str, Any]], fields: list[str] | None = None) -> None:
    fields = fields or list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buf.getvalue())
