"""The adapter registry: every run's adapter ``<dataset>-v<N>`` with its metrics, which one is
active per dataset, promotion through serving's deployment, and rollback."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.settings import Settings
from bot.storage.models import Adapter, Dataset, utcnow
from bot.storage.repositories import Audit, Outbox
from serving.adapter_checksums import verify_adapter_files
from serving.adapters import deploy_adapter, rollback
from serving.client import InferenceClient, InferenceError, InferenceUnavailable

log = logging.getLogger("brandbot.registry")


@dataclass
class Promotion:
    ok: bool
    reason: str
    active: str | None


def server_path(settings: Settings, folder: Path) -> str:
    """Where the inference server sees an adapter folder (a shared volume may differ)."""
    if settings.server_adapters_dir:
        return f"{settings.server_adapters_dir.rstrip('/')}/{folder.name}"
    return str(folder)


def promote(
    session: Session,
    settings: Settings,
    client: InferenceClient,
    adapter: Adapter,
    *,
    actor: str | None = None,
) -> Promotion:
    """Deploy ``adapter`` (lint, load, list, canary) and make it the dataset's active one.

    The previous active adapter is retired but stays loadable for rollback. A failed
    deployment leaves the previous one active and says why.
    """
    previous = session.scalar(
        select(Adapter).where(Adapter.dataset_id == adapter.dataset_id, Adapter.status == "active")
    )
    result = deploy_adapter(
        client,
        adapter.name,
        Path(adapter.path),
        served_model_name=settings.served_model_name,
        base_fingerprint=adapter.base_fingerprint,
        max_lora_rank=settings.max_lora_rank,
        server_path=server_path(settings, Path(adapter.path)),
        previous=previous.name if previous else None,
        checksum=adapter.weights_fingerprint,
    )
    if not result.ok:
        reason = "; ".join(result.reasons)
        Audit(session).record(
            "adapter.deploy_failed",
            actor=actor,
            dataset_id=adapter.dataset_id,
            adapter=adapter.name,
        )
        return Promotion(False, reason, previous.name if previous else None)
    if previous is not None and previous.id != adapter.id:
        previous.status = "retired"
        session.flush()  # one active adapter per dataset: the database checks each statement
    adapter.status, adapter.promoted_at = "active", utcnow()
    Audit(session).record(
        "adapter.promote", actor=actor, dataset_id=adapter.dataset_id, adapter=adapter.name,
        previous=previous.name if previous else None,
    )  # fmt: skip
    Outbox(session).publish(
        "adapter.promoted", {"adapter": adapter.name, "dataset_id": adapter.dataset_id}
    )
    return Promotion(True, f"{adapter.name} is now active", adapter.name)


def roll_back(
    session: Session,
    settings: Settings,
    client: InferenceClient,
    dataset: Dataset,
    *,
    to: str | None = None,
    actor: str | None = None,
) -> Promotion:
    """Make the previous adapter (or ``to``) active again; with none, fall back to the base."""
    adapters = list(
        session.scalars(
            select(Adapter).where(Adapter.dataset_id == dataset.id).order_by(Adapter.version)
        )
    )
    current = next((a for a in adapters if a.status == "active"), None)
    if current is None:
        return Promotion(False, f"{dataset.name} has no active adapter to roll back", None)
    if to is not None:
        target = next((a for a in adapters if a.name == to), None)
        if target is None:
            known = ", ".join(a.name for a in adapters) or "none"
            return Promotion(
                False, f"unknown adapter {to!r}; {dataset.name} has: {known}", current.name
            )
    else:
        earlier = [a for a in adapters if a.status == "retired" and a.version < current.version]
        target = earlier[-1] if earlier else None
    if target is not None and (
        damaged := verify_adapter_files(Path(target.path), target.weights_fingerprint)
    ):
        return Promotion(
            False, f"{target.name} cannot be loaded: {'; '.join(damaged)}", current.name
        )
    result = rollback(
        client,
        current=current.name,
        previous=target.name if target else None,
        previous_path=server_path(settings, Path(target.path)) if target else None,
    )
    if not result.ok:
        return Promotion(False, "; ".join(result.reasons), current.name)
    current.status = "retired"
    session.flush()  # one active adapter per dataset: retire before activating
    if target is not None:
        target.status, target.promoted_at = "active", utcnow()
    Audit(session).record(
        "adapter.rollback", actor=actor, dataset_id=dataset.id, adapter=current.name,
        to=target.name if target else "base",
    )  # fmt: skip
    active = target.name if target else None
    return Promotion(True, f"{dataset.name} now uses {active or 'the base model'}", active)


def load_active(session: Session, settings: Settings, client: InferenceClient) -> list[str]:
    """Make sure every dataset's active adapter is loaded on the server (after a restart of an
    in-process engine, for instance). Returns the names it loaded."""
    try:
        loaded = {m.id for m in client.models()}
    except (InferenceError, InferenceUnavailable) as exc:
        log.warning("cannot list the server's models: %s", exc)
        return []
    done = []
    for adapter in session.scalars(select(Adapter).where(Adapter.status == "active")):
        if adapter.name in loaded:
            continue
        damaged = verify_adapter_files(Path(adapter.path), adapter.weights_fingerprint)
        if damaged:
            log.error("refusing to load %s: %s", adapter.name, "; ".join(damaged))
            continue
        try:
            client.load_adapter(adapter.name, server_path(settings, Path(adapter.path)))
            done.append(adapter.name)
        except (InferenceError, InferenceUnavailable) as exc:
            log.warning("could not load %s: %s", adapter.name, exc)
    return done


def serving_problem(session: Session, client: InferenceClient) -> str | None:
    """Why ``client`` cannot serve what the datasets use yet, or None when it can: the base model
    is loaded (or the server answered) and every dataset's active adapter is listed on it."""
    problem = client.readiness()
    if problem is not None:
        return problem
    active = set(session.scalars(select(Adapter.name).where(Adapter.status == "active")))
    if not active:
        return None
    try:
        listed = {m.id for m in client.models()}
    except (InferenceError, InferenceUnavailable) as exc:
        return f"cannot list the server's models: {exc}"
    missing = sorted(active - listed)
    return f"active adapters not loaded yet: {', '.join(missing)}" if missing else None
