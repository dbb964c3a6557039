"""Safetensors checkpoints read without loading a model: shards and headers, where each down-projection
tensor lives, tensors one at a time, and a checkpoint's identity (the same one a loaded model reports).
The out-of-core edit, the origin drift and the model card read checkpoints this way."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
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
    fingerprint_step,
    parse_dtype,
    resolve_source,
    samples_fingerprint,
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


# safetensors dtype names -> torch dtypes (every dtype transformers writes)
_TORCH_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
                 "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                 "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
READ_CHUNK = 16 * 2**20  # bytes per read of a streamed tensor


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes are: its shard file and the absolute byte range [begin, end) in it."""

    shard: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def torch_dtype(self) -> torch.dtype | None:
        return _TORCH_DTYPES.get(self.dtype)


def shard_entries(path: Path) -> dict[str, TensorEntry]:
    """Every tensor of one safetensors file, from its header (no tensor data is read)."""
    header, data_start = read_safetensors_header(path)
    try:
        return {name: TensorEntry(path.name, info["dtype"], tuple(info["shape"]), data_start + info["data_offsets"][0],
                                  data_start + info["data_offsets"][1]) for name, info in header.items()}
    except (KeyError, TypeError, IndexError):
        raise ModelLoadError(f"{path} is not a safetensors file (a header entry lacks dtype, shape or "
                             f"data_offsets)") from None


def tensor_entries(folder: Path) -> dict[str, TensorEntry]:
    """Tensor name -> :class:`TensorEntry`, for every tensor of the checkpoint (headers only)."""
    entries: dict[str, TensorEntry] = {}
    for shard in checkpoint_shards(Path(folder)):
        entries.update(shard_entries(Path(folder) / shard))
    return entries


def _read_exactly(handle, view: memoryview, path: Path, end: int) -> None:
    done = 0
    while done < view.nbytes:
        got = handle.readinto(view[done:])
        if not got:
            raise ModelLoadError(f"{path} is truncated: tensor data ends before byte {end}")
        done += got


def read_tensor(folder: Path, entry: TensorEntry) -> torch.Tensor:
    """One tensor, read into fresh memory with plain file reads.

    Not memory-mapped: the pages of a mapping stay in the process's resident set while it is open, so
    reading every tensor of a 16 GB checkpoint through safetensors' mmap would count the whole checkpoint
    as this process's memory; here only the returned tensor is resident."""
    dtype = entry.torch_dtype
    if dtype is None:
        raise ModelLoadError(f"{Path(folder) / entry.shard}: tensor dtype {entry.dtype} is not supported")
    out = torch.empty(entry.shape, dtype=dtype)
    view = memoryview(out.reshape(-1).view(torch.uint8).numpy())
    if view.nbytes != entry.nbytes:
        raise ModelLoadError(f"{Path(folder) / entry.shard}: a {entry.dtype} tensor of shape {list(entry.shape)} "
                             f"cannot fill its {entry.nbytes}-byte range")
    with open(Path(folder) / entry.shard, "rb", buffering=0) as handle:
        handle.seek(entry.begin)
        _read_exactly(handle, view, Path(folder) / entry.shard, entry.end)
    return out


def iter_file_bytes(path: Path, begin: int, end: int, chunk: int = READ_CHUNK) -> Iterator[memoryview]:
    """Bytes [begin, end) of a file in pieces of exactly ``chunk`` bytes (the last one shorter), each a
    memory-mapped window of the file's pages: nothing is copied through the kernel (reads cost a copy per
    byte, the larger part of an 8B edit's time here), and each window is unmapped before the next one,
    so the process's resident memory stays at one window. A piece is valid until the next is asked for."""
    import mmap

    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size < end:
            raise ModelLoadError(f"{path} is truncated: tensor data ends before byte {end}")
        position = begin
        while position < end:
            size = min(chunk, end - position)
            start = position - position % mmap.ALLOCATIONGRANULARITY
            window = mmap.mmap(handle.fileno(), position + size - start, offset=start, access=mmap.ACCESS_READ)
            whole = memoryview(window)
            piece = whole[position - start:]
            try:
                yield piece
            finally:
                piece.release()
                whole.release()
                window.close()
            position += size


def iter_tensor_bytes(folder: Path, entry: TensorEntry, chunk: int = READ_CHUNK) -> Iterator[memoryview]:
    """A tensor's raw bytes (:func:`iter_file_bytes`): two tensors of the same size yield pieces of the same
    sizes, whatever their offsets in their files."""
    return iter_file_bytes(Path(folder) / entry.shard, entry.begin, entry.end, chunk)


def open_tensors(folder: Path) -> Callable[[str, str], torch.Tensor]:
    """A reader ``get(shard, name)`` of single tensors (each shard's header read once; :func:`read_tensor`)."""
    headers: dict[str, dict[str, TensorEntry]] = {}

    def get(shard: str, name: str) -> torch.Tensor:
        if shard not in headers:
            headers[shard] = shard_entries(Path(folder) / shard)
        return read_tensor(folder, headers[shard][name])

    return get


def index_report(folder: Path) -> dict[str, Any]:
    """Is the checkpoint's index consistent with its shards? Read from the index and the headers only.

    Checks: every tensor of the weight map is in the shard it names, every shard's tensors are in the map
    (under that shard), no tensor is in two shards, each shard's tensor ranges tile its data section and
    the file ends where its last tensor does (a truncated or padded shard fails), and ``total_size`` (when
    given) is the sum of the tensor bytes. Returns the figures and a list of ``problems`` (empty: consistent).
    """
    folder = Path(folder)
    index_path = folder / SAFETENSORS_INDEX
    index = read_json(index_path, "safetensors index") if index_path.is_file() else None
    problems: list[str] = []
    seen: dict[str, str] = {}
    total = 0
    shards = checkpoint_shards(folder)
    for shard in shards:
        path = folder / shard
        if not path.is_file():
            problems.append(f"shard {shard} is missing")
            continue
        _, data_start = read_safetensors_header(path)
        entries = shard_entries(path)
        for name in entries:
            if name in seen:
                problems.append(f"tensor {name} is in two shards ({seen[name]}, {shard})")
            seen[name] = shard
        ranges = sorted((e.begin, e.end) for e in entries.values())
        position = data_start
        for begin, end in ranges:
            if begin != position or end < begin:
                problems.append(f"{shard}: tensor data does not tile the file (a gap or overlap at byte {begin})")
                break
            position = end
        size = path.stat().st_size
        if size != position:
            problems.append(f"{shard}: the file is {size} bytes, its header describes {position}")
        total += sum(e.nbytes for e in entries.values())
    if index is not None:
        weight_map = index.get("weight_map") or {}
        for name, shard in weight_map.items():
            if seen.get(name) != shard:
                problems.append(f"index maps {name} to {shard}, but " +
                                (f"it is in {seen[name]}" if name in seen else "no shard holds it"))
        problems += [f"{name} (in {seen[name]}) is not in the index" for name in sorted(set(seen) - set(weight_map))]
        stated = (index.get("metadata") or {}).get("total_size")
        if stated is not None and int(stated) != total:
            problems.append(f"index total_size {stated} != {total} bytes of tensors")
    return {"index": SAFETENSORS_INDEX if index is not None else None, "shards": len(shards), "tensors": len(seen),
            "tensor_bytes": total, "problems": problems[:20], "consistent": not problems}


def read_strided(folder: Path, entry: TensorEntry, step: int) -> torch.Tensor:
    """Elements 0, step, 2 step, ... of a tensor (flattened), reading only those elements' pages.

    Read-ahead is switched off for the file, so a sample every ``step`` elements costs one page read
    each instead of the whole tensor (the fingerprint of an 8B checkpoint reads 0.5 GB, not 3.7 GB)."""
    dtype = entry.torch_dtype
    item = torch.empty((), dtype=dtype).element_size() if dtype is not None else 0
    if dtype is None or step * item < 4096:  # samples closer than a page: reading everything is as cheap
        return read_tensor(folder, entry).reshape(-1)[::step].clone()
    count = -(-(entry.nbytes // item) // step)
    buffer = bytearray(count * item)
    fd = os.open(Path(folder) / entry.shard, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, entry.begin, entry.nbytes, os.POSIX_FADV_RANDOM)
        for k in range(count):
            value = os.pread(fd, item, entry.begin + k * step * item)
            if len(value) != item:
                raise ModelLoadError(f"{Path(folder) / entry.shard} is truncated: tensor data ends before byte "
                                     f"{entry.end}")
            buffer[k * item:(k + 1) * item] = value
    finally:
        os.close(fd)
    return torch.frombuffer(buffer, dtype=dtype)


def checkpoint_fingerprint(ckpt: Checkpoint) -> str:
    """:func:`editor.model.loading.weights_fingerprint` of a checkpoint, from the sampled elements only."""
    arch = ckpt.arch
    entries = tensor_entries(ckpt.folder)
    names = down_proj_tensor_names(entries, arch, arch.num_layers(ckpt.config), str(ckpt.folder))
    def sample(name: str) -> torch.Tensor:
        entry = entries[name]
        return read_strided(ckpt.folder, entry, fingerprint_step(math.prod(entry.shape)))

    # one page read per sample; 16 tensors at a time keep the disk busy (8B, cold: 18.5 s one by one, 2.7 s so)
    with ThreadPoolExecutor(16, thread_name_prefix="hneurons-fingerprint") as pool:
        return samples_fingerprint(list(pool.map(sample, names.values())))


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
