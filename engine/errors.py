"""Exceptions whose messages are fit to show a user."""

from __future__ import annotations

import re

# "num_inference_steps: must be ..." or "loras[1]: the weight ..." -> field, detail
_FIELD_PREFIX = re.compile(r"^([a-z_]+)(?:\[\d+\])?: (.*)$", re.DOTALL)


class RequestError(ValueError):
    """A bad value in a generation request: `field` is the GenerationRequest field it is about.

    str() reads "field: detail"; front ends show `detail` under their own name for the field
    (cogs/_option_names.py for Discord, engine/__main__.py for the command line).
    """

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}" if field else detail)
        self.field = field
        self.detail = detail

    @classmethod
    def from_value_error(cls, exc: ValueError) -> RequestError:
        """The RequestError of a ValueError worded "field: detail" (field '' when it names none)."""
        if isinstance(exc, RequestError):
            return exc
        text = str(exc)
        match = _FIELD_PREFIX.match(text)
        return cls(match.group(1), match.group(2)) if match else cls("", text)


class EngineError(Exception):
    """A problem the user can fix (bad model path, missing weights, bad LoRA...)."""


class ModelNotAvailableError(EngineError):
    """The model cannot be loaded from disk and the hub cannot be reached."""


class LoraError(EngineError):
    """A LoRA file is missing, not a LoRA, or not for this base model.

    `subject` is what the LoRA is called (its file or its name), `problem` the rest of the
    sentence ("holds no LoRA weights ..."); a front end may name the LoRA its own way.
    """

    def __init__(self, problem: str, subject: str = "") -> None:
        super().__init__(f"LoRA {subject} {problem}" if subject else f"LoRA: {problem}")
        self.subject = subject
        self.problem = problem

    def about(self, subject: str) -> LoraError:
        """The same problem told of another name (the LoRA's name instead of its stored file)."""
        return type(self)(self.problem, subject)


class LoraMismatchError(LoraError):
    """A readable LoRA file that does not load into the resident model (`model`)."""

    def __init__(self, problem: str, subject: str = "", model: str = "") -> None:
        super().__init__(problem, subject)
        self.model = model

    def about(self, subject: str) -> LoraMismatchError:
        """The same mismatch told of another name."""
        return LoraMismatchError(self.problem, subject, self.model)


class GenerationCancelled(Exception):
    """Raised inside the pipeline's step callback to stop at the next step."""
