"""Sequence students for 1-D signals such as MNIST-1D: a GRU and a small Transformer encoder.

Both read the signal as a sequence of tokens instead of through convolutions, so a CNN teacher
distilling into them is a cross-architecture pair. A token is `patch_size` consecutive samples
of every channel, `patch_size * channels` features in all.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from distill.errors import ConfigError
from distill.validate import require_bool, require_fraction, require_int, require_ints


def _sequence_shape(input_shape: Sequence[int]) -> tuple[int, int]:
    """`(channels, length)` from `input_shape`, where `(length,)` means one channel."""
    shape = require_ints("input_shape", input_shape, lengths=(1, 2))
    return (shape[0], shape[1]) if len(shape) == 2 else (1, shape[0])


def _patch_size(value: int, length: int) -> int:
    patch_size = require_int("patch_size", value, minimum=1)
    if length % patch_size:
        raise ConfigError("patch_size", value, f"an integer >= 1 that divides the length {length}")
    return patch_size


def _tokens(x: Tensor, num_tokens: int, token_features: int) -> Tensor:
    """`(batch, length)` or `(batch, channels, length)` → `(batch, num_tokens, token_features)`."""
    if x.dim() == 2:
        x = x.unsqueeze(1)
    # Channels last, so that one token holds patch_size whole time steps, every channel of each.
    return x.transpose(1, 2).reshape(x.shape[0], num_tokens, token_features)


class GRUClassifier(nn.Module):
    """GRU over the signal's time axis; the last hidden state feeds a Linear head.

    The gated recurrent unit of Cho et al. 2014 ("Learning phrase representations using RNN
    encoder-decoder for statistical machine translation"). Greydanus 2020 ("Scaling down deep
    learning") reports a GRU at roughly 87-91% test accuracy on MNIST-1D.
    Module names: the recurrent stack is `gru` (an `nn.GRU`, batch first), the head `classifier`.

    Args:
        input_shape: `(channels, length)` of one example, or `(length,)` for one channel.
        num_classes: number of output logits.
        hidden_size: GRU state width per direction.
        num_layers: stacked GRU layers.
        bidirectional: also run the sequence backwards; the head then sees both final states.
        patch_size: consecutive samples per time step; must divide the length. 1 reads the
            signal sample by sample; larger values shorten the sequence the GRU unrolls over.

    Inputs may be `(batch, channels, length)`, or `(batch, length)` for single-channel data.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 40),
        num_classes: int = 10,
        hidden_size: int = 64,
        num_layers: int = 1,
        bidirectional: bool = False,
        patch_size: int = 1,
    ) -> None:
        super().__init__()
        self.input_shape = _sequence_shape(input_shape)
        self.num_classes = require_int("num_classes", num_classes, minimum=1)
        hidden_size = require_int("hidden_size", hidden_size, minimum=1)
        num_layers = require_int("num_layers", num_layers, minimum=1)
        bidirectional = require_bool("bidirectional", bidirectional)
        channels, length = self.input_shape
        self.patch_size = _patch_size(patch_size, length)

        self.num_tokens = length // self.patch_size
        self.token_features = channels * self.patch_size
        self.num_directions = 2 if bidirectional else 1
        self.gru = nn.GRU(
            self.token_features,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
        )
        self.classifier = nn.Linear(self.num_directions * hidden_size, self.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Map `(batch, length)` or `(batch, channels, length)` to logits `(batch, num_classes)`."""
        tokens = _tokens(x, self.num_tokens, self.token_features)
        _, final_states = self.gru(tokens)  # (num_layers * directions, batch, hidden)
        # The last layer's states, forward then backward: the backward one has read the whole
        # sequence from the end, so it is as complete a summary as the forward one.
        last_layer = final_states[-self.num_directions :].transpose(0, 1)
        return self.classifier(last_layer.flatten(1))


class TransformerClassifier(nn.Module):
    """Pre-norm Transformer encoder over patch tokens, mean-pooled into a Linear head.

    The encoder is that of Vaswani et al. 2017 ("Attention is all you need") with the pre-norm
    layout; tokens are non-overlapping patches linearly embedded with a learned position
    embedding, as in ViT (Dosovitskiy et al. 2021, "An image is worth 16x16 words"), here of a
    1-D signal. There is no [CLS] token: the normalised tokens are averaged instead.
    Module names: `embed` (Linear, patch → d_model), parameter `position` of shape
    `(1, tokens, d_model)`, `encoder` (its blocks are `encoder.layers.{i}`), the final LayerNorm
    `norm` and the head `classifier`.

    Args:
        input_shape: `(channels, length)` of one example, or `(length,)` for one channel.
        num_classes: number of output logits.
        d_model: token width.
        num_heads: attention heads; must divide `d_model`.
        num_layers: encoder blocks.
        dim_feedforward: hidden width of each block's MLP.
        patch_size: consecutive samples per token; must divide the length (40 / 4 = 10 tokens).
        dropout: dropout probability inside the encoder blocks, in [0, 1).

    Inputs may be `(batch, channels, length)`, or `(batch, length)` for single-channel data.
    The forward pass has no branch on the batch size, so it exports with a dynamic batch.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 40),
        num_classes: int = 10,
        d_model: int = 32,
        num_heads: int = 4,
        num_layers: int = 2,
        dim_feedforward: int = 64,
        patch_size: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.input_shape = _sequence_shape(input_shape)
        self.num_classes = require_int("num_classes", num_classes, minimum=1)
        d_model = require_int("d_model", d_model, minimum=1)
        num_heads = require_int("num_heads", num_heads, minimum=1)
        if d_model % num_heads:
            raise ConfigError(
                "num_heads", num_heads, f"an integer >= 1 that divides d_model={d_model}"
            )
        num_layers = require_int("num_layers", num_layers, minimum=1)
        dim_feedforward = require_int("dim_feedforward", dim_feedforward, minimum=1)
        dropout = require_fraction("dropout", dropout)
        channels, length = self.input_shape
        self.patch_size = _patch_size(patch_size, length)

        self.num_tokens = length // self.patch_size
        self.token_features = channels * self.patch_size
        self.embed = nn.Linear(self.token_features, d_model)
        # Small random start (ViT uses std 0.02) so that positions are told apart from step one.
        self.position = nn.Parameter(torch.empty(1, self.num_tokens, d_model))
        nn.init.trunc_normal_(self.position, std=0.02)
        block = nn.TransformerEncoderLayer(
            d_model,
            num_heads,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # Nested tensors only help with padding masks, and are unsupported with norm_first.
        self.encoder = nn.TransformerEncoder(block, num_layers, enable_nested_tensor=False)
        # Pre-norm blocks leave the residual stream unnormalised; this LayerNorm closes it.
        self.norm = nn.LayerNorm(d_model)
        self.classifier = nn.Linear(d_model, self.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Map `(batch, length)` or `(batch, channels, length)` to logits `(batch, num_classes)`."""
        tokens = self.embed(_tokens(x, self.num_tokens, self.token_features)) + self.position
        encoded = self.norm(self.encoder(tokens))
        return self.classifier(encoded.mean(dim=1))
