"""Reliability round 2 (issue 21), what the bad-input table cannot show in one row:

* one writer per output folder: three `hneurons edit` processes started at the same instant on one folder:
  exactly one succeeds, the others are refused (in use, naming the holder's pid, or, if they come after it,
  the finished folder exists), and the folder holds one complete, verified result; a lock left by a killed
  process is recovered by the next run; the lock is re-entrant within a process and leaves no file;
* faults during long work: `hneurons eval` killed in the middle of its lm-eval runs resumes without redoing
  the finished variants and prints the same table; a disk that fills up during collect, locate and eval
  leaves the last good state (finished chunks, feature shards, variants) intact, says how much space was
  needed, and the re-run after space is freed finishes with the uninterrupted run's results; an edit to a
  GGUF file killed while it writes leaves no file under the final name.

Full disks are real: a small tmpfs (mounting needs root; without mount rights those tests are skipped, and
the bad-input table's RLIMIT_FSIZE row still covers the error path). Killed runs are real subprocesses
(SIGKILL); reference runs and re-runs are in-process, with the same torch thread count.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cli_processes import env, kill_when
from cli_processes import strip_volatile as strip
from tinymodels import (
    tiny_model,
    tiny_tokenizer,
    write_capital_questions,
    write_collect_folder,
)

from editor.cli import main
from editor.errors import OutputInUseError, OutputWriteError
from editor.formats import EDIT_MANIFEST, EVAL_RUN
from editor.locking import lock_file, output_lock


def same_tree(got: Path, reference: Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Files that differ between two output folders (JSON compared without provenance and timing)."""
    def files(root: Path) -> set[str]:
        return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()
                and not p.relative_to(root).as_posix().startswith(skip)}

    names = files(got) | files(reference)
    different = []
    for name in sorted(names):
        a, b = got / name, reference / name
        if not (a.is_file() and b.is_file()):
            different.append(f"{name} (only in one)")
        elif a.suffix == ".json":
            if strip(json.loads(a.read_text())) != strip(json.loads(b.read_text())):
                different.append(name)
        elif a.read_bytes() != b.read_bytes():
            different.append(name)
    return different


def leftovers(folder: Path) -> list[str]:
    """Temporaries and lock files anywhere below ``folder``."""
    return sorted(str(p) for p in folder.rglob("*") if ".hneurons-tmp-" in p.name or p.name.endswith("hneurons-lock"))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A small llama (4 layers x 256 neurons: writing and verifying an edit takes a moment)."""
    folder = tmp_path_factory.mktemp("ckpt") / "small"
    tiny_model("llama", hidden_size=64, intermediate_size=256, num_hidden_layers=4).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def neurons(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("neurons") / "neurons.json"
    path.write_text(json.dumps({"neurons": [{"layer": 0, "index": 3}, {"layer": 2, "index": 100},
                                            {"layer": 3, "index": 255}]}))
    return path


# ================================================================================== one writer per folder
RACER = """\
import sys, time
from pathlib import Path
from editor.cli import main  # the lock is taken before the model (and transformers) loads
go = Path(sys.argv[1])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
sys.exit(main(sys.argv[2:]))
"""


def test_three_processes_on_one_output_folder_exactly_one_succeeds(ckpt, neurons, tmp_path):
    out = tmp_path / "edit"
    argv = ["edit", "--model", str(ckpt), "--neurons", str(neurons), "--out", str(out), "--device", "cpu"]
    go = tmp_path / "go"
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(go), *argv], env=env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for racer in racers:
        assert racer.stdout.readline().strip() == "ready"
    go.touch()
    results = [(racer.wait(timeout=300), racer.stderr.read()) for racer in racers]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2, 2], results
    refused = [err for code, err in results if code == 2]
    for err in refused:
        lines = [line for line in err.splitlines() if line.startswith("hneurons edit: error: ")]
        assert len(lines) == 1 and str(out) in lines[0], err
        assert re.search(r"being written by another hneurons process \(pid \d+", lines[0]) or \
            "already exists" in lines[0], lines[0]
    assert any("being written by another" in err for err in refused), "the race must have met the lock"
    # one complete, verified result: every file the manifest lists, with its hash; nothing else beside it
    manifest = json.loads((out / EDIT_MANIFEST).read_text())
    assert manifest["verification"]["passed"] is True
    from editor.artifacts import files_sha256

    assert files_sha256(out, sorted(manifest["files"])) == manifest["files"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == \
        sorted([*manifest["files"], EDIT_MANIFEST])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edit", "go"], "no temporary or lock file is left"


HOLD_THEN_WAIT = ("import sys, time\nfrom editor.locking import output_lock\nwith output_lock(sys.argv[1]):\n"
                  "    print('locked', flush=True)\n    time.sleep(600)\n")


def test_a_lock_left_by_a_killed_process_is_recovered(ckpt, neurons, tmp_path):
    out = tmp_path / "edit"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THEN_WAIT, str(out)], env=env(), stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    stale = lock_file(out)
    assert stale.is_file() and json.loads(stale.read_text())["pid"] == holder.pid, "the killed holder's lock file"
    assert main(["edit", "--model", str(ckpt), "--neurons", str(neurons), "--out", str(out), "--device", "cpu"]) == 0
    assert (out / EDIT_MANIFEST).is_file()
    assert not stale.exists() and leftovers(tmp_path) == []


def test_the_lock_is_reentrant_in_a_process_refused_across_processes_and_leaves_nothing(tmp_path):
    out = tmp_path / "runs" / "x" / "eval"  # parents that do not exist yet
    with output_lock(out) as path:
        assert path == tmp_path / "runs" / "x" / ".eval.hneurons-lock"
        assert json.loads(path.read_text())["pid"] == os.getpid()
        with output_lock(out):  # the same process again (a command, then its stage)
            pass
        assert path.is_file()
        probe = ("import sys\nfrom editor.locking import output_lock\nfrom editor.errors import OutputInUseError\n"
                 "try:\n    output_lock(sys.argv[1]).__enter__()\nexcept OutputInUseError as exc:\n"
                 "    print(exc)\n    sys.exit(3)\n")
        done = subprocess.run([sys.executable, "-c", probe, str(out)], env=env(), capture_output=True, text=True)
        assert done.returncode == 3 and f"pid {os.getpid()}" in done.stdout and str(out) in done.stdout, done
    assert list(tmp_path.iterdir()) == [], "the lock file and the parents made for it are removed"
    with pytest.raises(OutputInUseError):  # the class the CLI turns into one line
        with output_lock(tmp_path / "a"):
            holder = subprocess.Popen([sys.executable, "-c", HOLD_THEN_WAIT, str(tmp_path / "b")], env=env(),
                                      stdout=subprocess.PIPE, text=True)
            try:
                assert holder.stdout.readline().strip() == "locked"
                with output_lock(tmp_path / "b"):
                    pass
            finally:
                holder.kill()
                holder.wait()


# ========================================================================================= eval, killed
def eval_argv(ckpt: Path, neurons: Path, out: Path) -> list[str]:
    return ["eval", "--base", str(ckpt), "--neurons", str(neurons), "--alpha", "0", "--tasks", "hneurons_facts",
            "--limit", "2", "--controls", "0", "--no-kl", "--ci-iters", "200", "--out", str(out), "--device", "cpu"]


@pytest.fixture(scope="module")
def eval_reference(ckpt, neurons, tmp_path_factory):
    """The uninterrupted eval: its folder and what it printed (with its folder's name replaced)."""
    out = tmp_path_factory.mktemp("eval-ref") / "eval"
    return out, printed(eval_argv(ckpt, neurons, out), out)


def printed(argv: list[str], out: Path) -> str:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(argv) == 0
    return buffer.getvalue().replace(str(out), "OUT")


def test_eval_killed_during_its_lm_eval_runs_resumes_without_redoing_finished_variants(ckpt, neurons, tmp_path,
                                                                                        eval_reference):
    ref_out, ref_printed = eval_reference
    out = tmp_path / "eval"
    argv = eval_argv(ckpt, neurons, out)
    base_done = out / "lm_eval" / "base" / EVAL_RUN
    # the base variant is written; edited is running
    finished = kill_when(argv, base_done.is_file, delay=0.2, timeout=300)
    assert finished is None, "the kill must land while the eval runs"
    assert base_done.is_file() and not (out / "eval_results.json").exists()
    for variant in (out / "lm_eval").iterdir():  # a variant's folder appears complete or not at all
        if not variant.name.startswith(".hneurons-tmp-"):
            assert (variant / EVAL_RUN).is_file() and (variant / "results.json").is_file(), variant
    before = (out / "lm_eval" / "base" / "results.json").stat()
    assert printed(argv, out) == ref_printed, "the resumed eval prints the uninterrupted run's table"
    after = (out / "lm_eval" / "base" / "results.json").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "the finished base is not redone"
    assert strip(json.loads((out / "eval_results.json").read_text())) == \
        strip(json.loads((ref_out / "eval_results.json").read_text()))
    assert leftovers(tmp_path) == []


# ============================================================================================ full disks
@pytest.fixture
def small_disk(tmp_path):
    """``mount(kb)``: a tmpfs of that size at tmp_path/disk (skips without mount rights); ``grow()`` frees space."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = []

    def mount(kb: int) -> Path:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kb}k", "tmpfs", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"a small tmpfs needs mount rights ({done.stderr.decode().strip()})")
        mounted.append(folder)
        return folder

    def grow() -> None:
        subprocess.run(["mount", "-o", "remount,size=64m", str(folder)], check=True)

    yield mount, grow
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


def pages(files) -> int:
    return sum(-(-p.stat().st_size // 4096) for p in files)


def failed_write(argv: list[str], capsys) -> str:
    """Run the CLI on a full disk: one OutputWriteError line that says how much space was needed."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"hneurons {argv[0]}: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "no space left on the device" in lines[0] and "free now on the device" in lines[0], lines[0]
    assert re.search(r"it needs [\d.]+ [kMG]?B|[\d.]+ [kMG]?B had been written", lines[0]), lines[0]
    with pytest.raises(OutputWriteError):
        main(["-v", *argv])
    return lines[0]


def test_disk_full_during_collect_keeps_the_finished_chunks_and_the_rerun_resumes(ckpt, tmp_path, small_disk,
                                                                                    capsys):
    mount, grow = small_disk
    questions = write_capital_questions(tmp_path / "questions.jsonl", 12)

    def argv(out: Path) -> list[str]:
        return ["collect", "--model", str(ckpt), "--data", str(questions), "--split", "train", "--samples", "2",
                "--max-new-tokens", "4", "--batch-size", "2", "--out", str(out), "--device", "cpu", "--no-progress"]

    assert main(argv(tmp_path / "reference")) == 0
    out = mount(20) / "collect"  # room for the settings and the lock (a page each) and three of the six chunks
    failed_write(argv(out), capsys)
    chunks = sorted((out / "chunks").glob("chunk-*.jsonl"))
    assert 1 <= len(chunks) < 6 and not (out / "responses.jsonl").exists()
    for chunk in chunks:  # the last good state: finished chunks, each complete
        assert all(json.loads(line) for line in chunk.read_text().splitlines())
    grow()
    assert main(argv(out)) == 0
    assert json.loads((out / "collect.json").read_text())["resumed_chunks"] == len(chunks)
    assert same_tree(out, tmp_path / "reference") == []
    assert leftovers(out.parent) == []


def test_disk_full_during_locate_leaves_no_half_written_artifact_and_the_rerun_matches(ckpt, tmp_path, small_disk,
                                                                                        capsys):
    from editor.model.loading import load_model

    mount, grow = small_disk
    collect = tmp_path / "collect"
    write_collect_folder(collect, load_model(str(ckpt), device="cpu").identity(), sizes=(16, 8, 8))

    def argv(out: Path) -> list[str]:
        return ["locate", "--model", str(ckpt), "--responses", str(collect), "--out", str(out), "--device", "cpu",
                "--no-progress", "--C-path", "4", "--random-draws", "1", "--bootstrap", "20"]

    reference = tmp_path / "reference"
    assert main(argv(reference)) == 0
    total = pages(p for p in reference.rglob("*") if p.is_file())
    out = mount(4 * max(2, total // 2)) / "locate"
    failed_write(argv(out), capsys)
    kept = [p for p in out.rglob("*") if p.is_file() and ".hneurons-tmp-" not in p.name]
    for path in kept:  # every final-named file is complete: the uninterrupted run's
        rel = path.relative_to(out).as_posix()
        if rel == "features/features.json":  # the resume record: which shards are finished so far
            assert json.loads(path.read_text())["complete"] is False
        elif path.suffix == ".json":
            assert strip(json.loads(path.read_text())) == strip(json.loads((reference / rel).read_text())), rel
        else:
            assert path.read_bytes() == (reference / rel).read_bytes(), rel
    grow()
    assert main(argv(out)) == 0
    assert same_tree(out, reference) == []
    assert leftovers(out.parent) == []


def test_a_plot_on_a_full_disk_is_one_clear_error_and_leaves_no_temporary_file(small_disk):
    """Every PNG (locate's, eval's, the abstention and dose plots) goes through save_png: on a full disk it is
    the OutputWriteError every other write gives, with no half-written temporary file left."""
    import numpy as np

    from editor.plots import figure, save_png

    folder = small_disk[0](8)  # 8 kB: less than a detailed 616 x 484 PNG
    plt, fig, ax = figure()
    ax.imshow(np.random.default_rng(0).random((300, 300)))
    with pytest.raises(OutputWriteError, match="no space left on the device"):
        save_png(plt, fig, folder / "plot.png")
    assert list(folder.iterdir()) == []


def test_disk_full_during_eval_keeps_finished_variants_and_the_rerun_prints_the_same_table(
        ckpt, neurons, tmp_path, small_disk, capsys, eval_reference):
    ref_out, ref_printed = eval_reference
    mount, grow = small_disk
    edited = [p for p in (ref_out / "lm_eval" / "edited").rglob("*") if p.is_file()]
    before_edited = [p for p in ref_out.rglob("*") if p.is_file() and p not in edited
                     and p.name not in ("eval_results.json", "eval_deltas.png", "abstention_rc.png")]
    out = mount(4 * (pages(before_edited) + 1 + max(1, pages(edited) // 2))) / "eval"  # base fits, edited does not
    argv = eval_argv(ckpt, neurons, out)
    failed_write(argv, capsys)
    assert (out / "lm_eval" / "base" / EVAL_RUN).is_file() and not (out / "lm_eval" / "edited").exists()
    before = (out / "lm_eval" / "base" / "results.json").stat()
    grow()
    assert printed(argv, out) == ref_printed
    after = (out / "lm_eval" / "base" / "results.json").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "the finished base is not redone"
    assert leftovers(out.parent) == []


# ================================================================================ interrupted GGUF write
def test_gguf_edit_killed_while_writing_leaves_no_file_under_the_final_name(tmp_path, monkeypatch):
    from test_gguf import write_tiny_gguf

    monkeypatch.setenv("HNEURONS_CACHE", str(tmp_path / "cache"))  # the subprocess converts the source itself
    source = write_tiny_gguf(tmp_path / "tiny.gguf")
    neurons = tmp_path / "neurons.json"
    neurons.write_text(json.dumps({"neurons": [{"layer": 0, "index": 3}, {"layer": 1, "index": 5}]}))
    out = tmp_path / "gguf"
    argv = ["edit", "--model", str(source), "--neurons", str(neurons), "--mode", "gguf", "--out", str(out),
            "--device", "cpu"]

    def writing() -> bool:
        return any(t.glob("*.gguf") for t in tmp_path.glob(".hneurons-tmp-gguf-*"))

    assert kill_when(argv, writing, delay=0.05, timeout=300) is None, "the kill must land while the GGUF is written or verified"
    assert not out.exists() and not list(tmp_path.glob("*-hneurons.gguf")), "nothing under the final name"
    assert main(argv) == 0
    written = list(out.glob("*.gguf"))
    assert len(written) == 1 and json.loads((out / EDIT_MANIFEST).read_text())["verification"]["passed"] is True
    assert leftovers(tmp_path) == [], "the re-run removes the killed run's temporary folder"
