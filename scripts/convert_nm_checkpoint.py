#!/usr/bin/env python3
"""Convert a PyTorch checkpoint in the Neuron Merging authors' layout to elite's names.

Not part of CI (needs torch and safetensors). elite loads the result with
`elite prune --model ARCH=OUT.safetensors ...` (ARCH: vgg16_nm, resnet56b, resnet110b...).

The authors' layout, as assumed here from their description (check the key list of a real
checkpoint with --list; the mapping table RENAMES is the only place to change):
- the file is a state dict, or a dict holding one under "state_dict" / "net" / "model";
- keys may carry a "module." prefix (DataParallel);
- VGG-16: an nn.Sequential "features" (conv with bias, BatchNorm2d, ReLU, MaxPool; a final
  2x2 AvgPool) and a "classifier" Sequential Linear(512, 512), BatchNorm1d, ReLU, Linear:
  the same indices as elite's vgg16_nm;
- CIFAR ResNets with option-B shortcuts: conv1, bn1, layerK.i.{conv1,bn1,conv2,bn2},
  layerK.i.shortcut.{0,1} (1x1 conv + batch norm) and "linear" for the classifier; elite
  names the shortcut "downsample" and the classifier "fc" (torchvision's names).

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
    (r"\.shortcut\.", ".downsample."),
    (r"^linear\.", "fc."),
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
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "A"]:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        elif v == "A":
            layers.append(nn.AvgPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1, bias=True), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            c = v
    net = nn.Module()
    net.features = nn.Sequential(*layers)
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
            self.shortcut = nn.Sequential()
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

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
    net.linear = nn.Linear(64, classes)
    return net


def expected_elite_keys(arch, state_keys):
    # What elite's constructors name (independently of the renames): checked by hand
    # against backend/compression/model.rs.
    keys = set()
    for k in state_keys:
        k = k[len("module."):] if k.startswith("module.") else k
        if k.endswith("num_batches_tracked"):
            continue
        if arch.startswith("resnet"):
            k = k.replace(".shortcut.", ".downsample.")
            if k.startswith("linear."):
                k = "fc." + k[len("linear."):]
        keys.add(k)
    return sorted(keys)


def self_test(directory, elite):
    import torch

    os.makedirs(directory, exist_ok=True)
    failures = 0
    for arch, net in [("vgg16_nm", authors_vgg16()), ("resnet56b", authors_resnet(56))]:
        wrapped = {"module." + k: v for k, v in net.state_dict().items()}
        src = os.path.join(directory, f"authors_{arch}.pth")
        dst = os.path.join(directory, f"{arch}.safetensors")
        torch.save({"state_dict": wrapped, "acc": 0.0}, src)
        keys = convert(src, dst)
        want = expected_elite_keys(arch, wrapped)
        ok = keys == want
        print(f"{arch}: {len(keys)} tensors, names {'as expected' if ok else 'DIFFER'}")
        failures += not ok
        if elite:
            cmd = [elite, "prune", "--model", f"{arch}={dst}", "--method", "l1",
                   "--ratio", "0.5", "--data", "digits"]
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
