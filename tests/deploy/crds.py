"""Custom objects validated against the exact CRD schemas a cluster enforces.

The CRDs are vendored unchanged in tests/deploy/crds/ (Strimzi 1.2.0, Gateway API v1.6.1
standard channel), beside a hand-written subset of Envoy Gateway v1.9.0's (README there).
Folders named in SLOTSTREAM_EXTRA_CRDS (os.pathsep-separated) are read after them and win
for the kinds they define: CI's k8s-smoke job points it at Envoy Gateway's full release
CRDs. `kubernetes-validate` knows only the built-in kinds, so
each custom object is checked here against its CRD's `openAPIV3Schema` for the version it
names, with the `jsonschema` library. Like `kubectl apply --validate=strict`, an unknown
field fails (the API server would silently prune it), and so does an apiVersion the CRD
does not serve (Strimzi 1.x serves only kafka.strimzi.io/v1)."""

import copy
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRD_DIR = Path(__file__).parent / "crds"
#: More CRD folders, read after CRD_DIR (a later definition of a kind replaces an earlier one).
EXTRA_ENV = "SLOTSTREAM_EXTRA_CRDS"

Schema = dict[str, Any]


@dataclass(frozen=True)
class Crd:
    group: str
    kind: str
    served: frozenset[str]
    schemas: dict[str, Schema]


def _strict(schema: Schema) -> Schema:
    """Forbid unknown fields wherever the CRD lists the fields of an object (structural
    schemas prune them silently otherwise), except where it preserves unknown fields."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    # metadata is validated by the API server's ObjectMeta, not by the CRD.
    schema.setdefault("properties", {})["metadata"] = {"type": "object"}
    return schema


@cache
def crds() -> dict[tuple[str, str], Crd]:
    """(group, kind) → CRD, from every vendored file."""
    found: dict[tuple[str, str], Crd] = {}
    extra = [Path(folder) for folder in os.environ.get(EXTRA_ENV, "").split(os.pathsep) if folder]
    paths = [path for folder in (CRD_DIR, *extra) for path in sorted(folder.rglob("*.yaml"))]
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            versions = spec["versions"]
            found[(spec["group"], spec["names"]["kind"])] = Crd(
                group=spec["group"],
                kind=spec["names"]["kind"],
                served=frozenset(v["name"] for v in versions if v.get("served")),
                schemas={v["name"]: _strict(v["schema"]["openAPIV3Schema"]) for v in versions},
            )
    return found


#: API groups Kubernetes serves itself (validated by kubernetes-validate instead).
BUILTIN_GROUPS = frozenset(
    {
        "",
        "apps",
        "batch",
        "autoscaling",
        "policy",
        "networking.k8s.io",
        "rbac.authorization.k8s.io",
        "storage.k8s.io",
        "scheduling.k8s.io",
        "coordination.k8s.io",
        "discovery.k8s.io",
        "node.k8s.io",
        "admissionregistration.k8s.io",
        "apiextensions.k8s.io",
        "certificates.k8s.io",
        "events.k8s.io",
    }
)


def is_custom(doc: dict[str, Any]) -> bool:
    """Objects of API groups that a CRD adds (Strimzi, the Gateway API, …)."""
    return doc["apiVersion"].rpartition("/")[0] not in BUILTIN_GROUPS


def problems(doc: dict[str, Any]) -> list[str]:
    """Why the cluster would refuse (or silently alter) this custom object; [] if valid."""
    group, _, version = doc["apiVersion"].rpartition("/")
    where = f"{doc['kind']}/{doc.get('metadata', {}).get('name')}"
    crd = crds().get((group, doc["kind"]))
    if crd is None:
        return [f"{where}: no vendored CRD for {group} {doc['kind']}"]
    if version not in crd.served:
        return [f"{where}: {doc['apiVersion']} is not served (served: {sorted(crd.served)})"]
    validator = jsonschema.Draft7Validator(crd.schemas[version])
    return [
        f"{where}: {'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    ]
