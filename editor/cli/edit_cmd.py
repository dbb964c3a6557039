"""`hneurons edit`: write the fixed model as a patched checkpoint, an exact PEFT suppression adapter or a GGUF file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

from ..edit.settings import MODES, AbstainSettings, EditSettings
from ..errors import InputError
from ..formats import EDIT_FOLDERS, EDIT_MANIFEST, NEURONS, PROBE
from ..options import add_arguments, dest_of, given, typed
from .common import (
    HELP_FORMATTER,
    add_model_args,
    add_recipe_option,
    existing,
    in_recipe_output,
    load_from_args,
    load_options,
    model_spec,
    required,
    stage_settings,
)

DESCRIPTION = """\
Suppress (or amplify) a set of FFN neurons permanently. Scaling neuron j's activation by alpha is
exactly scaling column j of its layer's down-projection weight, so the edit can be shipped as

  weights  a patched checkpoint (safetensors + config + tokenizer) that plain
           AutoModelForCausalLM.from_pretrained(DIR) loads, no hneurons needed; only the affected
           down-projection tensors change, every other tensor is bit-identical to the source
  ia3      a PEFT IA3 adapter: ones except alpha at the neurons (about one float per FFN neuron of
           the layers that hold neurons), for PeftModel.from_pretrained or lm-eval's peft=
  lora     a PEFT LoRA adapter of rank k per layer (k = neurons in that layer), exact as well
  gguf     one GGUF file for llama.cpp, Ollama and LM Studio (--format gguf says the same). From a
           GGUF source (an embedded alias, a .gguf file) the file is patched: metadata and untouched
           tensors copied byte for byte, only the affected ffn_down tensors rewritten, stored as
           --gguf-type (auto: the most compact type that keeps the edit within tolerance). From a
           safetensors source through llama.cpp's converter (convert_hf_to_gguf.py, --gguf-converter)

The neuron file is locate's neurons.json or a hand-written {"neurons": [{"layer": L, "index": J}, ...]};
a neuron's own "alpha" in the file wins over --layer-alpha, which wins over --alpha. The set is checked
against the model (ranges, duplicates, and the architecture hash / weights fingerprint it records).

Every edit is verified before the output appears: the written files are reloaded and their logits on
fixed prompts compared (in float32) with the source model under run-time activation scaling; the
differences are recorded in DIR/hneurons_edit.json with the sha256 of every written file (a GGUF is
also read back with gguf and with transformers' GGUF loader, and its quantization error is shown next
to the edit's own effect). The output
is written to a temporary sibling folder and renamed when complete; an existing DIR is an error unless
--overwrite.

--out-of-core never instantiates the model: weights mode copies the safetensors shards and rewrites
only the affected tensors, one at a time; ia3 is made from the config alone and lora from the targeted
layers' down-projection tensors. The written files are then checked against the source's, streamed
(no model in memory): every untouched tensor byte for byte, the rewritten columns exactly alpha x
source, the index against the shard headers, an adapter's tensors against the down-projections. The
logit check also runs when the model fits in memory in float32 (twice for adapters); otherwise, or with
--skip-logit-check, it is skipped and the manifest says so ("form": "streamed").

--mode abstain (with --responses COLLECT_DIR) does not scale the neurons: it trains their own weights
(each neuron's W_down column; with --train up,down or gate,up,down also its W_up / W_gate rows; nothing
else) so that the model answers the abstention sentence (--abstain-text) where it answered the collect
train questions consistently wrong and keeps its own answers where it answered them right, with a KL
penalty to the unedited model on neutral prompts (--kl-weight). Early stopping and the strength (a scale
of the learned change, --strengths) are decided on the validation split; the test split is never read.
DIR holds model/ (a checkpoint where only those columns / rows differ from the source, verified tensor by
tensor and by logits), adapter-lora/ (the same change as an exact LoRA adapter, verified with PEFT),
abstain_delta.safetensors, training/ and hneurons_edit.json with the data hashes, settings, losses per
epoch, the strength table and the neuron set. A killed run resumes from DIR/training/ when run again
with the same inputs and settings.

Baselines of --mode abstain, trained and written the same way (data, objective, epochs, early stopping,
strength choice): --random-control SEED trains the random control of NEURONS instead (as many neurons in
each layer, none of NEURONS, drawn with SEED as eval draws its controls; DIR/neurons.json is the drawn
set and the manifest's "control" records the seed, its sha256 and the sha256 of NEURONS); run it for
several seeds. --abstain-params lora trains a standard LoRA on every layer's down-projection instead of
the neurons (PEFT's init: A kaiming-uniform, B = 0), of the rank whose parameter count is closest to the
neuron edit's (--lora-rank N to choose it; a small neuron set is smaller than any rank 1, and the manifest
says by how much); DIR/adapter-lora/ is a plain PEFT LoRA (hneurons eval --adapter, PeftModel), verified
against the trained model, and the manifest has "baseline": "lora".

examples:
  hneurons edit --model smollm2-135m-instruct --neurons runs/locate/neurons.json --out fixed-model
  hneurons edit --model ./my-llama --neurons neurons.json --alpha 0.5 --mode ia3 --out ia3-adapter
  hneurons edit --model meta-llama/Llama-3.1-8B-Instruct --neurons neurons.json --out fixed --out-of-core
  hneurons edit --neurons neurons.json --mode lora --layer-alpha 12=0 --layer-alpha 20=0.5 --out lora
  hneurons edit --model smollm2-135m-instruct --neurons neurons.json --format gguf --out fixed-gguf
  hneurons edit --mode abstain --model smollm2-135m-instruct --neurons runs/locate/neurons.json \\
      --responses runs/collect --out abstain --epochs 4 --train up,down
  hneurons edit --mode abstain --neurons runs/locate/neurons.json --responses runs/collect \\
      --out abstain-random1 --random-control 1
  hneurons edit --mode abstain --neurons runs/locate/neurons.json --responses runs/collect \\
      --out abstain-lora --abstain-params lora
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("edit", help="write the edited model: patched checkpoint, IA3 or LoRA adapter",
                                   description=DESCRIPTION, formatter_class=HELP_FORMATTER)
    add_model_args(parser)
    group = parser.add_argument_group("edit")
    group.add_argument("--neurons", metavar="FILE",
                       help="neuron file: locate's neurons.json or {\"neurons\": [{\"layer\": L, \"index\": J}, ...]}")
    group.add_argument("--out", metavar="DIR",
                       help="output folder (must not exist unless --overwrite); with several --mode, the parent of "
                            "model/, adapter-ia3/, adapter-lora/, gguf/")
    group.add_argument("--overwrite", action="store_true",
                       help="replace DIR if it exists (only once the new one is complete)")
    group.add_argument("--force", action="store_true",
                       help="apply a neuron set located in other weights of the same architecture "
                            "(e.g. base vs instruct)")
    group.add_argument("--probe", metavar="FILE",
                       help="probe.safetensors to ship with the edit (default: the one next to the neuron "
                            "file, if any)")
    group.add_argument("--responses", metavar="COLLECT_DIR",
                       help="--mode abstain: the collect folder whose train / validation answers are the training data")
    group.add_argument("--json", action="store_true", help="print the manifest as JSON instead of a summary")
    add_arguments(parser, EditSettings, title="how to edit")
    add_arguments(parser, AbstainSettings, title="abstain training (--mode abstain)")
    parser.add_argument("--format", dest=dest_of(EditSettings, "modes"), action="append", choices=MODES,
                        default=argparse.SUPPRESS, metavar="MODE", help="the same as --mode (--format gguf)")
    add_recipe_option(parser)
    parser.set_defaults(func=run)


def resolve(args) -> SimpleNamespace:
    settings = stage_settings(args, EditSettings, "edit")
    if args.recipe is not None and not given(EditSettings, args, "alpha") and settings.modes != ["abstain"]:
        from ..pipeline.run import recipe_alpha

        settings = settings.model_copy(update={"alpha": recipe_alpha(args.recipe)})  # auto: the sweep's choice
    if not settings.verify_logits and not settings.out_of_core:
        raise InputError("--skip-logit-check applies to --out-of-core only (in memory, the model is loaded anyway)")
    neurons = required(args, "neurons", "--neurons", in_recipe_output(args, "locate", NEURONS))
    abstain = stage_settings(args, AbstainSettings, "abstain") if settings.modes == ["abstain"] else None
    responses = None
    if abstain is not None:
        responses = required(args, "responses", "--responses", in_recipe_output(args, "collect"))
    elif args.responses or typed(AbstainSettings, args):
        raise InputError("--responses and the abstain training options belong to --mode abstain")
    several = len(settings.modes) > 1
    out = required(args, "out", "--out", in_recipe_output(args, *([] if several else [EDIT_FOLDERS[settings.modes[0]]])))
    probe = args.probe or existing(in_recipe_output(args, "locate", PROBE))
    outs = {mode: Path(out) / EDIT_FOLDERS[mode] if several else Path(out) for mode in settings.modes}
    return SimpleNamespace(settings=settings, model=model_spec(args), neurons=neurons, outs=outs, probe=probe,
                           abstain=abstain, responses=responses)


def run(args) -> int:
    from ..edit.stage import edit_model

    plan = resolve(args)
    load = load_options(args)
    # several forms: one model load serves them all
    model = load_from_args(args, plan.model) if len(plan.outs) > 1 and not plan.settings.out_of_core else plan.model
    for mode, target in plan.outs.items():
        extra = {"responses": plan.responses, "abstain": plan.abstain} if mode == "abstain" else {"probe": plan.probe}
        result = edit_model(model, plan.neurons, mode=mode, out=target, settings=plan.settings, load=load,
                            overwrite=args.overwrite, force=args.force, **extra)
        (_report_abstain if mode == "abstain" else _report)(result, args.json)
    return 0


def _report_abstain(result, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.manifest, indent=2))
        return
    info = result.manifest["abstain"]
    training, strength = info["training"], info["strength"]
    counts = info["data"]["splits"]
    control, lora = result.manifest.get("control"), info.get("lora")
    if lora:
        what = (f"a LoRA of rank {lora['rank']} on {len(lora['target_modules'])} down-projections (the baseline; "
                f"{lora['ratio_to_neuron_edit']:.2f}x the {lora['neuron_edit_parameters']} parameters of the neuron edit)")
    else:
        what = (f"({'+'.join(info['train'])}) of {result.manifest['neurons']['count']} neurons"
                + (f" (the matched random control, seed {control['seed']})" if control else ""))
    print(f"trained {info['trainable_parameters']} parameters {what} on {counts['train']['abstain']} abstention and "
          f"{counts['train']['answer']} answer targets; {training['epochs_run']} epoch(s) ({training['stopped']}"
          + (f", resumed after epoch {training['resumed_from_epoch']}" if training["resumed_from_epoch"] else "")
          + f"), best epoch {training['best_epoch']}")
    chosen = strength["validation"]
    if chosen:
        rates = ", ".join(f"{k.removeprefix('abstain_rate_')} {chosen[k]:.3f}" for k in
                          ("abstain_rate_wrong", "abstain_rate_right") if chosen.get(k) is not None)
        print(f"strength {strength['chosen']} (rule {strength['rule']}): validation loss {chosen['loss']:.4f}, "
              f"abstains on {rates}" + (f", KL {chosen['kl']:.4f}" if chosen.get("kl") is not None else ""))
    else:
        print(f"strength {strength['chosen']}: {strength['note']}")
    for form, check in result.manifest["verification"].items():
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in check["max_abs_diff"].items())
        print(f"{form}: {result.out / result.manifest['forms'][form]} (verified: max abs logit difference {diffs}, "
              f"tolerance {check['tolerance']:.2e})")
    print(f"manifest: {result.out / EDIT_MANIFEST}")


def _report(result, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.manifest, indent=2))
        return
    ver = result.verification
    diffs = ", ".join(f"{k} {v:.2e}" for k, v in ver.get("max_abs_diff", {}).items()) or ver.get("logits", "")
    print(f"wrote {result.mode} edit of {len(result.manifest['neurons']['per_layer'])} layer(s), "
          f"{result.manifest['neurons']['count']} neurons to {result.out}")
    if result.mode == "gguf":
        written = result.manifest["written"]
        print(f"GGUF: {written['gguf_file']}, rewritten tensors stored as {ver['stored_dtype']} (--gguf-type "
              f"{ver['gguf_type']}), {written['size_bytes'] / 1e6:.1f} MB"
              + (f" (source {written['source_gguf']['size_bytes'] / 1e6:.1f} MB)" if written.get("source_gguf") else ""))
        print(f"verified: quantization error {ver['quantization_error_max_abs']:.3g} (max abs logit: {diffs}) vs the "
              f"edit's own effect {ver['edit_effect_max_abs']:.3g}; tolerance {ver['tolerance']:.3g}")
    elif "tolerance" in ver:
        print(f"verified: max abs logit difference {diffs} (tolerance {ver['tolerance']:.2e}; "
              f"edit effect {ver['edit_effect_max_abs']:.3g})")
    else:
        print(f"verified: {diffs}")
    if ver.get("form") == "streamed":
        print("verification form: streamed (no model loaded): " + ", ".join(
            f"{k} check {'passed' if ver[k].get('passed', True) else 'FAILED'}" for k in ("tensors", "adapter_tensors")
            if isinstance(ver.get(k), dict)))
    print(f"manifest: {result.out / EDIT_MANIFEST}")
