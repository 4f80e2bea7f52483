"""The Python API from a plain script (no ``if __name__ == "__main__":`` guard, as docs/python-api.md shows it):
demo and convert work with a process pool, and no worker, fork server or resource tracker outlives the script."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = '''
from pathlib import Path
from ctprep.demo import DemoConfig, make_demo
from ctprep.convert import ConvertConfig, convert

print("script body ran as", __name__)
cases = make_demo(Path("raw"), DemoConfig(cases=2, size=64, max_slices=6, workers=2))
report = convert(Path("raw"), Path("store.zarr"), ConvertConfig(size=32, workers=2), progress=False)
print("converted", sorted(report.converted), "failed", report.failed)
'''


def processes_mentioning(marker: str) -> list[str]:
    """Command lines of live processes (other than this one) whose environment holds ``marker``: the script and
    every process it started (workers, fork server, resource tracker) inherit it."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                environ = (entry / "environ").read_bytes().decode(errors="replace")
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in environ:
                found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def test_an_unguarded_script_converts_with_workers_and_leaves_no_process_behind(tmp_path):
    script = tmp_path / "unguarded_script_marker.py"
    script.write_text(SCRIPT)
    marker = f"CTSTACK_TEST_MARKER={tmp_path}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CTSTACK_TEST_MARKER": str(tmp_path)}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["script body ran as __main__",  # once: the workers never re-ran it
                                        "converted ['demo_000', 'demo_001'] failed []"]
    deadline = time.monotonic() + 10  # the fork server and resource tracker exit on EOF of their pipes
    while processes_mentioning(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_mentioning(marker) == []


def test_workers_see_the_callers_storage_credentials_as_they_are_now(monkeypatch):
    from ctprep.workers import process_pool

    with process_pool(1) as pool:  # the fork server starts now (if no earlier pool started it), without the key
        assert pool.submit(os.getpid).result() > 0
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "set-after-the-fork-server-started")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    with process_pool(1) as pool:
        seen = pool.submit(os.getenv, "AWS_SECRET_ACCESS_KEY").result()
        token = pool.submit(os.getenv, "AWS_SESSION_TOKEN").result()
    assert seen == "set-after-the-fork-server-started" and token is None
