"""The model card: ``README.md`` of an edit folder, written from the artifacts of every stage.

``write_card(edit_dir, ...)`` renders the card from the template ``README.md.j2`` with ``huggingface_hub``'s
``ModelCard.from_template`` / ``ModelCardData``, copies the plots and reports it cites into the folder and lists
them in ``hneurons_publish.json``, so that ``hneurons push`` uploads them with the model.
``build_card(...)`` returns the card without writing anything.

Modules: ``inputs`` (reading and cross-checking the inputs), ``metadata`` (the front matter), ``sections``,
``evidence``, ``dose`` and ``limitations`` (the values of the body's sections), ``commands`` (the Reproduce
section's stage commands), ``figures`` (the plots the card shows), ``text`` (escaping and number formatting),
``validate`` (checks of the rendered and the written card), ``render`` (plan, build and write); ``README.md.j2``
lays out the card.

Inputs (each optional except the edit folder; read, never modified)
-------------------------------------------------------------------
* the edit folder: ``hneurons_edit.json`` and ``neurons.json`` (docs/ARTIFACTS.md);
* ``locate_report``: ``locate.json`` (a file or its folder). Default: ``locate.json`` already in the edit
  folder (a previous card run copied it), else the one next to the neuron file the edit recorded
  (``hneurons_edit.json`` ``neurons.source_file``). Keys read: ``model``, ``chosen``, ``h_neurons``,
  ``counts``, ``settings``, ``responses.folder``, ``test`` (``probe``, ``h_neurons_only``, ``random``,
  ``per_relation``, ``balanced_within_relation``), ``cross_relation.folds``, ``fabricated``, ``plots``.
  ``collect.json`` in ``responses.folder``, when there, gives the datasets and the collect command.
* ``eval_results``: ``eval_results.json`` (format ``hneurons.eval/1``, :mod:`editor.evaluate.stage`). Default: the
  copy in the edit folder. Keys read: ``models``, ``settings``, ``tasks``, ``metrics``, ``kl``,
  ``lm_eval_commands``, ``files.plot``, ``provenance``.
* ``sweep``: ``sweep.json`` (:mod:`editor.evaluate.sweep`): ``model``, ``neurons``, ``grid``, ``splits``,
  ``constraints``, ``chosen``, ``settings``, ``files.plot``.
* ``dose``: ``dose_response.json`` (format ``hneurons.dose_response/1``, :mod:`editor.evaluate.dose`; a file or its
  folder). Default: the copy in the edit folder (``hneurons run`` passes OUT/dose/dose_response.json when the recipe
  has a ``dose`` section). Keys read: ``model``, ``neurons.sha256`` / ``count``, ``sets`` (names and kinds),
  ``grid``, ``splits``, ``settings`` (``limit``, ``controls``, ``control_seed``, ``known_only``, ``neuron_sets`` and
  the eval settings), ``rows`` (``task``, ``metric``, ``filter``, ``primary``, ``higher_is_better``, ``n``,
  ``sets.<H>.slope`` / ``slope_ci95``, ``random.slope_mean`` / ``slope_sd``, ``h_minus_random``
  {``slope_difference``, ``ci95``, ``p_holm``, ``p_holm_primary``, ``significant``}, ``h_rank``), ``kl``,
  ``known_facts``, ``force``, ``files.slopes``, ``neuron_count`` {``figure``, ``sets``}, ``wall_time_s``,
  ``provenance``. The section's rules: :mod:`editor.report.card.dose`.
* ``origin``: ``origin.json`` (format ``hneurons.origin/1``, :mod:`editor.locate.origin`, docs/METHOD.md section 7). Keys
  read (either block may be absent, not both; values may be null): ``model`` (the probe's model),
  ``probe`` {``sha256``, ``h_neurons``}, ``backward_transfer`` {``auroc``, ``auroc_ci95`` [lo, hi],
  ``random_auroc_mean`` (required), ``base_model``, ``n``, ``n_hallucinated``, ``h_neurons_only_auroc``,
  ``h_neurons_only_auroc_ci95``, ``random_auroc_std``, ``random_draws``, ``test_split``, ``instruct_test``,
  ``note``}, ``drift`` {``mean_normalised_rank``, ``p_value``, ``n_neurons`` (required),
  ``p_value_changed_more``, ``base_model``, ``instruct_model``, ``note``}, ``plots`` [PNG names next to
  origin.json]. Normalised rank follows editor.locate.origin: 0 = the most changed neuron, 1 = the least.
* ``recipe``: the recipe YAML the run was made from (:func:`editor.pipeline.recipe.load_recipe` validates it).
* ``repo_id``: the Hub repo the card is for (``owner/name``); it names the model and the load snippets.

Consistency is checked, not assumed: every report must be of the same architecture as the edit; the
eval's base model must be the edit's source (weights fingerprint), and its edited model must be this
edit (the same checkpoint, adapter files, or run-time scaling of the same neurons and alphas); locate,
sweep and the dose-response must describe the same neuron set, and the dose-response must have scaled it in
the edit's source model (weights fingerprint). A mismatch is a :class:`~editor.errors.ModelMismatchError`.

Metadata (hneurons' choices)
----------------------------
* ``base_model``: the source's Hub id where known (embedded aliases record it; Hub sources are Hub ids);
  local folders and GGUF files without one get no ``base_model`` and the body says so.
* ``base_model_relation``: the Hub accepts ``adapter``, ``merge``, ``quantized`` and ``finetune``.
  IA3 / LoRA folders are ``adapter``; a patched checkpoint is ``finetune``: its weights differ from the
  base (no training, but neither a merge of several models nor a quantisation), which is the Hub's
  category for a modified copy of one model.
* ``library_name``: ``transformers`` for checkpoints, ``peft`` for adapters; ``pipeline_tag``:
  ``text-generation``; ``license``: the source's licence where known; ``tags``: hneurons, h-neurons,
  hallucination, model-editing (+ ``peft``/``ia3``/``lora`` for adapters).
* ``datasets``: Hub dataset ids only where real (TriviaQA, NQ-Open collected through their Hub ids);
  bundled question sets and tasks have none and are described in the body.
* ``model-index``: one entry named after the repo (or the folder); one ``EvalResult`` per (task, metric)
  of the EDITED model: task type ``text-generation``, dataset name = the task, dataset type =
  ``hneurons/<task>`` for the bundled tasks (names starting with ``hneurons``), the real dataset id (and
  config) for the benchmarks of the suites (``editor.evaluate.suites.DATASETS``: ``mandarjoshi/trivia_qa``,
  ``Salesforce/FaithEval-counterfactual-v1.0``, ``thunlp/FalseQA`` - a GitHub repository, not on the Hub -,
  ...) and the task name for other lm-eval tasks, dataset split = the split the task scores, metric type = the metric, metric name = the metric
  (with its lm-eval filter when it is not ``none``), value = the edited value. The base value, the delta
  and its CI are in the body's table.

Escaping: metadata goes through ``ModelCardData`` (YAML dump), which quotes and escapes any string so that
``yaml.safe_load`` gives it back exactly, newlines, ``---``, ``|``, ``<script>`` and YAML specials included;
the only characters changed (to spaces) are NEL, which YAML folds, and lone surrogates, which UTF-8 cannot
hold. The rendered front matter is cut out with the Hub's own block regex, parsed back and compared with
the intended data before anything is written. Body text from artifacts goes through :func:`md_text`
(Markdown specials backslash-escaped, ``& < >`` as HTML entities, line breaks and control / bidi characters
flattened to spaces), so it can neither break a table nor inject HTML; code blocks use a fence longer than
any backtick run inside. The values are escaped in Python before the template sees them; the template
is rendered without autoescaping (it writes Markdown, not HTML) and adds only its own fixed text.

``hneurons_publish.json``: ``{"format": "hneurons.publish/1", "files": {relpath: sha256}, "repo_id",
"inputs": {role: {"source": "folder/name", "sha256"}}, "provenance": {...}}``. ``files`` lists README.md,
the copied plots (``plots/*.png``) and reports (``eval_results.json``, ``locate.json``, ``sweep.json``,
``dose_response.json``, ``origin.json``, ``recipe.yaml``); it is written last, atomically, after every listed file.
"""

from __future__ import annotations

from ...formats import CARD, PUBLISH_MANIFEST
from .commands import stage_commands
from .constants import (
    BASE_MODEL_RELATIONS,
    BUNDLED_TASKS,
    HUB_URL,
    LIBRARY,
    PAPER_PER_MILLE,
    PAPER_URL,
    PLOTS_DIR,
    RELATION,
    REPORT_NAMES,
    REQUIRED_METADATA,
    SMALL_SAMPLE,
    TAGS,
)
from .inputs import CardInputs, Report, load_inputs, metric_label
from .metadata import card_metadata, eval_results_for_index
from .render import CardPlan, build_card, plan_card, template_values, write_card
from .sources import base_model_id, source_label, source_license, source_name
from .text import code_block, md_text, yaml_text
from .validate import check_written_card, front_matter, prose, validate_card_metadata

__all__ = [
    "BASE_MODEL_RELATIONS", "BUNDLED_TASKS", "CARD", "HUB_URL", "LIBRARY", "PAPER_PER_MILLE", "PAPER_URL", "PLOTS_DIR",
    "PUBLISH_MANIFEST", "RELATION", "REPORT_NAMES", "REQUIRED_METADATA", "SMALL_SAMPLE", "TAGS",
    "CardInputs", "CardPlan", "Report",
    "base_model_id", "build_card", "card_metadata", "check_written_card", "code_block", "eval_results_for_index",
    "front_matter", "load_inputs", "md_text", "metric_label", "plan_card", "prose", "source_label", "source_license",
    "source_name", "stage_commands", "template_values", "validate_card_metadata", "write_card", "yaml_text",
]
