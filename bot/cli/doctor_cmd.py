"""`avatarbot doctor`: check the installation, one line per check with ok/warn/fail and the fix.

Nothing is changed and nothing is downloaded: weights are looked up in local folders and the
Hugging Face cache only, and a SQLite database file that does not exist yet is not created
(every command that uses the database creates and migrates it at start). ``--role worker``
or ``--role bot`` checks only what that process needs (a worker: the engine, its weights, the
database, no token; a bot: the token and the database, and the engine when it renders too).

Exit status: 0 when no check fails (warnings allowed), 1 when any fails (EXIT_RULE, also in
the README); the last line says which, and counts the warnings.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import importlib.util
import json
import platform
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bot.config import Settings

Status = Literal["ok", "warn", "fail"]
Role = Literal["bot", "worker"]
DB_TIMEOUT_SECONDS = 10.0
EXIT_RULE = "exit status 0 when no check fails (warnings allowed), 1 when any fails"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<4}  {self.name:<9} {self.detail}"
        return f"{text} -> fix: {self.fix}" if self.fix and self.status != "ok" else text


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "doctor",
        help="check the installation (python, torch, device, weights, extras, database, keys)",
        description="Check the installation without changing or downloading anything; "
        f"{EXIT_RULE}.",
    )
    p.add_argument(
        "--role",
        choices=("bot", "worker"),
        help="check only what this process needs: a worker (engine, weights, database; no "
        "token) or the bot (token, database; the engine too with AVATARBOT_RUN_WORKER=true)",
    )
    p.set_defaults(handler=run_doctor)


def run_doctor(args: argparse.Namespace, settings: Settings) -> int:
    counts = {"ok": 0, "warn": 0, "fail": 0}
    for check in run_checks(settings, args.role):
        print(check.line(), flush=True)
        counts[check.status] += 1
    print(summary(counts["fail"], counts["warn"]))
    return 1 if counts["fail"] else 0


def summary(failed: int, warned: int) -> str:
    """The last line: "all checks passed" only when every check is ok."""
    warnings = f"{warned} warning{'s' if warned != 1 else ''}"
    if failed:
        return f"doctor: {failed} check{'s' if failed != 1 else ''} failed, {warnings} (exit 1)"
    if warned:
        return f"doctor: no check failed, {warnings} (exit 0)"
    return "doctor: all checks passed"


Step = Callable[[Settings], list[Check]]


def steps_for(settings: Settings, role: Role | None) -> tuple[Step, ...]:
    """The checks a role needs, in order; no role: every check."""
    engine: tuple[Step, ...] = (
        check_torch,
        check_profile,
        check_device,
        check_weights,
        check_faces,
        check_safety,
        check_screen,
    )
    token = {None: check_token, "bot": check_token_needed, "worker": check_no_token}[role]
    renders = role != "bot" or settings.run_worker
    return (check_python, *(engine if renders else ()), check_database, check_data_key, token)


def run_checks(settings: Settings, role: Role | None = None) -> Iterator[Check]:
    """The role's checks in order; a check that raises is reported as a failure, never a
    traceback."""
    for step in steps_for(settings, role):
        try:
            yield from step(settings)
        except Exception as exc:  # a broken check must not hide the others
            name = step.__name__.removeprefix("check_")
            yield Check(name, "fail", f"the check itself failed: {_one_line(exc)}")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


# --- python, torch, device ---------------------------------------------------------------


def check_python(settings: Settings) -> list[Check]:
    version = platform.python_version()
    if sys.version_info < (3, 11):  # noqa: UP036 - an old interpreter running a copied tree
        return [Check("python", "fail", f"{version}", "install Python 3.11 or newer")]
    return [Check("python", "ok", f"{version} ({sys.executable})")]


def check_torch(settings: Settings) -> list[Check]:
    try:
        import torch
    except ImportError as exc:
        return [
            Check(
                "torch",
                "fail",
                f"not importable ({_one_line(exc)})",
                "install torch (see the README: a CUDA build on GPU machines)",
            )
        ]
    cuda = torch.version.cuda
    build = f"CUDA {cuda} build" if cuda else "CPU build"
    if getattr(torch.version, "hip", None):
        build = f"ROCm {torch.version.hip} build"
    return [Check("torch", "ok", f"{torch.__version__} ({build})")]


def check_profile(settings: Settings) -> list[Check]:
    """Random weights render noise: fine for a demo, never what members should be served."""
    from bot.cli.noise_guard import REAL_PROFILE_FIX
    from engine.errors import UnknownProfile
    from engine.profiles import resolve_profile

    try:
        profile = resolve_profile(settings.engine)
    except UnknownProfile as exc:
        return [Check("profile", "fail", str(exc), "set AVATARBOT_ENGINE__PROFILE")]
    if profile.is_noise:
        return [
            Check(
                "profile",
                "warn",
                f"{profile.name} has random weights: every render is noise (`run` and "
                "`worker` refuse it without --allow-noise)",
                REAL_PROFILE_FIX,
            )
        ]
    return [Check("profile", "ok", f"{profile.name} (real weights)")]


def check_device(settings: Settings) -> list[Check]:
    import torch

    from engine.profiles import resolve_profile

    profile = resolve_profile(settings.engine)
    wanted = profile.device or settings.engine.device
    has_cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps is not None and mps.is_available())
    found = []
    if has_cuda:
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            name = torch.cuda.get_device_name(index)
            found.append(f"cuda:{index} {name}, {free / 2**30:.1f} of {total / 2**30:.1f} GiB free")
    if has_mps:
        found.append("mps")
    seen = "; ".join(found) if found else "no CUDA or MPS device"
    if wanted.startswith("cuda") and not has_cuda:
        fix = "install a CUDA build of torch and the NVIDIA driver, or set AVATARBOT_ENGINE__DEVICE"
        if not torch.version.cuda:
            fix = "this torch is a CPU build: " + fix
        return [Check("device", "fail", f"{wanted} asked for, {seen}", fix)]
    if wanted == "mps" and not has_mps:
        return [Check("device", "fail", f"mps asked for, {seen}", "set AVATARBOT_ENGINE__DEVICE")]
    if wanted == "auto" and not found and not profile.is_noise:
        return [
            Check(
                "device",
                "warn",
                f"{seen}: profile {profile.name} would render on the CPU (minutes per image)",
                "run workers on a machine with a GPU and a CUDA build of torch",
            )
        ]
    return [Check("device", "ok", f"{wanted} for profile {profile.name} ({seen})")]


# --- weights -----------------------------------------------------------------------------


def check_weights(settings: Settings) -> list[Check]:
    from engine.errors import UnknownProfile
    from engine.profiles import resolve_profile

    try:
        profile = resolve_profile(settings.engine)
    except UnknownProfile as exc:
        return [Check("weights", "fail", str(exc), "set AVATARBOT_ENGINE__PROFILE")]
    from engine.weights import download_hint

    cache_dir = str(settings.engine.cache_dir) if settings.engine.cache_dir else None
    hint = download_hint(profile.name)
    checks: list[Check] = []
    if profile.base_model is None:
        checks.append(
            Check("weights", "ok", f"profile {profile.name}: random base weights, none needed")
        )
    else:
        checks.append(
            _base_weights(
                profile.base_model,
                profile.base_config,
                cache_dir,
                hint,
                single_file_ok=profile.pipeline_family == "stable-diffusion",
            )
        )
    for spec in profile.personalizers:
        checks.extend(_personalizer_weights(spec.name, dict(spec.options), cache_dir, hint))
    return checks


def _missing(what: str, location: str, reason: str, hint: str) -> Check:
    """A failed weights check. Its fix: for a hub id ``hint``, the command that downloads the
    profile's files; for a path, the setting to correct."""
    from engine.loading import how_to_get, looks_local

    setting = {
        "base model": "engine.base_model",
        "IP-Adapter weights": "engine.ip_adapter",
        "IP-Adapter image encoder": "engine.image_encoder",
        "InstantBooth weights": "engine.instantbooth_weights",
    }.get(what, "engine.profile")
    return Check(
        "weights",
        "fail",
        f"{what} {location}: {reason}",
        how_to_get(location, what_setting=setting) if looks_local(location) else hint,
    )


def _base_weights(
    location: str,
    config: str | None,
    cache_dir: str | None,
    hint: str,
    *,
    single_file_ok: bool = True,
) -> Check:
    from engine.loading import is_single_file, looks_local

    what = "base model"
    if looks_local(location):
        path = Path(location).expanduser()
        if not path.exists():
            return _missing(what, location, "no such path", hint)
        if is_single_file(location) and not single_file_ok:
            return _missing(what, location, "this profile loads a diffusers folder or hub id", hint)
        if is_single_file(location):
            if (
                config is not None
                and not looks_local(config)
                and _cached_file(config, "model_index.json", cache_dir) is None
            ):
                return _missing("base model configs", config, "not in the Hugging Face cache", hint)
            return Check("weights", "ok", f"{what}: {path}")
        if not (path / "model_index.json").is_file():
            return _missing(what, location, "not a diffusers folder (no model_index.json)", hint)
        return _components_present(what, location, path, hint)
    snapshot = _cached_snapshot(location, cache_dir)
    if snapshot is None:
        return _missing(what, location, "not in the Hugging Face cache", hint)
    return _components_present(what, location, snapshot, hint)


def _components_present(what: str, location: str, folder: Path, hint: str) -> Check:
    """A diffusers folder has every component that model_index.json names (with weights)."""
    index = json.loads((folder / "model_index.json").read_text())
    # The denoiser is a UNet (Stable Diffusion) or a transformer (FLUX.2).
    needed = ("unet", "transformer", "vae", "text_encoder", "tokenizer")
    missing = []
    for name in needed:
        if name not in index:
            continue
        sub = folder / name
        has_files = sub.is_dir() and any(sub.iterdir())
        if name != "tokenizer" and has_files:
            has_files = any(
                p.suffix in {".safetensors", ".bin"} for p in sub.iterdir() if p.exists()
            )
        if not has_files:
            missing.append(name)
    if missing:
        return _missing(what, location, f"incomplete, missing {', '.join(missing)}", hint)
    return Check("weights", "ok", f"{what}: {location} ({folder})")


def _personalizer_weights(
    name: str, options: dict[str, Any], cache_dir: str | None, hint: str
) -> list[Check]:
    from engine.loading import is_single_file

    if name == "none" or options.get("random") is not None:
        return []
    checks = []
    if "repo" in options:
        repo = str(options["repo"])
        subfolder = str(options.get("subfolder", "models"))
        weight_name = options.get("weight_name")
        if is_single_file(repo):
            path = Path(repo).expanduser()
            repo, subfolder, weight_name = str(path.parent), "", path.name
        wanted = [f"{subfolder}/{weight_name}".lstrip("/")]
        encoder = options.get("image_encoder")
        if encoder:
            checks.append(
                _files_present(
                    "IP-Adapter image encoder", str(encoder), ["config.json"], cache_dir, hint
                )
            )
        else:
            folder = str(options.get("image_encoder_subfolder", "image_encoder"))
            if "/" not in folder:
                folder = f"{subfolder}/{folder}".lstrip("/")
            wanted += [f"{folder}/config.json", f"{folder}/model.safetensors"]
        checks.insert(0, _files_present("IP-Adapter weights", repo, wanted, cache_dir, hint))
    elif "weights" in options:
        path = Path(str(options["weights"])).expanduser()
        if path.exists():
            checks.append(Check("weights", "ok", f"InstantBooth weights: {path}"))
        else:
            checks.append(_missing("InstantBooth weights", str(path), "no such path", hint))
    else:
        checks.append(
            Check("weights", "warn", f"personalizer {name}: its weights are not checked here")
        )
    return checks


def _files_present(
    what: str, location: str, files: list[str], cache_dir: str | None, hint: str
) -> Check:
    from engine.loading import looks_local

    if looks_local(location):
        root = Path(location).expanduser()
        absent = [f for f in files if not (root / f).is_file()]
        if not root.exists():
            return _missing(what, location, "no such path", hint)
    else:
        absent = [f for f in files if _cached_file(location, f, cache_dir) is None]
    if absent:
        return _missing(what, location, f"missing {', '.join(absent)}", hint)
    return Check("weights", "ok", f"{what}: {location}")


def _cached_file(repo: str, filename: str, cache_dir: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
    return found if isinstance(found, str) else None


def _cached_snapshot(repo: str, cache_dir: str | None) -> Path | None:
    found = _cached_file(repo, "model_index.json", cache_dir)
    return Path(found).parent if found else None


# --- extras ------------------------------------------------------------------------------


def check_faces(settings: Settings) -> list[Check]:
    from engine.subject_checks.faces import FACE_RECOGNITION_FILE, SHAPE_PREDICTOR_FILE, models_dir

    fix = "pip install 'avatarbot[faces]' (face checks on reference photos are skipped without it)"
    if importlib.util.find_spec("dlib") is None:
        return [Check("faces", "warn", "dlib is not installed", fix)]
    folder = models_dir()
    if folder is None:
        return [Check("faces", "warn", "face-recognition-models is not installed", fix)]
    absent = [
        f for f in (SHAPE_PREDICTOR_FILE, FACE_RECOGNITION_FILE) if not (folder / f).is_file()
    ]
    if absent:
        return [Check("faces", "warn", f"missing {', '.join(absent)} in {folder}", fix)]
    return [Check("faces", "ok", f"dlib and face models ({folder})")]


def check_safety(settings: Settings) -> list[Check]:
    fix = "pip install --force-reinstall nudenet onnxruntime (the output check needs both)"
    spec = importlib.util.find_spec("nudenet")
    if spec is None or not spec.submodule_search_locations:
        return [Check("safety", "fail", "nudenet is not installed", fix)]
    if importlib.util.find_spec("onnxruntime") is None:
        return [Check("safety", "fail", "onnxruntime is not installed", fix)]
    models = [
        p
        for loc in spec.submodule_search_locations
        for p in Path(loc).glob("*.onnx")
        if p.is_file()
    ]
    if not models:
        return [Check("safety", "fail", "nudenet's model file (*.onnx) is missing", fix)]
    return [Check("safety", "ok", f"nudenet with {models[0].name}")]


def check_screen(settings: Settings) -> list[Check]:
    """The semantic prompt screen's thresholds for the profile (docs/semantic-screen.md)."""
    from bot.services.ports import TextScreenFacts
    from bot.services.semantic_screen import resolve_thresholds
    from engine.profiles import resolve_profile

    profile = resolve_profile(settings.engine)
    facts = TextScreenFacts(profile.name, profile.screen_thresholds, profile.is_noise)
    thresholds = resolve_thresholds(facts, settings.safety.semantic)
    measure = "measure them on your weights: avatarbot safety screen-check"
    if thresholds is None:
        if profile.is_noise:
            return [Check("screen", "ok", "random weights: the semantic screen decides nothing")]
        fix = f"set AVATARBOT_SAFETY__SEMANTIC__SEXUAL, __MINORS and __ALWAYS ({measure})"
        return [Check("screen", "fail", "no semantic screen thresholds: every render fails", fix)]
    shown = ", ".join(f"{k} {v:+.3f}" for k, v in thresholds.items())
    if all(getattr(settings.safety.semantic, c) is not None for c in thresholds):
        return [Check("screen", "ok", f"semantic screen thresholds {shown} (settings)")]
    return [Check("screen", "warn", f"semantic screen thresholds {shown} (defaults)", measure)]


# --- database, data key, token -------------------------------------------------------------


def check_database(settings: Settings) -> list[Check]:
    from sqlalchemy.engine import make_url

    from bot.cli.db_cmd import db_migrate
    from bot.config import _mask_url_password

    url = settings.effective_database_url
    shown = _mask_url_password(url)
    fix_url = "set AVATARBOT_DATABASE_URL to sqlite+aiosqlite:///PATH or postgresql+asyncpg://…"
    try:
        parsed = make_url(url)
    except Exception:
        return [Check("database", "fail", f"{shown} is not a database URL", fix_url)]
    if parsed.drivername not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
        return [Check("database", "fail", f"driver {parsed.drivername} is not supported", fix_url)]
    if parsed.drivername.startswith("sqlite"):
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            path = Path(database).expanduser()
            if not path.exists():
                # Not created here: the doctor changes nothing. Every command creates and
                # migrates it at start.
                return [
                    Check(
                        "database",
                        "ok",
                        f"{shown}: not created yet (created and migrated at first start, "
                        "or by `avatarbot db upgrade`)",
                    )
                ]
    try:
        revision = asyncio.run(
            asyncio.wait_for(db_migrate(url, "current", None), DB_TIMEOUT_SECONDS)
        )
    except Exception as exc:
        from bot.errors import AvatarbotError

        if isinstance(exc, AvatarbotError):  # already names the URL (password masked)
            detail = exc.message
        else:
            reason = "timed out" if isinstance(exc, TimeoutError) else _one_line(exc)
            detail = f"{shown} is unreachable: {reason}"
        return [
            Check(
                "database",
                "fail",
                detail,
                "start the database server, check host, port and credentials in "
                "AVATARBOT_DATABASE_URL",
            )
        ]
    from db.migrate import head_revision

    head = head_revision()
    if revision == head:
        return [Check("database", "ok", f"{shown} at {head} (head)")]
    if revision is None:
        detail = f"{shown} is reachable but empty (not migrated)"
    else:
        from alembic.script import ScriptDirectory

        from db.migrate import alembic_config

        known = ScriptDirectory.from_config(alembic_config()).get_revision(revision)
        if known is None:
            return [
                Check(
                    "database",
                    "fail",
                    f"{shown} is at {revision}, which this version does not know",
                    "install the avatarbot version that migrated it (or newer)",
                )
            ]
        detail = f"{shown} at {revision}, behind {head}"
    return [
        Check(
            "database",
            "warn",
            detail + " (the bot and workers migrate at start)",
            "avatarbot db upgrade",
        )
    ]


def check_data_key(settings: Settings) -> list[Check]:
    from bot.services.crypto import DataCipher, KeyConfigError
    from engine.profiles import resolve_profile

    key = settings.data_key.get_secret_value() if settings.data_key else None
    old = settings.old_data_keys.get_secret_value() if settings.old_data_keys else None
    try:
        cipher = DataCipher.from_settings(key, old, strict=settings.encryption_strict)
    except KeyConfigError as exc:
        return [
            Check(
                "data key",
                "fail",
                str(exc),
                "set AVATARBOT_DATA_KEY to 32 random bytes, urlsafe base64: python -c "
                '"import os,base64;print(base64.urlsafe_b64encode(os.urandom(32)).decode())"',
            )
        ]
    if cipher.enabled:
        return [Check("data key", "ok", "set and valid (photos and features encrypted at rest)")]
    if resolve_profile(settings.engine).is_noise:
        return [Check("data key", "ok", "not set (fine for a random-weights profile)")]
    return [
        Check(
            "data key",
            "warn",
            "not set: members' photos and face features are stored unencrypted",
            "set AVATARBOT_DATA_KEY (32 random bytes, urlsafe base64; keep a copy)",
        )
    ]


TOKEN_FIX = "set AVATARBOT_DISCORD_TOKEN to the bot token from the Discord developer portal"


def check_token(settings: Settings) -> list[Check]:
    if settings.discord_token is None:
        return [
            Check("token", "warn", "not set (needed by `avatarbot run`, not by workers)", TOKEN_FIX)
        ]
    problem = token_problem(settings.discord_token.get_secret_value())
    if problem:
        return [Check("token", "fail", f"does not look like a bot token: {problem}", TOKEN_FIX)]
    return [Check("token", "ok", "set, shaped like a bot token")]


def check_token_needed(settings: Settings) -> list[Check]:
    """``--role bot``: the bot cannot start without its token."""
    if settings.discord_token is None:
        return [Check("token", "fail", "not set: `avatarbot run` needs it", TOKEN_FIX)]
    return check_token(settings)


def check_no_token(settings: Settings) -> list[Check]:
    """``--role worker``: a worker refuses to start holding the bot's token (worker_cmd)."""
    if settings.discord_token is None:
        return [Check("token", "ok", "not set (a worker needs none)")]
    return [
        Check(
            "token",
            "fail",
            "set, but `avatarbot worker` refuses to start with the bot's token",
            "remove AVATARBOT_DISCORD_TOKEN from the worker's environment "
            "(deploy/worker.env.example)",
        )
    ]


def token_problem(token: str) -> str | None:
    """Why ``token`` is not shaped like a Discord bot token (never quoting it), or None."""
    token = token.strip()
    if token.lower().startswith("bot "):
        return "it starts with 'Bot ' (give the token alone)"
    parts = token.split(".")
    if len(parts) != 3:
        return f"{len(parts)} dot-separated parts, expected 3"
    alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    if any(not part or not set(part) <= alphabet for part in parts):
        return "a part is empty or not urlsafe base64"
    try:
        user_id = base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return "its first part does not decode"
    if not user_id.isdigit():
        return "its first part is not a base64 user id"
    return None
