#!/usr/bin/env python3
"""Writes tests/data/training/inversion.json: NumPy reference values for the image priors and
the batch-norm statistics loss of backend/training/inversion/loss.rs (DeepInversion and
NaturalInversion).

Not part of CI. Needs only NumPy, in the same virtual environment as saliency_fixture.py:

    scripts/training/.venv/bin/python scripts/training/inversion_fixture.py

Written independently of the Rust code from the spec (specs/training.md, section 4):
  TV   = sum over the four neighbour directions (right, down, both diagonals) of the L2 norm
         of the whole difference array
  L2   = L2 norm of the whole batch
  BN   = ||mean - running_mean||_2 + ||var - running_var||_2, mean and (biased) var per channel
         over batch and space

Inputs are integers times a scale, so both sides read exactly the same numbers; a rerun
rewrites the file identically.
"""
import json
import os

import numpy as np

SCALE = 1.0 / 64.0


def tv(x):
    d1 = x[:, :, :, :-1] - x[:, :, :, 1:]
    d2 = x[:, :, :-1, :] - x[:, :, 1:, :]
    d3 = x[:, :, 1:, :-1] - x[:, :, :-1, 1:]
    d4 = x[:, :, :-1, :-1] - x[:, :, 1:, 1:]
    return sum(float(np.sqrt(np.sum(d.astype(np.float64) ** 2))) for d in (d1, d2, d3, d4))


def bn(x, running_mean, running_var):
    c = x.shape[1]
    flat = np.transpose(x, (1, 0, 2, 3)).reshape(c, -1).astype(np.float64)
    mean = flat.mean(axis=1)
    var = flat.var(axis=1)
    return float(np.linalg.norm(mean - running_mean) + np.linalg.norm(var - running_var))


def main():
    rng = np.random.default_rng(20220201)
    cases = []
    for shape in [(2, 3, 5, 6), (4, 1, 8, 8), (3, 2, 2, 7)]:
        ints = rng.integers(-128, 128, size=shape)
        x = ints * SCALE
        c = shape[1]
        mean_ints = rng.integers(-32, 32, size=c)
        var_ints = rng.integers(1, 128, size=c)
        running_mean = mean_ints * SCALE
        running_var = var_ints * SCALE
        cases.append({
            "shape": list(shape),
            "ints": ints.reshape(-1).tolist(),
            "running_mean_ints": mean_ints.tolist(),
            "running_var_ints": var_ints.tolist(),
            "tv": float(f"{tv(x):.10g}"),
            "l2": float(f"{np.sqrt(np.sum(x.astype(np.float64) ** 2)):.10g}"),
            "bn": float(f"{bn(x, running_mean, running_var):.10g}"),
        })
    out = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data", "training", "inversion.json")
    with open(out, "w") as f:
        json.dump({"scale": SCALE, "cases": cases}, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
