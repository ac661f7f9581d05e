from pathlib import Path
from typing import get_origin

import pytest
from pydantic import AliasChoices, Field
from pydantic_settings import SettingsError as PydanticSettingsError

from bot.settings import (
    Settings,
    SettingsError,
    env_name,
    load_settings,
    source_error_line,
    toml_key,
)
from tests.conftest import CliRunner


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for key in list(os.environ):
        if key.startswith(("BRANDBOT_", "SLACK_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("BRANDBOT_CONFIG", str(tmp_path / "brandbot.toml"))


def test_defaults_use_sqlite_in_the_data_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BRANDBOT_DATA_DIR", str(tmp_path / "d"))
    s = load_settings()
    assert s.resolved_database_url == f"sqlite:///{tmp_path / 'd' / 'brandbot.db'}"
    assert s.inference_url is None
    assert s.slack_bot_token is None
    assert s.adapters_dir == tmp_path / "d" / "adapters"


def test_environment_names_of_design_md(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "BRANDBOT_DATA_DIR": "/srv/bb",
        "BRANDBOT_DATABASE_URL": "postgresql://bot:pw@db/brandbot",
        "BRANDBOT_BASE_MODEL": "/models/llama",
        "BRANDBOT_SERVED_MODEL_NAME": "llama-8b",
        "BRANDBOT_INFERENCE_URL": "http://vllm:8000",
        "BRANDBOT_INFERENCE_API_KEY": "k-123",
        "BRANDBOT_SERVER_ADAPTERS_DIR": "/adapters",
        "SLACK_BOT_TOKEN": "xoxb-1-2",
        "SLACK_APP_TOKEN": "xapp-1-2",
        "SLACK_SIGNING_SECRET": "shh",
        "SLACK_API_URL": "http://127.0.0.1:9999/api/",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = load_settings()
    assert str(s.data_dir) == "/srv/bb"
    assert s.resolved_database_url == "postgresql+psycopg://bot:pw@db/brandbot"
    assert s.base_model == "/models/llama"
    assert s.served_model_name == "llama-8b"
    assert s.inference_url == "http://vllm:8000"
    assert s.inference_api_key is not None
    assert s.inference_api_key.get_secret_value() == "k-123"
    assert s.server_adapters_dir == "/adapters"
    assert s.slack_bot_token is not None
    assert s.slack_bot_token.get_secret_value() == "xoxb-1-2"
    assert s.slack_signing_secret is not None
    assert s.slack_api_url == "http://127.0.0.1:9999/api/"
    text = repr(s) + str(s.model_dump())
    for secret in ("xoxb-1-2", "xapp-1-2", "shh", "k-123"):
        assert secret not in text


def test_toml_file_and_environment_precedence(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "brandbot.toml").write_text(
        'data_dir = "/from/toml"\nserved_model_name = "toml-model"\n'
    )
    monkeypatch.setenv("BRANDBOT_SERVED_MODEL_NAME", "env-model")
    s = load_settings()
    assert str(s.data_dir) == "/from/toml"
    assert s.served_model_name == "env-model"


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("BRANDBOT_DATABASE_URL", "mysql://x/y", "sqlite"),
        ("BRANDBOT_INFERENCE_URL", "vllm:8000", "http"),
        ("SLACK_BOT_TOKEN", "xoxp-user", "xoxb"),
        ("SLACK_APP_TOKEN", "nope", "xapp"),
    ],
)
def test_invalid_setting_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, needle: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert "\n" not in message
    assert name in message
    assert needle in message


def test_invalid_setting_stops_the_cli_with_one_line(cli_sqlite: CliRunner) -> None:
    result = cli_sqlite("db", "upgrade", extra_env={"BRANDBOT_DATABASE_URL": "mysql://x/y"})
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1
    assert "BRANDBOT_DATABASE_URL" in lines[0]


@pytest.mark.parametrize("content", [b"data_dir = \n", b"\xff\xfe data_dir"])
def test_malformed_toml_is_one_line(cli_sqlite: CliRunner, tmp_path: Path, content: bytes) -> None:
    (tmp_path / "brandbot.toml").write_bytes(content)
    result = cli_sqlite("datasets", "list")
    assert result.code == 2
    assert len(result.err.strip().splitlines()) == 1
    assert "brandbot.toml" in result.err


def _list_settings() -> list[tuple[str, str]]:
    """(environment or toml name, toml key) of every list setting of the model."""
    found = []
    for field in Settings.model_fields.values():
        if get_origin(field.annotation) is list:
            found.append((env_name(field) or toml_key(field), toml_key(field)))
    return found


def test_there_are_list_settings_to_check() -> None:
    assert ("BRANDBOT_ADMINS", "admins") in _list_settings()


@pytest.mark.parametrize(("env", "key"), _list_settings())
@pytest.mark.parametrize(
    "written", ["U0ADMIN, U0OTHER", "U0ADMIN,U0OTHER,", '["U0ADMIN", "U0OTHER"]']
)
def test_every_list_setting_takes_commas_or_json_in_the_environment(
    monkeypatch: pytest.MonkeyPatch, env: str, key: str, written: str
) -> None:
    monkeypatch.setenv(env, written)
    assert getattr(load_settings(), key) == ["U0ADMIN", "U0OTHER"]


@pytest.mark.parametrize(("env", "key"), _list_settings())
@pytest.mark.parametrize("written", ['"U0ADMIN, U0OTHER"', '["U0ADMIN", "U0OTHER"]'])
def test_every_list_setting_takes_commas_or_an_array_in_the_toml_file(
    tmp_path: Path, env: str, key: str, written: str
) -> None:
    (tmp_path / "brandbot.toml").write_text(f"{key} = {written}\n")
    assert getattr(load_settings(), key) == ["U0ADMIN", "U0OTHER"]


def test_one_admin_without_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRANDBOT_ADMINS", "U0ADMIN")
    assert load_settings().admins == ["U0ADMIN"]


def test_a_bad_value_in_the_toml_file_names_its_key_and_the_file(tmp_path: Path) -> None:
    (tmp_path / "brandbot.toml").write_text('max_lora_rank = "big"\n')
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith(f"invalid setting max_lora_rank in {tmp_path / 'brandbot.toml'}:")
    assert "integer" in message and "example: 32" in message


def test_pydantic_settings_own_error_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A complex field pydantic-settings decodes as JSON itself (as a future setting may be)."""

    class WithTable(Settings):
        limits: dict[str, int] = Field(
            default_factory=dict,
            validation_alias=AliasChoices("BRANDBOT_LIMITS", "limits"),
            examples=[{"per_minute": 60}],
        )

    monkeypatch.setenv("BRANDBOT_LIMITS", "{per_minute")
    with pytest.raises(PydanticSettingsError) as info:
        WithTable()
    line = source_error_line(info.value, WithTable)
    assert line.startswith("invalid setting BRANDBOT_LIMITS: expected JSON")
    assert "{ per_minute = 60 }" in line and "\n" not in line


def test_comma_separated_admins_work_for_every_command(cli_sqlite: CliRunner) -> None:
    result = cli_sqlite("datasets", "list", extra_env={"BRANDBOT_ADMINS": "U0ADMIN,U0OTHER"})
    assert result.code == 0, result.err
    assert result.err == ""


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (("datasets", "list"), {"BRANDBOT_ADMINS": "[broken"}, "BRANDBOT_ADMINS"),
        (("report", "-d", "x"), {"BRANDBOT_ADMINS": "[broken"}, "BRANDBOT_ADMINS"),
        (("run", "--setup-only"), {"BRANDBOT_MAX_LORA_RANK": "big"}, "BRANDBOT_MAX_LORA_RANK"),
        (("db", "current"), {"SLACK_API_URL": "slack.com"}, "SLACK_API_URL"),
        (("demo", "--smoke", "--data-dir", "d"), {"BRANDBOT_ADMINS": "[x"}, "BRANDBOT_ADMINS"),
    ],
)
def test_a_configuration_error_is_one_line_exit_2(
    cli_sqlite: CliRunner, args: tuple[str, ...], env: dict[str, str], needle: str
) -> None:
    result = cli_sqlite(*args, extra_env=env)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith(f"error: invalid setting {needle}: ")
    assert "example: " in lines[0]
    assert "Traceback" not in result.err and result.out == ""


def test_a_bad_toml_value_stops_the_cli_naming_the_key(
    cli_sqlite: CliRunner, tmp_path: Path
) -> None:
    (tmp_path / "brandbot.toml").write_text("admins = 7\n")
    result = cli_sqlite("datasets", "list")
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: invalid setting admins in ")


def test_unprefixed_variables_of_other_programs_are_not_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only the documented names count: a container's own DATA_DIR or ADMINS is not ours."""
    monkeypatch.setenv("DATA_DIR", "/elsewhere")
    monkeypatch.setenv("ADMINS", "U0STRANGER")
    monkeypatch.setenv("PLUGINS", "{not json")
    settings = load_settings()
    assert settings.data_dir == Path("data")
    assert settings.admins == []
    assert settings.plugins == {}
