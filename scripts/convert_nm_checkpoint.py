#!/usr/bin/env python3
"""Convert a PyTorch checkpoint in the Neuron Merging authors' layout to elite's names.

Not part of CI (needs torch and safetensors). elite loads the result with
`elite prune --model ARCH=OUT.safetensors ...` (ARCH: vgg16_nm, resnet56b, resnet110b...).

The authors' layout (read from their public repository's model definitions and save
routine; RENAMES is the only place to change if a checkpoint differs, see --list):
- the file is a dict holding the state dict under "state_dict" (and "acc"); keys may carry
  a "module." prefix (DataParallel);
- VGG-16 (models/VGG.py): an nn.Sequential named "feature" (singular: conv without bias,
  BatchNorm2d, ReLU, MaxPool; the final 2x2 average pool is applied in forward) and a
  "classifier" Sequential Linear(512, 512), BatchNorm1d, ReLU, Linear. elite's
  vgg16_nm_code has the same indices under "features";
- CIFAR ResNets (models/ResNet.py): conv1, bn1, layerK.i.{conv1,bn1,conv2,bn2},
  layerK.i.downsample.{0,1} (1x1 conv + batch norm, option B) and fc: the same names as
  elite's resnetNb (e.g. resnet56b);
- LeNet-300-100 (models/LeNet_300_100.py): ip1, ip2, ip3; elite's lenet300_100 names them
  fc1, fc2, fc3 (their MNIST-sized model takes 1 x 28 x 28 inputs).

--self-test DIR builds both networks in that layout (random weights), saves them as the
authors would (torch.save of a dict with "state_dict", DataParallel prefix), converts them,
and checks the converted key set against the names elite expects. With --elite BIN it also
runs `BIN prune` on each converted file (digits data, L1 at 0.5).
"""

import argparse
import os
import re
import subprocess
import sys

RENAMES = [
    (r"^module\.", ""),
    (r"^feature\.", "features."),
    (r"^ip([123])\.", r"fc\1."),
]


def convert_key(key):
    for pattern, replacement in RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


def load_state_dict(path):
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, dict):
        for k in ("state_dict", "net", "model"):
            if k in obj and isinstance(obj[k], dict):
                return obj[k]
    return obj


def convert(src, dst):
    from safetensors.torch import save_file

    state = load_state_dict(src)
    out = {}
    for key, tensor in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        out[convert_key(key)] = tensor.detach().to("cpu").float().contiguous()
    save_file(out, dst, metadata={"format": "pt", "converted_from": os.path.basename(src)})
    return sorted(out)


def authors_vgg16(classes=10):
    import torch.nn as nn

    layers, c = [], 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            c = v
    net = nn.Module()
    net.feature = nn.Sequential(*layers)
    net.classifier = nn.Sequential(
        nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Linear(512, classes)
    )
    return net


def authors_resnet(depth, classes=10):
    import torch.nn as nn

    n = (depth - 2) // 6

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    net = nn.Module()
    net.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
    net.bn1 = nn.BatchNorm2d(16)
    cin = 16
    for stage, width in enumerate([16, 32, 64]):
        blocks = []
        for i in range(n):
            blocks.append(Block(cin, width, 2 if stage > 0 and i == 0 else 1))
            cin = width
        setattr(net, f"layer{stage + 1}", nn.Sequential(*blocks))
    net.fc = nn.Linear(64, classes)
    return net


def authors_lenet():
    import torch.nn as nn

    net = nn.Module()
    net.ip1 = nn.Linear(28 * 28, 300)
    net.ip2 = nn.Linear(300, 100)
    net.ip3 = nn.Linear(100, 10)
    return net


def self_test(directory, elite):
    """Writes checkpoints in the authors' layout, converts them; the check is elite itself:
    `elite prune --model ARCH=FILE` refuses a file with a missing or unexpected tensor."""
    import torch

    os.makedirs(directory, exist_ok=True)
    failures = 0
    cases = [
        ("vgg16_nm_code", authors_vgg16(), "digits"),
        ("resnet56b", authors_resnet(56), "digits"),
        ("lenet300_100", authors_lenet(), None),
    ]
    for arch, net, data in cases:
        wrapped = {"module." + k: v for k, v in net.state_dict().items()}
        src = os.path.join(directory, f"authors_{arch}.pth")
        dst = os.path.join(directory, f"{arch}.safetensors")
        torch.save({"state_dict": wrapped, "acc": 0.0}, src)
        keys = convert(src, dst)
        print(f"{arch}: {len(keys)} tensors -> {dst}")
        if elite and data:
            cmd = [elite, "prune", "--model", f"{arch}={dst}", "--method", "neuron-merging",
                   "--ratio", "0.5", "--data", data]
            print(" ".join(cmd))
            failures += subprocess.run(cmd).returncode != 0
    return failures


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", nargs="?")
    p.add_argument("dst", nargs="?")
    p.add_argument("--list", action="store_true", help="print the converted key names")
    p.add_argument("--self-test", metavar="DIR")
    p.add_argument("--elite", metavar="BIN", help="elite binary for the self-test's prune run")
    a = p.parse_args()
    if a.self_test:
        sys.exit(1 if self_test(a.self_test, a.elite) else 0)
    if not (a.src and a.dst):
        p.error("SRC and DST are required (or --self-test DIR)")
    keys = convert(a.src, a.dst)
    if a.list:
        print("\n".join(keys))
    print(f"wrote {len(keys)} tensors to {a.dst}")


if __name__ == "__main__":
    main()
