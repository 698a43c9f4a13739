"""Presets: the train.py flags of the paper's protocols, one name each.

    python train.py --list-presets                                   # every preset, its flags and source
    python train.py --preset cifar10-anl_ce --download --noise-rate 0.8   # fetches CIFAR-10 into data/cifar10
    python train.py --preset fmnist-grid --loss gce                  # explicit flags override the preset

A preset's flags are placed BEFORE the command line's, so anything typed explicitly wins
(argparse keeps the last value). config.json records the preset's name ("preset"). The
table is plain data: each entry is (flags, source), the source says where the values come
from and marks choices the paper does not make. Zhang et al. (arXiv 2508.09697) train
with the settings of the losses they build on (APL, Ma et al. ICML'20; ANL, Ye et al.
NeurIPS'23), summarised in README.md "Reproducing a paper protocol".
"""

# CIFAR-10 (APL/ANL): 8-layer CNN, SGD lr 0.01, momentum 0.9, wd 1e-4, cosine over 120
# epochs, batch 128, gradient-norm clip 5, crop+flip.
_CIFAR10 = ("--dataset cifar10 --backbone cnn8 --head dfc --optimizer sgd --lr 0.01 --momentum 0.9 "
            "--schedule cosine --epochs 120 --batch-size 128 --grad-clip 5 --augment crop-flip")
# CIFAR-100 (APL/ANL): CIFAR-style ResNet-34, lr 0.1, wd 1e-5, cosine over 200 epochs.
_CIFAR100 = ("--dataset cifar100 --backbone resnet34 --head dfc --optimizer sgd --lr 0.1 --momentum 0.9 "
             "--schedule cosine --epochs 200 --batch-size 128 --grad-clip 5 --augment crop-flip")
_APL_ANL = "APL (ICML'20) / ANL (NeurIPS'23) official setting, as the paper uses it"
# ANL replaces weight decay by its L1 term delta*sum|theta| (losses.py, ANL's official code).
_ANL_WD = "--weight-decay 0"

PRESETS = {   # name -> (flags, source)
    "cifar10-ce": (f"{_CIFAR10} --loss ce --weight-decay 1e-4", f"CIFAR-10, CE baseline: {_APL_ANL}"),
    "cifar10-nce_rce": (f"{_CIFAR10} --loss nce_rce --weight-decay 1e-4", f"CIFAR-10, NCE+RCE (APL): {_APL_ANL}"),
    "cifar10-anl_ce": (f"{_CIFAR10} --loss anl_ce {_ANL_WD}", f"CIFAR-10, ANL-CE: {_APL_ANL}; L1 term instead of weight decay"),
    "cifar100-ce": (f"{_CIFAR100} --loss ce --weight-decay 1e-5", f"CIFAR-100, CE baseline: {_APL_ANL}"),
    "cifar100-nce_rce": (f"{_CIFAR100} --loss nce_rce --weight-decay 1e-5", f"CIFAR-100, NCE+RCE (APL): {_APL_ANL}"),
    "cifar100-anl_ce": (f"{_CIFAR100} --loss anl_ce {_ANL_WD}", f"CIFAR-100, ANL-CE: {_APL_ANL}; L1 term instead of weight decay"),
    "cifar10n": ("--dataset cifar10n --noise none --noisy-labels worst --backbone preact-resnet18 --head dfc "
                 "--optimizer sgd --lr 0.01 --momentum 0.9 --weight-decay 1e-4 --schedule cosine --epochs 120 "
                 "--batch-size 128 --grad-clip 5 --augment crop-flip",
                 "CIFAR-10N worst labels (CIFAR-10_human.pt next to the CIFAR folder, --noisy-labels-file FILE, or --download): [choice] the paper gives no "
                 "CIFAR-N optimiser; README's PreAct-ResNet-18 with the CIFAR-10 optimiser settings above"),
    "cifar100n": ("--dataset cifar100n --noise none --noisy-labels noisy100 --backbone resnet34 --head dfc "
                  "--optimizer sgd --lr 0.1 --momentum 0.9 --weight-decay 1e-5 --schedule cosine --epochs 200 "
                  "--batch-size 128 --grad-clip 5 --augment crop-flip",
                  "CIFAR-100N (CIFAR-100_human.pt next to the CIFAR folder, --noisy-labels-file FILE, or --download): [choice] the CIFAR-100 protocol above "
                  "on the human labels"),
    "webvision-mini": ("--dataset webvision-mini --noise none --backbone resnet50 --head dfc --epochs 100 --amp "
                       "--train-eval-every 10",
                       "WebVision-Mini (first 50 classes), ResNet-50: docs/realworld.md example; not tuned or "
                       "checked on the real data here"),
    "clothing1m": ("--dataset clothing1m --noise none --backbone resnet50 --head dfc --samples-per-epoch 64000 "
                   "--batch-size 64 --lr 0.002 --weight-decay 1e-3 --epochs 10 --amp --train-eval-every 0",
                   "Clothing1M, ImageNet-pretrained ResNet-50 (add --pretrained FILE): the usual DivideMix-style "
                   "setting of docs/realworld.md; not tuned or checked on the real data here"),
    "fmnist-grid": ("--dataset fashion-mnist --backbone mlp --epochs 15 --limit-train 20000 --val-frac 0.1 "
                    "--lr 0.05 --schedule cosine --batch-size 128 --keep 0.1 --dcm-interval 1 --dcm-stats batch "
                    "--dcm-eval full --method standard --noise symmetric --noise-rate 0.6 --head dfc",
                    "this repository's Fashion-MNIST grid (bench/README.md): bench/accuracy.py COMMON plus its "
                    "ablation base (dfc, symmetric 0.6); vary --head/--loss/--noise as the grid does"),
}


class PresetError(ValueError):
    """A bad --preset on the command line (reported in one line)."""


def flags(name):
    """The preset's flags as an argv list; PresetError for an unknown name."""
    if name not in PRESETS:
        raise PresetError(f"--preset {name!r} is unknown; expected one of {', '.join(PRESETS)} (see --list-presets)")
    return PRESETS[name][0].split()


def setting(name, flag):
    """The value preset `name` gives `flag` (e.g. "--loss"), or None when it leaves it unset."""
    fl = flags(name)
    return fl[fl.index(flag) + 1] if flag in fl else None


def find(argv):
    """The preset named in argv (`--preset NAME` or `--preset=NAME`), or None.

    PresetError if it is given twice or without a name.
    """
    names = []
    for i, arg in enumerate(argv):
        if arg == "--preset":
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise PresetError("--preset needs a NAME; see --list-presets")
            names.append(argv[i + 1])
        elif arg.startswith("--preset="):
            names.append(arg.split("=", 1)[1])
    if len(names) > 1:
        raise PresetError(f"--preset given {len(names)} times ({', '.join(names)}); give one")
    return names[0] if names else None


def expand(argv):
    """argv -> (the preset's flags + argv, preset name or None): explicit flags come last and win."""
    name = find(argv)
    return (argv if name is None else flags(name) + list(argv)), name


def describe():
    """Text for --list-presets: each preset, its source and its flags."""
    out = []
    for name, (fl, source) in PRESETS.items():
        out.append(f"{name}\n    source: {source}\n    flags:  {fl}")
    return "\n".join(out)
