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
* ``gguf``: one GGUF file for llama.cpp, Ollama and LM Studio (:mod:`editor.edit.gguf`). A GGUF source is
  patched, streamed: its metadata and every untouched tensor are copied byte for byte, only the affected
  ``blk.L.ffn_down.weight`` tensors are rewritten, in the type ``gguf_type`` names (default: the most
  compact that passes verification). A safetensors source goes through llama.cpp's converter first. The
  file is read back with gguf (metadata, tensor bytes, rewritten values) and with transformers' GGUF
  loader (logits, within a tolerance stated per type relative to the edit's own effect).

Adapters use explicit full module names (``registry.ArchSpec.down_proj_path``), which keeps GPT-2's
``attn.c_proj`` out. Adapter weights are stored in float32 whatever the model dtype (PEFT upcasts adapter
weights to float32 anyway) and adapter folders hold no tokenizer: the base model supplies it.
``base_model_name_or_path`` is where plain PEFT can load the base from: a Hub id as given, a local folder
as an absolute path, and for an embedded alias or a .gguf file the converted safetensors folder.

Verification is always on: after writing (into the temporary folder, before the final rename), the
written files are reloaded and their logits on the ``verify_prompts`` setting (one right-padded batch, real tokens
only) are compared with the source model under run-time activation scaling (forward pre-hooks,
:func:`editor.model.hooks.scaled_neurons`). Weights mode compares the reloaded checkpoint; adapter modes
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
import gc
import logging
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..artifacts import (
    atomic_dir,
    atomic_write_bytes,
    atomic_write_json,
    check_output_target,
    files_sha256,
    provenance,
)
from ..errors import InputError
from ..formats import EDIT_FORMAT, EDIT_MANIFEST, NEURONS, PROBE
from ..locking import output_lock
from ..model.checkpoint import (
    Checkpoint,
    checkpoint_fingerprint,
    checkpoint_identity,
    down_proj_tensor_names,
    local_checkpoint,
    read_tensor,
    tensor_entries,
)
from ..model.hooks import LayerScale, down_proj_modules, down_weight
from ..model.loading import (
    LoadedModel,
    LoadOptions,
    ModelSource,
    default_device,
    load_model,
    parse_dtype,
)
from ..model.neuron_set import NeuronSet, as_neuron_set
from ..options import split_fields
from .adapters import make_ia3_adapter, make_lora_adapter
from .gguf import (
    GGUFFile,
    base_keys,
    candidate_types,
    converter_or_error,
    edit_from_checkpoint,
    edit_from_gguf,
    open_gguf,
    source_types,
)
from .settings import AbstainSettings, EditSettings
from .verify import (
    CheckpointCheck,
    Reference,
    adapter_candidates,
    check_adapter,
    check_checkpoint,
    checkpoint_candidate,
    verify_edit,
)
from .weights import rewrite_safetensors_out_of_core, write_checkpoint

log = logging.getLogger(__name__)



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


# ====================================================================================== weights: in memory


# ===================================================================================== weights: streamed


# ========================================================================================== tensor check


# =============================================================================================== adapters


# =========================================================================================== verification


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
    sibling = nset.path.parent / PROBE if nset.path else None
    return sibling if sibling and sibling.is_file() else None


def _write_evidence(folder: Path, nset: NeuronSet, probe: Path | None) -> dict[str, str | None]:
    """Ship the neuron list (verbatim when it came from a file) and the probe with the edit."""
    if nset.path is not None:
        atomic_write_bytes(folder / NEURONS, nset.path.read_bytes())
    else:
        atomic_write_json(folder / NEURONS, nset.to_document())
    if probe is not None:
        shutil.copyfile(probe, folder / PROBE)
    return {"neurons": NEURONS, "probe": PROBE if probe else None}


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
    settings: EditSettings
    load: LoadOptions
    lm: LoadedModel | None = None
    ckpt: Checkpoint | None = None
    probe: Path | None = None
    converter: list[str] | None = None  # gguf mode, safetensors source: llama.cpp's converter
    source_gguf: GGUFFile | None = None  # gguf mode, GGUF source: the file, opened
    force: dict[str, Any] | None = None  # --force and the model mismatch it accepted (recorded in the manifest)
    hashes: dict[str, str] | None = None  # sha256 of written files the verification already hashed


def edit_model(
    model: str | LoadedModel,
    neurons: NeuronSet | str | Path | dict | Iterable[tuple[int, int]],
    alpha: float | None = None,
    mode: str | None = None,
    out: str | Path | None = None,
    *,
    settings: EditSettings | None = None,
    load: LoadOptions | None = None,
    overwrite: bool = False,
    force: bool = False,
    probe: str | Path | None = None,
    responses: str | Path | None = None,
    abstain: AbstainSettings | None = None,
    progress: bool = True,
    **fields: Any,
) -> EditResult:
    """Write the edited model (``weights``) or an exact suppression adapter (``ia3``, ``lora``) to ``out``; mode
    ``abstain`` trains the neurons' own weights on the collect folder ``responses`` instead (``abstain``:
    :class:`~editor.edit.settings.AbstainSettings`, whose fields may be keywords too; :mod:`editor.edit.abstain`).

    ``model`` is anything :func:`editor.model.loading.load_model` accepts (loaded with ``load``), or an already
    loaded model (which is left unchanged). ``neurons`` is a neuron file, a parsed document, a
    :class:`NeuronSet` or (layer, index) pairs. ``settings`` (:class:`~editor.edit.settings.EditSettings`) say
    how; ``alpha`` and ``mode`` override its alpha and its one mode, and any field of the settings or of
    :class:`~editor.model.loading.LoadOptions` may be given as a keyword. The edit is written in the loading
    dtype (``auto`` keeps the source's; GGUF sources: float32); ``out_of_core`` (weights mode only) streams the
    checkpoint's shards instead of loading the model. Everything is validated before anything is written; the
    output appears under ``out`` only complete and verified.
    """
    edit_fields, load_fields, abstain_fields = split_fields(fields, EditSettings, LoadOptions, AbstainSettings)
    if alpha is not None:
        edit_fields["alpha"] = alpha
    if mode is not None:
        edit_fields["modes"] = [mode]
    settings = EditSettings.of(settings, **edit_fields)
    load = LoadOptions.of(load, **load_fields)
    if settings.modes == ["abstain"]:  # a trained edit: editor.edit.abstain
        from .abstain import abstain_edit

        folder, manifest = abstain_edit(model, neurons, out, responses, settings=AbstainSettings.of(
            abstain, **abstain_fields), edit=settings, load=load, overwrite=overwrite, force=force, progress=progress)
        return EditResult(folder, "abstain", manifest)
    if responses is not None or abstain is not None or abstain_fields:
        raise InputError("responses and the abstain training settings belong to mode abstain")
    if out is not None:
        check_output_target(Path(out), overwrite)  # a folder that cannot be written is refused before its lock
    with output_lock(out) if out is not None else contextlib.nullcontext():
        job = _prepare(model, neurons, out, settings, load, overwrite=overwrite, force=force, probe=probe)
        prompts = list(settings.verify_prompts)
        with atomic_dir(job.out, overwrite=overwrite, needed=_expected_bytes(job)) as tmp:
            written, verification = _write_and_verify(job, tmp, prompts)
            evidence = _write_evidence(tmp, job.nset, job.probe)
            manifest = _manifest(job, written, verification, evidence, tmp)
            atomic_write_json(tmp / EDIT_MANIFEST, manifest)
    log.info("edit written to %s (mode %s, %d neurons)", job.out, job.mode, len(job.nset))
    return EditResult(job.out, job.mode, manifest)


def _expected_bytes(job: _Job) -> int | None:
    """About how many bytes a weights-mode edit writes (quoted if the disk fills up); None for other modes."""
    if job.mode != "weights":
        return None
    if job.ckpt is not None:
        return sum(p.stat().st_size for p in Path(job.ckpt.folder).glob("*.safetensors"))
    assert job.lm is not None
    return sum(p.numel() * p.element_size() for p in job.lm.model.parameters())


def _one_mode(settings: EditSettings) -> str:
    if len(settings.modes) != 1:
        raise InputError(f"edit_model writes one form; settings list modes {', '.join(settings.modes)}: call it once "
                         f"per mode (as `hneurons edit` and `hneurons run` do)")
    return settings.modes[0]


def _prepare(model, neurons, out, settings: EditSettings, load: LoadOptions, *, overwrite: bool, force: bool,
             probe) -> _Job:
    """Every check that can fail before writing: mode, output, neuron set, alphas, model identity."""
    mode = _one_mode(settings)
    if settings.alpha == "auto":
        raise InputError("alpha 'auto' is the alpha a sweep chose: run `hneurons sweep` (or a recipe) first and give "
                         "the number")
    alpha, layer_alpha = float(settings.alpha), settings.layer_alpha
    if out is None:
        raise InputError("no output folder given (out=...)")
    out = Path(out)
    check_output_target(out, overwrite)
    nset = as_neuron_set(neurons)
    alphas = nset.alphas(alpha, layer_alpha)
    scales = nset.scales(alpha, layer_alpha)
    probe_path = _probe_file(probe, nset)
    summary = _alpha_summary(alpha, layer_alpha, nset, alphas)
    if settings.out_of_core and mode != "gguf":  # gguf: always streamed, out_of_core or not
        ckpt = local_checkpoint(model, dtype=load.dtype, revision=load.revision,
                                trust_remote_code=load.trust_remote_code)
        _check_out_of_core_dtype(ckpt, load.dtype)
        fingerprint = checkpoint_fingerprint(ckpt)
        accepted = nset.validate(ckpt.config, fingerprint=fingerprint, force=force)
        _check_not_source(out, ckpt.folder)
        lm = model if isinstance(model, LoadedModel) else None
        return _Job(mode, out, nset, scales, summary, checkpoint_identity(ckpt, fingerprint), ckpt.source,
                    settings, load, lm=lm, ckpt=ckpt, probe=probe_path, force={"given": force, "accepted": accepted})
    converter, source_gguf = _gguf_inputs(model, settings, load, scales) if mode == "gguf" else (None, None)
    lm = _loaded(model, load)
    accepted = nset.validate(lm, force=force)
    _check_not_source(out, lm.folder)
    if mode == "gguf":
        _check_gguf_dtype(lm)
    return _Job(mode, out, nset, scales, summary, lm.identity(), lm.source, settings, load, lm=lm, probe=probe_path,
                converter=converter, source_gguf=source_gguf, force={"given": force, "accepted": accepted})


def _gguf_inputs(model, settings: EditSettings, load: LoadOptions,
                 scales: dict[int, LayerScale]) -> tuple[list[str] | None, GGUFFile | None]:
    """Before the model loads: a GGUF source opened (damaged files, types that cannot be written and missing
    tensors are refused here), or llama.cpp's converter for a safetensors source."""
    from ..model.loading import resolve_source

    source = model.source if isinstance(model, LoadedModel) else resolve_source(str(model), load.revision)
    if source.kind not in ("alias", "gguf"):
        return converter_or_error(settings.gguf_converter, source.spec), None
    src = open_gguf(source.path, "GGUF file")
    candidate_types(source_types(src, sorted(scales)), settings.gguf_type, src.path)
    return None, src


def _check_gguf_dtype(lm: LoadedModel) -> None:
    """A GGUF source is verified against its float32 dequantisation (what every rewritten value derives from)."""
    if lm.source.kind in ("alias", "gguf") and lm.model.dtype != torch.float32:
        raise InputError(f"mode gguf patches the GGUF file {Path(lm.source.path).name} itself and verifies it against "
                         f"its float32 dequantisation; the model is loaded in {lm.model.dtype}: drop --dtype (GGUF "
                         f"sources load as float32)")


def _loaded(model, load: LoadOptions) -> LoadedModel:
    if isinstance(model, LoadedModel):
        wanted = load.torch_dtype
        if wanted != "auto" and wanted != model.model.dtype:
            raise InputError(f"the loaded model is {model.model.dtype}, but dtype {load.dtype} was asked for; load it "
                             f"in that dtype, or pass the model spec instead of a loaded model")
        return model
    return load_model(model, load)


def _check_out_of_core_dtype(ckpt: Checkpoint, dtype: Any) -> None:
    """The streamed path copies tensors as stored: a different dtype is only possible for GGUF sources."""
    wanted = parse_dtype(dtype)
    if wanted == "auto" or ckpt.source.kind in ("alias", "gguf"):
        return
    arch = ckpt.arch
    entries = tensor_entries(ckpt.folder)
    name = down_proj_tensor_names(entries, arch, arch.num_layers(ckpt.config), str(ckpt.folder))[0]
    stored = entries[name].torch_dtype
    if stored != wanted:
        raise InputError(f"out-of-core editing keeps the checkpoint's dtype ({stored}); dtype {dtype} needs the "
                         f"in-memory path (drop --out-of-core) or no --dtype")


def _write_and_verify(job: _Job, tmp: Path, prompts: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    if job.mode == "weights":
        return _weights(job, tmp, prompts)
    if job.mode == "gguf":
        return _gguf(job, tmp, prompts)
    if job.ckpt is not None:
        return _adapter_out_of_core(job, tmp, prompts)
    base_name = _base_model_name(job.source, job.lm.folder if job.lm is not None else None)
    revision = job.source.revision if job.source.kind == "hub" else None
    lm = job.lm
    assert lm is not None
    if job.mode == "ia3":
        modules = make_ia3_adapter(lm.config, job.scales, tmp, base_model_name_or_path=base_name, revision=revision)
    else:
        downs = down_proj_modules(lm.model, lm.arch)
        modules = make_lora_adapter(lm.config, lambda layer: down_weight(downs[layer]), job.scales, tmp,
                                    base_model_name_or_path=base_name, revision=revision)
    reference = Reference.compute(lm, job.scales, prompts)
    verification = {"form": "loaded", **verify_edit(reference, adapter_candidates(lm.model, tmp))}
    written = {"base_model_name_or_path": base_name, "target_modules": modules}
    return written, verification


def _adapter_out_of_core(job: _Job, tmp: Path, prompts: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """An adapter made from the checkpoint's files: IA3 from the config alone, LoRA from the targeted layers'
    down-projection tensors (one at a time); verified against the checkpoint's tensors (streamed), and by
    logits when the model fits in memory twice (the source and the adapter on a float32 copy)."""
    ckpt = job.ckpt
    assert ckpt is not None
    base_name = _base_model_name(job.source, str(ckpt.folder))
    revision = job.source.revision if job.source.kind == "hub" else None
    entries = tensor_entries(ckpt.folder)
    names = down_proj_tensor_names(entries, ckpt.arch, ckpt.arch.num_layers(ckpt.config), str(ckpt.folder))
    if job.mode == "ia3":
        modules = make_ia3_adapter(ckpt.config, job.scales, tmp, base_model_name_or_path=base_name, revision=revision)
        read = 0
    else:
        modules = make_lora_adapter(ckpt.config, lambda layer: read_tensor(ckpt.folder, entries[names[layer]]),
                                    job.scales, tmp, base_model_name_or_path=base_name, revision=revision)
        read = len(job.scales)
    verification: dict[str, Any] = {"adapter_tensors": check_adapter(tmp, job.mode, ckpt.folder, ckpt.config,
                                                                     job.scales)}
    skipped = _logit_check_skipped(job, copies=2)
    if skipped:
        verification.update(form="streamed", logits=f"skipped ({skipped}); the adapter tensor check ran", passed=True)
    else:
        lm = job.lm or load_model(str(ckpt.folder), job.load, dtype="float32", revision=None)
        # the tolerance of the source's dtype, as for an adapter made from the model loaded in it
        reference = Reference.compute(lm, job.scales, prompts, stored_dtype=entries[names[0]].torch_dtype)
        verification.update(form="loaded", **verify_edit(reference, adapter_candidates(lm.model, tmp)))
    written = {"base_model_name_or_path": base_name, "target_modules": modules, "out_of_core": True,
               "source_tensors_read": read}
    return written, verification


def _weights(job: _Job, tmp: Path, prompts: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    if job.ckpt is not None:
        src, arch = job.ckpt.folder, job.ckpt.arch
        entries = tensor_entries(src)
        names = down_proj_tensor_names(entries, arch, arch.num_layers(job.ckpt.config), str(src))
        check = CheckpointCheck(src, tmp, job.scales, {layer: names[layer] for layer in job.scales}, arch,
                                require_same_names=True)
        changed = rewrite_safetensors_out_of_core(src, tmp, job.scales, job.ckpt.config, check=check)
        tensors = check.report()
        job.hashes = check.file_sha256
        dtype = entries[changed[min(changed)]].torch_dtype
        skipped = _logit_check_skipped(job, copies=1)
        verification = ({"form": "streamed", "logits": f"skipped ({skipped}); the tensor check ran", "passed": True}
                        if skipped else {"form": "loaded", **_logits_out_of_core(job, tmp, prompts, dtype)})
    else:
        lm = job.lm
        assert lm is not None
        changed = write_checkpoint(lm, job.scales, tmp, max_shard_size=job.settings.max_shard_size)
        tensors = _in_memory_tensor_check(job, lm, changed, tmp)
        reference = Reference.compute(lm, job.scales, prompts)
        verification = {"form": "loaded", **verify_edit(reference, checkpoint_candidate(tmp, lm.model.device))}
        dtype = lm.model.dtype
    verification["tensors"] = tensors
    written = {"changed_tensors": {str(k): v for k, v in changed.items()}, "dtype": str(dtype).removeprefix("torch."),
               "out_of_core": job.ckpt is not None}
    return written, verification


def _gguf(job: _Job, tmp: Path, prompts: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    from .. import __version__

    lm = job.lm
    assert lm is not None
    keys = base_keys(__version__, job.nset.sha256, len(job.nset), job.alpha, job.source.gguf_sha256)
    requested = job.settings.gguf_type
    if job.converter is None:
        reference = Reference.compute(lm, job.scales, prompts)
        return edit_from_gguf(lm.model, lm.arch, lm.d_ff, reference, job.source_gguf, job.scales, requested, tmp,
                              keys)
    folder = local_checkpoint(lm).folder
    name = Path(job.source.spec.rstrip("/")).name
    return edit_from_checkpoint(lm, folder, job.scales, requested, tmp, prompts, job.converter, keys, name)


def _in_memory_tensor_check(job: _Job, lm: LoadedModel, changed, tmp: Path) -> dict[str, Any] | str:
    """Against the source files when there are any in the same dtype (a named dtype changes every tensor)."""
    if lm.folder is None:
        return "skipped (no local source checkpoint)"
    source = tensor_entries(Path(lm.folder))
    name = next(iter(changed.values()))
    if name in source and source[name].torch_dtype != lm.model.dtype:
        return f"skipped (source stored in another dtype than {lm.model.dtype})"
    report, job.hashes = check_checkpoint(lm.folder, tmp, job.scales, changed, lm.arch, require_same_names=False)
    return report


def _available_bytes(device: str | None) -> int | None:
    """Memory a model loaded on ``device`` can take: host MemAvailable (cpu), free GPU memory (cuda), both (auto)."""
    host = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                host = int(line.split()[1]) * 1024
    except OSError:
        pass
    device = device or default_device()
    if device == "cpu" or not torch.cuda.is_available():
        return host
    free = [torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())]
    return free[torch.cuda.current_device()] if device == "cuda" else sum(free) + (host or 0)


def _logit_check_skipped(job: _Job, copies: int) -> str | None:
    """Why an out-of-core edit's logit check does not run (None: it runs): turned off, or the model, loaded in
    float32 ``copies`` times, would not fit in the memory available (the streamed tensor checks run anyway)."""
    if not job.settings.verify_logits:
        return "verify_logits=False"
    if job.lm is not None:
        return None
    assert job.ckpt is not None
    floats = [e for e in tensor_entries(job.ckpt.folder).values() if e.torch_dtype is not None
              and e.torch_dtype.is_floating_point]
    needed = copies * sum(4 * e.nbytes // e.torch_dtype.itemsize for e in floats)
    available = _available_bytes(job.load.device)
    if available is not None and needed > 0.8 * available:
        return (f"the float32 model{' twice' if copies == 2 else ''} needs {needed / 1e9:.1f} GB, more than 80% of the "
                f"{available / 1e9:.1f} GB available")
    return None


def _logits_out_of_core(job: _Job, tmp: Path, prompts: list[str], stored: torch.dtype) -> dict[str, Any]:
    """Reference from the source, then the rewritten checkpoint: one model in memory at a time."""
    lm = job.lm
    if lm is None:
        assert job.ckpt is not None
        # Loaded straight in float32: the check runs in float32 anyway, and no upcast copy is needed.
        lm = load_model(str(job.ckpt.folder), job.load, dtype="float32", revision=None)
    reference = Reference.compute(lm, job.scales, prompts, stored_dtype=stored)
    device = next(lm.model.parameters()).device
    del lm
    gc.collect()
    return verify_edit(reference, checkpoint_candidate(tmp, device))


def _files_sha256(folder: Path, known: Mapping[str, str]) -> dict[str, str]:
    """sha256 of every written file; the shards the verification hashed while comparing are not read again."""
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    hashes = files_sha256(folder, [n for n in names if n not in known])
    return {n: known.get(n) or hashes[n] for n in names}


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
        "force": job.force,
        "files": _files_sha256(folder, job.hashes or {}),
        "provenance": provenance(),
    }
