"""The launcher with real child processes: readiness, failures, and no process left behind.

The services here are a small stand-in written by the test: an executable script used as the
launcher's Python interpreter. It receives exactly the command line a real service would
(``-m services.<role> --port ...``), records it, and serves the standard gRPC health check;
DUMMY_MODES (JSON, service -> mode) makes one of them crash, never become ready, or ignore
SIGTERM.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from services.cli.launcher import (
    Cluster,
    ClusterConfig,
    ClusterError,
    ServiceExitedError,
    ServiceNotReadyError,
    ServiceProcess,
    ServiceSpec,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Bounds on waiting for processes started by these tests; generous for a busy 2-core machine.
PROCESS_WAIT_S = 60.0

DUMMY_SERVICE = textwrap.dedent('''\
    #!{python}
    """Stands in for `python -m services.<role> ...`: records its argv, serves gRPC health."""
    import argparse, json, os, signal, sys, time
    from concurrent import futures
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    parser = argparse.ArgumentParser()
    parser.add_argument("-m", dest="module", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--generator-id")
    args, _ = parser.parse_known_args()
    name = args.generator_id or args.module.rsplit(".", 1)[-1]
    record = os.path.join(os.environ["DUMMY_RECORD_DIR"], f"{{name}}.{{os.getpid()}}.json")
    with open(record, "w") as f:
        json.dump({{"name": name, "pid": os.getpid(), "argv": sys.argv[1:]}}, f)
    mode = json.loads(os.environ.get("DUMMY_MODES", "{{}}")).get(name, "serve")
    if mode == "crash":
        print(f"{{name}}: boom, cannot load the model", file=sys.stderr, flush=True)
        sys.exit(3)
    if mode == "ignore_sigterm":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    status = (health_pb2.HealthCheckResponse.NOT_SERVING if mode == "never_ready"
              else health_pb2.HealthCheckResponse.SERVING)
    servicer.set("", status)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{{args.port}}")
    server.start()
    print(f"{{name}} listening on {{args.port}}", flush=True)
    while True:
        time.sleep(3600)
''')


@pytest.fixture
def dummy_python(tmp_path, monkeypatch):
    """Path of the stand-in interpreter; its records go to tmp_path/records."""
    script = tmp_path / "dummy_python"
    script.write_text(DUMMY_SERVICE.format(python=sys.executable))
    script.chmod(0o755)
    records = tmp_path / "records"
    records.mkdir()
    monkeypatch.setenv("DUMMY_RECORD_DIR", str(records))
    monkeypatch.delenv("DUMMY_MODES", raising=False)
    return script


def _records(tmp_path) -> list[dict]:
    """What each stand-in service recorded (a record still being written is left out)."""
    records = []
    for path in sorted((tmp_path / "records").glob("*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except json.JSONDecodeError:
            pass
    return records


def _is_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_until_gone(pids, timeout_s=PROCESS_WAIT_S) -> list[int]:
    """The pids still alive after waiting up to timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [pid for pid in pids if not _is_gone(pid)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.1)


def _config(dummy_python, **changes) -> ClusterConfig:
    return ClusterConfig(
        python=str(dummy_python), ready_timeout_s=PROCESS_WAIT_S, stop_grace_s=5.0, **changes
    ).with_free_ports()


def test_start_ready_stop_leaves_no_process(dummy_python, tmp_path):
    config = _config(dummy_python, generators=2, log_dir=tmp_path / "logs")
    with Cluster(config) as cluster:
        pids = [p.pid for p in cluster.services]
        assert all(p.is_running() for p in cluster.services)
        assert all(p.check_health() for p in cluster.services)
        records = {r["name"]: r for r in _records(tmp_path)}
    # The children received exactly the launcher's command lines.
    assert {name: [config.python, *r["argv"]] for name, r in records.items()} == {
        spec.name: list(spec.argv) for spec in config.service_specs()
    }
    assert sorted(r["pid"] for r in records.values()) == sorted(pids)
    assert _wait_until_gone(pids, timeout_s=0) == []  # stop() reaped every child
    assert all(p.returncode is not None for p in cluster.services)
    assert "gateway listening on" in (tmp_path / "logs" / "gateway.log").read_text()


def test_crashing_service_fails_readiness_with_its_name_and_log(dummy_python, monkeypatch):
    monkeypatch.setenv("DUMMY_MODES", json.dumps({"generator-1": "crash"}))
    cluster = Cluster(_config(dummy_python, generators=2))
    cluster.start()
    try:
        with pytest.raises(ServiceExitedError) as failure:
            cluster.wait_ready()
    finally:
        cluster.stop()
    assert failure.value.service == "generator-1"
    assert failure.value.returncode == 3
    assert "generator-1: exited unexpectedly with exit code 3" in str(failure.value)
    assert "boom, cannot load the model" in str(failure.value)
    assert _wait_until_gone([p.pid for p in cluster.services], timeout_s=0) == []


def test_service_that_never_gets_ready_times_out_with_its_name(dummy_python, monkeypatch):
    monkeypatch.setenv("DUMMY_MODES", json.dumps({"embedder": "never_ready"}))
    cluster = Cluster(_config(dummy_python)).start()
    try:
        with pytest.raises(ServiceNotReadyError, match=r"embedder: did not report SERVING") as e:
            cluster.wait_ready(timeout_s=3.0)  # long enough for the others to be ready
    finally:
        cluster.stop()
    assert "embedder listening on" in e.value.log_tail
    assert "last health check: status NOT_SERVING" in str(e.value)


def test_a_health_check_nobody_answers_says_why(tmp_path):
    port = ClusterConfig().with_free_ports().embedder_port  # nothing listens there
    spec = ServiceSpec(
        name="embedder",
        role="embedder",
        host="127.0.0.1",
        port=port,
        metrics_port=port + 1,
        argv=("true",),
    )
    process = ServiceProcess(spec)
    try:
        assert not process.check_health(timeout_s=0.3)
    finally:
        process.release()
    assert process.last_health_error.startswith(("UNAVAILABLE", "DEADLINE_EXCEEDED"))


def test_stop_kills_a_service_that_ignores_sigterm(dummy_python, monkeypatch):
    monkeypatch.setenv("DUMMY_MODES", json.dumps({"gateway": "ignore_sigterm"}))
    config = ClusterConfig(
        python=str(dummy_python), ready_timeout_s=PROCESS_WAIT_S, stop_grace_s=0.5
    ).with_free_ports()
    with Cluster(config) as cluster:
        pass
    assert cluster.gateway.returncode == -signal.SIGKILL
    assert cluster.embedder.returncode == -signal.SIGTERM


def test_killed_generator_is_detected_and_restarted(dummy_python, capsys):
    with Cluster(_config(dummy_python, generators=2)) as cluster:
        cluster.check_running()
        victim = cluster.generator_process(1)
        first_pid = victim.pid
        os.kill(first_pid, signal.SIGKILL)  # a crash from outside: the launcher did not ask
        assert victim.wait(PROCESS_WAIT_S) == -signal.SIGKILL
        with pytest.raises(
            ServiceExitedError, match="generator-1: exited unexpectedly with signal SIGKILL"
        ):
            cluster.check_running()
        cluster.restart_generator(1)
        assert victim.pid != first_pid and victim.check_health()
        cluster.check_running()
        cluster.generator_process(0).kill()  # asked for: not a failure
        cluster.check_running()
    # Without --log-dir, children's output reaches the console with a per-service prefix.
    assert "[generator-1] generator-1 listening on" in capsys.readouterr().err


LAUNCHER_DRIVER = textwrap.dedent("""\
    import json, sys, time
    from services.cli.launcher import Cluster, ClusterConfig
    config = ClusterConfig(python=sys.argv[1], generators=2).with_free_ports()
    cluster = Cluster(config).start()
    cluster.wait_ready()
    print(json.dumps([p.pid for p in cluster.services]), flush=True)
    time.sleep(3600)
""")


def test_children_die_with_a_sigkilled_launcher(dummy_python):
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER_DRIVER, str(dummy_python)],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        pids = json.loads(launcher.stdout.readline())
        assert len(pids) == 4 and not any(_is_gone(pid) for pid in pids)
    finally:
        launcher.kill()  # SIGKILL: the launcher gets no chance to clean up
        launcher.wait()
    assert _wait_until_gone(pids) == []


def _start_mrt_up(dummy_python, *args):
    """`mrt up` in its own process, with its services run by the stand-in interpreter."""
    driver = (
        "import functools, sys\n"
        "from services.cli import up\n"
        "from services.cli.main import main\n"
        "up.ClusterConfig = functools.partial(up.ClusterConfig, python=sys.argv[1])\n"
        "sys.exit(main(sys.argv[2:]))\n"
    )
    ports = ClusterConfig(generators=2).with_free_ports()
    argv = [
        "up",
        "--generators",
        "2",
        "--gateway-port",
        str(ports.gateway_port),
        "--embedder-port",
        str(ports.embedder_port),
        "--generator-port",
        str(ports.generator_port),
        "--gateway-metrics-port",
        str(ports.gateway_metrics_port),
        "--embedder-metrics-port",
        str(ports.embedder_metrics_port),
        "--generator-metrics-port",
        str(ports.generator_metrics_port),
        "--web-port",
        "0",
        *args,
    ]  # the stand-in serves gRPC health only, not HTTP
    process = subprocess.Popen(
        [sys.executable, "-c", driver, str(dummy_python), *argv],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return process, ports


def _read_until_ready(process) -> str:
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("Ctrl-C stops the cluster"):
            return "".join(lines)
    raise AssertionError(f"mrt up ended before it was ready: {process.stderr.read()}")


def test_mrt_up_prints_endpoints_and_stops_cleanly_on_sigterm(dummy_python, tmp_path):
    process, ports = _start_mrt_up(dummy_python, "--log-dir", str(tmp_path / "logs"))
    try:
        banner = _read_until_ready(process)
        pids = [r["pid"] for r in _records(tmp_path)]
        process.send_signal(signal.SIGTERM)
        assert process.wait(PROCESS_WAIT_S) == 0
    finally:
        process.kill()
    assert f"gateway      grpc 127.0.0.1:{ports.gateway_port}" in banner
    assert f"metrics http://127.0.0.1:{ports.generator_metrics_port + 1}/metrics" in banner
    assert f"generator-1  grpc 127.0.0.1:{ports.generator_port + 1}" in banner
    assert len(pids) == 4
    assert _wait_until_gone(pids, timeout_s=0) == []  # mrt up reaped them before exiting
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == [
        "embedder.log",
        "gateway.log",
        "generator-0.log",
        "generator-1.log",
    ]


def test_mrt_up_restarts_a_service_that_dies_and_keeps_the_others(dummy_python, tmp_path):
    process, _ = _start_mrt_up(dummy_python)
    try:
        _read_until_ready(process)
        first = {r["name"]: r["pid"] for r in _records(tmp_path)}
        os.kill(first["generator-0"], signal.SIGKILL)
        deadline = time.monotonic() + PROCESS_WAIT_S
        while len(_records(tmp_path)) < 5:  # the restarted generator-0 records itself
            assert time.monotonic() < deadline, "generator-0 was not restarted"
            assert process.poll() is None, "mrt up ended"
            time.sleep(0.1)
        restarted = [
            r["pid"]
            for r in _records(tmp_path)
            if r["name"] == "generator-0" and r["pid"] != first["generator-0"]
        ]
        others = [pid for name, pid in first.items() if name != "generator-0"]
        assert len(restarted) == 1 and _wait_until_gone(others, timeout_s=0) == others
        process.send_signal(signal.SIGINT)  # Ctrl-C
        assert process.wait(PROCESS_WAIT_S) == 0
    finally:
        process.kill()
    stderr = process.stderr.read()
    assert (
        "mrt up: generator-0 exited unexpectedly with signal SIGKILL; restarting it in 1 s"
        in stderr
    )
    assert "mrt up: generator-0 restarted" in stderr
    assert "[gateway] gateway listening on" in stderr  # console output, prefixed per service
    assert "Traceback" not in stderr
    assert _wait_until_gone([*first.values(), *restarted], timeout_s=0) == []


def test_mrt_up_names_a_service_that_fails_to_start(dummy_python, monkeypatch):
    monkeypatch.setenv("DUMMY_MODES", json.dumps({"embedder": "crash"}))
    process, _ = _start_mrt_up(dummy_python)
    try:
        out, err = process.communicate(timeout=PROCESS_WAIT_S)
    finally:
        process.kill()
    assert process.returncode == 1
    assert "mrt up: embedder: exited unexpectedly with exit code 3" in err
    assert "embedder: boom, cannot load the model" in err
    assert "cluster ready" not in out


def test_missing_interpreter_is_reported_with_the_service_name(tmp_path):
    config = ClusterConfig(python=str(tmp_path / "no-such-python")).with_free_ports()
    with pytest.raises(ClusterError, match="embedder: cannot run .*no-such-python"):
        Cluster(config).start()
