"""A hub repo of small test models for the return channel (safehub's own tests).

Each entrypoint returns a small model exercising one thing the exporter must
carry. Example inputs are declared with the safehub convention: a module-level
dict ``example_inputs`` mapping entrypoint names to a zero-argument callable
returning a tuple of forward arguments (see docs/architecture-format.md).
"""

dependencies = ["torch"]

import torch  # noqa: E402
from torch import nn  # noqa: E402

from zoo_fxfail import GANWrapper, IterProxy, LenOfTensor, ScalarArg, ScriptHelper, SizeBranch  # noqa: E402
from zoo_models import (  # noqa: E402
    CNN,
    DataDependent,
    DictOutput,
    Encoder,
    Functional,
    MobileNetish,
    NonPersistent,
    RecurrentNet,
    Seq2Seq,
    SharedBlock,
    StochasticDepthNet,
    SwinShuffle,
    TiedLM,
    TransformerBlock,
    TupleOutput,
    UNet,
    Unnameable,
    ViT,
    WeightNormNet,
)


def resnet(pretrained=False, num_classes=10):
    """ResNet-style CNN: residual adds, BatchNorm, custom forward."""
    torch.manual_seed(0)
    return CNN(num_classes=num_classes)


def mobilenet():
    """MobileNet-style depthwise separable blocks."""
    torch.manual_seed(1)
    return MobileNetish()


def unet():
    """UNet with skip concatenation."""
    torch.manual_seed(2)
    return UNet()


def vit():
    """ViT with class token and positional embedding."""
    torch.manual_seed(3)
    return ViT()


def swin():
    """Swin-like window partition / shuffle."""
    torch.manual_seed(4)
    return SwinShuffle()


def transformer():
    """Transformer block with nn.MultiheadAttention and LayerNorm."""
    torch.manual_seed(5)
    return TransformerBlock()


def recurrent():
    """LSTM + GRU."""
    torch.manual_seed(6)
    return RecurrentNet()


def tied():
    """Embedding and output head share one weight."""
    torch.manual_seed(7)
    return TiedLM()


def shared():
    """One submodule object used twice."""
    torch.manual_seed(8)
    return SharedBlock()


def nonpersistent():
    """Non-persistent buffers and a plain tensor attribute."""
    torch.manual_seed(9)
    return NonPersistent()


def weightnorm():
    """weight_norm parametrization."""
    torch.manual_seed(10)
    return WeightNormNet()


def dict_output():
    """forward returns a dict."""
    torch.manual_seed(11)
    return DictOutput()


def tuple_output():
    """forward returns a tuple."""
    torch.manual_seed(12)
    return TupleOutput()


def data_dependent():
    """Shape-dependent Python control flow: fx cannot trace it."""
    torch.manual_seed(13)
    return DataDependent()


def functional():
    """Functional ops and tensor methods."""
    torch.manual_seed(14)
    return Functional()


def stochastic_depth():
    """Dropout and stochastic depth: the train graph differs from the eval graph."""
    torch.manual_seed(15)
    return StochasticDepthNet()


def pair():
    """A tuple of modules (e.g. model + postprocessor)."""
    torch.manual_seed(16)
    return CNN(num_classes=4), nn.Sequential(nn.Linear(4, 2), nn.Softmax(dim=-1))


def separator():
    """A dict of modules (open-unmix style), nested with a list."""
    torch.manual_seed(17)
    return {"vocals": MobileNetish(), "others": [nn.Linear(3, 3), nn.Linear(3, 3)]}


def plain_function():
    """Returns a plain function: not exportable."""
    return lambda x: x + 1


def aten_cnn():
    """The ResNet-style CNN, to be exported with mode='aten'."""
    torch.manual_seed(0)
    return CNN(num_classes=10)


def unnameable():
    """Uses torch.Tensor.add as a function: fx cannot name it, aten mode carries it."""
    torch.manual_seed(18)
    return Unnameable()


def scripted():
    """A TorchScript module: not exportable."""
    return torch.jit.script(nn.Linear(2, 2))


def encoder():
    """nn.TransformerEncoder: encoder layers are leaves."""
    torch.manual_seed(19)
    return Encoder()


def seq2seq():
    """nn.Transformer with two inputs: carried by aten mode from declared example inputs."""
    torch.manual_seed(20)
    return Seq2Seq()


def size_branch():
    """fx fails: Python control flow on sizes (exported at the first forward)."""
    torch.manual_seed(21)
    return SizeBranch()


def len_of_tensor():
    """fx fails: len() of a tensor."""
    torch.manual_seed(22)
    return LenOfTensor()


def iter_proxy():
    """fx fails: iterating over a tensor."""
    torch.manual_seed(23)
    return IterProxy()


def script_helper():
    """fx fails: a TorchScript function inside forward."""
    torch.manual_seed(24)
    return ScriptHelper()


def scalar_arg():
    """fx fails: a Python int argument drives a loop."""
    torch.manual_seed(25)
    return ScalarArg()


def gan():
    """Returns a wrapper object whose attributes hold modules."""
    torch.manual_seed(26)
    return GANWrapper()


example_inputs = {
    "seq2seq": lambda: (torch.randn(2, 5, 16), torch.randn(2, 4, 16)),
    "unnameable": lambda: (torch.randn(3, 4),),
    "data_dependent": lambda: (torch.randn(2, 3, 20),),
    "aten_cnn": lambda: (torch.randn(2, 3, 16, 16),),
}
