"""The rMLE attack written plainly in PyTorch (baseline only), timed two ways.

- per image: the authors' script (`inverse_whitebox_CIFAR.py` calls `inverse()` once per image, each a
  [1, 3, 32, 32] variable with its own AMSGrad optimiser);
- batched: all images in one variable, per-image losses summed (the same result, faster on a CPU).

Run by `benchmarks/rmle.py` in a separate virtualenv that has torch; never imported by mijax.
Reads weights, images and target features from an .npz, writes the reconstruction and both times.
"""

import sys
import time

import numpy as np
import torch
import torch.nn.functional as F


def main(inp: str, out: str) -> None:
    torch.set_num_threads(int(np.load(inp)["threads"]))
    d = np.load(inp)
    kernels = [torch.tensor(d[f"kernel{i}"]).permute(3, 2, 0, 1).contiguous() for i in range(4)]  # HWIO→OIHW
    biases = [torch.tensor(d[f"bias{i}"]) for i in range(4)]
    mean = torch.tensor(d["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(d["std"]).view(1, 3, 1, 1)
    z = torch.tensor(d["z"]).permute(0, 3, 1, 2).contiguous()
    steps, lr, tv_weight = int(d["steps"]), float(d["lr"]), float(d["tv_weight"])

    def edge(x):  # conv11 relu conv12 relu pool conv21 relu conv22 relu  (= cut relu22)
        x = F.relu(F.conv2d(x, kernels[0], biases[0], padding=1))
        x = F.max_pool2d(F.relu(F.conv2d(x, kernels[1], biases[1], padding=1)), 2)
        x = F.relu(F.conv2d(x, kernels[2], biases[2], padding=1))
        return F.relu(F.conv2d(x, kernels[3], biases[3], padding=1))

    def tv(x):  # the authors' TV, per image: mean squared vertical + horizontal differences
        dv = (x[:, :, 1:, :] - x[:, :, :-1, :]) ** 2
        dh = (x[:, :, :, 1:] - x[:, :, :, :-1]) ** 2
        return dv.flatten(1).mean(1) + dh.flatten(1).mean(1)

    def run(z, n):
        u = torch.zeros(z.shape[0], 3, 32, 32, requires_grad=True)
        opt = torch.optim.Adam([u], lr=lr, amsgrad=True, eps=1e-3)
        for _ in range(n):
            opt.zero_grad()
            feat = ((edge(u) - z) ** 2).flatten(1).mean(1)
            (feat + tv_weight * tv(u)).sum().backward()  # per-image losses: each image its own gradient
            opt.step()
        return u.detach()

    run(z[:1], 2)  # warm-up
    start = time.perf_counter()
    # The authors' script: one image at a time, as `inverse()` is called once per image.
    u = torch.cat([run(z[i:i + 1], steps) for i in range(z.shape[0])])
    per_image_seconds = time.perf_counter() - start
    run(z, 2)
    start = time.perf_counter()
    batched = run(z, steps)  # all images in one variable
    seconds = time.perf_counter() - start
    batch_gap = float((u - batched).abs().max())
    x_hat = (u * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.savez(out, x_hat=x_hat, seconds=seconds, per_image_seconds=per_image_seconds,
             batch_gap=batch_gap)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
