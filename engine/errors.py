"""Exceptions whose messages are fit to show a user."""


class EngineError(Exception):
    """A problem the user can fix (bad model path, missing weights, bad LoRA...)."""


class ModelNotAvailableError(EngineError):
    """The model cannot be loaded from disk and the hub cannot be reached."""


class LoraError(EngineError):
    """A LoRA file is missing, not a LoRA, or not for this base model."""


class LoraMismatchError(LoraError):
    """A readable LoRA file that does not load into the resident model (`model`)."""

    def __init__(self, message: str, model: str) -> None:
        super().__init__(message)
        self.model = model


class GenerationCancelled(Exception):
    """Raised inside the pipeline's step callback to stop at the next step."""
