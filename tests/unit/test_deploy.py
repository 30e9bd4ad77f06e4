"""deploy/kubernetes: valid against Kubernetes' own schemas (kubernetes-validate), and wired to the service."""

import kubernetes_validate
import pytest
import yaml
from conftest import ROOT

MANIFEST = ROOT / "deploy/kubernetes/domainlift.yaml"


def _documents() -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text())}


@pytest.mark.parametrize("version", ["1.29.0", "1.33.0"])
def test_every_document_is_valid_kubernetes(version):
    for doc in _documents().values():
        kubernetes_validate.validate(doc, version, strict=True)  # raises on an unknown or misplaced field


def test_the_deployment_probes_the_services_health_routes_and_takes_the_key_from_a_secret():
    docs = _documents()
    assert set(docs) == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    (key,) = [e for e in container["env"] if e["name"] == "DOMAINLIFT_API_KEY"]
    assert "secretKeyRef" in key["valueFrom"] and "value" not in key
    requests = container["resources"]["requests"]
    assert requests["memory"].endswith("Mi") and int(requests["memory"][:-2]) > 0, "sized from measured memory"
    assert pod["securityContext"]["runAsNonRoot"] is True
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"] and hpa["minReplicas"] >= 1
    assert docs["Service"]["spec"]["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]
