"""The promises of docker/ that a build alone would not catch: what the images
install, who they run as, what the cluster exposes, what the build context
leaves out. (docker/check.sh, run by .ci/run, builds and runs them.)"""

from __future__ import annotations

import fnmatch
import re
import subprocess

import yaml

from tests.helpers.paths import REPO

DOCKERFILES = [REPO / "docker" / "Dockerfile", REPO / "docker" / "Dockerfile.cpu"]


def _runtime_stage(path) -> str:
    """The text of the last stage: what a user's container actually is."""
    text = path.read_text()
    return text[text.rindex("\nFROM ") :]


def test_images_take_a_base_argument_install_no_dev_extras_and_run_as_a_user():
    for path in DOCKERFILES:
        text = path.read_text()
        assert re.search(r"^ARG BASE=\S+", text, re.M), f"{path.name}: no ARG BASE with a public default"
        installs = " ".join(re.findall(r"pip install[^\n]*", text))
        assert "dev" not in re.findall(r"\[([a-z,]+)\]", installs)[0].split(","), f"{path.name} installs the dev extra"
        users = re.findall(r"^USER (\S+)", _runtime_stage(path), re.M)
        assert users and users[-1] not in ("root", "0"), f"{path.name}: the image runs as root"
        assert re.search(r"^\s*org.opencontainers.image.version=", text, re.M), f"{path.name}: no version label"


def test_dependency_layer_comes_before_the_code():
    """A code change must not reinstall vLLM: the full COPY comes after the pinned install."""
    for path in DOCKERFILES:
        text = path.read_text()
        assert text.index("-c constraints/") < text.index("COPY . "), path.name
        deps_stage = text[: text.index("-c constraints/")]
        assert "COPY . " not in deps_stage and "README.md ./" not in deps_stage, path.name


def test_compose_exposes_the_head_on_loopback_only_with_token_auth():
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        env = service["environment"]
        assert env["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" in env, name
        assert {v.split(":")[0] for v in service["volumes"]} == {"runs", "hf-cache"}, name
    head = services["ray-head"]
    assert "healthcheck" in head and "--num-cpus=0" in head["command"]
    gpu_worker = services["ray-worker-gpu"]
    devices = gpu_worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert set(services["ray-worker"]["profiles"]) == {"cpu"} and set(gpu_worker["profiles"]) == {"gpu"}


def test_build_context_leaves_out_venv_runs_git_and_caches():
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        parts = path.split("/")
        return any(
            fnmatch.fnmatch("/".join(parts[: i + 1]), p.removeprefix("**/"))
            or fnmatch.fnmatch(parts[i], p.removeprefix("**/"))
            for p in patterns
            for i in range(len(parts))
        )

    for path in [
        ".venv/bin/python",
        "runs/x/metrics.jsonl",
        ".git/HEAD",
        "aharl/__pycache__/x.pyc",
        ".pytest_cache/v",
        "wandb/run",
    ]:
        assert ignored(path), f"{path} would go into the build context"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    needed = [
        p
        for p in tracked
        if p.startswith("aharl/") or p in ("pyproject.toml", "README.md", "constraints/cpu.txt", "constraints/gpu.txt")
    ]
    assert needed and not [p for p in needed if ignored(p)], "the context loses files the images install"
