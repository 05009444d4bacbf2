"""`python -m engine inpaint` and `python -m engine outpaint`: their parsers and requests."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from engine.inpaint import region_request
from engine.region import DEFAULT_MASK_BLUR, PANS, ZOOMS
from engine.requests import GenerationRequest

# GenerationRequest field -> the flag that sets it, on top of engine.__main__.FLAGS.
REGION_FLAGS = {
    "init_image": "image",
    "mask_image": "--mask",
    "mask_region": "--region",
    "mask_blur": "--mask-blur",
    "outpaint": "--zoom/--pan",
}


def build_region_parser(
    command: str, add_common: Callable[[argparse.ArgumentParser, str], None]
) -> argparse.ArgumentParser:
    """The parser of `python -m engine inpaint` or `python -m engine outpaint`."""
    p = argparse.ArgumentParser(
        prog=f"python -m engine {command}",
        description=(
            "Repaint the white part of a mask over an image."
            if command == "inpaint"
            else "Zoom out of an image or pan it, and paint the new area."
        ),
    )
    p.add_argument("image", help="the picture (its parameters text gives prompt and seed)")
    if command == "inpaint":
        where = p.add_mutually_exclusive_group(required=True)
        where.add_argument("--mask", default=None, help="mask image, white = repaint (any size)")
        where.add_argument(
            "--region",
            default=None,
            help="3x3 grid cells 0-8 ('0,1,2') or 'left half', 'centre'...",
        )
    else:
        how = p.add_mutually_exclusive_group(required=True)
        how.add_argument("--zoom", type=float, choices=ZOOMS, help="zoom out 1.5x or 2x")
        how.add_argument("--pan", choices=PANS, help="extend the picture by half a side")
    p.add_argument("--strength", type=float, default=None, help="how much is repainted, 0.05-1")
    p.add_argument(
        "--mask-blur",
        type=int,
        default=None,
        help=f"soft mask edge in px (default {DEFAULT_MASK_BLUR})",
    )
    p.add_argument("--prompt", default=None, help="prompt (default: the image's own)")
    p.add_argument("--negative", default=None, help="negative prompt (default: the image's own)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps, 1-150")
    p.add_argument("--seed", type=int, default=None, help="seed (default: the image's own)")
    p.add_argument(
        "--model",
        default=None,
        help="a MODEL_CHOICES name, hub id, folder, .safetensors file, or 'demo'",
    )
    add_common(p, command)
    return p


def region_cli_request(command: str, args: argparse.Namespace) -> GenerationRequest:
    """The GenerationRequest of a parsed inpaint or outpaint command line."""
    fields = {
        "negative_prompt": args.negative,
        "num_inference_steps": args.steps,
        "seed": args.seed,
        "strength": args.strength,
        "mask_blur": args.mask_blur,
    }
    if command == "inpaint":
        fields.update(mask_image=args.mask, mask_region=args.region)
    else:
        fields["outpaint"] = f"zoom:{args.zoom:g}" if args.zoom is not None else f"pan:{args.pan}"
    request = region_request(args.image, args.prompt, **fields)
    request.init_image = args.image
    return request
