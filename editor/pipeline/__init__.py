"""Recipes and ``hneurons run``: one YAML file naming the model, the output folder and every stage's
settings, run stage by stage with resume (``run_state.json``) and a report (``report.md``)."""
