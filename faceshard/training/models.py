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


def sinusoidal(n: int, dim: int) -> torch.Tensor:
    """(n, dim) transformer position table: with few videos a randomly initialised position table
    gives attention nothing to match faces of the same frame by; this one does from the start."""
    position = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(
        torch.arange(0, dim, 2, dtype=torch.float32) * (-torch.log(torch.tensor(10_000.0)) / dim)
    )
    table = torch.zeros(n, dim)
    table[:, 0::2], table[:, 1::2] = torch.sin(position * freq), torch.cos(position * freq)
    return table


def allowed(mask: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, F, F) "may not attend" → the (B·heads, F, F) attn_mask of nn.MultiheadAttention.

    Every slot may always see itself: a padding slot (all of whose keys are blocked) would otherwise
    give NaN, and its output is never read by a real slot anyway.
    """
    blocked = mask & ~torch.eye(mask.shape[-1], dtype=torch.bool, device=mask.device)
    return blocked.repeat_interleave(heads, 0)


class SlotAttention(nn.Module):
    """Pre-norm residual attention between the F face slots, at each of the P token positions."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)

    def forward(self, x: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
        b, f, p, d = x.shape
        t = x.transpose(1, 2).reshape(b * p, f, d)
        mask = allowed(blocked[:, None].expand(b, p, f, f).reshape(b * p, f, f), self.attn.num_heads)
        h = self.norm(t)
        t = t + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return t.reshape(b, p, f, d).transpose(1, 2)


class DividedBlock(nn.Module):
    """MINTIME's divided attention, plus attention across the faces of one frame.

    1. Temporal: each slot attends to the slots of ITS OWN identity (MINTIME's identity mask).
    2. Frame: each slot attends to the other faces of the same video frame (TimeSformer's spatial
       attention spans everything visible at one time; MINTIME's stays inside one face, so which
       identities appear together, or one identity twice, reaches only its CLS token).
    3. Spatial: the P tokens of one face attend to each other.
    Padding slots are blocked as keys in 1 and 2; 3 stays inside one face, so a padding slot's tokens
    only ever see each other and are never read by a real face.
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.time = SlotAttention(dim, heads, dropout)
        self.frame = SlotAttention(dim, heads, dropout)
        self.space_norm, self.mlp_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.space_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim)
        )

    def forward(
        self, x: torch.Tensor, other_identity: torch.Tensor, other_frame: torch.Tensor
    ) -> torch.Tensor:
        b, f, p, d = x.shape
        x = self.frame(self.time(x, other_identity), other_frame)
        s = x.reshape(b * f, p, d)
        h = self.space_norm(s)
        s = s + self.space_attn(h, h, h, need_weights=False)[0]
        s = s + self.mlp(self.mlp_norm(s))
        return s.reshape(b, f, p, d)


class MintimeNet(nn.Module):
    """Face tokens + size, identity and temporal-position embeddings → divided attention (temporal
    within an identity, across the faces of a frame, spatial within a face) → a CLS query attending
    over every real token → logit.

    Padding slots are masked as keys in every attention that crosses faces (temporal, frame, CLS), so
    whatever a padding slot holds cannot change the output (MINTIME's own loader left padding unmasked).
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
        appearance_dropout: float = 0.5,
    ) -> None:
        super().__init__()
        # Heavy dropout on the face features: a few hundred videos of 49×C tokens are memorised
        # otherwise, and who appears when (identities, sizes, positions) is left unused.
        self.project = nn.Sequential(
            nn.LayerNorm(in_dim), nn.Linear(in_dim, dim), nn.Dropout(appearance_dropout)
        )
        self.size = nn.Embedding(SIZE_BUCKETS, dim)
        self.identity = nn.Embedding(max_identities + 1, dim)
        self.time = nn.Embedding(num_frames * tokens_per_face + 1, dim)
        with torch.no_grad():  # learnable, but starting sinusoidal: near positions start alike
            self.time.weight.copy_(sinusoidal(num_frames * tokens_per_face + 1, dim))
        self.blocks = nn.ModuleList(DividedBlock(dim, heads, dropout) for _ in range(depth))
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pool = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 1))

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        feats = batch["features"].float()  # (B, F, P, C)
        b, f, p, _ = feats.shape
        padding = ~batch["mask"].bool()  # (B, F)
        identity, positions = batch["identity"], batch["positions"]
        x = self.project(feats)
        x = x + self.size(batch["size_bucket"])[:, :, None] + self.identity(identity)[:, :, None]
        x = x + self.time(positions)
        # Slot pairs that may not attend: padding keys always; another identity (temporal attention);
        # another frame (frame attention: faces of one frame share their first temporal position).
        padding_key = padding[:, None, :].expand(b, f, f)
        other_identity = padding_key | (identity[:, :, None] != identity[:, None, :])
        frame = positions[:, :, 0]
        other_frame = padding_key | (frame[:, :, None] != frame[:, None, :])
        for block in self.blocks:
            x = block(x, other_identity, other_frame)
        tokens = x.reshape(b, f * p, -1)
        token_padding = padding[:, :, None].expand(b, f, p).reshape(b, f * p)
        cls = self.cls.expand(b, -1, -1) + self.time.weight[0]
        pooled = self.pool(cls, tokens, tokens, key_padding_mask=token_padding, need_weights=False)[0]
        return self.head(pooled[:, 0] + cls[:, 0]).squeeze(1)


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
