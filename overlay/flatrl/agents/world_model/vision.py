"""Vision: turns an observation into the latent z that the memory and controller read.

Images go through a VQ-VAE (van den Oord et al., 2017): a conv encoder, a codebook with the
straight-through estimator and a commitment loss, and a conv decoder trained on reconstruction.
Vector observations (CartPole) would lose precision to a codebook, so they get an MLP
autoencoder with the same interface: `encode`, and `loss` = reconstruction (+ VQ terms).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

IMAGE_SIZE = 64  # frames are resized to 64 x 64 before the encoder: 4x fewer pixels than 96^2


@dataclass
class VisionOutput:
    """z: the latent used downstream; loss: reconstruction + VQ terms (scalar); parts for logs."""

    z: torch.Tensor
    loss: torch.Tensor
    recon_loss: torch.Tensor
    vq_loss: torch.Tensor


class VectorQuantizer(nn.Module):
    """Nearest-codeword quantisation with the straight-through gradient.

    Forward returns the quantised vectors, but its gradient w.r.t. the encoder output is the
    identity (z_e + (z_q - z_e).detach()), so the reconstruction loss trains the encoder even
    though argmin has no gradient. The codebook is pulled to the encoder outputs by the codebook
    term and the encoder is held near its codes by `beta` times the commitment term.
    """

    def __init__(self, num_codes: int, code_dim: int, beta: float = 0.25) -> None:
        super().__init__()
        self.codebook = nn.Embedding(num_codes, code_dim)
        self.codebook.weight.data.uniform_(-1.0 / num_codes, 1.0 / num_codes)
        self.beta = beta

    def forward(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z_e: (..., code_dim) -> (z_q straight-through, vq loss, code indices)."""
        flat = z_e.reshape(-1, z_e.shape[-1])
        dist = (
            flat.pow(2).sum(1, keepdim=True)
            - 2 * flat @ self.codebook.weight.t()
            + self.codebook.weight.pow(2).sum(1)[None]
        )
        idx = dist.argmin(dim=1)
        z_q = self.codebook(idx).view_as(z_e)
        codebook_loss = F.mse_loss(z_q, z_e.detach())
        commitment_loss = F.mse_loss(z_e, z_q.detach())
        z_st = z_e + (z_q - z_e).detach()
        return z_st, codebook_loss + self.beta * commitment_loss, idx.view(z_e.shape[:-1])


def preprocess_frames(frames: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, 64, 64) float in [0, 1] (area resampling keeps thin lines)."""
    x = frames.permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-1] != IMAGE_SIZE or x.shape[-2] != IMAGE_SIZE:
        x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="area")
    return x


class VQVAE(nn.Module):
    """64x64 frames -> 8x8 grid of `code_dim` codes -> flattened and projected to z_dim."""

    def __init__(
        self, z_dim: int = 64, num_codes: int = 128, code_dim: int = 16, beta: float = 0.25
    ) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 32, 4, 2, 1),  # 32x32
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, 2, 1),  # 16x16
            nn.ReLU(),
            nn.Conv2d(64, 64, 4, 2, 1),  # 8x8
            nn.ReLU(),
            nn.Conv2d(64, code_dim, 1),
        )
        self.quantizer = VectorQuantizer(num_codes, code_dim, beta)
        self.decoder = nn.Sequential(
            nn.Conv2d(code_dim, 64, 3, 1, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(64, 64, 4, 2, 1),  # 16x16
            nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 4, 2, 1),  # 32x32
            nn.ReLU(),
            nn.ConvTranspose2d(32, 3, 4, 2, 1),  # 64x64
        )
        self.to_latent = nn.Sequential(nn.Flatten(), nn.Linear(code_dim * 8 * 8, z_dim))
        self.z_dim = z_dim

    def forward(self, frames: torch.Tensor, with_loss: bool = True) -> VisionOutput:
        x = preprocess_frames(frames)
        z_e = self.encoder(x).permute(0, 2, 3, 1)  # (B, 8, 8, code_dim)
        z_q, vq_loss, _ = self.quantizer(z_e)
        z_q = z_q.permute(0, 3, 1, 2)
        z = self.to_latent(z_q)
        if not with_loss:
            zero = z.new_zeros(())
            return VisionOutput(z, zero, zero, zero)
        recon = self.decoder(z_q)
        recon_loss = F.mse_loss(recon, x)
        return VisionOutput(z, recon_loss + vq_loss, recon_loss, vq_loss)


class VectorEncoder(nn.Module):
    """MLP autoencoder for flat observations; the decoder only exists to give z a meaning."""

    def __init__(self, obs_dim: int, z_dim: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(obs_dim, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, z_dim)
        )
        self.decoder = nn.Sequential(
            nn.Linear(z_dim, hidden), nn.ReLU(), nn.Linear(hidden, obs_dim)
        )
        self.z_dim = z_dim

    def forward(self, obs: torch.Tensor, with_loss: bool = True) -> VisionOutput:
        obs = obs.float()
        z = self.encoder(obs)
        zero = z.new_zeros(())
        if not with_loss:
            return VisionOutput(z, zero, zero, zero)
        recon_loss = F.mse_loss(self.decoder(z), obs)
        return VisionOutput(z, recon_loss, recon_loss, zero)


def build_vision(obs_kind: str, obs_shape: tuple[int, ...], z_dim: int) -> nn.Module:
    """VQ-VAE for images, MLP autoencoder for vectors."""
    if obs_kind == "image":
        return VQVAE(z_dim=z_dim)
    return VectorEncoder(obs_shape[0], z_dim=z_dim)
