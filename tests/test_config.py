"""Settings: sources and their order, secrets only from the environment, masking, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.cli import main
from bot.config import Settings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("AVATARBOT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


def test_defaults_put_a_sqlite_file_in_the_data_dir(tmp_path: Path) -> None:
    settings = Settings.load()
    assert settings.data_dir == tmp_path / "xdg" / "avatarbot"
    assert settings.effective_database_url == (
        f"sqlite+aiosqlite:///{tmp_path / 'xdg' / 'avatarbot' / 'avatarbot.db'}"
    )
    # A real profile by default: random weights (tiny, ...) are always named explicitly.
    assert settings.engine.profile == "sd15-ip-adapter-plus-face"
    assert settings.discord_token is None and settings.data_key is None


def test_environment_beats_toml_and_nests_with_double_underscore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "avatarbot.toml"
    toml.write_text(
        'log_level = "DEBUG"\n'
        'prompt_blocklist = ["badword"]\n'
        "[engine]\n"
        'profile = "sd15-shaped"\n'
        "max_batch = 2\n"
        "[quotas]\n"
        "renders_per_day = 5\n"
    )
    monkeypatch.setenv("AVATARBOT_ENGINE__PROFILE", "tiny")
    monkeypatch.setenv("AVATARBOT_QUOTAS__AVATARS_PER_MEMBER", "7")
    settings = Settings.load(toml)
    assert settings.engine.profile == "tiny"  # environment wins
    assert settings.engine.max_batch == 2  # the file fills what the environment leaves
    assert settings.quotas.renders_per_day == 5
    assert settings.quotas.avatars_per_member == 7
    assert settings.log_level == "DEBUG"
    assert settings.prompt_blocklist == ["badword"]
    # Overrides (the CLI's flags) beat both.
    assert Settings.load(toml, log_level="ERROR").log_level == "ERROR"


def test_config_file_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("output_retention_hours = 5\n")
    monkeypatch.setenv("AVATARBOT_CONFIG_FILE", str(toml))
    assert Settings.load().output_retention_hours == 5


@pytest.mark.parametrize("secret", ["discord_token", "data_key"])
def test_a_config_file_naming_a_secret_is_refused(tmp_path: Path, secret: str) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text(f'{secret} = "hunter2"\n')
    with pytest.raises(ValueError, match=f"AVATARBOT_{secret.upper()}"):
        Settings.load(toml)


def test_a_named_config_file_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Settings.load(tmp_path / "missing.toml")


def test_unknown_keys_and_bad_values_are_refused(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("databse_url = 'typo'\n")
    with pytest.raises(ValidationError):
        Settings.load(toml)
    with pytest.raises(ValidationError):
        Settings.load(engine={"max_batch": 0})


def test_the_config_command_masks_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AVATARBOT_DISCORD_TOKEN", "token-value-123")
    monkeypatch.setenv("AVATARBOT_DATA_KEY", "key-value-456")
    monkeypatch.setenv("AVATARBOT_DATABASE_URL", "postgresql+asyncpg://bot:pw-789@db/avatarbot")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    shown = json.loads(out)
    assert shown["discord_token"] == "**********"
    assert shown["data_key"] == "**********"
    assert shown["old_data_keys"] is None
    for secret in ("token-value-123", "key-value-456", "pw-789"):
        assert secret not in out
    assert shown["database_url"].startswith("postgresql+asyncpg://bot:***@db/")


def test_empty_environment_values_read_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # The example env files' blank lines (``AVATARBOT_DISCORD_TOKEN=``), nested ones too.
    for name in ("DISCORD_TOKEN", "DATA_KEY", "DATABASE_URL", "LOG_LEVEL", "ENGINE__PROFILE"):
        monkeypatch.setenv(f"AVATARBOT_{name}", "")
    settings = Settings.load()
    assert settings.discord_token is None and settings.data_key is None
    assert settings.database_url is None and settings.log_level == "INFO"
    assert settings.engine.profile == "sd15-ip-adapter-plus-face"


def test_the_config_command_shows_unset_and_empty_secrets_as_null(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AVATARBOT_DISCORD_TOKEN", "")
    assert main(["config"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["discord_token"] is None and shown["data_key"] is None
    # An empty secret handed in directly (not from the environment) is not shown as set.
    dumped = Settings.load(discord_token="").masked_dump()
    assert dumped["discord_token"] is None


def test_the_cli_reports_invalid_settings_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('data_key = "x"\n')
    assert main(["--config", str(toml), "config"]) == 2
    assert "AVATARBOT_DATA_KEY" in capsys.readouterr().err


# -- finding 7 of the security audit (issue 12) ----------------------------------------------


def test_old_data_keys_are_refused_in_a_config_file(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('old_data_keys = "old:AAAA"\n')
    with pytest.raises(ValueError, match="AVATARBOT_OLD_DATA_KEYS"):
        Settings.load(toml)


def test_the_database_password_is_not_in_the_settings_repr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "postgresql+asyncpg://bot:pw-789@db/avatarbot"
    monkeypatch.setenv("AVATARBOT_DATABASE_URL", url)
    settings = Settings.load()
    assert "pw-789" not in repr(settings) and "pw-789" not in str(settings)
    assert settings.effective_database_url == url  # callers still get the real URL


def test_an_unparsable_database_url_is_masked_entirely() -> None:
    from bot.config import _mask_url_password

    assert _mask_url_password("not a url :: secret-pw") == "***"
    settings = Settings(database_url="::bot:pw-1@/nonsense")
    assert "pw-1" not in json.dumps(settings.masked_dump())


def test_a_malformed_data_key_is_one_line_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AVATARBOT_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("AVATARBOT_DATABASE_URL", raising=False)
    monkeypatch.setenv("AVATARBOT_DATA_KEY", "not-a-key")
    assert main(["--log-level", "ERROR", "avatar", "list", "--user", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("avatarbot: invalid data key settings:") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_the_engine_fast_path_is_set_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AVATARBOT_ENGINE__FAST__COMPILE", "off")
    monkeypatch.setenv("AVATARBOT_ENGINE__FAST__BATCH_BUCKETS", "[1, 4]")
    settings = Settings.load()
    assert settings.engine.fast.compile == "off"
    assert settings.engine.fast.batch_buckets == (1, 4)
