"""Shared fixtures: a real S3 server (moto's standalone server on 127.0.0.1) and fresh buckets.

Use ``s3_bucket`` (a fresh bucket name) in a test and reach the server through s3fs with the
``s3_options`` storage options: ``{"client_kwargs": {"endpoint_url": ...}, "skip_instance_cache": True}``.
``s3_server`` (the endpoint URL) also sets ``AWS_ENDPOINT_URL`` and dummy credentials in the
environment, so a subprocess (the CLI) started by a test reaches the same server without options.
"""

from __future__ import annotations

import os
import uuid

import pytest


#: Modules whose every test runs a Ray instance or cluster, and the word that marks a Ray test elsewhere
#: (test_ray_engine_..., test_ray_beam_...). Under pytest-xdist (scripts/test.sh: -n 2 --dist loadgroup)
#: they all run in one worker process, one after another: they count and kill Ray's processes on this
#: machine, and a test cluster leaves its address in /tmp/ray, so two Ray instances must not overlap.
RAY_MODULES = {"test_ray", "test_ray_cluster", "test_ray_connect", "test_raster_engines", "test_engine_parity"}


def _uses_ray(item: pytest.Item) -> bool:
    module = item.module.__name__.rsplit(".", 1)[-1] if getattr(item, "module", None) else ""
    return module in RAY_MODULES or "ray" in item.originalname.split("_")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _uses_ray(item):
            item.add_marker(pytest.mark.xdist_group("ray"))


def _storage_options(endpoint_url: str) -> dict:
    return {"client_kwargs": {"endpoint_url": endpoint_url}, "skip_instance_cache": True}


@pytest.fixture(scope="session")
def s3_server():
    """Endpoint URL of a moto S3 server running for the whole session, with dummy credentials set (the
    server ``bench scale --faults`` runs on: ``coldpress.jobs.bench.local_s3``)."""
    pytest.importorskip("moto.server", reason="moto[server] is needed for the S3 tests")
    from coldpress.jobs.bench.local_s3 import LocalS3Server

    with LocalS3Server() as endpoint:
        os.environ["AWS_ENDPOINT_URL"] = endpoint  # removed again with the server's other AWS_ settings
        yield endpoint


@pytest.fixture
def s3_bucket(s3_server):
    """Name of a fresh, empty bucket on the test server (s3fs instance caches are cleared around it)."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    name = f"test-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(**_storage_options(s3_server))
    fs.mkdir(name)
    yield name
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3_options(s3_server) -> dict:
    """fsspec storage options for the test server (no instance cache: each use gets a fresh client)."""
    return _storage_options(s3_server)
