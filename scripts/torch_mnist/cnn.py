"""A user's own PyTorch network, in their own module: nothing here is part of ``lca``.

The recorder's ``model_fn="cnn:build"`` names :func:`build`, which ``lca allocate`` calls to
build the network again (nothing of the model is pickled into the run): keep it
deterministic, returning the same architecture for the same arguments.
"""

from torch import nn


class SmallCNN(nn.Module):
    """conv 3×3 → ReLU → max-pool → conv 3×3 → ReLU → max-pool → dropout → dense → dense.

    Inputs are (N, 1, H, W) images, outputs logits. The dropout is on while training and off
    when LCA evaluates the loss (evaluation mode).
    """

    def __init__(self, channels=(8, 16), hidden: int = 32, classes: int = 10, size: int = 28):
        super().__init__()
        c1, c2 = channels
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout(0.25)
        self.fc1 = nn.Linear(c2 * (size // 4) ** 2, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x):
        x = self.pool(self.conv1(x).relu())
        x = self.pool(self.conv2(x).relu())
        x = self.dropout(x.flatten(1))
        return self.fc2(self.fc1(x).relu())


def build(channels=(8, 16), hidden: int = 32, classes: int = 10, size: int = 28) -> nn.Module:
    """The network ``model_fn="cnn:build"`` names (``model_kwargs`` are its arguments)."""
    return SmallCNN(tuple(channels), hidden, classes, size)
