"""The weights form of an edit: a patched checkpoint, written from the loaded model or streamed shard by
shard from the source files (out of core). The exact tensor check is :class:`editor.edit.verify.CheckpointCheck`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ModelLoadError
from ..formats import EDIT_MANIFEST, GGUF_SOURCE, SAFETENSORS_INDEX, SINGLE_SAFETENSORS
from ..model.checkpoint import (
    READ_CHUNK,
    checkpoint_shards,
    down_proj_tensor_names,
    read_safetensors_header,
    read_tensor,
    shard_entries,
    tensor_entries,
    tensor_locations,
)
from ..model.hooks import (
    LayerScale,
    down_proj_modules,
    down_weight,
    neuron_axis,
    scale_columns_,
)
from ..model.loading import LoadedModel
from ..model.registry import ArchSpec, get_arch
from .settings import EditSettings

if TYPE_CHECKING:
    from .verify import CheckpointCheck

DEFAULT_MAX_SHARD_SIZE = EditSettings.model_fields["max_shard_size"].default  # declared once, in the settings


# Files of a checkpoint folder that are never copied by the out-of-core path: weights in other formats
# (they would carry the unedited model), the original model card (it describes another model), and
# hneurons' own cache metadata.
_SKIP_SUFFIXES = (".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt", ".onnx", ".safetensors")


_SKIP_NAMES = {"README.md", GGUF_SOURCE, EDIT_MANIFEST}


@contextlib.contextmanager
def _columns_scaled(model: torch.nn.Module, arch: ArchSpec, scales: Mapping[int, LayerScale]) -> Iterator[None]:
    """Scale the neurons' write vectors in place for the duration, then restore the exact originals."""
    modules = down_proj_modules(model, arch)
    axis = neuron_axis(arch)
    saved = {}
    with torch.no_grad():
        for layer, scale in scales.items():
            weight = down_weight(modules[layer])
            idx = scale.index.to(weight.device)
            saved[layer] = (weight, idx, weight.index_select(axis, idx).clone())
            scale_columns_(weight, arch, idx, scale.alpha)
    try:
        yield
    finally:
        with torch.no_grad():
            for weight, idx, original in saved.values():
                weight.index_copy_(axis, idx, original)


def write_checkpoint(lm: LoadedModel, scales: Mapping[int, LayerScale], folder: str | Path, *,
                     max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE) -> dict[int, str]:
    """Write the edited model into ``folder`` with ``save_pretrained`` (plus the tokenizer).

    The loaded model is edited in place only while saving; its original columns are restored exactly
    afterwards (also on errors). Returns layer -> name of the rewritten down-projection tensor.
    """
    folder = Path(folder)
    with _columns_scaled(lm.model, lm.arch, scales):
        lm.model.save_pretrained(folder, max_shard_size=max_shard_size)
    lm.tokenizer.save_pretrained(folder)
    ensure_index(folder)
    names = down_proj_tensor_names(tensor_locations(folder), lm.arch, lm.num_layers, str(folder))
    return {layer: names[layer] for layer in scales}


def ensure_index(folder: Path) -> None:
    """Give a single-file checkpoint a ``model.safetensors.index.json`` too.

    transformers ignores it (it prefers ``model.safetensors``), but loaders that otherwise glob
    ``*.safetensors`` (vLLM) use it to skip ``probe.safetensors``, the evidence shipped beside the weights.
    """
    if (folder / SAFETENSORS_INDEX).is_file() or not (folder / SINGLE_SAFETENSORS).is_file():
        return
    header, _ = read_safetensors_header(folder / SINGLE_SAFETENSORS)
    total = sum(end - begin for begin, end in (info["data_offsets"] for info in header.values()))
    index = {"metadata": {"total_size": total}, "weight_map": dict.fromkeys(sorted(header), SINGLE_SAFETENSORS)}
    (folder / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")


def _copy_side_files(src: Path, dst: Path) -> list[str]:
    """Copy config, generation config, tokenizer and other small top-level files (not weights)."""
    copied = []
    for path in sorted(src.iterdir()):
        if (not path.is_file() or path.name.startswith(".") or path.name in _SKIP_NAMES
                or path.name.endswith(_SKIP_SUFFIXES)):
            continue
        shutil.copyfile(path, dst / path.name)
        copied.append(path.name)
    return copied


def _tensor_bytes(tensor: torch.Tensor):
    """The raw little-endian bytes of a tensor as a buffer (no copy for contiguous tensors)."""
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy()


def _copy_range(source, out, begin: int, end: int, buffer: memoryview) -> None:
    """Copy bytes [begin, end) of the open file ``source`` to ``out`` at its current position.

    In the kernel (``os.copy_file_range``, as ``cp`` does: no copy through this process, 2x faster than
    reads and writes on an 8B checkpoint here); through ``buffer`` where the file system does not support it."""
    position = out.tell()
    while begin < end:
        try:
            done = os.copy_file_range(source.fileno(), out.fileno(), end - begin, begin, position)
        except OSError:  # e.g. EXDEV or EINVAL on older kernels / some file systems
            done = None
        if done is None:
            source.seek(begin)
            view = buffer[:min(end - begin, len(buffer))]
            done = source.readinto(view)
            if done:
                os.pwrite(out.fileno(), view[:done], position)
        if not done:
            raise ModelLoadError(f"{source.name} is truncated: its data ends before byte {end}")
        begin, position = begin + done, position + done
    out.seek(position)


def rewrite_safetensors_out_of_core(src: str | Path, dst: str | Path, scales: Mapping[int, LayerScale],
                                    config: Any, *, check: CheckpointCheck | None = None) -> dict[int, str]:
    """Stream a safetensors checkpoint from ``src`` into ``dst`` with the neurons' columns scaled.

    Each shard is written in one sequential pass, in file order: its header and every untouched tensor
    copied byte for byte in 16 MiB reads, and every affected down-projection read alone, scaled with
    :func:`editor.model.hooks.scale_columns_` (the same arithmetic as the in-memory path, so the bytes are
    identical) and written in its own byte range. Headers, tensor order, shard names and the index are
    unchanged, so every other byte of the output equals the source. The model is never instantiated.
    ``check`` (an :class:`editor.edit.verify.CheckpointCheck`) is told of each tensor as soon as it is
    written, and checks it while both copies are still in the page cache (memory: a few tensors, whatever
    the machine's RAM), then of each finished shard. Returns layer -> rewritten tensor name.
    """
    src, dst = Path(src), Path(dst)
    arch = get_arch(config)
    where = tensor_entries(src)
    names = down_proj_tensor_names(where, arch, arch.num_layers(config), str(src))
    targets = {layer: names[layer] for layer in scales}
    layer_of = {name: layer for layer, name in targets.items()}
    dst.mkdir(parents=True, exist_ok=True)
    buffer = memoryview(bytearray(READ_CHUNK))
    from tqdm.auto import tqdm

    for shard in tqdm(checkpoint_shards(src), desc="rewriting shards", unit="shard", disable=None):
        entries = sorted(shard_entries(src / shard).items(), key=lambda item: item[1].begin)
        size = (src / shard).stat().st_size
        with open(src / shard, "rb", buffering=0) as source, open(dst / shard, "wb", buffering=0) as out:
            data_start = entries[0][1].begin if entries else size
            _copy_range(source, out, 0, data_start, buffer)  # the header, byte for byte
            if check is not None:
                check.begin_shard(shard)
            position = data_start
            for name, entry in entries:
                if entry.begin != position:
                    raise ModelLoadError(f"{src / shard}: tensor {name} starts at byte {entry.begin}, not where the "
                                         f"one before it ends ({position})")
                if name in layer_of:
                    scale = scales[layer_of[name]]
                    tensor = read_tensor(src, entry)
                    scale_columns_(tensor, arch, scale.index, scale.alpha)
                    data = _tensor_bytes(tensor)
                    assert data.nbytes == entry.nbytes, f"{name}: {data.nbytes} bytes for a {entry.nbytes}-byte slot"
                    out.write(data)
                    del tensor, data
                else:
                    _copy_range(source, out, entry.begin, entry.end, buffer)
                position = entry.end
                if check is not None:
                    check.tensor(name)
            _copy_range(source, out, position, size, buffer)  # anything after the last tensor
        if check is not None:
            check.end_shard(shard)
    _copy_side_files(src, dst)
    ensure_index(dst)
    return targets
