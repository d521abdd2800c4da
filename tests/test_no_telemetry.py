"""Scoring sends nothing anywhere: onnxruntime's usage telemetry is switched off.

onnxruntime looks up mobile.events.data.microsoft.com about 15 s after a session starts
unless ORT_DISABLE_TELEMETRY is set before it is imported. Each run here sits in its own
network namespace with only a loopback interface and a DNS server on 127.0.0.1 that
records every name it is asked for, so nothing can leave the machine even if a lookup is
made; a control run with telemetry switched back on proves the recorder sees the lookups.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="network namespaces"),
]

TELEMETRY_HOST = "events.data.microsoft.com"

RECORDER = textwrap.dedent("""
    import socket, sys
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 53))
    with open(sys.argv[1], "a") as log:
        while True:
            query, _ = sock.recvfrom(2048)
            i, labels = 12, []
            while query[i]:
                labels.append(query[i + 1:i + 1 + query[i]].decode(errors="replace"))
                i += 1 + query[i]
            log.write(".".join(labels) + "\\n")
            log.flush()
""")

SCORER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from PIL import Image
    from iqa.inference import QualityModel
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (384, 512, 3), np.uint8))
    model = QualityModel()
    for _ in range(3):
        model.score(image)
    time.sleep(float(sys.argv[1]))
    print("scored")
""")


def _namespaces_work() -> bool:
    if not (shutil.which("unshare") and shutil.which("ip")):
        return False
    probe = subprocess.run(["unshare", "-mn", "true"], capture_output=True)
    return probe.returncode == 0


def _run_isolated(tmp: Path, name: str, telemetry_env: str | None, seconds: float):
    """Start one scoring process in a fresh network namespace; return (process, dns log)."""
    (tmp / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    (tmp / "recorder.py").write_text(RECORDER)
    (tmp / "scorer.py").write_text(SCORER)
    log = tmp / f"{name}.dns"
    log.write_text("")
    env = "" if telemetry_env is None else f"ORT_DISABLE_TELEMETRY={telemetry_env} "
    script = (
        f"mount --bind {tmp / 'resolv.conf'} /etc/resolv.conf && ip link set lo up && "
        f"{{ {sys.executable} {tmp / 'recorder.py'} {log} & }} && sleep 0.5 && "
        f"exec env {env}{sys.executable} {tmp / 'scorer.py'} {seconds}"
    )
    # Its own process group, so that the recorder dies with it when the test is done.
    process = subprocess.Popen(["unshare", "-mn", "bash", "-c", script], text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    return process, log


@pytest.mark.skipif(not _namespaces_work(), reason="needs unshare -mn (root) and ip")
def test_scoring_looks_up_no_telemetry_host(tmp_path):
    runs = {name: _run_isolated(tmp_path, name, env, seconds=90)
            for name, env in (("iqa", None), ("control", "0"))}
    control_log = runs["control"][1]
    try:
        # Both started together: once the control has reported (about 15 s in), ours has
        # had as long to do the same; 5 s more for margin.
        deadline = time.monotonic() + 75
        while time.monotonic() < deadline and TELEMETRY_HOST not in control_log.read_text():
            time.sleep(0.5)
        if TELEMETRY_HOST not in control_log.read_text():
            pytest.skip("this onnxruntime sent no telemetry even when allowed to: "
                        "nothing to switch off")
        time.sleep(5)
        for name, (process, _) in runs.items():  # both still scoring, not crashed early
            assert process.poll() is None, (name, process.communicate()[1][-2000:])
    finally:
        for process, _ in runs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert runs["iqa"][1].read_text().split() == []
