"""The production path's files, checked by the tools that run them.

``docker-compose config`` (Debian's docker-compose) validates the compose file
against the Compose schema without a Docker engine, and ``promtool check
config`` validates Prometheus's scrape configuration. CI installs both.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (CI installs it)")
    return found


def test_the_compose_file_is_valid_and_complete(tmp_path: Path) -> None:
    compose = _tool("docker-compose")
    checked = subprocess.run(
        [compose, "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert checked.returncode == 0, checked.stderr
    resolved = yaml.safe_load(checked.stdout)
    services = resolved["services"]
    assert {"kafka", "redis", "worker-1", "worker-2", "prometheus"} <= set(services)
    for name in ("worker-1", "worker-2"):
        environment = services[name]["environment"]
        assert environment["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:19092"
        assert environment["CACHECAST_WEB_HOST"] == "0.0.0.0"  # reachable through the port
    assert "allkeys-lru" in services["redis"]["command"]
    # The validator does refuse a broken file (so the check above means something).
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  worker:\n    image: x\n    ports: 12\n")
    refused = subprocess.run(
        [compose, "-f", str(broken), "config", "-q"], capture_output=True, timeout=120
    )
    assert refused.returncode != 0


def test_prometheus_scrapes_every_worker() -> None:
    promtool = _tool("promtool")
    config = ROOT / "deploy" / "prometheus.yml"
    checked = subprocess.run(
        [promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    targets = yaml.safe_load(config.read_text())["scrape_configs"][0]["static_configs"][0]
    assert sorted(targets["targets"]) == ["worker-1:6066", "worker-2:6066"]
