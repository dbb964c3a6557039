"""The gguf form of an edit: the fixed model as one GGUF file, for llama.cpp, Ollama and LM Studio.

**From a GGUF source** (an embedded alias or a ``.gguf`` file) the source file is patched, streamed: the
header, every metadata key (architecture, tokenizer, chat template, ... as raw bytes) and every tensor that
the edit does not touch are copied byte for byte, with the same quantization types and the same alignment;
only the down-projection tensors (``blk.L.ffn_down.weight``) of layers with edited neurons are rewritten:
dequantized, the neurons' columns multiplied by alpha, and stored in the type the ``gguf_type`` setting
names:

* ``source``: each tensor keeps its own type, when the ``gguf`` package can quantize it (F32, F16, BF16,
  Q8_0, Q5_0, Q5_1, Q4_0, Q4_1; it cannot quantize K-quants such as Q4_K or Q6_K, nor IQ types). Only the
  quantization blocks that hold an edited neuron are re-encoded (a block is 32 consecutive neurons of one
  row); every other block keeps its source bytes;
* ``Q8_0``, ``F16``, ``F32``: the whole tensor in that type;
* ``auto`` (the default): the most compact of these that passes verification, never less precise than the
  source: ``source`` when it can be written, then Q8_0, F16 and F32 (those at least as many bits per weight
  as the source's). The choice and every tried type's numbers are in the manifest.

Metadata keys ``hneurons.*`` (version, neuron set sha256 and count, alpha, the source's sha256 and a JSON
summary) are appended; readers ignore keys they do not know (llama.cpp and transformers do). The source is
read one tensor at a time (plain file reads for copies, a memory map for the rewritten tensors), so the
peak memory is about one down-projection tensor in float32.

**From a safetensors source** (a local folder or a Hub id) the GGUF comes from llama.cpp's own converter,
``convert_hf_to_gguf.py`` (the ``llama-convert-hf-to-gguf`` command of llama.cpp's ``llama-cpp-scripts``
package: ``pip install`` a llama.cpp checkout, or its copy in the llama-cpp-python source distribution,
``vendor/llama.cpp``); hneurons does not convert architectures itself. The converter writes the unedited
model (``--outtype`` f32 / f16 / bf16 / q8_0: the requested type, for ``auto`` the checkpoint's own
dtype), which is then patched as above with ``source``; it is removed before the output appears.

**Verification** (before the file is kept, like every edit): the written file is read back with ``gguf``:

* every metadata key of the source is present with the same type and bytes, the ``hneurons.*`` keys too;
* every untouched tensor has the source's type, shape and bytes;
* every rewritten tensor dequantizes to the intended values (source dequantized, columns times alpha):
  bit for bit in F32; within the type's documented error otherwise (:data:`VALUE_ERROR`: one quantization
  step of the value's block, or the float's half-ulp);

then its logits are compared, in float32 on the ``verify_prompts``, with the source model under run-time
activation scaling (the reference of every edit): first with the rewritten tensors read back into the
loaded model (quick, used to choose the type), then with the file loaded by transformers' GGUF loader.
The reference of a GGUF source is the source GGUF as hneurons loads it (dequantized to float32); that of
a converted safetensors source is the converter's unedited GGUF, loaded the same way, so the check
measures the edit's storage and nothing else (the conversion's own difference from the safetensors model
is reported beside it). Tolerance on the max abs logit difference D, with E the edit's own effect (max
abs logit change of run-time scaling on the same prompts)::

    D <= 1e-4 + EDIT_FRACTION[type] x E

F32 is exact (1e-4, as for float32 checkpoints); lossy types may miss at most the stated fraction of the
edit's effect (:data:`EDIT_FRACTION`), so quantization cannot erase the edit and still pass. The
manifest records D (``quantization_error_max_abs``), E and their ratio for every type tried.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError, ModelLoadError, VerificationError
from ..model.hooks import (
    LayerScale,
    arch_of,
    down_proj_modules,
    down_weight,
    neuron_axis,
)
from ..model.loading import LoadedModel
from ..model.registry import ArchSpec
from .verify import (
    FP32_TOLERANCE,
    HALF_DTYPES,
    Reference,
    as_float32,
    max_abs_diff,
    prompt_logits,
)

# Types the patcher writes: those gguf-py quantizes that every GGUF runtime reads (TQ*/MXFP4 are left out).
WRITABLE = ("F32", "F16", "BF16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0")
EXPLICIT = ("Q8_0", "F16", "F32")  # whole-tensor types a user can ask for besides "source"
# Largest logit difference allowed, as a fraction of the edit's own effect E (module docstring), from the
# ratios D/E measured on SmolLM2-135M (Q4_1) and Gemma 3 270M (Q4_K_M) with about 2x headroom (README,
# GGUF): edited Q4_1 blocks 0.12-0.24, whole tensors re-encoded to Q8_0 0.12 (Gemma; SmolLM2: 0.94, which
# fails: its down-projections are too sensitive), to F16 0.005-0.03. A wrong neuron or layer gives D ~ E.
EDIT_FRACTION = {"F32": 0.0, "F16": 0.05, "BF16": 0.1, "Q8_0": 0.25, "Q5_1": 0.3, "Q5_0": 0.3,
                 "Q4_1": 0.4, "Q4_0": 0.4}
# Documented error of one rewritten value: floats, a fraction of |x| (half-ulp) plus the smallest subnormal
# step; quantized types, one quantization step of the value's block: (max - min) / levels for the types
# with a block minimum (Q4_1, Q5_1), max |x| / levels for the symmetric ones.
FLOAT_ERROR = {"F32": (0.0, 0.0), "F16": (2.0**-11, 2.0**-24), "BF16": (2.0**-8, 2.0**-133)}
BLOCK_STEP = {"Q8_0": ("absmax", 127), "Q5_0": ("absmax", 16), "Q4_0": ("absmax", 8),
              "Q5_1": ("range", 31), "Q4_1": ("range", 15)}
KEY_PREFIX = "hneurons."
CONVERTER_COMMAND = "llama-convert-hf-to-gguf"
CONVERTER_SCRIPT = "convert_hf_to_gguf.py"
CONVERTER_OUTTYPE = {"F32": "f32", "F16": "f16", "BF16": "bf16", "Q8_0": "q8_0"}
_COPY_CHUNK = 1 << 22  # plain reads of 4 MiB: the copy never holds more
_FLOAT_NAME = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def _qtype(name: str):
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType[name]


@lru_cache(maxsize=None)
def can_write(type_name: str) -> bool:
    """Whether the patcher can store a tensor in this type (the installed gguf package can quantize it)."""
    if type_name not in WRITABLE:
        return False
    from gguf import GGML_QUANT_SIZES
    from gguf.quants import quantize

    block = GGML_QUANT_SIZES[_qtype(type_name)][0]
    try:
        quantize(np.zeros((1, block), np.float32), _qtype(type_name))
    except NotImplementedError:
        return False
    return True


def bits_per_weight(type_name: str) -> float:
    from gguf import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[_qtype(type_name)]
    return 8.0 * size / block


# ============================================================================================== reading
@dataclass
class GGUFFile:
    """A GGUF file opened for reading (memory-mapped by gguf's reader; nothing is loaded)."""

    path: Path
    reader: Any

    @property
    def tensors(self) -> dict[str, Any]:
        return {t.name: t for t in self.reader.tensors}

    @property
    def fields(self) -> list[Any]:
        """The metadata entries in file order (gguf's reader adds GGUF.* pseudo-fields for the header)."""
        return [f for name, f in self.reader.fields.items() if not name.startswith("GGUF.")]

    @property
    def version(self) -> int:
        return int(self.reader.fields["GGUF.version"].parts[-1][0])

    def value(self, key: str) -> Any:
        item = self.reader.fields.get(key)
        return None if item is None else item.contents()


def field_bytes(item: Any) -> int:
    return sum(int(part.nbytes) for part in item.parts)


def open_gguf(path: str | os.PathLike, what: str = "GGUF file") -> GGUFFile:
    """Open a GGUF file; a damaged, truncated or big-endian file is one ModelLoadError naming it."""
    from gguf import GGUFReader

    path = Path(path)
    size = path.stat().st_size
    try:
        reader = GGUFReader(str(path))
    except (ValueError, IndexError, KeyError, TypeError, OSError) as exc:
        raise ModelLoadError(f"{what} {path} is damaged or truncated ({size} bytes; gguf: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); re-download it") from None
    if reader.byte_order != "I":
        raise ModelLoadError(f"{what} {path} is big-endian; hneurons writes little-endian GGUF files only (convert it "
                             f"with gguf's gguf-convert-endian)")
    for tensor in reader.tensors:
        end = int(tensor.data_offset) + int(tensor.n_bytes)
        if end > size:
            raise ModelLoadError(f"{what} {path} is truncated: tensor {tensor.name} ends at byte {end} but the file "
                                 f"has {size}; re-download it")
    return GGUFFile(path, reader)


def down_tensor_name(layer: int) -> str:
    """llama.cpp's name of a layer's down-projection (gguf-py's MODEL_TENSOR.FFN_DOWN)."""
    from gguf import MODEL_TENSOR, TENSOR_NAMES

    return TENSOR_NAMES[MODEL_TENSOR.FFN_DOWN].format(bid=layer) + ".weight"


# ================================================================================================ plan
@dataclass(frozen=True)
class TensorEdit:
    """One rewritten tensor: which layer's neurons, their scales, and the type it is stored in."""

    name: str
    layer: int
    scale: LayerScale
    source_type: str
    out_type: str


def source_types(src: GGUFFile, layers: list[int]) -> dict[str, str]:
    """Name -> type of the down-projection tensors of ``layers`` (an InputError when one is missing)."""
    tensors = src.tensors
    out = {}
    for layer in layers:
        name = down_tensor_name(layer)
        if name not in tensors:
            raise InputError(f"GGUF file {src.path} has no tensor {name} (layer {layer}'s down-projection)")
        out[name] = tensors[name].tensor_type.name
    return out


def candidate_types(types: Mapping[str, str], requested: str, where: Path) -> list[str]:
    """The storage types to try, in order (``auto``: most compact first, never below the source's precision)."""
    if requested == "source":
        bad = {n: t for n, t in types.items() if not can_write(t)}
        if bad:
            name, kind = next(iter(bad.items()))
            raise InputError(f"--gguf-type source: {where} stores {name} as {kind}, which the gguf package can read "
                             f"but not write; choose Q8_0, F16 or F32 (or auto)")
        return ["source"]
    if requested != "auto":
        if not can_write(requested):
            raise InputError(f"GGUF type {requested} cannot be written by the installed gguf package; choose "
                             f"source, Q8_0, F16 or F32 (or auto)")
        return [requested]
    floor = max(bits_per_weight(t) for t in types.values())
    out = ["source"] if all(can_write(t) for t in types.values()) else []
    out += [t for t in EXPLICIT if bits_per_weight(t) >= floor and set(types.values()) != {t}]
    return out


def plan_edits(src: GGUFFile, scales: Mapping[int, LayerScale], choice: str, d_ff: int) -> dict[str, TensorEdit]:
    from gguf import GGML_QUANT_SIZES

    types = source_types(src, sorted(scales))
    tensors = src.tensors
    edits = {}
    for layer, scale in sorted(scales.items()):
        name = down_tensor_name(layer)
        out_type = types[name] if choice == "source" else choice
        shape = [int(n) for n in tensors[name].shape]  # ggml order: ne0 (= the neurons, d_ff) first
        if shape[0] != d_ff:
            raise InputError(f"GGUF tensor {name} of {src.path} has shape {shape}; expected {d_ff} neurons along its "
                             f"first (ggml) dimension")
        block = GGML_QUANT_SIZES[_qtype(out_type)][0]
        if d_ff % block:
            raise InputError(f"GGUF type {out_type} stores rows in blocks of {block} values, but {name} has rows of "
                             f"{d_ff}; choose F16 or F32")
        edits[name] = TensorEdit(name, layer, scale, types[name], out_type)
    return edits


# ============================================================================================ encoding
def _raw(tensor: Any) -> np.ndarray:
    """A tensor's stored bytes as [rows, bytes per row] uint8 (a copy: the source map stays read-only)."""
    data = np.array(tensor.data)
    return data.view(np.uint8).reshape(data.shape[0] if data.ndim > 1 else 1, -1)


def _dequantize(raw: np.ndarray, type_name: str) -> np.ndarray:
    from gguf.quants import dequantize

    return np.asarray(dequantize(raw, _qtype(type_name)), dtype=np.float32).reshape(raw.shape[0], -1)


def _quantize(values: np.ndarray, type_name: str) -> np.ndarray:
    from gguf.quants import quantize

    out = np.ascontiguousarray(quantize(values, _qtype(type_name)))
    return out.view(np.uint8).reshape(values.shape[0], -1)


def _scale_columns(values: np.ndarray, columns: np.ndarray, alpha: np.ndarray) -> None:
    values[:, columns] = values[:, columns] * alpha[None, :]  # float32 x float32, as the in-memory edit


def intended_values(tensor: Any, scale: LayerScale) -> np.ndarray:
    """What the edit means for a tensor: the source dequantized to float32, the neurons' columns times alpha."""
    values = _dequantize(_raw(tensor), tensor.tensor_type.name)
    _scale_columns(values, scale.index.numpy(), scale.alpha.numpy())
    return values


def encode(tensor: Any, edit: TensorEdit) -> np.ndarray:
    """The rewritten tensor's bytes: in another type, the whole tensor re-encoded; in its own type only the
    blocks that hold an edited neuron (:func:`_patch_blocks`)."""
    idx, alpha = edit.scale.index.numpy(), edit.scale.alpha.numpy()
    if edit.out_type != edit.source_type:
        values = _dequantize(_raw(tensor), edit.source_type)
        _scale_columns(values, idx, alpha)
        return _quantize(values, edit.out_type)
    from gguf import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[_qtype(edit.source_type)]
    raw = _raw(tensor)
    rows = raw.shape[0]
    grid = raw.reshape(rows, -1, size)  # [rows, blocks, bytes per block]
    blocks = np.unique(idx // block)
    part = np.ascontiguousarray(grid[:, blocks, :]).reshape(rows * len(blocks), size)
    where = np.searchsorted(blocks, idx // block)  # each neuron's block among `blocks`
    _patch_blocks(part, edit.source_type, len(blocks), where, idx % block, alpha)
    grid[:, blocks, :] = part.reshape(rows, len(blocks), size)
    return raw


# The classic block types: (a block minimum follows the float16 scale, bytes before the 4-bit levels, bits
# per level, the level that means zero). Layout as in ggml: scale d [, min m] [, 32 fifth bits], then 4-bit
# levels, element j in the low nibble of byte j % 16 (j < 16) or the high one; value = d (q - zero) + m.
_GRID = {"Q4_0": (False, 2, 4, 8), "Q4_1": (True, 4, 4, 0), "Q5_0": (False, 6, 5, 16), "Q5_1": (True, 8, 5, 0),
         "Q8_0": (False, 2, 8, 0)}


def _patch_blocks(part: np.ndarray, type_name: str, n_blocks: int, where: np.ndarray, position: np.ndarray,
                  alpha: np.ndarray) -> None:
    """In place, on [rows x n_blocks, bytes] blocks: scale the edited values.

    A block keeps its scale (and minimum) and only the edited values move, to the level of that grid nearest
    to alpha x value: the block's other values stay bit-identical (re-fitting the block would move them all,
    which on SmolLM2 costs three times the error of the edited values themselves). A block in which a scaled
    value falls outside the grid's range (alpha > 1 on its largest value) is quantized anew. Float types
    (block of one value) are simply re-encoded.
    """
    values = _dequantize(part, type_name)
    intended = values.copy()
    rows = np.arange(part.shape[0] // n_blocks) * n_blocks
    for block, pos, a in zip(where, position, alpha):
        intended[rows + block, pos] = values[rows + block, pos] * a
    if type_name not in _GRID:
        part[:] = _quantize(intended, type_name)
        return
    refit = np.zeros(part.shape[0], bool)
    for block, pos in zip(where, position):
        refit[rows + block] |= ~_set_level(part, rows + block, pos, intended[rows + block, pos], type_name)
    if refit.any():
        part[refit] = _quantize(intended[refit], type_name)


def _set_level(part: np.ndarray, which: np.ndarray, pos: int, target: np.ndarray, type_name: str) -> np.ndarray:
    """Set value ``pos`` of blocks ``which`` to the grid level nearest ``target``; returns where it was in range."""
    has_min, start, bits, zero = _GRID[type_name]
    blocks = part[which]
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)[:, 0]
    m = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)[:, 0] if has_min else np.float32(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        level = np.where(d == 0, zero, np.floor((target - m) / d + 0.5) + zero)
    low, high = (-128, 127) if bits == 8 else (0, 2**bits - 1)
    ok = (level >= low) & (level <= high) & ((d != 0) | (target == m))
    q = np.clip(level, low, high).astype(np.int64)
    if bits == 8:
        blocks[:, start + pos] = q.astype(np.int8).view(np.uint8)
    else:
        byte, shift = start + pos % 16, 4 * (pos // 16)
        blocks[:, byte] = (blocks[:, byte] & (0xFF ^ (0xF << shift))) | ((q & 0xF) << shift).astype(np.uint8)
        if bits == 5:
            qh = blocks[:, start - 4:start].copy().view("<u4")[:, 0]
            qh = (qh & ~np.uint32(1 << pos)) | ((q >> 4).astype(np.uint32) << np.uint32(pos))
            blocks[:, start - 4:start] = qh.astype("<u4").view(np.uint8).reshape(-1, 4)
    part[which] = np.where(ok[:, None], blocks, part[which])
    return ok


# ============================================================================================= writing
def _gguf_string(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def _kv_entry(key: str, value: str | int | float) -> bytes:
    """One metadata entry: STRING, UINT32 or FLOAT32 (enough for the hneurons keys)."""
    from gguf import GGUFValueType

    if isinstance(value, str):
        return _gguf_string(key) + struct.pack("<I", GGUFValueType.STRING) + _gguf_string(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return _gguf_string(key) + struct.pack("<II", GGUFValueType.UINT32, value)
    return _gguf_string(key) + struct.pack("<If", GGUFValueType.FLOAT32, float(value))


def _tensor_info(name: str, shape: list[int], type_id: int, offset: int) -> bytes:
    return (_gguf_string(name) + struct.pack("<I", len(shape)) + struct.pack(f"<{len(shape)}Q", *shape)
            + struct.pack("<IQ", type_id, offset))


def _padded(offset: int, alignment: int) -> int:
    return offset + (-offset % alignment)


def _copy_range(src, dst, start: int, length: int) -> None:
    """Copy bytes with plain reads: memory stays at one chunk (a memory map would keep the pages resident)."""
    src.seek(start)
    while length > 0:
        chunk = src.read(min(_COPY_CHUNK, length))
        if not chunk:
            raise ModelLoadError(f"{src.name} ended early while copying tensor data")
        dst.write(chunk)
        length -= len(chunk)


def _layout(src: GGUFFile, edits: Mapping[str, TensorEdit]) -> list[tuple[Any, int, int, int]]:
    """Per tensor, in the source's order: (tensor, type id, bytes, offset in the data section)."""
    from gguf import GGML_QUANT_SIZES

    rows, offset = [], 0
    for tensor in src.reader.tensors:
        type_id, nbytes = int(tensor.tensor_type), int(tensor.n_bytes)
        if tensor.name in edits:
            qtype = _qtype(edits[tensor.name].out_type)
            block, size = GGML_QUANT_SIZES[qtype]
            type_id, nbytes = int(qtype), int(tensor.n_elements) // block * size
        offset = _padded(offset, src.reader.alignment)
        rows.append((tensor, type_id, nbytes, offset))
        offset += nbytes
    return rows


def write_patched_gguf(src: GGUFFile, out: Path, edits: Mapping[str, TensorEdit],
                       metadata: Mapping[str, str | int | float]) -> None:
    """Write ``out``: the source's header, metadata and tensors, with ``edits`` re-encoded and ``metadata``
    appended (former ``hneurons.*`` keys of the source are replaced)."""
    kept = [f for f in src.fields if not f.name.startswith(KEY_PREFIX)]
    extra = [_kv_entry(key, value) for key, value in metadata.items()]
    layout = _layout(src, edits)
    align = src.reader.alignment
    with open(src.path, "rb") as fin, open(out, "wb") as fout:
        fout.write(b"GGUF" + struct.pack("<IQQ", src.version, len(layout), len(kept) + len(extra)))
        for item in kept:
            _copy_range(fin, fout, int(item.offset), field_bytes(item))
        for entry in extra:
            fout.write(entry)
        for tensor, type_id, _, offset in layout:
            fout.write(_tensor_info(tensor.name, [int(n) for n in tensor.shape], type_id, offset))
        start = _padded(fout.tell(), align)
        for tensor, _, nbytes, offset in layout:
            fout.write(b"\0" * (start + offset - fout.tell()))
            if tensor.name in edits:
                data = encode(tensor, edits[tensor.name])
                assert data.nbytes == nbytes, f"{tensor.name}: {data.nbytes} bytes for a {nbytes}-byte slot"
                fout.write(data.tobytes())
                del data
            else:
                _copy_range(fin, fout, int(tensor.data_offset), nbytes)
        fout.write(b"\0" * (_padded(fout.tell(), align) - fout.tell()))  # as gguf's writer ends a file


# ============================================================================================== checks
def _same_bytes(a, b, start_a: int, start_b: int, length: int) -> bool:
    a.seek(start_a)
    b.seek(start_b)
    while length > 0:
        n = min(_COPY_CHUNK, length)
        if a.read(n) != b.read(n):
            return False
        length -= n
    return True


def _metadata_differences(src: GGUFFile, out: GGUFFile, metadata: Mapping[str, Any]) -> list[str]:
    written = {f.name: f for f in out.fields}
    problems = []
    with open(src.path, "rb") as a, open(out.path, "rb") as b:
        for item in src.fields:
            if item.name.startswith(KEY_PREFIX):
                continue
            other = written.get(item.name)
            if other is None:
                problems.append(f"key {item.name} missing")
            elif field_bytes(item) != field_bytes(other) or not _same_bytes(a, b, int(item.offset), int(other.offset),
                                                                             field_bytes(item)):
                problems.append(f"key {item.name} differs")
    for key, value in metadata.items():
        got = out.value(key)
        if got != value and not (isinstance(value, float) and got is not None and abs(got - value) <= 1e-6 * abs(value)):
            problems.append(f"key {key} is {got!r}, expected {value!r}")
    return problems


def value_error_bound(intended: np.ndarray, source: np.ndarray, type_name: str) -> np.ndarray:
    """The documented error of each stored value (:data:`FLOAT_ERROR`, :data:`BLOCK_STEP`), elementwise. A block's
    step is the larger of the source block's and the edited block's (a patched block keeps the source's grid)."""
    if type_name in FLOAT_ERROR:
        rel, floor = FLOAT_ERROR[type_name]
        return np.abs(intended) * rel + floor
    from gguf import GGML_QUANT_SIZES

    block = GGML_QUANT_SIZES[_qtype(type_name)][0]
    kind, levels = BLOCK_STEP[type_name]

    def spread(values: np.ndarray) -> np.ndarray:
        blocks = values.reshape(values.shape[0], -1, block)
        return (blocks.max(-1) - blocks.min(-1)) if kind == "range" else np.abs(blocks).max(-1)

    step = np.maximum(spread(intended), spread(source)) / levels * 1.01 + 1e-30  # scales are float16
    return np.repeat(step, block, axis=-1).reshape(intended.shape)


def _edited_tensor_report(src_tensor: Any, out_tensor: Any, edit: TensorEdit) -> dict[str, Any]:
    source = _dequantize(_raw(src_tensor), edit.source_type)
    intended = intended_values(src_tensor, edit.scale)
    stored = _dequantize(_raw(out_tensor), out_tensor.tensor_type.name)
    error = np.abs(stored - intended)
    bound = value_error_bound(intended, source, edit.out_type)
    ok = out_tensor.tensor_type.name == edit.out_type and bool((error <= bound).all())
    if edit.out_type == "F32":
        ok = ok and np.array_equal(stored.view(np.uint32), intended.view(np.uint32))
    return {"type": edit.out_type, "source_type": edit.source_type, "max_abs_error": float(error.max()),
            "max_error_over_bound": float((error / bound).max()) if edit.out_type != "F32" else 0.0, "ok": ok}


def check_written_gguf(src: GGUFFile, out_path: Path, edits: Mapping[str, TensorEdit],
                       metadata: Mapping[str, Any]) -> tuple[dict[str, Any], GGUFFile]:
    """Read the written file back with gguf and compare it with the source (module docstring); a
    VerificationError naming what differs. Returns the report and the opened file."""
    out = open_gguf(out_path, "written GGUF file")
    src_t, out_t = src.tensors, out.tensors
    problems = _metadata_differences(src, out, metadata)
    if list(src_t) != list(out_t):
        problems.append("tensor names or order differ")
    edited, differing = {}, []
    with open(src.path, "rb") as a, open(out.path, "rb") as b:
        for name, tensor in src_t.items():
            other = out_t.get(name)
            if other is None:
                continue
            if name in edits:
                edited[name] = _edited_tensor_report(tensor, other, edits[name])
                continue
            same = (other.tensor_type == tensor.tensor_type and list(other.shape) == list(tensor.shape)
                    and int(other.n_bytes) == int(tensor.n_bytes)
                    and _same_bytes(a, b, int(tensor.data_offset), int(other.data_offset), int(tensor.n_bytes)))
            if not same:
                differing.append(name)
    bad = [n for n, r in edited.items() if not r["ok"]]
    report = {"metadata_keys_compared": len(src.fields), "tensors_compared": len(src_t) - len(edits),
              "tensors_rewritten": edited, "differing": differing, "problems": problems}
    if problems or differing or bad:
        raise VerificationError(f"written GGUF {out_path} does not match the source {src.path} outside the intended "
                                f"edit: {'; '.join(problems[:3]) or ''} differing tensors {differing[:5]}, rewritten "
                                f"tensors beyond their type's error {bad[:5]}")
    return report, out


# ============================================================================================== logits
def file_tolerance(types: list[str], edit_effect: float) -> float:
    return FP32_TOLERANCE + max(EDIT_FRACTION[t] for t in types) * edit_effect


@contextlib.contextmanager
def down_weights_from(model: torch.nn.Module, arch: ArchSpec, gguf: GGUFFile,
                      edits: Mapping[str, TensorEdit]) -> Iterator[None]:
    """The model with the rewritten down-projections read back from ``gguf`` for the duration."""
    modules = down_proj_modules(model, arch)
    tensors = gguf.tensors
    saved = []
    try:
        for edit in edits.values():
            weight = down_weight(modules[edit.layer])
            tensor = tensors[edit.name]
            values = torch.from_numpy(_dequantize(_raw(tensor), tensor.tensor_type.name))
            if neuron_axis(arch) == 0:  # Conv1D stores [d_ff, d_model]; GGUF the Linear layout
                values = values.T.contiguous()
            saved.append((weight, weight.data))
            weight.data = values.to(weight.device, weight.dtype)
        yield
    finally:
        for weight, data in saved:
            weight.data = data


def transformers_gguf_model(path: Path, device: torch.device) -> torch.nn.Module:
    """The file as transformers' GGUF loader reads it, in float32."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except (ValueError, OSError, RuntimeError) as exc:
        raise VerificationError(f"transformers' GGUF loader cannot read the written file {path}: "
                                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return model.to(device).eval()


@dataclass
class Trial:
    """One storage type tried: its tensors' check and the logit difference of the read-back tensors."""

    choice: str
    types: list[str]
    tolerance: float
    max_abs_diff: float
    tensors: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def describe(self, edit_effect: float) -> dict[str, Any]:
        return {"gguf_type": self.choice, "stored_types": self.types, "tolerance": self.tolerance,
                "quantization_error_max_abs": self.max_abs_diff,
                "error_over_edit_effect": self.max_abs_diff / edit_effect if edit_effect else None,
                "passed": self.passed}


def try_type(model: torch.nn.Module, arch: ArchSpec, reference: Reference, src: GGUFFile, out_path: Path,
             edits: Mapping[str, TensorEdit], metadata: Mapping[str, Any], choice: str) -> Trial:
    """Write the file with one storage choice, check it with gguf, and measure its logits (read-back tensors)."""
    write_patched_gguf(src, out_path, edits, metadata)
    tensors, written = check_written_gguf(src, out_path, edits, metadata)
    types = sorted({e.out_type for e in edits.values()})
    edit_effect = max_abs_diff(reference.base, reference.scaled)
    with down_weights_from(model, arch, written, edits):
        diff = max_abs_diff(reference.scaled, prompt_logits(model, reference.inputs))
    return Trial(choice, types, file_tolerance(types, edit_effect), diff, tensors)


# ========================================================================================== converter
def find_converter(given: str | None) -> list[str] | None:
    """The command that runs llama.cpp's converter: ``given`` (a convert_hf_to_gguf.py or a command), else the
    llama-cpp-scripts command on PATH, else an importable convert_hf_to_gguf module; None when there is none."""
    import importlib.util

    if given:
        path = Path(given).expanduser()
        if path.is_file() and path.suffix == ".py":
            return [sys.executable, str(path.resolve())]
        found = shutil.which(given)
        return [found] if found else None
    for name in (CONVERTER_COMMAND, CONVERTER_SCRIPT):
        found = shutil.which(name)
        if found:
            return [sys.executable, found] if found.endswith(".py") else [found]
    if importlib.util.find_spec("convert_hf_to_gguf") is not None:
        return [sys.executable, "-m", "convert_hf_to_gguf"]
    return None


def converter_or_error(given: str | None, source: str) -> list[str]:
    command = find_converter(given)
    if command is None:
        what = (f"--gguf-converter {given}: no such convert_hf_to_gguf.py file or command. " if given else "")
        raise InputError(
            f"{what}Writing a GGUF from the safetensors model {source} needs llama.cpp's converter, "
            f"convert_hf_to_gguf.py (the {CONVERTER_COMMAND} command of llama.cpp's llama-cpp-scripts package)"
            f"{'' if given else ', and none is installed'}: `pip install` a llama.cpp checkout (or the "
            f"vendor/llama.cpp folder of the llama-cpp-python source distribution), or pass --gguf-converter "
            f"PATH/convert_hf_to_gguf.py; hneurons does not convert architectures itself")
    return command


def convert_checkpoint(command: list[str], folder: Path, out: Path, outtype: str) -> None:
    """Run llama.cpp's converter on a safetensors folder (the unedited model)."""
    argv = [*command, str(folder), "--outfile", str(out), "--outtype", outtype]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ModelLoadError(f"llama.cpp's converter could not convert {folder} (exit {proc.returncode}): "
                             f"{' | '.join(tail)}")


# ============================================================================================ the edit
def output_name(stem: str) -> str:
    return f"{stem}-hneurons.gguf"


def patch_and_verify(model: torch.nn.Module, arch: ArchSpec, d_ff: int, reference: Reference, src: GGUFFile,
                     scales: Mapping[int, LayerScale], requested: str, out_path: Path,
                     keys: Mapping[str, str | int | float]) -> tuple[Trial, dict[str, TensorEdit], list[Trial]]:
    """Write and check the file with each candidate type until one passes (module docstring)."""
    types = source_types(src, sorted(scales))
    trials = []
    for choice in candidate_types(types, requested, src.path):
        edits = plan_edits(src, scales, choice, d_ff)
        trial = try_type(model, arch, reference, src, out_path, edits, edit_metadata(keys, edits), choice)
        trials.append(trial)
        if trial.passed:
            return trial, edits, trials
    effect = max_abs_diff(reference.base, reference.scaled)
    tried = "; ".join(f"{t.choice} ({'+'.join(t.types)}): {t.max_abs_diff:.3g} > {t.tolerance:.3g}" for t in trials)
    raise VerificationError(f"no GGUF storage type keeps the edit within tolerance (max abs logit difference vs "
                            f"run-time scaling, the edit's own effect being {effect:.3g}): {tried}; choose a more "
                            f"precise --gguf-type (F16, F32)")


def edit_metadata(keys: Mapping[str, str | int | float], edits: Mapping[str, TensorEdit]) -> dict[str, str | int | float]:
    """The ``hneurons.*`` keys of one file: the fixed ones and a JSON summary of the rewritten tensors."""
    summary = {"layers": {str(e.layer): len(e.scale.index) for e in edits.values()},
               "tensors": {n: e.out_type for n, e in edits.items()}}
    return {**keys, f"{KEY_PREFIX}edit": json.dumps(summary, sort_keys=True)}


def base_keys(version: str, neurons_sha256: str, count: int, alpha: Mapping[str, Any],
              source_sha256: str | None) -> dict[str, str | int | float]:
    out: dict[str, str | int | float] = {
        f"{KEY_PREFIX}version": version, f"{KEY_PREFIX}neurons.sha256": neurons_sha256,
        f"{KEY_PREFIX}neurons.count": int(count), f"{KEY_PREFIX}alpha": float(alpha["default"]),
        f"{KEY_PREFIX}alpha.min": float(alpha["min"]), f"{KEY_PREFIX}alpha.max": float(alpha["max"])}
    if source_sha256:
        out[f"{KEY_PREFIX}source.sha256"] = source_sha256
    return out


def loader_check(out_path: Path, reference: Reference, device: torch.device, tolerance: float) -> float:
    """The written file through transformers' GGUF loader: its logits against the reference."""
    model = transformers_gguf_model(out_path, device)
    diff = max_abs_diff(reference.scaled, prompt_logits(model, reference.inputs))
    del model
    gc.collect()
    if diff > tolerance:
        raise VerificationError(f"{out_path.name} read by transformers' GGUF loader differs from run-time scaling by "
                                f"{diff:.3g} (max abs logit), more than the tolerance {tolerance:.3g}")
    return diff


def report(reference: Reference, trial: Trial, trials: list[Trial], loader_diff: float) -> dict[str, Any]:
    """The manifest's verification block of a GGUF edit."""
    effect = max_abs_diff(reference.base, reference.scaled)
    worst = max(trial.max_abs_diff, loader_diff)
    return {
        "reference": "source model with run-time activation scaling (forward pre-hooks on the down-projections)",
        "compute_dtype": "float32", "stored_dtype": "+".join(trial.types), "gguf_type": trial.choice,
        "prompts": int(reference.inputs["input_ids"].shape[0]), "tokens": int(reference.inputs["attention_mask"].sum()),
        "tolerance": trial.tolerance, "max_abs_diff": {"gguf_read_back": trial.max_abs_diff,
                                                       "transformers_gguf": loader_diff},
        "edit_effect_max_abs": effect, "quantization_error_max_abs": worst,
        "error_over_edit_effect": worst / effect if effect else None,
        "tried": [t.describe(effect) for t in trials], "tensors": trial.tensors, "passed": True}


def written_block(out_path: Path, src: GGUFFile, trial: Trial, edits: Mapping[str, TensorEdit],
                  keys: Mapping[str, Any]) -> dict[str, Any]:
    return {"gguf_file": out_path.name, "gguf_type": trial.choice, "size_bytes": out_path.stat().st_size,
            "source_gguf": {"file": src.path.name, "size_bytes": src.path.stat().st_size},
            "changed_tensors": {str(e.layer): n for n, e in edits.items()},
            "stored_types": {n: e.out_type for n, e in edits.items()},
            "metadata_keys": [*keys, f"{KEY_PREFIX}edit"]}


def edit_from_gguf(model: torch.nn.Module, arch: ArchSpec, d_ff: int, reference: Reference, src: GGUFFile,
                   scales: Mapping[int, LayerScale], requested: str, folder: Path,
                   keys: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Patch a source GGUF into ``folder`` and verify it; returns the manifest's written and verification blocks."""
    out_path = folder / output_name(src.path.stem)
    trial, edits, trials = patch_and_verify(model, arch, d_ff, reference, src, scales, requested, out_path, keys)
    device = next(model.parameters()).device
    loader_diff = loader_check(out_path, reference, device, trial.tolerance)
    return written_block(out_path, src, trial, edits, keys), report(reference, trial, trials, loader_diff)


def edit_from_checkpoint(lm: LoadedModel, folder: Path, scales: Mapping[int, LayerScale], requested: str,
                         out_folder: Path, prompts: list[str], converter: list[str], keys: Mapping[str, Any],
                         name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A safetensors source: llama.cpp's converter writes the unedited GGUF, which is patched like a GGUF
    source (its own types) and verified against itself under run-time scaling; the conversion's difference
    from the loaded model is reported beside it."""
    stored = requested if requested in CONVERTER_OUTTYPE else _FLOAT_NAME.get(lm.model.dtype, "F32")
    unedited = out_folder / f".{name}-unedited.gguf"
    try:
        convert_checkpoint(converter, folder, unedited, CONVERTER_OUTTYPE[stored])
        device = next(lm.model.parameters()).device
        converted = replace(lm, model=transformers_gguf_model(unedited, device))
        converted.arch = arch_of(converted.model)
        reference = Reference.compute(converted, scales, prompts)
        source_model = as_float32(lm.model) if lm.model.dtype in HALF_DTYPES else lm.model
        conversion = max_abs_diff(reference.base, prompt_logits(source_model, reference.inputs))
        del source_model
        src = open_gguf(unedited, "converted GGUF file")
        out_path = out_folder / output_name(f"{name}-{stored}")
        trial, edits, trials = patch_and_verify(converted.model, converted.arch, converted.d_ff, reference, src,
                                                scales, "source", out_path, keys)
        trial.choice = requested  # what the user asked for: the converter wrote that type
        del converted
        gc.collect()
        loader_diff = loader_check(out_path, reference, device, trial.tolerance)
        written = written_block(out_path, src, trial, edits, keys)
    finally:
        unedited.unlink(missing_ok=True)
    written.update(source_gguf=None, converter=" ".join(converter), converter_outtype=CONVERTER_OUTTYPE[stored])
    verification = report(reference, trial, trials, loader_diff)
    verification["reference"] = ("llama.cpp's unedited conversion, read by transformers' GGUF loader, with run-time "
                                 "activation scaling")
    verification["conversion_max_abs_diff"] = conversion
    return written, verification
