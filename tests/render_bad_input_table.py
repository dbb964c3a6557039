"""Render docs/BAD_INPUTS.md from the messages a real run of tests/test_bad_inputs.py recorded.

    HNEURONS_BAD_INPUT_TABLE=/tmp/bad pytest tests/test_bad_inputs.py -k test_bad_input
    python tests/render_bad_input_table.py /tmp/bad > docs/BAD_INPUTS.md

The order is the table's (CASES); the messages are exactly what the CLI printed (test folders shortened
to DIR and W).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HEADER = """# Bad inputs: what each one gets

Every row is a case of `tests/test_bad_inputs.py`: the test makes the bad input, runs the stage on it and
checks that the error class is the one below, that the command exits with status 2 after printing exactly
this one line (no traceback; `-v` shows the traceback), that the line names the culprit, and that nothing
was written or changed. The messages were recorded from a real run ({n} cases; `DIR` is the case's
folder, `W` the folder of valid inputs the cases start from). Faults during long work (three writers on
one folder, a killed lock holder, a kill during eval, a full disk during collect / locate / eval, a
killed GGUF write) are scenarios of `tests/test_reliability.py` and `tests/test_interruptions.py`.

| Case | Stage | Error | Command | Message |
|---|---|---|---|---|
"""


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main(folder: str) -> int:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_bad_inputs import CASES  # the table's order

    rows = {r["id"]: r for r in (json.loads(p.read_text()) for p in Path(folder).glob("*.json"))}
    missing = [c.id for c in CASES if c.id not in rows]
    if missing:
        raise SystemExit(f"{folder}: no recorded message for {len(missing)} cases: {missing[:5]}")
    out = [HEADER.format(n=len(CASES))]
    for case in CASES:
        r = rows[case.id]
        out.append(f"| {cell(r['id'])} | {r['stage']} | `{r['error']}` | `{r['command']}` | {cell(r['message'])} |\n")
    sys.stdout.write("".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
