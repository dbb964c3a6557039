"""`hneurons edit`: write the fixed model as a patched checkpoint or an exact PEFT suppression adapter."""

from __future__ import annotations

import json

from ..errors import InputError
from .common import HELP_FORMATTER, add_model_args, add_recipe_option, model_defaults, stage_path

DESCRIPTION = """\
Suppress (or amplify) a set of FFN neurons permanently. Scaling neuron j's activation by alpha is
exactly scaling column j of its layer's down-projection weight, so the edit can be shipped as

  weights  a patched checkpoint (safetensors + config + tokenizer) that plain
           AutoModelForCausalLM.from_pretrained(DIR) loads, no hneurons needed; only the affected
           down-projection tensors change, every other tensor is bit-identical to the source
  ia3      a PEFT IA3 adapter: ones except alpha at the neurons (about one float per FFN neuron of
           the layers that hold neurons), for PeftModel.from_pretrained or lm-eval's peft=
  lora     a PEFT LoRA adapter of rank k per layer (k = neurons in that layer), exact as well

The neuron file is locate's neurons.json or a hand-written {"neurons": [{"layer": L, "index": J}, ...]};
a neuron's own "alpha" in the file wins over --layer-alpha, which wins over --alpha. The set is checked
against the model (ranges, duplicates, and the architecture hash / weights fingerprint it records).

Every edit is verified before the output appears: the written files are reloaded and their logits on
fixed prompts compared (in float32) with the source model under run-time activation scaling; the
differences are recorded in DIR/hneurons_edit.json with the sha256 of every written file. The output
is written to a temporary sibling folder and renamed when complete; an existing DIR is an error unless
--overwrite.

--out-of-core (weights mode) never instantiates the model for the rewrite: it copies the safetensors
shards and rewrites only the affected tensors, one at a time (for checkpoints larger than RAM; add
--skip-logit-check when the model cannot be loaded at all: the exact tensor check still runs).

examples:
  hneurons edit --model smollm2-135m-instruct --neurons runs/locate/neurons.json --out fixed-model
  hneurons edit --model ./my-llama --neurons neurons.json --alpha 0.5 --mode ia3 --out ia3-adapter
  hneurons edit --model meta-llama/Llama-3.1-8B-Instruct --neurons neurons.json --out fixed --out-of-core
  hneurons edit --neurons neurons.json --mode lora --layer-alpha 12=0 --layer-alpha 20=0.5 --out lora
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("edit", help="write the edited model: patched checkpoint, IA3 or LoRA adapter",
                                   description=DESCRIPTION, formatter_class=HELP_FORMATTER)
    add_model_args(parser)
    group = parser.add_argument_group("edit")
    group.add_argument("--neurons", metavar="FILE",
                       help="neuron file: locate's neurons.json or {\"neurons\": [{\"layer\": L, \"index\": J}, ...]}")
    group.add_argument("--alpha", type=float, default=0.0,
                       help="activation scale for every neuron (default 0 = full suppression; 1 = unchanged; >= 0)")
    group.add_argument("--layer-alpha", action="append", default=[], metavar="L=A",
                       help="alpha for the neurons of layer L (repeatable; per-neuron alphas in the file win)")
    group.add_argument("--mode", choices=["weights", "ia3", "lora"], default="weights",
                       help="what to write: patched checkpoint (default), IA3 adapter or LoRA adapter")
    group.add_argument("--out", metavar="DIR",
                       help="output folder (must not exist unless --overwrite)")
    group.add_argument("--overwrite", action="store_true",
                       help="replace DIR if it exists (only once the new one is complete)")
    group.add_argument("--out-of-core", action="store_true",
                       help="weights mode: stream the safetensors shards instead of loading the model")
    group.add_argument("--skip-logit-check", action="store_true",
                       help="with --out-of-core: skip reloading the model to compare logits (the exact tensor "
                            "check still runs)")
    group.add_argument("--force", action="store_true",
                       help="apply a neuron set located in other weights of the same architecture "
                            "(e.g. base vs instruct)")
    group.add_argument("--probe", metavar="FILE",
                       help="probe.safetensors to ship with the edit (default: the one next to the neuron "
                            "file, if any)")
    group.add_argument("--max-shard-size", default="5GB",
                       help="largest safetensors shard written by the in-memory weights mode (default 5GB)")
    group.add_argument("--json", action="store_true", help="print the manifest as JSON instead of a summary")
    add_recipe_option(parser, recipe_defaults, {"neurons": "--neurons", "out": "--out"})
    parser.set_defaults(func=run)


def parse_layer_alphas(items: list[str]) -> dict[int, float]:
    """``["12=0", "20=0.5"]`` -> ``{12: 0.0, 20: 0.5}`` (values are range-checked by the neuron set)."""
    out: dict[int, float] = {}
    for item in items:
        layer, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            key, number = int(layer), float(value)
        except ValueError:
            raise InputError(f"--layer-alpha {item!r}: expected LAYER=ALPHA, e.g. 12=0.5") from None
        if key in out:
            raise InputError(f"--layer-alpha gives layer {key} twice")
        out[key] = number
    return out


def _recipe_alpha(recipe) -> float | None:
    """The recipe's alpha; for ``auto``, the one its sweep chose (None before the sweep ran)."""
    if recipe.edit.alpha != "auto":
        return float(recipe.edit.alpha)
    import json
    from pathlib import Path

    sweep = Path(stage_path(recipe, "sweep", "sweep.json"))
    return json.loads(sweep.read_text())["chosen"]["alpha"] if sweep.is_file() else None


def recipe_defaults(recipe) -> dict:
    from ..pipeline import EDIT_FOLDERS

    mode = recipe.edit.modes[0]
    alpha = _recipe_alpha(recipe)
    return {**model_defaults(recipe), "neurons": stage_path(recipe, "locate", "neurons.json"), "mode": mode,
            "out": stage_path(recipe, EDIT_FOLDERS[mode]), "out_of_core": recipe.edit.out_of_core,
            "probe": stage_path(recipe, "locate", "probe.safetensors"),
            **({"alpha": alpha} if alpha is not None else {})}


def run(args) -> int:
    from ..edit import edit_model

    if args.skip_logit_check and not args.out_of_core:
        raise InputError("--skip-logit-check applies to --out-of-core only (in memory, the model is loaded anyway)")
    result = edit_model(
        args.model, args.neurons, args.alpha, args.mode, args.out,
        layer_alpha=parse_layer_alphas(args.layer_alpha), dtype=None if args.dtype == "auto" else args.dtype,
        device=args.device, revision=args.revision, trust_remote_code=args.trust_remote_code,
        allow_pickle=args.allow_pickle, overwrite=args.overwrite, out_of_core=args.out_of_core, force=args.force,
        probe=args.probe, max_shard_size=args.max_shard_size, verify_logits=not args.skip_logit_check,
    )
    if args.json:
        print(json.dumps(result.manifest, indent=2))
        return 0
    ver = result.verification
    diffs = ", ".join(f"{k} {v:.2e}" for k, v in ver.get("max_abs_diff", {}).items()) or ver.get("logits", "")
    print(f"wrote {result.mode} edit of {len(result.manifest['neurons']['per_layer'])} layer(s), "
          f"{result.manifest['neurons']['count']} neurons to {result.out}")
    if "tolerance" in ver:
        print(f"verified: max abs logit difference {diffs} (tolerance {ver['tolerance']:.2e}; "
              f"edit effect {ver['edit_effect_max_abs']:.3g})")
    else:
        print(f"verified: {diffs}")
    print(f"manifest: {result.out / 'hneurons_edit.json'}")
    return 0
