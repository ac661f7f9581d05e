"""brandbot's application layer: settings, storage, the CLI and (later) the chat runtime.

It may import ``trainer`` and ``serving``; nothing of ours imports it except ``plugins``.
"""

__version__ = "0.1.0"
