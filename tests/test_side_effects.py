"""Importing or calling coldpress changes nothing process-wide: no umask set at import or on write,
restored files get the permissions open() would give under the caller's umask."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os, stat, sys
    calls = []
    real_umask = os.umask
    def spy(mask):
        calls.append(mask)
        return real_umask(mask)
    os.umask = spy
    real_umask(0o027)
    import numpy as np
    import coldpress, coldpress.codec, coldpress.transforms.records as records
    import coldpress.pipelines.local, coldpress.transforms.archive, coldpress.transforms.read
    path = os.path.join(sys.argv[1], "a", "restored.png")
    records.write_image(np.zeros((8, 8, 3), np.uint8), path, "png")
    print(calls, oct(stat.S_IMODE(os.stat(path).st_mode)))
""")


def test_no_umask_calls_and_restored_files_follow_the_callers_umask(tmp_path):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip().startswith("[]"), f"os.umask was called: {out.stdout}"
    assert out.stdout.strip().endswith("0o640"), out.stdout
