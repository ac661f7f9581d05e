"""Who may vouch for a dataset's examples, and who may read what it holds.

An approver is one of the dataset's approvers or a member of one of its approver groups; a
dataset with neither is approved by the admins. Reading a dataset's examples (briefs, ticket
prompts) and drafting from a reply dataset are for approvers, admins and the members of the
dataset's channels, since those channels are where its text came from.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from bot.plugin import ChatAPI
from bot.storage.models import Dataset

USER_ID = re.compile(r"[UW][A-Z0-9]{2,31}")


def valid_user_id(user_id: str) -> bool:
    """A Slack user id: U or W, then upper-case letters and digits."""
    return USER_ID.fullmatch(user_id) is not None


def is_approver(
    dataset: Dataset,
    user: str,
    chat: ChatAPI,
    admins: Iterable[str],
    groups: dict[str, set[str]] | None = None,
) -> bool:
    """Whether ``user`` may approve ``dataset``'s examples. ``groups`` caches user group
    members across the calls of one batch."""
    if user in dataset.approvers:
        return True
    groups = {} if groups is None else groups
    for group in dataset.approver_groups:
        if group not in groups:
            groups[group] = set(chat.usergroup_members(group))
        if user in groups[group]:
            return True
    if not dataset.approvers and not dataset.approver_groups:
        return user in admins
    return False


def may_read(dataset: Dataset, user: str, chat: ChatAPI, admins: Iterable[str]) -> bool:
    """Whether ``user`` may see what ``dataset`` learned from (its briefs and ticket prompts)."""
    admins = list(admins)
    if user in admins or is_approver(dataset, user, chat, admins):
        return True
    channels = dict.fromkeys([*dataset.channels, *dataset.ticket_channels])
    return any(user in chat.channel_members(c) for c in channels)


def approvers_of(dataset: Dataset, chat: ChatAPI, admins: Iterable[str]) -> list[str]:
    """Everyone who may approve ``dataset``'s examples (the admins when it names nobody)."""
    people = list(dataset.approvers)
    for group in dataset.approver_groups:
        people += chat.usergroup_members(group)
    if not dataset.approvers and not dataset.approver_groups:
        people = list(admins)
    return list(dict.fromkeys(people))


def may_see(
    dataset: Dataset,
    user: str,
    chat: ChatAPI,
    admins: Iterable[str],
    private: dict[str, bool] | None = None,
) -> bool:
    """Whether ``user`` may see that ``dataset`` exists (its name and counts, as on the Home
    tab): a dataset fed by a private channel is shown only to that channel's members, its
    approvers and the admins; any other dataset to everybody. ``private`` caches
    ``chat.is_private`` across the datasets of one view."""
    private = {} if private is None else private
    channels = list(dict.fromkeys([*dataset.channels, *dataset.ticket_channels]))
    for channel in channels:
        if channel not in private:
            private[channel] = chat.is_private(channel)
    closed = [c for c in channels if private[c]]
    if not closed:
        return True
    admins = list(admins)
    if user in admins or is_approver(dataset, user, chat, admins):
        return True
    return any(user in chat.channel_members(c) for c in closed)
