"""The container images: Dockerfiles lint clean, run each service as non-root from a pinned base,
and install every third-party distribution the service's code imports."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import dockerfile
import pytest
from deploy_helpers import DEPLOY, GRPC_PORT, METRICS_PORT, ROOT, SERVICES, run, tool
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

DOCKER = DEPLOY / "docker"
REQUIREMENTS = DOCKER / "requirements"
ACCELERATORS = ("cpu", "cuda12", "tpu")
PINNED_BASE = re.compile(r"^python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}$")


def instructions(service: str) -> list:
    return list(dockerfile.parse_file(str(DOCKER / f"{service}.Dockerfile")))


def final_stage(commands: list) -> list:
    last_from = max(i for i, c in enumerate(commands) if c.cmd == "FROM")
    return commands[last_from:]


def requirement_lines(path: Path) -> list[Requirement]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def test_dockerfiles_pass_hadolint():
    run([tool("hadolint"), *map(str, sorted(DOCKER.glob("*.Dockerfile")))])


@pytest.mark.parametrize("service", SERVICES)
def test_image_runs_the_service_as_non_root_from_a_pinned_base(service):
    commands = instructions(service)
    base = next(c for c in commands if c.cmd == "ARG" and c.value[0].startswith("PYTHON_IMAGE="))
    assert PINNED_BASE.match(base.value[0].split("=", 1)[1]), (
        "base image must be an exact tag and digest"
    )
    assert all(c.value[0].startswith("${PYTHON_IMAGE}") for c in commands if c.cmd == "FROM")
    final = final_stage(commands)
    (user,) = [c for c in final if c.cmd == "USER"]
    uid = user.value[0].split(":")[0]
    assert uid.isdigit() and int(uid) >= 10000, (
        "run as a numeric non-root user (Kubernetes runAsNonRoot)"
    )
    (entrypoint,) = [c for c in final if c.cmd == "ENTRYPOINT"]
    assert entrypoint.json and list(entrypoint.value) == ["python", "-m", f"services.{service}"]
    exposed = {int(port) for c in final if c.cmd == "EXPOSE" for port in c.value}
    assert exposed == {GRPC_PORT[service], METRICS_PORT[service]}
    env = {
        c.value[i]: c.value[i + 1]
        for c in final
        if c.cmd == "ENV"
        for i in range(0, len(c.value), 2)
    }
    assert env["MRT_PORT"] == str(GRPC_PORT[service]) and env["MRT_METRICS_PORT"] == str(
        METRICS_PORT[service]
    )
    installs = " ".join(
        c.original for c in commands if c.cmd == "RUN" and "pip install" in c.original
    )
    assert (
        f"-r /tmp/requirements/{service}.txt" in installs
        and "-c /tmp/requirements/requirements.lock" in installs
    )


def test_generator_image_selects_the_accelerator_runtime():
    commands = instructions("generator")
    (arg,) = [c for c in commands if c.cmd == "ARG" and c.value[0].startswith("ACCELERATOR=")]
    assert arg.value[0] == "ACCELERATOR=cpu"
    (install,) = [c for c in commands if c.cmd == "RUN" and "ACCELERATOR" in c.original]
    for accelerator in ACCELERATORS:
        assert re.search(rf"\b{accelerator}\b[|)]", install.original), accelerator
    for accelerator in ("cuda12", "tpu"):
        runtime = requirement_lines(REQUIREMENTS / f"generator-{accelerator}.txt")
        assert any(r.name == "jax" and r.extras == {accelerator} for r in runtime), accelerator
        assert all(r.specifier or r.name == "jax" for r in runtime), (
            f"pin every {accelerator} runtime package"
        )


def test_image_requirements_are_pinned_by_the_lock():
    locked = {
        canonicalize_name(Requirement(line).name)
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if "==" in line
    }
    for path in REQUIREMENTS.glob("*.txt"):
        for requirement in requirement_lines(path):
            assert canonicalize_name(requirement.name) in locked or requirement.specifier, (
                path.name,
                requirement.name,
            )


def imported_modules(service: str) -> set[str]:
    """Every non-project, non-standard-library module the service's code imports, following the
    imports of other `services.*` modules it uses (services/common among them)."""
    pending = list((ROOT / "services" / service).rglob("*.py"))
    seen: set[Path] = set()
    external: set[str] = set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:
                    module = ".".join(
                        package.split(".")[: len(package.split(".")) - node.level + 1]
                        + ([module] if module else [])
                    )
                names = [module] + [f"{module}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top == "services":
                    pending += project_files(name)
                elif top not in sys.stdlib_module_names and top != "__future__":
                    external.add(name)
    return external


def project_files(module: str) -> list[Path]:
    """The files of a project module: its own file, or its package's __init__, with its parents' __init__s."""
    parts = module.split(".")
    files = [ROOT.joinpath(*parts[:i], "__init__.py") for i in range(1, len(parts) + 1)]
    files.append(ROOT.joinpath(*parts).with_suffix(".py"))
    return [f for f in files if f.is_file()]


def distribution_of(module: str) -> str | None:
    """The installed distribution that provides an imported module (None: a name inside a module)."""
    candidates = importlib.metadata.packages_distributions().get(module.split(".")[0], [])
    if len(set(candidates)) == 1:
        return canonicalize_name(candidates[0])
    relpath = module.replace(".", "/")
    for name in candidates:  # a namespace package shared by several distributions (google.*)
        files = importlib.metadata.distribution(name).files or []
        if any(str(f).startswith(relpath + "/") or str(f) == relpath + ".py" for f in files):
            return canonicalize_name(name)
    assert candidates or "." in module, f"{module} is imported but not installed"
    return None


def installed_closure(requirements: list[Requirement]) -> set[str]:
    """The distributions an image gets from its requirement list: the list and their dependencies."""
    pending = [r.name for r in requirements]
    closure: set[str] = set()
    while pending:
        name = canonicalize_name(pending.pop())
        if name in closure:
            continue
        closure.add(name)
        try:
            dependencies = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in dependencies:
            dependency = Requirement(line)
            if dependency.marker is None or dependency.marker.evaluate({"extra": ""}):
                pending.append(dependency.name)
    return closure


@pytest.mark.parametrize("service", SERVICES)
def test_image_installs_what_the_service_imports(service):
    needed = {d for d in map(distribution_of, imported_modules(service)) if d}
    installed = installed_closure(requirement_lines(REQUIREMENTS / f"{service}.txt"))
    assert needed <= installed, (
        f"add to deploy/docker/requirements/{service}.txt: {sorted(needed - installed)}"
    )


def test_import_scan_follows_project_imports():
    # The generator's engine imports numpy and services.common.model_facts; the scan must see numpy.
    assert "numpy" in imported_modules("generator")
    assert distribution_of("numpy") == "numpy"
    assert distribution_of("google.protobuf") == "protobuf"
