"""mijax.metrics' siftfunnel compatibility mode against NumPy/SciPy references."""

import jax
import numpy as np
from scipy import ndimage

from mijax import metrics


def ssim3d_reference(a, b):
    """3-D SSIM over (batch, H, W) per channel: an 11³ Gaussian window (σ 1.5), zero padding 5."""
    t = np.arange(11) - 5
    g = np.exp(-0.5 * (t / 1.5) ** 2)
    g /= g.sum()
    w = g[:, None, None] * g[None, :, None] * g[None, None, :]
    out = []
    for c in range(a.shape[-1]):
        x, y = a[..., c].astype(np.float64), b[..., c].astype(np.float64)
        f = lambda v: ndimage.correlate(v, w, mode="constant", cval=0.0)
        mx, my = f(x), f(y)
        vx, vy, cxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
        c1, c2 = 0.01 ** 2, 0.03 ** 2
        out.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return np.mean(out)


def test_siftfunnel_mode_matches_references():
    x = np.asarray(jax.random.uniform(jax.random.key(0), (40, 12, 12, 2)))
    x_hat = np.clip(x + 0.1 * np.asarray(jax.random.normal(jax.random.key(1), x.shape)), 0, 1)
    out = metrics.siftfunnel_metrics(x_hat, x, batch_size=32)
    batches = [(x_hat[:32], x[:32]), (x_hat[32:], x[32:])]
    mse = np.mean([np.sum((a - b) ** 2) / (len(b) * 12 * 12) for a, b in batches])        # channels summed
    psnr = np.mean([20 * np.log10(1 / np.sqrt(np.mean((a - b) ** 2))) for a, b in batches])
    ssim = np.mean([ssim3d_reference(a, b) for a, b in batches])
    cos = np.mean([np.dot(a.ravel(), b.ravel()) / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(x_hat, x)])
    np.testing.assert_allclose([out["mse"], out["psnr"], out["ssim"], out["cosine"]], [mse, psnr, ssim, cos],
                               rtol=1e-4)
    np.testing.assert_allclose(metrics.ssim_3d(x, x), 1.0, rtol=1e-5)
