"""Failures of the environment are not rejections: a GPU out of memory, a lost driver, expired
credentials, a full disk or a dropped connection stop the job with what to fix, and are never
recorded as rejected inputs or reported as damaged rows. (The faults are injected by a real codec
subclass that raises what torch raises on a GPU that runs out of memory.)"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch
from PIL import Image

from coldpress.codec.reference import JpegCodec
from coldpress.codec.registry import _FACTORIES, register
from coldpress.errors import EnvironmentFault, InputRejected
from coldpress.pipelines.local import encode_local, restore_local, verify_local
from coldpress.transforms.archive import open_archive
from coldpress.transforms.faults import environment_cause
from coldpress.transforms.records import process_input, unreadable_row
from synthetic_images import natural_image

NAME = "test-oom-on-demand"


class OutOfMemoryOnDemand(JpegCodec):
    """The real JPEG codec, whose encode or decode raises torch's CUDA out-of-memory error when asked."""

    name = NAME
    fail_encode = False
    fail_decode = False

    def _encode_rgb(self, rgb, max_payload_bytes):
        if type(self).fail_encode:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super()._encode_rgb(rgb, max_payload_bytes)

    def _decode_rgb(self, payload, params, width, height):
        if type(self).fail_decode:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super()._decode_rgb(payload, params, width, height)


if NAME not in _FACTORIES:
    register(NAME)(OutOfMemoryOnDemand)


@pytest.fixture(autouse=True)
def _healthy():
    OutOfMemoryOnDemand.fail_encode = OutOfMemoryOnDemand.fail_decode = False
    yield
    OutOfMemoryOnDemand.fail_encode = OutOfMemoryOnDemand.fail_decode = False


def _tree(root: Path, n: int = 3) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(natural_image(48, 64, "RGB", seed=i)).save(root / f"img{i}.png")
    return root


def _s3_error(code: str) -> PermissionError:
    """What s3fs raises for an S3 error response: an OSError whose cause is botocore's ClientError."""
    from botocore.exceptions import ClientError

    err = ClientError({"Error": {"Code": code, "Message": "..."}}, "GetObject")
    try:
        raise PermissionError(errno.EACCES, code) from err
    except PermissionError as exc:
        return exc


@pytest.mark.parametrize("exc", [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"),
    RuntimeError("Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU"),
    OSError(errno.ENOSPC, "No space left on device"),
    ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
    TimeoutError("timed out"),
], ids=["cuda-oom", "no-driver", "disk-full", "reset", "timeout"])
def test_environmental_faults_are_recognised(exc):
    assert environment_cause(exc)


def test_credential_and_connection_errors_of_object_stores_are_recognised():
    from botocore.exceptions import EndpointConnectionError, NoCredentialsError

    assert "credentials" in environment_cause(_s3_error("ExpiredToken"))
    assert "credentials" in environment_cause(NoCredentialsError())
    assert "reached" in environment_cause(EndpointConnectionError(endpoint_url="http://127.0.0.1:9"))


@pytest.mark.parametrize("exc", [
    InputRejected("x.png: not an image"), ValueError("bad value"), FileNotFoundError(errno.ENOENT, "gone"),
    _s3_error("NoSuchKey"), SyntaxError("broken header"),
], ids=["rejected", "value", "missing", "no-such-key", "syntax"])
def test_input_faults_are_not_environmental(exc):
    assert environment_cause(exc) is None


def test_a_read_that_failed_for_the_environment_is_not_a_rejection():
    with pytest.raises(EnvironmentFault, match="credentials"):
        unreadable_row("a.jpg", "s3://bucket/a.jpg", _s3_error("ExpiredToken"))
    assert "ReadError" in unreadable_row("a.jpg", "s3://bucket/a.jpg", FileNotFoundError(errno.ENOENT, "gone"))["reason"]


def test_gpu_out_of_memory_while_encoding_stops_the_job_and_rejects_nothing(tmp_path):
    src = _tree(tmp_path / "src")
    OutOfMemoryOnDemand.fail_encode = True
    with pytest.raises(EnvironmentFault, match="GPU ran out of memory"):
        process_input("img0.png", str(src / "img0.png"), (src / "img0.png").read_bytes(), OutOfMemoryOnDemand(), 1.0)
    with pytest.raises(EnvironmentFault, match="running the same command again"):
        encode_local(str(src), str(tmp_path / "archive"), codec=NAME, bpp=1.0, progress=False)
    archive = tmp_path / "archive"
    if archive.exists():  # whatever was written: no rejection for the environment's fault
        assert open_archive(str(archive)).rejected().num_rows == 0
    OutOfMemoryOnDemand.fail_encode = False
    manifest = encode_local(str(src), str(archive), codec=NAME, bpp=1.0, progress=False)
    assert manifest["num_rows"] == 3 and manifest["num_rejected"] == 0


def test_gpu_out_of_memory_while_verifying_or_restoring_is_not_a_damaged_row(tmp_path):
    src = _tree(tmp_path / "src", 2)
    archive = str(tmp_path / "archive")
    encode_local(str(src), archive, codec=NAME, bpp=1.0, progress=False)
    assert verify_local(archive, progress=False)["failures"] == []
    OutOfMemoryOnDemand.fail_decode = True
    with pytest.raises(EnvironmentFault, match="GPU ran out of memory"):
        verify_local(archive, progress=False)
    with pytest.raises(EnvironmentFault, match="GPU ran out of memory"):
        restore_local(archive, str(tmp_path / "restored"), progress=False)


def test_cli_exits_non_zero_with_the_cause_when_the_environment_fails(tmp_path, capsys):
    from coldpress.jobs.cli import main

    src = _tree(tmp_path / "src", 2)
    OutOfMemoryOnDemand.fail_encode = True
    code = main(["encode", str(src), str(tmp_path / "archive"), "--bpp", "1.0", "--codec", NAME, "--quiet"])
    assert code == 1
    err = capsys.readouterr().err
    assert "GPU ran out of memory" in err and "rejected" not in err.split("No input was rejected")[0]


def test_s3_requests_use_botocores_retry_modes(monkeypatch):
    from coldpress.transforms.sources import filesystem_for

    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    fs, _ = filesystem_for("s3://bucket/key", {"skip_instance_cache": True})
    assert fs.config_kwargs["retries"] == {"mode": "adaptive", "max_attempts": 10}
    monkeypatch.setenv("AWS_RETRY_MODE", "standard")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    fs, _ = filesystem_for("s3://bucket/key", {"skip_instance_cache": True})
    assert fs.config_kwargs["retries"] == {"mode": "standard", "max_attempts": 3}
    fs, _ = filesystem_for("s3://bucket/key", {"skip_instance_cache": True, "config_kwargs": {"retries": {"mode": "legacy"}}})
    assert fs.config_kwargs["retries"] == {"mode": "legacy"}


def test_the_archive_writer_finds_the_s3_endpoint_from_the_environment(monkeypatch, s3_server, s3_bucket, tmp_path):
    """COLDPRESS_S3_ENDPOINT_URL reaches the archive's own file system too (it was ignored there)."""
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("COLDPRESS_S3_ENDPOINT_URL", s3_server)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    src = _tree(tmp_path / "src", 1)
    manifest = encode_local(str(src), f"s3://{s3_bucket}/archive", codec="jpeg", bpp=1.0, progress=False)
    assert manifest["num_rows"] == 1
    assert verify_local(f"s3://{s3_bucket}/archive", progress=False)["failures"] == []
