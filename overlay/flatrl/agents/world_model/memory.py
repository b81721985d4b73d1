"""Memory: a temporal transformer over a rolling window of (z_t, a_{t-1}) tokens.

The hidden state h_t is the transformer output at the newest token. Gradients flow through the
current token (so vision and controller losses shape z_t and the token projection), while the
history tokens are detached: they were produced at earlier steps, and back-propagating through
a whole window for every position would cost L times more for little benefit. A small MLP head
predicts z_{t+1} from (h_t, z_t, a_t); its MSE against the encoded next observation is the
memory (dynamics) loss.
"""

from __future__ import annotations

import torch
from torch import nn


class TemporalTransformer(nn.Module):
    """Causal-by-construction memory: the window always ends at the current token."""

    def __init__(
        self,
        z_dim: int,
        action_dim: int,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        window: int = 16,
    ) -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f"memory window must be >= 1, got {window}")
        self.window = window
        self.d_model = d_model
        self.memory_input_proj = nn.Linear(z_dim + action_dim, d_model)
        self.pos_embedding = nn.Parameter(torch.zeros(window, d_model))
        nn.init.normal_(self.pos_embedding, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d_model,
            n_heads,
            dim_feedforward=2 * d_model,
            dropout=0.0,
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(d_model)
        self.next_head = nn.Sequential(
            nn.Linear(d_model + z_dim + action_dim, 128), nn.ReLU(), nn.Linear(128, z_dim)
        )

    def token(self, z: torch.Tensor, a_prev: torch.Tensor) -> torch.Tensor:
        """(B, z_dim), (B, action_dim) -> (B, d_model); keeps the graph to z and a_prev."""
        return self.memory_input_proj(torch.cat([z, a_prev], dim=-1))

    def hidden(
        self, history: torch.Tensor, current: torch.Tensor, hist_len: torch.Tensor
    ) -> torch.Tensor:
        """h_t from detached history tokens and the gradient-connected current token.

        history: (B, window-1, d) oldest first; current: (B, d); hist_len: (B,) how many of the
        newest history entries belong to the current episode (the rest are masked out).
        """
        n_hist = self.window - 1
        seq = torch.cat([history.detach(), current.unsqueeze(1)], dim=1) + self.pos_embedding
        slot = torch.arange(n_hist + 1, device=current.device)
        pad = slot[None, :] < (n_hist - hist_len.clamp(0, n_hist))[:, None]
        out = self.transformer(seq, src_key_padding_mask=pad)
        return self.out_norm(out[:, -1])

    def predict_next(self, z: torch.Tensor, action: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """z_{t+1} prediction as a residual on z_t (the identity is a good first guess)."""
        return z + self.next_head(torch.cat([h, z, action], dim=-1))


class RollingContext:
    """Per-environment history of detached tokens used while acting.

    It mirrors what training rebuilds from stored observations, so the h_t an action was sampled
    with is the h_t its log-probability is later trained with (same parameters, same window).
    """

    def __init__(self, num_envs: int, window: int, d_model: int, device: torch.device) -> None:
        self.tokens = torch.zeros(num_envs, window - 1, d_model, device=device)
        self.lengths = torch.zeros(num_envs, dtype=torch.long, device=device)

    def push(self, token: torch.Tensor) -> None:
        """Append the newest token (detached), dropping the oldest."""
        if self.tokens.shape[1] == 0:
            return
        self.tokens = torch.cat([self.tokens[:, 1:], token.detach().unsqueeze(1)], dim=1)
        self.lengths = (self.lengths + 1).clamp(max=self.tokens.shape[1])

    def reset(self, mask: torch.Tensor) -> None:
        """Forget the history of environments whose episode starts now."""
        self.lengths = torch.where(mask, torch.zeros_like(self.lengths), self.lengths)
