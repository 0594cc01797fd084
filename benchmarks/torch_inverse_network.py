"""He et al.'s ReLU22 inverse network trained plainly in PyTorch, as the authors' code does (baseline only).

Run by `benchmarks/inverse_network.py` in a separate virtualenv that has torch; never imported by mijax.
Reads features, normalised targets, the initial decoder weights and the batch order from an .npz;
writes the steady-state time per step, the output of the initial decoder on the first batch, and
the final weights.
"""

import sys
import time

import numpy as np
import torch


def main(inp: str, out: str) -> None:
    d = np.load(inp)
    torch.set_num_threads(int(d["threads"]))
    z = torch.tensor(d["z"]).permute(0, 3, 1, 2).contiguous()            # NHWC → NCHW
    target = torch.tensor(d["target"]).permute(0, 3, 1, 2).contiguous()
    order = torch.tensor(d["order"]).long()                               # [steps, batch]
    steps_per_epoch, halve_every = int(d["steps_per_epoch"]), int(d["halve_every"])

    decoder = torch.nn.Sequential(  # CIFAR10CNNDecoderReLU22 of the authors' net.py
        torch.nn.ConvTranspose2d(128, 64, 3, stride=2, padding=1, output_padding=1), torch.nn.ReLU(),
        torch.nn.ConvTranspose2d(64, 3, 3, padding=1))
    with torch.no_grad():
        for i, layer in ((0, decoder[0]), (1, decoder[2])):               # [k, k, in, out] → [in, out, k, k]
            layer.weight.copy_(torch.tensor(d[f"kernel{i}"]).permute(2, 3, 0, 1))
            layer.bias.copy_(torch.tensor(d[f"bias{i}"]))
        first = decoder(z[order[0]]).permute(0, 2, 3, 1).numpy()

    lr = float(d["lr"])
    optimizer = torch.optim.Adam(decoder.parameters(), lr=lr, eps=float(d["eps"]), amsgrad=True)
    loss_fn = torch.nn.MSELoss()
    start = None
    for t, batch in enumerate(order):
        if t == 1:
            start = time.perf_counter()                                    # step 0 is the warm-up
        optimizer.zero_grad()
        loss = loss_fn(decoder(z[batch]), target[batch])
        loss.backward()
        optimizer.step()
        if (t + 1) % (halve_every * steps_per_epoch) == 0:                  # lr /= 2 every 10 epochs
            lr /= 2
            for group in optimizer.param_groups:
                group["lr"] = lr
    seconds_per_step = (time.perf_counter() - start) / (len(order) - 1)
    np.savez(out, seconds_per_step=seconds_per_step, first=first, final_loss=float(loss.detach()),
             kernel0=decoder[0].weight.detach().permute(2, 3, 0, 1).numpy(),
             kernel1=decoder[2].weight.detach().permute(2, 3, 0, 1).numpy())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
