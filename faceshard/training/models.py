"""Small detectors that train on the cache: a MINTIME-style temporal transformer and a Megatron-style
RGB/depth cross-attention model. Both read the samples of faceshard.storage.datasets as a batch dict.

They are deliberately small (a few hundred thousand parameters): the point is that a build's cached
tokens/embeddings train a model directly, with the inputs each paper's model consumes (size and
temporal embeddings, identity awareness, masked padding; paired RGB/depth sequences).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

SIZE_BUCKETS = 21  # 0 = padding, 1…20 (SPEC §4)


class MintimeNet(nn.Module):
    """Face tokens + size, identity and temporal-position embeddings → transformer → CLS logit.

    Every token of a padding slot is a key-padding position: attention never reads it, so whatever
    a padding slot holds cannot change the output (MINTIME's own loader left padding unmasked).
    """

    def __init__(
        self,
        in_dim: int,
        tokens_per_face: int,
        num_frames: int = 16,
        max_identities: int = 2,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.tokens_per_face = tokens_per_face
        self.project = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, dim))
        self.size = nn.Embedding(SIZE_BUCKETS, dim)
        self.identity = nn.Embedding(max_identities + 1, dim)
        self.time = nn.Embedding(num_frames * tokens_per_face + 1, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 1))

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        feats = batch["features"].float()  # (B, F, P, C)
        b, f, p, _ = feats.shape
        x = self.project(feats)
        x = x + self.size(batch["size_bucket"])[:, :, None] + self.identity(batch["identity"])[:, :, None]
        x = x + self.time(batch["positions"])
        x = x.reshape(b, f * p, -1)
        cls = self.cls.expand(b, -1, -1) + self.time.weight[0]
        tokens = torch.cat([cls, x], dim=1)
        padding = ~batch["mask"].bool()[:, :, None].expand(b, f, p).reshape(b, f * p)
        padding = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=padding.device), padding], dim=1)
        out = self.encoder(tokens, src_key_padding_mask=padding)
        return self.head(out[:, 0]).squeeze(1)


class MegatronNet(nn.Module):
    """RGB sequence attends to the depth sequence (cross-attention), then self-attention, masked pooling."""

    def __init__(self, rgb_dim: int, depth_dim: int, length: int = 20, dim: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.rgb = nn.Sequential(nn.LayerNorm(rgb_dim), nn.Linear(rgb_dim, dim))
        self.depth = nn.Sequential(nn.LayerNorm(depth_dim), nn.Linear(depth_dim, dim))
        self.position = nn.Embedding(length, dim)
        self.cross = nn.MultiheadAttention(dim, heads, dropout=0.1, batch_first=True)
        self.cross_norm = nn.LayerNorm(dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, 0.1, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 1))

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        mask = batch["mask"].bool()
        positions = self.position(torch.arange(mask.shape[1], device=mask.device))
        rgb = self.rgb(batch["rgb"].float()) + positions
        depth = self.depth(batch["depth"].float()) + positions
        attended, _ = self.cross(rgb, depth, depth, key_padding_mask=~mask)
        x = self.encoder(self.cross_norm(rgb + attended), src_key_padding_mask=~mask)
        weights = mask.float()[:, :, None]
        pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1)
        return self.head(pooled).squeeze(1)


def build_model(kind: str, example: dict[str, Any], **sizes: int) -> nn.Module:
    """A model whose input sizes match an example sample (unbatched) of the dataset."""
    if kind == "mintime":
        _, tokens, channels = example["features"].shape
        return MintimeNet(channels, tokens, num_frames=example["mask"].shape[0], **sizes)
    if kind == "megatron":
        return MegatronNet(example["rgb"].shape[1], example["depth"].shape[1], example["mask"].shape[0])
    raise ValueError(f"no model {kind!r}")
