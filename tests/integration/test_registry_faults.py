"""The registry fails closed: against a real MLflow tracking server, behind a loopback proxy that refuses chosen calls.

Only MLflow's RESOURCE_DOES_NOT_EXIST means "not there"; any other failure while reading aliases,
versions or tags stops the decision with a message naming what was being read, and a server-side
or connection failure is a `RegistryUnavailable` (a ConnectionError, which the stage tasks retry).
"""

from __future__ import annotations

import pytest

from openchat_core.registry.promotion import metric_tags, promote_candidate
from openchat_core.registry.store import CHAMPION, ModelRegistry, RegistryReadError, RegistryUnavailable
from tests.integration.servers import FaultProxy, mlflow_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # ~35 s, mostly the MLflow server's start

NAME = "faulty-model"
GET_MODEL = "/registered-models/get"
SEARCH_VERSIONS = "/model-versions/search"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


@pytest.fixture(scope="module")
def versions(server):
    """v1 (champion, accuracy 0.9) and v2 (candidate, accuracy 0.1), registered directly on the server."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server, registry_uri=server)
    run = client.create_run(client.create_experiment("faults"))
    client.create_registered_model(NAME)
    for accuracy in (0.9, 0.1):
        mv = client.create_model_version(NAME, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        for key, value in metric_tags({"gen/accuracy": accuracy}, "k").items():
            client.set_model_version_tag(NAME, mv.version, key, value)
    registry = ModelRegistry(server, NAME)
    promote_candidate(registry, registry.version("1"), "gen/accuracy", "maximize", 0.0, "k")
    assert registry.by_alias(CHAMPION).version == "1"
    return registry


@pytest.fixture()
def proxy(server, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's own retries (minutes of backoff) would only slow the test
    with FaultProxy(server) as p:
        yield p


def test_a_refused_alias_read_never_moves_champion(versions, proxy):
    through_proxy = ModelRegistry(proxy.url, NAME)
    candidate = through_proxy.version("2")  # worse than the champion
    proxy.refuse(GET_MODEL, 503, "TEMPORARILY_UNAVAILABLE")
    with pytest.raises(RegistryUnavailable, match=r"could not read the registered model of registered model 'faulty-model'") as err:
        promote_candidate(through_proxy, candidate, "gen/accuracy", "maximize", 0.0, "k")
    assert isinstance(err.value, ConnectionError) and proxy.refused  # retried by the IO-retrying tasks
    assert versions.by_alias(CHAMPION).version == "1" and versions.by_alias("challenger") is None

    proxy.refuse(GET_MODEL, 403, "PERMISSION_DENIED")  # not transient: fails, and is not a ConnectionError
    with pytest.raises(RegistryReadError, match="PERMISSION_DENIED") as err:
        through_proxy.by_alias(CHAMPION)
    assert not isinstance(err.value, ConnectionError)
    assert versions.by_alias(CHAMPION).version == "1"

    proxy.clear()  # the same call through the same proxy now works: the comparison happens and v1 stays champion
    decision = promote_candidate(through_proxy, candidate, "gen/accuracy", "maximize", 0.0, "k")
    assert decision.action == "challenger" and versions.by_alias(CHAMPION).version == "1"


def test_a_refused_version_search_is_not_no_match(versions, proxy):
    through_proxy = ModelRegistry(proxy.url, NAME)
    key, value = next((k, v) for k, v in versions.version("1").tags.items() if k.startswith("openchat.metric."))
    assert through_proxy.find_by_tag(key, value).version == "1"  # what the refused call would have found
    proxy.refuse(SEARCH_VERSIONS, 500, "INTERNAL_ERROR")
    with pytest.raises(RegistryUnavailable, match="could not read the versions tagged"):
        through_proxy.find_by_tag(key, value)
    with pytest.raises(RegistryUnavailable):
        through_proxy.versions()


def test_a_missing_model_is_absent_not_an_error(server, proxy):
    missing = ModelRegistry(proxy.url, "never-registered")  # the server answers 404 RESOURCE_DOES_NOT_EXIST
    assert missing.by_alias(CHAMPION) is None and missing.registered_tags() == {} and missing.find_by_tag("k", "v") is None
