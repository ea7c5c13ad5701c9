"""The three networks of Stable Video Diffusion held together: UNet, VAE and CLIP image encoder.

Our state dict is `unet.*`, `vae.*`, `image_encoder.*`, whose suffixes are the official sgm
suffixes; `kinetograph.io.layout_sgm` maps the prefixes to the released single-file layout.
"""

from __future__ import annotations

from torch import nn

from kinetograph.models.clip_image import CLIPImageEncoder
from kinetograph.models.unet import VideoUNet
from kinetograph.models.vae import VAE
from kinetograph.presets import SVDConfig


class SVD(nn.Module):
    def __init__(self, cfg: SVDConfig):
        super().__init__()
        self.cfg = cfg
        self.unet = VideoUNet(cfg.unet)
        self.vae = VAE(cfg.vae)
        self.image_encoder = CLIPImageEncoder(cfg.clip)
