"""Convert a diffusers StableDiffusionPipeline into one original-layout (CompVis/LDM, "A1111") SD v1 file.

Test helper: it lets tests exercise single-file checkpoint loading without downloading a real
checkpoint. The key layout is the inverse of diffusers' ``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint`` and ``convert_ldm_clip_checkpoint``:

* UNet -> ``model.diffusion_model.*`` (``input_blocks`` / ``middle_block`` / ``output_blocks``),
* VAE -> ``first_stage_model.*`` (``encoder.down`` / ``decoder.up`` reversed, mid-block attention
  q/k/v/proj_out stored as 1x1 convs, i.e. 4-D),
* CLIP text encoder -> ``cond_stage_model.transformer.text_model.*`` (plus ``embeddings.position_ids``
  as real SD v1 checkpoints carry it).

Loading such a file back fully offline (diffusers 0.42.1, verified by tests/test_ldm_convert.py)::

    StableDiffusionPipeline.from_single_file(
        str(checkpoint_file),
        config=str(diffusers_folder),  # local folder with model_index.json + per-component configs
        local_files_only=True,
        safety_checker=None,
    )

With ``config`` pointing at an existing local directory, diffusers loads ``model_index.json`` and every
component config (unet/vae/text_encoder config.json, tokenizer, scheduler) from that folder, never
fetching the hub repo of the inferred model type ("v1" -> stable-diffusion-v1-5) nor an original
yaml; ``original_config`` must NOT be passed (it makes UNet/VAE ignore ``config``). The folder's
weight files are not read for unet/vae/text_encoder; those come from the single file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from torch import nn

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."

_UNET_RESNET_RENAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET_RENAMES = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION_RENAMES = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}

# A prefix table maps a diffusers key prefix (ending in ".") to (ldm prefix, kind of suffix mapping).
PrefixTable = dict[str, tuple[str, str]]


def _per_block(value: int | tuple[int, ...] | list[int], count: int) -> list[int]:
    """Expand an int-or-sequence config value into one int per block."""
    return [int(value)] * count if isinstance(value, int) else [int(v) for v in value]


def _unet_prefixes(unet: UNet2DConditionModel, keys: list[str]) -> PrefixTable:
    """Build the diffusers->LDM prefix table for a UNet2DConditionModel from its config."""
    config = unet.config
    num_blocks = len(config.block_out_channels)
    down_layers = _per_block(config.layers_per_block, num_blocks)
    table: PrefixTable = {
        "time_embedding.linear_1.": ("time_embed.0.", "plain"),
        "time_embedding.linear_2.": ("time_embed.2.", "plain"),
        "conv_in.": ("input_blocks.0.0.", "plain"),
        "conv_norm_out.": ("out.0.", "plain"),
        "conv_out.": ("out.2.", "plain"),
        "mid_block.resnets.0.": ("middle_block.0.", "unet_resnet"),
        "mid_block.attentions.0.": ("middle_block.1.", "plain"),
        "mid_block.resnets.1.": ("middle_block.2.", "unet_resnet"),
    }
    index = 1
    for block, layers in enumerate(down_layers):
        for layer in range(layers):
            table[f"down_blocks.{block}.resnets.{layer}."] = (
                f"input_blocks.{index}.0.",
                "unet_resnet",
            )
            table[f"down_blocks.{block}.attentions.{layer}."] = (
                f"input_blocks.{index}.1.",
                "plain",
            )
            index += 1
        if block != num_blocks - 1:
            table[f"down_blocks.{block}.downsamplers.0.conv."] = (
                f"input_blocks.{index}.0.op.",
                "plain",
            )
            index += 1
    index = 0
    for block, layers in enumerate(reversed(down_layers)):
        has_attention = any(key.startswith(f"up_blocks.{block}.attentions.") for key in keys)
        for layer in range(layers + 1):
            table[f"up_blocks.{block}.resnets.{layer}."] = (
                f"output_blocks.{index}.0.",
                "unet_resnet",
            )
            table[f"up_blocks.{block}.attentions.{layer}."] = (f"output_blocks.{index}.1.", "plain")
            index += 1
        if block != num_blocks - 1:
            slot = 2 if has_attention else 1
            table[f"up_blocks.{block}.upsamplers.0.conv."] = (
                f"output_blocks.{index - 1}.{slot}.conv.",
                "plain",
            )
    return table


def _vae_prefixes(vae: AutoencoderKL) -> PrefixTable:
    """Build the diffusers->LDM prefix table for an AutoencoderKL from its config."""
    config = vae.config
    table: PrefixTable = {
        "quant_conv.": ("quant_conv.", "plain"),
        "post_quant_conv.": ("post_quant_conv.", "plain"),
    }
    for part in ("encoder", "decoder"):
        table[f"{part}.conv_in."] = (f"{part}.conv_in.", "plain")
        table[f"{part}.conv_out."] = (f"{part}.conv_out.", "plain")
        table[f"{part}.conv_norm_out."] = (f"{part}.norm_out.", "plain")
        table[f"{part}.mid_block.attentions.0."] = (f"{part}.mid.attn_1.", "vae_attention")
        for resnet in range(2):
            table[f"{part}.mid_block.resnets.{resnet}."] = (
                f"{part}.mid.block_{resnet + 1}.",
                "vae_resnet",
            )
    num_down = len(config.down_block_types)
    for block, layers in enumerate(_per_block(config.layers_per_block, num_down)):
        for layer in range(layers):
            table[f"encoder.down_blocks.{block}.resnets.{layer}."] = (
                f"encoder.down.{block}.block.{layer}.",
                "vae_resnet",
            )
        table[f"encoder.down_blocks.{block}.downsamplers.0.conv."] = (
            f"encoder.down.{block}.downsample.conv.",
            "plain",
        )
    num_up = len(config.up_block_types)
    for block, layers in enumerate(_per_block(config.layers_per_block, num_up)):
        ldm_block = num_up - 1 - block
        for layer in range(layers + 1):
            table[f"decoder.up_blocks.{block}.resnets.{layer}."] = (
                f"decoder.up.{ldm_block}.block.{layer}.",
                "vae_resnet",
            )
        table[f"decoder.up_blocks.{block}.upsamplers.0.conv."] = (
            f"decoder.up.{ldm_block}.upsample.conv.",
            "plain",
        )
    return table


def _rename_suffix(suffix: str, renames: dict[str, str]) -> str:
    """Replace the leading module name(s) of a key suffix according to a rename table."""
    for old, new in renames.items():
        if suffix.startswith(old + "."):
            return new + suffix[len(old) :]
    return suffix


def _convert_with_table(
    module: nn.Module, table: PrefixTable, out_prefix: str
) -> dict[str, torch.Tensor]:
    """Map every entry of a module's state dict through a prefix table; fail on any unmapped key."""
    converted: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, tensor in module.state_dict().items():
        parts = key.split(".")
        match = None
        for length in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:length]) + "."
            if prefix in table:
                match = prefix
                break
        if match is None:
            unmapped.append(key)
            continue
        ldm_prefix, kind = table[match]
        suffix = key[len(match) :]
        if kind == "unet_resnet":
            suffix = _rename_suffix(suffix, _UNET_RESNET_RENAMES)
        elif kind == "vae_resnet":
            suffix = _rename_suffix(suffix, _VAE_RESNET_RENAMES)
        elif kind == "vae_attention":
            suffix = _rename_suffix(suffix, _VAE_ATTENTION_RENAMES)
            if suffix.endswith(".weight") and tensor.ndim == 2:
                tensor = tensor[:, :, None, None]  # linear -> 1x1 conv, as in the original VAE
        new_key = out_prefix + ldm_prefix + suffix
        if new_key in converted:
            raise ValueError(f"duplicate LDM key {new_key!r} (from {key!r})")
        converted[new_key] = tensor
    if unmapped:
        raise ValueError(f"{type(module).__name__} keys without an LDM mapping: {unmapped}")
    return converted


def convert_unet(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """Return the UNet state dict in original layout (``model.diffusion_model.*``)."""
    keys = list(unet.state_dict())
    return _convert_with_table(unet, _unet_prefixes(unet, keys), UNET_PREFIX)


def convert_vae(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    """Return the VAE state dict in original layout (``first_stage_model.*``)."""
    return _convert_with_table(vae, _vae_prefixes(vae), VAE_PREFIX)


def convert_clip(text_encoder: nn.Module) -> dict[str, torch.Tensor]:
    """Return the CLIP text encoder state dict in original layout (``cond_stage_model.transformer.text_model.*``)."""
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in text_encoder.state_dict().items():
        inner = key.removeprefix(
            "text_model."
        )  # transformers < 5.6 nests under text_model, >= 5.6 is flat
        if not inner.startswith(("embeddings.", "encoder.", "final_layer_norm.")):
            raise ValueError(f"CLIP key without an LDM mapping: {key!r}")
        converted[CLIP_PREFIX + inner] = tensor
    positions = text_encoder.config.max_position_embeddings
    converted.setdefault(
        CLIP_PREFIX + "embeddings.position_ids", torch.arange(positions, dtype=torch.int64)[None]
    )
    return converted


def convert_pipeline(pipe: StableDiffusionPipeline) -> dict[str, torch.Tensor]:
    """Return the combined original-layout SD v1 state dict of a pipeline's unet, vae and text encoder."""
    state: dict[str, torch.Tensor] = {}
    for part in (convert_unet(pipe.unet), convert_vae(pipe.vae), convert_clip(pipe.text_encoder)):
        overlap = state.keys() & part.keys()
        if overlap:
            raise ValueError(f"overlapping keys: {sorted(overlap)}")
        state.update(part)
    return state


def save_original_checkpoint(pipe: StableDiffusionPipeline, path: Path) -> None:
    """Write the pipeline's unet/vae/text encoder as one original-layout SD v1 safetensors file."""
    state = {
        key: tensor.detach().to("cpu").contiguous().clone()
        for key, tensor in convert_pipeline(pipe).items()
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"format": "pt"})
