"""The `vgg11_bn_sgm` training step in plain PyTorch, eager, as the CEM code runs it (baseline only).

Run by `benchmarks/vgg_step.py` in a separate virtualenv that has torch; never imported by mijax.
The step includes CEM's term λ·L_CEM (λ = 8) computed by the authors' loop-based
`compute_class_means` (`benchmarks/torch_cem.py`) on a fixed random mixture (10 classes, K = 5).
Usage: `torch_vgg_step.py BATCH THREADS`, then one number N per line on stdin: runs N timed steps
and answers with their times in seconds, one line of space-separated floats (so the caller can
interleave rounds of both frameworks on a noisy machine). Warm-up steps run before the first round.
"""

import sys
import time

import numpy as np
import torch
from torch import nn

from torch_cem import compute_class_means

CFG = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


def vgg11_bn_sgm(cut: int = 4, num_classes: int = 10) -> nn.Module:
    client, server, width = [], [], 3
    for index, entry in enumerate(CFG, start=1):
        part = client if index <= cut else server
        if entry == "M":
            part.append(nn.MaxPool2d(2, 2))
        else:
            part += [nn.Conv2d(width, entry, 3, padding=1), nn.BatchNorm2d(entry), nn.ReLU(inplace=True)]
            width = entry
        if index == cut:
            client += [nn.Conv2d(width, 8, 3, padding=1), nn.Sigmoid()]
            server.append(nn.Conv2d(8, width, 3, padding=1))
    classifier = [nn.Dropout(), nn.Linear(512, 512), nn.ReLU(True), nn.Dropout(), nn.Linear(512, 512),
                  nn.ReLU(True), nn.Linear(512, num_classes)]
    return nn.Sequential(*client), nn.Sequential(*server, nn.Flatten(), *classifier)


def main(batch: int, threads: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    client, server = vgg11_bn_sgm()
    params = list(client.parameters()) + list(server.parameters())
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
    criterion = nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.247, 0.243, 0.261]).view(1, 3, 1, 1)
    images = torch.tensor(rng.uniform(size=(batch, 3, 32, 32)), dtype=torch.float32)
    labels = torch.tensor(rng.integers(0, 10, batch))
    client.train(), server.train()
    generator = torch.Generator().manual_seed(0)
    centroids = [torch.rand(5, 512, generator=generator) for _ in range(10)]
    weights = [torch.full((5,), 0.2) for _ in range(10)]
    variances = [torch.full((5,), 0.01) for _ in range(10)]

    def step():
        optimizer.zero_grad()
        z = client((images - mean) / std)
        logits = server(z + 0.1 * torch.randn_like(z))
        cem = compute_class_means(z, labels, centroids, weights, variances, sigma=0.1, var_threshold=0.125,
                                  class_length=5000)
        loss = criterion(logits, labels) + 8.0 * cem
        loss.backward()
        optimizer.step()
        return loss

    for _ in range(2):  # warm-up
        step()
    print("ready", flush=True)
    for line in sys.stdin:
        times = []
        for _ in range(int(line)):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        print(" ".join(f"{t:.6f}" for t in times), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
