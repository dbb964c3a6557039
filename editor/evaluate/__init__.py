"""Measuring an edit: lm-eval runs of the base model, the edit and random-neuron controls (``stage``),
their paired comparison and KL on neutral prompts, and the alpha sweep on validation tasks."""
