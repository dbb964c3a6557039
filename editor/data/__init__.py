"""Questions and judges: question sets (bundled, Hub, local files), prompts (chat or base style), the
answer judge (correct / wrong / uncertain) and the over-compliance behaviour judges. ``build/`` holds the
offline builders of the bundled question sets and lm-eval task data."""

# The modules the bundled lm-eval tasks import to build their prompts and score the answers
# (eval/hneurons/utils.py, eval/paper/utils.py): a change in any of them changes the tasks' numbers, so the
# eval results cache keys on their source (editor.evaluate.settings.scoring_code_hash).
SCORING_MODULES = ("behaviour", "clauses", "judge", "matching", "prompting", "questions")
