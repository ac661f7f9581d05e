"""``/draft <brief>``: on-brand copy from the dataset's active adapter, with a preview and
buttons to post, edit, regenerate or discard. A posted draft becomes approved copy, and an
approver's choices (an edit, the variant posted, a regeneration, a discard) become preference
pairs (``bot.draft_pairs``).

The command is acknowledged at once; a placeholder is answered through the command's
response_url and the draft streams into it; generation runs on the job queue. Every button is
idempotent: the draft's state lives in the database, so a second press or a press after a
restart does the right thing.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from dataclasses import dataclass

from pydantic import BaseModel, Field
from sqlalchemy import select

from bot.access import may_read
from bot.draft_pairs import record_discarded
from bot.gate import Gate, scrubber_for_settings
from bot.modals import text_edit_modal
from bot.plugin import (
    ActionEvent,
    Button,
    CommandEvent,
    Context,
    Services,
    command,
    on_action,
    on_view_submission,
)
from bot.ratelimit import admit
from bot.reply_prompts import is_reply_dataset
from bot.storage.models import Dataset, Draft
from bot.storage.repositories import Adapters
from plugins.draft_posting import POSTING, DraftPosting
from serving.client import InferenceError, InferenceUnavailable
from trainer.rules import rule_violations

log = logging.getLogger("brandbot.draft")
MAX_BRIEF = 2000
USAGE = "Usage: `/draft [-d dataset] [-n 1-3] brief`, e.g. `/draft announce the autumn chai`"


class DraftSettings(BaseModel):
    max_tokens: int = Field(default=120, ge=16, le=2048)
    temperature: float = Field(default=0.8, ge=0.0, le=2.0)
    retries_for_rules: int = Field(default=2, ge=0, le=5)
    stream_every_s: float = Field(default=1.0, gt=0)
    posting_stuck_after_minutes: int = Field(
        default=10,
        ge=1,
        le=1440,
        description="A draft claimed by a Post press that is still posting after this long "
        "(the bot crashed mid-post) is settled: recorded if the channel has it, else released.",
    )


@dataclass
class Request:
    dataset: str | None
    variants: int
    brief: str


def parse(text: str) -> Request | str:
    """``-d NAME -n N brief words`` -> Request, or a message saying what is wrong."""
    words = text.split()
    dataset, variants = None, 1
    while words and words[0] in ("-d", "--dataset", "-n", "--variants"):
        flag = words.pop(0)
        if not words:
            return f"`{flag}` needs a value. {USAGE}"
        value = words.pop(0)
        if flag in ("-d", "--dataset"):
            dataset = value
        elif value.isdigit() and 1 <= int(value) <= 3:
            variants = int(value)
        else:
            return f"`-n` takes 1, 2 or 3. {USAGE}"
    brief = " ".join(words).strip()
    if not brief:
        return f"Please give a brief. {USAGE}"
    if len(brief) > MAX_BRIEF:
        return f"The brief is {len(brief)} characters; please keep it under {MAX_BRIEF}."
    return Request(dataset, variants, brief)


def messages_for(dataset: Dataset, brief: str) -> list[dict[str, str]]:
    out = []
    if dataset.system_prompt:
        out.append({"role": "system", "content": dataset.system_prompt})
    out.append({"role": "user", "content": brief})
    return out


class DraftPlugin(DraftPosting):
    """Drafts on-brand copy."""

    Settings = DraftSettings

    @property
    def cfg(self) -> DraftSettings:
        assert isinstance(self.settings, DraftSettings)
        return self.settings

    def stuck_after(self) -> dt.timedelta:
        return dt.timedelta(minutes=self.cfg.posting_stuck_after_minutes)

    def _dataset(self, ctx: Context, event: CommandEvent, name: str | None) -> Dataset | str:
        drafts = list(ctx.session.scalars(select(Dataset).where(Dataset.task == "draft")))
        if name:
            found = [d for d in drafts if d.name == name]
            if not found:
                known = ", ".join(d.name for d in drafts) or "none"
                return f"There is no draft dataset `{name}`. Draft datasets: {known}."
            return found[0]
        here = [d for d in drafts if event.channel_id in d.channels]
        copy = [d for d in drafts if not is_reply_dataset(d)] or drafts  # replies: by name only
        if len(here) == 1 or len(copy) == 1:
            return (here or copy)[0]
        if not drafts:
            return (
                "There is no draft dataset yet: an admin can create one with "
                "`/brandbot datasets create NAME draft`."
            )
        names = ", ".join(d.name for d in drafts)
        return f"Which dataset? Use `-d NAME` (one of {names})."

    def _may_draft(self, ctx: Context, dataset: Dataset, user: str) -> bool:
        """A reply dataset learned from support tickets: only its approvers and the members
        of its channels draft from it. Others: members of its private channels, if any."""
        if is_reply_dataset(dataset):
            return may_read(dataset, user, ctx.chat, ctx.services.settings.admins)
        private = [c for c in dataset.channels if ctx.chat.is_private(c)]
        if not private:
            return True
        return any(user in ctx.chat.channel_members(c) for c in private)

    @command("/draft")
    def draft(self, event: CommandEvent, ctx: Context) -> None:
        """Draft on-brand copy: `/draft [-d dataset] [-n 1-3] brief`."""
        request = parse(event.text)
        if isinstance(request, str):
            ctx.respond(request)
            return
        dataset = self._dataset(ctx, event, request.dataset)
        if isinstance(dataset, str):
            ctx.respond(dataset)
            return
        if not self._may_draft(ctx, dataset, event.user_id):
            ctx.respond(f"`{dataset.name}` learns from private channels you are not in, so it "
                        "only drafts for their members.")  # fmt: skip
            return
        admit(ctx, event.user_id, "draft", request.variants)
        adapter = Adapters(ctx.session).active(dataset.id)
        draft = Draft(
            dataset_id=dataset.id, brief=request.brief, requested_by=event.user_id,
            channel_id=event.channel_id, adapter_name=adapter.name if adapter else None,
        )  # fmt: skip
        ctx.session.add(draft)
        ctx.session.flush()
        ctx.respond(f"Drafting for `{dataset.name}`… (“{request.brief[:100]}”)")
        ctx.submit_after_commit(
            self.generate, ctx.services, draft.id, request.variants, event.response_url,
            name="draft.generate",
        )  # fmt: skip

    # ---- generation (a queued job) -----------------------------------------------------

    def generate(
        self, services: Services, draft_id: int, variants: int, response_url: str | None
    ) -> None:
        with services.db.session() as session:
            draft = session.get(Draft, draft_id)
            dataset = session.get(Dataset, draft.dataset_id) if draft else None
            if draft is None or dataset is None:
                return
            session.expunge_all()
        model = draft.adapter_name
        note = "" if model else "No tuned adapter yet for this dataset: this is the base model. "
        texts: list[str] = []
        try:
            for i in range(variants):
                texts.append(self._one(services, dataset, draft.brief, model, response_url, i))
        except InferenceUnavailable as exc:
            log.warning("draft %s: %s", draft_id, exc)
            self._tell(services, response_url, draft, "The model server is unreachable right "
                       "now, so I couldn't draft.", [Button("Retry", "draft_retry",
                                                            f"{draft_id}:{variants}")])  # fmt: skip
            return
        except InferenceError as exc:
            log.warning("draft %s: %s", draft_id, exc)
            self._tell(services, response_url, draft, refusal(exc, model),
                       [Button("Retry", "draft_retry", f"{draft_id}:{variants}")])  # fmt: skip
            return
        with services.db.session() as session:
            row = session.get(Draft, draft_id)
            if row is None:
                return
            kept = [t for t in row.variants if t and t not in row.replaced]
            row.replaced = [*row.replaced, *kept]  # the posted text is preferred over these
            row.variants, row.text = texts, texts[0]
        lines = [note + f"*Draft{'s' if len(texts) > 1 else ''} for* “{draft.brief[:200]}”"]
        buttons = []
        for i, text in enumerate(texts, start=1):
            problems = rule_violations(
                text, max_length=dataset.max_length, banned_words=dataset.banned_words,
                required_words=dataset.required_words,
            )  # fmt: skip
            flag = f"\n:warning: breaks brand rules: {'; '.join(problems)}" if problems else ""
            shown = text or "_(the model returned nothing: press Edit to write it, or Regenerate)_"
            lines.append(f"*{i}.* {shown}{flag}")
            label = f" {i}" if len(texts) > 1 else ""
            buttons += [
                Button(f"Post{label} to channel", "draft_post", f"{draft_id}:{i - 1}", "primary"),
                Button(f"Edit{label}", "draft_edit", f"{draft_id}:{i - 1}"),
            ]
        buttons += [
            Button("Regenerate", "draft_regenerate", f"{draft_id}:{len(texts)}"),
            Button("Discard", "draft_discard", str(draft_id), "danger"),
        ]
        self._tell(services, response_url, draft, "\n".join(lines), buttons)

    def _one(
        self,
        services: Services,
        dataset: Dataset,
        brief: str,
        model: str | None,
        response_url: str | None,
        index: int,
    ) -> str:
        """One variant, streamed into the placeholder; regenerated while it breaks the rules."""
        text = ""
        max_tokens = self.cfg.max_tokens
        if dataset.max_length:  # about four characters a token: stop soon after the limit
            max_tokens = min(max_tokens, dataset.max_length // 3 + 8)
        for _attempt in range(self.cfg.retries_for_rules + 1):
            text, last = "", time.monotonic()
            for delta in services.require_inference().stream_chat(
                messages_for(dataset, brief), model=model,
                max_tokens=max_tokens, temperature=self.cfg.temperature,
            ):  # fmt: skip
                text += delta
                if response_url and time.monotonic() - last > self.cfg.stream_every_s:
                    services.chat.progress(response_url, f"Drafting {index + 1}… {text}")
                    last = time.monotonic()
            text = text.strip()
            if text and not rule_violations(
                text, max_length=dataset.max_length, banned_words=dataset.banned_words,
                required_words=dataset.required_words,
            ):  # fmt: skip
                break
        return text

    def _tell(
        self,
        services: Services,
        response_url: str | None,
        draft: Draft,
        text: str,
        buttons: list[Button],
    ) -> None:
        if response_url:
            services.chat.respond(response_url, text, buttons=buttons, replace_original=True)
        elif draft.channel_id:
            services.chat.ephemeral(draft.channel_id, draft.requested_by, text, buttons=buttons)

    # ---- buttons -----------------------------------------------------------------------

    @staticmethod
    def _load(ctx: Context, value: str) -> tuple[Draft, Dataset, int] | None:
        match = re.fullmatch(r"(\d+)(?::(\d+))?", value)
        if not match:
            return None
        draft = ctx.session.get(Draft, int(match.group(1)))
        if draft is None:
            return None
        dataset = ctx.session.get(Dataset, draft.dataset_id)
        if dataset is None:
            return None
        return draft, dataset, int(match.group(2) or 0)

    @on_action("draft_post")
    def post(self, event: ActionEvent, ctx: Context) -> None:
        loaded = self._load(ctx, event.value)
        if loaded is None:
            ctx.respond("That draft is gone.")
            return
        draft, _, index = loaded
        if index >= len(draft.variants):
            ctx.respond("That draft is gone.")
            return
        if not draft.variants[index]:
            ctx.respond("That draft is empty; press Edit to write it, or Regenerate.")
            return
        self._publish(ctx, draft, draft.variants[index], event.user_id, event.team_id, index)

    @on_action("draft_edit")
    def edit(self, event: ActionEvent, ctx: Context) -> None:
        loaded = self._load(ctx, event.value)
        if loaded is None or not event.trigger_id:
            ctx.respond("That draft is gone.")
            return
        draft, _, index = loaded
        text = draft.variants[index] if index < len(draft.variants) else (draft.text or "")
        ctx.chat.open_modal(
            event.trigger_id,
            text_edit_modal("draft_edit", f"{draft.id}:{index}", text, title="Edit the draft",
                            submit="Post", label="Post"),
        )  # fmt: skip

    @on_view_submission("draft_edit")
    def edited(self, event: ActionEvent, ctx: Context) -> dict[str, str] | None:
        text = str(event.values.get("text.value") or "").strip()
        if not text:
            return {"text": "The post can't be empty."}
        loaded = self._load(ctx, event.private_metadata)
        if loaded is None:
            return {"text": "That draft is gone."}
        draft, dataset, index = loaded
        problems = rule_violations(
            text, max_length=dataset.max_length, banned_words=dataset.banned_words,
            required_words=dataset.required_words,
        )  # fmt: skip
        if problems:
            return {"text": "Breaks brand rules: " + "; ".join(problems)}
        self._publish(ctx, draft, text, event.user_id, event.team_id, index)
        return None

    @on_action("draft_regenerate")
    def regenerate(self, event: ActionEvent, ctx: Context) -> None:
        loaded = self._load(ctx, event.value)
        if loaded is None:
            ctx.respond("That draft is gone.")
            return
        draft, _, variants = loaded
        if draft.status == "posting":
            ctx.respond(POSTING, replace_original=True)
            return
        if draft.status != "pending":
            ctx.respond(f"This draft was already {draft.status}.", replace_original=True)
            return
        admit(ctx, event.user_id, "regenerate", max(1, variants))
        ctx.respond("Regenerating…", replace_original=True)
        ctx.submit_after_commit(self.generate, ctx.services, draft.id, max(1, variants),
                                event.response_url, name="draft.generate")  # fmt: skip

    @on_action("draft_retry")
    def retry(self, event: ActionEvent, ctx: Context) -> None:
        self.regenerate(event, ctx)

    @on_action("draft_discard")
    def discard(self, event: ActionEvent, ctx: Context) -> None:
        loaded = self._load(ctx, event.value)
        if loaded is None:
            ctx.respond("That draft is gone.")
            return
        draft, dataset, _ = loaded
        if draft.status == "pending":
            draft.status, draft.discarded_by = "discarded", event.user_id
            approves = self._approves(ctx.services, dataset)
            if approves(event.user_id):
                gate = Gate(ctx.session, scrubber=scrubber_for_settings(ctx.services.settings))
                record_discarded(gate, dataset, draft, event.team_id, approves)
        ctx.respond(f"Draft {draft.status}.", replace_original=True)


def refusal(exc: InferenceError, model: str | None) -> str:
    """What the person is told when the model server refuses a draft request."""
    if exc.status == 404 and model:
        return (
            f"The model server does not have the adapter `{model}` loaded right now (it may "
            "have restarted; the bot loads the active adapters again within a minute), so I "
            "couldn't draft. Press Retry in a minute."
        )
    return f"The model server refused the request ({exc}), so I couldn't draft."
