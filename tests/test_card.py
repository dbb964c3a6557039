"""The model card: real edits of a tiny llama (weights, IA3) evaluated with the real lm-eval runner, locate /
sweep / origin reports built by hand following their documented schemas, hostile strings, validation, CLI."""

from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from editor.artifacts import sha256_file
from editor.report.card import TAGS, build_card, check_written_card, md_text, validate_card_metadata, write_card
from editor.cli import main
from editor.edit.stage import edit_model
from editor.errors import InputError, ModelMismatchError, PublishError
from editor.evaluate.settings import EvalSettings
from editor.evaluate.stage import evaluate
from editor.model.loading import LoadOptions, load_model
from editor.model.hooks import scaled_neurons
from editor.model.neuron_set import NeuronSet
from editor.plots import plot_per_layer
from editor.report.publish import collect_upload_files
from tinymodels import tiny_model, tiny_tokenizer
from editor.formats import PUBLISH_MANIFEST

PAIRS = [(0, 3), (1, 5), (1, 17), (1, 40)]
TASKS = ["hneurons_knowledge_mc", "hneurons_false_premise_mc"]
SECTIONS = ["## What are H-Neurons?", "## The edit", "## Detection", "## Evaluation", "## Limitations",
            "## How to load", "## Reproduce", "## Files"]
HOSTILE = "ev|il*_`x`<script>alert(1)</script>\n---\nkey: [v, {a: b}] #c &amp; !t 'q\" ~~s~~ $x$"


# ================================================================================================ fixtures
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small passes run faster on one thread


def detection(auroc: float, accuracy: float, n: int = 120) -> dict:
    return {"n": n, "n_hallucinated": n // 2, "auroc": auroc, "auroc_ci95": [auroc - 0.05, auroc + 0.04],
            "accuracy": accuracy, "accuracy_ci95": [accuracy - 0.06, accuracy + 0.05]}


def collect_manifest(identity: dict) -> dict:
    """A collect.json as editor.collect.stage writes it (the keys the card reads)."""
    return {"format": "hneurons.collect/1", "model": identity,
            "data": {"sources": [{"spec": "bundled:facts", "sha256": "1" * 64},
                                 {"spec": "triviaqa", "sha256": "2" * 64}],
                     "splits": ["train", "validation", "test"], "limit": {"train": 600, "test": 200}, "subset_seed": 3},
            "sampling": {"samples": 4, "temperature": 1.0, "top_p": 0.9, "top_k": 50, "max_new_tokens": 50, "seed": 3,
                         "early_stop": True, "batch_size": 32},
            "prompt": {"chat": True, "instruction": "Answer briefly.", "system": None, "base_template": None}}


def locate_report(identity: dict, count: int, plots: list[str], responses: Path) -> dict:
    """A locate.json as editor.locate.stage writes it (the keys the card reads)."""
    return {
        "format": "hneurons.locate/1", "model": identity,
        "responses": {"folder": str(responses)},
        "settings": {"labels": "3v1", "aggregate": "mean", "span": "response", "C": None, "n_C": 24,
                     "rule": "sparsest_within", "tol": 0.01, "random_draws": 10, "bootstrap": 1000, "seed": 0},
        "counts": {"train": {"n": 400, "hallucinated": 200}, "test": {"n": 120, "hallucinated": 60}},
        "chosen": {"index": 5, "C": 0.123, "rule": "sparsest_within", "tol": 0.01, "val_auroc": 0.812,
                   "threshold": 0.05},
        "h_neurons": {"count": count, "per_mille": 1000 * count / 96},
        "test": {"probe": detection(0.801, 0.742), "h_neurons_only": detection(0.763, 0.701),
                 "random": {"draws": 10, "auroc_mean": 0.604, "auroc_std": 0.031, "auroc_min": 0.552,
                            "auroc_max": 0.655, "accuracy_mean": 0.583},
                 "per_relation": {},
                 "balanced_within_relation": {"probe": detection(0.702, 0.664, 80),
                                              "h_neurons_only": detection(0.681, 0.65, 80),
                                              "random_auroc_mean": 0.551, "probe_beats_random": True}},
        "cross_relation": {"folds": [dict(detection(0.667, 0.61, 60), train_relations=["country_capital"],
                                          test_relations=["element_symbol"], C=0.1, n_positive=3)]},
        "fabricated": {"n": 12, "n_hallucinated": 12, "note": "the fabricated-entity set does not have both classes"},
        "plots": plots,
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Source checkpoint, a locate folder, real weights and IA3 edits, and real lm-eval comparisons of both."""
    root = tmp_path_factory.mktemp("card")
    src = root / "src"
    tiny_model("llama", max_position_embeddings=512).save_pretrained(src)
    tiny_tokenizer().save_pretrained(src)
    lm = load_model(str(src), device="cpu")
    locate = root / "locate"
    locate.mkdir()
    neurons = {"format": "hneurons.neurons/1", "model": lm.identity(),
               "neurons": [{"layer": l, "index": j, "flat_index": 48 * l + j, "weight": 0.1} for l, j in PAIRS],
               "count": len(PAIRS), "total_ffn_neurons": 96, "per_mille": 1000 * len(PAIRS) / 96,
               "per_layer": {"0": 1, "1": 3}}
    (locate / "neurons.json").write_text(json.dumps(neurons))
    plots = [plot_per_layer(locate, neurons), plot_per_layer(locate, neurons, name="roc_test.png")]
    (root / "collect").mkdir()
    (root / "collect" / "collect.json").write_text(json.dumps(collect_manifest(lm.identity())))
    (locate / "locate.json").write_text(json.dumps(locate_report(lm.identity(), len(PAIRS), plots, root / "collect")))
    edits = {mode: edit_model(lm, locate / "neurons.json", 0.0, mode, root / f"edit-{mode}")
             for mode in ("weights", "ia3")}
    settings = EvalSettings(tasks=TASKS, limit=4, batch_size=8, controls=1, ci_iters=200, kl_max_prompts=2,
                            kl_new_tokens=4)
    evals = {"weights": evaluate(base=str(src), edited=str(root / "edit-weights"), settings=settings,
                                 out=root / "eval-weights", load=LoadOptions(device="cpu")),
             "ia3": evaluate(base=str(src), adapter=root / "edit-ia3", settings=settings, out=root / "eval-ia3",
                             load=LoadOptions(device="cpu"))}
    return {"root": root, "src": src, "lm": lm, "locate": locate, "edits": edits, "evals": evals}


def fresh(run, tmp_path, mode: str = "weights", name: str | None = None) -> Path:
    """A private copy of an edit folder (the card writes into it)."""
    return Path(shutil.copytree(run["root"] / f"edit-{mode}", tmp_path / (name or f"edit-{mode}")))


# ================================================================================================= helpers
def front_matter(text: str) -> dict:
    """The metadata block cut out the way the Hub does it, parsed with a plain safe YAML loader."""
    from huggingface_hub.repocard import REGEX_YAML_BLOCK

    match = REGEX_YAML_BLOCK.search(text)
    assert match, "no front matter"
    return yaml.safe_load(match.group(2))


def outside_code(text: str) -> str:
    lines, fence = [], None
    for line in text.splitlines():
        run = re.match(r"\s*(`{3,})", line)
        if run and fence is None:
            fence = run.group(1)
        elif run and fence is not None and line.strip() == fence:
            fence = None
        elif fence is None:
            lines.append(line)
    return "\n".join(lines)


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def table_lines(text: str, heading: str) -> list[str]:
    return [line for line in section(text, heading).splitlines() if line.startswith("|")]


def cells(line: str) -> int:
    return len(re.split(r"(?<!\\)\|", line.strip()[1:-1]))


def code_blocks(text: str, heading: str) -> list[str]:
    return re.findall(r"```+[a-z]*\n(.*?)\n```+", section(text, heading), re.S)


def parsed_commands(text: str, block: int = 0) -> dict:
    """The stage commands of the Reproduce section, parsed and resolved by the real `hneurons` command line:
    per command its arguments, and (for the stage commands) the settings and paths it would run with."""
    import importlib
    from types import SimpleNamespace

    from editor.cli import parse
    from editor.cli.common import load_options

    parsed = {}
    for command in code_blocks(text, "## Reproduce")[block].split("\n\n"):
        lines = "\n".join(line for line in command.splitlines() if not line.startswith("#"))
        argv = shlex.split(lines.replace("\\\n", " "))  # bash line continuations
        assert argv[0] == "hneurons"
        args = parse(argv[1:])
        module = importlib.import_module(f"editor.cli.{ {'dose-response': 'dose'}.get(argv[1], argv[1])}_cmd")
        plan = module.resolve(args) if hasattr(module, "resolve") else None
        parsed[argv[1]] = SimpleNamespace(args=args, plan=plan, settings=getattr(plan, "settings", None),
                                          load=load_options(args) if hasattr(args, "model") else None)
    return parsed


def eval_values(path: Path) -> dict:
    rows = json.loads(path.read_text())["metrics"]
    return {(r["task"], r["metric"]): r["edited"] for r in rows}


# =================================================================================================== tests
def test_weights_card_from_real_artifacts_is_complete_and_round_trips(run, tmp_path):
    from huggingface_hub import ModelCard

    folder = fresh(run, tmp_path)
    eval_file = run["root"] / "eval-weights" / "eval_results.json"
    inputs_before = {p: sha256_file(p) for p in (eval_file, run["locate"] / "locate.json")}
    readme = write_card(folder, eval_results=eval_file, repo_id="me/tiny-hfix")  # locate found via neurons.json
    assert {p: sha256_file(p) for p in inputs_before} == inputs_before, "inputs are never modified"

    card = ModelCard.load(readme)
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-generation"
    assert set(TAGS) <= set(data["tags"])
    assert "base_model" not in data and "base_model_relation" not in data and "license" not in data  # local source
    assert data["datasets"] == ["mandarjoshi/trivia_qa"]  # the Hub dataset collect used; bundled sets have no id
    assert "whose Hub id is not recorded" in card.text
    # the model-index holds exactly the edited values lm-eval produced
    got = {(r.dataset_name, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert got == eval_values(eval_file) and len(got) >= 4
    assert {r.dataset_type for r in card.data.eval_results} == {f"hneurons/{t}" for t in TASKS}
    assert card.data.model_name == "me/tiny-hfix"

    text = card.text
    for heading in SECTIONS:
        assert heading in text, heading
    prose = outside_code(text)
    assert not re.search(r"\bTODO\b|\bNone\b|\b[Nn]a[Nn]\b|\bnull\b|[{}]", prose)
    assert "0.801 [0.751, 0.841]" in text and "0.604 +- 0.031" in text  # the detection report's numbers
    assert "the bundled facts set" in text and "mandarjoshi/trivia\\_qa (rc.nocontext)" in text
    settings = json.loads(eval_file.read_text())["settings"]  # the card names the paired test that was run
    assert settings["paired_test"] == "auto" and "exact McNemar test (mid-p)" in text and "paired-bootstrap" not in prose
    assert f"random control: {settings['controls']} seed" in text
    rows = json.loads(eval_file.read_text())["metrics"]
    table = table_lines(text, "## Evaluation")
    assert len(table) == 2 + len(rows)
    for row, line in zip(rows, table[2:]):
        assert md_text(row["task"]) in line and f"{row['edited']:.3f}" in line and f"{row['base']:.3f}" in line
    for rel in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (folder / rel).is_file(), rel
    assert "plots/h_neurons_per_layer.png" in text and "plots/roc_test.png" in text and "plots/eval_deltas.png" in text

    # the card's files are listed with their hashes and push takes them
    publish = json.loads((folder / PUBLISH_MANIFEST).read_text())
    assert set(publish["files"]) == {"README.md", "eval_results.json", "locate.json", "plots/h_neurons_per_layer.png",
                                     "plots/roc_test.png", "plots/eval_deltas.png"}
    assert all(sha256_file(folder / rel) == digest for rel, digest in publish["files"].items())
    files, left_out = collect_upload_files(folder)
    by_manifest = {f.path for f in files if f.listed_in == PUBLISH_MANIFEST}
    assert by_manifest == set(publish["files"]) and PUBLISH_MANIFEST in {f.path for f in files}
    assert left_out == []
    validate_card_metadata(card)
    assert check_written_card(folder)["metrics"] == len(got)


def test_reproduce_commands_parse_with_the_real_cli_and_match_the_edit(run, tmp_path):
    folder = fresh(run, tmp_path)
    text = write_card(folder, eval_results=run["root"] / "eval-weights").read_text()
    parsed = parsed_commands(text)
    assert set(parsed) == {"collect", "locate", "edit", "eval", "card"}
    collect, s = parsed["collect"].plan, parsed["collect"].settings
    assert (collect.model, s.data, s.limit, s.samples, s.seed, s.instruction, s.prompt_style, s.early_stop) == (
        str(run["src"]), ["bundled:facts", "triviaqa"], {"train": 600, "test": 200}, 4, 3, "Answer briefly.", "chat",
        True)
    edit, s = parsed["edit"].plan, parsed["edit"].settings
    assert (edit.model, edit.neurons, s.alpha, s.modes, parsed["edit"].load.dtype) == (
        str(run["src"]), "neurons.json", 0.0, ["weights"], "float32")
    ev, s = parsed["eval"].plan, parsed["eval"].settings
    assert (ev.base, ev.edited, s.tasks, s.limit, s.controls, s.ci_iters) == (str(run["src"]), "edit-weights",
                                                                               TASKS, 4, 1, 200)
    assert (s.kl_max_prompts, s.kl_new_tokens, s.kl) == (2, 4, True)
    assert parsed["locate"].settings.n_C == 24 and parsed["locate"].settings.rule == "sparsest_within"
    lm_eval = code_blocks(text, "## Reproduce")[1]
    assert lm_eval.count("hneurons lm-eval --model hneurons") == 2  # base and edited, verbatim from eval_results.json


def test_ia3_card_is_a_peft_card_and_its_load_snippet_works(run, tmp_path, monkeypatch):
    from huggingface_hub import ModelCard

    folder = fresh(run, tmp_path, "ia3")
    readme = write_card(folder, locate_report=run["locate"], eval_results=run["root"] / "eval-ia3")
    card = ModelCard.load(readme)
    assert card.data.library_name == "peft" and {"peft", "ia3"} <= set(card.data.tags)
    assert "the base model with this adapter applied (PEFT)" in card.text
    got = {(r.dataset_name, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert got == eval_values(run["root"] / "eval-ia3" / "eval_results.json")
    snippet = code_blocks(card.text, "## How to load")[0]
    assert "PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_id), repo)" in snippet
    monkeypatch.chdir(tmp_path)  # the snippet names this folder relative to where the card lives
    scope: dict = {}
    exec(snippet, scope)  # noqa: S102 - our own generated snippet
    ids = torch.tensor([[5, 9, 23, 41, 7]])
    with torch.no_grad():
        loaded = scope["model"](input_ids=ids).logits
        scales = NeuronSet.load(run["locate"] / "neurons.json").scales(0.0)
        with scaled_neurons(run["lm"].model, scales):
            expected = run["lm"].model(input_ids=ids).logits
    assert torch.allclose(loaded, expected, atol=1e-5)
    check_written_card(folder)


def test_hostile_strings_cannot_break_front_matter_tables_or_inject_html(run, tmp_path):
    folder = fresh(run, tmp_path, name=HOSTILE.replace("/", "-"))
    evil_eval = tmp_path / "evil-eval"
    evil_eval.mkdir()
    doc = json.loads((run["root"] / "eval-weights" / "eval_results.json").read_text())
    for i, row in enumerate(doc["metrics"]):
        row["task"], row["metric"] = f"{HOSTILE} {i}", f"acc|<b>x</b>\r\n--- {i}"
    doc["tasks"] = {row["task"]: {"split": "test"} for row in doc["metrics"]}
    (evil_eval / "eval_results.json").write_text(json.dumps(doc))
    evil_locate = tmp_path / "evil-locate"
    evil_locate.mkdir()
    report = json.loads((run["locate"] / "locate.json").read_text())
    report["cross_relation"]["folds"][0]["test_relations"] = [HOSTILE]
    report["fabricated"]["note"] = HOSTILE
    report["plots"] = []
    (evil_locate / "locate.json").write_text(json.dumps(report))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"id": str(run["src"])}, "output": "runs/x",
                                      "collect": {"instruction": "````\n<script>x</script>\n---\n```"}}))

    readme = write_card(folder, locate_report=evil_locate, eval_results=evil_eval, recipe=recipe)
    text = readme.read_text()
    meta = front_matter(text)
    assert folder.name == HOSTILE.replace("/", "-")
    assert meta["model-index"][0]["name"] == f"{run['src'].name}-hneurons"  # named after the base, not the folder
    names = {(r["dataset"]["name"], m["name"]) for r in meta["model-index"][0]["results"] for m in r["metrics"]}
    assert names == {(row["task"], row["metric"]) for row in doc["metrics"]}  # exactly the original strings
    from huggingface_hub import ModelCard

    card = ModelCard.load(readme)
    assert {(r.dataset_name, r.metric_name): r.metric_value for r in card.data.eval_results} == {
        (row["task"], row["metric"]): row["edited"] for row in doc["metrics"]}
    body = card.text
    prose = outside_code(body)  # inside fenced code blocks text is shown literally, never as HTML
    assert "<script" not in prose and "<b>" not in prose and "&lt;script&gt;" in prose
    header, *rows = table_lines(body, "## Evaluation")
    assert rows and all(cells(line) == cells(header) for line in rows)
    detection_rows = table_lines(body, "## Detection")
    assert all(cells(line) == cells(detection_rows[0]) for line in detection_rows)
    assert body.splitlines()[1].startswith("# ") and "\n---\n" not in outside_code(body)
    # the recipe's own fences cannot close the card's code block: every section heading survives
    headings = [line for line in outside_code(body).splitlines() if line.startswith("## ")]
    assert [h for h in SECTIONS if not any(line.startswith(h) for line in headings)] == []
    assert "<script>x</script>" in code_blocks(body, "## Reproduce")[1]  # verbatim inside the yaml block
    check_written_card(folder)


def test_metadata_validation_rejects_broken_cards(run, tmp_path):
    card = build_card(fresh(run, tmp_path), eval_results=run["root"] / "eval-weights")
    validate_card_metadata(card)
    good = card.data.to_dict()
    validate_card_metadata("---\n" + yaml.safe_dump(good) + "---\n\nbody\n")

    def broken(**changes) -> str:
        data = copy.deepcopy(good)
        for key, value in changes.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        return "---\n" + yaml.safe_dump(data) + "---\n\nbody\n"

    bad_value = copy.deepcopy(good["model-index"])
    bad_value[0]["results"][0]["metrics"][0]["value"] = "high"
    no_dataset = copy.deepcopy(good["model-index"])
    del no_dataset[0]["results"][0]["dataset"]["type"]
    cases = [(dict(library_name=None), "library_name"), (dict(library_name="keras"), "keras"),
             (dict(tags=["hneurons", 3]), "tags"), (dict(license="Apache 2.0"), "license"),
             (dict(base_model="not a hub id"), "base_model"),
             (dict(base_model="a/b", base_model_relation="derived"), "base_model_relation"),
             (dict(base_model_relation="adapter"), "no base_model"),
             (dict(datasets=["trivia qa"]), "dataset"), (dict(**{"model-index": bad_value}), "not a finite number"),
             (dict(**{"model-index": no_dataset}), "dataset.name and dataset.type"),
             (dict(**{"model-index": {"name": "x"}}), "non-empty list")]
    for changes, message in cases:
        with pytest.raises(PublishError, match=re.escape(message)):
            validate_card_metadata(broken(**changes))
            pytest.fail(f"accepted {changes}")


def test_reports_of_another_edit_are_refused_and_nothing_is_written(run, tmp_path):
    folder = fresh(run, tmp_path)
    ia3_eval = run["root"] / "eval-ia3"
    with pytest.raises(ModelMismatchError, match="adapter"):
        write_card(folder, eval_results=ia3_eval)
    doc = json.loads((run["root"] / "eval-weights" / "eval_results.json").read_text())
    other_base = copy.deepcopy(doc)
    other_base["models"]["base"]["model"]["weights_fingerprint"] = "0" * 16
    hooks = copy.deepcopy(doc)
    hooks["models"]["edited"] = {"name": "edited", "kind": "hooks", "model": doc["models"]["base"]["model"],
                                 "neurons": {"sha256": "f" * 64, "count": 4}, "alpha": {"min": 0.0, "max": 0.0}}
    other_arch = copy.deepcopy(doc)
    other_arch["models"]["edited"]["model"]["architecture_hash"] = "deadbeef"
    for i, (bad, message) in enumerate([(other_base, "not the model this edit was made from"),
                                        (hooks, "another neuron set"), (other_arch, "another architecture")]):
        (tmp_path / f"bad{i}").mkdir()
        (tmp_path / f"bad{i}" / "eval_results.json").write_text(json.dumps(bad))
        with pytest.raises(ModelMismatchError, match=message):
            write_card(folder, eval_results=tmp_path / f"bad{i}")
    other_set = tmp_path / "other-locate"
    other_set.mkdir()
    neurons = json.loads((run["locate"] / "neurons.json").read_text())
    neurons["neurons"] = neurons["neurons"][:2]
    (other_set / "neurons.json").write_text(json.dumps(neurons))
    shutil.copy(run["locate"] / "locate.json", other_set / "locate.json")
    with pytest.raises(ModelMismatchError, match="differs from the set this edit used"):
        write_card(folder, locate_report=other_set / "locate.json")
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({"model": run["lm"].identity(), "neurons": {"sha256": "0" * 64}, "grid": [0, 1],
                                 "chosen": {"alpha": 0.0}, "constraints": {}}))
    with pytest.raises(ModelMismatchError, match="another neuron set"):
        write_card(folder, sweep=sweep)
    assert not (folder / "README.md").exists() and not (folder / PUBLISH_MANIFEST).exists()


def test_sweep_and_origin_sections_come_from_their_reports(run, tmp_path):
    folder = fresh(run, tmp_path)
    edit = json.loads((folder / "hneurons_edit.json").read_text())
    sweep_dir, origin_dir = tmp_path / "sweep", tmp_path / "origin"
    sweep_dir.mkdir()
    origin_dir.mkdir()
    (sweep_dir / "sweep.json").write_text(json.dumps({
        "format": "hneurons.sweep/1", "model": run["lm"].identity(), "neurons": {"sha256": edit["neurons"]["sha256"]},
        "grid": [0.0, 0.5, 1.0, 2.0], "reference_alpha": 1.0, "splits": {"hneurons_knowledge_mc_val": "validation"},
        "settings": {"tasks": ["hneurons_val"], "limit": 50, "control_seeds": [0, 1], "ci_iters": 1000,
                     "kl": {"enabled": True, "new_tokens": 32}},
        "constraints": {"max_knowledge_drop": 0.02, "max_kl": 0.1, "knowledge": ["hneurons_knowledge_mc:acc"],
                        "targets": ["hneurons_false_premise_mc:acc"], "missing": []},
        "chosen": {"alpha": 0.0, "reason": "best score among feasible alphas", "score": 0.031, "control_score": 0.002},
        "files": {"plot": "sweep.png"}}))
    plot_per_layer(sweep_dir, json.loads((run["locate"] / "neurons.json").read_text()), name="sweep.png")
    plot_per_layer(origin_dir, json.loads((run["locate"] / "neurons.json").read_text()), name="origin_drift_hist.png")
    (origin_dir / "origin.json").write_text(json.dumps({  # editor.locate.origin's format, the keys the card reads
        "format": "hneurons.origin/1", "model": run["lm"].identity(),
        "probe": {"sha256": "a" * 64, "h_neurons": 4},
        "backward_transfer": {"auroc": 0.71, "auroc_ci95": [0.65, 0.77], "random_auroc_mean": 0.55,
                              "random_auroc_std": 0.02, "h_neurons_only_auroc": 0.69,
                              "h_neurons_only_auroc_ci95": [0.62, 0.75], "base_model": "HuggingFaceTB/SmolLM2-135M",
                              "n": 200, "n_hallucinated": 100, "instruct_test": {"probe_auroc": 0.8}},
        "drift": {"mean_normalised_rank": 0.82, "p_value": 0.0004, "p_value_changed_more": 0.9996, "n_neurons": 4,
                  "base_model": "base-ckpt", "instruct_model": "instruct-ckpt"},
        "plots": ["origin_drift_hist.png"]}))
    text = write_card(folder, eval_results=run["root"] / "eval-weights", sweep=sweep_dir, origin=origin_dir).read_text()
    edit_section = section(text, "## The edit")
    assert "It chose alpha = 0 (score 0.0310, random control 0.0020)" in edit_section
    assert "validation split" in edit_section and "hneurons\\_knowledge\\_mc:acc" in edit_section
    origin = section(text, "## Origin")
    assert "AUROC 0.710 [0.650, 0.770], n = 200" in origin and "random neurons 0.550 +- 0.020" in origin
    assert "H-Neurons alone 0.690 [0.620, 0.750]" in origin and "above the random-neuron level" in origin
    assert "mean normalised rank is 0.820" in origin and "p = 0.0004" in origin and "p = 0.9996" in origin
    assert "plots/origin_drift_hist.png" in origin
    publish = json.loads((folder / PUBLISH_MANIFEST).read_text())["files"]
    assert {"sweep.json", "origin.json", "plots/sweep.png", "plots/origin_drift_hist.png"} <= set(publish)
    sweep = parsed_commands(text)["sweep"]
    s = sweep.settings
    assert (sweep.plan.model, sweep.plan.neurons, s.alphas, s.control_seeds) == (
        str(run["src"]), "neurons.json", [0.0, 0.5, 1.0, 2.0], [0, 1])
    assert (s.tasks, s.limit, s.knowledge, s.targets) == (
        ["hneurons_val"], 50, ["hneurons_knowledge_mc:acc"], ["hneurons_false_premise_mc:acc"])
    (origin_dir / "origin.json").write_text(json.dumps({"drift": {"p_value": 0.1}}))
    with pytest.raises(InputError, match="mean_normalised_rank"):
        build_card(folder, origin=origin_dir)
    (origin_dir / "origin.json").write_text(json.dumps({"probe": {"h_neurons": 9}, "drift": {
        "mean_normalised_rank": 0.6, "p_value": 0.2, "n_neurons": 9}}))
    with pytest.raises(ModelMismatchError, match="9 H-Neurons"):
        build_card(folder, origin=origin_dir)


def test_card_files_never_overwrite_files_of_the_edit(run, tmp_path):
    folder = fresh(run, tmp_path)
    (folder / "README.md").write_text("the source model's card\n")
    manifest = json.loads((folder / "hneurons_edit.json").read_text())
    manifest["files"]["README.md"] = sha256_file(folder / "README.md")
    (folder / "hneurons_edit.json").write_text(json.dumps(manifest))
    with pytest.raises(PublishError, match="README.md"):
        write_card(folder)
    assert (folder / "README.md").read_text() == "the source model's card\n"


def test_cli_writes_the_card_and_a_rerun_finds_the_copied_reports(run, tmp_path, capsys):
    folder = fresh(run, tmp_path)
    assert main(["card", str(folder), "--locate", str(run["locate"] / "locate.json"),
                 "--eval", str(run["root"] / "eval-weights"), "--repo", "me/tiny-hfix"]) == 0
    assert "wrote" in capsys.readouterr().out
    first = json.loads((folder / PUBLISH_MANIFEST).read_text())["files"]
    card_before = (folder / "README.md").read_text()
    assert main(["card", str(folder), "--repo", "me/tiny-hfix", "--json"]) == 0  # no report flags this time
    out = json.loads(capsys.readouterr().out)
    assert out["files"] == sorted(first)
    after = (folder / "README.md").read_text()
    assert section(after, "## Evaluation") == section(card_before, "## Evaluation")
    assert main(["card", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["card", "--help"])
    assert exc.value.code == 0
    assert "hneurons_publish.json" in capsys.readouterr().out


def test_push_uploads_the_card_and_its_files_and_the_hub_copy_loads_as_the_same_card(run, tmp_path, hub):
    from huggingface_hub import ModelCard

    from editor.report.publish import push_folder

    folder = fresh(run, tmp_path)
    write_card(folder, eval_results=run["root"] / "eval-weights", repo_id="tester/tiny-hfix")
    result = push_folder(folder, "tester/tiny-hfix")
    assert result.committed and result.left_out == []
    remote = hub.repo("tester/tiny-hfix").files("main")
    publish = json.loads((folder / PUBLISH_MANIFEST).read_text())["files"]
    assert {rel: remote[rel] for rel in publish} == {rel: (folder / rel).read_bytes() for rel in publish}
    (tmp_path / "remote-README.md").write_bytes(remote["README.md"])
    card = ModelCard.load(tmp_path / "remote-README.md")
    assert {(r.dataset_name, r.metric_name): r.metric_value for r in card.data.eval_results} == eval_values(
        run["root"] / "eval-weights" / "eval_results.json")


@pytest.mark.integration
def test_smollm2_adapter_card_names_the_hub_base_and_licence(smollm2, tmp_path):
    """The embedded SmolLM2 (a GGUF alias that records its Hub original): base_model, relation and licence."""
    neurons = {"neurons": [{"layer": 10 + i % 6, "index": 97 * i % 1536} for i in range(12)]}
    edit_model(smollm2, neurons, 0.0, "ia3", tmp_path / "smol-ia3")
    evaluate(base=smollm2, adapter=tmp_path / "smol-ia3", settings=EvalSettings(
        tasks=["hneurons_knowledge_mc"], limit=3, batch_size=8, controls=1, ci_iters=200, kl=False),
        out=tmp_path / "ev")
    readme = write_card(tmp_path / "smol-ia3", eval_results=tmp_path / "ev", repo_id="me/smollm2-hfix-ia3")
    meta = front_matter(readme.read_text())
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["base_model_relation"] == "adapter"
    assert meta["license"] == "apache-2.0" and meta["library_name"] == "peft"
    text = readme.read_text()
    assert "dequantised" in text and "base_id = 'HuggingFaceTB/SmolLM2-135M-Instruct'" in text
    assert check_written_card(tmp_path / "smol-ia3")["metrics"] == 2


def test_a_run_time_eval_of_the_same_neurons_and_alpha_is_accepted_another_alpha_is_not(run, tmp_path):
    settings = EvalSettings(tasks=TASKS[:1], limit=4, batch_size=8, controls=0, ci_iters=200, kl=False)
    hooks = evaluate(base=str(run["src"]), neurons=run["locate"] / "neurons.json", alpha=0.0, settings=settings,
                     out=tmp_path / "hooks", load=LoadOptions(device="cpu"))
    folder = fresh(run, tmp_path, "ia3")
    text = write_card(folder, eval_results=tmp_path / "hooks").read_text()
    assert "scaled at run time (forward hooks)" in text
    assert "--neurons edit-ia3/neurons.json --alpha 0" in code_blocks(text, "## Reproduce")[0]
    assert "not compared with scaling arbitrary neurons" in section(text, "## Limitations")  # controls=0
    doc = copy.deepcopy(hooks.results)
    doc["models"]["edited"]["alpha"] = {"min": 0.5, "max": 0.5, "default": 0.5}
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "eval_results.json").write_text(json.dumps(doc))
    with pytest.raises(ModelMismatchError, match="alpha 0.5"):
        write_card(folder, eval_results=tmp_path / "half")


def test_escaping_helpers():
    from editor.report.card import code_block

    assert md_text("a|b\nc\r\nd\u2028e") == "a\\|b c d e"
    assert md_text("<img src=x onerror=alert(1)>") == "&lt;img src=x onerror=alert(1)&gt;"
    assert md_text("*bold* _it_ `code` [link](u) ~~s~~ $m$ {t}") == (
        "\\*bold\\* \\_it\\_ \\`code\\` \\[link\\](u) \\~\\~s\\~\\~ \\$m\\$ \\{t\\}")
    assert md_text("x\u202eevil\u200by") == "x evil y"  # bidi override / zero-width: no hidden text
    block = code_block("a\n`````\nb", "yaml")
    assert block.startswith("``````yaml\n") and block.endswith("\n``````") and "\n`````\n" in block


# ============================================================================================ dose-response
DOSE_SECTION = "## Dose-response"


@pytest.fixture(scope="module")
def dose_run(run):
    """A real reduced dose-response of the fixture's model and neurons (tests/test_dose.py's tiny tasks, each with a
    declared primary metric, so tiny_gen's has_e is a secondary row)."""
    from test_evaluate import write_task_folder

    from editor.evaluate.dose import dose_response

    tasks = write_task_folder(run["root"] / "dose-tasks", split="test")
    for name, metric in (("tiny_gen", "accuracy"), ("tiny_mc", "acc")):
        with (tasks / f"{name}.yaml").open("a") as f:
            f.write(f"metadata:\n  primary_metric: {metric}\n")
    out = run["root"] / "dose"
    report = dose_response(run["lm"], run["locate"] / "neurons.json", out=out, tasks=["tiny_gen", "tiny_mc"],
                           include_paths=[str(tasks)], limit=6, alphas=[0, 2], controls=2, batch_size=4, kl=False,
                           ci_iters=200)
    return {"out": out, "file": out / "dose_response.json", "doc": report.results}


def p_cell(p) -> str:
    return "n/a" if p is None else "<0.001" if p < 0.001 else f"{p:.3f}"


def ci_cell(interval) -> str:
    return f"[{interval[0]:+.3f}, {interval[1]:+.3f}]"


def test_dose_response_section_shows_the_primary_slopes_the_verdict_and_the_figure(run, dose_run, tmp_path):
    folder = fresh(run, tmp_path)
    doc = dose_run["doc"]
    primary = [r for r in doc["rows"] if r["primary"]]
    assert {(r["task"], r["metric"]) for r in primary} == {("tiny_gen", "accuracy"), ("tiny_mc", "acc")}
    assert len(doc["rows"]) == 3  # has_e: not primary, not in the table
    readme = write_card(folder, eval_results=run["root"] / "eval-weights", dose=dose_run["out"])  # its folder
    text = readme.read_text()
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    at = next(i for i, h in enumerate(headings) if h.startswith(DOSE_SECTION))
    assert headings[at - 1] == "## Evaluation" and headings[at + 1] == "## Limitations"
    part = section(text, DOSE_SECTION)

    # what was run: the grid, the number of matched random sets, n, the split, the date
    assert "alpha = 0, 1, 2" in part and "2 random-neuron sets matched to them per layer" in part
    assert "the 4 H-Neurons" in part and "at most 6 items per task, n = 6 per task" in part and "test split" in part
    assert f"Run on {doc['provenance']['created'][:10]} with hneurons" in part

    # the table: one row per primary metric, every number the report's
    header, _, *lines = table_lines(text, DOSE_SECTION)
    assert len(lines) == len(primary) and all(cells(line) == cells(header) == 9 for line in lines)
    for row, line in zip(primary, lines):
        h, rnd, d = row["sets"]["H"], row["random"], row["h_minus_random"]
        got = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
        assert got == [md_text(row["task"]), md_text(row["metric"]), "higher", "6",
                       f"{h['slope']:+.3f} {ci_cell(h['slope_ci95'])}",
                       f"{rnd['slope_mean']:+.3f} ({rnd['slope_sd']:.3f})",
                       f"{d['slope_difference']:+.3f} {ci_cell(d['ci95'])}", p_cell(d["p_holm_primary"]),
                       f"{row['h_rank']['rank']:g} of 3"]
    assert "Holm-adjusted across the 2 primary metrics" in part

    # the verdict, computed from the Holm-adjusted p-values
    significant = [r for r in primary if r["h_minus_random"]["p_holm_primary"] <= 0.05]
    if significant:
        assert f"{len(significant)} of 2 H-minus-random slopes" in part
    else:
        assert "No H-minus-random slope is significant after Holm correction across the 2 primary metrics" in part
        assert "smaller effects are not measured here" in part
        widths = {(r["task"], r["metric"]): r["h_minus_random"]["ci95"][1] - r["h_minus_random"]["ci95"][0]
                  for r in primary}
        moved = sorted(w for w in widths.values() if w > 0)
        if len(moved) > 1:
            assert f"{moved[0]:.3f} wide per unit alpha at the narrowest" in part
            assert f"{moved[-1]:.3f} at the widest" in part
        elif moved:
            assert f"is {moved[0]:.3f} wide per unit alpha" in part
        flat = [f"{md_text(task)} {metric}" for (task, metric), width in widths.items() if width == 0]
        assert ("Zero-width intervals, which bound nothing" in part) is bool(flat)  # a metric that never moved
        if flat:
            assert "the metric did not move): " + "; ".join(flat) + "." in part
    every = sum(bool(r["h_minus_random"]["significant"]) for r in doc["rows"])
    assert f"Across all 3 rows of the report (Holm over every row), {every}" in part
    assert "KL(base" not in part  # the dose-response ran without KL

    # the slopes figure: copied into plots/, shown, listed; the report copied and hashed
    assert "](plots/dose_slopes.png)" in part and "dose_counts" not in part
    assert (folder / "plots" / "dose_slopes.png").read_bytes() == (dose_run["out"] / "dose_slopes.png").read_bytes()
    publish = json.loads((folder / PUBLISH_MANIFEST).read_text())
    assert {"dose_response.json", "plots/dose_slopes.png"} <= set(publish["files"])
    assert publish["inputs"]["dose"]["sha256"] == sha256_file(dose_run["file"])
    assert f"dose\\_response.json (copied from dose/dose\\_response.json) | {sha256_file(dose_run['file'])}" in text
    assert "- dose\\_response.json: dose report" in text
    validate_card_metadata(readme)
    check_written_card(folder)
    assert not re.search(r"\bTODO\b|\bNone\b|\b[Nn]a[Nn]\b|\bnull\b|[{}]", outside_code(text))

    # Reproduce: the dose-response command parses with the real CLI into the settings that ran
    parsed = parsed_commands(text)
    dose, s = parsed["dose-response"].plan, parsed["dose-response"].settings
    assert (dose.model, dose.neurons, s.grid, s.controls, s.control_seed, s.limit, s.kl, s.tasks, s.ci_iters) == (
        str(run["src"]), "neurons.json", [0.0, 1.0, 2.0], 2, 0, 6, False, ["tiny_gen", "tiny_mc"], 200)
    assert parsed["card"].args.dose == "dose/dose_response.json"

    # without a dose report there is no section (and nothing found in a folder that never had one)
    plain = write_card(fresh(run, tmp_path, name="plain"), eval_results=run["root"] / "eval-weights").read_text()
    assert DOSE_SECTION not in plain and "dose-response" not in plain


def test_dose_response_of_another_model_or_neuron_set_is_refused(run, dose_run, tmp_path):
    folder = fresh(run, tmp_path)
    doc = dose_run["doc"]
    cases = []
    other_weights = copy.deepcopy(doc)
    other_weights["model"]["weights_fingerprint"] = "0" * 16
    cases.append((other_weights, "another model"))
    other_arch = copy.deepcopy(doc)
    other_arch["model"]["architecture_hash"] = "deadbeef"
    cases.append((other_arch, "another architecture"))
    other_set = copy.deepcopy(doc)
    other_set["neurons"]["sha256"] = "f" * 64
    cases.append((other_set, "another neuron set"))
    not_dose = copy.deepcopy(doc)
    not_dose["format"] = "hneurons.sweep/1"
    cases.append((not_dose, "hneurons.dose_response/1"))
    no_rows = {k: v for k, v in doc.items() if k != "rows"}
    cases.append((no_rows, "lacks key 'rows'"))
    for i, (bad, message) in enumerate(cases):
        path = tmp_path / f"bad{i}" / "dose_response.json"
        path.parent.mkdir()
        path.write_text(json.dumps(bad))
        with pytest.raises((ModelMismatchError, InputError), match=re.escape(message)):
            write_card(folder, dose=path)
    assert not (folder / "README.md").exists() and not (folder / PUBLISH_MANIFEST).exists()


def test_dose_section_with_neuron_counts_hostile_names_and_a_significant_row(run, dose_run, tmp_path):
    """Hand-made variants of the real report: dose_counts.png shown when the neuron_count block names it, task
    names that cannot break the table, a significant row stated as such, KL per alpha, and a report whose tasks
    declare no primary metric (every row, Holm over all rows)."""
    folder = fresh(run, tmp_path)
    doc = copy.deepcopy(dose_run["doc"])
    shutil.copy(dose_run["out"] / "dose_slopes.png", tmp_path / "dose_slopes.png")
    plot_per_layer(tmp_path, json.loads((run["locate"] / "neurons.json").read_text()), name="dose_counts.png")
    doc["neuron_count"] = {"file": "dose_counts.json", "figure": "dose_counts.png",
                           "sets": {"chosen": {"count": 4, "folder": "."}, "x2": {"count": 9, "folder": "count_x2"}}}
    doc["kl"] = {"n_prompts": 3, "mean_per_alpha": {"H": [0.25, 0.0, 0.5], "random_seed0": [0.1, 0.0, 0.2],
                                                    "random_seed1": [0.3, 0.0, 0.4]}}
    first = next(r for r in doc["rows"] if r["primary"])
    first["task"] = HOSTILE
    first["h_minus_random"].update(slope_difference=-0.25, ci95=[-0.4, -0.1], p_holm_primary=0.004)
    (tmp_path / "dose_response.json").write_text(json.dumps(doc))
    text = write_card(folder, dose=tmp_path / "dose_response.json").read_text()
    part = section(text, DOSE_SECTION)
    header, _, *lines = table_lines(text, DOSE_SECTION)
    assert all(cells(line) == cells(header) for line in lines) and "<script" not in outside_code(text)
    assert "After Holm correction across the 2 primary metrics, 1 of 2 H-minus-random slopes is significant" in part
    assert "falls with alpha more than under random neurons" in part and "-0.250 [-0.400, -0.100]" in part
    assert "H-Neurons 0.2500 at 0, 0.0000 at 1, 0.5000 at 2" in part
    assert "random sets (mean of 2) 0.2000 at 0, 0.0000 at 1, 0.3000 at 2" in part
    assert "chosen: 4, x2: 9 neurons" in part
    assert "](plots/dose_counts.png)" in part and "](plots/dose_slopes.png)" in part
    assert (folder / "plots" / "dose_counts.png").is_file()
    check_written_card(folder)

    for r in doc["rows"]:
        r["primary"] = False
    (tmp_path / "dose_response.json").write_text(json.dumps(doc))
    part = section(build_card(folder, dose=tmp_path / "dose_response.json").text, DOSE_SECTION)
    assert "No task declares a primary metric, so every row is shown; p: Holm-adjusted across all 3 rows" in part
    assert len([line for line in part.splitlines() if line.startswith("|")]) == 2 + 3


def test_card_cli_takes_dose_and_a_rerun_finds_the_copied_report(run, dose_run, tmp_path, capsys):
    folder = fresh(run, tmp_path)
    assert main(["card", str(folder), "--eval", str(run["root"] / "eval-weights"), "--dose",
                 str(dose_run["file"])]) == 0
    capsys.readouterr()
    before = section((folder / "README.md").read_text(), DOSE_SECTION)
    assert main(["card", str(folder)]) == 0  # no flags: the copies in the folder (plots/ included)
    assert section((folder / "README.md").read_text(), DOSE_SECTION) == before
    check_written_card(folder)


def test_recipe_card_stage_passes_the_dose_report_when_the_recipe_has_a_dose_section(run, dose_run, tmp_path):
    from editor.pipeline.recipe import load_recipe
    from editor.pipeline.run import RunContext, run_card

    out = tmp_path / "out"
    shutil.copytree(run["root"] / "edit-weights", out / "model")
    shutil.copytree(run["root"] / "eval-weights", out / "eval")
    shutil.copytree(run["locate"], out / "locate")
    (out / "dose").mkdir()
    shutil.copy(dose_run["file"], out / "dose" / "dose_response.json")
    shutil.copy(dose_run["out"] / "dose_slopes.png", out / "dose" / "dose_slopes.png")
    recipe_path = tmp_path / "recipe.yaml"
    for dose_section, shown in (("", False), ("dose: {controls: 2}\n", True)):
        recipe_path.write_text(f"model: {{id: {json.dumps(str(run['src']))}}}\noutput: {json.dumps(str(out))}\n"
                               f"edit: {{alpha: 0}}\n{dose_section}")
        for stale in ("README.md", "dose_response.json", PUBLISH_MANIFEST):
            (out / "model" / stale).unlink(missing_ok=True)
        run_card(RunContext(load_recipe(recipe_path), recipe_path, out, progress=False))
        text = (out / "model" / "README.md").read_text()
        assert (DOSE_SECTION in text) is shown
        assert ("dose_response.json" in json.loads((out / "model" / PUBLISH_MANIFEST).read_text())["files"]) is shown
