"""The conditional generator: diffusers' `UNet2DModel` predicting the noise, with one learned embedding per
attribute added to its timestep embedding (the UNet's `class_embed_type="identity"` takes their sum), and the
DDPM noise schedule of DDPM/dp-promise (1000 steps, linear betas 1e-4 to 0.02).

One embedding per attribute (rather than one class per combination) lets a generator pretrained on some
attributes (synthetic faces have gender but no race) be fine-tuned with more, and lets classifier-free guidance
drop only the protected attributes while the kept ones stay conditioned.

    config = GeneratorConfig(image_size=32, attributes=schema)
    net = ConditionalUNet(config)
    noise = net(noisy_images, timesteps, labels)    # labels: (batch, attributes) indices, `null` for not given
"""

from __future__ import annotations

import math

import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch import nn

from umbra.diffusion.generator_config import GeneratorConfig

IMAGE_SIZES = (16, 32, 64)
DESIGNS = ("latent", "pixel")  # umbra.diffusion.latent.LatentGenerator, ConditionalUNet below


def noise_schedule(config: GeneratorConfig) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=config.train_timesteps, beta_start=config.beta_start,
                         beta_end=config.beta_end, beta_schedule="linear", prediction_type=config.prediction)


def latent_clip_for(latent_dim: int) -> float:
    """C = sqrt(latent_dim): a latent of that norm has about unit variance per number, the scale the noise schedule
    was made for (as Stable Diffusion scales its latents). At C = 1 in 64 numbers every timestep past about 100
    drowned the latent, and the denoiser (measured: 600 faces, 10 epochs) learned the average face alone: its
    outputs' latents were 0.2·C apart against 1.2·C for faces, at C = 8 0.85·C against 1.0·C. The mechanism's
    ε scales with C at a given timestep; the intensity table's latent column is chosen for this C."""
    return math.sqrt(latent_dim)


def build(config: GeneratorConfig) -> nn.Module:
    """The network a configuration describes (untrained): ConditionalUNet or latent.LatentGenerator."""
    if config.design == "latent":
        from umbra.diffusion.latent import LatentGenerator

        return LatentGenerator(config)
    return ConditionalUNet(config)


class ConditionalUNet(nn.Module):
    def __init__(self, config: GeneratorConfig):
        super().__init__()
        if config.design != "pixel":
            raise ValueError(f"a {config.design} generator is not a ConditionalUNet: use build()")
        self.config = config
        levels = len(config.channels)
        down = tuple("AttnDownBlock2D" if config.attention and i == levels - 1 else "DownBlock2D"
                     for i in range(levels))
        up = tuple("AttnUpBlock2D" if config.attention and i == 0 else "UpBlock2D" for i in range(levels))
        self.unet = UNet2DModel(
            sample_size=config.image_size, in_channels=3, out_channels=3, block_out_channels=config.channels,
            layers_per_block=config.layers_per_block, down_block_types=down, up_block_types=up,
            norm_num_groups=config.norm_groups, class_embed_type="identity")
        width = config.channels[0] * 4  # the UNet's timestep-embedding width
        self.embeddings = nn.ModuleList(nn.Embedding(a.null + 1, width) for a in config.attributes)
        for embedding in self.embeddings:
            nn.init.normal_(embedding.weight, std=0.02)

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        condition = sum(embedding(labels[:, i]) for i, embedding in enumerate(self.embeddings))
        return self.unet(noisy, timesteps, class_labels=condition).sample


def load_matching(net: nn.Module, weights: dict[str, torch.Tensor], pretrained: GeneratorConfig) -> list[str]:
    """Loads public pretrained weights into `net`: everything but the attribute embeddings whole (same design,
    size and widths), and the embedding of each attribute both generators have with the same values. Returns the
    attributes that start fresh."""
    body = {k: v for k, v in weights.items() if not k.startswith("embeddings.")}
    missing, unexpected = net.load_state_dict(body, strict=False)
    if unexpected or any(not k.startswith("embeddings.") for k in missing):
        raise ValueError(f"the pretrained weights do not fit this network ({(missing + unexpected)[:3]})")
    fresh = []
    for i, attribute in enumerate(net.config.attributes):
        old = next((j for j, a in enumerate(pretrained.attributes) if a == attribute), None)
        if old is None:
            fresh.append(attribute.name)
        else:
            net.embeddings[i].weight.data.copy_(weights[f"embeddings.{old}.weight"])
    return fresh
