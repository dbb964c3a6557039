"""The Reproduce section's stage commands, rebuilt from the settings each stage recorded in its report.

Every value is shell-quoted (:func:`shlex.quote`); paths are reduced to the folder names the run used, so the
card does not publish the local directory layout.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Mapping

from .inputs import CardInputs


def _q(value: Any) -> str:
    return shlex.quote(str(value))


def _command(*parts: str) -> str:
    return " \\\n    ".join(p for p in parts if p)


def _edit_command(inputs: CardInputs) -> str:
    if inputs.trained:
        spec = (inputs.identity.get("source") or {}).get("spec")
        data = ((inputs.edit.get("abstain") or {}).get("data") or {}).get("collect_folder") or "COLLECT_DIR"
        return _command(f"hneurons edit --model {_q(spec)}", "--neurons neurons.json", "--mode abstain",
                        f"--responses {_q(Path(str(data)).name)}", "--out OUT")
    edit, alpha = inputs.edit, inputs.edit["alpha"]
    spec = (inputs.identity.get("source") or {}).get("spec")
    written = edit.get("written") or {}
    layer_alpha = " ".join(f"--layer-alpha {_q(f'{k}={v:g}')}" for k, v in (alpha.get("per_layer") or {}).items())
    dtype = f"--dtype {_q(written['dtype'])}" if inputs.mode == "weights" and written.get("dtype") else ""
    if inputs.mode == "gguf" and written.get("gguf_type"):
        dtype = f"--gguf-type {_q(written['gguf_type'])}"
    return _command(f"hneurons edit --model {_q(spec)}", "--neurons neurons.json",
                    f"--alpha {alpha.get('default', 0.0):g}", layer_alpha, f"--mode {inputs.mode}", dtype,
                    "--out-of-core" if written.get("out_of_core") else "", f"--out {_q(inputs.folder.resolve().name)}")


def _collect_command(inputs: CardInputs) -> str | None:
    if inputs.collect is None:
        return None
    from ...data.prompting import DEFAULT_INSTRUCTION

    doc = inputs.collect.doc
    data, sampling, prompt = doc.get("data") or {}, doc.get("sampling") or {}, doc.get("prompt") or {}
    limit = data.get("limit")
    limit_text = (",".join(f"{k}={v}" for k, v in limit.items()) if isinstance(limit, dict) else limit)
    instruction = prompt.get("instruction")
    spec = (inputs.locate.doc["model"].get("source") or {}).get("spec")
    return _command(
        f"hneurons collect --model {_q(spec)}",
        " ".join(f"--data {_q(s.get('spec'))}" for s in data.get("sources") or []),
        f"--split {_q(','.join(data.get('splits') or []))}" if data.get("splits") else "",
        f"--limit {_q(limit_text)}" if limit_text is not None else "",
        f"--samples {sampling.get('samples')} --temperature {sampling.get('temperature')} --top-p "
        f"{sampling.get('top_p')} --top-k {sampling.get('top_k')} --max-new-tokens {sampling.get('max_new_tokens')}",
        f"--seed {sampling.get('seed')}" + ("" if sampling.get("early_stop", True) else " --all-samples"),
        f"--instruction {_q(instruction)}" if isinstance(instruction, str) and instruction != DEFAULT_INSTRUCTION
        else "",
        f"--prompt-style {'chat' if prompt.get('chat') else 'base'}",
        f"--out {_q(Path(inputs.collect.folder).name)}")


def _locate_command(inputs: CardInputs) -> str | None:
    if inputs.locate is None:
        return None
    doc = inputs.locate.doc
    s = doc.get("settings") or {}
    spec = (doc["model"].get("source") or {}).get("spec")
    responses = (doc.get("responses") or {}).get("folder")
    c_values = s.get("C")
    return _command(
        f"hneurons locate --model {_q(spec)}", f"--responses {_q(Path(str(responses)).name)}" if responses else "",
        f"--labels {_q(s.get('labels', '3v1'))} --aggregate {_q(s.get('aggregate', 'mean'))} --span "
        f"{_q(s.get('span', 'response'))}",
        ("--C " + " ".join(f"{c:g}" for c in c_values)) if c_values else f"--C-path {s.get('n_C', 24)}",
        f"--rule {_q(s.get('rule', 'sparsest_within'))} --tol {s.get('tol', 0.01):g} --random-draws "
        f"{s.get('random_draws', 10)} --seed {s.get('seed', 0)}",
        f"--out {_q(inputs.locate.folder.resolve().name)}")


def _eval_flags(settings: Mapping[str, Any]) -> list[str]:
    from ...paths import EVAL_DIR, NEUTRAL_PROMPTS, bundled_file, portable_path

    kl = settings.get("kl") or {}
    extra = [p for p in settings.get("include_paths") or []
             if Path(bundled_file(str(p))).resolve() != EVAL_DIR.resolve()]
    seeds = settings.get("seeds") or []
    chat = settings.get("apply_chat_template")
    flags = [f"--tasks {_q(','.join(settings.get('tasks') or []))}",
             f"--limit {_q(settings['limit'])}" if settings.get("limit") is not None else "",
             " ".join(f"--include-path {_q(p)}" for p in extra),
             "--chat-template" if chat is True else "--no-chat-template" if chat is False else "",
             f"--gen-kwargs {_q(settings['gen_kwargs'])}" if settings.get("gen_kwargs") else "",
             f"--seed {_q(','.join(str(s) for s in seeds))}" if seeds else "",
             f"--ci-iters {settings.get('ci_iters', 10000)}",
             "" if settings.get("match_layers") else "--uniform-controls"]
    if kl.get("enabled") is False:
        flags.append("--no-kl")
    else:
        prompts = kl.get("prompts")
        # older reports name the bundled prompts by their absolute path on the machine that ran them
        if prompts and Path(bundled_file(str(prompts))).resolve() != NEUTRAL_PROMPTS.resolve():
            flags.append(f"--kl-prompts {_q(portable_path(prompts))}")
        if kl.get("max_prompts"):
            flags.append(f"--kl-max-prompts {kl['max_prompts']}")
        flags.append(f"--kl-new-tokens {kl.get('new_tokens', 32)}")
    return flags


def _eval_command(inputs: CardInputs) -> str | None:
    if inputs.eval is None:
        return None
    doc = inputs.eval.doc
    models, settings = doc["models"], doc.get("settings") or {}
    edited, base = models["edited"], models.get("base")
    what = []
    if base:
        what.append(f"--base {_q((base['model'].get('source') or {}).get('spec'))}")
    here = _q(inputs.folder.resolve().name)
    if edited["kind"] == "model":
        what.append(f"--model {here}")
    elif edited["kind"] == "adapter":
        what.append(f"--adapter {here}")
    else:
        alpha = (edited.get("alpha") or {}).get("default")
        alpha = (inputs.edit.get("alpha") or {}).get("default", 0.0) if alpha is None else alpha
        what.append(f"--neurons {here}/neurons.json --alpha {alpha:g}")
    if base:
        what.append(f"--controls {settings.get('controls', 0)} --control-seed {settings.get('control_seed', 0)}")
    return _command("hneurons eval " + " ".join(what), *_eval_flags(settings),
                    f"--out {_q(inputs.eval.folder.resolve().name)}")


def _sweep_command(inputs: CardInputs) -> str | None:
    if inputs.sweep is None:
        return None
    doc = inputs.sweep.doc
    settings, cons = doc.get("settings") or {}, doc.get("constraints") or {}
    seeds = settings.get("control_seeds") or []
    spec = (doc["model"].get("source") or {}).get("spec")
    return _command(
        f"hneurons sweep --base {_q(spec)} --neurons neurons.json",
        f"--alphas {_q(','.join(f'{a:g}' for a in doc['grid']))}",
        _control_flags(seeds),
        f"--max-knowledge-drop {cons.get('max_knowledge_drop', 0.02):g} --max-kl {cons.get('max_kl', 0.1):g}",
        " ".join(f"--knowledge {_q(k)}" for k in cons.get("knowledge") or []),
        " ".join(f"--target {_q(t)}" for t in cons.get("targets") or []),
        *_eval_flags(settings), f"--out {_q(inputs.sweep.folder.resolve().name)}")


def _dose_command(inputs: CardInputs) -> str | None:
    """The dose-response's command; the KL flags from the report's ``kl`` block (reports written before it
    recorded ``new_tokens`` get the default continuation length)."""
    if inputs.dose is None:
        return None
    doc = inputs.dose.doc
    settings = dict(doc.get("settings") or {})
    kl = doc.get("kl")
    settings["kl"] = ({"enabled": False} if not isinstance(kl, dict) else
                      {"enabled": True, "prompts": kl.get("prompts_file"), "max_prompts": kl.get("n_prompts"),
                       "new_tokens": kl.get("new_tokens", 32)})
    spec = (doc["model"].get("source") or {}).get("spec")
    neuron_sets = settings.get("neuron_sets") or []
    return _command(
        f"hneurons dose-response --model {_q(spec)} --neurons neurons.json" + (
            " --force" if (doc.get("force") or {}).get("given") else ""),
        f"--alphas {_q(','.join(f'{a:g}' for a in doc['grid']))}",
        f"--controls {settings.get('controls', 3)} --control-seed {settings.get('control_seed', 0)}",
        "--known-only" if settings.get("known_only") else "",
        f"--neuron-sets {_q(','.join(neuron_sets))}" if neuron_sets else "",
        *_eval_flags(settings), f"--out {_q(inputs.dose.folder.resolve().name)}")


def _control_flags(seeds: list[int]) -> str:
    """The sweep's control seeds as flags: a run of N seeds from S is --controls N --control-seed S."""
    if not seeds:
        return "--controls 0"
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"--controls {len(seeds)} --control-seed {seeds[0]}"
    return f"--control-seeds {_q(','.join(str(s) for s in seeds))}"  # older sweeps: any seeds


def stage_commands(inputs: CardInputs) -> list[tuple[str, str]]:
    """(stage, shell command) for every stage with a report, rebuilt from the recorded settings."""
    card = [f"hneurons card {_q(inputs.folder.resolve().name)}"]
    for flag, report in (("--locate", inputs.locate), ("--eval", inputs.eval), ("--sweep", inputs.sweep),
                         ("--dose", inputs.dose), ("--origin", inputs.origin), ("--recipe", inputs.recipe)):
        if report is not None:
            card.append(f"{flag} {_q(f'{report.folder.resolve().name}/{report.path.name}')}")
    if inputs.repo_id:
        card.append(f"--repo {_q(inputs.repo_id)}")
    out = [("collect", _collect_command(inputs)), ("locate", _locate_command(inputs)),
           ("dose-response", _dose_command(inputs)), ("sweep", _sweep_command(inputs)),
           ("edit", _edit_command(inputs)), ("eval", _eval_command(inputs)),
           ("card", _command(*card))]
    return [(stage, cmd) for stage, cmd in out if cmd]

