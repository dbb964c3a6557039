"""Locating H-Neurons and using them as a detector: CETT features, the L1 probe and its regularisation
path, the locate stage (neurons.json, probe.safetensors, locate.json), ``detect`` (scoring answers with
a probe) and ``origin`` (base vs instruct model)."""
