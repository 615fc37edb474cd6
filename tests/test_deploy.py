"""The deployment files (Dockerfile, compose.yaml, systemd units, env file examples) without
Docker or systemd: their structure, one env file per role (issue 21, finding 9: the workers
never get the Discord token), the units' sandboxing (``systemd-analyze`` where installed), the
worker refusing a token, and the container's healthcheck against a local HTTP server."""

from __future__ import annotations

import configparser
import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.config import parse_listen

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
    # One env file per role: only the bot's holds the Discord token.
    assert bot["env_file"] == "bot.env" and worker["env_file"] == "worker.env"
    assert "env_file" not in compose["x-avatarbot"]
    for name in ("bot.env", "worker.env"):
        assert name in (ROOT / ".gitignore").read_text().split()
    for service in (bot, worker):
        assert service["depends_on"]["db"]["condition"] == "service_healthy"
        url = service["environment"]["AVATARBOT_DATABASE_URL"]
        assert url.startswith("postgresql+asyncpg://") and "@db:5432/" in url
    assert "deploy" not in bot  # the bot needs no GPU
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert any(v.startswith("hf:/var/lib/avatarbot/hf") for v in worker["volumes"])
    assert set(compose["volumes"]) >= {"pgdata", "hf", "data"}
    assert "AVATARBOT_DISCORD_TOKEN" not in json.dumps(worker)


def _env_example(name: str) -> dict[str, str]:
    """The settings an env file example sets or shows (commented ``# KEY=value`` lines too)."""
    found = {}
    for line in (ROOT / "deploy" / name).read_text().splitlines():
        match = re.fullmatch(r"#?\s*(AVATARBOT_[A-Z0-9_]+)=(.*)", line.strip())
        if match:
            found[match[1]] = match[2]
    return found


def test_one_env_file_per_role() -> None:
    assert not (ROOT / "deploy" / "avatarbot.env.example").exists()  # the shared one is gone
    bot, worker = _env_example("bot.env.example"), _env_example("worker.env.example")
    assert {"AVATARBOT_DISCORD_TOKEN", "AVATARBOT_DATA_KEY", "AVATARBOT_DATABASE_URL"} <= set(bot)
    assert {"AVATARBOT_DATA_KEY", "AVATARBOT_DATABASE_URL"} <= set(worker)
    # Not even commented out: the worker's file never names the token as a setting.
    assert "AVATARBOT_DISCORD_TOKEN" not in worker
    # Every reference to an env file names one of the two.
    for path in ("README.md", "compose.yaml", "Dockerfile", "deploy/systemd/avatarbot-bot.service"):
        assert "avatarbot.env" not in (ROOT / path).read_text(), path


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
    assert service["ExecStart"].rstrip("'").endswith(("avatarbot run", "avatarbot worker"))
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) >= 30
    role = "bot" if name == "avatarbot-bot.service" else "worker"
    assert service["EnvironmentFile"] == f"/etc/avatarbot/{role}.env"
    assert service["User"] == "avatarbot"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


# Sandboxing both units share (value "" means the key is present and empty: nothing granted).
HARDENING = {
    "NoNewPrivileges": "true",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "SystemCallArchitectures": "native",
    "ProtectSystem": "strict",
    "ReadWritePaths": "/var/lib/avatarbot",
    "ProtectHome": "true",
    "PrivateTmp": "true",
    "ProtectKernelTunables": "true",
    "ProtectKernelModules": "true",
    "ProtectControlGroups": "true",
    "RestrictNamespaces": "true",
    "LockPersonality": "true",
    "RestrictRealtime": "true",
    "RestrictSUIDSGID": "true",
    "UMask": "0077",
}


def _service_lines(name: str) -> list[tuple[str, str]]:
    """Every ``Key=value`` of [Service], repeated keys kept (configparser keeps the last)."""
    out, section = [], None
    for line in (ROOT / "deploy" / "systemd" / name).read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.append((key, value))
    return out


def _memory_bytes(value: str) -> int:
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    return int(value[:-1]) * units[value[-1]] if value[-1] in units else int(value)


@pytest.mark.parametrize("name", ["avatarbot-bot.service", "avatarbot-worker@.service"])
def test_systemd_units_are_sandboxed(name: str) -> None:
    lines = _service_lines(name)
    service = dict(lines)
    for key, value in HARDENING.items():
        assert key in service, key
        assert service[key] == value, (key, service[key])
    filters = [value for key, value in lines if key == "SystemCallFilter"]
    assert "@system-service" in filters
    assert any(f.startswith("~") and "@privileged" in f for f in filters)
    assert _memory_bytes(service["MemoryMax"]) >= 2**30


def test_bot_and_worker_sandboxes_differ_where_the_gpu_needs_it() -> None:
    bot, worker = (
        dict(_service_lines("avatarbot-bot.service")),
        _service_lines("avatarbot-worker@.service"),
    )
    assert bot["PrivateDevices"] == "true" and bot["MemoryDenyWriteExecute"] == "true"
    worker_keys = dict(worker)
    # The GPU: its device nodes only, not PrivateDevices; the CUDA/torch JITs need W+X memory.
    assert "PrivateDevices" not in worker_keys
    assert "MemoryDenyWriteExecute" not in worker_keys
    assert worker_keys["DevicePolicy"] == "closed"
    allowed = {value.split()[0] for key, value in worker if key == "DeviceAllow"}
    assert {"char-nvidia", "char-nvidia-uvm"} <= allowed
    assert _memory_bytes(worker_keys["MemoryMax"]) > _memory_bytes(bot["MemoryMax"])


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize(
    ("name", "instance"),
    [
        ("avatarbot-bot.service", "avatarbot-bot.service"),
        ("avatarbot-worker@.service", "avatarbot-worker@0.service"),
    ],
)
def test_systemd_analyze_accepts_the_units(tmp_path: Path, name: str, instance: str) -> None:
    """``verify``: no unknown key, no invalid value (it only warns about those, so any output
    fails). ExecStart points at an executable that exists here: the venv is not installed."""
    assert SYSTEMD_ANALYZE is not None
    text = (ROOT / "deploy" / "systemd" / name).read_text()
    unit = tmp_path / instance
    unit.write_text(
        text.replace("/opt/avatarbot/venv/bin/avatarbot", shutil.which("true") or "/bin/true")
    )
    verify = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 0 and not (verify.stdout + verify.stderr).strip(), verify.stderr
    security = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    exposure = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    if exposure is None:  # an older systemd without --offline
        pytest.skip(f"systemd-analyze security --offline unsupported: {security.stderr[:200]}")
    # systemd rates 0-10; below 2.0 is "OK" (the units before issue 21 rated 8.5, "EXPOSED").
    assert float(exposure[1]) < 2.0, security.stdout


def test_worker_refuses_the_discord_token(tmp_path: Path) -> None:
    """A token in a worker's environment is an operator's mistake: one line, exit 2, before
    anything starts (no database file, no engine)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVATARBOT_")}
    env.update(
        AVATARBOT_DATA_DIR=str(tmp_path / "data"),
        AVATARBOT_ENGINE__PROFILE="tiny",
        AVATARBOT_ENGINE__OFFLINE="true",
        AVATARBOT_OPS__LISTEN="off",
        AVATARBOT_DISCORD_TOKEN="MTIz.fake.token-value",
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bot", "worker"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the worker started with the Discord token in its environment: {exc}")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "AVATARBOT_DISCORD_TOKEN" in lines[0], proc.stderr
    assert "worker.env" in lines[0] and "fake.token" not in proc.stderr
    assert not (tmp_path / "data").exists()  # nothing was opened


def test_worker_unit_pins_its_gpu() -> None:
    text = (ROOT / "deploy" / "systemd" / "avatarbot-worker@.service").read_text()
    assert "Environment=CUDA_VISIBLE_DEVICES=%i" in text
    assert "exec /opt/avatarbot/venv/bin/avatarbot worker'" in text
    bot = (ROOT / "deploy" / "systemd" / "avatarbot-bot.service").read_text()
    assert "Environment=AVATARBOT_RUN_WORKER=false" in bot


def _worker_instance_env(tmp_path: Path, instance: str) -> dict[str, str]:
    """The environment ``avatarbot worker`` gets in ``avatarbot-worker@<instance>``: the unit's
    Environment= lines, then its ExecStart run with systemd's substitutions (``%i``, ``$$``)
    and a stand-in for the worker that prints its environment."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    exec_start = ""
    for key, value in _service_lines("avatarbot-worker@.service"):
        value = value.replace("%i", instance)
        if key == "Environment":
            name, _, setting = value.partition("=")
            env[name] = setting
        elif key == "ExecStart":
            exec_start = value.replace("$$", "$")
    stand_in = tmp_path / "avatarbot"
    stand_in.write_text(
        f"#!{sys.executable}\nimport json, os\nprint(json.dumps(dict(os.environ)))\n"
    )
    stand_in.chmod(0o755)
    argv = shlex.split(exec_start.replace("/opt/avatarbot/venv/bin/avatarbot", str(stand_in)))
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    got: dict[str, str] = json.loads(proc.stdout)
    return got


def test_each_worker_instance_listens_on_a_valid_port_of_its_own(tmp_path: Path) -> None:
    """Issue 24: the port was ``911%i`` (GPU 10 -> 91110, refused). It is 9110 + GPU index."""
    ports = {}
    for gpu in range(16):
        env = _worker_instance_env(tmp_path, str(gpu))
        assert env["CUDA_VISIBLE_DEVICES"] == str(gpu)
        address = parse_listen(env["AVATARBOT_OPS__LISTEN"])
        assert address == ("127.0.0.1", 9110 + gpu), env["AVATARBOT_OPS__LISTEN"]
        ports[gpu] = address[1]
    assert len(set(ports.values())) == len(ports)


def test_what_renders_names_a_real_profile(tmp_path: Path) -> None:
    """Issue 24: nothing that serves members falls back to random weights by omission: the
    image, the worker unit, compose and both env file examples name a real profile."""
    import yaml

    from engine.profiles import get_profile

    image_env = " ".join(v for k, v in _instructions() if k == "ENV")
    image = re.search(r"AVATARBOT_ENGINE__PROFILE=(\S+)", image_env)
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    named = {
        "Dockerfile": image[1] if image else "",
        "avatarbot-worker@0": _worker_instance_env(tmp_path, "0")["AVATARBOT_ENGINE__PROFILE"],
        "compose.yaml": compose["x-avatarbot"]["environment"]["AVATARBOT_ENGINE__PROFILE"],
        "worker.env.example": _env_example("worker.env.example")["AVATARBOT_ENGINE__PROFILE"],
        "bot.env.example": _env_example("bot.env.example")["AVATARBOT_ENGINE__PROFILE"],
    }
    for where, profile in named.items():
        assert not get_profile(profile).is_noise, f"{where}: {profile}"
    # Set, not commented out, in the files an operator copies.
    for name in ("worker.env.example", "bot.env.example"):
        text = (ROOT / "deploy" / name).read_text()
        assert re.search(r"^AVATARBOT_ENGINE__PROFILE=\S", text, re.MULTILINE), name


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


# The bot's unit sets MemoryDenyWriteExecute=true. The kernel's own switch for the same rule
# (prctl PR_SET_MDWE, Linux 6.3+) lets a test run what the bot does under it: a dependency
# that starts writing executable memory would kill the bot at start or at its first upload.
_MDWE_PROBE = """
import ctypes, io, mmap, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    print("unsupported"); sys.exit(0)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    print("unsupported"); sys.exit(0)
except OSError:
    pass
from PIL import Image
import bot.app, bot.cli.run_cmd, aiohttp, cryptography  # noqa: F401
from bot.config import PhotoLimits
from bot.services.photo_intake import normalize_photo
for fmt, options in [("JPEG", {}), ("PNG", {}), ("WEBP", {}), ("WEBP", {"lossless": True}),
                     ("HEIF", {}), ("GIF", {})]:
    out = io.BytesIO()
    Image.linear_gradient("L").resize((640, 480)).convert("RGB").save(out, fmt, **options)
    normalize_photo(out.getvalue(), "x", PhotoLimits())
assert "torch" not in sys.modules and "onnxruntime" not in sys.modules
print("ok")
"""


@pytest.mark.skipif(sys.platform != "linux", reason="prctl PR_SET_MDWE is Linux's")
def test_the_bot_runs_without_writable_executable_memory() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _MDWE_PROBE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.stdout.strip() == "unsupported":
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
