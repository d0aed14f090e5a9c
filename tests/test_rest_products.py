"""The data-products REST API over a real socket: publish (YAML and JSON), list, describe, versions,
deprecate and retire, and a registration race.

Its own registry holds the demo mesh's products (governed by ``tests/policies/governed``:
carriers denied to everyone) plus ``logistics.depots``, a table in a PostgreSQL database of this
module, which user olivia (role ``owner:logistics``) publishes; alice is an analyst without an
owner role, carol an admin.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Iterator

import psycopg2
import pytest
import yaml

from gateway.cli.common import load_descriptors
from gateway.registry import Registry
from tests.mesh import LiveMesh, create_database
from tests.rest_api import Api, api_fixture, start_api

pytestmark = pytest.mark.postgres

PRODUCTS = "/api/v1/data-products"
YAML = {"Content-Type": "application/yaml"}


@pytest.fixture(scope="module")
def depots_uri(pg_uri: str) -> str:
    uri = create_database(pg_uri, "rest_products")
    conn = psycopg2.connect(uri)
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE depots (depot_id int PRIMARY KEY, city text NOT NULL, capacity int, slow int)")
        cur.execute("INSERT INTO depots VALUES (1, 'Hamburg', 500, 1), (2, 'Lyon', 300, 1), (3, 'Osaka', NULL, 1)")
    conn.close()
    return uri


@pytest.fixture(scope="module")
def api(live_mesh: LiveMesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("rest-products")
    registry = Registry(live_mesh.registry.path.parent / "rest-products.db")  # beside the demo data: under the source roots
    descriptors, errors = load_descriptors([live_mesh.mesh.products_dir])
    assert not errors
    registry.register(descriptors)
    yield from api_fixture(start_api(registry, tmp))


def depots(uri: str, version: str = "1.0.0", *, extra: list[dict] | None = None, quality: list[dict] | None = None,
           name: str = "depots", notice_days: int = 0, columns: list[dict] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "datamesh.io/v1", "kind": "DataProduct",
        "metadata": {"name": name, "domain": "logistics", "owner": "logistics@example.com", "version": version,
                     "tags": ["logistics", "sites"], "description": "Our depots and what they hold."},
        "spec": {
            "source": {"connector": "postgres", "uri": uri, "table": "public.depots"},
            "schema": columns or [
                {"name": "depot_id", "type": "int32", "required": True, "primary_key": True},
                {"name": "city", "type": "string", "required": True},
                *(extra or []),
            ],
            "compatibility": "backward",
            "deprecation": {"notice_days": notice_days},
            "sla": {"availability": 99.5},
            "quality": quality if quality is not None else [{"name": "known_city", "rule": "city IS NOT NULL", "severity": "error"}],
        },
    }


def publish(api: Api, document: Any, user: str = "olivia", as_yaml: bool = True, query: str = "") -> Any:
    raw = (yaml.safe_dump(document) if as_yaml else json.dumps(document)).encode()
    return api.call(PRODUCTS + query, raw=raw, user=user, method="POST",
                    headers=YAML if as_yaml else {"Content-Type": "application/json"})


# --- publishing ------------------------------------------------------------------------------------


def test_publish_yaml_then_read_query_and_republish(api: Api, depots_uri: str) -> None:
    response = publish(api, depots(depots_uri))
    assert response.status == 201, response.body
    body = response.json()
    assert body["product_id"] == "logistics.depots" and body["version"] == "1.0.0" and body["status"] == "published"
    assert body["validation_checks"]["permission"] == "passed" and body["validation_checks"]["schema_validation"] == "passed"
    assert body["validation_checks"]["quality_gates"] == "passed"
    assert {c["name"] for c in body["checks"]} >= {"permission", "version", "compatibility", "source_connectivity",
                                                  "schema_validation", "quality.known_city", "publish"}
    assert response.header("Location") == "/api/v1/data-products/logistics.depots"
    # queryable at once, described with its quality
    rows = api.call(f"{PRODUCTS}/logistics.depots/query", {"columns": ["city"], "order_by": ["depot_id"]}).json()["rows"]
    assert rows == [{"city": "Hamburg"}, {"city": "Lyon"}, {"city": "Osaka"}]
    detail = api.call(f"{PRODUCTS}/logistics.depots").json()
    assert detail["version"] == "1.0.0" and detail["status"] == "active" and detail["lifecycle"]["published_by"] == "olivia"
    assert detail["quality"]["score"] == 1.0 and detail["quality"]["results"][0]["name"] == "known_city"
    assert detail["source"] == {"connector": "postgres", "table": "public.depots"}  # never the URI
    assert [c["name"] for c in detail["contract"]["columns"]] == ["depot_id", "city"]
    # the same again changes nothing
    again = publish(api, depots(depots_uri), as_yaml=False)
    assert again.status == 200 and again.json()["status"] == "unchanged"


def test_a_compatible_version_in_json_and_the_version_list(api: Api, depots_uri: str) -> None:
    publish(api, depots(depots_uri))
    response = publish(api, depots(depots_uri, "1.1.0", extra=[{"name": "capacity", "type": "int64"}]), as_yaml=False)
    assert response.status == 201, response.body
    assert response.json()["validation_checks"]["compatibility"] == "passed"
    versions = api.call(f"{PRODUCTS}/logistics.depots/versions").json()
    listed = [v["version"] for v in versions["versions"]]
    assert listed[:2] == ["1.1.0", "1.0.0"] or "1.1.0" in listed
    assert all(v["status"] == "active" and v["registered_at"] for v in versions["versions"])


def test_a_dry_run_checks_without_publishing(api: Api, depots_uri: str) -> None:
    response = publish(api, depots(depots_uri, "1.5.0", name="depots_dry"), query="?dry_run=true")
    assert response.status == 200 and response.json()["status"] == "validated"
    assert api.call(f"{PRODUCTS}/logistics.depots_dry").status == 404


def test_every_problem_of_an_invalid_descriptor_is_listed(api: Api, depots_uri: str) -> None:
    document = depots(depots_uri, "one")
    document["spec"]["schema"][1]["type"] = "strng"
    document["metadata"]["colour"] = "red"
    response = publish(api, document, as_yaml=False)
    assert response.status == 422, response.body
    body = response.json()
    fields = {p["field"] for p in body["problems"]}
    assert {"metadata.version", "spec.schema[1].type", "metadata.colour"} <= fields, body["problems"]
    assert body["error"] == "invalid data product" and body["field"] in fields and body["status"] == "refused"


def test_a_breaking_change_within_a_major_is_422(api: Api, depots_uri: str) -> None:
    publish(api, depots(depots_uri))
    columns = [{"name": "depot_id", "type": "int32", "required": True, "primary_key": True}]  # city dropped
    response = publish(api, depots(depots_uri, "1.9.0", columns=columns))
    assert response.status == 422
    body = response.json()
    assert body["validation_checks"]["compatibility"] == "failed"
    assert any(p["field"] == "compatibility" and "city" in p["message"] for p in body["problems"])


def test_a_failing_error_quality_gate_is_422(api: Api, depots_uri: str) -> None:
    rule = [{"name": "has_capacity", "rule": "capacity IS NOT NULL", "severity": "error"}]
    response = publish(api, depots(depots_uri, "1.0.0", name="depots_gated", quality=rule,
                                   extra=[{"name": "capacity", "type": "int64"}]))
    assert response.status == 422
    assert any(p["field"] == "quality.has_capacity" for p in response.json()["problems"])


def test_publishing_needs_the_owner_role(api: Api, depots_uri: str) -> None:
    response = publish(api, depots(depots_uri, "1.0.0", name="depots_by_alice"), user="alice")
    assert response.status == 403, response.body
    body = response.json()
    assert body["error"] == "permission denied" and "owner:logistics" in body["detail"]
    assert body["validation_checks"]["permission"] == "failed"
    assert api.call(f"{PRODUCTS}/logistics.depots_by_alice", user="carol").status == 404


@pytest.mark.parametrize(("raw", "content_type", "status", "error"), [
    (b"apiVersion: [", "application/yaml", 400, "invalid YAML"),
    (b'{"apiVersion": ', "application/json", 400, "invalid JSON"),
    (b"kind: DataProduct", "text/plain", 415, "unsupported media type"),
    (b"", "application/yaml", 422, "invalid request"),
])
def test_unreadable_bodies(api: Api, raw: bytes, content_type: str, status: int, error: str) -> None:
    response = api.call(PRODUCTS, raw=raw, user="olivia", method="POST", headers={"Content-Type": content_type})
    assert response.status == status and response.json()["error"] == error


def test_concurrent_registrations_of_one_product_serialize_with_a_conflict(api: Api, depots_uri: str) -> None:
    """Two publishers race to add a version to the same product; the checks of both read the
    registry before either commits (a slow quality rule holds them), so the loser gets 409."""
    publish(api, depots(depots_uri, name="depots_race"))
    slow = [{"name": "slow", "rule": "pg_sleep(slow * 0.5) IS NOT NULL", "severity": "warning"}]
    barrier, answers = threading.Barrier(2), {}

    def race(version: str) -> None:
        document = depots(depots_uri, version, name="depots_race", quality=slow)
        barrier.wait()
        answers[version] = publish(api, document)

    threads = [threading.Thread(target=race, args=(v,)) for v in ("1.1.0", "1.2.0")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    statuses = sorted(a.status for a in answers.values())
    assert statuses == [201, 409], {v: a.body for v, a in answers.items()}
    loser = next(a for a in answers.values() if a.status == 409).json()
    assert loser["error"] == "conflict" and "logistics.depots_race" in loser["detail"]


# --- reading ---------------------------------------------------------------------------------------


def test_listing_is_policy_filtered_and_paginated(api: Api) -> None:
    body = api.call(PRODUCTS).json()
    ids = [p["product_id"] for p in body["products"]]
    assert "orders.orders" in ids and "shipping.carriers" not in ids  # denied: invisible
    assert body["total"] == len(ids) and body["next_offset"] is None and ids == sorted(ids)
    first = api.call(f"{PRODUCTS}?limit=2").json()
    second = api.call(f"{PRODUCTS}?limit=2&offset=2").json()
    assert [p["product_id"] for p in first["products"] + second["products"]] == ids[:4]
    assert first["next_offset"] == 2 and first["total"] == body["total"]
    orders = api.call(f"{PRODUCTS}?domain=orders").json()["products"]
    assert {p["product_id"] for p in orders} >= {"orders.orders", "orders.order_items"}
    assert all(p["domain"] == "orders" for p in orders)
    assert all(p["status"] == "active" and p["majors"] == [1] for p in orders)
    owner = orders[0]["owner"]
    assert {p["product_id"] for p in api.call(f"{PRODUCTS}?owner={owner.upper()}").json()["products"]} == {
        p["product_id"] for p in body["products"] if p["owner"] == owner}
    tag = body["products"][0]["tags"][0]
    tagged = api.call(f"{PRODUCTS}?tag={tag}").json()["products"]
    assert tagged and all(tag in p["tags"] for p in tagged)
    assert api.call(f"{PRODUCTS}?tag={tag}&tag=no-such-tag").json()["products"] == []


def test_listing_rejects_bad_parameters_listing_each(api: Api) -> None:
    response = api.call(f"{PRODUCTS}?limit=0&offset=-1&status=gone")
    assert response.status == 422
    assert {p["field"] for p in response.json()["problems"]} == {"limit", "offset", "status[0]"}


def test_an_unreadable_product_is_404_like_an_unknown_one(api: Api) -> None:
    for product in ("shipping.carriers", "shipping.nothing"):
        for suffix in ("", "/versions"):
            response = api.call(f"{PRODUCTS}/{product}{suffix}", user="carol")
            assert response.status == 404 and response.json()["error"] == "not found", (product, suffix)


def test_product_detail_has_contract_sla_and_majors(api: Api) -> None:
    detail = api.call(f"{PRODUCTS}/orders.orders").json()
    assert detail["product_id"] == "orders.orders" and detail["majors"] == [1] and detail["status"] == "active"
    assert detail["sla"]["freshness"] == "1d" and detail["contract"]["columns"][0]["name"] == "order_id"
    assert "uri" not in json.dumps(detail["source"])
    assert api.call(f"{PRODUCTS}/orders.orders@1").json()["version"] == detail["version"]
    assert api.call(f"{PRODUCTS}/orders.orders@4").status == 404


# --- lifecycle -------------------------------------------------------------------------------------


def test_deprecate_then_retire(api: Api, depots_uri: str) -> None:
    assert publish(api, depots(depots_uri, name="depots_old")).status == 201
    response = api.call(f"{PRODUCTS}/logistics.depots_old/deprecate", user="alice", method="POST")
    assert response.status == 403 and "owner:logistics" in response.json()["detail"]
    response = api.call(f"{PRODUCTS}/logistics.depots_old@1/deprecate",
                        {"reason": "moved", "replaced_by": "logistics.depots"}, user="olivia")
    assert response.status == 200, response.body
    change = response.json()
    assert change["status"] == "deprecated" and change["changed"] == ["1.0.0"] and change["principal"] == "olivia"
    detail = api.call(f"{PRODUCTS}/logistics.depots_old").json()
    assert detail["status"] == "deprecated" and detail["lifecycle"]["replaced_by"] == "logistics.depots"
    assert [p["product_id"] for p in api.call(f"{PRODUCTS}?domain=logistics&status=deprecated").json()["products"]] == [
        "logistics.depots_old"]
    response = api.call(f"{PRODUCTS}/logistics.depots_old/retire", {}, user="olivia")
    assert response.status == 200 and response.json()["status"] == "retired"
    gone = api.call(f"{PRODUCTS}/logistics.depots_old")
    assert gone.status == 404 and "retired" in gone.json()["detail"]
    assert api.call(f"{PRODUCTS}/logistics.depots_old/query", {"limit": 1}).status == 404
    retired = api.call(f"{PRODUCTS}?domain=logistics&status=retired").json()["products"]
    assert [(p["product_id"], p["status"]) for p in retired] == [("logistics.depots_old", "retired")]
    versions = api.call(f"{PRODUCTS}/logistics.depots_old/versions").json()["versions"]
    assert versions[0]["status"] == "retired" and versions[0]["reason"] == "moved"


def test_retiring_waits_for_the_notice_unless_an_admin_forces_it(api: Api, depots_uri: str) -> None:
    assert publish(api, depots(depots_uri, name="depots_notice", notice_days=30)).status == 201
    api.call(f"{PRODUCTS}/logistics.depots_notice/deprecate", {}, user="olivia")
    response = api.call(f"{PRODUCTS}/logistics.depots_notice/retire", {}, user="olivia")
    assert response.status == 409 and "30" in response.json()["detail"]
    response = api.call(f"{PRODUCTS}/logistics.depots_notice/retire", {"force": True}, user="olivia")
    assert response.status == 403
    response = api.call(f"{PRODUCTS}/logistics.depots_notice/retire", {"force": True}, user="carol")
    assert response.status == 200 and response.json()["forced"] is True
    response = api.call(f"{PRODUCTS}/logistics.depots_notice/retire", {"version": "two"}, user="carol")
    assert response.status in (400, 422) and "two" in response.json()["detail"]
    response = api.call(f"{PRODUCTS}/logistics.depots_notice/retire", {"colour": "red"}, user="carol")
    assert response.status == 422 and response.json()["field"] == "colour"


def test_openapi_describes_the_product_routes(api: Api) -> None:
    paths = api.call("/api/openapi.json", user=None).json()["paths"]
    assert {"/api/v1/data-products", "/api/v1/data-products/{product_id}", "/api/v1/data-products/{product_id}/versions",
            "/api/v1/data-products/{product_id}/deprecate", "/api/v1/data-products/{product_id}/retire"} <= set(paths)
    post = paths["/api/v1/data-products"]["post"]
    assert {"application/yaml", "application/json"} <= set(post["requestBody"]["content"])
    assert {"201", "200", "403", "409", "422", "415"} <= set(post["responses"])
    assert paths["/api/v1/data-products"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ProductList")
    assert {p["name"] for p in paths["/api/v1/data-products"]["get"]["parameters"]} == {"domain", "tag", "owner", "status",
                                                                                         "limit", "offset"}

