"""The peak-VRAM estimator: what a generation allocates on the GPU, and what the driver shows.

Estimator formula (all figures in MB, ``b`` = bytes per weight/activation element). Constants
marked *calibrated* were fitted to ``torch.cuda.max_memory_allocated`` of full-size SD v1.5 at
512×512 fp16, one image with CFG, in /work/shared/gpu-frontier.md §1 (the engine's presets) and §2
(plain diffusers); tests/test_vram_calibration.py pins every figure there to ±10 %.

* weights on the GPU: the sum of UNet, text encoder and VAE parameters × b when resident
  (``weight_storage="fp8"`` stores the UNet's and the VAE's weights at 1 byte each, as
  engine/weight_storage.py does; they are cast to fp16 one layer at a time to compute, which costs
  no visible extra). Model CPU offload: only the UNet at the denoising peak, only the VAE at the
  decoding peak. Sequential offload and leaf-level group offload (what the engine applies): one
  layer at a time, ``OFFLOAD_LEAF_RESIDENT_MB``. Block-level group offload (one block per group
  with a prefetching CUDA stream): the block computing, the next one being prefetched and the
  ungrouped mid block and embeddings, taken as ``GROUP_BLOCK_UNET_FRACTION`` of the UNet's weights
  (SD v1.5's up-blocks 0 and 1 alone are 420 M of 860 M parameters; *calibrated* to 0.57 on
  §1/§2's 1,118 MB).
* UNet activations per denoising pass: ``batch × latent_pixels × 320 × b × 32`` (the live
  feature maps, skip connections and feed-forward buffers of SD v1 scale roughly as 32 copies
  of the first block's 320-channel map; *calibrated* on model offload, where the UNet and its
  activations are all there is at the peak: 1,816 MB fp16, 1,003 MB with fp8 storage);
  ``batch`` doubles with classifier-free guidance.
* attention scores: memory-efficient attention (SDPA on CUDA, xformers) keeps none; the
  sliced processor holds ``slice × latent_pixels² × b × 2`` (scores and softmax), with
  ``slice = batch × heads / 2``; the plain math path holds ``batch × heads × latent_pixels² × b × 2``.
* VAE decode: about ``9 × H × W × 128 × b`` per image decoded at once (one with VAE slicing;
  tiles of 512 px with VAE tiling) plus the mid-block attention over the latent pixels
  (*calibrated* on sequential offload, where the decode is nearly all of the 645 MB peak, and on
  resident, 2,700 MB = weights + decode).
* img2img adds a VAE encode of the init image, costed like a decode of one image at a
  time (the pipeline encodes the batch's single source once); an upscale is an img2img at
  the enlarged size with VAE tiling forced on.
* overhead: ``OVERHEAD_MB`` for the cuBLAS workspace and small buffers (*calibrated*: what
  §1/§2 leave once the terms above are counted).

The peak is the larger of the denoising phase and the decoding phase. It estimates
``torch.cuda.max_memory_allocated``. What the driver shows (nvidia-smi) adds two terms:

* the allocator's reserve: freed blocks PyTorch's caching allocator keeps for reuse.
  ``RESERVE_MB`` per placement mode is *calibrated* as §2's ``max_memory_reserved`` minus
  ``max_memory_allocated`` (the larger of the fp16 and fp8 rows, rounded up). It is large where
  copies run on a side CUDA stream (group offload: blocks used by the prefetch stream are not
  reused by the compute stream until it syncs), small where layers move one at a time
  (sequential offload) and in between where whole models come and go (model offload).
* the CUDA context (driver state, kernels of torch, cuBLAS, cuDNN): ``CUDA_CONTEXT_MB`` = 400 is
  an *assumption* for a small consumer card (300-500 MB is the usual range), not a measurement;
  on the H200 the same context was about 700 MB (§1's driver minus §2's reserved figure).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

MB = 1024 * 1024
OVERHEAD_MB = 20.0
# The largest layer on the GPU at the decoding peak (a 512-channel 3×3 VAE conv, 2.4 M params).
OFFLOAD_LEAF_RESIDENT_MB = 5.0
GROUP_BLOCK_UNET_FRACTION = 0.57
UNET_ACTIVATION_COPIES = 32
VAE_DECODE_MAPS = 9
WEIGHT_STORAGES = ("off", "fp8")
COMPONENT_NAMES = {"unet": "UNet", "vae": "VAE", "text_encoder": "text encoder"}
FP8_STORED = ("unet", "vae")  # what engine/weight_storage.py stores in fp8 (FP8_COMPONENTS)
GROUP_OFFLOAD_LEVELS = ("block", "leaf")
# The allocator's reserve per placement mode (MB), §2 reserved - allocated: resident 570 (fp16) /
# 635 (fp8 UNet) / 640 (fp8 UNet + VAE); model offload 116 / 289; group leaf 741 / 771; group
# block 1,214; sequential 31 (fp8).
RESERVE_MB = {
    "resident": 640.0,
    "model offload": 290.0,
    "group offload (leaf)": 780.0,
    "group offload (block)": 1220.0,
    "sequential offload": 40.0,
}
CUDA_CONTEXT_MB = 400.0  # an assumption for a small consumer card, see the module docstring

# Parameter counts (millions) of well-known models, used when no config is at hand.
KNOWN_MODELS: dict[str, dict[str, float]] = {
    "sd15": {"unet": 859.5, "text_encoder": 123.1, "vae": 83.7, "heads": 8},
    "small-sd": {"unet": 579.4, "text_encoder": 123.1, "vae": 83.7, "heads": 8},
    "sd21-base": {"unet": 865.9, "text_encoder": 340.4, "vae": 83.7, "heads": 5},
}
MODEL_FAMILY = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "sd15",
    "runwayml/stable-diffusion-v1-5": "sd15",
    "segmind/small-sd": "small-sd",
    "OFA-Sys/small-stable-diffusion-v0": "small-sd",
    "stabilityai/stable-diffusion-2-1-base": "sd21-base",
}


# Flags each preset turns on; everything else stays off (weight storage "off"). Precision fp16
def placement_mode(
    model_cpu_offload: bool = False,
    sequential_cpu_offload: bool = False,
    group_offload: bool = False,
    group_offload_level: str = "leaf",
) -> str:
    """The placement mode of a configuration, as named in RESERVE_MB (the most saving wins)."""
    if sequential_cpu_offload:
        return "sequential offload"
    if group_offload:
        return f"group offload ({group_offload_level})"
    return "model offload" if model_cpu_offload else "resident"


@dataclass
class VramEstimate:
    """Estimated peak VRAM in MB with its breakdown."""

    total_mb: float
    weights_mb: dict[str, float]
    resident_weights_mb: float
    unet_activations_mb: float
    attention_mb: float
    vae_decode_mb: float
    overhead_mb: float
    notes: list[str] = field(default_factory=list)
    mode: str = "resident"
    reserve_mb: float = 0.0
    context_mb: float = CUDA_CONTEXT_MB

    @property
    def driver_mb(self) -> float:
        """The expected driver figure: allocated + the allocator's reserve + the CUDA context."""
        return self.total_mb + self.reserve_mb + self.context_mb

    def format(self) -> str:
        """A human-readable table of the estimate."""
        lines = [f"Estimated peak VRAM: {self.total_mb:,.0f} MB"]
        for name, value in self.weights_mb.items():
            lines.append(f"  weights {name:<13} {value:>8,.0f} MB")
        lines += [
            f"  on GPU at once        {self.resident_weights_mb:>8,.0f} MB",
            f"  UNet activations      {self.unet_activations_mb:>8,.0f} MB",
            f"  attention scores      {self.attention_mb:>8,.0f} MB",
            f"  VAE decode            {self.vae_decode_mb:>8,.0f} MB",
            f"  overhead              {self.overhead_mb:>8,.0f} MB",
        ]
        lines += [f"  note: {n}" for n in self.notes]
        lines += [
            f"Expected on the driver (nvidia-smi): {self.driver_mb:,.0f} MB",
            f"  allocated (above)     {self.total_mb:>8,.0f} MB",
            f"  allocator reserve     {self.reserve_mb:>8,.0f} MB  ({self.mode}, calibrated)",
            f"  CUDA context          {self.context_mb:>8,.0f} MB  (assumed for a small card)",
        ]
        return "\n".join(lines)


def model_param_counts(model_id: str) -> dict[str, float]:
    """Parameter counts (millions) and attention heads for a model id (SD v1.5 when unknown)."""
    family = MODEL_FAMILY.get(model_id)
    if family is None:
        counts = _counts_from_folder(model_id)
        if counts is not None:
            return counts
        family = "sd15"
    return dict(KNOWN_MODELS[family])


def _counts_from_folder(path: str) -> dict[str, float] | None:
    """Count parameters of a local diffusers folder by building its models on the meta device."""
    from pathlib import Path

    root = Path(path)
    if not (root / "model_index.json").is_file():
        return None
    try:
        from accelerate import init_empty_weights
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        with init_empty_weights():
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet"))
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(root / "vae"))
            te = CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder"))
        heads = unet.config.attention_head_dim
        heads = heads[0] if isinstance(heads, (list, tuple)) else heads
        return {
            "unet": sum(p.numel() for p in unet.parameters()) / 1e6,
            "text_encoder": sum(p.numel() for p in te.parameters()) / 1e6,
            "vae": sum(p.numel() for p in vae.parameters()) / 1e6,
            "heads": float(heads),
        }
    except Exception as exc:  # an unreadable folder falls back to SD v1.5 figures
        log.warning("could not read model configs in %s (%s); assuming SD v1.5 sizes", path, exc)
        return None


def vae_pass_mb(
    width: int, height: int, element_bytes: int, channels: int = 128, factor: int = 8
) -> float:
    """One image's VAE encode or decode (MB): the full-size feature maps and mid-block attention."""
    latent_px = (width // factor) * (height // factor)
    return (
        VAE_DECODE_MAPS * width * height * channels * element_bytes
        + latent_px**2 * element_bytes * 2
    ) / MB


def estimate_vram(
    model_id: str = "stable-diffusion-v1-5/stable-diffusion-v1-5",
    *,
    precision: str = "fp16",
    width: int = 512,
    height: int = 512,
    batch_size: int = 1,
    guidance: bool = True,
    attention_slicing: bool = False,
    memory_efficient_attention: bool = True,
    vae_slicing: bool = False,
    vae_tiling: bool = False,
    model_cpu_offload: bool = False,
    sequential_cpu_offload: bool = False,
    group_offload: bool = False,
    group_offload_level: str = "leaf",
    weight_storage: str = "off",
    fp8_components: tuple[str, ...] = FP8_STORED,
    img2img: bool = False,
    counts: dict[str, float] | None = None,
) -> VramEstimate:
    """Estimate peak VRAM (MB) of one generation; see the module docstring for the formula."""
    if weight_storage not in WEIGHT_STORAGES:
        raise ValueError(f"weight_storage must be one of {WEIGHT_STORAGES}, not {weight_storage!r}")
    if group_offload_level not in GROUP_OFFLOAD_LEVELS:
        raise ValueError(f"group_offload_level must be one of {GROUP_OFFLOAD_LEVELS}")
    b = 4 if precision == "fp32" else 2
    counts = counts or model_param_counts(model_id)
    heads = counts.get("heads", 8)
    weights = {k: counts[k] * 1e6 * b / MB for k in ("unet", "text_encoder", "vae")}
    notes: list[str] = []
    if weight_storage == "fp8":
        for name in fp8_components:
            weights[name] = counts[name] * 1e6 / MB
        stored = " and ".join(COMPONENT_NAMES.get(name, name) for name in fp8_components)
        notes.append(f"{stored} weights stored in fp8, computed in fp16 one layer at a time")
    leaf = sequential_cpu_offload or (group_offload and group_offload_level == "leaf")
    if leaf:
        resident = decode_weights = OFFLOAD_LEAF_RESIDENT_MB
        notes.append("weights streamed from CPU RAM layer by layer")
    elif group_offload:
        resident = GROUP_BLOCK_UNET_FRACTION * weights["unet"]
        decode_weights = weights["vae"]
        notes.append("weights streamed from CPU RAM block by block, the next block prefetched")
    elif model_cpu_offload:
        resident = weights["unet"]
        decode_weights = weights["vae"]
        notes.append("one component on the GPU at a time")
    else:
        resident = decode_weights = sum(weights.values())
    latent_px = (width // 8) * (height // 8)
    batch = batch_size * (2 if guidance else 1)
    unet_act = batch * latent_px * 320 * b * UNET_ACTIVATION_COPIES / MB
    if attention_slicing:
        slice_rows = max(1.0, batch * heads / 2)
        attention = slice_rows * latent_px**2 * b * 2 / MB
    elif memory_efficient_attention:
        attention = 0.0
    else:
        attention = batch * heads * latent_px**2 * b * 2 / MB
    tiled = vae_tiling and width * height > 512 * 512
    images_at_once = 1 if vae_slicing else batch_size
    one_image = vae_pass_mb(512, 512, b) if tiled else vae_pass_mb(width, height, b)
    vae_decode = images_at_once * one_image
    if img2img:
        vae_decode = max(vae_decode, one_image)  # the encode of the init image
        notes.append("img2img: the init image is VAE-encoded before denoising")
    mode = placement_mode(
        model_cpu_offload, sequential_cpu_offload, group_offload, group_offload_level
    )
    denoise_peak = resident + unet_act + attention
    decode_peak = decode_weights + vae_decode
    total = max(denoise_peak, decode_peak) + OVERHEAD_MB
    return VramEstimate(
        total_mb=total,
        weights_mb=weights,
        resident_weights_mb=resident,
        unet_activations_mb=unet_act,
        attention_mb=attention,
        vae_decode_mb=vae_decode,
        overhead_mb=OVERHEAD_MB,
        notes=notes,
        mode=mode,
        reserve_mb=RESERVE_MB[mode],
    )
