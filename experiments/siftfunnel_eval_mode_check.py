"""Where the funnel CNN's eval and train paths part (RESULTS.md, SiftFunnel): trains it with plain
cross-entropy at the smoke budget, then prints per layer the mean output / spread across the 256 targets.

    MIJAX_DATA_DIR=../shared/data python experiments/siftfunnel_eval_mode_check.py
"""
import jax, numpy as np, optax
from mijax_experiments import siftfunnel
from mijax.models import pv4_classifier_4
from mijax.optim import torch_amsgrad
from mijax.train import fit
config = siftfunnel.get_config("smoke")
(x, y), _, (t, tl) = siftfunnel._load(config)
f = pv4_classifier_4(image_size=64, width=16)
opt = optax.chain(optax.add_decayed_weights(config.weight_decay), torch_amsgrad(0.01,  # the table's lr (the smoke preset's before 12-03)
                                                                              b1=0.5, b2=0.999))
st = fit(f, x, y, optimizer=opt, epochs=3, batch_size=128, key=jax.random.key(1), progress=False)
names = tuple(f.network.names)
xn = f.normalization.normalize(t)
for train in (False, True):
    _, _, taps = f.network.apply_tapped(st.variables, xn, train=train, key=jax.random.key(3), taps=names)
    print("train" if train else "eval ", " ".join(f"{n}:{float(np.asarray(taps[n]).mean()):.3g}/{float(np.asarray(taps[n]).std(0).mean()):.3g}" for n in names))
