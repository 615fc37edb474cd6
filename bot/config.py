"""The application's settings: one pydantic-settings object, built once and passed explicitly.

Sources, highest priority first: keyword arguments, environment (``AVATARBOT_*``, nested with
``__``, e.g. ``AVATARBOT_ENGINE__PROFILE=tiny``), an optional TOML file, defaults. Secrets (the
Discord token, the data key) are read from the environment only: a TOML file that names one is
refused, so they never end up in a file that gets committed or shared.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from engine.config import EngineSettings

SECRET_FIELDS = frozenset({"discord_token", "data_key", "old_data_keys"})
CONFIG_FILE_ENV = "AVATARBOT_CONFIG_FILE"


def default_data_dir() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "avatarbot"


class PhotoLimits(BaseModel):
    """Intake limits for reference photos (see bot/services/photo_intake.py for the reasons)."""

    max_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    min_side: int = Field(default=256, ge=16)
    # The decode budget, checked on the header before any pixel is decoded. PNG, WebP, HEIC,
    # GIF and progressive JPEGs are decoded at full size (~4-5 bytes a pixel at the peak, with
    # the mode conversions): 25 MP (~125 MB) admits 24 MP phone photos (5712×4284) and
    # refuses the 64 MP single-colour PNG bomb (~324 MB). A baseline JPEG is decoded at a
    # reduced DCT scale (``Image.draft``: 1/4 of each side for 48 MP), so it may be larger:
    # 52 MP admits 48-50 MP phone JPEGs (8064×6048, 8160×6120) for ~10 MB of pixels.
    max_pixels: int = Field(default=25_000_000, ge=1)
    max_jpeg_pixels: int = Field(default=52_000_000, ge=1)
    # Memory budget of decoding: each file's peak is estimated from its header (format, bit
    # depth, palette, DCT scale: bot/services/decode_budget.py, measured by
    # bench/decode_budget.py) and refused above this; the decodes in progress in the process
    # share it (one waits until its estimate fits). 200 MB admits a 24 MP phone JPEG or HEIC
    # and a 12 MP PNG; refuses a 25 MP WebP (~385 MB) or a 24 MP 16-bit PNG.
    max_decode_bytes: int = Field(default=200 * 1024 * 1024, ge=1024 * 1024)
    # Longest side of the stored, normalised photo.
    max_stored_side: int = Field(default=1024, ge=64)
    jpeg_quality: int = Field(default=95, ge=50, le=100)


# What a best-of-k render costs (``Settings.best_of_charge``).
BestOfCharge = Literal["candidates", "posted"]
# How a result is posted (``Settings.result_layout``): "gallery", Discord's components V2 (the
# images as a media gallery in a card with their buttons), or "classic": an embed, the images
# attached and rows of buttons, for members whose clients do not show components V2.
ResultLayout = Literal["gallery", "classic"]


class QuotaDefaults(BaseModel):
    """Defaults of a guild's quotas; admins override them per guild."""

    renders_per_day: int = Field(default=25, ge=0)
    avatars_per_member: int = Field(default=3, ge=0)
    photos_per_avatar: int = Field(default=10, ge=1, le=10)
    queued_per_member: int = Field(default=3, ge=1)
    queued_per_guild: int = Field(default=50, ge=1)
    images_per_render: int = Field(default=4, ge=1, le=4)
    max_steps: int = Field(default=40, ge=1, le=150)
    max_side: int = Field(default=768, ge=64, le=2048)
    # Abuse limits per member: renders (rerolls and variations included) per minute, avatar
    # creations per hour. Each refusal says when to try again.
    renders_per_minute: int = Field(default=4, ge=1, le=1000)
    creates_per_hour: int = Field(default=5, ge=1, le=1000)
    # Renders per member per day that the safety checks withheld entirely (output check) or
    # refused on the worker (semantic prompt screen): past it, new renders are refused until
    # the day ends (bot/services/withheld.py). Withheld renders cost GPU time too.
    withheld_per_day: int = Field(default=3, ge=1, le=100)
    # Best of k: a render of a person (or of a pet or object where the workers measure image
    # similarity) renders this many candidates in one batch and posts the ones most like the
    # avatar (engine/likeness.py). 1: no choice. A member may ask for more, up to the ceiling.
    best_of: int = Field(default=1, ge=1, le=4)


# Outside servers: a few renders a day per member; the rest as in a server by default.
PERSONAL_QUOTAS = QuotaDefaults(renders_per_day=5)


class QuotaCeilings(BaseModel):
    """The operator's ceilings above every guild's quotas: ``/avatar-admin quota set`` refuses
    a value above its ceiling, and an override stored before a ceiling was lowered is read as
    the ceiling. The operator's own default (``Settings.quotas``) is always allowed, even
    above its ceiling. ``queued_per_guild`` and the rate limits bound what one guild can make
    the workers do; ``renders_per_day`` bounds GPU time per member and day."""

    renders_per_day: int = Field(default=200, ge=0)
    avatars_per_member: int = Field(default=25, ge=0)
    photos_per_avatar: int = Field(default=10, ge=1, le=10)
    queued_per_member: int = Field(default=10, ge=1)
    queued_per_guild: int = Field(default=200, ge=1)
    images_per_render: int = Field(default=4, ge=1, le=4)
    max_steps: int = Field(default=60, ge=1, le=150)
    max_side: int = Field(default=1024, ge=64, le=2048)
    renders_per_minute: int = Field(default=10, ge=1, le=1000)
    creates_per_hour: int = Field(default=10, ge=1, le=1000)
    withheld_per_day: int = Field(default=10, ge=1, le=100)
    best_of: int = Field(default=4, ge=1, le=4)


class SemanticScreenSettings(BaseModel):
    """The semantic prompt screen's thresholds (bot/services/semantic_screen.py), per policy
    category: a margin of similarity to the category's concepts over the neutral ones, in
    [-2, 2]. Unset: the engine profile's (docs/semantic-screen.md; measure yours with
    `avatarbot safety screen-check`). Lower refuses more."""

    sexual: float | None = Field(default=None, ge=-2.0, le=2.0)
    minors: float | None = Field(default=None, ge=-2.0, le=2.0)
    always: float | None = Field(default=None, ge=-2.0, le=2.0)


class SafetySettings(BaseModel):
    """The output check run on every rendered image before it is stored (engine/safety.py)."""

    # The semantic prompt screen on the worker (AVATARBOT_SAFETY__SEMANTIC__SEXUAL=0.05, ...).
    semantic: SemanticScreenSettings = Field(default_factory=SemanticScreenSettings)
    # An image is flagged when the detector's score for any of ``classes`` reaches this.
    threshold: float = Field(default=0.45, ge=0.0, le=1.0)
    # nudenet's labels that flag an image (exposed sexual body parts by default).
    classes: list[str] = Field(
        default_factory=lambda: [
            "FEMALE_BREAST_EXPOSED",
            "FEMALE_GENITALIA_EXPOSED",
            "MALE_GENITALIA_EXPOSED",
            "BUTTOCKS_EXPOSED",
            "ANUS_EXPOSED",
        ]
    )
    # Repeated withheld renders: this many within the window put the member on a cool-down
    # (no new render in that guild for ``withheld_cooldown_minutes``), recorded in the guild's
    # audit log (bot/services/withheld.py).
    withheld_cooldown_after: int = Field(default=2, ge=1, le=100)
    withheld_cooldown_window_minutes: int = Field(default=60, ge=1, le=24 * 60)
    withheld_cooldown_minutes: int = Field(default=60, ge=1, le=7 * 24 * 60)


class JobSettings(BaseModel):
    """The job runtime's intervals (bot/services/dispatcher.py). Every process that runs the
    job loop (the bot, each worker) should use the same values."""

    # A running job's lease; renewed every min(lease/3, progress_seconds) by its worker.
    lease_seconds: float = Field(default=30.0, ge=1.0)
    # How often each loop looks for expired leases (a killed worker's jobs run again within
    # about lease_seconds + reap_seconds).
    reap_seconds: float = Field(default=10.0, gt=0.0)
    # A look at the queue without a wake-up. On PostgreSQL enqueues are pushed (LISTEN/NOTIFY),
    # so this only covers lost notifications.
    poll_seconds: float = Field(default=5.0, gt=0.0)
    # Progress is recorded and announced at most this often per job (Discord edits follow it).
    progress_seconds: float = Field(default=1.5, gt=0.0)
    job_timeout_seconds: float = Field(default=900.0, gt=0.0)
    # Purging finished jobs past their retention.
    maintenance_seconds: float = Field(default=600.0, gt=0.0)
    # A job whose worker died this many times is failed and refunded.
    max_attempts: int = Field(default=3, ge=1)


class OpsSettings(BaseModel):
    """The operations endpoint (``/healthz``, ``/readyz``, ``/metrics``: bot/ops/server.py)
    of ``avatarbot run`` and ``avatarbot worker``."""

    # host:port ("[::1]:9108" for IPv6); loopback by default. Port 0 picks a free port (it
    # is logged); "off" disables the endpoint. Each process on a machine needs its own port.
    listen: str = "127.0.0.1:9108"

    @field_validator("listen")
    @classmethod
    def _valid_listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @property
    def address(self) -> tuple[str, int] | None:
        """``(host, port)``, or None when disabled."""
        return parse_listen(self.listen)


def parse_listen(value: str) -> tuple[str, int] | None:
    """``"host:port"`` -> ``(host, port)``; ``"off"`` (or empty) -> None."""
    text = value.strip()
    if text.lower() in ("", "off", "none"):
        return None
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected host:port (e.g. 127.0.0.1:9108) or 'off', got {value!r}")
    return host, int(port)


class _SecretlessToml(TomlConfigSettingsSource):
    """A TOML source that refuses secrets: they belong in the environment."""

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        found = sorted(SECRET_FIELDS & data.keys())
        if found:
            raise ValueError(
                f"{', '.join(found)} must not be set in a config file; set "
                + ", ".join(f"AVATARBOT_{f.upper()}" for f in found)
                + " in the environment instead"
            )
        return data


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AVATARBOT_",
        env_nested_delimiter="__",
        # ``AVATARBOT_DISCORD_TOKEN=`` (an example env file's blank line) means unset, as
        # for a shell: a worker host must not fail on a token it does not need.
        env_ignore_empty=True,
        extra="forbid",
        validate_default=True,
    )
    # Set by ``Settings.load`` (a class attribute so the source hook can see it).
    _toml_file: ClassVar[Path | None] = None

    data_dir: Path = Field(default_factory=default_data_dir)
    # SQLAlchemy async URL. Default: sqlite+aiosqlite in data_dir. A SecretStr: it may carry
    # the database password, which must not show in ``repr(settings)`` or logs.
    database_url: SecretStr | None = None
    discord_token: SecretStr | None = None
    # 32 bytes, urlsafe-base64, for AES-GCM encryption of photos and features at rest.
    data_key: SecretStr | None = None
    # Older keys that can still decrypt, "id:base64key" comma-separated (key rotation).
    old_data_keys: SecretStr | None = None
    # Refuse plaintext and old-format blobs while a key is set (bot/services/crypto.py): turn
    # on once `avatarbot avatar reencrypt` has sealed everything.
    encryption_strict: bool = False
    discord_api_base: str = "https://discord.com/api/v10"
    discord_gateway_url: str = "wss://gateway.discord.gg/"
    shard_count: int | None = Field(default=None, ge=1)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # "json": one JSON object per log line (time, level, logger, message, exception).
    log_format: Literal["text", "json"] = "text"
    photos: PhotoLimits = Field(default_factory=PhotoLimits)
    quotas: QuotaDefaults = Field(default_factory=QuotaDefaults)
    # The quotas outside every server the bot is in: DMs with it, and servers or group DMs
    # where a member installed the app to their own account (``AVATARBOT_PERSONAL_QUOTAS__*``).
    # One scope for all of them, per member; no admin can raise it, so the defaults are lower.
    # Its ``queued_per_guild`` caps that scope's queue, all members outside servers together.
    personal_quotas: QuotaDefaults = Field(default_factory=lambda: PERSONAL_QUOTAS)
    # Upper bounds on what guild admins may set (``AVATARBOT_QUOTA_CEILINGS__*``).
    quota_ceilings: QuotaCeilings = Field(default_factory=QuotaCeilings)
    # What a best-of-k render costs: "candidates" (default) counts each `count` images rendered
    # as one render (best of 4 with 1 image costs 4 renders: the GPU time it takes), "posted"
    # one render whatever the candidates (generous: the operator pays the GPU time).
    best_of_charge: BestOfCharge = "candidates"
    # What an Upscale x2 of one image costs, in renders (a Vary costs one, like a render).
    upscale_units: int = Field(default=1, ge=1, le=100)
    # How long a request to render with another member's avatar waits for its owner's answer
    # (bot/services/friends.py); expired requests charge nothing and are deleted.
    friend_request_minutes: int = Field(default=15, ge=1, le=1440)
    result_layout: ResultLayout = "gallery"
    engine: EngineSettings = Field(default_factory=EngineSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    safety: SafetySettings = Field(default_factory=SafetySettings)
    # Finished outputs are kept this long (buttons work on them), then purged.
    output_retention_hours: int = Field(default=72, ge=1)
    # After the bot is removed from a guild, its audit log is kept this long (then erased by
    # the maintenance pass); its usage ledger of that day until the day is over.
    audit_retention_days: int = Field(default=30, ge=1, le=3650)
    # Words or /regex/ patterns (RE2 syntax) refused in prompts before any GPU work.
    prompt_blocklist: list[str] = Field(default_factory=list)

    @field_validator("prompt_blocklist")
    @classmethod
    def _blocklist_compiles(cls, entries: list[str]) -> list[str]:
        # Checked here so that a pattern RE2 refuses is one line at startup, not a traceback
        # when the services are built (imported late: settings load before anything else).
        from bot.services.blocklist_match import compile_entry

        for entry in entries:
            if entry.strip():
                compile_entry(entry)  # ValueError names the entry and RE2's reason
        return entries

    # The in-process worker (embedded mode). False when separate `avatarbot worker`s run.
    run_worker: bool = True
    # The /healthz, /readyz and /metrics endpoint (``AVATARBOT_OPS__LISTEN``).
    ops: OpsSettings = Field(default_factory=OpsSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls._toml_file is not None:
            sources.append(_SecretlessToml(settings_cls, toml_file=cls._toml_file))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: Path | str | None = None, **overrides: Any) -> Settings:
        """Build settings from the environment, an optional TOML file and overrides.

        The file comes from ``config_file`` or ``$AVATARBOT_CONFIG_FILE``; a named file that
        does not exist is an error rather than silently ignored.
        """
        path = config_file or os.environ.get(CONFIG_FILE_ENV)
        toml = Path(path) if path else None
        if toml is not None and not toml.is_file():
            raise FileNotFoundError(f"config file not found: {toml}")
        cls._toml_file = toml
        try:
            return cls(**overrides)
        finally:
            cls._toml_file = None

    @property
    def effective_database_url(self) -> str:
        url = self.database_url
        # ``model_copy(update=...)`` does not validate: a plain string may stand here.
        value = url.get_secret_value() if isinstance(url, SecretStr) else url
        if value:
            return value
        return f"sqlite+aiosqlite:///{self.data_dir / 'avatarbot.db'}"

    def masked_dump(self) -> dict[str, Any]:
        """The effective settings as plain data, secrets masked (for `avatarbot config`);
        an unset or empty secret shows as null, never as a mask that looks set."""
        data = self.model_dump(mode="json")
        for name in sorted(SECRET_FIELDS):
            secret: SecretStr | None = getattr(self, name)
            data[name] = "**********" if secret and secret.get_secret_value() else None
        data["database_url"] = _mask_url_password(self.effective_database_url)
        return data


# ``AVATARBOT_*`` variables that are not settings but are read elsewhere (the config file's
# path, the test suite's switches). Features that read their own variable add it here.
EXTRA_ENV_NAMES = {CONFIG_FILE_ENV, "AVATARBOT_REQUIRE_POSTGRES"}
EXTRA_ENV_PREFIXES = ("AVATARBOT_TEST_",)


def valid_env_names(model: type[BaseModel] | None = None, prefix: str = "AVATARBOT_") -> set[str]:
    """Every environment variable the settings read: each field, and each field of a nested
    settings model joined with ``__`` (``AVATARBOT_ENGINE__PROFILE``)."""
    names: set[str] = set()
    for name, info in (model or Settings).model_fields.items():
        env = f"{prefix}{name.upper()}"
        names.add(env)
        for annotation in (info.annotation, *get_args(info.annotation)):
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                names |= valid_env_names(annotation, f"{env}__")
    return names


def unknown_env_vars(environ: Mapping[str, str] | None = None) -> list[str]:
    """One message for each ``AVATARBOT_*`` variable that no setting reads (pydantic-settings
    ignores them silently), with the closest valid name when one is close."""
    import difflib

    env = os.environ if environ is None else environ
    valid = valid_env_names() | EXTRA_ENV_NAMES
    messages = []
    for key in sorted(env):
        name = key.upper()
        if not name.startswith("AVATARBOT_") or name in valid:
            continue
        if name.startswith(EXTRA_ENV_PREFIXES):
            continue
        # Compared without the common prefix, which would make every name look close.
        stems = {v.removeprefix("AVATARBOT_"): v for v in valid}
        close = difflib.get_close_matches(name.removeprefix("AVATARBOT_"), stems, 1, 0.6)
        hint = f" (did you mean {stems[close[0]]}?)" if close else ""
        messages.append(f"unknown setting {key}{hint}")
    return messages


def _mask_url_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        # Never the raw string: an unparsable URL may still hold a password.
        return "***"
