"""The service images, built and run: a Debian bookworm base made from this machine's apt sources,
the gateway, embedder and generator (cpu) images built from it by buildah the way `make images`
builds them, and two chunks of audio streamed through containers made from those images.

Everything lives in a temporary buildah storage (driver vfs) that is removed afterwards; the
three builds share the base and one pip download cache."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from deploy_helpers import ROOT, SERVICES, project_version

from services.cli.launcher import Cluster, ClusterConfig, ServiceSpec
from services.common.proto.mrt.v1 import music_pb2
from tests.streaming_client import StreamClient, chunk_audio

pytestmark = pytest.mark.slow

IMAGES_SCRIPT = str(ROOT / "scripts" / "images.sh")
BASE_IMAGE = "localhost/mrt-python:3.11-bookworm"
BUILD_TIMEOUT_S = 1800
CONTAINER_ASSETS_DIR = "/assets"
TEST_FILE_PREFIXES = ("test_", "conftest")
# The large frameworks an image must not carry: the gateway serves no model, the embedder's is TensorFlow.
NOT_CARRIED = {
    "gateway": ("tensorflow", "jax", "jaxlib"),
    "embedder": ("jax", "jaxlib"),
    "generator": (),
}


@dataclasses.dataclass(frozen=True)
class Storage:
    """A buildah storage of its own: CONTAINERS_STORAGE_CONF (and TMPDIR, where buildah keeps its
    cache mounts) in ``env`` point every buildah command at it."""

    root: Path
    env: dict[str, str]

    def buildah(self, *args: str) -> str:
        proc = subprocess.run(
            ["buildah", *args], env=self.env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, (
            f"buildah {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
        )
        return proc.stdout.strip()


@dataclasses.dataclass(frozen=True)
class Image:
    name: str
    size_bytes: int
    build_seconds: float
    container: str  # a working container made from the image
    rootfs: Path  # that container's files, as seen from the host


def image_name(service: str) -> str:
    suffix = "-cpu" if service == "generator" else ""
    return f"localhost/mrt-{service}:{project_version()}{suffix}"


@pytest.fixture(scope="module")
def storage() -> Iterator[Storage]:
    missing = [tool for tool in ("buildah", "mmdebstrap") if shutil.which(tool) is None]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} not installed: the image test builds with buildah "
            "from a Debian base made by mmdebstrap (scripts/ci_system_deps.sh installs both)"
        )
    sources = subprocess.run(["bash", IMAGES_SCRIPT, "sources"], capture_output=True, text=True)
    if sources.returncode != 0:
        pytest.skip(f"no Debian apt sources to make the base image from: {sources.stderr.strip()}")
    # Not under pytest's tmp_path: pytest keeps the last runs there, and vfs storage is gigabytes.
    root = Path(tempfile.mkdtemp(prefix="mrt-images-"))
    (root / "tmp").mkdir()
    conf = root / "storage.conf"
    conf.write_text(
        f'[storage]\ndriver = "vfs"\ngraphroot = "{root}/graph"\nrunroot = "{root}/run"\n'
    )
    env = dict(
        os.environ,
        CONTAINERS_STORAGE_CONF=str(conf),
        TMPDIR=str(root / "tmp"),
        CONTAINER_TOOL="buildah",
        PYTHON_IMAGE=BASE_IMAGE,
        VERSION=project_version(),
        REGISTRY="localhost/",
        ACCELERATOR="cpu",
    )
    try:
        yield Storage(root, env)
    finally:
        subprocess.run(["buildah", "rm", "--all"], env=env, capture_output=True, timeout=300)
        shutil.rmtree(root)


def run_images_script(storage: Storage, log: Path, *args: str) -> float:
    """Run scripts/images.sh in the test's storage, its output to ``log``; its duration in seconds."""
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run(
            ["bash", IMAGES_SCRIPT, *args],
            env=storage.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=BUILD_TIMEOUT_S,
            cwd=ROOT,
        )
    assert proc.returncode == 0, (
        f"scripts/images.sh {' '.join(args)} failed:\n{log.read_text()[-4000:]}"
    )
    return time.monotonic() - started


def inspect_image(storage: Storage, image: str) -> dict:
    return json.loads(storage.buildah("inspect", "--type", "image", image))


def image_config(storage: Storage, image: str) -> dict:
    return inspect_image(storage, image)["OCIv1"]["config"]


def image_size_bytes(storage: Storage, image: str) -> int:
    """The image's unpacked size: the sum of its layers (uncompressed tars)."""
    manifest = json.loads(inspect_image(storage, image)["Manifest"])
    return sum(layer["size"] for layer in manifest["layers"])


@pytest.fixture(scope="module")
def images(storage: Storage, tmp_path_factory) -> dict[str, Image]:
    """The three images, built from the Debian base, each with a working container."""
    log_dir = tmp_path_factory.mktemp("image-builds")
    run_images_script(storage, log_dir / "base.log", "base", BASE_IMAGE)
    built = {}
    for service in SERVICES:
        seconds = run_images_script(storage, log_dir / f"{service}.log", "build", service)
        container = storage.buildah("from", "--quiet", image_name(service))
        rootfs = Path(storage.buildah("mount", container))
        built[service] = Image(
            image_name(service),
            image_size_bytes(storage, image_name(service)),
            seconds,
            container,
            rootfs,
        )
    return built


@pytest.mark.parametrize("service", SERVICES)
def test_image_runs_as_non_root_and_carries_no_tests_or_caches(images, storage, service, capsys):
    image = images[service]
    with capsys.disabled():  # the sizes docs/deploy.md states, in the CI log
        print(
            f"\n{image.name}: {image.size_bytes / 1e6:.0f} MB, built in {image.build_seconds:.0f} s"
        )
    assert image_config(storage, image.name)["User"] == "10001:10001"
    assert (
        storage.buildah("run", "--isolation", "chroot", image.container, "--", "id", "-u")
        == "10001"
    )

    (site_packages,) = image.rootfs.glob("opt/venv/lib/python3*/site-packages")
    project = site_packages / "services"
    assert (project / service / "__main__.py").is_file()
    test_code = [
        p for p in project.rglob("*") if p.name == "tests" or p.name.startswith(TEST_FILE_PREFIXES)
    ]
    assert not test_code, f"test code in the image: {test_code}"
    for leftover in ("src", "tmp/requirements", "tests", "root/.cache", "tmp/.cache"):
        assert not (image.rootfs / leftover).exists(), f"{leftover} is in the {service} image"
    assert not (site_packages / "tests").exists()
    assert not list((image.rootfs / "var/lib/apt/lists").glob("*Packages*")), "apt lists"
    assert not list((image.rootfs / "var/cache/apt/archives").glob("*.deb")), "apt downloads"
    carried = [package for package in NOT_CARRIED[service] if (site_packages / package).exists()]
    assert not carried, f"the {service} image carries {carried}"


def container_spec(storage: Storage, image: Image, assets: Path, spec: ServiceSpec) -> ServiceSpec:
    """``spec`` (what the launcher runs on the host) run inside the service's container instead:
    the image's entrypoint with the same flags, on the host network, the assets volume mounted."""
    entrypoint = image_config(storage, image.name)["Entrypoint"]
    flags = spec.argv[3:]  # after "python -m services.<name>"
    argv = (
        "env",
        f"CONTAINERS_STORAGE_CONF={storage.env['CONTAINERS_STORAGE_CONF']}",
        "buildah",
        "run",
        "--isolation",
        "chroot",
        "--network",
        "host",
        "--volume",
        f"{assets}:{CONTAINER_ASSETS_DIR}",
        image.container,
        "--",
        *entrypoint,
        *flags,
    )
    return dataclasses.replace(spec, argv=argv)


def test_audio_streams_through_the_three_containers(images, storage, tmp_path):
    assets = tmp_path / "assets"
    assets.mkdir()
    assets.chmod(0o777)  # the services run as user 10001 and build the tiny model's files here
    config = ClusterConfig(
        model="tiny",
        embedder_model="tiny",
        assets_dir=CONTAINER_ASSETS_DIR,
        log_dir=tmp_path / "logs",
        ready_timeout_s=600,
    ).with_free_ports()
    specs = [
        container_spec(storage, images[spec.role], assets, spec) for spec in config.service_specs()
    ]
    with Cluster(config, specs=specs) as cluster:
        client = StreamClient(cluster.gateway_address)
        try:
            started = client.setup()
            assert started.session_id
            client.prompts(music_pb2.WeightedPrompt(text="synthwave", weight=1.0))
            client.playback(music_pb2.PlaybackControl.PLAY)
            chunks = [chunk for _, chunk in client.chunks(2, timeout_s=300)]
        finally:
            client.close()
    assert [c.sequence for c in chunks] == [0, 1]
    for chunk in chunks:
        audio = chunk_audio(chunk)
        assert audio.shape == (96000, 2)  # 2 s of 48 kHz stereo
        assert np.all(np.isfinite(audio)) and np.abs(audio).max() > 0.01
