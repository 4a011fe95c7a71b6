"""The `cnn` preset's network as a plain PyTorch program, for side-by-side timing.

The Keras "simple MNIST convnet": Conv2D 32 3x3 ReLU -> MaxPool 2 -> Conv2D 64 3x3 ReLU ->
MaxPool 2 -> Flatten -> Dropout 0.5 -> Dense 10 softmax; Adam (lr 1e-3, eps 1e-7),
batch 128, inputs scaled to [0, 1]. Usage: python cnn_torch.py DATA_DIR [epochs]
"""
import gzip, sys, time
import numpy as np
import torch
import torch.nn.functional as F


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


d = sys.argv[1]
epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 1
torch.manual_seed(0)
x_train = torch.from_numpy(idx(f"{d}/train-images-idx3-ubyte.gz").reshape(-1, 1, 28, 28).astype(np.float32) / 255)
y_train = torch.from_numpy(idx(f"{d}/train-labels-idx1-ubyte.gz").astype(np.int64))
x_test = torch.from_numpy(idx(f"{d}/t10k-images-idx3-ubyte.gz").reshape(-1, 1, 28, 28).astype(np.float32) / 255)
y_test = torch.from_numpy(idx(f"{d}/t10k-labels-idx1-ubyte.gz").astype(np.int64))

model = torch.nn.Sequential(
    torch.nn.Conv2d(1, 32, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
    torch.nn.Conv2d(32, 64, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
    torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(1600, 10))
opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7, fused=True)
n, bs = len(x_train), 128
t = time.perf_counter()
for epoch in range(epochs):
    model.train()
    perm = torch.randperm(n)
    for i in range(0, n, bs):
        b = perm[i:i + bs]
        loss = F.cross_entropy(model(x_train[b]), y_train[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
train_s = time.perf_counter() - t
model.eval()
with torch.no_grad():
    acc = (torch.cat([model(x_test[i:i + 1000]) for i in range(0, 10000, 1000)]).argmax(1) == y_test).float().mean().item()
print(f"torch={torch.__version__} epochs={epochs} train_s={train_s:.2f} s_per_epoch={train_s/epochs:.2f} test_acc={acc:.4f}")
