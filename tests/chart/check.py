"""Lints and renders rsgo's Helm chart with real Helm (helm-python-sdk), then validates every
rendered object and every CRD with kubernetes-validate. Prints one JSON report on stdout and
exits non-zero when anything fails. Run by tests/it/chart.rs."""

import json
import pathlib
import sys

import kubernetes_validate
import yaml
from helm_python import chart as helm

NON_DEFAULT = {
    "replicaCount": 3,
    "image": {"repository": "registry.example.com/rsgo", "tag": "1.2.3", "pullPolicy": "Always"},
    "serviceAccount": {"create": True, "name": "deployer", "annotations": {"example.com/role": "rsgo"}},
    "rbac": {"create": True, "stackSecrets": True},
    "rsgo": {"defaultEnvironment": "prod", "resyncSeconds": 60, "logLevel": "debug", "port": 9090,
             "logFormat": "json", "authFailuresPerMinute": 0, "auditRetention": 5000},
    "tls": {"secretName": "rsgo-serving-cert"},
    "metrics": {"serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}}},
    "service": {"type": "NodePort", "port": 8080},
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"},
        "hosts": [{"host": "rsgo.example.org", "paths": [{"path": "/api", "pathType": "Prefix"}]}],
        "tls": [{"secretName": "rsgo-tls", "hosts": ["rsgo.example.org"]}],
    },
    "podAnnotations": {"prometheus.io/scrape": "true"},
    "catalogConfigMaps": ["team-catalog"],
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
}


# Kinds of operators the chart can target, whose schemas kubernetes-validate does not hold; the
# Rust test checks their fields.
OPERATOR_KINDS = {"ServiceMonitor"}


def validate(obj, where, problems):
    if obj.get("kind") in OPERATOR_KINDS:
        return
    try:
        kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
    except Exception as error:  # every validation failure is reported, not raised
        problems.append(f"{where}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}: {error}")


def render(path, values, problems):
    lint = helm.lint(str(path), values, strict=True)
    for message in lint["messages"]:
        if message["severity"] >= 2:
            problems.append(f"lint: {message['path']}: {message['error']}")
    problems.extend(f"lint: {error}" for error in lint["errors"])
    rendered = helm.Chart.load(str(path)).render(values, name="rsgo", namespace="rsgo-system", is_install=True)
    objects = []
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                validate(doc, template, problems)
                objects.append(doc)
    return objects, rendered


def main():
    path = pathlib.Path(sys.argv[1])
    problems = []
    report = {}
    for label, values in (("default", None), ("non-default", NON_DEFAULT)):
        objects, rendered = render(path, values, problems)
        notes = next((v for k, v in rendered.items() if k.endswith("NOTES.txt")), "")
        report[label] = {
            "objects": [f"{o['kind']}/{o['metadata']['name']}" for o in objects],
            "deployment": next(o for o in objects if o["kind"] == "Deployment"),
            "clusterRole": next(o for o in objects if o["kind"] == "ClusterRole"),
            "serviceMonitor": next((o for o in objects if o["kind"] == "ServiceMonitor"), None),
            "notes": notes,
        }
    crds = []
    for file in sorted((path / "crds").glob("*.yaml")):
        crd = yaml.safe_load(file.read_text())
        validate(crd, file.name, problems)
        crds.append(crd["metadata"]["name"])
    report["crds"] = crds
    report["problems"] = problems
    print(json.dumps(report))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
