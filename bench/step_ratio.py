"""Quick train-step ratios: train.py's DFC step / FC step and the drop-in's DCMLinear / nn.Linear
step, each pair interleaved in one process (bench/speed.py's timing), 1 thread. For comparing two
checkouts on one machine:

    python bench/step_ratio.py .              # this checkout, (256, 512, 100) and (256, 512, 10)
    python bench/step_ratio.py /path/to/other # another checkout (its bench/speed.py and train code)
    python bench/step_ratio.py . --compile    # both networks torch.compile'd (train.py ratio only)
    python bench/step_ratio.py . --shapes 256,2048,1000 --warm 150 --rounds 30
                                              # after 150 steps of each side (steady state: float32
                                              # scores tie at the k-th score more often later on)
"""
import argparse
import statistics
import sys

import torch

p = argparse.ArgumentParser()
p.add_argument("checkout", nargs="?", default=".")
p.add_argument("--compile", action="store_true")
p.add_argument("--shapes", nargs="+", default=["256,512,100", "256,512,10"])
p.add_argument("--warm", type=int, default=0, help="steps of each side before timing")
p.add_argument("--rounds", type=int, default=150)
args = p.parse_args()
sys.path.insert(0, args.checkout)
torch.set_num_threads(1)
from bench import speed  # noqa: E402  (from the checkout named on the command line)

cpu = torch.device("cpu")


def ratio(fns, a, b):
    for _ in range(args.warm):
        for fn in fns.values():
            fn()
    t = speed.time_interleaved(fns, cpu, args.rounds)
    return speed.paired_ratio(t[a], t[b]), statistics.median(t[b]) * 1e3


for text in args.shapes:
    B, d, C = (int(x) for x in text.split(","))
    gen = torch.Generator().manual_seed(0)
    extra = {"compile": True} if args.compile else {}   # older checkouts' train_step_fns lack it
    r1, ms = ratio(speed.train_step_fns(B, d, C, 0.1, cpu, gen, **extra), "DFC", "FC")
    line = f"{(B, d, C)}: {'compiled ' if args.compile else ''}train-step DFC/FC {r1:.3f}"
    if not args.compile:
        r2, _ = ratio(speed.module_step_fns(B, d, C, 0.1, cpu, gen), "DCMLinear", "nn.Linear")
        line += f"   DCMLinear/nn.Linear {r2:.3f}"
    print(f"{line}   (FC step {ms:.2f} ms)", flush=True)
