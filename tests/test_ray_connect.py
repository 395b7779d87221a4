"""Connecting to Ray: with no address coldpress starts its own local instance, even where an earlier
`ray start` or test cluster left its address behind on this machine."""

from __future__ import annotations

import os

import pytest

ray = pytest.importorskip("ray")

from ray._private.utils import get_ray_address_file  # noqa: E402

from coldpress.pipelines.ray import connect  # noqa: E402


def test_no_address_starts_a_local_instance_despite_a_stale_cluster_address():
    address_file = get_ray_address_file(None)
    if os.path.exists(address_file):
        pytest.skip(f"{address_file} exists (a Ray cluster started by `ray start` may be running here)")
    if ray.is_initialized():
        ray.shutdown()
    os.makedirs(os.path.dirname(address_file), exist_ok=True)
    with open(address_file, "w") as f:
        f.write("127.0.0.1:1")  # a cluster that is gone: ray.init() without an address would join it
    try:
        connect(num_cpus=1, object_store_memory=128 << 20, quiet=True)
        assert ray.is_initialized()
        assert ray.cluster_resources().get("CPU") == 1
    finally:
        ray.shutdown()
        if os.path.exists(address_file):  # Ray may already have cleared it
            os.remove(address_file)
