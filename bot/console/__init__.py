"""The console adapter: a terminal chat on a workspace (the sample brand's by default) that
speaks the same plugin API as Slack. See docs/console.md for its grammar."""
