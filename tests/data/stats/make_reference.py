"""Generate the golden reference data for `backend/stats/` (agreement.json, alignment.json).

Run from this directory:  python make_reference.py

The numbers in the JSON files were produced with:
    Python 3 / numpy 2.4.6 / scikit-learn 1.9.1 / statsmodels 0.15.0 / krippendorff 0.9.0

Sources of each reference value:
  * Cohen's kappa           sklearn.metrics.cohen_kappa_score (on items both raters labelled)
  * Fleiss' kappa           statsmodels.stats.inter_rater.fleiss_kappa(method="fleiss") when every
                            item with >= 2 ratings has the same number of ratings; for tables with a
                            varying number of ratings per item, the per-item-n generalisation written
                            out below from the textbook formula (`fleiss_varying_n`), which is checked
                            against statsmodels on every constant-n table.
  * Krippendorff's alpha    krippendorff.alpha(reliability_data=raters x units, nan = missing)
  * percent agreement       formula below (mean over items with >= 2 labels of the share of
                            agreeing label pairs); no library implements exactly this.
  * ROC AUC / ROC curve     sklearn.metrics.roc_auc_score / roc_curve(drop_intermediate=False)
  * accuracy / precision / recall / F1
                            sklearn.metrics.*_score with zero_division=np.nan (NaN -> null)
  * best thresholds         computed with numpy from sklearn's roc_curve (first maximum wins)
  * percentiles             numpy.percentile (default linear interpolation)

Undefined values (NaN from the libraries, or a ValueError from krippendorff) are written as null.
Infinite thresholds are written as the string "inf".
"""

import json
import math
import warnings

import krippendorff
import numpy as np
import sklearn
import statsmodels
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

warnings.simplefilter("ignore")

rng = np.random.default_rng(20240611)


def clean(x):
    if x is None:
        return None
    x = float(x)
    if math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


# ---------------------------------------------------------------- agreement

def percent_agreement(rows):
    vals = []
    for row in rows:
        labels = [v for v in row if v is not None]
        n = len(labels)
        if n < 2:
            continue
        agree = sum(labels.count(c) * (labels.count(c) - 1) for c in set(labels))
        vals.append(agree / (n * (n - 1)))
    return (sum(vals) / len(vals) if vals else None), len(vals)


def fleiss_varying_n(rows):
    items = [[v for v in row if v is not None] for row in rows]
    items = [it for it in items if len(it) >= 2]
    if not items:
        return None
    cats = sorted({v for it in items for v in it})
    total = sum(len(it) for it in items)
    p_items = []
    for it in items:
        n = len(it)
        p_items.append((sum(it.count(c) ** 2 for c in cats) - n) / (n * (n - 1)))
    p_bar = sum(p_items) / len(p_items)
    p_e = sum((sum(it.count(c) for it in items) / total) ** 2 for c in cats)
    if p_e == 1.0:
        return None
    return (p_bar - p_e) / (1 - p_e)


def fleiss_reference(rows):
    items = [[v for v in row if v is not None] for row in rows]
    items = [it for it in items if len(it) >= 2]
    formula = fleiss_varying_n(rows)
    if items and len({len(it) for it in items}) == 1:
        table, _ = aggregate_raters(np.array(items))
        sm = float(fleiss_kappa(table, method="fleiss"))
        if formula is None:
            assert math.isnan(sm), (sm, formula)
        else:
            assert abs(sm - formula) < 1e-12, (sm, formula)
        return clean(sm), "statsmodels"
    return clean(formula), "formula"


def kripp(rows, level):
    n_raters = max(len(r) for r in rows)
    data = np.full((n_raters, len(rows)), np.nan)
    for u, row in enumerate(rows):
        for r, v in enumerate(row):
            if v is not None:
                data[r, u] = v
    try:
        return clean(krippendorff.alpha(reliability_data=data, level_of_measurement=level))
    except ValueError:
        return None


def pairwise_cohen(rows):
    n_raters = max(len(r) for r in rows)
    out = []
    for a in range(n_raters):
        for b in range(a + 1, n_raters):
            shared = [
                (r[a], r[b])
                for r in rows
                if a < len(r) and b < len(r) and r[a] is not None and r[b] is not None
            ]
            if not shared:
                continue
            xa = [s[0] for s in shared]
            xb = [s[1] for s in shared]
            k = cohen_kappa_score(xa, xb)
            out.append({"a": a, "b": b, "items": len(shared), "kappa": clean(k)})
    return out


def agreement_case(name, rows, note=""):
    pa, pa_items = percent_agreement(rows)
    fk, fsrc = fleiss_reference(rows)
    return {
        "name": name,
        "note": note,
        "rows": rows,
        "percent_agreement": clean(pa),
        "percent_agreement_items": pa_items,
        "fleiss": fk,
        "fleiss_source": fsrc,
        "alpha_nominal": kripp(rows, "nominal"),
        "alpha_ordinal": kripp(rows, "ordinal"),
        "alpha_interval": kripp(rows, "interval"),
        "pairwise_cohen": pairwise_cohen(rows),
    }


def noisy_copy(truth, flip, categories):
    out = []
    for t in truth:
        if rng.random() < flip:
            out.append(int(rng.choice(categories)))
        else:
            out.append(int(t))
    return out


def table(n_items, n_raters, categories, flip, missing, p=None):
    truth = rng.choice(categories, size=n_items, p=p)
    cols = [noisy_copy(truth, flip, categories) for _ in range(n_raters)]
    rows = []
    for i in range(n_items):
        row = []
        for r in range(n_raters):
            row.append(None if rng.random() < missing else cols[r][i])
        rows.append(row)
    return rows


def wikipedia_fleiss():
    # Count table from https://en.wikipedia.org/wiki/Fleiss%27_kappa (14 raters, 5 categories, kappa 0.210).
    counts = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    rows = []
    for c in counts:
        row = []
        for cat, k in enumerate(c):
            row += [cat + 1] * k
        rows.append(row)
    return rows


def krippendorff_docstring():
    nan = None
    data = [
        [nan, nan, nan, nan, nan, 3, 4, 1, 2, 1, 1, 3, 3, nan, 3],
        [1, nan, 2, 1, 3, 3, 4, 3, nan, nan, nan, nan, nan, nan, nan],
        [nan, nan, 2, 1, 3, 4, 4, nan, 2, 1, 1, 3, 3, nan, 4],
    ]
    return [list(col) for col in zip(*data)]


def krippendorff_ordinal_example():
    nan = None
    data = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
        [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan],
    ]
    return [list(col) for col in zip(*data)]


agreement = [
    agreement_case("binary_2_raters_missing", table(60, 2, [0, 1], 0.25, 0.1)),
    agreement_case("binary_3_raters_full", table(50, 3, [0, 1], 0.3, 0.0, p=[0.7, 0.3])),
    agreement_case("binary_5_raters_full", table(40, 5, [0, 1], 0.35, 0.0)),
    agreement_case("binary_5_raters_missing", table(45, 5, [0, 1], 0.3, 0.35)),
    agreement_case("rubric_1_5_4_raters_full", table(50, 4, [1, 2, 3, 4, 5], 0.4, 0.0)),
    agreement_case("rubric_1_5_3_raters_missing", table(70, 3, [1, 2, 3, 4, 5], 0.4, 0.25)),
    agreement_case(
        "rubric_sparse_codes", table(30, 3, [1, 2, 4, 5], 0.5, 0.1), "categories 1,2,4,5 (3 never used)"
    ),
    agreement_case("all_identical", [[1, 1, 1]] * 12 + [[1, None, 1], [None, 1, None]], "undefined kappas"),
    agreement_case("wikipedia_fleiss", wikipedia_fleiss(), "Fleiss kappa 0.210 on Wikipedia"),
    agreement_case("krippendorff_docstring", krippendorff_docstring(), "alpha nominal 0.691358, interval 0.810845"),
    agreement_case("krippendorff_ordinal_example", krippendorff_ordinal_example(), "alpha ordinal 0.815"),
]

# ---------------------------------------------------------------- alignment

def best_thresholds(truth, score):
    fpr, tpr, thr = roc_curve(truth, score, drop_intermediate=False)
    p = sum(truth)
    n = len(truth) - p
    tp = np.rint(tpr * p)
    fp = np.rint(fpr * n)
    fn = p - tp
    denom = 2 * tp + fp + fn
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan)
    j = tpr - fpr
    i_f1 = int(np.nanargmax(f1))
    i_j = int(np.argmax(j))
    return {
        "max_f1_threshold": clean(thr[i_f1]),
        "max_f1": clean(f1[i_f1]),
        "max_youden_threshold": clean(thr[i_j]),
        "max_youden": clean(j[i_j]),
    }


def alignment_case(name, truth, score, predicted, note=""):
    truth = [bool(t) for t in truth]
    predicted = [bool(p) for p in predicted]
    score = [float(s) for s in score]
    fpr, tpr, thr = roc_curve(truth, score, drop_intermediate=False)
    kw = {"zero_division": np.nan}
    return {
        "name": name,
        "note": note,
        "truth": truth,
        "score": score,
        "predicted": predicted,
        "n": len(truth),
        "positives": int(sum(truth)),
        "auroc": clean(roc_auc_score(truth, score)),
        "roc": [{"threshold": clean(t), "fpr": clean(f), "tpr": clean(r)} for t, f, r in zip(thr, fpr, tpr)],
        "accuracy": clean(accuracy_score(truth, predicted)),
        "precision": clean(precision_score(truth, predicted, **kw)),
        "recall": clean(recall_score(truth, predicted, **kw)),
        "f1": clean(f1_score(truth, predicted, **kw)),
        "cohen_kappa": clean(cohen_kappa_score(truth, predicted)),
        "majority_baseline": max(sum(truth), len(truth) - sum(truth)) / len(truth),
        **best_thresholds(truth, score),
    }


def scored(n, prevalence, separation, decimals=None):
    truth = rng.random(n) < prevalence
    score = rng.normal(0, 1, n) + separation * truth
    score = 1 / (1 + np.exp(-score))
    if decimals is not None:
        score = np.round(score, decimals)
    return truth.tolist(), score.tolist()


alignment = []
t, s = scored(120, 0.4, 1.2, decimals=1)
alignment.append(alignment_case("ties_one_decimal_120", t, s, [x >= 0.5 for x in s], "scores rounded: many ties"))
t, s = scored(60, 0.5, 1.0)
alignment.append(alignment_case("continuous_60", t, s, [x >= 0.6 for x in s]))
t = (rng.random(200) < 0.3).tolist()
s = [int(min(4, max(0, round(rng.normal(1.3 + 1.5 * x, 1.0))))) for x in t]
alignment.append(alignment_case("integer_scores_200", t, s, [x >= 2 for x in s], "scores in 0..4: heavy ties"))
t = [True] * 5 + [False] * 35
s = (rng.normal(0, 1, 40) + 0.8 * np.array(t)).tolist()
alignment.append(alignment_case("imbalanced_40", t, s, [x >= 0.5 for x in s], "5 positives of 40"))
t, s = scored(50, 0.3, 0.5)
alignment.append(
    alignment_case("predicted_all_negative_50", t, s, [False] * 50, "precision undefined (null)")
)

# ---------------------------------------------------------------- percentiles

percentiles = []
for arr in [[3.0], [1.0, 2.0], rng.normal(0, 1, 17).tolist(), rng.random(100).tolist(), [5, 1, 4, 4, 2, 9, 0]]:
    arr = [float(x) for x in arr]
    qs = [0.0, 2.5, 5.0, 25.0, 50.0, 90.0, 97.5, 100.0]
    percentiles.append({"values": arr, "q": qs, "expected": [float(np.percentile(arr, q)) for q in qs]})

versions = {
    "numpy": np.__version__,
    "scikit-learn": sklearn.__version__,
    "statsmodels": statsmodels.__version__,
    "krippendorff": getattr(krippendorff, "__version__", "0.9.0"),
}

with open("agreement.json", "w") as f:
    json.dump({"generated_by": "make_reference.py", "versions": versions, "cases": agreement}, f, indent=1)
    f.write("\n")
with open("alignment.json", "w") as f:
    json.dump(
        {
            "generated_by": "make_reference.py",
            "versions": versions,
            "cases": alignment,
            "percentiles": percentiles,
        },
        f,
        indent=1,
    )
    f.write("\n")
print(json.dumps(versions))
