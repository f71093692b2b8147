#!/usr/bin/env python3
"""Writes tests/data/training/saliency.json: NumPy reference values for the saliency maps of
backend/training/saliency.rs (GuidedMixup's Guided-SR and Guided-AP maps).

Not part of CI. Needs only NumPy; run it in its own virtual environment:

    python3 -m venv scripts/training/.venv
    scripts/training/.venv/bin/pip install -q numpy
    scripts/training/.venv/bin/python scripts/training/saliency_fixture.py

Written independently of the Rust code from the spec (specs/training.md, section 1):
  spectral residual  F = fft2(g); A = |F| + 1e-8; L = ln A;
                     R = exp(L - box3x3(L)) (edge padding); S = |ifft2(F * R / A)|
  blur               7x7 Gaussian, sigma 3 (torchvision's kernel), reflect padding,
                     done here as one 2-D convolution with the outer-product kernel
  Guided-SR map      grey = channel mean; sides over 128 bilinearly downsized to 128;
                     S; blur; blur; bilinear resize back; divide by the sum
  Guided-AP map      sqrt(mean_c grad^2); blur; divide by the sum

Inputs are stored as integers with a scale and shift (value = int * scale + shift) so that
both sides read exactly the same numbers; outputs keep 8 significant digits. Everything is
seeded, so a rerun rewrites the file identically.
"""
import json
import os

import numpy as np

EPS = 1e-8
SIZE, SIGMA = 7, 3.0
MAX_SIDE = 128
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                   "tests", "data", "training", "saliency.json")


def spectral_residual(g):
    f = np.fft.fft2(g)
    a = np.abs(f) + EPS
    log_a = np.log(a)
    p = np.pad(log_a, 1, mode="edge")
    h, w = g.shape
    box = sum(p[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)) / 9.0
    return np.abs(np.fft.ifft2(f * np.exp(log_a - box) / a))


def blur(m):
    x = np.arange(SIZE) - (SIZE - 1) / 2.0
    k1 = np.exp(-0.5 * (x / SIGMA) ** 2)
    k1 /= k1.sum()
    k2 = np.outer(k1, k1)
    r = SIZE // 2
    p = np.pad(m, r, mode="reflect")
    h, w = m.shape
    out = np.zeros_like(m, dtype=np.float64)
    for dy in range(SIZE):
        for dx in range(SIZE):
            out += k2[dy, dx] * p[dy:dy + h, dx:dx + w]
    return out


def resize(m, oh, ow):
    """Bilinear, half-pixel centres, source clamped at 0 (align_corners=False)."""
    h, w = m.shape
    if (h, w) == (oh, ow):
        return m

    def axis(n_out, n_in):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    y0, y1, fy = axis(oh, h)
    x0, x1, fx = axis(ow, w)
    top = m[y0][:, x0] * (1 - fx) + m[y0][:, x1] * fx
    bottom = m[y1][:, x0] * (1 - fx) + m[y1][:, x1] * fx
    return top * (1 - fy)[:, None] + bottom * fy[:, None]


def guided_sr(image):
    _, h, w = image.shape
    grey = image.mean(axis=0)
    sh, sw = min(h, MAX_SIDE), min(w, MAX_SIDE)
    s = blur(blur(spectral_residual(resize(grey, sh, sw))))
    s = resize(s, h, w)
    return s / s.sum()


def gradient_map(grad):
    s = blur(np.sqrt((grad ** 2).mean(axis=0)))
    return s / s.sum()


def rounded(a):
    return [float(f"{v:.8g}") for v in np.asarray(a, dtype=np.float64).ravel()]


def sr_case(name, ints, scale, shift, full_only=False):
    image = ints.astype(np.float64) * scale + shift
    c, h, w = image.shape
    case = {"name": name, "c": c, "h": h, "w": w, "scale": scale, "shift": shift,
            "pixels": [int(v) for v in ints.ravel()]}
    if not full_only:
        grey = image.mean(axis=0)
        sr = spectral_residual(grey)
        case["grey"] = rounded(grey)
        case["sr"] = rounded(sr)
        # The blur is checked on the rounded SR map, exactly the numbers the test reads.
        case["sr_blur"] = rounded(blur(np.array(case["sr"]).reshape(h, w)))
    case["saliency"] = rounded(guided_sr(image))
    return case


def main():
    rng = np.random.default_rng(20230616)
    sr_cases = []
    for k, shift in enumerate([0.0, -0.5, 0.0]):
        ints = rng.integers(0, 256, size=(3, 16, 16))
        sr_cases.append(sr_case(f"random16_{k}", ints, 1.0 / 255.0, shift))
    # A 32x32 pattern: waves per channel plus a bright square.
    c, y, x = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    pattern = 127.5 + 90.0 * np.sin(0.4 * x + c) * np.cos(0.3 * y)
    pattern[:, 8:14, 18:26] += 40.0
    sr_cases.append(sr_case("pattern32", np.clip(np.round(pattern), 0, 255).astype(int),
                            1.0 / 255.0, 0.0))
    # Wider than 128: reduced to 10x128 and resized back.
    wide = rng.integers(0, 256, size=(2, 10, 140))
    sr_cases.append(sr_case("wide10x140", wide, 1.0 / 255.0, 0.0, full_only=True))

    grad_ints = rng.integers(-500, 501, size=(3, 12, 12))
    g = grad_ints.astype(np.float64) * 1e-4
    grad_cases = [{"name": "grad12", "c": 3, "h": 12, "w": 12, "scale": 1e-4, "shift": 0.0,
                   "grad": [int(v) for v in grad_ints.ravel()],
                   "saliency": rounded(gradient_map(g))}]

    doc = {"generator": "scripts/training/saliency_fixture.py", "numpy": np.__version__,
           "eps": EPS, "blur_size": SIZE, "blur_sigma": SIGMA,
           "sr_cases": sr_cases, "grad_cases": grad_cases}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as fh:
        json.dump(doc, fh, separators=(",", ":"))
        fh.write("\n")
    print(f"wrote {os.path.normpath(OUT)} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
