"""``brandbot demo``: the whole loop, scripted, offline, on the sample brand.

Approvers react in the console workspace, the copy and ticket datasets are retrained on the
CPU, the retraining reports (with their charts) are posted, and the same brief and the same
ticket are answered before and after, base and tuned side by side. New tickets then get a
suggested reply in their thread, and agents' answers become reply examples. ``--smoke`` runs
the same path on a tiny random model so CI can check it in a minute.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from bot.samples import brand_definition, channel_messages, workspace

BRIEF = "Announce our new roasted hojicha: toasty, low in caffeine, out on Friday"
TICKET = "Hello, I was charged twice for my Steep Club box this month, can you fix it?"
TICKET_2 = "My order KK-77120 still hasn't arrived and tracking hasn't moved for a week"
TICKET_3 = "Can I pause my Steep Club for two months while I'm travelling?"
ANSWER_3 = (
    "Of course. Open the Steep Club page in your account and choose Pause before the 5th; "
    "you can pick one, two or three months, and it restarts on its own. Safe travels."
)


def script() -> list[str]:
    """The console lines of the demo, computed from the sample workspace."""
    ws = workspace()
    names = {c["id"]: c["name"] for c in ws["channels"]}
    copy = next(d for d in brand_definition()["datasets"] if d["task"] == "draft")
    banned = [w.lower() for w in copy["banned_words"]]
    approve: list[int] = []
    reject: list[int] = []
    for number, message in enumerate(channel_messages(), start=1):
        if message["channel"] != names.get(copy["channels"][0]):
            continue
        text = message["text"].lower()
        off_brand = any(w in text.split() or w in text for w in banned) or text.count("!") > 1
        (reject if off_brand else approve).append(number)
    lines = [
        "// 1. Approvers react in #brand-copy: ✅ approves a post, ❌ rejects an off-brand one.",
        "#brand-copy",
        "@maya",
        *[f":white_check_mark: {n}" for n in approve],
        *[f":x: {n}" for n in reject],
        "/brandbot datasets kk_copy",
        "// 2. Before training: a draft and a ticket from the base model.",
        f"/draft -d kk_copy {BRIEF}",
        "#support-tickets",
        "@tom",
        f"/classify {TICKET}",
        f"/classify {TICKET_2}",
        "// 3. Retrain both datasets on the CPU: train, evaluate, promote a winner, report.",
        "@maya",
        "/brandbot retrain kk_copy",
        "/brandbot retrain kk_tickets",
        "wait",
        "/brandbot status",
        "// 4. After training: the same brief and the same tickets, now with the tuned adapters.",
        "#brand-copy",
        f"/draft -d kk_copy {BRIEF}",
        "#support-tickets",
        "@tom",
        f"/classify {TICKET}",
        f"/classify {TICKET_2}",
        "// 5. A new ticket gets its label and a suggested reply in its thread; Tom posts it.",
        "Hi! The glass teapot arrived in pieces, the box was crushed. Order KK-51234.",
        "wait",
        "press Post reply",
        "// 6. Tom answers another ticket in his own words; Maya's ✅ makes it a reply example.",
        TICKET_3,
        "wait",
        f"reply last {ANSWER_3}",
        "@maya",
        ":white_check_mark: last",
        "/brandbot datasets kk_replies",
        "quit",
    ]
    return lines


def smoke_model(folder: Path) -> Path:
    """A tiny random LLaMA with the bundled tokenizer (seconds to build)."""
    from bot.testkit.models import build_tiny_llama, extract_bundled_tokenizer

    if (folder / "model" / "config.json").is_file():
        return folder / "model"
    tokenizer = extract_bundled_tokenizer(folder / "tokenizer")
    return build_tiny_llama(folder / "model", tokenizer)


def settings_overrides(data_dir: Path, smoke: bool) -> dict[str, Any]:
    overrides: dict[str, Any] = {"data_dir": data_dir}
    if smoke:
        overrides["base_model"] = str(smoke_model(data_dir / "tiny-model"))
        overrides["training"] = {
            "epochs": 1,
            "preference_epochs": 1,
            "checkpoint_every": 0,
            "max_length": 192,
        }
    else:
        overrides["training"] = {"draft": {"epochs": 3}, "classify": {"epochs": 2}}
    return overrides


def run_demo(data_dir: Path, *, smoke: bool) -> None:
    from bot.cli.common import console
    from bot.console.runner import run_console
    from bot.samples import load_sample_brand
    from bot.settings import load_settings
    from bot.storage.db import Database

    load_settings(data_dir=data_dir)  # a configuration error stops it before it builds anything
    settings = load_settings(**settings_overrides(data_dir, smoke))
    db = Database(settings.resolved_database_url)
    db.upgrade()
    loaded = load_sample_brand(db)
    model = "a tiny random model" if smoke else "SmolLM2-135M-Instruct on the CPU"
    console.print(f"[bold]brandbot demo[/] in {data_dir} ({model})")
    for d in loaded:
        pairs = d.pairs.added + d.pairs.duplicate
        also = f" and {pairs} preference pairs" if pairs else ""
        console.print(
            f"sample brand: {d.name} has {d.result.added + d.result.duplicate} examples{also}"
        )
    text = "\n".join(script()) + "\n"
    run_console(settings, db, stdin=io.StringIO(text), echo=True)
    charts = sorted(str(p) for p in (data_dir / "console-uploads").glob("*.png"))
    print(json.dumps({"charts": charts}), flush=True)
