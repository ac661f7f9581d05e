"""The adapter registry: every run's adapter ``<dataset>-v<N>`` with its metrics, which one is
active per dataset, promotion through serving's deployment, and rollback.

The database decides and the model server follows: promotion calls the server before it writes
(a crash in between leaves only an unused loaded adapter), rollback only writes, and
:mod:`bot.reconciler` makes the server's loaded adapters match the registry after either."""

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
from serving.adapters import DeployResult, deploy_adapter
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


def deploy(settings: Settings, client: InferenceClient, adapter: Adapter) -> DeployResult:
    """Put ``adapter`` on the model server with every check (checksum, lint, load, canary),
    changing nothing in the database: call it before the transaction that activates it.

    A name the server already lists belongs to an attempt that died before its commit (names
    are never reused for other weights): it is unloaded and loaded again from the verified
    files."""
    if any(m.id == adapter.name for m in client.models()):
        client.unload_adapter(adapter.name)
    return deploy_adapter(
        client,
        adapter.name,
        Path(adapter.path),
        served_model_name=settings.served_model_name,
        base_fingerprint=adapter.base_fingerprint,
        max_lora_rank=settings.max_lora_rank,
        server_path=server_path(settings, Path(adapter.path)),
        checksum=adapter.weights_fingerprint,
    )


def activate(
    session: Session, adapter: Adapter, result: DeployResult, *, actor: str | None = None
) -> Promotion:
    """Record a deployment: on success ``adapter`` becomes its dataset's active one (the
    previous one is retired, and stays loaded for a rollback) and ``adapter.promoted`` is
    published; on failure the previous one stays active and the reason is returned."""
    previous = session.scalar(
        select(Adapter).where(Adapter.dataset_id == adapter.dataset_id, Adapter.status == "active")
    )
    if not result.ok:
        Audit(session).record(
            "adapter.deploy_failed",
            actor=actor,
            dataset_id=adapter.dataset_id,
            adapter=adapter.name,
        )
        return Promotion(False, "; ".join(result.reasons), previous.name if previous else None)
    if previous is not None and previous.id == adapter.id:
        return Promotion(True, f"{adapter.name} is already active", adapter.name)
    if previous is not None:
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


def promote(
    session: Session,
    settings: Settings,
    client: InferenceClient,
    adapter: Adapter,
    *,
    actor: str | None = None,
) -> Promotion:
    """Deploy ``adapter`` (:func:`deploy`), then make it the dataset's active one
    (:func:`activate`). The model server is called before anything is written, so the
    caller's commit decides: a crash before it leaves a loaded adapter that the database does
    not use, which :func:`reconcile` unloads; an already active adapter is not promoted again."""
    if adapter.status == "active":
        return Promotion(True, f"{adapter.name} is already active", adapter.name)
    try:
        result = deploy(settings, client, adapter)
    except (InferenceError, InferenceUnavailable) as exc:
        result = DeployResult(ok=False, name=adapter.name, reasons=[f"server: {exc}"])
    return activate(session, adapter, result, actor=actor)


def roll_back(
    session: Session,
    dataset: Dataset,
    *,
    to: str | None = None,
    actor: str | None = None,
) -> Promotion:
    """Make the previous adapter (or ``to``) active again; with none, fall back to the base.

    Only the database changes here (the target's files are checked first); the model server
    follows once this commits: ``adapter.rolled_back`` makes :func:`reconcile` load the target
    and unload the adapter rolled back from, and every replica's adapter watch does the same."""
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
    if target is current:
        return Promotion(True, f"{current.name} is already active", current.name)
    current.status = "retired"
    session.flush()  # one active adapter per dataset: retire before activating
    if target is not None:
        target.status, target.promoted_at = "active", utcnow()
    Audit(session).record(
        "adapter.rollback", actor=actor, dataset_id=dataset.id, adapter=current.name,
        to=target.name if target else "base",
    )  # fmt: skip
    active = target.name if target else None
    Outbox(session).publish(
        "adapter.rolled_back",
        {"adapter": current.name, "to": active, "dataset_id": dataset.id},
    )
    return Promotion(True, f"{dataset.name} now uses {active or 'the base model'}", active)


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
