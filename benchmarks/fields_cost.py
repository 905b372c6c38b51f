"""What the input checks cost per object at start-up: unknown fields (mesh/kube_fields.py)
and label keys, values and annotations (mesh/labels.py).

    .venv/bin/python benchmarks/fields_cost.py [--services 10000]

Parses the scale benchmark's manifest (N Services, 3 Pods each) once, then times
``load_parsed`` over the decoded documents with and without the unknown-field check, and each check alone, best of a few
rounds, and prints microseconds per object. Timings on a shared machine are a direction.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale_bench import manifest

import mesh.objects
from mesh import manifests
from mesh.kube_fields import unknown_fields
from mesh.labels import check_annotations, check_labels


def interleaved(variants: dict[str, Any], rounds: int) -> dict[str, float]:
    """Best time of each variant, the variants taking turns in every round so that the
    load of a shared machine falls on all of them alike."""
    out = dict.fromkeys(variants, float("inf"))
    for _ in range(rounds):
        for name, fn in variants.items():
            gc.collect()
            start = time.perf_counter()
            fn()
            out[name] = min(out[name], time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    docs = manifests.parse_documents(manifest(args.services))
    assert docs is not None
    n = len(docs)

    def load(strict: bool) -> None:
        for doc in docs:  # parse_object does not change the documents
            result = manifests.parse_object(doc, "bench.yaml", strict_fields=strict)
            assert isinstance(result, mesh.objects.KubeObject), result

    def walk_only() -> None:
        for doc in docs:
            unknown_fields(doc, doc["kind"])

    def labels_only() -> None:
        # What the models' label validators run per object: labels, annotations, and a
        # Service's selector.
        for doc in docs:
            meta = doc["metadata"]
            check_labels(meta.get("labels", {}))
            check_annotations(meta.get("annotations", {}))
            selector = doc.get("spec", {}).get("selector")
            if selector is not None:
                check_labels(selector)

    best = interleaved(
        {
            "strict": lambda: load(True),
            "loose": lambda: load(False),
            "walk": walk_only,
            "labels": labels_only,
        },
        args.rounds,
    )
    strict, loose, walk, labels = (best[k] for k in ("strict", "loose", "walk", "labels"))
    us = 1e6 / n
    print(f"{n} objects ({args.services} Services, 3 Pods each), best of {args.rounds}")
    print(f"  load, all checks:            {strict * us:6.2f} us/object")
    print(f"  load, no unknown-field check:{loose * us:6.2f} us/object")
    print(f"  unknown-field walk alone:    {walk * us:6.2f} us/object")
    print(f"  label checks alone:          {labels * us:6.2f} us/object")


if __name__ == "__main__":
    main()
