"""Regenerate weights/tinynet.pth (deterministic). Run: python make_weights.py"""

import os

import torch
import yaml

from tinynet import TinyNet

here = os.path.dirname(os.path.abspath(__file__))
torch.manual_seed(0)
with open(os.path.join(here, "config.yaml")) as f:
    model = TinyNet(**yaml.safe_load(f))
# Give BatchNorm non-trivial running statistics, as a trained model has.
model.train()
with torch.no_grad():
    for _ in range(4):
        model(torch.randn(8, 3, 32, 32))
torch.save(model.state_dict(), os.path.join(here, "weights", "tinynet.pth"))
