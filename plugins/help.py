"""``/brandbot help``: the command list, generated from the handlers' docstrings."""

from __future__ import annotations

from bot.plugin import CommandEvent, Context, Plugin, command


class HelpPlugin(Plugin):
    """Explains what the bot can do."""

    @command("/brandbot help")
    def help(self, event: CommandEvent, ctx: Context) -> None:
        """Show this list of commands."""
        entries = ctx.services.help_entries(event.user_id) if ctx.services.help_entries else []
        lines = ["*brandbot commands*"]
        lines += [f"• `{usage}` {text}".rstrip() for usage, text in entries]
        ctx.respond("\n".join(lines))

    @command("/brandbot")
    def root(self, event: CommandEvent, ctx: Context) -> None:
        """Admin and data commands; `/brandbot help` lists them."""
        if event.text:
            ctx.respond(f"I don't know `/brandbot {event.text}`. Try `/brandbot help`.")
        else:
            self.help(event, ctx)
