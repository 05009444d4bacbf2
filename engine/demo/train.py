"""Train the demo text-to-image pipeline on synthetic captioned shapes (CPU, fixed seeds).

The shipped model came from three commands (models/demo/README.md): the base run with full
captions, a decoder-only sharpening (encoder frozen, so it may run beside the first on a copy of
the VAE folder that the first saves after its autoencoder stage), and a short continuation with
varied captions:
    python -m engine.demo.train --out models/demo --caption-variation 0 --stop-after 3500 \
        --keep last --seed 0
    python -m engine.demo.train --decoder-only models/demo/vae --seed 0
    python -m engine.demo.train --out models/demo --init models/demo --vae-init models/demo/vae \
        --steps 800 --lr 3e-4 --warmup 50 --eval-every 200 --threads 2 --seed 0
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engine.demo.autoencoder import (
    encode_pool,
    finetune_decoder,
    image_batch,
    to_image,
    train_vae,
)
from engine.demo.judge import Judge, score
from engine.demo.models import (
    IMAGE_SIZE,
    build_models,
    count,
    ema_update,
    finalize,
    make_pipeline,
    tokenize,
)
from engine.demo.shapes import (
    caption,
    eval_specs,
    random_rgb_spec,
    random_spec,
    varied_caption,
    vocabulary,
)
from engine.demo.tokenizer import write_tokenizer

log = logging.getLogger(__name__)

ENGINE_DEFAULTS = {
    "width": 64,
    "height": 64,
    "num_inference_steps": 20,
    "guidance_scale": 5.0,
    "negative_prompt": "",
    "scheduler": "DPM++ 2M Karras",
}


@torch.no_grad()
def evaluate(pipe, judge: Judge, specs: list, seed: int, short: bool = False) -> dict[str, float]:
    """Generate the specs' captions (short: no size or position) with the engine defaults; judge."""
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(specs))]
    rng = random.Random(seed)
    images = pipe(
        [varied_caption(s, rng, 1.0) if short else caption(s) for s in specs],
        negative_prompt=[ENGINE_DEFAULTS["negative_prompt"]] * len(specs),
        num_inference_steps=ENGINE_DEFAULTS["num_inference_steps"],
        guidance_scale=ENGINE_DEFAULTS["guidance_scale"],
        width=IMAGE_SIZE,
        height=IMAGE_SIZE,
        generator=generators,
    ).images
    return score([judge(im) for im in images], specs)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of the demo training."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("models/demo"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--minutes", type=float, default=80.0, help="stop early after this long")
    parser.add_argument("--stop-after", type=int, default=None, help="stop at this step")
    parser.add_argument("--vae-steps", type=int, default=1200)
    parser.add_argument("--vae-init", type=Path, default=None, help="reuse a trained VAE folder")
    parser.add_argument(
        "--init", type=Path, default=None, help="continue from the UNet and text encoder here"
    )
    parser.add_argument(
        "--caption-variation",
        type=float,
        default=0.3,
        help="probability of leaving the size, and separately the position, out of a caption",
    )
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--pool", type=int, default=12000, help="cached training images")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=8e-4)
    parser.add_argument("--unet-channels", default="32,64,128")
    parser.add_argument("--layers-per-block", type=int, default=1)
    parser.add_argument("--text-width", type=int, default=128)
    parser.add_argument("--text-layers", type=int, default=2)
    parser.add_argument("--prediction", choices=("epsilon", "v_prediction"), default="v_prediction")
    parser.add_argument("--min-snr", type=float, default=5.0)
    parser.add_argument("--uncond-prob", type=float, default=0.1)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument(
        "--keep",
        choices=("best", "last"),
        default="best",
        help="save the best-scoring evaluated weights, or those of the last evaluation",
    )
    parser.add_argument("--eval-count", type=int, default=40)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="1 is steadier than 2 when other processes share the cores",
    )
    parser.add_argument(
        "--decoder-only",
        type=Path,
        default=None,
        help="only fine-tune the decoder of this VAE folder (encoder frozen) and save it back",
    )
    parser.add_argument("--decoder-steps", type=int, default=3000)
    return parser.parse_args(argv)


def check_autoencoder(
    vae: Any, latents: torch.Tensor, scaling: float, specs: list, judge: Judge
) -> None:
    """Log how well the autoencoder reconstructs the pool and arbitrary colours."""
    with torch.no_grad():
        recon = vae.decode(latents[:64] / scaling).sample
        log.info("vae reconstruction mse %.5f", F.mse_loss(recon, image_batch(specs[:64])).item())
        images = [to_image(r) for r in recon]
        log.info(
            "judge on vae reconstructions: %s", score([judge(im) for im in images], specs[:64])
        )
        arbitrary = [random_rgb_spec(random.Random(7 + i)) for i in range(64)]
        batch = image_batch(arbitrary)
        recon = vae.decode(vae.encode(batch).latent_dist.mean).sample
        log.info(
            "vae reconstruction mse on arbitrary colours %.5f", F.mse_loss(recon, batch).item()
        )


def save_pipeline(pipe: Any, out: Path, info: dict[str, Any]) -> None:
    """Save the pipeline for the engine: fp16 UNet, tokenizer files, defaults and training log."""
    pipe.save_pretrained(out, safe_serialization=True)
    finalize(out)
    (out / "engine_defaults.json").write_text(json.dumps(ENGINE_DEFAULTS, indent=2) + "\n")
    (out / "training_log.json").write_text(json.dumps(info, indent=2) + "\n")
    log.info("saved to %s", out)


def main(argv: list[str] | None = None) -> None:
    """Train the VAE, then the UNet and text encoder jointly, and save the best pipeline."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    if args.decoder_only is not None:
        from diffusers import AutoencoderKL

        torch.manual_seed(args.seed)
        vae = AutoencoderKL.from_pretrained(args.decoder_only)
        finetune_decoder(vae, args.decoder_steps, args.seed)
        vae.save_pretrained(args.decoder_only, safe_serialization=True)
        log.info("decoder saved to %s", args.decoder_only)
        return
    random.seed(args.seed)
    np.random.seed(args.seed)
    rng = random.Random(args.seed)
    t0 = time.time()

    from diffusers import DDPMScheduler
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer(Path(tmp), vocabulary())
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    vae, text_encoder, unet = build_models(args, len(tokenizer))
    if args.init is not None:  # continue from a saved pipeline (its tokenizer must match)
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        unet = UNet2DConditionModel.from_pretrained(args.init / "unet", torch_dtype=torch.float32)
        text_encoder = CLIPTextModel.from_pretrained(args.init / "text_encoder")
    log.info(
        "parameters: vae %d, text encoder %d, unet %d", count(vae), count(text_encoder), count(unet)
    )
    if args.vae_init is not None:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(args.vae_init).eval()
    else:
        train_vae(vae, args, rng)
        vae.save_pretrained(args.out / "vae", safe_serialization=True)
    vae.requires_grad_(False)

    specs = [random_spec(rng, held_out=False) for _ in range(args.pool)]
    latents = encode_pool(vae, specs)
    scaling = 1.0 / latents.std().item()
    vae.register_to_config(scaling_factor=scaling)
    latents = latents * scaling
    log.info(
        "pool of %d latents, scaling factor %.4f (%.0f s)", len(specs), scaling, time.time() - t0
    )
    judge = Judge()
    check_autoencoder(vae, latents, scaling, specs, judge)
    caption_rng = random.Random(args.seed + 2)
    tokens = tokenize(
        tokenizer, [varied_caption(s, caption_rng, args.caption_variation) for s in specs]
    )
    empty = tokenize(tokenizer, [""])[0]

    noise_scheduler = DDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        prediction_type=args.prediction,
    )
    alphas = noise_scheduler.alphas_cumprod
    snr_all = alphas / (1 - alphas)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    warmup = args.warmup

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * step / warmup
        progress = (step - warmup) / max(args.steps - warmup, 1)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    held_out = eval_specs(args.eval_count, seed=1234, held_out=True)
    seen = eval_specs(args.eval_count // 2, seed=4321, held_out=False)
    gen = torch.Generator().manual_seed(args.seed)
    best = -1.0
    unet.train()
    text_encoder.train()
    start = time.time()
    step = 0
    for step in range(1, args.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        idx = torch.randint(0, len(specs), (args.batch,), generator=gen)
        x0 = latents[idx]
        ids = tokens[idx].clone()
        drop = torch.rand(args.batch, generator=gen) < args.uncond_prob
        ids[drop] = empty
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, 1000, (args.batch,), generator=gen)
        noisy = noise_scheduler.add_noise(x0, noise, t)
        target = (
            noise if args.prediction == "epsilon" else noise_scheduler.get_velocity(x0, noise, t)
        )
        cond = text_encoder(ids)[0]
        pred = unet(noisy, t, cond).sample
        snr = snr_all[t]
        weight = torch.clamp(snr, max=args.min_snr) / (
            snr if args.prediction == "epsilon" else snr + 1
        )
        loss = (weight * ((pred - target) ** 2).mean(dim=(1, 2, 3))).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        decay = min(0.999, (1 + step) / (10 + step))
        ema_update(ema_unet, unet, decay)
        ema_update(ema_text, text_encoder, decay)
        elapsed = time.time() - start
        if step % 50 == 0:
            log.info(
                "step %d loss %.4f lr %.2e %.2f s/step",
                step,
                loss.item(),
                lr_at(step),
                elapsed / step,
            )
        out_of_time = (time.time() - t0) / 60 > args.minutes or step == args.stop_after
        if step % args.eval_every == 0 or step == args.steps or out_of_time:
            pipe = make_pipeline(vae, ema_text, ema_unet, tokenizer, args.prediction)
            pipe.set_progress_bar_config(disable=True)
            rates = evaluate(pipe, judge, held_out, seed=10_000)
            rates_seen = evaluate(pipe, judge, seen, seed=20_000)
            rates_short = evaluate(pipe, judge, held_out, seed=30_000, short=True)
            total = sum(rates.values()) + rates_short["color"] + rates_short["background"]
            log.info(
                "eval step %d held-out colour %.2f background %.2f shape %.2f | seen colour %.2f "
                "background %.2f shape %.2f | short colour %.2f background %.2f shape %.2f "
                "(%.0f min)",
                step,
                rates["color"],
                rates["background"],
                rates["shape"],
                rates_seen["color"],
                rates_seen["background"],
                rates_seen["shape"],
                rates_short["color"],
                rates_short["background"],
                rates_short["shape"],
                (time.time() - t0) / 60,
            )
            if total >= best or args.keep == "last":
                best = total
                info = {
                    "step": step,
                    "held_out": rates,
                    "seen": rates_seen,
                    "held_out_short_captions": rates_short,
                    "args": {k: str(v) for k, v in vars(args).items()},
                }
                save_pipeline(pipe, args.out, info)
        if out_of_time:
            log.info("time limit reached at step %d", step)
            break
    log.info("done: %d steps in %.1f min, best score %.3f", step, (time.time() - t0) / 60, best)


if __name__ == "__main__":
    main()
