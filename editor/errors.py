"""User-facing errors.

Every error a user can cause (bad input, wrong model, existing output, ...) is raised as a subclass of
:class:`HNeuronsError` with a message that names the culprit and says what was expected. The CLI prints
these as one line (no traceback) and exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class HNeuronsError(Exception):
    """Base class of every error caused by the user's input rather than by a bug."""


class InputError(HNeuronsError, ValueError):
    """A file, dataset, argument or setting is malformed or missing."""


class ModelLoadError(HNeuronsError):
    """A model could not be found or loaded (path, checkpoint files, pickle policy, remote code)."""


class UnsupportedArchitectureError(HNeuronsError):
    """The model's architecture is not in the registry (or is a mixture-of-experts model)."""


class ModelMismatchError(HNeuronsError):
    """An artifact (neuron set, probe) was made with another model than the one given."""


class OutputExistsError(HNeuronsError):
    """The output folder or file exists and overwriting was not asked for."""


class OutputWriteError(HNeuronsError):
    """An output could not be written: the disk is full, a file size limit or quota was hit, or the file
    system is read-only. The partial output is removed; nothing appears under the final name."""


class RecipeError(InputError):
    """A recipe file is invalid (unknown key, wrong type, missing required setting)."""


class NumericalError(HNeuronsError):
    """NaN or inf appeared where finite numbers are required (e.g. activations after an fp16 overflow)."""


class VerificationError(HNeuronsError):
    """A written model does not reproduce the intended edit within tolerance."""


class PublishError(HNeuronsError):
    """The model card or the push to the Hub cannot be done as asked."""


class UnavailableError(HNeuronsError):
    """Something a run needs is not available on this machine: a model or dataset that is not in the cache in
    offline mode (or the Hub cannot be reached), a CUDA device, an optional package. Raised before any model
    loads; the message names the thing, why it is unavailable and what to do."""


class ModelUnavailableError(ModelLoadError, UnavailableError):
    """A Hub model is not in the local cache and cannot be downloaded (offline mode, the Hub unreachable,
    no such repository, or no access to it)."""


class BackendUnavailableError(UnavailableError):
    """An optional backend (vLLM) was asked for but its package or the hardware it needs is missing."""


class OutputInUseError(HNeuronsError):
    """Another process is writing the same output folder (it holds the folder's lock)."""
