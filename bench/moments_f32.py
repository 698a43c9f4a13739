"""Would float32 moments give the masks of the float64 ones? (docs/design.md §2, "Moments".)

The ranking of |W|·std_b v needs the std only up to a factor per row, so float32 sums would do
if they never changed a mask. This counts the masks that differ, for three float32 forms of the
std (plain sums, sums shifted by the first sample, two-pass, i.e. a one-batch Welford merge),
at keep 0.1/0.3/0.5 and both scopes, on four input families; results in bench/README.md.

    python bench/moments_f32.py          # about a minute on one CPU core (trains the default run)
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import dcm_ref  # noqa: E402

VARIANTS = {
    "plain sums": lambda v: _std(v.sum(0), (v * v).sum(0), v.shape[0]),
    "shifted sums": lambda v: _std((v - v[:1]).sum(0), ((v - v[:1]) ** 2).sum(0), v.shape[0]),
    "two-pass": lambda v: ((v - v.mean(0)) ** 2).mean(0).sqrt(),
}


def _std(s1, s2, n):
    """float32 population std from sums: s1, s2: (d,), n: int -> (d,)."""
    mean = s1 / n
    return (s2 / n - mean * mean).clamp(min=0).sqrt()


def head_case(g):
    """The family of tests/test_dcm_ref.py::head_case: B 1-24, C 1-8, d 1-12, scale 1/1e3/1e4, half
    the time a large mean with a small spread, 30 % constant features. -> (v (B, d), w (C, d))."""
    B, C, d = (int(torch.randint(lo, hi, (), generator=g)) for lo, hi in ((1, 25), (1, 9), (1, 13)))
    scale = (1.0, 1e3, 1e4)[int(torch.randint(0, 3, (), generator=g))]
    v = torch.randn(B, d, generator=g, dtype=torch.float64) * scale
    if torch.rand((), generator=g) < 0.5:
        v = v / scale + scale
    const = torch.rand(d, generator=g) < 0.3
    v[:, const] = v[0, const]
    return v.float(), torch.randn(C, d, generator=g)


def relu_case(g, B=256, d=512, C=100):
    """Features after a ReLU with per-feature scales, a small head."""
    v = torch.randn(B, d, generator=g).relu() * torch.rand(d, generator=g) * 3
    return v, torch.randn(C, d, generator=g) * 0.05


def near_tie_case(g, B=64, d=40, C=3):
    """Stds within a float32 ulp: one column repeated, one sample moved by a few float32 ulps."""
    base = torch.randn(B, generator=g) * 3 + float(torch.randint(0, 100, (), generator=g))
    v = base[:, None].repeat(1, d)
    v[int(torch.randint(0, B, (), generator=g))] += (torch.randint(-4, 5, (d,), generator=g).float()
                                                      * torch.finfo(torch.float32).eps * base.abs().max())
    return v, 1 + 0.1 * torch.randint(0, 2, (C, d), generator=g).float()


def default_run_cases():
    """(v, w) of every 3rd mask update of `python train.py --threads 1` (digits, DFC head)."""
    import contextlib
    import io
    import tempfile
    import layers
    import train
    seen, step = [], layers.DCMModule._train_mask

    def record(self, feats):
        seen.append((feats.detach().clone(), self.weight.detach().clone()))
        return step(self, feats)
    layers.DCMModule._train_mask = record
    try:
        with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
            train.main(["--out", os.path.join(out, "run"), "--threads", "1"])
    finally:
        layers.DCMModule._train_mask = step
    return seen[::3]


def differing(cases):
    """-> {variant: (masks that differ from the float64 moments' masks, masks compared)}."""
    out = {name: [0, 0] for name in VARIANTS}
    for v, w in cases:
        want = dcm_ref.scores_from_moments(dcm_ref.moments(v), w)
        for name, std in VARIANTS.items():
            got = w.abs() * std(v)
            for keep in (0.1, 0.3, 0.5):
                for scope in ("row", "global"):
                    out[name][1] += 1
                    out[name][0] += not torch.equal(dcm_ref.topk_mask(want, keep, scope),
                                                    dcm_ref.topk_mask(got, keep, scope))
    return out


def main():
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    families = {"property-test family (head_case), 2000 cases": lambda: [head_case(g) for _ in range(2000)],
                "ReLU features (256, 512, 100), 100 cases": lambda: [relu_case(g) for _ in range(100)],
                "stds within a float32 ulp, 500 cases": lambda: [near_tie_case(g) for _ in range(500)],
                "the default run, every 3rd update": default_run_cases}
    print("| inputs | " + " | ".join(f"float32 {n}" for n in VARIANTS) + " |")
    print("| --- |" + " --- |" * len(VARIANTS))
    for label, cases in families.items():
        counts = differing(cases())
        print(f"| {label} | " + " | ".join(f"{bad} / {n} differ" for bad, n in counts.values()) + " |", flush=True)


if __name__ == "__main__":
    main()
