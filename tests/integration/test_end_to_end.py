"""The README's commands, as a user runs them: `mrt up` with the default model, `mrt stream`."""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.request

import numpy as np
import psutil
import pytest
import soundfile

from services.cli.launcher import ClusterConfig
from tests.integration.conftest import MRT, run_mrt_up


@pytest.mark.slow
def test_mrt_up_serves_the_default_model_and_mrt_stream_writes_a_wav(tmp_path, tmp_path_factory):
    ports = ClusterConfig(web_port=8080).with_free_ports()
    up, output = run_mrt_up(
        ports,
        "--log-dir",
        str(tmp_path / "logs"),
        env=dict(os.environ, MRT_ASSETS_DIR=str(tmp_path_factory.getbasetemp() / "assets")),
    )
    children: list[psutil.Process] = []
    try:
        assert any("mrt cluster ready" in line for line in output), "".join(output)
        assert any(
            f"metrics http://127.0.0.1:{ports.gateway_metrics_port}/metrics" in line
            for line in output
        )
        player_url = f"http://127.0.0.1:{ports.web_port}/"
        assert any(f"Player: open {player_url}" in line for line in output)
        assert b"<html" in urllib.request.urlopen(player_url, timeout=5).read()
        children = psutil.Process(up.pid).children(recursive=True)
        assert len(children) >= 4

        wav = tmp_path / "synthwave.wav"
        stream = subprocess.run(
            [
                MRT,
                "stream",
                "--address",
                f"127.0.0.1:{ports.gateway_port}",
                "--prompt",
                "synthwave",
                "--prompt",
                "disco:0.5",
                "--seconds",
                "4",
                "--out",
                str(wav),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert stream.returncode == 0, stream.stderr
        audio, rate = soundfile.read(wav, dtype="float32")
        assert rate == 48000 and audio.shape[1] == 2
        assert audio.shape[0] == 2 * 96000  # 4 s = two whole chunks
        assert np.all(np.isfinite(audio)) and np.abs(audio).max() > 0.01
        assert "chunk" in stream.stderr  # progress was shown
    finally:
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"orphan processes left: {alive}"
