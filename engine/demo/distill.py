"""Distil a few-step LoRA (latent consistency distillation, the LCM-LoRA recipe) for the demo model.

The demo's drafts (4 LCM steps, CFG 1) need a LoRA that turns the model into a consistency model:
    python -m engine.demo.distill --out models/demo/draft_lora --seed 0

Each step: training captions only (never `shapes.is_held_out`), their latents from the demo VAE;
a timestep t on the 50-step DDIM schedule (19, 39, ..., 999) and t - 40 (two of its steps);
x0 noised to t; the frozen teacher (the demo UNet without LoRA, CFG drawn in [3, 7]) takes one
DDIM step to t - 40; the student (the UNet with the LoRA) is trained so that its consistency
function at t matches that of the target at t - 40 (Huber loss), the target being an EMA (0.95)
of the student's LoRA: without it, both runs tried drifted off within 300 steps. The consistency
function is c_skip(t) x_t + c_out(t) x0(t), with the boundary scalings LCMScheduler uses
(sigma_data 0.5, timestep scaling 10) and x0 = alpha_t x_t - sigma_t v (the demo predicts v).
The LoRA judged best on 32 held-out prompts (not the tests' prompts) every 100 steps is kept.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import torch

from engine.demo.autoencoder import encode_pool
from engine.demo.judge import Judge, score
from engine.demo.models import tokenize
from engine.demo.shapes import caption, eval_specs, random_spec, varied_caption

log = logging.getLogger(__name__)

# What LCM-LoRA adapts: attention, feed-forward, transformer projections and the ResNet convs.
TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "time_emb_proj",
)
DDIM_STEPS = 50  # LCMScheduler's original_inference_steps: inference picks from this schedule
SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0  # LCMScheduler's default


def boundary(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """c_skip and c_out of the consistency function at integer timesteps (as LCMScheduler)."""
    scaled = t.float() * TIMESTEP_SCALING
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
    return c_skip.view(-1, 1, 1, 1), c_out.view(-1, 1, 1, 1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of the distillation."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=Path("models/demo"))
    parser.add_argument("--out", type=Path, default=Path("models/demo/draft_lora"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--minutes", type=float, default=30.0, help="stop early after this long")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--cfg-min", type=float, default=3.0, help="teacher CFG, drawn per item")
    parser.add_argument("--cfg-max", type=float, default=7.0)
    parser.add_argument("--skip", type=int, default=40, help="t_{n+k} - t_n (two DDIM steps)")
    parser.add_argument(
        "--ema", type=float, default=0.95, help="target LoRA = EMA of the student (0: the student)"
    )
    parser.add_argument("--huber-c", type=float, default=0.001)
    parser.add_argument("--pool", type=int, default=2000, help="cached training latents")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--eval-count", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def load_parts(model: Path) -> dict[str, Any]:
    """The demo pipeline's parts in fp32, frozen."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        model, local_files_only=True, safety_checker=None, requires_safety_checker=False
    )
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        part.requires_grad_(False).eval()
    pipe.set_progress_bar_config(disable=True)
    return {"pipe": pipe}


@torch.no_grad()
def evaluate(pipe: Any, judge: Judge, specs: list, steps: int = 4) -> dict[str, float]:
    """Draft settings (LCM, `steps` steps, CFG 1) on the specs' captions; the judge's rates."""
    images = pipe(
        [caption(s) for s in specs],
        num_inference_steps=steps,
        guidance_scale=1.0,
        width=64,
        height=64,
        generator=[torch.Generator().manual_seed(10_000 + i) for i in range(len(specs))],
    ).images
    return score([judge(im) for im in images], specs)


def save_lora(unet: Any, out: Path, lora_config: Any) -> Path:
    """Write pytorch_lora_weights.safetensors (diffusers keys, fp16)."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(unet, adapter_name="draft")
    state = {k: v.detach().half().contiguous() for k, v in state.items()}
    out.mkdir(parents=True, exist_ok=True)
    metadata = json.loads(
        json.dumps(
            lora_config.to_dict(), default=lambda v: sorted(v) if isinstance(v, set) else str(v)
        )
    )
    StableDiffusionPipeline.save_lora_weights(
        out, unet_lora_layers=state, unet_lora_adapter_metadata=metadata, safe_serialization=True
    )
    return out / "pytorch_lora_weights.safetensors"


def main(argv: list[str] | None = None) -> None:
    """Distil the LoRA, evaluating it at draft settings every `eval_every` steps; keep the best."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.time()
    from diffusers import DDPMScheduler, LCMScheduler, StableDiffusionPipeline
    from peft import LoraConfig

    pipe = load_parts(args.model)["pipe"]
    teacher = pipe.unet
    unet = copy.deepcopy(teacher)
    lora_config = LoraConfig(
        r=args.rank,
        lora_alpha=args.rank,
        init_lora_weights="gaussian",
        target_modules=list(TARGETS),
    )
    unet.add_adapter(lora_config, adapter_name="draft")
    params = [p for n, p in unet.named_parameters() if ".draft." in n]
    for p in params:
        p.requires_grad_(True)
    log.info("LoRA rank %d: %d parameters", args.rank, sum(p.numel() for p in params))
    # The target of consistency distillation: an EMA of the student keeps it from drifting.
    target_unet = copy.deepcopy(unet).requires_grad_(False).eval() if args.ema > 0 else unet
    ema_params = [p for n, p in target_unet.named_parameters() if ".draft." in n]

    rng = random.Random(args.seed)
    specs = [random_spec(rng, held_out=False) for _ in range(args.pool)]
    with torch.no_grad():
        latents = encode_pool(pipe.vae, specs) * pipe.vae.config.scaling_factor
    caption_rng = random.Random(args.seed + 1)
    tokens = tokenize(pipe.tokenizer, [varied_caption(s, caption_rng) for s in specs])
    with torch.no_grad():
        uncond = pipe.text_encoder(tokenize(pipe.tokenizer, [""]))[0]
    log.info("pool of %d latents (%.0f s)", len(specs), time.time() - t0)

    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    alphas = noise_scheduler.alphas_cumprod
    ddim_t = torch.arange(1, DDIM_STEPS + 1) * (1000 // DDIM_STEPS) - 1  # 19 ... 999

    def scale(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = alphas[t].sqrt().view(-1, 1, 1, 1)
        return a, (1 - alphas[t]).sqrt().view(-1, 1, 1, 1)

    judge = Judge()
    held = eval_specs(args.eval_count, seed=1234, held_out=True)  # not the tests' prompts
    eval_pipe = StableDiffusionPipeline(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        unet=unet,
        scheduler=LCMScheduler.from_config(pipe.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    eval_pipe.set_progress_bar_config(disable=True)
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed)
    best, best_rates, history = -1.0, {}, []
    start = time.time()
    step = 0
    for step in range(1, args.steps + 1):
        lr = args.lr * min(1.0, step / 50)
        for group in optimizer.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(specs), (args.batch,), generator=gen)
        x0 = latents[idx]
        with torch.no_grad():
            cond = pipe.text_encoder(tokens[idx])[0]
        t = ddim_t[torch.randint(0, DDIM_STEPS, (args.batch,), generator=gen)]
        t_prev = (t - args.skip).clamp(min=0)
        noise = torch.randn(x0.shape, generator=gen)
        x_t = noise_scheduler.add_noise(x0, noise, t)
        a_t, s_t = scale(t)
        a_p, s_p = scale(t_prev)
        w = args.cfg_min + (args.cfg_max - args.cfg_min) * torch.rand(args.batch, generator=gen)
        w = w.view(-1, 1, 1, 1)
        with torch.no_grad():
            v_c, v_u = teacher(
                torch.cat([x_t, x_t]),
                torch.cat([t, t]),
                torch.cat([cond, uncond.expand_as(cond)]),
            ).sample.chunk(2)
            v = v_u + w * (v_c - v_u)
            x_prev = a_p * (a_t * x_t - s_t * v) + s_p * (s_t * x_t + a_t * v)  # one DDIM step
            unet.eval()
            v_target = target_unet(x_prev, t_prev, cond).sample
            c_skip, c_out = boundary(t_prev)
            target = c_skip * x_prev + c_out * (a_p * x_prev - s_p * v_target)
        unet.train()
        v_student = unet(x_t, t, cond).sample
        c_skip, c_out = boundary(t)
        pred = c_skip * x_t + c_out * (a_t * x_t - s_t * v_student)
        loss = (torch.sqrt((pred - target) ** 2 + args.huber_c**2) - args.huber_c).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if args.ema > 0:
            with torch.no_grad():
                for e, p in zip(ema_params, params, strict=True):
                    e.mul_(args.ema).add_(p.detach(), alpha=1 - args.ema)
        if step % 25 == 0:
            log.info(
                "step %d loss %.4f lr %.1e %.2f s/step",
                step,
                loss.item(),
                lr,
                (time.time() - start) / step,
            )
        out_of_time = (time.time() - t0) / 60 > args.minutes
        if step % args.eval_every == 0 or step == args.steps or out_of_time:
            unet.eval()
            rates = evaluate(eval_pipe, judge, held)
            total = rates["color"] + rates["shape"] + rates["background"]
            history.append({"step": step, **rates, "minutes": round((time.time() - t0) / 60, 1)})
            log.info("eval step %d: %s (%.1f min)", step, rates, (time.time() - t0) / 60)
            if total > best:
                best, best_rates = total, {"step": step, **rates}
                path = save_lora(unet, args.out, lora_config)
                log.info("saved %s (%d bytes)", path, path.stat().st_size)
            info = {"kept": best_rates, "eval_prompts": "eval_specs(seed=1234)", "history": history}
            info["args"] = {k: str(v) for k, v in vars(args).items()}
            (args.out / "distill_log.json").write_text(json.dumps(info, indent=2) + "\n")
        if out_of_time:
            log.info("time limit reached at step %d", step)
            break
    log.info("done: %d steps in %.1f min, best %s", step, (time.time() - t0) / 60, best_rates)


if __name__ == "__main__":
    main()
