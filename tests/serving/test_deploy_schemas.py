"""deploy/ against the published schemas: the compose file against the Compose specification
(as vendored by check-jsonschema) and every Kubernetes manifest against the Kubernetes OpenAPI
schemas bundled with kubernetes-validate. Both ship their schemas: no network at test time."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# The oldest Kubernetes minor the manifests promise to work on (docs/deploy.md).
KUBERNETES = "1.29"


def compose_schema() -> dict[str, Any]:
    text = files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema = json.loads(text.read_text())
    assert isinstance(schema, dict)
    return schema


def test_compose_file_follows_the_compose_specification() -> None:
    data = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(data)]
    assert not errors


def test_compose_schema_catches_a_misspelt_key() -> None:
    data = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    data["services"]["bot"]["enviroment"] = {"X": "1"}
    schema = compose_schema()
    assert not jsonschema.validators.validator_for(schema)(schema).is_valid(data)


def manifests() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return found


@pytest.mark.parametrize(("name", "doc"), manifests(), ids=[n for n, _ in manifests()])
def test_kubernetes_manifest_follows_the_schema(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_kubernetes_schema_catches_a_misplaced_field() -> None:
    _, doc = next((n, d) for n, d in manifests() if d["kind"] == "Deployment")
    broken = json.loads(json.dumps(doc))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)
