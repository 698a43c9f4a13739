"""Quick train-step ratios: train.py's DFC step / FC step and the drop-in's DCMLinear / nn.Linear
step, each pair interleaved in one process (bench/speed.py's timing), 1 thread, 150 rounds, at
(256, 512, 100) and (256, 512, 10). For comparing two checkouts on one machine:

    python bench/step_ratio.py .              # this checkout
    python bench/step_ratio.py /path/to/other # another checkout (its bench/speed.py and train code)
"""
import sys

import torch

sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else ".")
torch.set_num_threads(1)
from bench import speed  # noqa: E402  (from the checkout named on the command line)
for shape in ((256, 512, 100), (256, 512, 10)):
    B, d, C = shape
    gen = torch.Generator().manual_seed(0)
    fns = speed.train_step_fns(B, d, C, 0.1, torch.device("cpu"), gen)
    t = speed.time_interleaved(fns, torch.device("cpu"), 150)
    r1 = speed.paired_ratio(t["DFC"], t["FC"])
    fns = speed.module_step_fns(B, d, C, 0.1, torch.device("cpu"), gen)
    t2 = speed.time_interleaved(fns, torch.device("cpu"), 150)
    r2 = speed.paired_ratio(t2["DCMLinear"], t2["nn.Linear"])
    print(f"{shape}: train-step DFC/FC {r1:.3f}   DCMLinear/nn.Linear {r2:.3f}   (FC step {1e3*sorted(t['FC'])[len(t['FC'])//2]:.2f} ms)")
