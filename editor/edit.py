"""The edit stage: turn a neuron set into files a user can ship.

Scaling H-Neuron j's activation by alpha (z_j <- alpha z_j) is exactly scaling column j of its layer's
W_down (row j of GPT-2's Conv1D weight), so the edit can be written three ways (``mode``):

* ``weights``: a patched checkpoint (``save_pretrained`` layout: safetensors [+ index], config,
  generation config, tokenizer) that plain ``AutoModelForCausalLM.from_pretrained`` loads. Only the
  down-projection tensors of layers with H-Neurons change; every other tensor is bit-identical to the
  source. ``out_of_core=True`` streams the source's safetensors shards instead of loading the model:
  each shard is copied byte for byte and only the affected down-projection tensors are rewritten in
  place, one tensor in memory at a time (for checkpoints larger than RAM).
* ``ia3``: a PEFT IA3 adapter on the down-projections as feed-forward modules (IA3 then scales the
  module's *input*, i.e. the neuron activations): a vector of ones with alpha at the H-Neurons, one float
  per FFN neuron of the targeted layers. Only layers that hold H-Neurons are targeted (smaller file;
  the other layers would carry all-ones vectors).
* ``lora``: a PEFT LoRA with rank k_l = number of H-Neurons in layer l (``rank_pattern``), lora_alpha =
  rank (scaling 1), A = one-hot rows of the neurons, B = W_down[:, J] diag(alpha - 1): W + BA scales the
  chosen columns by alpha and nothing else. Only layers with H-Neurons are targeted.

Adapters use explicit full module names (``registry.ArchSpec.down_proj_path``), which keeps GPT-2's
``attn.c_proj`` out. Adapter weights are stored in float32 whatever the model dtype (PEFT upcasts adapter
weights to float32 anyway) and adapter folders hold no tokenizer: the base model supplies it.
``base_model_name_or_path`` is where plain PEFT can load the base from: a Hub id as given, a local folder
as an absolute path, and for an embedded alias or a .gguf file the converted safetensors folder.

Verification is always on: after writing (into the temporary folder, before the final rename), the
written files are reloaded and their logits on :data:`VERIFY_PROMPTS` (one right-padded batch, real tokens
only) are compared with the source model under run-time activation scaling (forward pre-hooks,
:func:`editor.neurons.scaled_neurons`). Weights mode compares the reloaded checkpoint; adapter modes
compare source + adapter and source + adapter merged with ``merge_and_unload``. Weights mode also checks
every tensor against the source checkpoint (untouched tensors bit-identical; changed columns exactly
alpha x source in the stored dtype). The out-of-core path can skip the logit check
(``verify_logits=False``, for models too large to load); its tensor check always runs. A failed check
raises :class:`~editor.errors.VerificationError` and nothing is written.

Logits are compared in float32, with float32 weights: half-precision models are upcast for the check
(exact: every bf16/fp16 value is a float32 value). Comparing two bf16 forward passes directly is
meaningless: on SmolLM2-135M (30 layers) two equivalent bf16 computations (alpha x z rounded in the
activation vs alpha x W rounded in the weight) differ by up to 2.3 in the logits, as much as the edit
itself. In float32 the only legitimate difference left is the storage rounding of the rewritten columns
(adapters are stored in float32 and are exact). Tolerance on the max abs logit difference:

* float32 edits: 1e-4 (observed on SmolLM2-135M: <= 6e-5);
* bfloat16 / float16 edits: 1e-4 + 4 u x max(1, max alpha) x S, where u is the half-ulp relative rounding
  of a stored weight (2^-8 bf16, 2^-11 fp16) and S is the max abs logit change when the same neurons are
  fully suppressed (their whole contribution, measured on the same prompts). Each rewritten weight is off
  by at most u x alpha x |W|, so the logits move by about u x alpha x S; 4x leaves room for non-linearity.
  alpha = 0 (the default) and alpha = 1 are stored exactly, so the bound only matters for other alphas.
  A wrong neuron, layer or sign moves the logits by the order of S and fails.

The manifest records the edit's own effect (``edit_effect_max_abs``) and S next to the differences.

The output folder is written atomically (temporary sibling, renamed at the end) and carries
``hneurons_edit.json`` (see docs/ARTIFACTS.md), ``neurons.json`` and, when known, ``probe.safetensors``.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import logging
import re
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .artifacts import atomic_dir, atomic_write_bytes, atomic_write_json, check_output_target, files_sha256
from .artifacts import provenance, read_json
from .errors import InputError, ModelLoadError, VerificationError
from .loading import LoadedModel, ModelSource, converted_gguf_folder, load_model, parse_dtype
from .loading import resolve_source, weights_fingerprint
from .neurons import LayerScale, down_columns, down_proj_modules, down_weight, neuron_axis, scale_columns_
from .neurons import scaled_neurons
from .neuronset import NeuronSet, as_neuron_set
from .registry import ArchSpec, architecture_hash, get_arch

log = logging.getLogger(__name__)

EDIT_FORMAT = "hneurons.edit/1"
MANIFEST_NAME = "hneurons_edit.json"
MODES = ("weights", "ia3", "lora")
DEFAULT_MAX_SHARD_SIZE = "5GB"

# A fixed, varied set of short texts: enough positions to exercise every layer, quick on any model.
VERIFY_PROMPTS = (
    "The capital of France is",
    "Question: What is the chemical symbol of gold?\nAnswer:",
    "I don't know the answer, but I think it might be",
    "Once upon a time, in a small village by the sea, there lived",
)

FP32_TOLERANCE = 1e-4
# Half-precision edits: 4x the half-ulp rounding of a stored weight (bf16 2^-8, fp16 2^-11 relative);
# see the module docstring for the bound they enter.
HALF_ROUNDING = {torch.bfloat16: 4 * 2.0**-8, torch.float16: 4 * 2.0**-11}

# Files of a checkpoint folder that are never copied by the out-of-core path: weights in other formats
# (they would carry the unedited model), the original model card (it describes another model), and
# hneurons' own cache metadata.
_SKIP_SUFFIXES = (".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt", ".onnx", ".safetensors")
_SKIP_NAMES = {"README.md", "hneurons_source.json", MANIFEST_NAME}
_INDEX_NAME = "model.safetensors.index.json"


# ================================================================================================ result
@dataclass
class EditResult:
    """What :func:`edit_model` wrote: the final folder and its manifest (``hneurons_edit.json``)."""

    out: Path
    mode: str
    manifest: dict[str, Any]

    @property
    def verification(self) -> dict[str, Any]:
        return self.manifest["verification"]

    @property
    def files(self) -> dict[str, str]:
        return self.manifest["files"]


# ============================================================================================ checkpoints
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
    index = folder / _INDEX_NAME
    if index.is_file():
        weight_map = read_json(index, "safetensors index").get("weight_map")
        if not isinstance(weight_map, dict):
            raise ModelLoadError(f"{index} has no weight_map")
        return sorted(set(weight_map.values()))
    if (folder / "model.safetensors").is_file():
        return ["model.safetensors"]
    found = sorted(p.name for p in folder.glob("*.safetensors"))
    raise ModelLoadError(f"checkpoint {folder} has no model.safetensors or {_INDEX_NAME} "
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


def _snapshot(repo_id: str, revision: str | None) -> Path:
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
        folder = Path(model.folder) if model.folder else _snapshot(source.path, source.revision)
        return Checkpoint(folder, source, model.config)
    source = resolve_source(model, revision)
    if source.kind in ("alias", "gguf"):
        wanted = parse_dtype(dtype)
        folder, source.gguf_sha256 = converted_gguf_folder(Path(source.path),
                                                           torch.float32 if wanted == "auto" else wanted)
    elif source.kind == "folder":
        folder = Path(source.path)
    else:
        folder = _snapshot(source.path, revision)
        source.revision = revision or folder.name
    try:
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read the config of {model!r} in {folder}: {str(exc).splitlines()[0]}") from None
    return Checkpoint(folder, source, config)


def _open_tensors(folder: Path) -> Callable[[str, str], torch.Tensor]:
    """A reader ``get(shard, name)`` that keeps one safe_open handle per shard."""
    from safetensors import safe_open

    handles: dict[str, Any] = {}

    def get(shard: str, name: str) -> torch.Tensor:
        if shard not in handles:
            handles[shard] = safe_open(str(folder / shard), framework="pt")
        return handles[shard].get_tensor(name)

    return get


def checkpoint_fingerprint(ckpt: Checkpoint) -> str:
    """:func:`editor.loading.weights_fingerprint` of a checkpoint, streamed one tensor at a time."""
    arch = ckpt.arch
    where = tensor_locations(ckpt.folder)
    names = down_proj_tensor_names(where, arch, arch.num_layers(ckpt.config), str(ckpt.folder))
    get = _open_tensors(ckpt.folder)
    return weights_fingerprint(get(where[name], name) for name in names.values())


def checkpoint_identity(ckpt: Checkpoint, fingerprint: str) -> dict[str, Any]:
    """The same identity dict as :meth:`editor.loading.LoadedModel.identity`, from files only."""
    arch = ckpt.arch
    return {
        "source": ckpt.source.describe(),
        "model_type": arch.model_type,
        "num_layers": arch.num_layers(ckpt.config),
        "d_ff": arch.d_ff(ckpt.config),
        "architecture_hash": architecture_hash(ckpt.config),
        "weights_fingerprint": fingerprint,
    }


# ====================================================================================== weights: in memory
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
    if (folder / _INDEX_NAME).is_file() or not (folder / "model.safetensors").is_file():
        return
    header, _ = read_safetensors_header(folder / "model.safetensors")
    total = sum(end - begin for begin, end in (info["data_offsets"] for info in header.values()))
    index = {"metadata": {"total_size": total}, "weight_map": dict.fromkeys(sorted(header), "model.safetensors")}
    (folder / _INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


# ===================================================================================== weights: streamed
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


def rewrite_safetensors_out_of_core(src: str | Path, dst: str | Path, scales: Mapping[int, LayerScale],
                                    config: Any) -> dict[int, str]:
    """Stream a safetensors checkpoint from ``src`` into ``dst`` with the neurons' columns scaled.

    Each shard is copied byte for byte (the OS copies it; nothing is held in memory), then every
    affected down-projection tensor is read alone, scaled with :func:`editor.neurons.scale_columns_` (the
    same arithmetic as the in-memory path, so the bytes are identical) and written back over its own byte
    range. Headers, tensor order, shard names and the index are unchanged, so every other byte of the
    output equals the source. The model is never instantiated. Returns layer -> rewritten tensor name.
    """
    src, dst = Path(src), Path(dst)
    arch = get_arch(config)
    where = tensor_locations(src)
    names = down_proj_tensor_names(where, arch, arch.num_layers(config), str(src))
    targets = {layer: names[layer] for layer in scales}
    dst.mkdir(parents=True, exist_ok=True)
    get = _open_tensors(src)
    from tqdm.auto import tqdm

    for shard in tqdm(checkpoint_shards(src), desc="rewriting shards", unit="shard", disable=None):
        shutil.copyfile(src / shard, dst / shard)
        header, data_start = read_safetensors_header(src / shard)
        with open(dst / shard, "r+b") as handle:
            for layer, name in targets.items():
                if where[name] != shard:
                    continue
                tensor = get(shard, name)
                scale_columns_(tensor, arch, scales[layer].index, scales[layer].alpha)
                begin, end = header[name]["data_offsets"]
                data = _tensor_bytes(tensor)
                assert data.nbytes == end - begin, f"{name}: {data.nbytes} bytes for a {end - begin}-byte slot"
                handle.seek(data_start + begin)
                handle.write(data)
                del tensor, data
    _copy_side_files(src, dst)
    ensure_index(dst)
    return targets


# ========================================================================================== tensor check
def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_tensor_view(a), _tensor_view(b))


def _tensor_view(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _edit_is_exact(original: torch.Tensor, written: torch.Tensor, arch: ArchSpec, scale: LayerScale) -> bool:
    """Written = original except the neurons' columns, which equal (alpha x original) in the stored dtype."""
    axis = neuron_axis(arch)
    shape = [1, 1]
    shape[axis] = len(scale.index)
    expected = (original.index_select(axis, scale.index).float() * scale.alpha.view(shape)).to(original.dtype)
    if not _same_bits(written.index_select(axis, scale.index), expected):
        return False
    restored = written.clone()
    restored.index_copy_(axis, scale.index, original.index_select(axis, scale.index))
    return _same_bits(restored, original)


def check_tensors(src: str | Path, dst: str | Path, scales: Mapping[int, LayerScale], changed: Mapping[int, str],
                  arch: ArchSpec, *, require_same_names: bool) -> dict[str, Any]:
    """Compare every tensor of ``dst`` with ``src``, one pair in memory at a time.

    Changed down-projection tensors must hold exactly alpha x source at the neurons and the source
    elsewhere; every other tensor must be bit-identical. Names only one side has are listed (an
    in-memory save may drop tied weights) and are an error when ``require_same_names``.
    """
    src, dst = Path(src), Path(dst)
    src_where, dst_where = tensor_locations(src), tensor_locations(dst)
    only_src, only_dst = sorted(set(src_where) - set(dst_where)), sorted(set(dst_where) - set(src_where))
    layer_of = {name: layer for layer, name in changed.items()}
    get_src, get_dst = _open_tensors(src), _open_tensors(dst)
    differing = []
    for name in sorted(set(src_where) & set(dst_where)):
        a, b = get_src(src_where[name], name), get_dst(dst_where[name], name)
        ok = _edit_is_exact(a, b, arch, scales[layer_of[name]]) if name in layer_of else _same_bits(a, b)
        if not ok:
            differing.append(name)
    report = {"tensors_compared": len(set(src_where) & set(dst_where)), "tensors_changed": sorted(changed.values()),
              "differing": differing, "only_in_source": only_src, "only_in_output": only_dst}
    if differing or (require_same_names and (only_src or only_dst)):
        raise VerificationError(
            f"written checkpoint {dst} does not match the source {src} outside the intended edit: "
            f"differing tensors {differing[:5]}, missing {only_src[:5]}, extra {only_dst[:5]}"
        )
    return report


# =============================================================================================== adapters
def _adapter_prefix(module_path: str) -> str:
    # PEFT's saved state-dict keys: "base_model.model." + module path (adapter name removed).
    return f"base_model.model.{module_path}"


def _save_adapter(folder: Path, peft_config: Any, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    peft_config.save_pretrained(str(folder))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "adapter_model.safetensors"),
              metadata={"format": "pt"})


def make_ia3_adapter(config: Any, scales: Mapping[int, LayerScale], folder: str | Path, *,
                     base_model_name_or_path: str, revision: str | None = None) -> list[str]:
    """Write an exact IA3 suppression adapter; returns the targeted module names.

    IA3 on a feed-forward module multiplies the module's input elementwise by ``ia3_l``: ones except
    alpha at the H-Neurons, float32, for the down-projection of each layer that holds H-Neurons.
    """
    from peft import IA3Config

    arch = get_arch(config)
    d_ff = arch.d_ff(config)
    modules = [arch.down_proj_path(layer) for layer in scales]
    tensors = {}
    for layer, scale in scales.items():
        vector = torch.ones(1, d_ff, dtype=torch.float32)
        vector[0, scale.index] = scale.alpha
        tensors[f"{_adapter_prefix(arch.down_proj_path(layer))}.ia3_l"] = vector
    peft_config = IA3Config(task_type="CAUSAL_LM", target_modules=modules, feedforward_modules=modules,
                            fan_in_fan_out=arch.conv1d, base_model_name_or_path=base_model_name_or_path,
                            revision=revision, inference_mode=True)
    _save_adapter(Path(folder), peft_config, tensors)
    return modules


def make_lora_adapter(model: torch.nn.Module, scales: Mapping[int, LayerScale], folder: str | Path, *,
                      base_model_name_or_path: str, revision: str | None = None) -> list[str]:
    """Write an exact LoRA suppression adapter; returns the targeted module names.

    Per targeted layer: rank k = its H-Neurons, A [k, d_ff] = one-hot rows, B [d_model, k] =
    W_down[:, J] * (alpha - 1), lora_alpha = k so the scaling is 1 (float32).
    """
    from peft import LoraConfig

    arch = get_arch(model.config)
    modules = down_proj_modules(model, arch)
    tensors, ranks = {}, {}
    for layer, scale in scales.items():
        weight = down_weight(modules[layer])
        name = arch.down_proj_path(layer)
        rank = len(scale.index)
        d_ff = weight.shape[neuron_axis(arch)]
        a = torch.zeros(rank, d_ff, dtype=torch.float32)
        a[torch.arange(rank), scale.index] = 1.0
        b = down_columns(weight.detach(), arch, scale.index).float().cpu() * (scale.alpha - 1.0)[None, :]
        tensors[f"{_adapter_prefix(name)}.lora_A.weight"] = a
        tensors[f"{_adapter_prefix(name)}.lora_B.weight"] = b
        ranks[name] = rank
    top = max(ranks.values())
    peft_config = LoraConfig(task_type="CAUSAL_LM", r=top, lora_alpha=top, target_modules=list(ranks),
                             rank_pattern=ranks, alpha_pattern=dict(ranks), lora_dropout=0.0, bias="none",
                             fan_in_fan_out=arch.conv1d, base_model_name_or_path=base_model_name_or_path,
                             revision=revision, inference_mode=True)
    _save_adapter(Path(folder), peft_config, tensors)
    return list(ranks)


# =========================================================================================== verification
HALF_DTYPES = (torch.bfloat16, torch.float16)


def tolerance(stored_dtype: torch.dtype, max_alpha: float = 1.0, suppression_effect: float | None = None) -> float:
    """Max abs logit difference allowed between a written edit and the reference (module docstring)."""
    if stored_dtype in HALF_ROUNDING:
        if suppression_effect is None:
            raise ValueError("the half-precision tolerance needs the suppression effect")
        return FP32_TOLERANCE + HALF_ROUNDING[stored_dtype] * max(1.0, max_alpha) * suppression_effect
    return FP32_TOLERANCE


@contextlib.contextmanager
def _exact_float32() -> Iterator[None]:
    """Full-precision float32 matmuls (no TF32) while verifying."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def as_float32(model: torch.nn.Module) -> torch.nn.Module:
    """A float32 copy of a half-precision model (upcasting is exact); float32 models are copied as they are."""
    clone = copy.deepcopy(model)
    return clone.float() if next(model.parameters()).dtype in HALF_DTYPES else clone


def encode_prompts(tokenizer: Any, prompts: Iterable[str]) -> dict[str, torch.Tensor]:
    """One right-padded batch: causal attention keeps every real token's logits independent of the pads."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="right")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


@torch.inference_mode()
def prompt_logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """float32 logits at every real (non-pad) token of the batch: [tokens, vocab]."""
    device = next(model.parameters()).device
    with _exact_float32():
        logits = model(**{k: v.to(device) for k, v in inputs.items()}).logits
    return logits[inputs["attention_mask"].to(device).bool()].float().cpu()


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@dataclass
class Reference:
    """Ground truth: the source model's float32 logits, unedited and under run-time activation scaling."""

    inputs: dict[str, torch.Tensor]
    base: torch.Tensor
    scaled: torch.Tensor
    stored_dtype: torch.dtype  # dtype the edit is written in (sets the tolerance)
    max_alpha: float
    suppression_effect: float | None  # half precision only: logit change when the same neurons are fully suppressed

    @classmethod
    def compute(cls, lm: LoadedModel, scales: Mapping[int, LayerScale], prompts: Iterable[str],
                stored_dtype: torch.dtype | None = None) -> Reference:
        stored = stored_dtype or lm.model.dtype
        model = as_float32(lm.model) if lm.model.dtype in HALF_DTYPES else lm.model
        inputs = encode_prompts(lm.tokenizer, prompts)
        base = prompt_logits(model, inputs)
        with scaled_neurons(model, scales):
            scaled = prompt_logits(model, inputs)
        max_alpha = max(float(s.alpha.max()) for s in scales.values())
        suppression = None
        if stored in HALF_DTYPES:  # only the half-precision tolerance needs it: save a forward pass otherwise
            zero = {layer: LayerScale(s.index, torch.zeros_like(s.alpha)) for layer, s in scales.items()}
            with scaled_neurons(model, zero):
                suppression = max_abs_diff(base, prompt_logits(model, inputs))
        return cls(inputs, base, scaled, stored, max_alpha, suppression)


def verify_edit(reference: Reference, candidates: Iterable[tuple[str, torch.nn.Module]]) -> dict[str, Any]:
    """Compare each candidate's float32 logits with the reference; a VerificationError beyond tolerance.

    ``candidates`` is consumed lazily, so a generator can load one model at a time.
    """
    tol = tolerance(reference.stored_dtype, reference.max_alpha, reference.suppression_effect)
    diffs = {}
    for name, model in candidates:
        diffs[name] = max_abs_diff(reference.scaled, prompt_logits(model, reference.inputs))
        del model
        gc.collect()
    report = {
        "reference": "source model with run-time activation scaling (forward pre-hooks on the down-projections)",
        "compute_dtype": "float32",
        "stored_dtype": str(reference.stored_dtype).removeprefix("torch."),
        "prompts": int(reference.inputs["input_ids"].shape[0]),
        "tokens": int(reference.inputs["attention_mask"].sum()),
        "tolerance": tol,
        "max_abs_diff": diffs,
        "edit_effect_max_abs": max_abs_diff(reference.base, reference.scaled),
        "suppression_effect_max_abs": reference.suppression_effect,
        "passed": all(d <= tol for d in diffs.values()),
    }
    if not report["passed"]:
        failed = {k: v for k, v in diffs.items() if v > tol}
        raise VerificationError(f"the written edit does not reproduce run-time activation scaling: max abs logit "
                                f"difference {failed} exceeds the tolerance {tol:.3g} for a "
                                f"{report['stored_dtype']} edit (the edit's own effect: "
                                f"{report['edit_effect_max_abs']:.3g})")
    return report


def _checkpoint_candidate(folder: Path, device: torch.device) -> Iterator[tuple[str, torch.nn.Module]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    yield "checkpoint", model.to(device).eval()


def _adapter_candidates(model: torch.nn.Module, folder: Path) -> Iterator[tuple[str, torch.nn.Module]]:
    """Source + adapter, then the same merged; on a float32 copy, so the caller's model stays untouched."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(as_float32(model), str(folder))
    peft_model.eval()
    yield "adapter", peft_model
    yield "adapter_merged", peft_model.merge_and_unload()


# ================================================================================================ the API
def _base_model_name(source: ModelSource, folder: str | None) -> str:
    """Where plain PEFT finds the base: a Hub id as given, a local folder as an absolute path, and for an
    embedded alias or a .gguf file the converted safetensors folder hneurons loaded (PEFT can read neither
    an hneurons alias nor a GGUF file; the card names the original Hub model)."""
    if source.kind == "hub":
        return source.spec
    if source.kind == "folder" or not folder:
        return source.path if source.kind == "folder" else source.spec
    return str(Path(folder).resolve())


def _check_not_source(out: Path, folder: str | Path | None) -> None:
    if folder is None:
        return
    out_abs, src_abs = out.resolve(), Path(folder).resolve()
    if out_abs == src_abs or out_abs in src_abs.parents or src_abs in out_abs.parents:
        raise InputError(f"output {out} overlaps the source checkpoint {folder}; the source is never modified: "
                         f"choose an output folder outside it")


def _probe_file(probe: str | Path | None, nset: NeuronSet) -> Path | None:
    if probe is not None:
        path = Path(probe)
        if not path.is_file():
            raise InputError(f"probe file not found: {path}")
        return path
    sibling = nset.path.parent / "probe.safetensors" if nset.path else None
    return sibling if sibling and sibling.is_file() else None


def _write_evidence(folder: Path, nset: NeuronSet, probe: Path | None) -> dict[str, str | None]:
    """Ship the neuron list (verbatim when it came from a file) and the probe with the edit."""
    if nset.path is not None:
        atomic_write_bytes(folder / "neurons.json", nset.path.read_bytes())
    else:
        atomic_write_json(folder / "neurons.json", nset.to_document())
    if probe is not None:
        shutil.copyfile(probe, folder / "probe.safetensors")
    return {"neurons": "neurons.json", "probe": "probe.safetensors" if probe else None}


def _alpha_summary(alpha: float, layer_alpha: Mapping[int, float] | None, nset: NeuronSet,
                   alphas: Mapping[tuple[int, int], float]) -> dict[str, Any]:
    values = list(alphas.values())
    return {"default": float(alpha), "per_layer": {str(k): float(v) for k, v in sorted((layer_alpha or {}).items())},
            "per_neuron_overrides": len(nset.neuron_alpha), "min": min(values), "max": max(values)}


@dataclass
class _Job:
    mode: str
    out: Path
    nset: NeuronSet
    scales: dict[int, LayerScale]
    alpha: dict[str, Any]
    identity: dict[str, Any]
    source: ModelSource
    lm: LoadedModel | None = None
    ckpt: Checkpoint | None = None
    probe: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)


def edit_model(
    model: str | LoadedModel,
    neurons: NeuronSet | str | Path | dict | Iterable[tuple[int, int]],
    alpha: float = 0.0,
    mode: str = "weights",
    out: str | Path | None = None,
    *,
    layer_alpha: Mapping[int, float] | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    overwrite: bool = False,
    out_of_core: bool = False,
    force: bool = False,
    probe: str | Path | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    verify_logits: bool = True,
    prompts: Iterable[str] = VERIFY_PROMPTS,
) -> EditResult:
    """Write the edited model (``weights``) or an exact suppression adapter (``ia3``, ``lora``) to ``out``.

    ``model`` is anything :func:`editor.loading.load_model` accepts, or an already loaded model (which is
    left unchanged). ``neurons`` is a neuron file, a parsed document, a :class:`NeuronSet` or (layer,
    index) pairs. ``dtype`` None keeps the source dtype (GGUF sources: float32); ``out_of_core`` (weights
    mode only) streams the checkpoint's shards instead of loading the model. Everything is validated
    before anything is written; the output appears under ``out`` only complete and verified.
    """
    job = _prepare(model, neurons, alpha, mode, out, layer_alpha=layer_alpha, dtype=dtype, device=device,
                   revision=revision, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                   overwrite=overwrite, out_of_core=out_of_core, force=force, probe=probe)
    job.settings.update(max_shard_size=max_shard_size, out_of_core=out_of_core, verify_logits=verify_logits,
                        device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    prompts = list(prompts)
    with atomic_dir(job.out, overwrite=overwrite) as tmp:
        written, verification = _write_and_verify(job, tmp, prompts)
        evidence = _write_evidence(tmp, job.nset, job.probe)
        manifest = _manifest(job, written, verification, evidence, tmp)
        atomic_write_json(tmp / MANIFEST_NAME, manifest)
    log.info("edit written to %s (mode %s, %d neurons)", job.out, job.mode, len(job.nset))
    return EditResult(job.out, job.mode, manifest)


def _prepare(model, neurons, alpha, mode, out, *, layer_alpha, dtype, device, revision, trust_remote_code,
             allow_pickle, overwrite, out_of_core, force, probe) -> _Job:
    """Every check that can fail before writing: mode, output, neuron set, alphas, model identity."""
    if mode not in MODES:
        raise InputError(f"unknown edit mode {mode!r}; expected one of {', '.join(MODES)}")
    if out_of_core and mode != "weights":
        raise InputError(f"out-of-core editing writes checkpoints (mode 'weights'); mode {mode!r} adapters are "
                         f"small and are made from the loaded model")
    if out is None:
        raise InputError("no output folder given (out=...)")
    out = Path(out)
    check_output_target(out, overwrite)
    nset = as_neuron_set(neurons)
    alphas = nset.alphas(alpha, layer_alpha)
    scales = nset.scales(alpha, layer_alpha)
    probe_path = _probe_file(probe, nset)
    summary = _alpha_summary(alpha, layer_alpha, nset, alphas)
    if out_of_core:
        ckpt = local_checkpoint(model, dtype=dtype, revision=revision, trust_remote_code=trust_remote_code)
        _check_out_of_core_dtype(ckpt, dtype)
        fingerprint = checkpoint_fingerprint(ckpt)
        nset.validate(ckpt.config, fingerprint=fingerprint, force=force)
        _check_not_source(out, ckpt.folder)
        lm = model if isinstance(model, LoadedModel) else None
        return _Job(mode, out, nset, scales, summary, checkpoint_identity(ckpt, fingerprint), ckpt.source,
                    lm=lm, ckpt=ckpt, probe=probe_path)
    lm = _loaded(model, dtype=dtype, device=device, revision=revision, trust_remote_code=trust_remote_code,
                 allow_pickle=allow_pickle)
    nset.validate(lm, force=force)
    _check_not_source(out, lm.folder)
    return _Job(mode, out, nset, scales, summary, lm.identity(), lm.source, lm=lm, probe=probe_path)


def _loaded(model, *, dtype, device, revision, trust_remote_code, allow_pickle) -> LoadedModel:
    if isinstance(model, LoadedModel):
        wanted = parse_dtype(dtype)
        if wanted != "auto" and wanted != model.model.dtype:
            raise InputError(f"the loaded model is {model.model.dtype}, but dtype {dtype} was asked for; load it in "
                             f"that dtype, or pass the model spec instead of a loaded model")
        return model
    return load_model(model, dtype=dtype or "auto", device=device, revision=revision,
                      trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)


def _check_out_of_core_dtype(ckpt: Checkpoint, dtype: Any) -> None:
    """The streamed path copies tensors as stored: a different dtype is only possible for GGUF sources."""
    wanted = parse_dtype(dtype)
    if wanted == "auto" or ckpt.source.kind in ("alias", "gguf"):
        return
    arch = ckpt.arch
    where = tensor_locations(ckpt.folder)
    name = down_proj_tensor_names(where, arch, arch.num_layers(ckpt.config), str(ckpt.folder))[0]
    stored = _open_tensors(ckpt.folder)(where[name], name).dtype
    if stored != wanted:
        raise InputError(f"out-of-core editing keeps the checkpoint's dtype ({stored}); dtype {dtype} needs the "
                         f"in-memory path (drop --out-of-core) or no --dtype")


def _write_and_verify(job: _Job, tmp: Path, prompts: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    if job.mode == "weights":
        return _weights(job, tmp, prompts)
    base_name = _base_model_name(job.source, job.lm.folder if job.lm is not None else None)
    revision = job.source.revision if job.source.kind == "hub" else None
    lm = job.lm
    assert lm is not None
    if job.mode == "ia3":
        modules = make_ia3_adapter(lm.config, job.scales, tmp, base_model_name_or_path=base_name, revision=revision)
    else:
        modules = make_lora_adapter(lm.model, job.scales, tmp, base_model_name_or_path=base_name, revision=revision)
    reference = Reference.compute(lm, job.scales, prompts)
    verification = verify_edit(reference, _adapter_candidates(lm.model, tmp))
    written = {"base_model_name_or_path": base_name, "target_modules": modules}
    return written, verification


def _weights(job: _Job, tmp: Path, prompts: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    if job.ckpt is not None:
        src = job.ckpt.folder
        changed = rewrite_safetensors_out_of_core(src, tmp, job.scales, job.ckpt.config)
        tensors = check_tensors(src, tmp, job.scales, changed, job.ckpt.arch, require_same_names=True)
        first = changed[min(changed)]
        dtype = _open_tensors(tmp)(tensor_locations(tmp)[first], first).dtype
        verification = (_logits_out_of_core(job, tmp, prompts, dtype) if job.settings["verify_logits"]
                        else {"logits": "skipped (verify_logits=False); the tensor check ran", "passed": True})
    else:
        lm = job.lm
        assert lm is not None
        changed = write_checkpoint(lm, job.scales, tmp, max_shard_size=job.settings["max_shard_size"])
        tensors = _in_memory_tensor_check(lm, job.scales, changed, tmp)
        reference = Reference.compute(lm, job.scales, prompts)
        verification = verify_edit(reference, _checkpoint_candidate(tmp, lm.model.device))
        dtype = lm.model.dtype
    verification["tensors"] = tensors
    written = {"changed_tensors": {str(k): v for k, v in changed.items()}, "dtype": str(dtype).removeprefix("torch."),
               "out_of_core": job.ckpt is not None}
    return written, verification


def _in_memory_tensor_check(lm: LoadedModel, scales, changed, tmp: Path) -> dict[str, Any] | str:
    """Against the source files when there are any in the same dtype (a named dtype changes every tensor)."""
    if lm.folder is None:
        return "skipped (no local source checkpoint)"
    src_names = tensor_locations(Path(lm.folder))
    name = next(iter(changed.values()))
    if name in src_names and _open_tensors(Path(lm.folder))(src_names[name], name).dtype != lm.model.dtype:
        return f"skipped (source stored in another dtype than {lm.model.dtype})"
    return check_tensors(lm.folder, tmp, scales, changed, lm.arch, require_same_names=False)


def _logits_out_of_core(job: _Job, tmp: Path, prompts: list[str], stored: torch.dtype) -> dict[str, Any]:
    """Reference from the source, then the rewritten checkpoint: one model in memory at a time."""
    lm = job.lm
    if lm is None:
        assert job.ckpt is not None
        # Loaded straight in float32: the check runs in float32 anyway, and no upcast copy is needed.
        lm = load_model(str(job.ckpt.folder), dtype="float32", device=job.settings["device"],
                        trust_remote_code=job.settings["trust_remote_code"])
    reference = Reference.compute(lm, job.scales, prompts, stored_dtype=stored)
    device = next(lm.model.parameters()).device
    del lm
    gc.collect()
    return verify_edit(reference, _checkpoint_candidate(tmp, device))


def _manifest(job: _Job, written: dict[str, Any], verification: dict[str, Any], evidence: dict[str, Any],
              folder: Path) -> dict[str, Any]:
    return {
        "format": EDIT_FORMAT,
        "mode": job.mode,
        "model": job.identity,
        "neurons": {"sha256": job.nset.sha256, "count": len(job.nset), "per_layer": {str(k): v for k, v in
                    job.nset.per_layer().items()}, "source_file": str(job.nset.path) if job.nset.path else None},
        "alpha": job.alpha,
        "written": written,
        "evidence": evidence,
        "verification": verification,
        "files": files_sha256(folder),
        "provenance": provenance(),
    }
