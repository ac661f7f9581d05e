"""Deployment settings, read from the environment and an optional ``brandbot.toml``.

The environment names are part of the interface (``BRANDBOT_*`` and ``SLACK_*``). ``brandbot.toml``
holds deployment settings only (datasets live in the database); its keys are the lower-case
field names, e.g. ``data_dir = "/var/lib/brandbot"``. The environment wins over the file.
A list setting takes values separated by commas (``BRANDBOT_ADMINS=U0ADMIN,U0OTHER``) or JSON.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AliasChoices,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings import SettingsError as SourceError

CONFIG_FILE_ENV = "BRANDBOT_CONFIG"
DEFAULT_CONFIG_FILE = "brandbot.toml"
DEFAULT_SERVED_MODEL_NAME = "brandbot-base"


def split_list(value: Any) -> Any:
    """A list setting written as text: a JSON list, or values separated by commas (``a, b``).

    Environment variables are always text, and brandbot.toml may hold ``"a,b"`` too; anything
    not text (a toml array) passes through for pydantic to check.
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(
                "expected values separated by commas or a JSON list, "
                f"and this starts with [ but is not JSON: {exc.msg}"
            ) from None
    return [part.strip() for part in text.split(",") if part.strip()]


def _env(name: str) -> Any:
    """Let a field be set by its environment name or by its toml key."""
    return Field(validation_alias=AliasChoices(name, name.lower().removeprefix("brandbot_")))


#: A list of text settings: ``NoDecode`` stops pydantic-settings from requiring JSON in the
#: environment, so ``split_list`` sees the raw value.
CommaList = Annotated[list[str], NoDecode, BeforeValidator(split_list)]


class SettingsError(Exception):
    """An invalid setting; the message is one line that names it."""


class Settings(BaseSettings):
    """Everything a deployment configures. Secrets are ``SecretStr`` so they never print.

    Every field has a description and an example: docs/configuration.md is generated from them
    (``python -m bot.settings_docs``). A field's first alias is its environment name (upper
    case) or, for a brandbot.toml-only setting, its toml key.
    """

    model_config = SettingsConfigDict(
        extra="ignore",
        populate_by_name=True,
        case_sensitive=True,  # only the documented names: not DATA_DIR, ADMINS, PLUGINS...
        env_ignore_empty=True,
    )

    data_dir: Path = Field(
        default=Path("data"),
        validation_alias=AliasChoices("BRANDBOT_DATA_DIR", "data_dir"),
        description="Where the SQLite database, converted models, adapters and runs live.",
        examples=["/var/lib/brandbot"],
    )
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("BRANDBOT_DATABASE_URL", "database_url"),
        description="SQLAlchemy URL, `sqlite:///...` or `postgresql://...`; "
        "unset: SQLite at `<data_dir>/brandbot.db`.",
        examples=["postgresql://brandbot:pw@db/brandbot"],
    )
    base_model: str | None = Field(
        default=None,
        validation_alias=AliasChoices("BRANDBOT_BASE_MODEL", "base_model"),
        description="A model folder or a local model id; unset: the bundled SmolLM2-135M-Instruct.",
        examples=["/models/llama-3.1-8b-instruct"],
    )
    served_model_name: str = Field(
        default=DEFAULT_SERVED_MODEL_NAME,
        validation_alias=AliasChoices("BRANDBOT_SERVED_MODEL_NAME", "served_model_name"),
        description="The base model's name on the inference server.",
        examples=["llama-3.1-8b-instruct"],
    )
    inference_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("BRANDBOT_INFERENCE_URL", "inference_url"),
        description="An OpenAI-compatible server (vLLM or `brandbot serve`); "
        "unset: the model runs in process.",
        examples=["http://vllm.internal:8000"],
    )
    inference_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("BRANDBOT_INFERENCE_API_KEY", "inference_api_key"),
        description="The inference server's API key (secret).",
        examples=["sk-local-123"],
    )
    server_adapters_dir: str | None = Field(
        default=None,
        validation_alias=AliasChoices("BRANDBOT_SERVER_ADAPTERS_DIR", "server_adapters_dir"),
        description="Where the inference server sees `<data_dir>/adapters` on a shared volume.",
        examples=["/data/adapters"],
    )
    adapter_check_seconds: float = Field(
        default=20.0,
        gt=0,
        validation_alias=AliasChoices("BRANDBOT_ADAPTER_CHECK_SECONDS", "adapter_check_seconds"),
        description="How often (seconds) each bot replica makes the model server's adapters "
        "match the registry: it loads the active ones (again after a server restart) and "
        "unloads rejected and rolled-back ones.",
        examples=[20],
    )
    spool_max_events: int = Field(
        default=20_000,
        ge=0,
        validation_alias=AliasChoices("BRANDBOT_SPOOL_MAX_EVENTS", "spool_max_events"),
        description="How many chat events a bot process keeps on disk (in the data folder's "
        "`spool/events`) while the database is unreachable, to replay them when it is back; "
        "0 turns the spool off. Beyond it, events are refused and Slack retries them.",
        examples=[20000],
    )
    spool_replay_seconds: float = Field(
        default=5.0,
        gt=0,
        validation_alias=AliasChoices("BRANDBOT_SPOOL_REPLAY_SECONDS", "spool_replay_seconds"),
        description="How often (seconds) a bot process tries to replay the chat events it kept "
        "while the database was unreachable.",
        examples=[5],
    )
    retention_days: float = Field(
        default=14.0,
        ge=0,
        validation_alias=AliasChoices("BRANDBOT_RETENTION_DAYS", "retention_days"),
        description="Days to keep the checkpoints of finished training runs and the files of "
        "rejected and superseded adapters; then `brandbot gc` (and the scheduler, hourly) "
        "deletes them. The active adapter and its rollback target are always kept.",
        examples=[14],
    )
    vllm_python: str | None = Field(
        default=None,
        validation_alias=AliasChoices("BRANDBOT_VLLM_PYTHON", "vllm_python"),
        description="The Python of the environment with vLLM, for `brandbot serve --engine "
        "vllm`; unset: this one if it has vLLM, else .venv-vllm/bin/python "
        "(scripts/setup-vllm.sh makes it).",
        examples=["/opt/vllm/bin/python"],
    )
    slack_bot_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("SLACK_BOT_TOKEN", "slack_bot_token"),
        description="The Bot User OAuth Token (secret); unset: `brandbot run` opens the "
        "console instead of Slack.",
        examples=["xoxb-..."],
    )
    slack_app_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("SLACK_APP_TOKEN", "slack_app_token"),
        description="An app-level token with `connections:write`, for Socket Mode (secret).",
        examples=["xapp-..."],
    )
    slack_signing_secret: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("SLACK_SIGNING_SECRET", "slack_signing_secret"),
        description="The app's Signing Secret, for the HTTP Events API (secret).",
        examples=["8f14e45fceea167a5a36dedd4bea2543"],
    )
    slack_api_url: str = Field(
        default="https://slack.com/api/",
        validation_alias=AliasChoices("SLACK_API_URL", "slack_api_url"),
        description="The Slack Web API base URL (tests point it at a fake Slack).",
        examples=["http://127.0.0.1:9999/api/"],
    )

    admins: CommaList = Field(
        default_factory=list,
        validation_alias=AliasChoices("BRANDBOT_ADMINS", "admins"),
        description="Slack user ids allowed to run admin commands; they also approve by "
        "reaction in datasets without approvers. Unset: nobody can do either.",
        examples=[["U0ADMIN01", "U0OTHER01"]],
    )
    max_lora_rank: int = Field(
        default=16,
        validation_alias=AliasChoices("BRANDBOT_MAX_LORA_RANK", "max_lora_rank"),
        description="The inference server's `--max-lora-rank`; adapters above it are refused.",
        examples=[32],
    )
    training: dict[str, Any] = Field(
        default_factory=dict,
        validation_alias=AliasChoices("training"),
        description="Overrides of the trainer's defaults; `[training.draft]` / "
        "`[training.classify]` apply to one task.",
        examples=[{"epochs": 3, "draft": {"rank": 8}}],
    )
    plugins: dict[str, Any] = Field(
        default_factory=dict,
        validation_alias=AliasChoices("plugins"),
        description="`enabled` / `disabled` plugin lists and one section per plugin.",
        examples=[{"disabled": ["report"]}],
    )

    # -- the edge (in-memory per process; docs/configuration.md) ---------------------------
    slack_team_ids: CommaList = Field(
        default_factory=list,
        validation_alias=AliasChoices("BRANDBOT_SLACK_TEAM_IDS", "slack_team_ids"),
        description="Slack workspaces (team ids) the bot answers; events from any other are "
        "ignored. Empty: the bot token's own workspace, read from auth.test at start.",
        examples=[["T0KETTLE1"]],
    )
    rate_limit_per_minute: int = Field(
        default=10,
        ge=0,
        validation_alias=AliasChoices("BRANDBOT_RATE_LIMIT_PER_MINUTE", "rate_limit_per_minute"),
        description="Generations one user may start per minute in each of drafting, "
        "regenerating and classifying (`/draft -n 3` costs 3); 0 turns the limit off.",
        examples=[10],
    )
    job_queue_limit: int = Field(
        default=100,
        ge=1,
        validation_alias=AliasChoices("BRANDBOT_JOB_QUEUE_LIMIT", "job_queue_limit"),
        description="Jobs waiting or running at once in one bot process; past it requests are "
        "answered 'busy, try again in a minute'.",
        examples=[100],
    )
    retry_seconds: float = Field(
        default=5.0,
        ge=0,
        validation_alias=AliasChoices("BRANDBOT_RETRY_SECONDS", "retry_seconds"),
        description="First wait before an internal event (outbox) or a background job that "
        "failed is tried again; the wait doubles with each attempt, up to an hour.",
        examples=[5],
    )
    leader_bid_seconds: float = Field(
        default=15.0,
        gt=0,
        validation_alias=AliasChoices("BRANDBOT_LEADER_BID_SECONDS", "leader_bid_seconds"),
        description="How often each bot replica bids to run the schedule (PostgreSQL); a "
        "replica takes over this long at most after the leader dies.",
        examples=[15],
    )
    job_lease_seconds: float = Field(
        default=600.0,
        gt=0,
        validation_alias=AliasChoices("BRANDBOT_JOB_LEASE_SECONDS", "job_lease_seconds"),
        description="How long a background job (a classification, a draft, a brief) stays "
        "with the bot process that claimed it if that process stops renewing the claim, which "
        "it does every second while it lives; after it, another process runs the job again.",
        examples=[600],
    )
    training_lease_seconds: float = Field(
        default=120.0,
        gt=0,
        validation_alias=AliasChoices("BRANDBOT_TRAINING_LEASE_SECONDS", "training_lease_seconds"),
        description="A training worker's lease on the run it trains, renewed every third of it; "
        "a run whose worker died is given to another worker this long after its last renewal.",
        examples=[120],
    )
    max_attempts: int = Field(
        default=10,
        ge=1,
        validation_alias=AliasChoices("BRANDBOT_MAX_ATTEMPTS", "max_attempts"),
        description="Attempts of an internal event or background job before it is set aside "
        "as a dead letter (counted in `/brandbot status`).",
        examples=[10],
    )

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
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=config_file()),
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


def aliases(field: FieldInfo) -> list[str]:
    """A setting's names: its environment variable (upper case, if any), then its toml key."""
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return [c for c in alias.choices if isinstance(c, str)]
    return [alias] if isinstance(alias, str) else []


def env_name(field: FieldInfo) -> str | None:
    """The environment variable of a setting; ``None`` for a brandbot.toml-only one."""
    names = aliases(field)
    return names[0] if names and names[0].isupper() else None


def toml_key(field: FieldInfo) -> str:
    """The brandbot.toml key of a setting, e.g. ``admins``."""
    return aliases(field)[-1]


def config_file() -> Path:
    """The brandbot.toml in use (``BRANDBOT_CONFIG`` names another)."""
    return Path(os.environ.get(CONFIG_FILE_ENV, DEFAULT_CONFIG_FILE))


def load_settings(**overrides: Any) -> Settings:
    """Read the settings; any configuration error becomes a one-line ``SettingsError``."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = str(first["loc"][0]) if first["loc"] else ""
        msg = first["msg"].removeprefix("Value error, ")
        raise SettingsError(describe(Settings, loc, msg)) from None
    except SourceError as exc:
        raise SettingsError(source_error_line(exc)) from None
    except (ValueError, OSError) as exc:  # brandbot.toml is not TOML, not UTF-8 or unreadable
        problem = f"invalid settings file {config_file()} (expected TOML): {exc}"
        raise SettingsError(problem) from None


def source_error_line(exc: SourceError, settings_cls: type[BaseSettings] | None = None) -> str:
    """One line for pydantic-settings' own error: a value it could not decode as JSON."""
    found = re.search(r'field "([^"]+)"', str(exc))
    cause = exc.__cause__
    why = f"expected JSON ({cause})" if cause else str(exc)
    return describe(settings_cls or Settings, found[1] if found else "", why)


def describe(settings_cls: type[BaseSettings], loc: str, problem: str) -> str:
    """``invalid setting BRANDBOT_ADMINS: <problem> (example: U0ADMIN01,U0OTHER01)``.

    ``loc`` is a field name or any of its aliases. The setting is named as the user wrote it:
    its environment variable, or its key in brandbot.toml when the environment does not set it.
    """
    field = _field(settings_cls, loc)
    if field is None:
        return f"invalid setting {loc or 'settings'}: {problem}"
    env = env_name(field)
    in_env = env is not None and env in os.environ
    if env is not None and (in_env or not config_mentions(toml_key(field))):
        name = env
    else:
        name = f"{toml_key(field)} in {config_file()}"
    example = f" (example: {example_text(field.examples[0])})" if field.examples else ""
    return f"invalid setting {name}: {problem}{example}"


def _field(settings_cls: type[BaseSettings], loc: str) -> FieldInfo | None:
    for name, field in settings_cls.model_fields.items():
        if loc.lower() in {n.lower() for n in (name, *aliases(field))}:
            return field
    return None


def config_mentions(key: str) -> bool:
    """Whether the brandbot.toml in use sets ``key`` (a top-level key or table)."""
    try:
        import tomllib

        with config_file().open("rb") as fh:
            data = tomllib.load(fh)
    except (OSError, ValueError):
        return False
    return key in data


def example_text(value: Any) -> str:
    """An example value as a user writes it: lists with commas, tables as inline toml."""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        inner = ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }"
    return str(value)


def _toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return example_text(value)
    return json.dumps(value)
