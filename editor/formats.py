"""Every file name and format id of hneurons' artifacts, in one place (docs/ARTIFACTS.md describes each).

Writers and readers import the names from here, so that a stage and the stages that read its output
cannot disagree on what a file is called or which format it holds. A format id (``hneurons.NAME/N``)
changes its number only when old readers could no longer read a new file.
"""

from __future__ import annotations

# ------------------------------------------------------------------------------------------- collect
RESPONSES = "responses.jsonl"
COLLECT_MANIFEST = "collect.json"
COLLECT_SETTINGS = "collect.settings.json"
CHUNKS = "chunks"
COLLECT_FORMAT = "hneurons.collect/1"

# -------------------------------------------------------------------------------------------- locate
FEATURES = "features"
FEATURES_MANIFEST = "features.json"
FEATURES_FORMAT = "hneurons.features/1"
NEURONS = "neurons.json"
NEURONS_FORMAT = "hneurons.neurons/1"
NEURONS_PATH = "neurons_path.json"  # named neuron sets along the regularisation path ("x2", "x5", "x10")
NEURONS_PATH_FORMAT = "hneurons.neurons_path/1"
NEURONS_PATH_SEPARATOR = "#"  # "<locate_dir>/neurons_path.json#x5" names one set of that file
PROBE = "probe.safetensors"
PROBE_FORMAT = "hneurons.probe/1"
LOCATE_REPORT = "locate.json"
LOCATE_FORMAT = "hneurons.locate/1"
PREDICTIONS = "predictions.jsonl"
ANSWER_SIGNALS = "answer_signals.json"  # per-response token count and mean token logprob (the trivial baselines)
ANSWER_SIGNALS_FORMAT = "hneurons.answer_signals/1"
DETECT_HELDOUT_FORMAT = "hneurons.detect_heldout/1"
ORIGIN_REPORT = "origin.json"
ORIGIN_FORMAT = "hneurons.origin/1"
DRIFT = "drift.safetensors"
DRIFT_FORMAT = "hneurons.drift/1"

# ---------------------------------------------------------------------------------------------- edit
EDIT_MANIFEST = "hneurons_edit.json"
EDIT_FORMAT = "hneurons.edit/1"
SAFETENSORS_INDEX = "model.safetensors.index.json"
SINGLE_SAFETENSORS = "model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
GGUF_SOURCE = "hneurons_source.json"  # written into the cached safetensors folder converted from a GGUF file
# mode abstain (editor/edit/abstain.py): the learned deltas, and the training state a killed run resumes from
ABSTAIN_DELTA = "abstain_delta.safetensors"
ABSTAIN_DELTA_FORMAT = "hneurons.abstain_delta/1"
ABSTAIN_TRAINING = "training"  # folder inside the output folder
ABSTAIN_STATE = "state.pt"  # in it: deltas, Adam's state, best epoch, history (torch.save; read weights_only)
ABSTAIN_HISTORY = "training.json"
ABSTAIN_TRAIN_FORMAT = "hneurons.abstain_train/1"

# ------------------------------------------------------------------------------------------ evaluate
EVAL_RESULTS = "eval_results.json"
EVAL_FORMAT = "hneurons.eval/1"
EVAL_RUN = "hneurons_run.json"  # per-variant resume key inside lm_eval/<variant>/
EVAL_PLOT = "eval_deltas.png"
SWEEP_REPORT = "sweep.json"
SWEEP_FORMAT = "hneurons.sweep/1"
SWEEP_PLOT = "sweep.png"
DOSE_REPORT = "dose_response.json"
DOSE_FORMAT = "hneurons.dose_response/1"
DOSE_TASK_PLOT = "dose_{task}.png"  # one per task: each metric vs alpha, H-Neurons and matched random sets
DOSE_SLOPES_PLOT = "dose_slopes.png"
DOSE_COUNTS = "dose_counts.json"  # the dose-response slopes vs neuron count (--neuron-sets)
DOSE_COUNTS_FORMAT = "hneurons.dose_counts/1"
DOSE_COUNTS_PLOT = "dose_counts.png"

# ----------------------------------------------------------------------------------- card and push
CARD = "README.md"
PUBLISH_MANIFEST = "hneurons_publish.json"
PUBLISH_FORMAT = "hneurons.publish/1"

# ---------------------------------------------------------------------------------------- a recipe run
RUN_STATE = "run_state.json"
RUN_REPORT = "report.md"
# The folder of each edit mode inside a recipe's output folder.
EDIT_FOLDERS = {"weights": "model", "ia3": "adapter-ia3", "lora": "adapter-lora", "gguf": "gguf", "abstain": "abstain"}

# -------------------------------------------------------------------------------- bundled data files
QUESTIONS_FORMAT = "hneurons.questions/1"
EVALDATA_FORMAT = "hneurons.evaldata/1"
PER_LAYER_PLOT = "h_neurons_per_layer.png"  # locate and the model card draw it
KNOWN_FACTS = "known_facts.json"  # which facts the base model answers right (eval and sweep folders)
KNOWN_FACTS_FORMAT = "hneurons.known_facts/1"
FIRST_ANSWERS = "first_answers.json"  # pass 1 of the sycophancy_eval tasks: the model's own first answers
FIRST_ANSWERS_FORMAT = "hneurons.first_answers/1"

# ------------------------------------------------------------------------------------------- locks
# Next to an output folder NAME while one process writes it: flock-ed, holds that process's pid, removed on
# release (editor/locking.py). A folder whose parent is not writable holds it inside, as IN_FOLDER_LOCK.
LOCK_FILE = ".{name}.hneurons-lock"
IN_FOLDER_LOCK = ".hneurons-lock"
