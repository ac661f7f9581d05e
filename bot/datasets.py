"""Dataset definitions: the validated fields a dataset has, shared by the CLI, Slack and the
sample brand. Storage keeps them; this module decides what is allowed.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bot.cron import cron_trigger

NAME_RULE = r"^[a-z][a-z0-9_]{0,31}$"
NAME_RE = re.compile(NAME_RULE)
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$")
EMOJI_RE = re.compile(r"^[a-z0-9_+\-']{1,100}$")
CHANNEL_RE = re.compile(r"^[CGD][A-Z0-9]{2,31}$")
USER_RE = re.compile(r"^[UW][A-Z0-9]{2,31}$")
GROUP_RE = re.compile(r"^S[A-Z0-9]{2,31}$")

Task = Literal["draft", "classify"]
ReplyMode = Literal["off", "thread", "ephemeral"]


class DatasetError(ValueError):
    """A dataset definition that is not allowed; the message says which field and why."""


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise DatasetError(
            f"invalid dataset name {name!r}: it must match {NAME_RULE} "
            "(a lower-case letter, then up to 31 lower-case letters, digits or _)"
        )
    return name


def _strip_colons(values: list[str]) -> list[str]:
    return [v.strip().strip(":") for v in values if v.strip().strip(":")]


class DatasetFields(BaseModel):
    """Every editable field of a dataset. ``None`` in an update means "leave as it is"."""

    model_config = ConfigDict(extra="forbid")

    description: str | None = None
    channels: list[str] | None = None
    approve_emoji: list[str] | None = None
    reject_emoji: list[str] | None = None
    labels: list[str] | None = None
    label_emoji: dict[str, str] | None = None
    approvers: list[str] | None = None
    approver_groups: list[str] | None = None
    system_prompt: str | None = Field(default=None, max_length=8000)
    max_length: int | None = Field(default=None, ge=1, le=40000)
    banned_words: list[str] | None = None
    required_words: list[str] | None = None
    ticket_channels: list[str] | None = None
    reply_mode: ReplyMode | None = None
    reply_channel_modes: dict[str, ReplyMode] | None = None
    report_channel: str | None = None
    schedule_cron: str | None = None
    schedule_timezone: str | None = None
    min_new_examples: int | None = Field(default=None, ge=0, le=1_000_000)

    @field_validator("channels", "ticket_channels")
    @classmethod
    def _channels(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        value = [v.strip().lstrip("#") for v in value if v.strip()]
        for v in value:
            if not CHANNEL_RE.match(v):
                raise ValueError(f"{v!r} is not a Slack channel id (like C0123ABCD)")
        return list(dict.fromkeys(value))

    @field_validator("reply_channel_modes")
    @classmethod
    def _reply_channels(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        clean = {k.strip().lstrip("#"): v for k, v in value.items() if k.strip()}
        for channel in clean:
            if not CHANNEL_RE.match(channel):
                raise ValueError(f"{channel!r} is not a Slack channel id (like C0123ABCD)")
        return clean

    @field_validator("report_channel")
    @classmethod
    def _report_channel(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return value
        if not CHANNEL_RE.match(value):
            raise ValueError(f"{value!r} is not a Slack channel id (like C0123ABCD)")
        return value

    @field_validator("approve_emoji", "reject_emoji")
    @classmethod
    def _emoji(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        value = _strip_colons(value)
        for v in value:
            if not EMOJI_RE.match(v):
                raise ValueError(f"{v!r} is not an emoji name (like white_check_mark)")
        return list(dict.fromkeys(value))

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        value = [v.strip() for v in value if v.strip()]
        for v in value:
            if not LABEL_RE.match(v):
                raise ValueError(f"{v!r} is not a label (letters, digits, _ and -; 64 at most)")
        if len(set(value)) != len(value):
            raise ValueError("labels must be distinct")
        return value

    @field_validator("label_emoji")
    @classmethod
    def _label_emoji(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        clean = {k.strip().strip(":"): v.strip() for k, v in value.items()}
        for emoji in clean:
            if not EMOJI_RE.match(emoji):
                raise ValueError(f"{emoji!r} is not an emoji name")
        return clean

    @field_validator("approvers")
    @classmethod
    def _approvers(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        value = [v.strip() for v in value if v.strip()]
        for v in value:
            if not USER_RE.match(v):
                raise ValueError(f"{v!r} is not a Slack user id (like U0123ABCD)")
        return list(dict.fromkeys(value))

    @field_validator("approver_groups")
    @classmethod
    def _groups(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        value = [v.strip() for v in value if v.strip()]
        for v in value:
            if not GROUP_RE.match(v):
                raise ValueError(f"{v!r} is not a Slack user group id (like S0123ABCD)")
        return list(dict.fromkeys(value))

    @field_validator("banned_words", "required_words")
    @classmethod
    def _words(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        return list(dict.fromkeys(v.strip() for v in value if v.strip()))

    @field_validator("schedule_cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            cron_trigger(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a 5-field cron expression: {exc}") from None
        return value

    @field_validator("schedule_timezone")
    @classmethod
    def _tz(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone (like Europe/London)") from None
        return value


class DatasetSpec(DatasetFields):
    """A whole dataset definition, as created."""

    name: str
    task: Task

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)

    @model_validator(mode="after")
    def _consistent(self) -> DatasetSpec:
        check_consistency(
            self.task, self.labels or [], self.label_emoji or {},
            ticket_channels=self.ticket_channels or [], reply_mode=self.reply_mode or "off",
            reply_channel_modes=self.reply_channel_modes or {},
        )  # fmt: skip
        return self


def check_consistency(
    task: str,
    labels: list[str],
    label_emoji: dict[str, str],
    *,
    ticket_channels: list[str] | None = None,
    reply_mode: str = "off",
    reply_channel_modes: Mapping[str, str] | None = None,
) -> None:
    """Classify datasets map emoji to their own labels; draft datasets have none.

    Suggested replies come from a *draft* dataset tied to ticket channels (a classify dataset
    labels tickets; it does not write), and a per-channel reply mode names one of those channels.
    """
    if task == "draft" and labels:
        raise DatasetError("labels: only classify datasets have labels")
    unknown = sorted({v for v in label_emoji.values() if v not in labels})
    if unknown:
        raise DatasetError(f"label_emoji: maps to unknown labels {', '.join(unknown)}")
    modes = reply_channel_modes or {}
    suggests = reply_mode != "off" or any(m != "off" for m in modes.values())
    if task != "draft" and suggests:
        raise DatasetError(
            "reply_mode: only draft datasets suggest replies; create a draft dataset with "
            "these ticket_channels for the replies"
        )
    stray = sorted(set(modes) - set(ticket_channels or []))
    if stray:
        raise DatasetError(
            f"reply_channel_modes: {', '.join(stray)} is not one of the ticket_channels"
        )


def validation_message(exc: ValidationError) -> str:
    """One line naming the first invalid field."""
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "dataset"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{field}: {msg}"


def parse_fields(raw: dict[str, Any]) -> DatasetFields:
    try:
        return DatasetFields(**raw)
    except ValidationError as exc:
        raise DatasetError(validation_message(exc)) from None


def parse_spec(raw: dict[str, Any]) -> DatasetSpec:
    if "name" in raw:
        check_name(str(raw["name"]))
    try:
        return DatasetSpec(**raw)
    except ValidationError as exc:
        raise DatasetError(validation_message(exc)) from None
