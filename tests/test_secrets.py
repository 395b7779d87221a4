"""Credentials never leak: planted keys, a session token and a user:password endpoint URL appear in no
output, log record, error message, manifest, shard or rejected table of encode, inspect, verify and
restore on the S3 test server."""

from __future__ import annotations

import logging

import pytest
import s3fs

from coldpress.jobs import cli

KEY_ID = "AKIAPLANTEDKEY0000001"
SECRET = "planted-secret-9f3a7c1e"
TOKEN = "planted-session-token-5b2d"
PASSWORD = "planted-url-password-77e1"
PLANTED = (KEY_ID, SECRET, TOKEN, PASSWORD)


def _leaks(text: str) -> list[str]:
    return [s for s in PLANTED if s in text]


def test_planted_credentials_appear_nowhere(tmp_path, capsys, caplog, monkeypatch, s3_server, s3_bucket, s3_options):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    s3fs.S3FileSystem.clear_instance_cache()
    caplog.set_level(logging.DEBUG, logger="coldpress")
    caplog.set_level(logging.WARNING)
    src = tmp_path / "src"
    src.mkdir()
    from PIL import Image

    from synthetic_images import natural_image

    for i in range(3):
        Image.fromarray(natural_image(64, 64, seed=i)).save(src / f"{i}.png")
    (src / "bad.png").write_bytes(b"\x89PNG broken")
    archive = f"s3://{s3_bucket}/archive"
    outputs = []
    for argv, expected in (
        (["encode", str(src), archive, "--bpp", "2", "--codec", "jpeg"], 0),
        (["inspect", archive, "--json", "--ids"], 0),
        (["verify", archive], 0),
        (["restore", archive, str(tmp_path / "out"), "--all"], 0),
        (["restore", archive, str(tmp_path / "out2"), "--id", "missing.png"], 1),  # an error message
        # An endpoint URL carrying user:password is refused without repeating the password.
        (["inspect", archive, "--endpoint-url", s3_server.replace("http://", f"http://someone:{PASSWORD}@")], 1),
    ):
        code = cli.main(argv)
        out = capsys.readouterr()
        outputs.append(out.out + out.err)
        assert code == expected, (argv, out.err)
    assert "carries credentials" in outputs[-1] and "***@" in outputs[-1]
    for text in outputs:
        assert not _leaks(text), text
    assert not [r for r in caplog.records if _leaks(r.getMessage())]
    # Every object of the archive, bytes and all.
    fs = s3fs.S3FileSystem(**s3_options)
    objects = fs.find(f"{s3_bucket}/archive")
    assert any(o.endswith("_manifest.json") for o in objects) and any("_rejected" in o for o in objects)
    for path in objects:
        data = fs.cat_file(path)
        assert not [s for s in PLANTED if s.encode() in data], path
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert not [s for s in PLANTED if s.encode() in path.read_bytes()], path


def test_manifest_source_never_carries_url_credentials(tmp_path):
    from coldpress.transforms.sources import redact_url

    assert redact_url("s3://AKIA:secret@bucket/photos") == "s3://***@bucket/photos"
    assert redact_url("http://user:pw@127.0.0.1:9000") == "http://***@127.0.0.1:9000"
    assert redact_url("s3://bucket/a@b.jpg") == "s3://bucket/a@b.jpg"
    assert redact_url("/local/path") == "/local/path"
    with pytest.raises(Exception, match=r"\*\*\*@127\.0\.0\.1"):
        from coldpress.transforms.sources import filesystem_for

        filesystem_for("s3://bucket/x", {"client_kwargs": {"endpoint_url": f"http://u:{PASSWORD}@127.0.0.1:1"}})
