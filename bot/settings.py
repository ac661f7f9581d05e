"""Deployment settings, read from the environment and an optional ``brandbot.toml``.

The environment names are fixed by DESIGN.md (``BRANDBOT_*`` and ``SLACK_*``). ``brandbot.toml``
holds deployment settings only (datasets live in the database); its keys are the lower-case
field names, e.g. ``data_dir = "/var/lib/brandbot"``. The environment wins over the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_FILE_ENV = "BRANDBOT_CONFIG"
DEFAULT_CONFIG_FILE = "brandbot.toml"
DEFAULT_SERVED_MODEL_NAME = "brandbot-base"


def _env(name: str) -> Any:
    """Let a field be set by its DESIGN.md environment name or by its toml key."""
    return Field(validation_alias=AliasChoices(name, name.lower().removeprefix("brandbot_")))


class SettingsError(Exception):
    """An invalid setting; the message is one line that names it."""


class Settings(BaseSettings):
    """Everything a deployment configures. Secrets are ``SecretStr`` so they never print."""

    model_config = SettingsConfigDict(
        extra="ignore",
        populate_by_name=True,
        case_sensitive=False,
        env_ignore_empty=True,
    )

    data_dir: Path = Field(
        default=Path("data"),
        validation_alias=AliasChoices("BRANDBOT_DATA_DIR", "data_dir"),
        description="Where the SQLite database, converted models, adapters and runs live.",
    )
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("BRANDBOT_DATABASE_URL", "database_url"),
        description="SQLAlchemy URL; empty means SQLite at <data_dir>/brandbot.db.",
    )
    base_model: str | None = Field(
        default=None,
        validation_alias=AliasChoices("BRANDBOT_BASE_MODEL", "base_model"),
        description="A model folder or a local model id; empty means the bundled SmolLM2.",
    )
    served_model_name: str = Field(
        default=DEFAULT_SERVED_MODEL_NAME,
        validation_alias=AliasChoices("BRANDBOT_SERVED_MODEL_NAME", "served_model_name"),
        description="The base model's name on the inference server.",
    )
    inference_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("BRANDBOT_INFERENCE_URL", "inference_url"),
        description="OpenAI-compatible server (vLLM or `brandbot serve`); empty = in process.",
    )
    inference_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("BRANDBOT_INFERENCE_API_KEY", "inference_api_key"),
    )
    server_adapters_dir: str | None = Field(
        default=None,
        validation_alias=AliasChoices("BRANDBOT_SERVER_ADAPTERS_DIR", "server_adapters_dir"),
        description="Where the inference server sees data/adapters on a shared volume.",
    )
    slack_bot_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("SLACK_BOT_TOKEN", "slack_bot_token")
    )
    slack_app_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("SLACK_APP_TOKEN", "slack_app_token")
    )
    slack_signing_secret: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("SLACK_SIGNING_SECRET", "slack_signing_secret"),
    )
    slack_api_url: str = Field(
        default="https://slack.com/api/",
        validation_alias=AliasChoices("SLACK_API_URL", "slack_api_url"),
    )

    admins: list[str] = Field(
        default_factory=list,
        validation_alias=AliasChoices("BRANDBOT_ADMINS", "admins"),
        description="Slack user ids allowed to run admin commands (a JSON list in the env).",
    )
    max_lora_rank: int = Field(
        default=16,
        validation_alias=AliasChoices("BRANDBOT_MAX_LORA_RANK", "max_lora_rank"),
        description="The inference server's --max-lora-rank; adapters above it are refused.",
    )
    training: dict[str, Any] = Field(
        default_factory=dict,
        validation_alias=AliasChoices("training"),
        description="brandbot.toml [training] overrides of the trainer's defaults; "
        "[training.draft] / [training.classify] apply to one task.",
    )
    plugins: dict[str, Any] = Field(
        default_factory=dict,
        validation_alias=AliasChoices("plugins"),
        description="brandbot.toml [plugins]: enabled/disabled lists and one section per plugin.",
    )

    # -- the edge (in-memory per process; docs/configuration.md) ---------------------------
    slack_team_ids: list[str] = Field(
        default_factory=list,
        validation_alias=AliasChoices("BRANDBOT_SLACK_TEAM_IDS", "slack_team_ids"),
        description="Workspaces served (a JSON list); empty means the bot token's own.",
    )
    rate_limit_per_minute: int = Field(
        default=10, ge=0,
        validation_alias=AliasChoices("BRANDBOT_RATE_LIMIT_PER_MINUTE", "rate_limit_per_minute"),
        description="Generations one user may start per minute in each of drafting, "
        "regenerating and classifying; 0 turns the limit off.",
    )  # fmt: skip
    job_queue_limit: int = Field(
        default=100, ge=1,
        validation_alias=AliasChoices("BRANDBOT_JOB_QUEUE_LIMIT", "job_queue_limit"),
        description="Jobs waiting or running at once; past it requests are answered 'busy'.",
    )  # fmt: skip

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme = value.split(":", 1)[0].split("+", 1)[0]
        if scheme not in {"sqlite", "postgresql", "postgres"}:
            raise ValueError("must be a sqlite:/// or postgresql:// URL")
        if scheme == "postgres":
            value = "postgresql" + value[len("postgres") :]
        if value.startswith("postgresql://"):
            value = "postgresql+psycopg://" + value[len("postgresql://") :]
        return value

    @field_validator("inference_url", "slack_api_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("slack_bot_token")
    @classmethod
    def _bot_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("xoxb-"):
            raise ValueError("must be a bot token starting with xoxb-")
        return value

    @field_validator("slack_app_token")
    @classmethod
    def _app_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("xapp-"):
            raise ValueError("must be an app-level token starting with xapp-")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = Path(os.environ.get(CONFIG_FILE_ENV, DEFAULT_CONFIG_FILE))
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=config_file),
        )

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to the SQLite file in the data folder."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'brandbot.db').resolve()}"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def adapters_dir(self) -> Path:
        return self.data_dir / "adapters"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"


_ENV_NAMES = {
    "data_dir": "BRANDBOT_DATA_DIR",
    "database_url": "BRANDBOT_DATABASE_URL",
    "base_model": "BRANDBOT_BASE_MODEL",
    "served_model_name": "BRANDBOT_SERVED_MODEL_NAME",
    "inference_url": "BRANDBOT_INFERENCE_URL",
    "inference_api_key": "BRANDBOT_INFERENCE_API_KEY",
    "server_adapters_dir": "BRANDBOT_SERVER_ADAPTERS_DIR",
    "slack_bot_token": "SLACK_BOT_TOKEN",
    "slack_app_token": "SLACK_APP_TOKEN",
    "slack_signing_secret": "SLACK_SIGNING_SECRET",
    "slack_api_url": "SLACK_API_URL",
    "admins": "BRANDBOT_ADMINS",
    "slack_team_ids": "BRANDBOT_SLACK_TEAM_IDS",
    "rate_limit_per_minute": "BRANDBOT_RATE_LIMIT_PER_MINUTE",
    "job_queue_limit": "BRANDBOT_JOB_QUEUE_LIMIT",
    "plugins": "[plugins] in brandbot.toml",
}


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning a validation error into one line that names the setting."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = str(first["loc"][0]) if first["loc"] else "settings"
        name = _ENV_NAMES.get(loc.lower().removeprefix("brandbot_"), loc)
        if loc.upper() in _ENV_NAMES.values():
            name = loc.upper()
        msg = first["msg"].removeprefix("Value error, ")
        raise SettingsError(f"invalid setting {name}: {msg}") from None
    except Exception as exc:  # a malformed brandbot.toml
        if type(exc).__name__ == "TOMLDecodeError":
            path = os.environ.get(CONFIG_FILE_ENV, DEFAULT_CONFIG_FILE)
            raise SettingsError(f"invalid settings file {path}: {exc}") from None
        raise
