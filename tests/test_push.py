"""`hneurons push`: the real huggingface_hub client against the Hub test double in tests/hubserver.py."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tinymodels import tiny_model, tiny_tokenizer

from editor.artifacts import atomic_write_json, files_sha256
from editor.errors import PublishError
from editor.formats import EDIT_MANIFEST, PUBLISH_MANIFEST
from editor.report.publish import push_folder

REPO_ROOT = Path(__file__).resolve().parents[1]
FAST = (0.01, 0.01, 0.01)  # retry waits for tests


def write_manifest(folder: Path, name: str = EDIT_MANIFEST, **extra) -> dict:
    """A manifest listing every file now in ``folder`` except manifests (as the edit stage writes it)."""
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and p.name not in (EDIT_MANIFEST, PUBLISH_MANIFEST))
    manifest = {"format": "test", **extra, "files": files_sha256(folder, names)}
    atomic_write_json(folder / name, manifest)
    return manifest


@pytest.fixture
def small_folder(tmp_path) -> Path:
    """A tiny edit-like output: a JSON config, a binary (LFS) weights file, a nested file, a manifest."""
    folder = tmp_path / "out"
    (folder / "nested").mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}\n')
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 8)
    (folder / "nested" / "neurons.json").write_text('{"neurons": [{"layer": 0, "index": 3}]}\n')
    write_manifest(folder)
    return folder


def remote_files(hub, repo_id: str, revision: str = "main") -> dict[str, bytes]:
    return hub.repo(repo_id).files(revision)


def local_files(folder: Path, names) -> dict[str, bytes]:
    return {n: (folder / n).read_bytes() for n in names}


def change_file(folder: Path, name: str, text: str) -> None:
    """Edit a listed file the way a re-run stage would: new content and an updated manifest."""
    (folder / name).write_text(text)
    write_manifest(folder)


def logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


# ------------------------------------------------------------------------------------------ round trip
def test_round_trip_checkpoint_and_adapter_load_with_identical_logits(hub, tmp_path):
    from huggingface_hub import snapshot_download
    from peft import IA3Config, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    # An edited checkpoint: tiny llama with two FFN input channels of layer 1 zeroed, plus its tokenizer.
    ckpt = tmp_path / "edited"
    model = tiny_model("llama", seed=3)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[:, [4, 17]] = 0
    model.save_pretrained(ckpt)
    tiny_tokenizer().save_pretrained(ckpt)
    write_manifest(ckpt, mode="checkpoint")
    # An IA3 adapter suppressing the same neurons.
    adapter = tmp_path / "adapter"
    peft_model = get_peft_model(tiny_model("llama", seed=3),
                                IA3Config(target_modules=["down_proj"], feedforward_modules=["down_proj"]))
    with torch.no_grad():
        peft_model.base_model.model.model.layers[1].mlp.down_proj.ia3_l["default"][0, [4, 17]] = 0
    peft_model.save_pretrained(adapter)
    write_manifest(adapter, mode="adapter")

    pushed_ckpt = push_folder(ckpt, "tester/tiny-edited")
    pushed_adapter = push_folder(adapter, "tester/tiny-edited-ia3")
    assert pushed_ckpt.committed and pushed_adapter.committed
    assert hub.repo("tester/tiny-edited").head("main").files["model.safetensors"].lfs  # went through LFS

    cache = tmp_path / "empty-cache"
    assert not cache.exists()
    got_ckpt = Path(snapshot_download("tester/tiny-edited", endpoint=hub.url, cache_dir=cache))
    got_adapter = Path(snapshot_download("tester/tiny-edited-ia3", endpoint=hub.url, cache_dir=cache))
    uploaded = [f.path for f in pushed_ckpt.files]
    assert local_files(got_ckpt, uploaded) == local_files(ckpt, uploaded)

    ids = torch.tensor([[1, 5, 9, 42, 7, 250, 3, 11]])
    remote_model = AutoModelForCausalLM.from_pretrained(got_ckpt).eval()
    local_model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    assert torch.equal(logits(remote_model, ids), logits(local_model, ids))
    assert not torch.equal(logits(remote_model, ids), logits(tiny_model("llama", seed=3), ids))  # the edit is in it

    remote_peft = PeftModel.from_pretrained(tiny_model("llama", seed=3), str(got_adapter)).eval()
    local_peft = PeftModel.from_pretrained(tiny_model("llama", seed=3), str(adapter)).eval()
    assert torch.equal(logits(remote_peft, ids), logits(local_peft, ids))
    assert torch.allclose(logits(remote_peft, ids), logits(local_model, ids), atol=1e-5)  # same neurons suppressed


# ------------------------------------------------------------------------------------------ what is sent
def test_only_manifest_files_are_uploaded(hub, small_folder):
    (small_folder / "push.log").write_text("log line\n")
    (small_folder / ".hneurons-tmp-abc").write_text("half-written")
    (small_folder / "__pycache__").mkdir()
    (small_folder / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0pyc")
    (small_folder / ".cache" / "huggingface").mkdir(parents=True)
    (small_folder / ".cache" / "huggingface" / "x.lock").write_text("")

    result = push_folder(small_folder, "tester/small")

    expected = {"config.json", "model.safetensors", "nested/neurons.json", EDIT_MANIFEST}
    assert {f.path for f in result.files} == expected
    assert set(remote_files(hub, "tester/small")) == expected | {".gitattributes"}
    nested = remote_files(hub, "tester/small")["nested/neurons.json"]
    assert nested == (small_folder / "nested/neurons.json").read_bytes()
    assert set(result.left_out) == {"push.log", ".hneurons-tmp-abc", "__pycache__/x.cpython-311.pyc",
                                    ".cache/huggingface/x.lock"}


def test_publish_manifest_adds_the_card_files(hub, small_folder):
    (small_folder / "README.md").write_text("---\nlicense: apache-2.0\ntags: [hneurons]\n---\n# Tiny model\n")
    (small_folder / "eval_results.json").write_text('{"acc": 0.5}\n')
    atomic_write_json(small_folder / PUBLISH_MANIFEST,
                      {"files": files_sha256(small_folder, ["README.md", "eval_results.json"])})

    push_folder(small_folder, "tester/with-card")

    files = remote_files(hub, "tester/with-card")
    assert {"README.md", "eval_results.json", PUBLISH_MANIFEST, EDIT_MANIFEST} <= set(files)
    assert files["README.md"] == (small_folder / "README.md").read_bytes()
    assert hub.recorded("POST", "/api/validate-yaml")  # the client validated the card metadata


def test_conflicting_hashes_between_manifests_are_refused(hub, small_folder):
    atomic_write_json(small_folder / PUBLISH_MANIFEST, {"files": {"config.json": "0" * 64}})
    with pytest.raises(PublishError, match="config.json is listed with different sha256"):
        push_folder(small_folder, "tester/small")
    assert hub.requests == []


def test_dry_run_lists_files_and_destination_and_sends_nothing(hub, small_folder, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")  # a dry run needs no token either
    result = push_folder(small_folder, "tester/small", dry_run=True, revision="exp", create_pr=True)
    text = result.render()
    assert result.dry_run and not result.committed
    assert f"{hub.url}/tester/small" in text and "revision exp" in text and "pull request" in text
    for name in ("config.json", "model.safetensors", "nested/neurons.json", EDIT_MANIFEST):
        assert name in text
    assert hub.requests == []


# ---------------------------------------------------------------------------------- flags reach the Hub
def test_private_flag_and_revision_reach_the_server(hub, small_folder):
    result = push_folder(small_folder, "tester/priv", private=True, revision="hneurons-v1")

    repo = hub.repo("tester/priv")
    assert repo.private
    (create,) = hub.recorded("POST", "/api/repos/create")
    assert json.loads(create.body)["visibility"] == "private"
    (commit,) = hub.commit_requests()
    assert commit.path == "/api/models/tester/priv/commit/hneurons-v1"
    assert len(repo.history("main")) == 1  # main still holds only the initial commit
    assert "config.json" in repo.files("hneurons-v1")
    assert result.revision == "hneurons-v1" and result.commit_oid == repo.refs["hneurons-v1"]


def test_private_is_refused_for_an_existing_public_repo(hub, small_folder):
    push_folder(small_folder, "tester/public", private=False)
    with pytest.raises(PublishError, match="already exists and is public"):
        push_folder(small_folder, "tester/public", private=True)


def test_create_pr_opens_a_pull_request_not_a_commit_to_main(hub, small_folder):
    push_folder(small_folder, "tester/pr")
    main_before = hub.repo("tester/pr").refs["main"]
    change_file(small_folder, "config.json", '{"model_type": "llama", "edited": true}\n')

    result = push_folder(small_folder, "tester/pr", create_pr=True, commit_message="Suppress H-Neurons")

    repo = hub.repo("tester/pr")
    assert repo.refs["main"] == main_before
    (pr,) = repo.pull_requests()
    assert pr["title"] == "Suppress H-Neurons" and pr["status"] == "open"
    assert result.pr_url == f"{hub.url}/tester/pr/discussions/{pr['num']}"
    assert repo.files(f"refs/pr/{pr['num']}")["config.json"] == (small_folder / "config.json").read_bytes()
    assert hub.commit_requests()[-1].query["create_pr"] == ["1"]

    again = push_folder(small_folder, "tester/pr", create_pr=True, commit_message="Suppress H-Neurons")
    assert not again.committed and again.pr_url == result.pr_url and len(repo.pull_requests()) == 1

    # A follow-up commit to the open pull request itself.
    change_file(small_folder, "config.json", '{"model_type": "llama", "edited": 2}\n')
    push_folder(small_folder, "tester/pr", revision=f"refs/pr/{pr['num']}")
    assert repo.refs["main"] == main_before and len(repo.history(f"refs/pr/{pr['num']}")) == 4
    assert repo.files(f"refs/pr/{pr['num']}")["config.json"] == (small_folder / "config.json").read_bytes()


# ------------------------------------------------------------------------------- idempotence and retries
def test_repush_of_the_same_folder_makes_no_commit(hub, small_folder):
    first = push_folder(small_folder, "tester/again")
    second = push_folder(small_folder, "tester/again")

    assert first.committed and not second.committed
    assert second.commit_oid == first.commit_oid
    assert len(hub.commit_requests()) == 1
    assert len(hub.repo("tester/again").history()) == 2  # initial + ours
    assert "nothing to push" in second.render()


def test_only_changed_files_are_sent(hub, small_folder):
    push_folder(small_folder, "tester/delta")
    change_file(small_folder, "nested/neurons.json", '{"neurons": []}\n')
    result = push_folder(small_folder, "tester/delta")
    assert sorted(result.changed_files) == [EDIT_MANIFEST, "nested/neurons.json"]
    assert len(hub.repo("tester/delta").history()) == 3


@pytest.mark.parametrize("create_pr", [False, True], ids=["commit", "pr"])
@pytest.mark.parametrize("failure", ["drop-before", "drop-after", "http-503"])
def test_dropped_connection_on_commit_is_retried_without_duplicates(hub, small_folder, failure, create_pr):
    push_folder(small_folder, "tester/flaky")
    change_file(small_folder, "config.json", '{"model_type": "llama", "v": 2}\n')
    hub.commit_failures = [failure]

    result = push_folder(small_folder, "tester/flaky", create_pr=create_pr, retry_waits=FAST)

    repo = hub.repo("tester/flaky")
    assert result.committed and result.attempts == 2 and hub.commit_failures == []
    ref = f"refs/pr/{repo.pull_requests()[0]['num']}" if create_pr else "main"
    assert len(repo.pull_requests()) == (1 if create_pr else 0)
    assert len(repo.history(ref)) == 3  # initial, first push, exactly one commit of this push
    assert repo.files(ref)["config.json"] == (small_folder / "config.json").read_bytes()
    expected_posts = 1 + (1 if failure == "drop-after" else 2)  # a landed commit is not sent again
    assert len(hub.commit_requests()) == expected_posts


def test_persistent_failure_gives_a_clear_error_and_a_rerun_completes(hub, small_folder):
    hub.commit_failures = ["drop-before"] * 3
    with pytest.raises(PublishError, match="failed 3 times.*re-run the same command"):
        push_folder(small_folder, "tester/down", retry_waits=FAST[:2])
    assert len(hub.repo("tester/down").history()) == 1

    result = push_folder(small_folder, "tester/down", retry_waits=FAST)
    assert result.committed and len(hub.repo("tester/down").history()) == 2


# ---------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("damage", ["changed", "missing"])
def test_incomplete_folder_is_refused_before_any_request(hub, small_folder, damage):
    if damage == "changed":
        (small_folder / "nested" / "neurons.json").write_text('{"neurons": []}\n')
        match = r"nested/neurons.json does not match hneurons_edit.json"
    else:
        (small_folder / "model.safetensors").unlink()
        match = r"lists model.safetensors, but .* is missing"
    with pytest.raises(PublishError, match=match):
        push_folder(small_folder, "tester/broken")
    with pytest.raises(PublishError, match=match):
        push_folder(small_folder, "tester/broken", dry_run=True)
    assert hub.requests == []


def test_folder_without_manifest_is_refused(hub, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.json").write_text("{}")
    with pytest.raises(PublishError, match="has no hneurons_edit.json"):
        push_folder(tmp_path / "x", "tester/x")


@pytest.mark.parametrize("repo_id", ["just-a-name", "a/b/c", "tester/bad name", "tester/model.git", "tester/-x"])
def test_invalid_repo_name_is_refused_before_any_request(hub, small_folder, repo_id):
    with pytest.raises(PublishError, match="invalid Hub repo"):
        push_folder(small_folder, repo_id)
    assert hub.requests == []


def test_missing_token_names_the_ways_to_log_in(hub, small_folder, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(PublishError) as err:
        push_folder(small_folder, "tester/small")
    for hint in ("HF_TOKEN", "hf auth login", "huggingface-cli login"):
        assert hint in str(err.value)
    assert hub.requests == []


def test_offline_mode_is_a_clear_error(hub, small_folder, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PublishError, match="HF_HUB_OFFLINE is set"):
        push_folder(small_folder, "tester/small")
    assert hub.requests == []


def test_rejected_token_is_a_clear_error_without_the_token(hub, small_folder, monkeypatch):
    wrong = "hf_wrongTOKENwrongTOKENwrong"
    monkeypatch.setenv("HF_TOKEN", wrong)
    with pytest.raises(PublishError, match="refused the token") as err:
        push_folder(small_folder, "tester/small")
    assert wrong not in str(err.value)


# ------------------------------------------------------------------------------------- token hygiene
def _token_leaks(hub, root: Path, texts: list[str]) -> list[str]:
    token = hub.token
    leaks = [f"file {p}" for p in root.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
    leaks += [f"text #{i}" for i, t in enumerate(texts) if token in t]
    for r in hub.requests:
        if token.encode() in r.body or any(token in v for v in r.headers.values()) or token in str(r.query):
            leaks.append(f"request {r.method} {r.path}")
    return leaks


def test_token_appears_in_no_file_log_or_output_of_an_api_push(hub, small_folder, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    hub.commit_failures = ["drop-after"]  # the retry path logs a warning with the error text
    push_folder(small_folder, "tester/secret", retry_waits=FAST)
    push_folder(small_folder, "tester/secret", create_pr=True)
    out = capsys.readouterr()

    writes = [r for r in hub.requests if r.method in ("POST", "PUT") and not r.path.startswith("/lfs-upload/")]
    assert writes and all(r.authorized for r in writes)  # the token was used...
    assert _token_leaks(hub, tmp_path, [caplog.text, out.out, out.err]) == []  # ...and shown nowhere


def test_cli_push_in_a_fresh_process(hub, small_folder, tmp_path, capsys):
    """`python -m editor push` as a user runs it: the client imports with HF_ENDPOINT set in its environment."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "editor", *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)

    dry = cli("push", str(small_folder), "--repo", "tester/cli", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "dry run" in dry.stdout and hub.requests == []

    done = cli("-v", "push", str(small_folder), "--repo", "tester/cli", "--private", "--revision", "v1", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["committed"] and report["revision"] == "v1" and hub.repo("tester/cli").private
    assert set(remote_files(hub, "tester/cli", "v1")) >= {"config.json", "model.safetensors", EDIT_MANIFEST}

    from editor.cli import main

    assert main(["push", str(small_folder), "--repo", "not a repo"]) == 2
    bad = capsys.readouterr()
    assert bad.err.startswith("hneurons push: error: invalid Hub repo 'not a repo'") and bad.err.count("\n") == 1

    assert _token_leaks(hub, tmp_path, [dry.stdout, dry.stderr, done.stdout, done.stderr, bad.out, bad.err]) == []
