"""Azure RBAC roles the function app's managed identity needs, derived from its settings.

The Bicep template (``infra/modules/roles.bicep``) assigns roles by definition id; this module
says which ones the configuration in force needs, so a test can prove the template grants
every one of them (``tests/test_infra.py``). Only identity-based access needs a role: a
connection string carries its own key (Azurite, local runs).

Role definition ids are Azure's built-in ones (the same in every tenant and cloud).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from sync_core.settings import Settings

STORAGE_BLOB_DATA_OWNER = "Storage Blob Data Owner"
STORAGE_QUEUE_DATA_CONTRIBUTOR = "Storage Queue Data Contributor"
STORAGE_TABLE_DATA_CONTRIBUTOR = "Storage Table Data Contributor"
KEY_VAULT_SECRETS_OFFICER = "Key Vault Secrets Officer"
MONITORING_METRICS_PUBLISHER = "Monitoring Metrics Publisher"

#: Role name -> built-in role definition id.
REQUIRED_ROLES: dict[str, str] = {
    STORAGE_BLOB_DATA_OWNER: "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    STORAGE_QUEUE_DATA_CONTRIBUTOR: "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    STORAGE_TABLE_DATA_CONTRIBUTOR: "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    KEY_VAULT_SECRETS_OFFICER: "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",
    MONITORING_METRICS_PUBLISHER: "3913510d-42f4-4e42-8a64-420c390055eb",
}

#: Role name -> the resource type each assignment is scoped to (least privilege: the one
#: storage account, vault or Application Insights component, never the resource group).
ROLE_SCOPE_TYPES: dict[str, str] = {
    STORAGE_BLOB_DATA_OWNER: "Microsoft.Storage/storageAccounts",
    STORAGE_QUEUE_DATA_CONTRIBUTOR: "Microsoft.Storage/storageAccounts",
    STORAGE_TABLE_DATA_CONTRIBUTOR: "Microsoft.Storage/storageAccounts",
    KEY_VAULT_SECRETS_OFFICER: "Microsoft.KeyVault/vaults",
    MONITORING_METRICS_PUBLISHER: "Microsoft.Insights/components",
}

#: The Functions host's storage connection (``function_app.STORAGE_CONNECTION``).
HOST_STORAGE = "AzureWebJobsStorage"


def _https_target(url: str, scheme: str) -> bool:
    """``<scheme>https://...``: an endpoint reached with the managed identity."""
    return url.startswith(scheme) and url[len(scheme):].strip().lower().startswith("https://")


def required_roles(settings: Settings, host_env: Mapping[str, str] | None = None) -> set[str]:
    """Names (keys of :data:`REQUIRED_ROLES`) of the roles the app's identity needs.

    * ``azuretables:https://...`` state -> Storage Table Data Contributor;
    * ``azurequeue:https://...`` sync queue -> Storage Queue Data Contributor (sending);
    * Key Vault secrets -> Key Vault Secrets Officer, not Secrets User: the app writes secrets
      (the webhook ``clientState`` key, delegated token caches, revocation tombstones);
    * ``host_env`` (the other app settings, default ``os.environ``): an identity-based
      ``AzureWebJobsStorage__*`` connection -> Storage Blob Data Owner (the host's keys and
      timer leases, the Flex Consumption deployment container) and Storage Queue Data
      Contributor (the queue trigger reads, and moves failures to the poison queue);
      ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING`` with ``Authorization=AAD`` (local auth
      disabled) -> Monitoring Metrics Publisher.
    """
    env = os.environ if host_env is None else host_env
    roles: set[str] = set()
    if _https_target(settings.state_url, "azuretables:"):
        roles.add(STORAGE_TABLE_DATA_CONTRIBUTOR)
    if _https_target(settings.queue_url, "azurequeue:"):
        roles.add(STORAGE_QUEUE_DATA_CONTRIBUTOR)
    secrets_url = settings.secrets_url
    if secrets_url.startswith("keyvault:") or secrets_url.startswith("https://"):
        roles.add(KEY_VAULT_SECRETS_OFFICER)
    identity_storage = not env.get(HOST_STORAGE) and any(
        name.startswith(HOST_STORAGE + "__") and name.endswith(("ServiceUri", "__accountName"))
        for name in env
    )
    if identity_storage:
        roles.update({STORAGE_BLOB_DATA_OWNER, STORAGE_QUEUE_DATA_CONTRIBUTOR})
    auth = env.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "")
    if "authorization=aad" in auth.replace(" ", "").lower():
        roles.add(MONITORING_METRICS_PUBLISHER)
    return roles
