"""CEM's loss and per-class k-means written in PyTorch the way the authors' code runs them (baseline).

Run by `benchmarks/cem.py` in a separate virtualenv that has torch; never imported by mijax. Ports
`MIA_train.compute_class_means` (Python loops over the classes and clusters of a batch, host-side
argmin) and `MIA_train.kmeans_cuda` (one class at a time, boolean-mask centroid updates) from
xiasong0501/CEM (`model_training_paral_pruning.py`), on CPU. Reads its inputs from an .npz and
writes the results and the times to another.

    python benchmarks/torch_cem.py IN.npz OUT.npz
"""

import sys
import time

import numpy as np
import torch
import torch.nn.functional as F


def compute_class_means(features, labels, centroids_list, weights_list, variances_list, *, sigma,
                        var_threshold, class_length, log_entropy=1):
    """The reference's per-batch loss, as written (with its class-indexing quirk, `cem.md` §7)."""
    sorted_indices = torch.argsort(labels)
    sorted_labels = labels[sorted_indices]
    sorted_features = features[sorted_indices]
    unique_labels = torch.unique(labels).cpu().numpy()
    sorted_labels = sorted_labels.cpu().numpy()
    n, d = sorted_features.shape[0], sorted_features[0].numel()
    flat = sorted_features.view(n, d)
    label_indices = torch.tensor(sorted_labels).long()
    centroids_all = torch.stack([centroids_list[label] for label in label_indices], dim=0)
    weights_all = torch.stack([weights_list[label] for label in label_indices], dim=0)
    variances_all = torch.stack([variances_list[label] for label in label_indices], dim=0)
    distances = torch.cdist(flat.unsqueeze(1), centroids_all, p=2)
    distances = distances.squeeze(1).detach().cpu().numpy()
    assignments = np.argmin(distances, axis=1)
    nearest = centroids_all[torch.arange(n), assignments]
    variance_matrix = (flat - nearest) ** 2
    total, current, lb_count = 0, 0, 0
    for i in unique_labels:
        weights_label, variance_label = weights_all[lb_count], variances_all[lb_count]
        lb_count += 1
        start = current
        while current < len(sorted_labels) and sorted_labels[current] == i:
            current += 1
        class_variance = variance_matrix[start:current]
        cluster_assignments = assignments[start:current]
        order = np.argsort(cluster_assignments)
        sorted_assignments = cluster_assignments[order]
        sorted_variance = class_variance[order]
        class_total, cluster_current = 0, 0
        for j in np.unique(sorted_assignments):
            cluster_start = cluster_current
            while cluster_current < len(sorted_assignments) and sorted_assignments[cluster_current] == j:
                cluster_current += 1
            weight, variance = weights_label[j], variance_label[j]
            num_samples = cluster_current - cluster_start
            var_lambda = num_samples / (weight * class_length) * 10
            if var_lambda >= 1:
                var_lambda = 0.99
            v = torch.mean(sorted_variance[cluster_start:cluster_current])
            v = var_lambda * v + (1 - var_lambda) * variance
            if log_entropy == 0:
                term = (v + 0.001).mean() * weight
            else:
                gamma = 0.01
                term = F.relu(torch.log(v + gamma) - torch.log(var_threshold * torch.tensor(sigma**2) + gamma)).mean() * weight
            class_total = class_total + term
        total = total + class_total
    return total / len(unique_labels)


def kmeans_cuda(x, num_clusters, centroids, num_iterations=50, early_stop=True, covariances=True):
    """The reference's `kmeans_cuda` for one class, warm-started (no k-means++)."""
    n = x.shape[0]
    x_flat = x.reshape(n, -1)
    labels = torch.zeros(n, dtype=torch.long)
    iterations = 0
    for _ in range(num_iterations):
        iterations += 1
        distances = torch.cdist(x_flat, centroids)
        new_labels = distances.argmin(dim=1)
        if early_stop and torch.equal(labels, new_labels):
            break
        labels = new_labels
        for i in torch.unique(labels):
            centroids[i] = x_flat[labels == i].mean(dim=0)
    unique = torch.unique(labels)
    cluster_variances = torch.tensor([((x_flat[labels == i] - centroids[i]) ** 2).mean() for i in unique])
    cluster_covariances, cluster_weights = [], []
    for i in unique:
        cluster_data = x_flat[labels == i]
        if cluster_data.size(0) > 1:
            if covariances:  # the reference computes them on every refit (used every 10 epochs)
                mean = cluster_data.mean(dim=0)
                cluster_covariances.append(torch.mm((cluster_data - mean).t(), cluster_data - mean)
                                           / (cluster_data.size(0) - 1))
            cluster_weights.append(torch.tensor(cluster_data.size(0) / n))
    cluster_weights = torch.stack(cluster_weights)
    if cluster_variances.size(0) < centroids.size(0):
        extra = centroids.size(0) - cluster_variances.size(0)
        cluster_variances = torch.cat([cluster_variances, cluster_variances[-1].repeat(extra)])
    if cluster_weights.size(0) < centroids.size(0):
        extra = centroids.size(0) - cluster_weights.size(0)
        cluster_weights = torch.cat([cluster_weights, torch.full((extra,), 0.01)])
    return centroids, cluster_variances, cluster_weights, labels, iterations


def fit_all(z_all, label_all, init, num_classes, num_iterations, early_stop, covariances):
    """The reference's per-epoch refit: a Python loop over classes."""
    means, variances, weights, iterations = [], [], [], []
    for c in range(num_classes):
        class_features = z_all[label_all == c]
        out = kmeans_cuda(class_features, init.shape[1], init[c].clone(), num_iterations, early_stop,
                          covariances)
        means.append(out[0]), variances.append(out[1]), weights.append(out[2]), iterations.append(out[4])
    return torch.stack(means), torch.stack(variances), torch.stack(weights), iterations


def _best(fn, repeats, warm_up=True):
    """Best wall-clock and best process CPU time over `repeats` runs."""
    if warm_up:
        fn()
    wall = cpu = float("inf")
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = fn()
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return out, (wall, cpu)


def main(inp: str, out: str) -> None:
    d = np.load(inp)
    torch.set_num_threads(int(d["threads"]))
    results = {}
    if "z" in d:  # (1) loss + gradient
        z = torch.tensor(d["z"])
        labels = torch.tensor(d["labels"]).long()
        means, weights, variances = (torch.tensor(d[k]) for k in ("means", "weights", "variances"))
        centroids_list, weights_list, variances_list = list(means), list(weights), list(variances)

        def step():
            zz = z.clone().requires_grad_(True)
            loss = compute_class_means(zz, labels, centroids_list, weights_list, variances_list,
                                       sigma=float(d["sigma"]), var_threshold=float(d["tau"]),
                                       class_length=float(d["samples_per_class"]))
            loss.backward()
            return loss.detach().numpy(), zz.grad.numpy()

        (loss, grad), seconds = _best(step, int(d["loss_repeats"]))
        results.update(loss=loss, grad=grad, loss_seconds=seconds)
    if "features" in d:  # (2) mixture fit
        features = torch.tensor(d["features"])
        labels = torch.tensor(d["feature_labels"]).long()
        init = torch.tensor(d["init"])
        for name, early_stop, covariances in [("fit", False, False), ("fit_cov", False, True),
                                              ("fit_early", True, False)]:
            (m, v, w, iters), seconds = _best(
                lambda: fit_all(features, labels, init, init.shape[0], int(d["num_iters"]), early_stop,
                                covariances), int(d["fit_repeats"]), warm_up=False)
            results.update({f"{name}_seconds": seconds, f"{name}_iterations": np.array(iters),
                            f"{name}_means": m.numpy(), f"{name}_variances": v.numpy(),
                            f"{name}_weights": w.numpy()})
    np.savez(out, **results)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
