"""The wheel carries the bundled lm-eval tasks and question sets, and an installed hneurons finds them."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_wheel_ships_eval_data_and_installed_package_finds_it(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO),
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("hneurons-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("hneurons_eval/data/facts_test.jsonl", "hneurons_eval/data/nonexist_validation.jsonl",
                 "hneurons_eval/data/neutral_prompts.jsonl", "hneurons_eval/hneurons/_hneurons.yaml",
                 "hneurons_eval/hneurons/hneurons_facts_val.yaml", "hneurons_eval/hneurons/utils.py",
                 "hneurons_eval/hneurons/_generate_template_yaml", "hneurons_eval/hneurons/data/facts.jsonl",
                 "hneurons_eval/paper/utils.py", "hneurons_eval/paper/sycophancy_eval_mc_answer.yaml",
                 "editor/cli/run_cmd.py"):
        assert name in names, name
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "hneurons = editor.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = ("import editor.paths, editor.data.questions as q\n"
            "print(editor.paths.EVAL_DIR)\n"
            "print(len(q.load_questions('bundled:facts', split='test')))\n")
    # an empty working directory and only the installed copy on the path: no checkout to fall back on
    env = dict(os.environ, PYTHONPATH=str(target), PYTHONSAFEPATH="1")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert Path(out[0]).resolve() == (target / "hneurons_eval").resolve()
    assert int(out[1]) > 500
