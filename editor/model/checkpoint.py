"""Safetensors checkpoints read without loading a model: shards and headers, where each down-projection
tensor lives, tensors one at a time, and a checkpoint's identity (the same one a loaded model reports).
The out-of-core edit, the origin drift and the model card read checkpoints this way."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..artifacts import read_json
from ..errors import ModelLoadError
from ..formats import SAFETENSORS_INDEX, SINGLE_SAFETENSORS
from .loading import (
    LoadedModel,
    ModelSource,
    converted_gguf_folder,
    parse_dtype,
    resolve_source,
    weights_fingerprint,
)
from .registry import ArchSpec, architecture_hash, get_arch


@dataclass
class Checkpoint:
    """A local safetensors checkpoint folder and what it is (for the out-of-core path)."""

    folder: Path
    source: ModelSource
    config: Any

    @property
    def arch(self) -> ArchSpec:
        return get_arch(self.config)


def read_safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and the byte offset where its tensor data starts."""
    with open(path, "rb") as handle:
        size_bytes = handle.read(8)
        if len(size_bytes) != 8:
            raise ModelLoadError(f"{path} is not a safetensors file (shorter than 8 bytes)")
        size = int.from_bytes(size_bytes, "little")
        try:
            header = json.loads(handle.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ModelLoadError(f"{path} is not a safetensors file (unreadable header)") from None
    header.pop("__metadata__", None)
    return header, 8 + size


def checkpoint_shards(folder: Path) -> list[str]:
    """The safetensors files of a checkpoint folder, from its index or the single ``model.safetensors``."""
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        weight_map = read_json(index, "safetensors index").get("weight_map")
        if not isinstance(weight_map, dict):
            raise ModelLoadError(f"{index} has no weight_map")
        return sorted(set(weight_map.values()))
    if (folder / SINGLE_SAFETENSORS).is_file():
        return [SINGLE_SAFETENSORS]
    found = sorted(p.name for p in folder.glob("*.safetensors"))
    raise ModelLoadError(f"checkpoint {folder} has no model.safetensors or {SAFETENSORS_INDEX} "
                         f"(safetensors files found: {', '.join(found) or 'none'})")


def tensor_locations(folder: Path) -> dict[str, str]:
    """Tensor name -> shard file name, for every tensor of the checkpoint."""
    where: dict[str, str] = {}
    for shard in checkpoint_shards(folder):
        header, _ = read_safetensors_header(folder / shard)
        where.update(dict.fromkeys(header, shard))
    return where


def down_proj_tensor_names(names: Iterable[str], arch: ArchSpec, num_layers: int,
                           where: str = "checkpoint") -> dict[int, str]:
    """Map each layer to the name of its down-projection weight tensor in a checkpoint.

    Tensor names need not equal module names: prefixes differ between checkpoint generations (GPT-2
    files without ``transformer.``, gemma3 multimodal files with ``language_model.model.layers`` for the
    module ``model.language_model.layers``). The layer-relative part comes from the registry (last
    component of ``layers``, the layer number, ``down_proj``, ``.weight``); the prefix is whatever one
    prefix holds every layer. Several complete prefixes are resolved by similarity to the registry path.
    """
    container = arch.layers.rsplit(".", 1)[-1]
    pattern = re.compile(rf"(?P<prefix>(?:.*\.)?){re.escape(container)}\.(?P<layer>\d+)\."
                         rf"{re.escape(arch.down_proj)}\.weight")
    by_prefix: dict[str, dict[int, str]] = {}
    for name in names:
        match = pattern.fullmatch(name)
        if match and int(match["layer"]) < num_layers:
            by_prefix.setdefault(match["prefix"], {})[int(match["layer"])] = name
    complete = [p for p, layers in by_prefix.items() if len(layers) == num_layers]
    if len(complete) > 1:
        registry_prefix = arch.layers[: -len(container)]
        same_parts = [p for p in complete if set(p.split(".")) == set(registry_prefix.split("."))]
        complete = [registry_prefix] if registry_prefix in complete else same_parts
    if len(complete) != 1:
        found = {p or "(none)": sorted(layers) for p, layers in by_prefix.items()}
        raise ModelLoadError(
            f"{where}: cannot find one complete set of {num_layers} down-projection tensors named "
            f"'<prefix>{container}.<N>.{arch.down_proj}.weight' (prefixes and layers found: {found or 'none'})"
        )
    return dict(sorted(by_prefix[complete[0]].items()))


def hub_snapshot(repo_id: str, revision: str | None) -> Path:
    """The local files of a Hub model (cached; honours HF_HUB_OFFLINE)."""
    from huggingface_hub import snapshot_download

    patterns = ["*.safetensors", "*.json", "*.txt", "*.model", "*.jinja", "*.tiktoken", "LICENSE*"]
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001 - huggingface_hub raises many types; the message says which
        raise ModelLoadError(f"cannot get the files of Hub model {repo_id!r}: {str(exc).splitlines()[0]}") from None


def local_checkpoint(model: str | LoadedModel, *, dtype: Any = None, revision: str | None = None,
                     trust_remote_code: bool = False) -> Checkpoint:
    """The safetensors folder behind a model spec (or a loaded model), without loading weights.

    GGUF files and aliases use the cached converted folder (converted once, in ``dtype`` or float32).
    """
    from transformers import AutoConfig

    if isinstance(model, LoadedModel):
        source = model.source
        folder = Path(model.folder) if model.folder else hub_snapshot(source.path, source.revision)
        return Checkpoint(folder, source, model.config)
    source = resolve_source(model, revision)
    if source.kind in ("alias", "gguf"):
        wanted = parse_dtype(dtype)
        folder, source.gguf_sha256 = converted_gguf_folder(Path(source.path),
                                                           torch.float32 if wanted == "auto" else wanted)
    elif source.kind == "folder":
        folder = Path(source.path)
    else:
        folder = hub_snapshot(source.path, revision)
        source.revision = revision or folder.name
    try:
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read the config of {model!r} in {folder}: {str(exc).splitlines()[0]}") from None
    return Checkpoint(folder, source, config)


def open_tensors(folder: Path) -> Callable[[str, str], torch.Tensor]:
    """A reader ``get(shard, name)`` that keeps one safe_open handle per shard."""
    from safetensors import safe_open

    handles: dict[str, Any] = {}

    def get(shard: str, name: str) -> torch.Tensor:
        if shard not in handles:
            handles[shard] = safe_open(str(folder / shard), framework="pt")
        return handles[shard].get_tensor(name)

    return get


def checkpoint_fingerprint(ckpt: Checkpoint) -> str:
    """:func:`editor.model.loading.weights_fingerprint` of a checkpoint, streamed one tensor at a time."""
    arch = ckpt.arch
    where = tensor_locations(ckpt.folder)
    names = down_proj_tensor_names(where, arch, arch.num_layers(ckpt.config), str(ckpt.folder))
    get = open_tensors(ckpt.folder)
    return weights_fingerprint(get(where[name], name) for name in names.values())


def checkpoint_identity(ckpt: Checkpoint, fingerprint: str) -> dict[str, Any]:
    """The same identity dict as :meth:`editor.model.loading.LoadedModel.identity`, from files only."""
    arch = ckpt.arch
    return {
        "source": ckpt.source.describe(),
        "model_type": arch.model_type,
        "num_layers": arch.num_layers(ckpt.config),
        "d_ff": arch.d_ff(ckpt.config),
        "architecture_hash": architecture_hash(ckpt.config),
        "weights_fingerprint": fingerprint,
    }
