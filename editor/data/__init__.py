"""Questions and judges: question sets (bundled, Hub, local files), prompts (chat or base style), the
answer judge (correct / wrong / uncertain) and the over-compliance behaviour judges. ``build/`` holds the
offline builders of the bundled question sets and lm-eval task data."""
