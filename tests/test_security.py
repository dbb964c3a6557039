"""Security: what hneurons refuses to trust (see SECURITY.md), each as a test.

* the source never unpickles, never evaluates strings, never trusts remote code by default, never reads
  YAML with a loader that can build Python objects (an AST scan of editor/);
* the Hub token is never written to any file or log of a full run (collect -> locate -> edit -> eval ->
  card -> push with a fake token set, then every file and all captured output grepped);
* paths from recipes, reports and manifests, and symbolic links planted in an existing output folder,
  never make hneurons write (or upload) outside the folder;
* user-provided strings cannot break the model card's YAML front matter or inject Markdown / HTML.
"""

from __future__ import annotations

import ast
import importlib
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from tinymodels import tiny_model, tiny_tokenizer, write_capital_questions

from editor.artifacts import check_no_outside_links, safe_join
from editor.cli import main
from editor.errors import InputError, ModelLoadError, PublishError

REPO = Path(__file__).resolve().parents[1]
SECRET = "hf_fake_secret_token_XYZ"
NEURONS = {"neurons": [{"layer": 0, "index": 1}, {"layer": 1, "index": 5}]}


# ============================================================================================ source scan
def _sources() -> list[Path]:
    return sorted((REPO / "editor").rglob("*.py"))


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


FORBIDDEN_CALLS = {
    "pickle.load": "unpickling", "pickle.loads": "unpickling", "pickle.Unpickler": "unpickling",
    "marshal.load": "unmarshalling", "marshal.loads": "unmarshalling", "dill.load": "unpickling",
    "joblib.load": "unpickling", "numpy.load": "np.load may unpickle", "np.load": "np.load may unpickle",
    "yaml.unsafe_load": "unsafe YAML", "yaml.full_load": "unsafe YAML", "yaml.load_all": "YAML without SafeLoader",
    "eval": "eval of a string", "exec": "exec of a string", "compile": "compiling a string",
    "os.system": "a shell", "os.popen": "a shell", "__import__": "dynamic import of a string",
}


def _yaml_loader_is_safe(module_name: str, node: ast.Call) -> bool:
    """The Loader of a yaml.load call, looked up in its module, derives from yaml.SafeLoader."""
    loader = next((k.value for k in node.keywords if k.arg == "Loader"), node.args[1] if len(node.args) > 1 else None)
    if loader is None or not _dotted(loader):
        return False
    obj = importlib.import_module(module_name)
    for part in _dotted(loader).split("."):
        obj = getattr(obj, part, None)
    return isinstance(obj, type) and issubclass(obj, yaml.SafeLoader)


def scan(path: Path) -> list[str]:
    """Every unsafe construct in one module, as 'file:line: what'."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    module_name = ".".join(path.relative_to(REPO).with_suffix("").parts)
    found = []

    def report(node: ast.AST, what: str) -> None:
        found.append(f"{path.relative_to(REPO)}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            if name in FORBIDDEN_CALLS:
                report(node, f"{name}(): {FORBIDDEN_CALLS[name]}")
            if name.endswith("torch.load") and not _is_true(keywords.get("weights_only")):
                report(node, "torch.load without weights_only=True")
            if name == "yaml.load" and not _yaml_loader_is_safe(module_name, node):
                report(node, "yaml.load without a SafeLoader-derived Loader")
            for flag in ("trust_remote_code", "allow_pickle"):
                if _is_true(keywords.get(flag)):
                    report(node, f"{flag}=True passed literally")
            if name.startswith("subprocess.") and _is_true(keywords.get("shell")):
                report(node, "subprocess with shell=True")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            positional = args.posonlyargs + args.args
            pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
            for arg, default in pairs:
                if arg.arg in ("trust_remote_code", "allow_pickle") and _is_true(default):
                    report(node, f"{arg.arg} defaults to True in {node.name}()")
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if node.target.id in ("trust_remote_code", "allow_pickle") and _is_true(node.value):
                report(node, f"{node.target.id} field defaults to True")
        elif isinstance(node, ast.Import) and any(a.name in ("pickle", "dill", "cloudpickle", "marshal") for a in node.names):
            report(node, "imports a pickle module")
    return found


def test_the_scan_catches_what_it_looks_for(tmp_path):
    bad = REPO / "editor" / "_scan_probe_tmp.py"  # inside editor/ so the module path resolves; removed below
    bad.write_text("import pickle, yaml, torch\n"
                   "def f(path, trust_remote_code=True):\n"
                   "    torch.load(path)\n"
                   "    torch.load(path, weights_only=False)\n"
                   "    yaml.load(path, Loader=yaml.Loader)\n"
                   "    eval('1')\n"
                   "    return g(trust_remote_code=True)\n")
    try:
        found = scan(bad)
    finally:
        bad.unlink()
    whats = "\n".join(found)
    for expected in ("imports a pickle module", "trust_remote_code defaults to True", "yaml.load without",
                     "eval()", "trust_remote_code=True passed literally"):
        assert expected in whats, whats
    assert sum("torch.load without weights_only=True" in f for f in found) == 2, whats


def test_source_has_no_unpickling_eval_remote_code_or_unsafe_yaml():
    found = [hit for path in _sources() for hit in scan(path)]
    assert found == []


def test_model_loading_asks_for_safetensors_unless_pickles_are_allowed(tmp_path):
    """A .bin next to safetensors is never read; a pickle-only folder needs --allow-pickle (see test_bad_inputs)."""
    from editor.model.loading import load_model

    folder = tmp_path / "both"
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)

    class Planted:
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "pwned"),))

    import pickle

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"w": Planted()}))
    load_model(str(folder), device="cpu")
    assert not (tmp_path / "pwned").exists()


def test_a_pickled_adapter_is_refused(tmp_path):
    from editor.evaluate.variants import peft_applied

    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")
    model = tiny_model("llama")
    with pytest.raises(ModelLoadError, match="adapter_model.bin"):
        with peft_applied(model, folder):
            pass


# ============================================================================================= paths
def test_safe_join_refuses_parent_absolute_and_escaping_links(tmp_path):
    root = tmp_path / "out"
    (root / "inside").mkdir(parents=True)
    outside = tmp_path / "victim"
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "ok-link").symlink_to(root / "inside", target_is_directory=True)
    assert safe_join(root, "inside/x.png") == root / "inside" / "x.png"
    assert safe_join(root, "ok-link/x.png") == root / "ok-link" / "x.png"
    for bad in ("../victim/x", "inside/../../victim/x", str(outside / "x"), "link/x.png"):
        with pytest.raises(InputError):
            safe_join(root, bad)


def test_planted_links_in_an_output_folder_are_found(tmp_path):
    out = tmp_path / "out"
    (out / "a" / "b").mkdir(parents=True)
    (out / "a" / "b" / "inner").symlink_to(out / "a")
    check_no_outside_links(out)  # links that stay inside are fine
    (out / "a" / "b" / "evil").symlink_to("/etc/passwd")
    with pytest.raises(InputError, match="evil"):
        check_no_outside_links(out)


@pytest.fixture
def tiny_ckpt(tmp_path) -> Path:
    folder = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    (tmp_path / "neurons.json").write_text(json.dumps(NEURONS))
    return folder


def _victim(tmp_path) -> Path:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("untouched")
    return victim


def _untouched(victim: Path) -> bool:
    return sorted(p.name for p in victim.iterdir()) == ["keep.txt"] and (victim / "keep.txt").read_text() == "untouched"


def test_overwrite_of_an_edit_folder_holding_a_link_never_writes_through_it(tiny_ckpt, tmp_path):
    victim = _victim(tmp_path)
    out = tmp_path / "edit"
    out.mkdir()
    for name in ("model.safetensors", "neurons.json", "config.json"):  # the names the edit is about to write
        (out / name).symlink_to(victim / "keep.txt")
    (out / "plots").symlink_to(victim, target_is_directory=True)
    argv = ["edit", "--model", str(tiny_ckpt), "--neurons", str(tmp_path / "neurons.json"), "--out", str(out),
            "--device", "cpu", "--overwrite"]
    assert main(argv) == 0
    assert _untouched(victim)
    assert not any(p.is_symlink() for p in out.rglob("*"))  # the new folder replaced the old one whole
    assert (out / "hneurons_edit.json").is_file()


def test_resuming_stages_refuse_an_output_folder_with_a_link_outside(tiny_ckpt, tmp_path, capsys):
    victim = _victim(tmp_path)
    data = tmp_path / "qs.jsonl"
    data.write_text(json.dumps({"id": "q1", "question": "Capital of France?", "answers": ["Paris"],
                                "split": "train"}) + "\n")
    collect_out = tmp_path / "collect"
    collect_out.mkdir()
    (collect_out / "chunks").symlink_to(victim, target_is_directory=True)
    argv = ["collect", "--model", str(tiny_ckpt), "--data", str(data), "--split", "train", "--samples", "1",
            "--max-new-tokens", "2", "--out", str(collect_out), "--device", "cpu", "--no-progress"]
    assert main(argv) == 2
    assert "chunks" in capsys.readouterr().err
    locate_out = tmp_path / "locate"
    locate_out.mkdir()
    (locate_out / "features").symlink_to(victim, target_is_directory=True)
    responses = tmp_path / "responses"
    responses.mkdir()
    from editor.locate.settings import LocateSettings
    from editor.locate.stage import locate
    from editor.model.loading import load_model

    lm = load_model(str(tiny_ckpt), device="cpu")
    _synthetic_collect(responses, lm.identity())
    with pytest.raises(InputError, match="features"):
        locate(lm, responses, locate_out, LocateSettings(n_C=3, random_draws=1, bootstrap=10), progress=False)
    assert _untouched(victim)


def test_card_never_copies_plots_through_a_planted_link(tiny_ckpt, tmp_path):
    from editor.edit.stage import edit_model
    from editor.report.card import write_card

    victim = _victim(tmp_path)
    out = tmp_path / "edit"
    edit_model(str(tiny_ckpt), tmp_path / "neurons.json", 0.0, "weights", out, device="cpu")
    (out / "plots").symlink_to(victim, target_is_directory=True)
    with pytest.raises(InputError, match="plots"):
        write_card(out)
    assert _untouched(victim) and not (out / "README.md").exists()


@pytest.mark.parametrize("listed", ["../victim/keep.txt", "/etc/hostname", "escape.txt"])
def test_push_never_uploads_a_file_outside_the_folder(hub, tiny_ckpt, tmp_path, listed):
    from editor.artifacts import atomic_write_json, sha256_file
    from editor.edit.stage import edit_model
    from editor.report.publish import push_folder

    victim = _victim(tmp_path)
    out = tmp_path / "edit"
    edit_model(str(tiny_ckpt), tmp_path / "neurons.json", 0.0, "weights", out, device="cpu")
    (out / "escape.txt").symlink_to(victim / "keep.txt")
    manifest = json.loads((out / "hneurons_edit.json").read_text())
    manifest["files"][listed] = sha256_file(victim / "keep.txt")
    atomic_write_json(out / "hneurons_edit.json", manifest)
    with pytest.raises(PublishError):
        push_folder(out, "tester/escape")
    assert hub.requests == []


# ================================================================================ model card escaping
def test_hostile_names_cannot_break_the_card(tmp_path):
    """A checkpoint folder whose name carries YAML, Markdown and HTML syntax: the card still parses, its
    metadata is what it should be, and the hostile text appears only escaped."""
    from huggingface_hub import ModelCard

    from editor.edit.stage import edit_model
    from editor.report.card import write_card

    hostile = 'x"]\n---\nlicense: evil <script>alert(1)</script> | [a](javascript:x) {{ var }}'
    folder = tmp_path / hostile
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    (tmp_path / "neurons.json").write_text(json.dumps(NEURONS))
    out = tmp_path / "edit"
    edit_model(str(folder), tmp_path / "neurons.json", 0.0, "weights", out, device="cpu")
    readme = write_card(out, repo_id="tester/x")
    text = readme.read_text(encoding="utf-8")
    front = text.split("---\n", 2)[1]
    meta = yaml.safe_load(front)
    assert meta.get("license") != "evil" and "evil" not in json.dumps(meta.get("license"))
    prose = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks show text verbatim, harmlessly
    assert "alert(1)" in text  # the hostile name is in the card ...
    assert "<script>" not in prose  # ... but never as live HTML
    assert re.search(r"(?<!\\)\]\(javascript:", prose) is None  # ... nor as a live link: [a\](...) is escaped
    card = ModelCard.load(readme)
    assert card.data.to_dict() == meta


# ================================================================================= token hygiene
def _synthetic_collect(folder: Path, identity: dict) -> None:
    """A collect folder with both classes in every split (a tiny random model cannot produce one)."""
    g = np.random.default_rng(0)
    records = []
    for split, n in (("train", 16), ("validation", 8), ("test", 8)):
        for i in range(n):
            prompt, answer = g.integers(10, 290, size=6).tolist(), g.integers(10, 290, size=3).tolist()
            if i % 2:
                answer[:2] = [7, 7]  # a signal the probe can find
            records.append({"id": f"{split}{i}", "split": split, "relation": "r", "fabricated": False,
                            "selected": True, "hallucinated": i % 2, "consistency": "wrong" if i % 2 else "correct",
                            "representative": {"input_ids": prompt + answer, "prompt_len": 6, "response_start": 6,
                                               "response_end": 9, "answer_start": 6, "answer_end": 9}})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "collect.json").write_text(json.dumps({"format": "hneurons.collect/1", "model": identity, "data": {},
                                                     "sampling": {}, "prompt": {}, "questions_sha256": "x"}))


def test_the_token_is_written_nowhere_in_a_full_run(hub, tiny_ckpt, tmp_path, monkeypatch, capfd, caplog):
    """collect -> locate -> edit -> eval -> card -> push with HF_TOKEN set: the token reaches the Hub (as a
    header) and nothing else: no file under the run, the cache or HF_HOME, no output, no log record.

    The locate stage reads a synthetic collect folder of the same model (a tiny random model answers no
    question consistently right); the real collect stage still runs with the token set.
    """
    from editor.model.loading import load_model

    hub.token = SECRET
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("HNEURONS_CACHE", str(tmp_path / "cache"))
    caplog.set_level(logging.DEBUG)
    run = tmp_path / "run"
    data = tmp_path / "qs.jsonl"
    write_capital_questions(data, 4)
    model = ["--model", str(tiny_ckpt), "--device", "cpu"]
    assert main(["collect", *model, "--data", str(data), "--split", "train", "--samples", "2", "--max-new-tokens",
                 "4", "--out", str(run / "collect"), "--no-progress"]) == 0
    _synthetic_collect(run / "responses", load_model(str(tiny_ckpt), device="cpu").identity())
    assert main(["locate", *model, "--responses", str(run / "responses"), "--out", str(run / "locate"), "--C", "50",
                 "--random-draws", "1", "--no-progress"]) == 0
    assert main(["edit", *model, "--neurons", str(run / "locate" / "neurons.json"), "--mode", "ia3",
                 "--out", str(run / "edit")]) == 0
    assert main(["eval", "--base", str(tiny_ckpt), "--adapter", str(run / "edit"), "--tasks",
                 "hneurons_knowledge_mc", "--limit", "2", "--controls", "0", "--ci-iters", "50", "--batch-size", "2",
                 "--device", "cpu", "--out", str(run / "eval")]) == 0
    assert main(["card", str(run / "edit"), "--eval", str(run / "eval"), "--repo", "tester/tiny-fix"]) == 0
    assert main(["push", str(run / "edit"), "--repo", "tester/tiny-fix"]) == 0
    captured = capfd.readouterr()

    assert hub.repo("tester/tiny-fix").files()["README.md"]  # the run really went through
    writes = [r for r in hub.requests if r.method in ("POST", "PUT") and not r.path.startswith("/lfs-upload/")]
    assert writes and all(r.authorized for r in writes)
    leaks = [str(p) for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()
             and SECRET.encode() in p.read_bytes()]
    leaks += [name for name, text in (("stdout", captured.out), ("stderr", captured.err), ("log", caplog.text))
              if SECRET in text]
    leaks += [f"request {r.method} {r.path}" for r in hub.requests
              if SECRET.encode() in r.body or SECRET in json.dumps(r.headers) or SECRET in str(r.query)]
    assert leaks == []
    assert len([p for p in tmp_path.rglob("*") if p.is_file()]) > 30  # every stage wrote its files
