"""A jpeg or avif job never imports torch (about 850 MB of libraries and a second or more of start-up
on every process): the codec registry imports the learned codec's module only when a learned codec
is asked for. Checked in a fresh process through the command line (encode with 2 workers, verify,
inspect, restore), and that asking for the learned codec still loads it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def test_a_jpeg_job_never_imports_torch(tmp_path):
    archive, restored = tmp_path / "archive", tmp_path / "restored"
    code = f"""
import sys
from coldpress.jobs.cli import main
codes = [main(["encode", "coldpress/samples/photos", {str(archive)!r}, "--codec", "jpeg", "--bpp", "1.0",
               "--quiet", "--workers", "2"]),
         main(["verify", {str(archive)!r}, "--quiet"]),
         main(["inspect", {str(archive)!r}, "--json"]),
         main(["restore", {str(archive)!r}, {str(restored)!r}, "--all", "--quiet"])]
print(codes, "torch" in sys.modules)
"""
    assert _run(code) == "[0, 0, 0, 0] False"
    assert len(list(restored.glob("*.png"))) == 4


def test_the_learned_codec_is_still_found_by_name():
    code = """
import sys
from coldpress.codec import get_codec
from coldpress.codec.registry import codec_names
jpeg = get_codec("jpeg")
light = "torch" in sys.modules
print(light, get_codec("learned").name, "learned" in codec_names(), "torch" in sys.modules)
"""
    assert _run(code) == "False learned True True"
