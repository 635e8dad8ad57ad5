"""OPT's first MLP projection and its ReLU as one GEMM, during the decoder's steps.

OPT's layer writes fc1's [rows, ffn] output, then ReLU reads it and writes it again: at the
Shumailov shape 12 KB of a row-step's 3 MB per layer. torch's `_addmm_activation` applies the
ReLU in the GEMM's epilogue (cuBLASLt on CUDA), so the activation is written once. The tokens are
the same: ReLU commutes with rounding to the output dtype, and on the CPU it is the same addmm
followed by an in-place ReLU. GPT-2's tanh-GELU and Llama's gated SiLU have no exact epilogue.
"""

from __future__ import annotations

import contextlib

import torch


class LinearReLU(torch.nn.Module):
    """relu(linear(x)) for a 2-D x, in one op."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch._addmm_activation(self.linear.bias, x, self.linear.weight.t())


def fusable(layer: torch.nn.Module) -> bool:
    """An OPT decoder layer whose fc1 has a bias and is followed by a ReLU (OPT reshapes its input to 2-D)."""
    fc1 = getattr(layer, "fc1", None)
    return (isinstance(fc1, torch.nn.Linear) and fc1.bias is not None
            and isinstance(getattr(layer, "activation_fn", None), torch.nn.ReLU))


@contextlib.contextmanager
def relu_in_gemm(model: torch.nn.Module):
    """Inside, each fusable layer's fc1 applies its ReLU and the layer's own ReLU is the identity."""
    layers = [layer for layer in model.modules() if fusable(layer)]
    swapped = [(layer.fc1, layer.activation_fn) for layer in layers]
    try:
        for layer, (fc1, _) in zip(layers, swapped):
            layer.fc1, layer.activation_fn = LinearReLU(fc1), torch.nn.Identity()
        yield
    finally:
        for layer, (fc1, activation) in zip(layers, swapped):
            layer.fc1, layer.activation_fn = fc1, activation
