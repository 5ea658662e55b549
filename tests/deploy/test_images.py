"""The container build files, checked statically (no container engine runs here): one image, two
targets (CPU, CUDA), a non-root user, `kyb` as the entry point, the configured ports exposed, and
every Python dependency pinned to a version that satisfies pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from kyb.rpc import load_service_config

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
CONFIG_ENV = ROOT / "deploy" / "k8s" / "base" / "common" / "config.env"


def _dockerfile() -> str:
    return (DOCKER / "Dockerfile").read_text()


def _lock() -> dict[str, str]:
    """``{name: version}``; every requirement must be ``name==version`` with a sha256 hash."""
    pins = {}
    text = (DOCKER / "requirements.lock").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            requirement, *options = line.split()
            name, _, version = requirement.partition("==")
            assert version, f"not pinned: {line}"
            assert any(re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", o) for o in options), f"no hash: {line}"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_one_image_with_a_cpu_and_a_cuda_target() -> None:
    text = _dockerfile()
    targets = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, flags=re.M))
    assert {"cpu", "cuda"} <= targets
    # torch from the wheels build.sh stages on this machine (a CPU build, a CUDA build), never a download.
    assert "source=build/docker-wheels/cpu" in text and "source=build/docker-wheels/cuda" in text
    assert "--require-hashes" in text and "ARG BASE_IMAGE=" in text


def test_non_root_user_and_kyb_entry_point() -> None:
    text = _dockerfile()
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users[-1] == "10001:10001"  # numeric, so runAsNonRoot can verify it
    assert re.search(r'^ENTRYPOINT \["kyb"\]', text, flags=re.M)
    # The final stage of each target ends as the unprivileged user.
    for stage in re.split(r"^FROM ", text, flags=re.M)[1:]:
        stage_users = re.findall(r"^USER\s+(\S+)", stage, flags=re.M)
        if stage_users:
            assert stage_users[-1] == "10001:10001", stage.splitlines()[0]


def test_exposed_ports_are_the_configured_ones() -> None:
    lines = [line for line in CONFIG_ENV.read_text().splitlines() if line.strip() and not line.startswith("#")]
    env = dict(line.split("=", 1) for line in lines)
    config = load_service_config(env=env)
    [expose] = re.findall(r"^EXPOSE\s+(.+)$", _dockerfile(), flags=re.M)
    exposed = {int(p) for p in expose.split()}
    wanted = {config.gateway.port, config.encoder.port, config.matcher.port, config.detector.port, config.web.port}
    assert exposed == wanted | {config.rpc.metrics_port}
    assert f"KYB_RPC__METRICS_PORT={config.rpc.metrics_port}" in _dockerfile()


def test_every_dependency_is_pinned_to_a_version_pyproject_accepts() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _lock()
    for text in project["dependencies"]:
        requirement = Requirement(text)
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in pins, f"{name} missing from requirements.lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} vs {text}"
    torch_pins = dict(re.findall(r"^ARG (TORCH_VERSION|TORCHVISION_VERSION)=(\S+)", _dockerfile(), flags=re.M))
    extra = {Requirement(r).name: Requirement(r) for r in project["optional-dependencies"]["torch"]}
    assert extra["torch"].specifier.contains(torch_pins["TORCH_VERSION"])
    assert extra["torchvision"].specifier.contains(torch_pins["TORCHVISION_VERSION"])


def test_dockerignore_keeps_the_context_to_what_the_image_needs() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert "**" in lines  # everything out (.venv, .git, .kyb, data sets), then only what the build copies
    copied = set(re.findall(r"^COPY (?!--from)(.+) \S+$", _dockerfile(), flags=re.M))
    for sources in copied:
        for source in sources.split():
            assert f"!{source}" in lines or f"!{source}/" in lines, source
            assert (ROOT / source).exists(), source
