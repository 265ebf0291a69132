"""A GGUF embedded model as a Hugging Face safetensors directory, built once into a content-addressed cache.

vLLM loads HF directories well and GGUF files poorly (a plugin, few architectures), so the shipped
SmolLM2 GGUF is dequantised by transformers once and saved as safetensors under
`<cache>/models/<sha256 of the GGUF, 16 hex>/`. A GGUF-loaded model refuses `save_pretrained`, so a
fresh model is built from its config and given the dequantised state dict. The directory is
written under a temporary name and renamed into place: a crash leaves no half model, and two
processes converting at once both end with the same complete directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from hiercaps_gen.models import ModelSource, resolve

# Bump when the conversion itself changes: it is part of the directory's address.
EXPORT_VERSION = "2"
MARKER = "hiercaps-export.json"


def cache_root() -> Path:
    """`$HIERCAPS_CACHE`, else `$XDG_CACHE_HOME/hiercaps-gen`, else `~/.cache/hiercaps-gen`."""
    if os.environ.get("HIERCAPS_CACHE"):
        return Path(os.environ["HIERCAPS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hiercaps-gen"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_address(gguf: Path) -> str:
    """The cache key of a GGUF file's export: its full content hash plus the export version."""
    return hashlib.sha256(f"{file_sha256(gguf)}:{EXPORT_VERSION}".encode()).hexdigest()[:16]


def hf_model_dir(model: str) -> str:
    """A directory or hub id vLLM can load for a config's model value (GGUF exported on first use)."""
    source = resolve(model)
    if not source.gguf_file:
        return source.path
    return str(export_gguf(source))


def export_gguf(source: ModelSource, root: Path | None = None) -> Path:
    """The safetensors directory of a GGUF source, converting it if the cache lacks it."""
    assert source.gguf_file is not None
    gguf = Path(source.path) / source.gguf_file
    target = (root or cache_root()) / "models" / export_address(gguf)
    if (target / MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _convert(source, staging)
        (staging / MARKER).write_text(f'{{"gguf": "{source.gguf_file}", "export_version": "{EXPORT_VERSION}"}}\n')
        try:
            os.rename(staging, target)
        except OSError:  # another process finished first: its directory is the same model
            if not (target / MARKER).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert(source: ModelSource, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": source.gguf_file}
    tokenizer = AutoTokenizer.from_pretrained(source.path, **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32, **kwargs)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # the weights are dequantised now; vLLM refuses "gguf" here
        del config.quantization_config
    # bfloat16: what vLLM runs on CPU (it downcasts float32), at half the disk and load time
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
