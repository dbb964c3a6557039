"""The values of the card's own sections (README.md.j2 lays them out): title, summary, the edit, how to load,
how to reproduce, and the file list. Each function returns what its section shows, every artifact string
already escaped (:func:`~editor.report.card.text.md_text`, :func:`~editor.report.card.text.code_block`).

Keys avoid the names of dict methods (items, values, keys, ...): Jinja looks attributes up before keys.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from ...artifacts import sha256_file
from ...formats import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    NEURONS,
    PER_LAYER_PLOT,
    PROBE,
    SAFETENSORS_INDEX,
)
from .commands import stage_commands
from .constants import HUB_URL, PAPER_PER_MILLE, PLOTS_DIR, REPORT_NAMES
from .figures import Plots, image, plot_per_layer
from .inputs import CardInputs, outcome
from .sources import base_model_id, source_label
from .text import code_block, finite, fmt, md_text, plural, sci, short_path

_SHA256 = re.compile(r"[0-9a-f]{64}")  # a digest shown as is; anything else is escaped
_SHIPPED_AS = {"weights": "a patched checkpoint (only down-projection columns differ from the source)",
               "ia3": "a PEFT IA3 adapter", "lora": "a PEFT LoRA adapter",
               "gguf": "one GGUF file for llama.cpp, Ollama and LM Studio (only down-projection tensors differ from "
                       "the source GGUF)"}
_FILES = {NEURONS: "the H-Neuron set (layer, index), as located",
          PROBE: "the detection probe (weights in standardised CETT space, mean and std)",
          ADAPTER_CONFIG: "PEFT adapter configuration", ADAPTER_WEIGHTS: "adapter weights",
          "config.json": "model configuration", SAFETENSORS_INDEX: "safetensors index",
          "generation_config.json": "generation defaults"}


def alpha_text(alpha: Mapping[str, Any]) -> str:
    lo, hi = alpha.get("min"), alpha.get("max")
    if lo == hi:
        return f"{lo:g}" if finite(lo) else "n/a"
    return f"{lo:g} to {hi:g} (default {alpha.get('default', 0.0):g})"


# --------------------------------------------------------------------------------------- title, summary
TRAINED_ALPHA = "none: trained abstention edit"


def title(inputs: CardInputs) -> dict:
    return {"name": md_text(inputs.name), "source": md_text(source_label(inputs.identity)),
            "alpha": TRAINED_ALPHA if inputs.trained else alpha_text(inputs.edit["alpha"]), "mode": inputs.mode,
            "trained": inputs.trained}


def summary(inputs: CardInputs) -> dict:
    from ... import __version__

    if inputs.trained:
        action, alpha_shown = "trained to say \"I don't know.\" where it would answer wrong", TRAINED_ALPHA
    else:
        alpha = inputs.edit["alpha"]
        action = ("switched off" if alpha.get("max") == 0 else "damped" if (alpha.get("max") or 0) < 1
                  else "amplified" if (alpha.get("min") or 0) > 1 else "rescaled")
        alpha_shown = alpha_text(alpha)
    return {"source": md_text(source_label(inputs.identity)), "neurons": plural(inputs.count, "H-Neuron"),
            "per_mille": f"{inputs.per_mille:.3f}", "total": f"{inputs.total_neurons:,}", "action": action,
            "alpha": alpha_shown, "shipped_as": _SHIPPED_AS[inputs.mode], "version": md_text(__version__),
            "trained": inputs.trained,
            "base": source_description(inputs), "evaluated": inputs.eval is not None, "tally": _tally(inputs)}


def _tally(inputs: CardInputs) -> dict | None:
    """How many compared metrics got significantly better / worse (None without a base-vs-edited comparison)."""
    rows = [r for r in inputs.metric_rows if finite(r.get("delta"))]
    if not rows:
        return None
    better = sum(outcome(r) == "better" for r in rows)
    worse = sum(outcome(r) == "worse" for r in rows)
    return {"tasks": plural(len({r["task"] for r in rows}), "task"), "metrics": plural(len(rows), "metric"),
            "better": better, "worse": worse, "unchanged": len(rows) - better - worse, "significant": better + worse,
            "beyond": sum(bool(r.get("edited_minus_control_significant")) for r in rows if outcome(r))}


def source_description(inputs: CardInputs) -> str:
    """What the edit was made from, as the summary's "Base model:" sentence."""
    source = inputs.identity.get("source") or {}
    kind, hub = source.get("kind"), base_model_id(inputs.identity)
    link = f"[{md_text(hub)}]({HUB_URL}/{hub})" if hub else None
    dtype = (inputs.edit.get("written") or {}).get("dtype")
    if kind in ("alias", "gguf"):
        what = f"the GGUF file {md_text(Path(str(source.get('path'))).name)}"
        if source.get("gguf_sha256"):
            what += f" (sha256 {source['gguf_sha256'][:16]}...)"
        of = f" of {link}" if link else " (its Hub original is not recorded)"
        return (f"{what}{of}, dequantised to {md_text(dtype or 'float32')} by transformers; the edit and every "
                f"number below are of that dequantised model, which is close to but not bit-identical with the Hub "
                f"original")
    if kind == "hub":
        rev = f" at revision {md_text(source['revision'])}" if source.get("revision") else ""
        return f"{link}{rev} from the Hugging Face Hub"
    return (f"a local checkpoint folder ({md_text(Path(str(source.get('path'))).name)}) whose Hub id is not "
            f"recorded, so this card names no base model in its metadata")


# -------------------------------------------------------------------------------------------- the edit
def edit(inputs: CardInputs, plots: Plots) -> dict:
    alpha = inputs.edit.get("alpha") or {}
    per_layer = {int(k): int(v) for k, v in (inputs.edit["neurons"].get("per_layer") or {}).items() if int(v) > 0}
    rel = f"{PLOTS_DIR}/{PER_LAYER_PLOT}"
    plots.sources[rel] = lambda out: plot_per_layer(inputs, out)
    images = [image(rel, "H-Neurons per layer")]
    if inputs.sweep is not None:
        swept = plots.add_copy(inputs.sweep.folder, (inputs.sweep.doc.get("files") or {}).get("plot"),
                               f"sweep report {inputs.sweep.path}")
        if swept:
            images.append(image(swept, "metrics and KL against alpha, H-Neurons and random control"))
    return {"count": inputs.count, "per_mille": f"{inputs.per_mille:.3f}", "total": f"{inputs.total_neurons:,}",
            "layers": int(inputs.identity["num_layers"]), "d_ff": inputs.identity["d_ff"],
            "paper_per_mille": "{}-{}".format(*PAPER_PER_MILLE), "layers_used": len(per_layer),
            "per_layer": [f"layer {k}: {v}" for k, v in sorted(per_layer.items())],
            "alpha": TRAINED_ALPHA if inputs.trained else alpha_text(alpha),
            "alpha_details": "" if inputs.trained else _alpha_details(alpha),
            "alpha_choice": None if inputs.trained else _alpha_choice(inputs),
            "trained": _trained(inputs) if inputs.trained else None,
            "written": _written(inputs), "verification": _verification(inputs.edit["verification"]),
            "notes": inputs.notes, "images": images}


def _alpha_details(alpha: Mapping[str, Any]) -> str:
    parts = []
    if alpha.get("per_layer"):
        parts.append("per-layer alphas "
                     + ", ".join(f"layer {md_text(k)}: {v:g}" for k, v in alpha["per_layer"].items()))
    if alpha.get("per_neuron_overrides"):
        parts.append(f"{alpha['per_neuron_overrides']} per-neuron alphas from neurons.json")
    return f" ({'; '.join(parts)})" if parts else ""


def _alpha_choice(inputs: CardInputs) -> str:
    if inputs.sweep is None:
        return ("set by hand: no alpha sweep (`hneurons sweep`) was given, so alpha was not tuned against "
                "retention constraints.")
    doc = inputs.sweep.doc
    chosen, cons = doc["chosen"] or {}, doc["constraints"] or {}
    splits = sorted({str(s) for s in (doc.get("splits") or {}).values() if s})
    text = (f"`hneurons sweep` evaluated alpha = {', '.join(f'{a:g}' for a in doc['grid'])} on the "
            f"{md_text(', '.join(splits) or 'unrecorded')} split(s), constraints: each knowledge metric "
            f"({md_text(', '.join(cons.get('knowledge') or []) or 'none found')}) drops by at most "
            f"{fmt(cons.get('max_knowledge_drop'))} (judged by the 95% upper bound of the drop in sweeps that record "
            f"it) and mean KL(base || edited) is at most {fmt(cons.get('max_kl'))} "
            f"nats; score = mean improvement of "
            f"{md_text(', '.join(cons.get('targets') or []) or 'no target metric')} (a task and its multiple-choice "
            f"twin count as one target), and the chosen alpha must beat matched random-neuron sets scaled alike. ")
    return text + _sweep_choice(chosen, inputs.edit["alpha"].get("default")) + _split_overlap(inputs, splits)


def _sweep_choice(chosen: Mapping[str, Any], default: Any) -> str:
    if chosen.get("alpha") is None:
        return f"It chose no alpha: {md_text(chosen.get('reason', 'no reason recorded'))}."
    text = (f"It chose alpha = {chosen['alpha']:g} (score {fmt(chosen.get('score'), 4)}, random control "
            f"{fmt(chosen.get('control_score'), 4)}): {md_text(chosen.get('reason', ''))}.")
    if default != chosen["alpha"]:
        text += f" This edit uses alpha = {default:g}, not the sweep's choice."
    return text


def _split_overlap(inputs: CardInputs, splits: Iterable[str]) -> str:
    """A caution when alpha was tuned on a split the evaluation also reports (optimistic numbers)."""
    tasks = (inputs.eval.doc.get("tasks") or {}) if inputs.eval else {}
    eval_splits = {str((t or {}).get("split")) for t in tasks.values()}
    overlap = sorted(set(splits) & eval_splits - {"None"})
    if not overlap:
        return ""
    return (f" Caution: alpha was chosen on the {md_text(', '.join(overlap))} split that the evaluation "
            f"below also reports, so those numbers are optimistic.")


def _trained(inputs: CardInputs) -> str:
    """What the abstention training did (the manifest's ``abstain`` block)."""
    info = inputs.edit.get("abstain") or {}
    strength = info.get("strength") or {}
    training = info.get("training") or {}
    chosen = strength.get("validation") or {}
    text = (f"the neurons' own parameters ({md_text(', '.join(info.get('train') or []))}; "
            f"{info.get('trainable_parameters', 'n/a')} parameters) trained to answer \"{md_text(info.get('abstain_text', ''))}\" "
            f"on the collect stage's consistently wrong training questions and their own answers on the right ones, "
            f"with a KL term on neutral prompts; {training.get('epochs_run', 'n/a')} epochs (best "
            f"{training.get('best_epoch', 'n/a')}, stopped by {md_text(str(training.get('stopped', 'n/a')))}), strength "
            f"{fmt(strength.get('chosen'))} chosen on validation by {md_text(str(strength.get('rule', 'n/a')))}")
    if finite(chosen.get("abstain_rate_wrong")) and finite(chosen.get("abstain_rate_right")):
        text += (f" (validation: abstains on {100 * chosen['abstain_rate_wrong']:.1f}% of wrong and "
                 f"{100 * chosen['abstain_rate_right']:.1f}% of right questions)")
    return text + ". No random-neuron hook controls apply to a trained edit."


def _written(inputs: CardInputs) -> str:
    written = inputs.edit.get("written") or {}
    if inputs.trained:
        return ("a safetensors checkpoint; only the trained neurons' rows and columns differ from the source (source "
                "+ strength x the learned change), every other tensor is bit-identical." if inputs.mode == "weights"
                else "a PEFT LoRA adapter that adds exactly the learned change of the trained neurons' rows and columns.")
    if inputs.mode == "gguf":
        return _written_gguf(inputs.edit)
    if inputs.mode == "weights":
        changed = written.get("changed_tensors") or {}
        return (f"a {md_text(written.get('dtype', ''))} safetensors checkpoint; only the down-projection weights of "
                f"{plural(len(changed), 'layer')} differ from the source (the H-Neurons' columns times alpha), every "
                f"other tensor is bit-identical.")
    targets = written.get("target_modules") or []
    kind = ("IA3 (ones, alpha at the H-Neurons, on the down-projection input)" if inputs.mode == "ia3"
            else "LoRA of rank k per layer (k = H-Neurons in the layer; A = one-hot rows, B = W[:, J](alpha - 1))")
    return f"a PEFT {kind} adapter on {plural(len(targets), 'down-projection module')}; it is exact, not trained."


def _written_gguf(edit: Mapping[str, Any]) -> str:
    written, ver = edit.get("written") or {}, edit.get("verification") or {}
    types = sorted(set((written.get("stored_types") or {}).values()))
    source = written.get("source_gguf") or {}
    size = f"{(written.get('size_bytes') or 0) / 1e6:.1f} MB"
    if source.get("size_bytes"):
        size += f"; the source GGUF {md_text(source.get('file', ''))}: {source['size_bytes'] / 1e6:.1f} MB"
    origin = ("every other tensor and every metadata key (architecture, tokenizer, chat template) is byte-identical "
              "to the source GGUF" if source else f"made from the checkpoint with llama.cpp's converter "
              f"(--outtype {md_text(written.get('converter_outtype', ''))})")
    ratio = ver.get("error_over_edit_effect")
    kept = (f" Storage moves the logits by at most {sci(ver.get('quantization_error_max_abs'))}, "
            f"{100 * ratio:.1f}% of the edit's own largest change ({fmt(ver.get('edit_effect_max_abs'))}), so "
            f"quantization keeps the edit." if finite(ratio) else "")
    return (f"a GGUF file, {md_text(written.get('gguf_file', ''))} ({size}); only the down-projection tensors of "
            f"{plural(len(written.get('changed_tensors') or {}), 'layer')} were rewritten (the H-Neurons' columns "
            f"times alpha, stored as {md_text(', '.join(types))}; --gguf-type {md_text(written.get('gguf_type', ''))}), "
            f"{origin}.{kept}")


def _verification(ver: Mapping[str, Any]) -> str:
    diffs = ver.get("max_abs_diff") or {}
    parts = ", ".join(f"{md_text(k)} {sci(v)}" for k, v in diffs.items() if finite(v))
    status = "passed" if ver.get("passed") else "NOT passed"
    text = (f"{status}: reloaded from disk, the written files reproduce the source model with run-time activation "
            f"scaling on {ver.get('prompts', 'n/a')} fixed prompts ({ver.get('tokens', 'n/a')} tokens) within "
            f"{sci(ver.get('tolerance'))} (max abs logit difference: {parts or 'n/a'}")
    if finite(ver.get("edit_effect_max_abs")):
        text += f"; the edit itself moves logits by up to {ver['edit_effect_max_abs']:.3f}"
    return text + ")."


# ------------------------------------------------------------------------------------------------ load
def load(inputs: CardInputs) -> dict:
    """The load snippet; for adapters also why the base is named explicitly and what a GGUF source means."""
    base_ref = base_model_id(inputs.identity) or (inputs.identity.get("source") or {}).get("spec") or "BASE_MODEL"
    if inputs.mode == "gguf":
        return _run_gguf(inputs)
    if inputs.mode == "weights":
        return {"adapter": False, "code": code_block(_load_code(inputs, None), "python")}
    recorded = (inputs.edit.get("written") or {}).get("base_model_name_or_path")
    return {"adapter": True, "mode": inputs.mode, "code": code_block(_load_code(inputs, base_ref), "python"),
            "recorded_base": (md_text(Path(str(recorded)).name)
                              if recorded is not None and recorded != base_ref else None),
            "gguf": (inputs.identity.get("source") or {}).get("kind") in ("alias", "gguf")}


def _run_gguf(inputs: CardInputs) -> dict:
    """How to run the GGUF file: llama.cpp, Ollama, LM Studio, and Python (llama-cpp-python, transformers)."""
    import shlex

    name = str((inputs.edit.get("written") or {}).get("gguf_file") or "model.gguf")
    repo = inputs.repo_id
    tag = re.sub(r"[^a-z0-9._-]+", "-", (repo or inputs.folder.resolve().name).split("/")[-1].lower()).strip("-.")
    tag = tag or "hneurons"
    q = shlex.quote(name)
    shell = (f"hf download {repo} {q} --local-dir .\n" if repo else "# in this folder\n") + (
        f"llama-cli -m {q} -p 'The capital of France is' -n 32   # plain completion\n"
        f"llama-cli -m {q} -cnv   # chat, with the chat template stored in the file\n"
        f"llama-server -m {q} --port 8080   # OpenAI-compatible server\n")
    if repo:
        shell += f"llama-cli -hf {repo} -cnv   # straight from the Hub\n"
    ollama = (f"ollama create {tag} -f Modelfile\nollama run {tag}\n"
              + (f"# or straight from the Hub: ollama run hf.co/{repo}\n" if repo else ""))
    python = (f"from llama_cpp import Llama  # pip install llama-cpp-python\n\n"
              f"llm = Llama(model_path={name!r})\n"
              f"print(llm('The capital of France is', max_tokens=16)['choices'][0]['text'])\n\n"
              f"# or dequantized by transformers (pip install gguf)\n"
              f"from transformers import AutoModelForCausalLM\n"
              f"model = AutoModelForCausalLM.from_pretrained({(repo or '.')!r}, gguf_file={name!r})\n")
    return {"adapter": False, "gguf_file": md_text(name), "code": code_block(shell, "bash"),
            "modelfile": code_block(f"FROM ./{name}\n", "text"), "ollama": code_block(ollama, "bash"),
            "python": code_block(python, "python")}


def _load_code(inputs: CardInputs, base_ref: str | None) -> str:
    """Python that loads the checkpoint (``base_ref`` None) or the base model with the adapter."""
    repo = inputs.repo_id or inputs.folder.resolve().name
    where = "" if inputs.repo_id else "  # this folder; pass --repo to `hneurons card` to write the Hub id here"
    if base_ref is None:
        return (f"from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                f"repo = {repo!r}{where}\n"
                f"tokenizer = AutoTokenizer.from_pretrained(repo)\n"
                f"model = AutoModelForCausalLM.from_pretrained(repo)\n")
    return (f"from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f"base_id = {base_ref!r}\n"
            f"repo = {repo!r}{where}\n"
            f"tokenizer = AutoTokenizer.from_pretrained(base_id)\n"
            f"model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_id), repo)\n"
            f"model = model.merge_and_unload()  # optional: a plain model with the scaling folded in\n")


# ------------------------------------------------------------------------------------------- reproduce
def reproduce(inputs: CardInputs) -> dict:
    recipe = None
    if inputs.recipe is not None:
        recipe = {"file": md_text(inputs.recipe.path.name), "shipped_as": REPORT_NAMES["recipe"],
                  "run": code_block(f"hneurons run {REPORT_NAMES['recipe']}", "bash"),
                  "text": code_block(str(inputs.recipe.doc), "yaml")}
    commands = "\n\n".join(f"# {stage}\n{cmd}" for stage, cmd in stage_commands(inputs))
    lm_eval = (inputs.eval.doc.get("lm_eval_commands") or {}) if inputs.eval else {}
    plain = [(role, lm_eval[role]) for role in ("base", "edited") if isinstance(lm_eval.get(role), str)
             and lm_eval[role].startswith(("lm_eval", "hneurons lm-eval"))]
    return {"recipe": recipe, "commands": code_block(commands, "bash"),
            "lm_eval": code_block("\n\n".join(f"# {role}\n{cmd}" for role, cmd in plain), "bash") if plain else None,
            "versions": _versions(inputs), "hashes": _hashes(inputs)}


def _versions(inputs: CardInputs) -> dict | None:
    """Package versions per stage: stage names and one row per package (None when no stage recorded any)."""
    stages = [("edit", inputs.edit.get("provenance"))]
    for name, report in (("locate", inputs.locate), ("eval", inputs.eval), ("sweep", inputs.sweep),
                         ("dose", inputs.dose)):
        if report is not None and isinstance(report.doc.get("provenance"), dict):
            stages.append((name, report.doc["provenance"]))
    stages = [(n, p) for n, p in stages if isinstance(p, dict)]
    if not stages:
        return None
    packages = sorted({k for _, p in stages for k in (p.get("packages") or {})})
    rows = [["python", *(md_text(p.get("python") or "n/a") for _, p in stages)]]
    for pkg in packages:
        cells = [(p.get("packages") or {}).get(pkg, "n/a") for _, p in stages]
        rows.append([md_text(pkg), *(md_text(c or "not installed") for c in cells)])
    rows.append(["platform", *(md_text(p.get("platform") or "n/a") for _, p in stages)])
    return {"stages": [n for n, _ in stages], "rows": rows}


def _hashes(inputs: CardInputs) -> dict:
    """The sha256 of every file of the edit and of every copied report, with the neuron set's and the GGUF's."""
    rows = [[md_text(name), digest if _SHA256.fullmatch(str(digest)) else md_text(digest)]
            for name, digest in sorted(inputs.edit["files"].items())]
    for role, report in (("locate", inputs.locate), ("eval", inputs.eval), ("sweep", inputs.sweep),
                         ("dose", inputs.dose), ("origin", inputs.origin), ("recipe", inputs.recipe)):
        if report is not None:
            rows.append([f"{md_text(REPORT_NAMES[role])} (copied from {md_text(short_path(report.path))})",
                         sha256_file(report.path)])
    source = inputs.identity.get("source") or {}
    intro = f"Neuron set sha256 (sorted layer/index pairs): {inputs.edit['neurons']['sha256']}."
    if source.get("gguf_sha256"):
        intro += f" Source GGUF sha256: {source['gguf_sha256']}."
    return {"intro": intro, "rows": rows}


# ----------------------------------------------------------------------------------------------- files
def files(inputs: CardInputs, copied: Iterable[str]) -> dict:
    """The edit's files and the card's copies, each with what it is."""
    edit_files = []
    for name in sorted(inputs.edit["files"]):
        what = _FILES.get(name) or ("model weights" if name.endswith(".safetensors") else
                                    "the model as one GGUF file (llama.cpp, Ollama, LM Studio)" if name.endswith(".gguf")
                                    else
                                    "tokenizer" if "token" in name or name.endswith(".jinja") else "")
        edit_files.append({"file": md_text(name), "what": what})
    roles = {v: k for k, v in REPORT_NAMES.items()}
    copies = [{"file": md_text(rel),
               "what": "plot" if rel.startswith(PLOTS_DIR + "/") else roles.get(rel, "") + " report"}
              for rel in sorted(copied)]
    return {"edit": edit_files, "copied": copies}
