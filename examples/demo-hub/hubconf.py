"""safehub's demo hub repo: a tiny image classifier with weights stored in the repo.

It looks like a real torch.hub repo on purpose: its own model class with a custom
forward, a non-torch dependency (PyYAML, declared by import name), a config file,
and a pickled checkpoint that only ever gets unpickled inside the sandbox.
"""

dependencies = ["torch", "yaml"]

import os

import torch
import yaml

from tinynet import TinyNet

_HERE = os.path.dirname(os.path.abspath(__file__))


def tinynet(pretrained=True, num_classes=None):
    """TinyNet: a 3-stage residual CNN for 32x32 RGB images.

    Args:
        pretrained (bool): load the weights shipped in weights/tinynet.pth.
        num_classes (int): override the number of classes in config.yaml
            (the classifier is then freshly initialised).
    """
    with open(os.path.join(_HERE, "config.yaml")) as f:
        cfg = yaml.safe_load(f)
    if num_classes is not None:
        cfg["num_classes"] = num_classes
    model = TinyNet(**cfg)
    if pretrained:
        # A pickle, as most real hub repos ship. safehub unpickles it inside the sandbox only.
        state = torch.load(os.path.join(_HERE, "weights", "tinynet.pth"), weights_only=True)
        if num_classes is not None:
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
        model.load_state_dict(state, strict=num_classes is None)
    model.eval()
    return model


# safehub convention: example inputs for entrypoints that need torch.export.
def tinynet_example_inputs():
    return (torch.randn(2, 3, 32, 32),)
