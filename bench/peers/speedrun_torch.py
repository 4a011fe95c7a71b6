"""The `speedrun` preset as a plain PyTorch program: the same network, schedule and batches.

Conv2D 32 5x5 stride 2 ReLU -> Conv2D 64 3x3 stride 2 ReLU -> Flatten -> Dense 128 ReLU ->
Dense 10 softmax; Adam (lr 4e-3, eps 1e-7, fused), the rate rising linearly over the first
100 steps, then cosine decay to zero at the last step (Keras' CosineDecay with warm-up, as the
preset's schedule); batch 128, 3 epochs, inputs scaled to [0, 1], channels last (oneDNN's
fastest layout here). Eager: torch.compile costs more seconds than this whole run takes.
The seed is $SEED (default 0). Usage: python speedrun_torch.py DATA_DIR [epochs]
"""
import math, os, sys, time
import numpy as np
import torch
import torch.nn.functional as F

from mnist_idx import load


d = sys.argv[1]
epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
torch.manual_seed(int(os.environ.get("SEED", "0")))
images = lambda x: torch.from_numpy(x.reshape(-1, 1, 28, 28).astype(np.float32) / 255).to(
    memory_format=torch.channels_last)
labels = lambda y: torch.from_numpy(y.astype(np.int64))
x_train, y_train, x_test, y_test = load(d)
x_train, y_train, x_test, y_test = images(x_train), labels(y_train), images(x_test), labels(y_test)

model = torch.nn.Sequential(
    torch.nn.Conv2d(1, 32, 5, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(32, 64, 3, stride=2), torch.nn.ReLU(),
    torch.nn.Flatten(), torch.nn.Linear(1600, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10),
).to(memory_format=torch.channels_last)
n, bs, warmup = len(x_train), 128, 100
steps = epochs * -(-n // bs)
opt = torch.optim.Adam(model.parameters(), lr=4e-3, eps=1e-7, fused=True)
# Keras' CosineDecay(0, decay_steps, warmup_target=lr, warmup_steps): linear up, then cosine down.
decay = steps - warmup
rate = lambda t: t / warmup if t < warmup else 0.5 * (1 + math.cos(math.pi * min(t - warmup, decay) / decay))
schedule = torch.optim.lr_scheduler.LambdaLR(opt, rate)
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
        schedule.step()
train_s = time.perf_counter() - t
model.eval()
with torch.no_grad():
    acc = (torch.cat([model(x_test[i:i + 1000]) for i in range(0, 10000, 1000)]).argmax(1) == y_test).float().mean().item()
print(f"torch={torch.__version__} epochs={epochs} train_s={train_s:.2f} s_per_epoch={train_s/epochs:.2f} test_acc={acc:.4f}")
