"""Adapters: the LoRAs (the draft tier's few-step LoRA included) and embeddings on the model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from engine.config import AppConfig
from engine.embeddings import EmbeddingError, EmbeddingInfo, EmbeddingSet
from engine.errors import EngineError, LoraError
from engine.lora import WEIGHT_NAME, LoraManager, inspect_lora_file, resolve_lora_file
from engine.lora_fuse import fusable
from engine.model_choices import family_name
from engine.pipeline import offline, resolve_model_source
from engine.requests import ResolvedRequest

log = logging.getLogger(__name__)

DRAFT_ADAPTER = "draft_lora"
SHIPPED_DRAFT_LORA = "draft_lora"  # a model folder's own few-step LoRA, beside model_index.json
DRAFT_UNAVAILABLE = (
    "drafts are not available on this machine now (their few-step LoRA is not here and cannot "
    "be downloaded); turn draft off"
)


def model_folder(model_id: str) -> Path | None:
    """The local folder of a model reference (MODEL_ID, `demo`), None for hub ids and files."""
    try:
        source = resolve_model_source(model_id)
    except EngineError:
        return None
    return Path(source.location) if source.kind == "folder" else None


def draft_lora_ref(config: AppConfig, folder: Path | None = None) -> str:
    """The drafts' LoRA: GEN_DRAFT_LORA when set, else the model folder's own, else the default.

    A model folder may ship its few-step LoRA as `draft_lora/` (the demo model does); it is
    distilled from that model, so it beats the default LCM-LoRA made for SD 1.5.
    """
    generation = config.generation
    if folder is not None and "draft_lora" not in generation.model_fields_set:
        shipped = folder / SHIPPED_DRAFT_LORA
        if (shipped / WEIGHT_NAME).is_file():
            return str(shipped)
    return generation.draft_lora.strip()


def draft_lora_missing(config: AppConfig, folder: Path | None = None) -> str | None:
    """Why the drafts' LoRA cannot be had now, for the owner (with the fix); None if it can.

    `folder` is the model's own folder (its shipped draft LoRA counts). Nothing is
    downloaded: a hub id counts as available while the hub may be contacted.
    """
    ref = draft_lora_ref(config, folder)
    path = Path(ref).expanduser()
    if not _is_hub_id(ref, path):
        try:
            resolve_lora_file(path)
        except LoraError as exc:
            return f"the draft LoRA {exc.subject} {exc.problem}; set GEN_DRAFT_LORA to a LoRA file"
        return None
    if not _hub_off(config) or _in_cache(config, ref):
        return None
    return (
        f"the draft LoRA {ref!r} is not in the cache and the hub is switched off "
        "(HF_HUB_OFFLINE or MODEL_LOCAL_FILES_ONLY); run once online or set GEN_DRAFT_LORA "
        "to a local file"
    )


def draft_lora_on_disk(config: AppConfig, folder: Path | None = None) -> bool:
    """Whether the drafts' LoRA is on this machine already (a default draft never downloads)."""
    return draft_lora_file(config, folder) is not None


def draft_lora_file(config: AppConfig, folder: Path | None = None) -> Path | None:
    """The drafts' LoRA file when it is on this machine (a hub id: in the cache), else None."""
    ref = draft_lora_ref(config, folder)
    path = Path(ref).expanduser()
    if _is_hub_id(ref, path):
        cached = _cached(config, ref)
        return Path(cached) if cached else None
    try:
        return resolve_lora_file(path)
    except LoraError:
        return None


def _in_cache(config: AppConfig, ref: str) -> bool:
    return _cached(config, ref) is not None


def _cached(config: AppConfig, ref: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(ref, WEIGHT_NAME, cache_dir=str(config.model.cache_dir))
    return cached if isinstance(cached, str) else None


def _is_hub_id(ref: str, path: Path) -> bool:
    return bool(ref) and not path.exists() and ref.count("/") == 1


def _hub_off(config: AppConfig) -> bool:
    return config.model.local_files_only or offline()


class Adapters:
    """The LoRA manager and embedding set of the loaded pipeline, and the default LoRA."""

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        self.lora: LoraManager | None = None
        self.embeddings: EmbeddingSet | None = None
        # Set by load_lora_weights: active whenever a request names no LoRA of its own.
        self.default_lora: tuple[str, float] | None = None
        self._embedding_files: dict[str, Path] = {}  # loaded again after a model switch
        self._warned_no_draft = False
        self._draft_widths: dict[Path, int | None] = {}  # draft LoRA file -> its text width
        self._told_other_family: set[int] = set()
        self.model_folder: Path | None = None  # the loaded model's folder (its own draft LoRA)

    def draft_by_default(self, device: str, model_width: int | None = None) -> bool:
        """Whether a request that does not say is a draft (GEN_DRAFT_DEFAULT on `device`).

        auto: drafts on a CPU. A default draft falls back to full quality, with one WARNING,
        while the draft LoRA is not on this machine: it is never downloaded for a default. It
        is full quality too on a model of another family than the LoRA's (`model_width`: the
        text width of the model the request runs on, e.g. an SD 2.x one in MODEL_CHOICES).
        """
        setting = self.config.generation.draft_default
        if setting == "off" or (setting == "auto" and device != "cpu"):
            return False
        # A model's own draft LoRA makes drafts the default only when asked (on): with auto, a
        # CPU host of the demo would draft every image, and at 64 px full quality takes seconds.
        folder = None
        if setting == "on":  # before a load, MODEL_ID's folder tells whether it ships one
            folder = self.model_folder if self.lora else model_folder(self.config.model.model_id)
        file = draft_lora_file(self.config, folder)
        if file is not None:
            return self._draft_fits(file, model_width)
        if not self._warned_no_draft:
            self._warned_no_draft = True
            log.warning(
                "drafts are the default here (GEN_DRAFT_DEFAULT=%s on %s) but the draft LoRA %r "
                "is not on this machine: images are made at full quality. Fetch it once with "
                '`python -m engine --draft "test"` online, set GEN_DRAFT_LORA to a file, or '
                "set GEN_DRAFT_DEFAULT=off",
                setting,
                device,
                draft_lora_ref(self.config, folder),
            )
        return False

    def _draft_fits(self, file: Path, model_width: int | None) -> bool:
        """Whether the draft LoRA in ``file`` was made for models of ``model_width``."""
        if model_width is None:
            return True
        if file not in self._draft_widths:
            try:
                self._draft_widths[file] = inspect_lora_file(file).text_width
            except LoraError:
                self._draft_widths[file] = None  # a bad file is refused when a draft loads it
        width = self._draft_widths[file]
        if width is None or width == model_width:
            return True
        if model_width not in self._told_other_family:
            self._told_other_family.add(model_width)
            log.info(
                "the draft LoRA %s is for %s models: requests on %s models are made at full "
                "quality unless they ask for a draft",
                file.parent.name if file.name == WEIGHT_NAME else file.name,
                family_name(width),
                family_name(model_width),
            )
        return False

    def attach(self, pipe: Any, folder: Path | None = None) -> None:
        """Start managing the LoRAs and embeddings of a newly loaded pipeline (from `folder`)."""
        self.model_folder = folder
        self.lora = LoraManager(pipe)
        self.embeddings = EmbeddingSet(pipe)

    def detach(self) -> None:
        """Let go of the pipeline (it is being unloaded) and forget the default LoRA."""
        self.lora = None
        self.embeddings = None
        self.default_lora = None

    def reload_embeddings(self, model_name: str) -> None:
        """Load the embeddings loaded before a model switch again, those that fit the new model."""
        assert self.embeddings is not None
        for token, path in self._embedding_files.items():
            try:
                self.embeddings.load(path, token)
            except EmbeddingError as exc:
                log.info("embedding %s is not loaded on %s: %s", token, model_name, exc)

    def select(self, resolved: ResolvedRequest) -> None:
        """Activate the LoRAs a request asks for (else the default LoRA), a draft's included.

        A draft whose LoRA is the only active one runs with it fused into the UNet (nothing
        per step); with other LoRAs on top it stays a separate adapter.
        """
        assert self.lora is not None
        active: list[tuple[str, float]] = []
        if resolved.lora:
            active.append((self.lora.load(resolved.lora, resolved.lora_name), resolved.lora_scale))
        elif self.default_lora is not None:
            active.append(self.default_lora)
        for use in resolved.loras:
            adapter = self.lora.load(use.path, use.name)
            active = [pair for pair in active if pair[0] != adapter] + [(adapter, use.weight)]
        if resolved.draft:
            try:
                draft = self.lora.load(self._draft_lora_file(), DRAFT_ADAPTER)
            except LoraError as exc:
                log.warning("the draft LoRA (GEN_DRAFT_LORA) did not load: %s", exc)
                raise EngineError(
                    f"drafts are not available on this model (their LoRA {exc.problem}); "
                    "turn draft off"
                ) from exc
            active.append((draft, 1.0))
        self.lora.activate_many(active)
        if resolved.draft and len(active) == 1:
            why_not = fusable(getattr(self.lora.pipe, "unet", None))
            if why_not is None:
                self.lora.fuse(DRAFT_ADAPTER)
            else:
                log.debug("draft LoRA not fused: %s", why_not)

    def unfuse(self) -> None:
        """Take a fused draft LoRA out of the UNet (before its weights are moved or offloaded)."""
        if self.lora is not None:
            self.lora.unfuse()

    def _draft_lora_file(self) -> Path:
        """The local file of the drafts' LoRA (from the hub cache for a hub id)."""
        ref = draft_lora_ref(self.config, self.model_folder)
        path = Path(ref).expanduser()
        if not _is_hub_id(ref, path):
            return resolve_lora_file(path)
        from huggingface_hub import hf_hub_download

        try:
            return Path(
                hf_hub_download(
                    ref,
                    WEIGHT_NAME,
                    cache_dir=str(self.config.model.cache_dir),
                    local_files_only=_hub_off(self.config),
                )
            )
        except Exception as exc:  # hub errors vary by version; the advice is the same
            log.warning("the draft LoRA %r could not be fetched: %r", ref, exc)
            raise EngineError(DRAFT_UNAVAILABLE) from exc

    def load_lora_weights(
        self, path: str | Path, scale: float = 1.0, name: str | None = None
    ) -> str:
        """Load a LoRA and make it the default for later generations; return its adapter name."""
        if self.lora is None:
            raise EngineError("no model loaded; call load_model() first")
        adapter = self.lora.load(path, name)
        self.default_lora = (adapter, float(scale))
        self.lora.activate(adapter, scale)
        return adapter

    def unload_lora_weights(self) -> None:
        """Unload every LoRA and return to the base model."""
        if self.lora is not None:
            self.lora.unload_all()
        self.default_lora = None

    def load_embedding(
        self, path: str | Path, name: str, remember_unfit: bool = False
    ) -> EmbeddingInfo:
        """Load a textual-inversion embedding once; prompts then use it by writing `name`.

        With `remember_unfit`, an embedding refused for its width is still loaded after a
        switch to a model it fits (the registered ones, at start-up).
        """
        if self.embeddings is None:
            raise EngineError("no model loaded; call load_model() first")
        try:
            info = self.embeddings.load(path, name)
        except EmbeddingError:
            if remember_unfit and Path(path).is_file():
                self._embedding_files[name] = Path(path)
            raise
        self._embedding_files[name] = Path(path)
        return info

    def unload_embedding(self, name: str) -> bool:
        """Forget a loaded embedding; its name is a plain word again. False if it was not loaded."""
        self._embedding_files.pop(name, None)  # nor is it loaded again after a model switch
        return self.embeddings is not None and self.embeddings.unload(name)
