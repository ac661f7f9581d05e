"""Make the model server's loaded adapters match the registry (the database decides).

Wanted on the server: every dataset's active adapter, and its rollback target (the newest
retired adapter below the active version) where it is loaded already, so a rollback is
instant. Not wanted: every other retired adapter (one rolled back from, or superseded twice)
and every rejected one. Candidates and names the registry does not know (a run being
evaluated) are left alone.

It runs at start and every ``adapter_check_seconds`` in each bot replica
(:class:`bot.adapter_watch.AdapterWatcher`), on the ``adapter.promoted`` and
``adapter.rolled_back`` outbox events, and after a promotion or rollback from the command line,
so a process killed between the database commit and the server call (either way round), or a
restarted model server, ends with the server serving what the database says. Every step is
idempotent, so replicas reconciling at the same moment agree.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.registry import server_path
from bot.settings import Settings
from bot.storage.models import Adapter
from serving.adapter_checksums import verify_adapter_files
from serving.client import InferenceClient, InferenceError, InferenceUnavailable

log = logging.getLogger("brandbot.reconciler")


@dataclass
class Reconciled:
    loaded: list[str] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.loaded or self.unloaded)


def desired(session: Session) -> tuple[list[Adapter], set[str], set[str]]:
    """(active adapters, names that may stay loaded, names that must not be loaded)."""
    rows = list(session.scalars(select(Adapter).order_by(Adapter.dataset_id, Adapter.version)))
    active = [a for a in rows if a.status == "active"]
    keep = {a.name for a in active}
    for current in active:
        earlier = [
            a for a in rows
            if a.dataset_id == current.dataset_id and a.status == "retired"
            and a.version < current.version
        ]  # fmt: skip
        if earlier:
            keep.add(earlier[-1].name)
    drop = {a.name for a in rows if a.status in ("retired", "rejected") and a.name not in keep}
    return active, keep, drop


def reconcile(session: Session, settings: Settings, client: InferenceClient) -> Reconciled:
    """One pass: load the missing active adapters (after checking their files), unload the ones
    the registry no longer uses. Raises :class:`InferenceUnavailable` / :class:`InferenceError`
    when the server cannot be listed, so an event handler is retried."""
    result = Reconciled()
    active, _keep, drop = desired(session)
    loaded = {m.id for m in client.models()}
    for adapter in active:
        if adapter.name in loaded:
            continue
        damaged = verify_adapter_files(Path(adapter.path), adapter.weights_fingerprint)
        if damaged:
            problem = f"refusing to load {adapter.name}: {'; '.join(damaged)}"
            log.error("%s", problem)
            result.problems.append(problem)
            continue
        try:
            client.load_adapter(adapter.name, server_path(settings, Path(adapter.path)))
            result.loaded.append(adapter.name)
        except (InferenceError, InferenceUnavailable) as exc:
            log.warning("could not load %s: %s", adapter.name, exc)
            result.problems.append(f"could not load {adapter.name}: {exc}")
    for name in sorted(drop & loaded):
        try:
            client.unload_adapter(name)
            result.unloaded.append(name)
        except (InferenceError, InferenceUnavailable) as exc:
            log.warning("could not unload %s: %s", name, exc)
            result.problems.append(f"could not unload {name}: {exc}")
    if result.changed:
        log.info("model server reconciled: loaded %s, unloaded %s", result.loaded, result.unloaded)
    return result
