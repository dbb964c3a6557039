"""The abstention edit (``hneurons edit --mode abstain``): train only a neuron set's own weights so that the model
says "I don't know." where it would answer wrong, and write the result like every other edit.

Scaling H-Neurons can only make a model comply less; this edit routes their signal into abstention. The data is
the collect stage's own train split (:mod:`editor.edit.abstain_data`: consistently wrong -> the abstention
sentence, consistently right -> the model's own answer), the trainable parameters are the neurons' W_down
columns and optionally their W_up / W_gate rows (:mod:`editor.edit.abstain_delta`), the objective is
cross-entropy on the targets plus a KL penalty to the frozen model on neutral prompts, with early stopping and
the strength chosen on the validation split (:mod:`editor.edit.abstain_train`). The neuron set can be any: with
``random_seed`` the matched random control of the given set (:func:`random_control`, drawn by
:func:`editor.model.neuron_set.matched_random_pairs` as eval draws its controls) is trained instead, the same
way. With ``params: lora`` the baseline a user would pick instead is trained by the same loop: a standard LoRA
on every down-projection of the rank matched to the neuron edit's parameter count (:mod:`editor.edit.abstain_lora`),
written as ``adapter-lora/`` alone (a plain PEFT LoRA, B times the chosen strength), verified the same way.

Output folder ``out`` (docs/ARTIFACTS.md):

* ``model/``: a plain transformers checkpoint in the model's dtype where only the trained columns / rows differ
  from the source (each block = source + strength x delta, rounded once); every other tensor bit-identical,
  verified by reloading it (:func:`editor.edit.verify.check_blocks`) and comparing its logits on the verify
  prompts with the in-memory trained model (float32; the tolerance of the stored dtype, as for scaling edits);
* ``adapter-lora/``: the exact LoRA form (down: A = one-hot rows of the neurons, B = strength x the learned
  column change, rank = neurons per layer; up / gate: B = one-hot columns, A = strength x the learned row
  change; lora_alpha = rank, so scaling 1; no dropout), reloaded with PEFT (as an adapter and merged) and compared
  with the in-memory trained model within the float32 tolerance before it is kept;
* ``abstain_delta.safetensors`` (the learned deltas at strength 1, the neurons, the chosen strength: apply it at
  run time with :func:`editor.edit.abstain_delta.load_delta` and :func:`~editor.edit.abstain_delta.applied`),
  ``neurons.json``, ``training/`` (``state.pt``, the last checkpoint; ``training.json``, the history) and
  ``hneurons_edit.json`` (mode ``abstain``: the data and its hashes, the settings, the losses per epoch, the
  strength table, the neuron set, each form's verification, every file's sha256). Each form folder carries its
  own ``hneurons_edit.json`` and ``neurons.json``, so it can be evaluated, carded and pushed alone.

While training, ``out/training/state.pt`` is rewritten after every epoch; a killed run started again with the
same inputs and settings resumes from it (another key is refused unless ``overwrite``). The finished folder is
written into a temporary sibling and replaces ``out`` in one rename. The loaded model is left unchanged.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
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
    sha256_file,
    sha256_json,
)
from ..data.prompting import read_neutral_prompts, render_prompt_ids
from ..errors import InputError, OutputExistsError
from ..formats import (
    ABSTAIN_DELTA,
    ABSTAIN_HISTORY,
    ABSTAIN_TRAIN_FORMAT,
    ABSTAIN_TRAINING,
    EDIT_FOLDERS,
    EDIT_FORMAT,
    EDIT_MANIFEST,
    NEURONS,
    NEURONS_FORMAT,
)
from ..locking import output_lock
from ..model.hooks import LayerScale, group_by_layer, scaled_neurons
from ..model.loading import LoadedModel, LoadOptions, ModelSource, load_model
from ..model.neuron_set import NeuronSet, as_neuron_set, matched_random_pairs
from ..paths import NEUTRAL_PROMPTS
from .abstain_data import TrainingData, load_training_data
from .abstain_delta import (
    NeuronDelta,
    lora_factors,
    merged_into_weights,
    parts_for,
    save_delta,
)
from .abstain_lora import LoraDelta, matched_rank, per_rank
from .abstain_train import (
    KL_MAX_TOKENS,
    STATE,
    Neutral,
    TrainableEdit,
    TrainResult,
    base_logprobs,
    load_state,
    pad_id,
    train,
)
from .adapters import make_factor_lora_adapter
from .settings import AbstainSettings, EditSettings
from .verify import (
    FP32_TOLERANCE,
    HALF_DTYPES,
    adapter_candidates,
    as_float32,
    check_blocks,
    encode_prompts,
    max_abs_diff,
    prompt_logits,
    tolerance,
    verify_logits,
)
from .weights import ensure_index

log = logging.getLogger(__name__)

TRAINING = ABSTAIN_TRAINING
TRAINING_HISTORY = ABSTAIN_HISTORY
DELTA_FILE = ABSTAIN_DELTA
FORM_FOLDERS = {"weights": EDIT_FOLDERS["weights"], "lora": EDIT_FOLDERS["lora"]}
# Settings that change what is trained (the resume key); the strength choice and the forms are decided after.
NOT_IN_KEY = {"strengths", "strength_rule", "forms", "neuron_set"}  # neuron_set: the set itself is in the key


def _base_model_name(source: ModelSource, folder: str | None) -> str:
    """Where plain PEFT finds the base (as for the scaling adapters, editor.edit.stage)."""
    if source.kind == "hub":
        return source.spec
    if source.kind == "folder" or not folder:
        return source.path if source.kind == "folder" else source.spec
    return str(Path(folder).resolve())


def _check_not_source(out: Path, folder: str | None) -> None:
    if folder is None:
        return
    out_abs, src_abs = out.resolve(), Path(folder).resolve()
    if out_abs == src_abs or out_abs in src_abs.parents or src_abs in out_abs.parents:
        raise InputError(f"output {out} overlaps the source checkpoint {folder}; the source is never modified: "
                         f"choose an output folder outside it")


def neuron_indices(nset: NeuronSet) -> dict[int, LayerScale]:
    """The set's neurons per layer (sorted); alphas play no part in a trained edit."""
    return group_by_layer(nset.neurons, 1.0)


def prepare_neutral(lm: LoadedModel, settings: AbstainSettings, chat: bool) -> Neutral:
    """The KL term's neutral prompts, rendered as a user turn (chat) or as text, and the unedited model's
    log-probabilities at each of their positions (computed once)."""
    path = Path(settings.kl_prompts) if settings.kl_prompts else NEUTRAL_PROMPTS
    prompts = read_neutral_prompts(path, settings.kl_max_prompts)
    ids = [row[:KL_MAX_TOKENS] for row in render_prompt_ids(lm.tokenizer, prompts, chat)]
    device = next(lm.model.parameters()).device
    base = base_logprobs(lm.model, ids, pad_id(lm.tokenizer), device, settings.kl_batch_size)
    return Neutral(ids, base, str(path), sha256_file(path))


def random_control(nset: NeuronSet, lm: LoadedModel, seed: int) -> tuple[NeuronSet, dict[str, Any]]:
    """The random control of ``nset`` trained instead of it (``random_seed``): as many neurons in each layer, none
    of ``nset``'s, drawn with ``seed`` (:func:`~editor.model.neuron_set.matched_random_pairs`, the draw of eval's
    controls), and its record for the manifest."""
    pairs = matched_random_pairs(nset.neurons, lm.d_ff, seed)
    record = {"kind": "random", "match": "per layer", "seed": seed, "control_of": nset.sha256,
              "control_of_count": len(nset), "control_of_source": nset.source}
    doc: dict[str, Any] = {"format": NEURONS_FORMAT, "model": dict(nset.model or lm.identity()),
                           "neurons": [{"layer": layer, "index": j} for layer, j in pairs], "count": len(pairs),
                           "control": record}
    control = NeuronSet.from_dict(doc, where=f"random control (seed {seed}) of {nset.source or 'the neuron set'}")
    return control, {**record, "sha256": control.sha256}


def trainable(lm: LoadedModel, nset: NeuronSet, settings: AbstainSettings) -> tuple[TrainableEdit, dict[str, Any] | None]:
    """What is trained: the neuron set's deltas, or (``params: lora``) the LoRA baseline of the rank matched to
    their parameter count, with its record for the manifest."""
    parts = parts_for(lm.arch, neuron_indices(nset), settings.train, lm.d_ff)
    delta = NeuronDelta.for_model(lm.model, lm.arch, parts)
    if settings.params == "neurons":
        return delta, None
    rank = settings.lora_rank or matched_rank(delta.count(), per_rank(lm.model, lm.arch))
    lora = LoraDelta.for_model(lm.model, lm.arch, rank, settings.seed)
    return lora, lora.record(delta.count(), settings.lora_rank)


def resume_key(lm: LoadedModel, nset: NeuronSet, data: TrainingData, neutral: Neutral,
               settings: AbstainSettings) -> str:
    return sha256_json({"format": ABSTAIN_TRAIN_FORMAT, "data": data.record(), "neurons": nset.sha256,
                        "settings": settings.model_dump(mode="json", exclude=NOT_IN_KEY),
                        "model": {"architecture_hash": lm.architecture_hash, "weights_sha256": lm.weights_sha256(),
                                  "dtype": str(lm.model.dtype)},
                        "neutral": sha256_json(neutral.ids)})[:16]


def _prepare_out(out: Path, key: str, overwrite: bool) -> Path:
    """The training state folder inside ``out``: resumed when its key matches, refused or discarded otherwise."""
    state_dir = out / TRAINING
    if out.exists():
        if not out.is_dir():
            raise InputError(f"output {out} is a file, not a folder")
        finished = (out / EDIT_MANIFEST).is_file()
        state = load_state(state_dir / STATE)
        same = state is not None and state.get("key") == key
        if finished and not overwrite:
            raise OutputExistsError(f"output {out} already exists; pass --overwrite to replace it")
        if not finished and not same and any(out.iterdir()) and not overwrite:
            what = "a training run with other data or settings" if state is not None else "other files"
            raise OutputExistsError(f"output {out} holds {what}; use another --out, or --overwrite to discard it")
        if not same and state_dir.exists():
            shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    return state_dir


def abstain_edit(model: str | LoadedModel, neurons: Any, out: str | Path | None, responses: str | Path | None, *,
                 settings: AbstainSettings | None = None, edit: EditSettings | None = None,
                 load: LoadOptions | None = None, overwrite: bool = False, force: bool = False, progress: bool = True,
                 on_epoch: Callable[[int, list[dict[str, Any]]], None] | None = None) -> tuple[Path, dict[str, Any]]:
    """Train and write the abstention edit of ``neurons`` on the collect folder ``responses`` (module docstring);
    returns the output folder and its manifest. ``on_epoch(epoch, history)`` runs after each epoch's checkpoint."""
    settings = AbstainSettings.of(settings)
    edit = EditSettings.of(edit, modes=["abstain"])
    load = LoadOptions.of(load)
    if out is None:
        raise InputError("no output folder given (out=...)")
    if responses is None:
        raise InputError("mode abstain trains on a collect folder: give it (--responses COLLECT_DIR, responses=...)")
    out, responses = Path(out), Path(responses)
    if not responses.is_dir():
        raise InputError(f"collect folder not found: {responses}")
    if (out / EDIT_MANIFEST).is_file() and not overwrite:  # before any model loads
        raise OutputExistsError(f"output {out} already exists; pass --overwrite to replace it")
    check_output_target(out, overwrite=True)  # a folder that cannot be written is refused before its lock
    with output_lock(out):
        nset = as_neuron_set(neurons)
        lm = model if isinstance(model, LoadedModel) else load_model(model, load)
        accepted = nset.validate(lm, force=force)
        control = None
        if settings.random_seed is not None:
            nset, control = random_control(nset, lm, settings.random_seed)
        _check_not_source(out, lm.folder)
        data, accepted_data = load_training_data(responses, lm, settings, force=force)
        delta, baseline = trainable(lm, nset, settings)
        neutral = prepare_neutral(lm, settings, data.chat)
        key = resume_key(lm, nset, data, neutral, settings)
        state_dir = _prepare_out(out, key, overwrite)
        result = train(lm, delta, data, neutral, settings, state_dir, key, progress=progress, on_epoch=on_epoch)
        atomic_write_json(state_dir / TRAINING_HISTORY, {"key": key, "history": result.history,
                                                         "best_epoch": result.best_epoch, "stopped": result.stopped})
        with atomic_dir(out, overwrite=True) as tmp:
            manifest = _write(lm, nset, data, neutral, settings, edit, result, key, state_dir, tmp,
                              force={"given": force, "accepted": accepted or accepted_data},
                              extra={**({"control": control} if control else {}),
                                     **({"baseline": "lora", "lora": baseline} if baseline else {})})
    log.info("abstain edit written to %s (%s, strength %s)", out,
             f"LoRA rank {baseline['rank']}" if baseline else f"{len(nset)} neurons", result.strength)
    return out, manifest


# ================================================================================================ writing
def _write(lm: LoadedModel, nset: NeuronSet, data: TrainingData, neutral: Neutral, settings: AbstainSettings,
           edit: EditSettings, result: TrainResult, key: str, state_dir: Path, tmp: Path,
           force: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """The folder (module docstring). ``extra``: the random control's or the LoRA baseline's record (manifest
    keys ``control``; ``baseline`` and ``abstain.lora``). The LoRA baseline writes its adapter only (no delta file,
    no checkpoint form)."""
    strength, delta = result.strength, result.delta
    lora_baseline = isinstance(delta, LoraDelta)
    (tmp / TRAINING).mkdir()
    for name in (STATE, TRAINING_HISTORY):
        shutil.copyfile(state_dir / name, tmp / TRAINING / name)
    if not lora_baseline:
        save_delta(tmp / DELTA_FILE, delta, strength, {"neurons_sha256": nset.sha256, "train": settings.train,
                                                       "model": lm.identity()})
    _write_neurons(tmp, nset)
    reference = _reference(lm, delta, strength, list(edit.verify_prompts), neuron_indices(nset))
    common = _common(lm, nset, data, neutral, settings, result, key, delta, force, extra)
    forms, verification = {}, {}
    for form in (["lora"] if lora_baseline else settings.forms):
        folder = tmp / FORM_FOLDERS[form]
        folder.mkdir()
        if form == "weights":
            written, check = _write_weights(lm, delta, strength, folder, reference, edit.max_shard_size)
        else:
            written, check = _write_lora(lm, delta, strength, folder, reference)
        _write_neurons(folder, nset)
        own = {**common, "form": form, "written": written, "verification": check,
               "files": files_sha256(folder, _names(folder)), "provenance": provenance()}
        atomic_write_json(folder / EDIT_MANIFEST, own)
        forms[form], verification[form] = FORM_FOLDERS[form], check
    manifest = {**common, "forms": forms, "written": {"delta": None if lora_baseline else DELTA_FILE,
                                                      "training": TRAINING},
                "verification": verification, "files": files_sha256(tmp, _names(tmp)), "provenance": provenance()}
    atomic_write_json(tmp / EDIT_MANIFEST, manifest)
    return manifest


def _names(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _write_neurons(folder: Path, nset: NeuronSet) -> None:
    if nset.path is not None:
        atomic_write_bytes(folder / NEURONS, nset.path.read_bytes())
    else:
        atomic_write_json(folder / NEURONS, nset.to_document())


def _common(lm: LoadedModel, nset: NeuronSet, data: TrainingData, neutral: Neutral, settings: AbstainSettings,
            result: TrainResult, key: str, delta: TrainableEdit, force: dict[str, Any],
            extra: dict[str, Any]) -> dict[str, Any]:
    best = next((r for r in result.history if r["epoch"] == result.best_epoch), None)
    chosen = next((r for r in result.strength_table if r["strength"] == result.strength), None)
    return {
        "format": EDIT_FORMAT,
        "mode": "abstain",
        **({"baseline": extra["baseline"]} if "baseline" in extra else {}),
        "model": lm.identity(),
        "neurons": {"sha256": nset.sha256, "count": len(nset),
                    "per_layer": {str(k): v for k, v in nset.per_layer().items()},
                    "source_file": nset.source},
        **({"control": extra["control"]} if "control" in extra else {}),
        "abstain": {
            "abstain_text": settings.abstain_text,
            "train": ["lora"] if "lora" in extra else list(settings.train),
            "trainable_parameters": delta.count(),
            **({"lora": extra["lora"]} if "lora" in extra else {}),
            "settings": settings.model_dump(mode="json"),
            "data": data.record(),
            "kl_prompts": {"file": neutral.file, "sha256": neutral.sha256, "prompts": len(neutral.ids),
                           "positions": neutral.positions},
            "training": {"key": key, "history": result.history, "best_epoch": result.best_epoch,
                         "best": best, "epochs_run": len(result.history), "stopped": result.stopped,
                         "resumed_from_epoch": result.resumed_from, "steps_this_run": result.steps,
                         "seconds_this_run": result.seconds},
            "strength": {"chosen": result.strength, "rule": settings.strength_rule, "validation": chosen,
                         "table": result.strength_table, "note": result.note},
        },
        "force": force,
    }


@dataclass
class _Reference:
    inputs: dict[str, torch.Tensor]
    base: torch.Tensor
    expected: torch.Tensor
    stored_dtype: torch.dtype
    suppression: float | None


def _reference(lm: LoadedModel, delta: TrainableEdit, strength: float, prompts: list[str],
               neurons: dict[int, LayerScale]) -> _Reference:
    """The in-memory trained model's float32 logits on the verify prompts (a float32 copy of the source with the
    deltas applied by hooks), the source's own, and for half-precision models the logit change when the edited
    neurons are silenced in the trained model (the scale of the storage rounding of their rewritten weights)."""
    model = as_float32(lm.model)
    inputs = encode_prompts(lm.tokenizer, prompts)
    base = prompt_logits(model, inputs)
    suppression = None
    with delta.applied(model, strength):
        expected = prompt_logits(model, inputs)
        if lm.model.dtype in HALF_DTYPES and isinstance(delta, NeuronDelta):  # the checkpoint form's tolerance
            zero = {layer: LayerScale(s.index, torch.zeros_like(s.alpha)) for layer, s in neurons.items()}
            with scaled_neurons(model, zero):
                suppression = max_abs_diff(expected, prompt_logits(model, inputs))
    del model
    return _Reference(inputs, base, expected, lm.model.dtype, suppression)


REFERENCE = "the in-memory trained model (the source with the learned deltas applied by forward hooks, float32)"


def _write_weights(lm: LoadedModel, delta: NeuronDelta, strength: float, folder: Path, ref: _Reference,
                   max_shard_size: str) -> tuple[dict[str, Any], dict[str, Any]]:
    from transformers import AutoModelForCausalLM

    with merged_into_weights(lm.model, delta, strength) as blocks:
        lm.model.save_pretrained(folder, max_shard_size=max_shard_size)
    lm.tokenizer.save_pretrained(folder)
    ensure_index(folder)
    reloaded = AutoModelForCausalLM.from_pretrained(str(folder), dtype=lm.model.dtype)
    tensors = check_blocks(lm.model.state_dict(), reloaded.state_dict(), blocks)
    candidate = as_float32(reloaded) if reloaded.dtype in HALF_DTYPES else reloaded
    device = next(lm.model.parameters()).device
    tol = tolerance(ref.stored_dtype, 1.0, ref.suppression) if ref.stored_dtype in HALF_DTYPES else FP32_TOLERANCE
    check = verify_logits(ref.expected, ref.inputs, [("checkpoint", candidate.to(device).eval())], tol, REFERENCE)
    del reloaded, candidate
    check.update(form="loaded", stored_dtype=str(lm.model.dtype).removeprefix("torch."),
                 edit_effect_max_abs=max_abs_diff(ref.base, ref.expected), suppression_effect_max_abs=ref.suppression,
                 tensors=tensors)
    written = {"changed_tensors": sorted(blocks), "dtype": str(lm.model.dtype).removeprefix("torch."),
               "strength": strength}
    return written, check


def _write_lora(lm: LoadedModel, delta: TrainableEdit, strength: float, folder: Path,
                ref: _Reference) -> tuple[dict[str, Any], dict[str, Any]]:
    base_name = _base_model_name(lm.source, lm.folder)
    revision = lm.source.revision if lm.source.kind == "hub" else None
    factors = delta.factors(strength) if isinstance(delta, LoraDelta) else lora_factors(lm.model, delta, strength)
    modules = make_factor_lora_adapter(lm.config, factors, folder, base_model_name_or_path=base_name,
                                       revision=revision)
    check = verify_logits(ref.expected, ref.inputs, adapter_candidates(lm.model, folder), FP32_TOLERANCE, REFERENCE)
    check.update(form="loaded", edit_effect_max_abs=max_abs_diff(ref.base, ref.expected))
    written = {"base_model_name_or_path": base_name, "target_modules": modules,
               "ranks": {name: int(a.shape[0]) for name, (a, _) in factors.items()}, "strength": strength}
    return written, check
