"""Time the DCM step's calls INSIDE real train.py DFC steps (bench/speed.py's train_step_fns: MLP
backbone of width d, CE, SGD), and count how often the CPU selection falls back to torch.topk.
A call costs several times its tight-loop time inside a step (docs/design.md §10), so this is
where the DCM step's cost is read. 1 thread; medians over the steps. For two checkouts:

    python bench/step_calls.py . 256,512,100 300
    python bench/step_calls.py /path/to/other 256,2048,1000 300

The fallback count grows with training: float32 Eq. 2 scores tie at the k-th score now and then.
"""
import collections
import statistics
import sys
import time

import torch

sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else ".")
torch.set_num_threads(1)
from bench import speed  # noqa: E402  (from the checkout named on the command line)
import dcm_ref  # noqa: E402
import layers  # noqa: E402
import topk_cpu  # noqa: E402

TIMES, PATHS = collections.defaultdict(list), collections.Counter()


def timed(owner, name, label, after=None):
    """Wrap owner.name so each call's wall time goes to TIMES[label] (and after(result) runs)."""
    fn = getattr(owner, name)

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        TIMES[label].append(time.perf_counter() - t)
        if after:
            after(out)
        return out
    setattr(owner, name, wrapper)


timed(layers.DCMModule, "_train_mask", "DCM step (moments to mask change)")
timed(dcm_ref, "moments", "moments")
timed(dcm_ref, "scores_from_moments", "scores_from_moments")
timed(dcm_ref, "topk_mask", "topk_mask")
timed(dcm_ref, "mask_change_tensor", "mask_change_tensor")
timed(topk_cpu, "mask_by_bits", "mask_by_bits",
      lambda out: PATHS.update(["fell back to torch.topk" if out is None else "numpy path"]))
shape = tuple(int(x) for x in (sys.argv[2] if len(sys.argv) > 2 else "256,512,100").split(","))
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 300
step = speed.train_step_fns(*shape, 0.1, torch.device("cpu"), torch.Generator().manual_seed(0))["DFC"]
for _ in range(steps):
    step()
print(f"{shape}, {steps} steps:", "  ".join(f"{k} {statistics.median(v) * 1e3:.3f} ms" for k, v in TIMES.items()))
print("selection:", dict(PATHS))
