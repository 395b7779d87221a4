"""No credential in a Beam job's graph or pipeline options: with keys and a session token planted in
the environment (where workers read them), the encode and restore graphs (serialized as a runner
receives them: the pipeline proto with every pickled transform) and the pipeline options hold none
of them; credentials given where they would travel in the graph (storage options, Beam's own S3 flags)
are refused with an error that names the option, never the value."""

from __future__ import annotations

import io

import pytest
import s3fs
from PIL import Image

pytest.importorskip("apache_beam")

from coldpress.codec import get_codec  # noqa: E402
from coldpress.errors import ColdpressError  # noqa: E402
from coldpress.jobs import cli  # noqa: E402
from coldpress.pipelines.beam import RestoreImages, encode_beam, make_pipeline, pipeline_options, restore_beam  # noqa: E402
from coldpress.pipelines.beam.jobs import encode_graph  # noqa: E402
from coldpress.pipelines.beam.read import write_listing  # noqa: E402
from coldpress.transforms.plan import plan_encode, run_manifest  # noqa: E402
from synthetic_images import natural_image  # noqa: E402

KEY_ID = "AKIAPLANTEDBEAM000001"
SECRET = "planted-beam-secret-4c1d"
TOKEN = "planted-beam-token-8e2a"
PLANTED = (KEY_ID, SECRET, TOKEN)
IN_PROCESS = ["--direct_num_workers=1"]


def _leaks(data: bytes | str) -> list[str]:
    text = data if isinstance(data, str) else data.decode("latin-1")
    return [s for s in PLANTED if s in text]


def test_job_graph_and_options_hold_no_credential(tmp_path, monkeypatch, s3_server, s3_bucket):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)  # the credentials of this test's store
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    s3fs.S3FileSystem.clear_instance_cache()
    options = {"client_kwargs": {"endpoint_url": s3_server}}  # what the CLI passes for --endpoint-url
    fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
    for i in range(3):
        out = io.BytesIO()
        Image.fromarray(natural_image(64, 64, seed=i)).save(out, format="PNG")
        fs.pipe_file(f"{s3_bucket}/src/{i}.png", out.getvalue())
    src, dst = f"s3://{s3_bucket}/src", f"s3://{s3_bucket}/archive"

    # The encode graph exactly as encode_beam builds it.
    popts = pipeline_options(IN_PROCESS)
    codec = get_codec("jpeg")
    plan = plan_encode(src, dst, options, resume=True)
    extra = run_manifest("beam", plan, codec, 2.0, resume=True, strict=False, elapsed_s=0.0, runner="FnApiRunner",
                         large_model=False)
    listing, folder = write_listing(plan.todo, dst, options)
    p = make_pipeline(popts)
    encode_graph(p, listing, options, codec, "jpeg", {}, 2.0, 4, False, None, None, dst, 4, extra, 0.0)
    graph = p.to_runner_api().SerializeToString()
    assert len(graph) > 1000 and b"ReadImages" in graph or b"Read the planned sources" in graph
    assert not _leaks(graph)
    assert not _leaks(repr(popts.get_all_options()))
    fs.rm(folder, recursive=True)

    # The restore graph, and real runs of both with the planted credentials in effect.
    manifest = encode_beam(src, dst, codec="jpeg", bpp=2.0, storage_options=options, pipeline_args=IN_PROCESS)
    assert manifest["archived"] == 3 and not _leaks(repr(manifest))
    p = make_pipeline(pipeline_options(IN_PROCESS))
    _ = p | RestoreImages(dst, None, str(tmp_path / "out"), storage_options=options)
    assert not _leaks(p.to_runner_api().SerializeToString())
    paths = restore_beam(dst, str(tmp_path / "out"), storage_options=options, pipeline_args=IN_PROCESS)
    assert len(paths) == 3


@pytest.mark.parametrize("storage_options", [
    {"key": KEY_ID, "secret": SECRET},
    {"token": TOKEN},
    {"client_kwargs": {"endpoint_url": "http://127.0.0.1:1", "aws_secret_access_key": SECRET}},
    {"account_key": SECRET},
])
def test_credentials_in_storage_options_are_refused_before_the_graph_is_built(tmp_path, storage_options):
    for call in (lambda: encode_beam(str(tmp_path), str(tmp_path / "a"), bpp=1.0, storage_options=storage_options,
                                     pipeline_args=IN_PROCESS),
                 lambda: restore_beam(str(tmp_path / "a"), str(tmp_path / "o"), storage_options=storage_options,
                                      pipeline_args=IN_PROCESS),
                 lambda: RestoreImages(str(tmp_path / "a"), None, "o", storage_options=storage_options)):
        with pytest.raises(ColdpressError, match="holds a credential.*environment") as info:
            call()
        assert not _leaks(str(info.value))
    assert not (tmp_path / "a").exists()  # refused before anything was written


def test_gcsfs_token_modes_are_not_credentials():
    from coldpress.pipelines.beam.options import graph_storage_options

    assert graph_storage_options({"token": "google_default"}) == {"token": "google_default"}
    assert graph_storage_options({"anon": True}) == {"anon": True}


@pytest.mark.parametrize("flag", ["--s3_secret_access_key", "--s3_access_key_id", "--s3_session_token"])
def test_beam_credential_flags_are_refused_without_echoing_them(capsys, tmp_path, flag):
    with pytest.raises(ColdpressError, match=f"{flag} would store a credential"):
        pipeline_options([f"{flag}={SECRET}"])
    code = cli.main(["encode", str(tmp_path), str(tmp_path / "a"), "--engine", "beam", "--bpp", "1",
                     f"--beam-option={flag}={SECRET}"])
    err = capsys.readouterr().err
    assert code in (1, 2) and "would store a credential" in err and not _leaks(err)
