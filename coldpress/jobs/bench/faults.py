"""``coldpress bench scale --faults RATE``: every engine through flaky object storage.

A real S3 server on loopback (moto's standalone server) behind the fault injector (``faulty_s3``:
503 SlowDown, 500 InternalError, reset connections, stalls past the client's read timeout, GET
responses cut in half, for RATE of the requests, a seeded draw). For each engine, in a process of
its own: encode ``--fault-size`` small JPEGs from the bucket into an archive in it, verify it,
inspect it and restore every image, all through the injector. Then, straight from the server (no
faults): inputs lost and duplicated (the ids of every shard), objects visible in the archive that
are neither a complete shard nor a side file (partial or temporary files), incomplete multipart
uploads left behind, and what the manifest says storage made the run retry.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from coldpress.errors import ColdpressError
from coldpress.jobs.bench.local_s3 import LocalS3Server

MOTO_MISSING = ("bench scale --faults needs moto's S3 server: install the test extras "
                "(pip install -e '.[test]', as scripts/setup.sh does)")
#: Seconds an engine's encode, or its verify, inspect and restore, may take before the bench gives up on it.
STEP_TIMEOUT_S = 3600
#: Starts the line of an engine process's output that holds its figures (other lines are logs).
RESULT_MARK = "coldpress-bench-result "
#: The archive's own objects besides its shards.
SIDE_FILES = ("_manifest.json", "_rejected/rejected.parquet")
BUCKET = "coldpress-bench-faults"

def _engine(name: str) -> tuple[Any, Any]:
    """(encode, restore) of an engine, each with its default options."""
    if name == "local":
        from coldpress.pipelines.local import encode_local, restore_local

        return encode_local, restore_local
    if name == "ray":
        from coldpress.pipelines.ray import encode_ray, restore_ray

        return encode_ray, restore_ray
    from coldpress.pipelines.beam import encode_beam, restore_beam

    return encode_beam, restore_beam


def encode_step(engine: str, src: str, archive: str, options: dict[str, Any]) -> dict[str, Any]:
    """The encode of one engine (in a process of its own: ``python -m coldpress.jobs.bench.faults encode ...``)."""
    encode, _ = _engine(engine)
    start = time.perf_counter()
    manifest = encode(src, archive, codec="jpeg", bpp=2.0, storage_options=options, progress=False)
    return {"encode_s": time.perf_counter() - start, "archived": manifest["archived"],
            "rejected": manifest["rejected"], "storage_retries": manifest.get("storage_retries") or {},
            "runner_dropped": sum(manifest.get("runner_lost_inputs") or [])}


def read_step(engine: str, archive: str, out: str, options: dict[str, Any]) -> dict[str, Any]:
    """Verify, inspect and restore every image of ``archive`` (a process of its own, as ``encode_step``)."""
    from coldpress.jobs.inspect import inspect_archive
    from coldpress.pipelines.local import verify_local

    _, restore = _engine(engine)
    start = time.perf_counter()
    report = verify_local(archive, storage_options=options, progress=False)
    stats = inspect_archive(archive, options)
    restored = restore(archive, out, fmt="png", storage_options=options, progress=False)
    return {"verify_inspect_restore_s": time.perf_counter() - start, "verified_ok": report["ok"],
            "verify_failures": len(report["failures"]), "inspected_rows": stats["num_rows"],
            "restored": len(restored)}


_STEPS = {"encode": encode_step, "read": read_step}


def _run(step: str, *args: str) -> dict[str, Any]:
    """Run ``step`` (``_STEPS``) in a process of its own; the figures it printed, or {"error": ...}."""
    try:
        proc = subprocess.run([sys.executable, "-m", "coldpress.jobs.bench.faults", step, *args], capture_output=True,
                              text=True, timeout=STEP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish in {STEP_TIMEOUT_S} s"}
    results = [line[len(RESULT_MARK):] for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if proc.returncode == 0 and results:
        return json.loads(results[-1])
    errors = [line for line in proc.stderr.splitlines() if "Error" in line or "Exception" in line]
    last = (errors or proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit status {proc.returncode}: {last.strip()}"}


def check_fault_bench(rate: float) -> None:
    """Raise ColdpressError now, before any other bench runs, when ``--faults RATE`` cannot run."""
    if not 0 <= rate < 1:
        raise ColdpressError(f"--faults {rate} is not a fraction of requests; pass e.g. 0.05")
    try:
        import moto.server  # noqa: F401
    except ImportError as exc:
        raise ColdpressError(MOTO_MISSING) from exc


def _archive_check(fs: Any, root: str, n: int) -> dict[str, Any]:
    """Lost and duplicated inputs, visible objects that are neither shards nor side files, and
    incomplete multipart uploads, read straight from the server."""
    import pyarrow.parquet as pq

    fs.invalidate_cache()
    objects = [o.split(f"{root}/", 1)[1] for o in fs.find(root)]
    shards = [o for o in objects if "/" not in o and o.startswith("part-") and o.endswith(".parquet")]
    ids: list[str] = []
    for name in shards:
        with fs.open(f"{root}/{name}", "rb") as f:
            ids += pq.read_table(f, columns=["id"]).column("id").to_pylist()
    bucket, _, prefix = root.partition("/")
    uploads = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix + "/").get("Uploads") or []
    return {"lost": n - len(set(ids)), "duplicated": len(ids) - len(set(ids)),
            "other_objects_visible": len([o for o in objects if o not in shards and o not in SIDE_FILES]),
            "leaked_uploads": len(uploads)}


def fault_bench(work: Path, n: int, rate: float, engines: list[str], seed: int = 7) -> list[dict[str, Any]]:
    """One row per engine: the faults injected, what the run retried, and what was lost, duplicated or left."""
    import s3fs

    from coldpress.jobs.bench.faulty_s3 import FAULTS, FaultyS3, client_options
    from coldpress.jobs.bench.scale import make_images

    check_fault_bench(rate)
    src = work / f"fault-src-{n}"
    if not src.exists():
        make_images(src, n)
    rows = []
    with LocalS3Server(MOTO_MISSING) as endpoint:
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)
        fs.mkdir(BUCKET)
        fs.put(str(src), f"{BUCKET}/src", recursive=True)
        for engine in engines:
            root = f"{BUCKET}/archive-{engine}"
            row: dict[str, Any] = {"engine": engine, "size": n, "fault_rate": rate}
            with FaultyS3(endpoint, rate=rate, seed=seed) as proxy:
                options = json.dumps(client_options(proxy.url))
                encoded = _run("encode", engine, f"s3://{BUCKET}/src", f"s3://{root}", options)
                row.update(encode_requests=sum(proxy.counts.values()), encode_faults=proxy.injected)
                if "error" not in encoded:
                    retried = encoded.pop("storage_retries")
                    encoded.update(manifest_failed_attempts=retried.get("failed_attempts", 0),
                                   manifest_retried=retried.get("retried", 0))
                    row.update(encoded)
                    row.update(_run("read", engine, f"s3://{root}", str(work / f"fault-restored-{engine}"),
                                    options))
                else:
                    row.update(encoded)
            # requests and faults_*: the encode's and the verify, inspect and restore's together
            row.update(requests=sum(proxy.counts.values()), faults_injected=proxy.injected,
                       **{f"faults_{k}": proxy.counts.get(k, 0) for k in FAULTS})
            row.update(_archive_check(fs, root, n))
            rows.append({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()})
            print(f"faults {engine:<6} " + ", ".join(f"{k} {v}" for k, v in rows[-1].items() if k != "engine"),
                  flush=True)
    return rows


if __name__ == "__main__":  # one step of fault_bench, in its own process: STEP ARGS... OPTIONS_JSON
    step, *step_args = sys.argv[1:]
    result = _STEPS[step](*step_args[:-1], json.loads(step_args[-1]))
    print(RESULT_MARK + json.dumps(result), flush=True)
