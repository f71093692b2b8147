#!/usr/bin/env python3
"""PyTorch's side of the compression trainer (backend/compression/train.rs).

Not part of CI. On first use it creates its own virtual environment
(scripts/compression/.venv, ignored by git) with the pinned PyTorch from PyPI and re-runs
itself there; set COMPRESSION_PARITY_PYTHON to use another Python that has torch,
safetensors and numpy.

Two commands, both written from PyTorch's documented behaviour, not from the Rust code:

  fixture   writes tests/data/compression/train_parity.safetensors: for a CIFAR ResNet-8
            (option-A shortcuts, width 0.25) and the Neuron Merging authors' VGG-16 (width
            1/32, Linear-BatchNorm1d-ReLU-Linear classifier), torch-initialised weights, one
            batch of 8 seeded random images with their labels, and what three full-batch
            training steps do to them: torch.optim.SGD (momentum 0.9, coupled weight decay
            5e-4) at lr 0.1 under CosineAnnealingLR stepped per batch, batch norm in training
            mode (biased batch variance to normalise, unbiased into the running variance,
            momentum 0.1). Stored: the weights before and after, the three losses, and the
            eval-mode logits of the trained network on the batch. A rerun rewrites the file
            identically (fixed seeds, deterministic CPU kernels).
            The test `compression_train::three_training_steps_match_pytorch` loads the
            initial weights into elite's networks, trains with `train` (batch = the whole
            set, so the shuffle does not matter) and compares.

  digits    trains a network on the built-in digits exactly as benches/prune_bench.rs does
            (the same 1,438 / 359 split and normalisation, 8x8 -> 32x32 nearest upsampling,
            crop with 4 black pixels of padding, no flip; SGD lr 0.05, momentum 0.9, weight
            decay 5e-4, batch 32, cosine per step over the run; Kaiming-normal fan-out
            initialisation of the convolutions, PyTorch's default for the linear layers) and
            prints the test accuracy and time of every epoch:

              train_parity.py digits --model resnet56 --epochs 6 --seeds 0,1,2

            This is the reference the ResNet-56 and VGG-16 rows of benches/prune_bench.md
            are read against (how fast each learns, and how long an epoch takes). With
            --prune-l1 0.3,0.5,0.7 (VGG only) it then prunes the trained network by L1
            norm at each uniform ratio and prints the accuracy without fine-tuning.

  speed     prints PyTorch's seconds per training step (batch 32) for the models of
            benches/train_step_bench.rs, which runs it beside elite's trainer.
"""

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PINNED = ["torch==2.15.0", "safetensors==0.8.0", "numpy==2.4.6"]
FIXTURE = ROOT / "tests" / "data" / "compression" / "train_parity.safetensors"
DIGITS = ROOT / "tests" / "data" / "digits" / "digits.csv"


def ensure_environment():
    """Re-executes under a Python that has torch, safetensors and numpy."""
    try:
        import numpy  # noqa: F401
        import safetensors  # noqa: F401
        import torch  # noqa: F401

        return
    except ImportError:
        pass
    python = os.environ.get("COMPRESSION_PARITY_PYTHON")
    if not python:
        venv = HERE / ".venv"
        python = str(venv / "bin" / "python")
        if not Path(python).exists():
            subprocess.check_call([sys.executable, "-m", "venv", str(venv)])
            subprocess.check_call([python, "-m", "pip", "install", "-q", *PINNED])
    os.execv(python, [python, __file__, *sys.argv[1:]])


ensure_environment()

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402


# ---------------------------------------------------------------------------------------
# The networks, with the parameter names elite's checkpoints use.


class BasicBlock(nn.Module):
    """CIFAR basic block; where the shape changes the shortcut is option A: subsample by
    the stride and zero-pad the new channels, half before and half after."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride = stride
        self.extra = cout - cin

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.stride != 1 or self.extra:
            shortcut = x[:, :, :: self.stride, :: self.stride]
            low = self.extra // 2
            shortcut = F.pad(shortcut, (0, 0, 0, 0, low, self.extra - low))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    def __init__(self, depth, width, classes):
        super().__init__()
        blocks = (depth - 2) // 6
        base = max(1, round(16 * width))
        self.conv1 = nn.Conv2d(3, base, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        channels = base
        for stage in range(3):
            out = max(1, round((16 << stage) * width))
            layer = []
            for i in range(blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                layer.append(BasicBlock(channels, out, stride))
                channels = out
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layer))
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "A"]


class VggNm(nn.Module):
    """VGG-16 as the Neuron Merging authors define it for CIFAR: conv (with bias) - batch
    norm - ReLU, max pools, a final 2x2 average pool, then Linear-BatchNorm1d-ReLU-Linear."""

    def __init__(self, width, classes):
        super().__init__()
        layers, channels = [], 3
        for item in VGG16:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            elif item == "A":
                layers.append(nn.AvgPool2d(2, 2))
            else:
                out = max(1, round(item * width))
                layers += [nn.Conv2d(channels, out, 3, 1, 1), nn.BatchNorm2d(out), nn.ReLU()]
                channels = out
        self.features = nn.Sequential(*layers)
        hidden = max(1, round(512 * width))
        self.classifier = nn.Sequential(
            nn.Linear(channels, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, classes)
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def build(model, classes):
    if model.startswith("resnet"):
        return CifarResNet(int(model[len("resnet"):]), 1.0, classes)
    if model.startswith("vgg16:"):
        return VggNm(float(model.split(":")[1]), classes)
    raise SystemExit(f"unknown model {model}")


def kaiming_fan_out(net):
    """elite's initialisation: Kaiming normal (fan out, ReLU gain) for convolutions, batch
    norm at (1, 0), PyTorch's default uniform for linear layers."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def state(net):
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()
            if not k.endswith("num_batches_tracked")}


# ---------------------------------------------------------------------------------------
# fixture


STEPS = 3
LR = 0.1


def fixture():
    from safetensors.torch import save_file

    torch.use_deterministic_algorithms(True)
    torch.manual_seed(20231201)
    images = torch.randn(8, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 1, 2], dtype=torch.int64)
    out = {"input": images, "labels": labels}
    for key, net in [("resnet8", CifarResNet(8, 0.25, 10)), ("vgg16nm", VggNm(1 / 32, 10))]:
        net.train()
        for name, t in state(net).items():
            out[f"{key}.init.{name}"] = t
        opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS)
        losses = []
        for _ in range(STEPS):
            opt.zero_grad()
            loss = F.cross_entropy(net(images), labels)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        out[f"{key}.losses"] = torch.tensor(losses, dtype=torch.float64)
        for name, t in state(net).items():
            out[f"{key}.final.{name}"] = t
        net.eval()
        with torch.no_grad():
            out[f"{key}.eval_logits"] = net(images).contiguous()
        print(f"{key}: losses {[round(v, 5) for v in losses]}")
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(FIXTURE))
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")


# ---------------------------------------------------------------------------------------
# digits


def load_digits():
    """The bench's digits: every fifth image (index % 5 == 4) is a test image, pixels / 16
    standardised by the training pixels' mean and (population) standard deviation."""
    import numpy as np

    rows = [line.split(",") for line in DIGITS.read_text().splitlines()[1:] if line.strip()]
    labels = np.array([int(r[0]) for r in rows])
    pixels = np.array([[int(v) for v in r[1:]] for r in rows], dtype=np.float64) / 16.0
    test = np.arange(len(rows)) % 5 == 4
    mean, std = pixels[~test].mean(), pixels[~test].std()
    images = ((pixels - mean) / std).reshape(-1, 1, 8, 8)
    images = np.repeat(np.repeat(np.repeat(images, 4, axis=2), 4, axis=3), 3, axis=1)
    as_t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    black = -mean / std
    return (as_t(images[~test]), torch.tensor(labels[~test]),
            as_t(images[test]), torch.tensor(labels[test]), float(black))


def crop(batch, black, gen):
    """Random 32x32 crop of each image padded by 4 pixels of `black`."""
    padded = F.pad(batch, (4, 4, 4, 4), value=black)
    out = torch.empty_like(batch)
    offsets = torch.randint(0, 9, (batch.shape[0], 2), generator=gen)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        out[i] = padded[i, :, dy:dy + 32, dx:dx + 32]
    return out


def accuracy(net, images, labels):
    net.eval()
    with torch.no_grad():
        correct = sum((net(images[i:i + 256]).argmax(1) == labels[i:i + 256]).sum().item()
                      for i in range(0, len(labels), 256))
    net.train()
    return correct / len(labels)


def digits(args):
    train_x, train_y, test_x, test_y, black = load_digits()
    batch = 32
    steps = math.ceil(len(train_y) / batch) * args.epochs
    print(f"{args.model}: {args.epochs} epochs, lr {args.lr}, batch {batch}, "
          f"{torch.get_num_threads()} threads")
    for seed in [int(s) for s in args.seeds.split(",")]:
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        net = build(args.model, 10)
        kaiming_fan_out(net)
        net.train()
        opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        for epoch in range(args.epochs):
            start = time.perf_counter()
            order = torch.randperm(len(train_y), generator=gen)
            loss_sum, correct = 0.0, 0
            for i in range(0, len(order), batch):
                idx = order[i:i + batch]
                x, y = crop(train_x[idx], black, gen), train_y[idx]
                logits = net(x)
                loss = F.cross_entropy(logits, y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += loss.item() * len(idx)
                correct += (logits.argmax(1) == y).sum().item()
            seconds = time.perf_counter() - start
            print(f"seed {seed} epoch {epoch + 1}: loss {loss_sum / len(train_y):.4f} "
                  f"train {100 * correct / len(train_y):.2f}% "
                  f"test {100 * accuracy(net, test_x, test_y):.2f}% ({seconds:.1f} s)",
                  flush=True)
        for ratio in [float(r) for r in args.prune_l1.split(",") if r]:
            pruned = prune_l1(net, ratio)
            print(f"seed {seed} L1 {ratio:.2f} without fine-tuning: "
                  f"test {100 * accuracy(pruned, test_x, test_y):.2f}%", flush=True)


def prune_l1(net, ratio):
    """A copy of a VggNm with every convolution keeping its floor(n * (1 - ratio)) filters
    of largest L1 norm (batch norm and the next layer's inputs sliced to match), no
    fine-tuning: the bench's `l1` row at a uniform ratio."""
    import copy

    if not isinstance(net, VggNm):
        raise SystemExit("--prune-l1 is implemented for vgg16:W only")
    net = copy.deepcopy(net)
    layers = list(net.features)
    convs = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)]
    keep_prev = None
    for i in convs:
        conv, bn = layers[i], layers[i + 1]
        with torch.no_grad():
            if keep_prev is not None:
                conv.weight = nn.Parameter(conv.weight[:, keep_prev].clone())
            n = conv.weight.shape[0]
            kept = max(1, math.floor(n * (1 - ratio)))
            norms = conv.weight.abs().sum(dim=(1, 2, 3))
            keep = torch.sort(torch.topk(norms, kept).indices).values
            conv.weight = nn.Parameter(conv.weight[keep].clone())
            conv.bias = nn.Parameter(conv.bias[keep].clone())
            for name in ["weight", "bias"]:
                setattr(bn, name, nn.Parameter(getattr(bn, name)[keep].clone()))
            bn.running_mean = bn.running_mean[keep].clone()
            bn.running_var = bn.running_var[keep].clone()
        keep_prev = keep
    with torch.no_grad():
        fc = net.classifier[0]
        fc.weight = nn.Parameter(fc.weight[:, keep_prev].clone())
    return net


def speed(args):
    """Seconds per training step (batch 32 of the digits, crops, SGD) after two warm-up
    steps: PyTorch's column of benches/train_step_bench.rs."""
    train_x, train_y, _, _, black = load_digits()
    gen = torch.Generator().manual_seed(0)
    for model in args.models.split(","):
        torch.manual_seed(0)
        net = build(model, 10)
        kaiming_fan_out(net)
        net.train()
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        seconds = []
        for step in range(args.steps + 2):
            idx = torch.randint(0, len(train_y), (32,), generator=gen)
            start = time.perf_counter()
            loss = F.cross_entropy(net(crop(train_x[idx], black, gen)), train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step >= 2:
                seconds.append(time.perf_counter() - start)
        print(f"RESULT\t{model}\t{sum(seconds) / len(seconds):.6f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fixture")
    d = sub.add_parser("digits")
    d.add_argument("--model", default="resnet56", help="resnetD (option A) or vgg16:WIDTH")
    d.add_argument("--epochs", type=int, default=6)
    d.add_argument("--seeds", default="0")
    d.add_argument("--lr", type=float, default=0.05)
    d.add_argument("--prune-l1", default="", help="ratios, e.g. 0.3,0.5,0.7 (VGG only)")
    sp = sub.add_parser("speed")
    sp.add_argument("--models", default="resnet56,vgg16:0.25,vgg16:1.0")
    sp.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    if args.command == "fixture":
        fixture()
    elif args.command == "speed":
        speed(args)
    else:
        digits(args)


if __name__ == "__main__":
    main()
