"""The `cnn` preset as a plain PyTorch program, for side-by-side timing.

Random rotation (up to 0.025 turn) and shift (up to 8%) of each training image, bilinear,
zeros outside (affine_grid + grid_sample, on the batch) -> Conv2D 32 3x3 ReLU -> MaxPool 2 ->
Conv2D 64 3x3 ReLU -> MaxPool 2 -> Flatten -> Dropout 0.4 -> Dense 10 softmax; Adam
(lr 2e-3, eps 1e-7) with cosine decay per step, batch 64, inputs scaled to [0, 1].
Usage: python cnn_torch.py DATA_DIR [epochs]
"""
import math, sys, time
import numpy as np
import torch
import torch.nn.functional as F

from mnist_idx import load

d = sys.argv[1]
epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 1
torch.manual_seed(0)
images = lambda x: torch.from_numpy(x.reshape(-1, 1, 28, 28).astype(np.float32) / 255)
labels = lambda y: torch.from_numpy(y.astype(np.int64))
x_train, y_train, x_test, y_test = load(d)
x_train, y_train, x_test, y_test = images(x_train), labels(y_train), images(x_test), labels(y_test)


def augment(x):
    """Each image turned by up to 0.025 turn and shifted by up to 8% (of the [-1, 1] grid: 2 * 0.08)."""
    n = x.shape[0]
    angle = (torch.rand(n) * 2 - 1) * 0.025 * 2 * math.pi
    shift = (torch.rand(n, 2) * 2 - 1) * 0.08 * 2
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


model = torch.nn.Sequential(
    torch.nn.Conv2d(1, 32, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
    torch.nn.Conv2d(32, 64, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
    torch.nn.Flatten(), torch.nn.Dropout(0.4), torch.nn.Linear(1600, 10))
n, bs = len(x_train), 64
steps = epochs * -(-n // bs)
opt = torch.optim.Adam(model.parameters(), lr=2e-3, eps=1e-7, fused=True)
schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
t = time.perf_counter()
for epoch in range(epochs):
    model.train()
    perm = torch.randperm(n)
    for i in range(0, n, bs):
        b = perm[i:i + bs]
        with torch.no_grad():
            x = augment(x_train[b])
        loss = F.cross_entropy(model(x), y_train[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
train_s = time.perf_counter() - t
model.eval()
with torch.no_grad():
    acc = (torch.cat([model(x_test[i:i + 1000]) for i in range(0, 10000, 1000)]).argmax(1) == y_test).float().mean().item()
print(f"torch={torch.__version__} epochs={epochs} train_s={train_s:.2f} s_per_epoch={train_s/epochs:.2f} test_acc={acc:.4f}")
