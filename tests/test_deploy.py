"""The deployment files (Dockerfile, compose.yaml, systemd units) without Docker or systemd:
their structure, and the container's healthcheck against a local HTTP server."""

from __future__ import annotations

import configparser
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEALTHCHECK = ROOT / "deploy" / "healthcheck.py"


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions (continuation lines joined, comments dropped)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile() -> None:
    instructions = _instructions()
    values = {k: v for k, v in instructions}
    assert values["FROM"].startswith("nvidia/cuda:") and "runtime" in values["FROM"]
    assert json.loads(values["ENTRYPOINT"]) == ["avatarbot"]
    user = [v for k, v in instructions if k == "USER"]
    assert user and user[-1] not in {"root", "0"}
    volumes = json.loads(values["VOLUME"])
    env = " ".join(v for k, v in instructions if k == "ENV")
    assert "HF_HOME=/var/lib/avatarbot/hf" in env
    assert "AVATARBOT_DATA_DIR=/var/lib/avatarbot/data" in env
    assert set(volumes) == {"/var/lib/avatarbot/hf", "/var/lib/avatarbot/data"}
    health = values["HEALTHCHECK"]
    assert "CMD" in health and "/opt/avatarbot/healthcheck.py" in health
    assert "COPY deploy/healthcheck.py /opt/avatarbot/healthcheck.py" in " ".join(
        f"{k} {v}" for k, v in instructions
    )
    # Installs from the constraints file CI uses.
    assert any(k == "RUN" and "-c constraints.txt" in v for k, v in instructions)
    # Every path it copies exists and is not excluded by .dockerignore.
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for keyword, rest in instructions:
        if keyword == "COPY":
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert source.split("/")[0] not in ignored, source


def test_compose() -> None:
    import yaml  # the test extra installs PyYAML

    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"db", "bot", "worker"}
    db = services["db"]
    assert db["image"].startswith("postgres:")
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert any(v.startswith("pgdata:") for v in db["volumes"])
    bot, worker = services["bot"], services["worker"]
    assert bot["command"] == ["run"] and worker["command"] == ["worker"]
    assert bot["environment"]["AVATARBOT_RUN_WORKER"] == "false"
    for service in (bot, worker):
        assert service["env_file"] == "avatarbot.env"
        assert service["depends_on"]["db"]["condition"] == "service_healthy"
        url = service["environment"]["AVATARBOT_DATABASE_URL"]
        assert url.startswith("postgresql+asyncpg://") and "@db:5432/" in url
    assert "deploy" not in bot  # the bot needs no GPU
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert any(v.startswith("hf:/var/lib/avatarbot/hf") for v in worker["volumes"])
    assert set(compose["volumes"]) >= {"pgdata", "hf", "data"}


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((ROOT / "deploy" / "systemd" / name).read_text())
    return parser


@pytest.mark.parametrize("name", ["avatarbot-bot.service", "avatarbot-worker@.service"])
def test_systemd_units(name: str) -> None:
    unit = _unit(name)
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    assert service["ExecStart"].endswith(("avatarbot run", "avatarbot worker"))
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) >= 30
    assert service["EnvironmentFile"] == "/etc/avatarbot/avatarbot.env"
    assert service["User"] == "avatarbot"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_worker_unit_pins_its_gpu() -> None:
    text = (ROOT / "deploy" / "systemd" / "avatarbot-worker@.service").read_text()
    assert "Environment=CUDA_VISIBLE_DEVICES=%i" in text
    assert "ExecStart=/opt/avatarbot/venv/bin/avatarbot worker" in text
    bot = (ROOT / "deploy" / "systemd" / "avatarbot-bot.service").read_text()
    assert "Environment=AVATARBOT_RUN_WORKER=false" in bot


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[http.server.HTTPServer]:
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def _healthcheck(listen: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AVATARBOT_OPS__LISTEN": listen}
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_healthcheck_command(server: http.server.HTTPServer) -> None:
    port = server.server_address[1]
    assert _healthcheck(f"127.0.0.1:{port}").returncode == 0
    # The image listens on all interfaces; the check asks loopback.
    assert _healthcheck(f"0.0.0.0:{port}").returncode == 0
    _Handler.status = 503
    try:
        assert _healthcheck(f"127.0.0.1:{port}").returncode == 1
    finally:
        _Handler.status = 200


def test_healthcheck_fails_when_nothing_listens(server: http.server.HTTPServer) -> None:
    port = server.server_address[1]
    server.shutdown()
    server.server_close()
    proc = _healthcheck(f"127.0.0.1:{port}")
    assert proc.returncode == 1 and "healthz" in proc.stderr
