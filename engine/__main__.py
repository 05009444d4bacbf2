"""Command line: python -m engine "a castle at dusk" --steps 30 --seed 42 ...

`python -m engine doctor` checks the machine and the settings instead (engine/doctor.py).
`python -m engine upscale PATH --factor 2` enlarges an image and repaints it lightly.
`python -m engine inpaint PATH --mask MASK` / `outpaint PATH --zoom 2` repaint part of an image.
`python -m engine serve [--host --port --api-auth --model]` serves the web-UI HTTP API (webapi/).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from engine.adapters import draft_lora_missing, model_folder
from engine.config import AppConfig, ConfigError, load_config
from engine.errors import EngineError, LoraError, RequestError
from engine.lora import inspect_lora_file
from engine.lora_stack import folder_resolver, resolve_lora_stack
from engine.pipeline import resolve_model_source
from engine.requests import GenerationRequest, ResolvedRequest
from engine.schedulers import SCHEDULER_NAMES
from engine.vram import estimate_for_config

log = logging.getLogger("engine.cli")
LIBRARIES = ("diffusers", "transformers", "huggingface_hub", "accelerate", "peft", "torch")
# GenerationRequest field -> the flag that sets it, so a refusal names what the user typed.
FLAGS = {
    "prompt": "prompt",
    "negative_prompt": "--negative",
    "num_inference_steps": "--steps",
    "guidance_scale": "--cfg",
    "seed": "--seed",
    "width": "--width",
    "height": "--height",
    "num_images": "--num",
    "scheduler": "--scheduler",
    "draft": "--draft",
    "init_image": "--init-image",
    "strength": "--strength",
    "upscale": "--factor",
    "model": "--model",
    "lora": "--lora",
    "lora_scale": "--lora-scale",
    "loras": "prompt",  # <lora:NAME:w> tags
}


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    p = argparse.ArgumentParser(
        prog="python -m engine", description="Generate images with Stable Diffusion (low VRAM)."
    )
    p.add_argument("prompt", help="what to draw")
    p.add_argument("--negative", default=None, help="negative prompt (default from settings)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps, 1-150")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale, 0-30")
    p.add_argument("--seed", type=int, default=None, help="seed (random when omitted)")
    p.add_argument("--width", type=int, default=None, help="multiple of 8, 64-2048")
    p.add_argument("--height", type=int, default=None, help="multiple of 8, 64-2048")
    p.add_argument("--num", type=int, default=None, help="number of images, 1-8")
    p.add_argument("--scheduler", default=None, help="sampler: " + ", ".join(SCHEDULER_NAMES))
    p.add_argument(
        "--model",
        default=None,
        help="a MODEL_CHOICES name, hub id, folder, .safetensors file, or 'demo'",
    )
    p.add_argument("--lora", default=None, help="LoRA .safetensors file or folder")
    p.add_argument("--lora-scale", type=float, default=0.8, help="LoRA strength, 0-2")
    p.add_argument(
        "--lora-dir",
        default=None,
        help="where <lora:NAME:w> in the prompt looks for NAME/final or NAME "
        "(default STORAGE_LORA_DIR, else models/lora)",
    )
    p.add_argument(
        "--draft",
        action="store_true",
        help="a quick, rougher image: few-step LoRA (GEN_DRAFT_LORA), 4 steps, CFG 1",
    )
    # Fast mode's flag, as drafts were called before. The command line makes a draft only when
    # asked: GEN_DRAFT_DEFAULT is the bot's default.
    p.add_argument("--fast", dest="draft", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--init-image", default=None, help="img2img: start from this image file")
    p.add_argument(
        "--strength", type=float, default=None, help="img2img: how much is repainted, 0.05-1"
    )
    _add_common(p, prefix="gen")
    return p


def build_upscale_parser() -> argparse.ArgumentParser:
    """The parser of `python -m engine upscale`."""
    p = argparse.ArgumentParser(
        prog="python -m engine upscale",
        description="Enlarge an image, then repaint it lightly with its own prompt (hires fix).",
    )
    p.add_argument("image", help="PNG to enlarge (its parameters text gives prompt and seed)")
    p.add_argument("--factor", type=float, default=2.0, help="enlargement, above 1 and up to 4")
    p.add_argument("--strength", type=float, default=0.35, help="how much is repainted, 0.05-1")
    p.add_argument("--prompt", default=None, help="prompt (default: the image's own)")
    p.add_argument("--negative", default=None, help="negative prompt (default: the image's own)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps, 1-150")
    p.add_argument("--seed", type=int, default=None, help="seed (default: the image's own)")
    p.add_argument(
        "--model",
        default=None,
        help="a MODEL_CHOICES name, hub id, folder, .safetensors file, or 'demo'",
    )
    _add_common(p, prefix="upscale")
    return p


def _add_common(p: argparse.ArgumentParser, prefix: str) -> None:
    p.add_argument("--out", default=None, help="output folder (default from settings)")
    p.add_argument("--prefix", default=prefix, help="file name prefix")
    p.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default=None)
    p.add_argument("--preset", choices=["auto", "none", "2gb", "3gb", "4gb", "6gb", "8gb"])
    p.add_argument(
        "--weight-storage",
        choices=["auto", "off", "fp8"],
        default=None,
        help="fp8: UNet and VAE weights in float8 (less memory; slower on a CPU); "
        "auto: as the preset says",
    )
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N")
    p.add_argument("--estimate-vram", action="store_true", help="print a VRAM estimate and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--verbose", action="store_true", help="show library warnings, loading bars and info logs"
    )


def quiet_libraries() -> None:
    """Hide the libraries' warnings and loading bars in this command-line process only.

    Library users keep the libraries' defaults: nothing here runs on `import engine`.
    An explicit TRANSFORMERS_VERBOSITY or DIFFUSERS_VERBOSITY still wins.
    """
    from huggingface_hub.utils import disable_progress_bars

    # transformers reads this when it is first imported (later, when the model loads).
    disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        if "TRANSFORMERS_VERBOSITY" not in os.environ:
            transformers_logging.set_verbosity_error()
    else:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    if "DIFFUSERS_VERBOSITY" not in os.environ:
        diffusers_logging.set_verbosity_error()
    for name in LIBRARIES:
        if name not in ("transformers", "diffusers"):
            logging.getLogger(name).setLevel(logging.ERROR)
    pattern = "|".join(LIBRARIES)
    warnings.filterwarnings("ignore", module=rf"({pattern})(\.|$)")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def _config(args: argparse.Namespace) -> AppConfig:
    config = load_config()
    if args.model:
        from engine.model_choices import ModelCatalog

        # A MODEL_CHOICES name stands for its source; anything else is a model reference.
        choice = ModelCatalog(config.model.model_id, config.model.choices).find(args.model)
        model_id = choice.source if choice else args.model
        config.model = config.model.model_copy(update={"model_id": model_id})
    if args.precision:
        config.model = config.model.model_copy(update={"precision": args.precision})
    if args.device:
        config.model = config.model.model_copy(update={"device": args.device})
    if args.preset:
        config.optimization = config.optimization.model_copy(update={"vram_preset": args.preset})
    if args.weight_storage:
        config.optimization = config.optimization.model_copy(
            update={"weight_storage": args.weight_storage}
        )
    if args.out:
        from pathlib import Path

        config.generation = config.generation.model_copy(update={"output_dir": Path(args.out)})
    return config


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["doctor"]:  # a prompt that is just "doctor": python -m engine -- doctor
        from engine.doctor import main as doctor

        return doctor(argv[1:])
    if argv[:1] == ["upscale"]:
        return _upscale_main(argv[1:])
    if argv[:1] == ["serve"]:
        # By module name, as the Ray backend is: engine/ never imports webapi, storage or scheduling.
        import importlib

        return importlib.import_module("webapi.serve").main(argv[1:])
    if argv[:1] in (["inpaint"], ["outpaint"]):
        return _region_main(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    _logging(args)
    request = GenerationRequest(
        prompt=args.prompt,
        negative_prompt=args.negative,
        num_inference_steps=args.steps,
        guidance_scale=args.cfg,
        seed=args.seed,
        width=args.width,
        height=args.height,
        num_images=args.num,
        scheduler=args.scheduler,
        lora=args.lora,
        lora_scale=args.lora_scale,
        draft=args.draft,
        init_image=args.init_image,
        strength=args.strength,
    )
    try:
        config = _config(args)
        from engine.requests import resolve_request

        stack = resolve_lora_stack(
            args.prompt,
            (),
            folder_resolver(args.lora_dir or config.generation.lora_dir),
            config.generation.max_loras,
        )
        request.loras = [use.to_entry() for use in stack]
        resolved = resolve_request(request, config.generation, {})
        folder = model_folder(config.model.model_id)
        problem = draft_lora_missing(config, folder) if resolved.draft else None
        if problem is not None:
            raise RequestError("draft", problem)
        if args.estimate_vram:
            estimate = estimate_for_config(
                config,
                width=resolved.width,
                height=resolved.height,
                batch_size=resolved.num_images,
                img2img=resolved.init_image is not None,
            )
            print(estimate.format())
            return 0
        resolve_model_source(config.model.model_id, config.model.allow_ckpt)
        for field, path in [("lora", args.lora)] * bool(args.lora) + [
            ("loras", use.path) for use in stack
        ]:
            try:
                inspect_lora_file(path)
            except LoraError as exc:
                raise RequestError(field, f"{exc.subject} {exc.problem}") from None
        return _generate(config, request, args.quiet, args.prefix)
    except (ConfigError, EngineError, ValueError) as exc:
        print(f"error: {refusal(exc)}", file=sys.stderr)
        return 2


def refusal(exc: Exception, flags: dict[str, str] = FLAGS) -> str:
    """One line for a refused command: a bad request value under the flag that set it."""
    if not isinstance(exc, ValueError) or isinstance(exc, ConfigError):
        return str(exc)
    error = RequestError.from_value_error(exc)
    if not error.field:
        return error.detail
    return f"{flags.get(error.field, error.field)}: {error.detail}"


def _upscale_main(argv: list[str]) -> int:
    """`python -m engine upscale`: check the input, then enlarge and repaint."""
    from engine.img2img import upscale_request

    args = build_upscale_parser().parse_args(argv)
    _logging(args)
    try:
        config = _config(args)
        request = upscale_request(
            args.image, args.factor, args.strength, args.prompt, args.seed, args.negative,
            args.steps, None, None,
        )  # fmt: skip
        request.init_image = args.image
        from engine.requests import resolve_request

        resolved = resolve_request(request, config.generation, {})
        return _estimate_or_generate(config, request, resolved, args, upscale=True)
    except (ConfigError, EngineError, ValueError) as exc:
        print(f"error: {refusal(exc, {**FLAGS, 'init_image': 'image'})}", file=sys.stderr)
        return 2


def _estimate_or_generate(
    config: AppConfig,
    request: GenerationRequest,
    resolved: ResolvedRequest,
    args: argparse.Namespace,
    **kind: bool,
) -> int:
    """Print the VRAM estimate with --estimate-vram (kind: upscale or img2img), else generate."""
    if args.estimate_vram:
        estimate = estimate_for_config(
            config, width=resolved.width, height=resolved.height, batch_size=1, **kind
        )
        print(estimate.format())
        return 0
    resolve_model_source(config.model.model_id, config.model.allow_ckpt)
    return _generate(config, request, args.quiet, args.prefix)


def _region_main(command: str, argv: list[str]) -> int:
    """`python -m engine inpaint|outpaint`: check the input, then repaint (engine/inpaint_cli.py)."""
    from engine.inpaint_cli import REGION_FLAGS, build_region_parser, region_cli_request
    from engine.model_choices import ModelCatalog
    from engine.requests import resolve_request

    args = build_region_parser(command, _add_common).parse_args(argv)
    _logging(args)
    try:
        config = _config(args)
        request = region_cli_request(command, args)
        if args.model:  # honoured as named: no inpainting partner stands in for it
            request.model = ModelCatalog(config.model.model_id, config.model.choices).default
        resolved = resolve_request(request, config.generation, {})
        return _estimate_or_generate(config, request, resolved, args, img2img=True)
    except (ConfigError, EngineError, ValueError) as exc:
        print(f"error: {refusal(exc, {**FLAGS, **REGION_FLAGS})}", file=sys.stderr)
        return 2


def _logging(args: argparse.Namespace) -> None:
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        quiet_libraries()


def _generate(config: AppConfig, request: GenerationRequest, quiet: bool, prefix: str) -> int:
    from tqdm import tqdm

    from engine.generator import TextToImageGenerator

    generator = TextToImageGenerator(config)
    # The model the request runs on: a region job may take an inpainting partner (one load).
    generator.load_model(generator.prepare(request).model)
    bar = None

    def progress(step: int, total: int, _latents: object) -> None:
        nonlocal bar
        if quiet:
            return
        if bar is None:
            bar = tqdm(total=total, desc="generating", unit="step")
        bar.update(step - bar.n)

    result = generator.run(request, progress=progress)
    if bar is not None:
        bar.close()
    paths = generator.save_images(result.images, prefix=prefix)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for path, seed in zip(paths, result.seeds, strict=True):
        print(f"{path}  seed={seed}")
    print(f"{len(paths)} image(s) in {result.seconds:.1f}s ({result.seconds_per_step:.2f}s/step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
