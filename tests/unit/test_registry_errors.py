"""Classifying MLflow failures while reading registry state: absent, retryable, or a plain failure (never "nothing there")."""

from __future__ import annotations

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, RESOURCE_DOES_NOT_EXIST
from prefect.states import Failed

from openchat_core.registry.store import RegistryReadError, RegistryUnavailable, is_absent, read_failure
from tasks.common import retry_on_io_errors


def test_only_resource_does_not_exist_is_absence():
    assert is_absent(MlflowException("no such model", error_code=RESOURCE_DOES_NOT_EXIST))
    assert not is_absent(MlflowException("denied", error_code=PERMISSION_DENIED))
    assert not is_absent(OSError("disk"))


def test_server_and_connection_failures_are_retried_by_the_stage_tasks_other_failures_are_not():
    unavailable = read_failure("the aliases", MlflowException("API request failed with exception ConnectionError"))
    denied = read_failure("the aliases", MlflowException("denied", error_code=PERMISSION_DENIED))
    assert isinstance(unavailable, RegistryUnavailable) and "could not read the aliases" in str(unavailable)
    assert isinstance(denied, RegistryReadError) and not isinstance(denied, RegistryUnavailable)
    assert retry_on_io_errors(None, None, Failed(data=unavailable))
    assert not retry_on_io_errors(None, None, Failed(data=denied))
