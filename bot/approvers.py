"""Who can approve: the start-up notice of a deployment where nobody can yet.

Reactions count from a dataset's approvers (users or user groups) and, in a dataset that names
none, from the admins (``BRANDBOT_ADMINS``). With no admins, a dataset without approvers takes
no approvals at all, and nobody can run the admin commands: easy to miss on a first start.
"""

from __future__ import annotations

from bot.settings import Settings
from bot.storage.db import Database
from bot.storage.repositories import Datasets

FIX = (
    "set BRANDBOT_ADMINS to Slack user ids separated by commas (BRANDBOT_ADMINS=U0123,U0456), "
    "or name a dataset's approvers: brandbot datasets update NAME --approvers U0123"
)


def nobody_approves_notice(settings: Settings, db: Database) -> str | None:
    """One line saying who can approve nothing yet and how to fix it; ``None`` when someone can.

    Said when there are no admins and no dataset names approvers (or none exists); with some
    datasets naming approvers, it lists the datasets that do not.
    """
    if settings.admins:
        return None
    with db.session() as session:
        datasets = Datasets(session).list()
        open_ = [d.name for d in datasets if not d.approvers and not d.approver_groups]
    if datasets and not open_:
        return None
    if len(open_) == len(datasets):
        return (
            "no admins and no approvers are configured: nobody can approve examples by "
            f"reaction or run the admin commands yet; {FIX}"
        )
    return (
        "no admins are configured: nobody can approve examples in "
        f"{', '.join(open_)} (no approvers there) or run the admin commands yet; {FIX}"
    )
