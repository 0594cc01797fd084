"""Test accuracy of the funnel CNN (or Classifier_4) on the 256 smoke targets during plain cross-entropy
training at the smoke budget, after every dispatch (RESULTS.md, SiftFunnel):

    MIJAX_DATA_DIR=../shared/data python experiments/siftfunnel_lr_curve.py funnel 0.01 20
"""
import sys, time, jax, jax.numpy as jnp, numpy as np, optax
from mijax_experiments import siftfunnel
from mijax.models import pv4_classifier_4, classifier_4
from mijax.optim import torch_amsgrad
from mijax.train import fit
config = siftfunnel.get_config("smoke")
(x, y), _, (t, tl) = siftfunnel._load(config)
which, lr, epochs = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
f = (pv4_classifier_4 if which == "funnel" else classifier_4)(image_size=64, width=16)
net = f.network
def acc(variables, imgs, labels, train=False):
    out, _, _ = net.apply_tapped(variables, f.normalization.normalize(imgs), train=train, key=jax.random.key(3), taps=())
    p = np.asarray(out).argmax(-1)
    return float((p == np.asarray(labels)).mean()), int(np.bincount(p, minlength=10).max())
def cb(epoch, st):  # called after every dispatch; `epoch` is the step
    print(which, lr, "step", epoch, "test eval", acc(st.variables, t, tl), "test train-mode", acc(st.variables, t, tl, True), "train-set eval", acc(st.variables, x[:512], y[:512]), flush=True)
opt = optax.chain(optax.add_decayed_weights(config.weight_decay), torch_amsgrad(lr, b1=0.5, b2=0.999))
st = fit(f, x, y, optimizer=opt, epochs=epochs, batch_size=128, key=jax.random.key(1), progress=False, callback=cb)
