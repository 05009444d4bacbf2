"""The demo autoencoder: training it, sharpening its decoder, and images in and out of it."""

from __future__ import annotations

import argparse
import logging
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

from engine.demo.models import LATENT_SIZE
from engine.demo.shapes import random_rgb_spec, random_spec, render

log = logging.getLogger(__name__)


def image_batch(specs: list) -> torch.Tensor:
    """Render specs to a (N, 3, 64, 64) tensor in [-1, 1]."""
    arrays = np.stack([np.asarray(render(s), dtype=np.float32) for s in specs])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1.0


def autoencoder_batch(rng: random.Random, size: int = 16) -> list:
    """Half palette specs, half arbitrary colours: the latent space must hold any flat colour."""
    return [random_spec(rng, held_out=None) if i % 2 else random_rgb_spec(rng) for i in range(size)]


def train_vae(vae, args: argparse.Namespace, rng: random.Random) -> None:
    """Train the autoencoder on rendered images (reconstruction + a tiny KL term)."""
    with torch.no_grad():  # start with a small posterior variance so the decoder sees clean latents
        vae.quant_conv.bias[vae.config.latent_channels :] = -8.0
    optimizer = torch.optim.AdamW(vae.parameters(), lr=3e-4, weight_decay=0.0)
    vae.train()
    start = time.time()
    for step in range(1, args.vae_steps + 1):
        batch = image_batch(autoencoder_batch(rng))
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample()).sample
        kl = posterior.kl().mean() / (4 * LATENT_SIZE * LATENT_SIZE)
        loss = F.mse_loss(recon, batch) + 0.1 * F.l1_loss(recon, batch) + 1e-5 * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == args.vae_steps:
            log.info("vae step %d loss %.5f (%.0f s)", step, loss.item(), time.time() - start)
    vae.eval()


def finetune_decoder(vae, steps: int, seed: int) -> None:
    """Sharpen the decoder with the encoder frozen, so the latent space (and the UNet) stay valid."""
    rng = random.Random(seed + 1)
    vae.requires_grad_(False)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=3e-4, weight_decay=0.0)
    vae.decoder.train()
    start = time.time()
    for step in range(1, steps + 1):
        batch = image_batch(autoencoder_batch(rng))
        with torch.no_grad():
            latents = vae.encode(batch).latent_dist.sample()
        recon = vae.decode(latents).sample
        loss = F.mse_loss(recon, batch) + 0.5 * F.l1_loss(recon, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == steps:
            log.info("decoder step %d loss %.5f (%.0f s)", step, loss.item(), time.time() - start)
    vae.eval()
    vae.requires_grad_(False)


@torch.no_grad()
def encode_pool(vae, specs: list) -> torch.Tensor:
    """Encode rendered specs to latent means (unscaled)."""
    chunks = [
        vae.encode(image_batch(specs[i : i + 256])).latent_dist.mean
        for i in range(0, len(specs), 256)
    ]
    return torch.cat(chunks)


def to_image(tensor: torch.Tensor):
    """A (3, H, W) tensor in [-1, 1] as a PIL image."""
    from PIL import Image

    array = ((tensor.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array)
