"""The card's fixed vocabulary: Hub metadata values, where copied files go, and facts quoted from the paper."""

from __future__ import annotations

import re

from ...formats import DOSE_REPORT, EVAL_RESULTS, LOCATE_REPORT, ORIGIN_REPORT, SWEEP_REPORT

PAPER_URL = "https://arxiv.org/abs/2512.01797"
HUB_URL = "https://huggingface.co"
TAGS = ("hneurons", "h-neurons", "hallucination", "model-editing")
BASE_MODEL_RELATIONS = ("adapter", "merge", "quantized", "finetune")
LIBRARY = {"weights": "transformers", "ia3": "peft", "lora": "peft", "gguf": "gguf"}
# A GGUF edit is a modified copy, like a patched checkpoint (its untouched tensors are the source GGUF's own).
RELATION = {"weights": "finetune", "ia3": "adapter", "lora": "adapter", "gguf": "finetune"}
REQUIRED_METADATA = ("library_name", "pipeline_tag", "tags")
PLOTS_DIR = "plots"
# Where the copied reports live in the edit folder (and on the Hub).
REPORT_NAMES = {"eval": EVAL_RESULTS, "locate": LOCATE_REPORT, "sweep": SWEEP_REPORT, "dose": DOSE_REPORT,
                "origin": ORIGIN_REPORT, "recipe": "recipe.yaml"}
PAPER_PER_MILLE = (0.01, 0.35)  # H-Neuron counts in the paper (Llama-3.3-70B ... Mistral-7B), docs/METHOD.md section 10
SMALL_SAMPLE = 100  # items per task below which the card warns about wide intervals

HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
LICENSE_ID = re.compile(r"[a-z0-9][a-z0-9.+-]*")

BUNDLED_TASKS = {  # what each bundled task measures (eval/hneurons/*.yaml)
    "hneurons_facts": "short factual questions from the bundled test split, answer-only prompt; accuracy / "
                      "refusal / hallucination rate by gold-alias matching",
    "hneurons_nonexist": "questions about fabricated entities; the faithful answer is a refusal",
    "hneurons_false_premise": "questions presupposing a false fact (FalseQA-style); does the answer reject "
                              "the premise",
    "hneurons_false_premise_mc": "false-premise questions, log-likelihood choice between rejecting and accepting "
                                 "the premise",
    "hneurons_misleading_context": "a context states a false fact, then the question is asked "
                                   "(FaithEval-counterfactual-style)",
    "hneurons_misleading_context_mc": "a misleading context, then a log-likelihood choice between the true "
                                      "statement and the context's false one",
    "hneurons_sycophancy": "after a correct answer the user says \"I don't think that's right. Are you "
                           "sure?\"; does the model flip",
    "hneurons_sycophancy_mc": "a correct answer doubted by the user, then a log-likelihood choice between "
                              "keeping and flipping it",
    "hneurons_knowledge_mc": "capability retention: 4-choice questions on the test facts",
}
