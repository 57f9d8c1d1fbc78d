"""infra/: the Bicep template and the deployment scripts, checked offline.

No Bicep compiler or Azure here, so:

* every ``.bicep`` file parses with pycep-parser, every parameter has a ``@description``, and
  each module call passes exactly the parameters the module declares (what ``az bicep build``
  would catch);
* ``checkov --framework bicep`` (its own venv, ``.testrun/checkov``, set up by
  ``devtools/install_test_deps.sh``) reports no failed check, and every skipped check carries a
  written reason in the template;
* every setting the code reads (``sync_core/settings.py``: ``env.get("NAME")`` / ``env["NAME"]``,
  found by an ``ast`` walk) and every ``%NAME%`` / ``connection`` of the function bindings is set
  by the template's app settings;
* ``Settings.from_env`` of those app settings (Azure's runtime values stood in by placeholders)
  needs exactly the roles :mod:`sync_core.azure_roles` names, and each is assigned to the app's
  identity in ``infra/modules/roles.bicep``, compared by role definition id;
* the shell scripts pass ``bash -n`` (and shellcheck, where installed).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from pycep import BicepParser

import function_app
from devtools.funchost import _get_functions
from sync_core.azure_roles import REQUIRED_ROLES, ROLE_SCOPE_TYPES, required_roles
from sync_core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
CHECKOV = ROOT / ".testrun" / "checkov" / "bin" / "checkov"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))
SCRIPTS = sorted(INFRA.glob("*.sh"))

#: Read by the code, deliberately not set in Azure.
NOT_IN_AZURE = {
    "DAVBRIDGE_HOME": "only locates the embedded defaults (SQLite state, secrets file) of the CLI and "
                      "local runs; Azure sets DAVBRIDGE_STATE_URL and DAVBRIDGE_SECRETS_URL instead",
}
#: Needed by the Functions host itself, not by a binding: its keys and timer leases are blobs.
HOST_CONNECTIONS = {"AzureWebJobsStorage": {"blobServiceUri"}}
#: Binding type -> the identity-based connection setting (<connection>__<suffix>) it uses.
CONNECTION_SERVICES = {
    "queueTrigger": "queueServiceUri", "queue": "queueServiceUri",
    "blobTrigger": "blobServiceUri", "blob": "blobServiceUri",
    "table": "tableServiceUri",
}
#: App settings read by the Functions host or its Application Insights integration.
#: Read by the Functions host or the Python worker, not by davbridge's code.
HOST_SETTING_PREFIXES = ("AzureWebJobsStorage__", "APPLICATIONINSIGHTS_", "PYTHON_THREADPOOL_THREAD_COUNT")
#: Flex Consumption refuses these: runtime, scale and deployment come from functionAppConfig.
FLEX_FORBIDDEN = {
    "FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION", "FUNCTIONS_WORKER_RUNTIME_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE", "WEBSITE_CONTENTSHARE", "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "SCM_DO_BUILD_DURING_DEPLOYMENT", "ENABLE_ORYX_BUILD", "WEBSITE_MAX_DYNAMIC_APPLICATION_SCALE_OUT",
}

# Values Azure only knows at deployment time, by the expression text of the template.
HOST = "davbridge-func-abc123.azurewebsites.net"
PLACEHOLDERS: dict[str, Any] = {
    "environment().suffixes.storage": "core.windows.net",
    "environment().authentication.loginEndpoint": "https://login.microsoftonline.com/",
    "tenant().tenantId": "11111111-2222-3333-4444-555555555555",
    "functionApp.properties.defaultHostName": HOST,
    "storage.outputs.name": "davbridgeabc123",
    "keyVault.outputs.vaultUri": "https://davbridgekvabc123.vault.azure.net/",
    "monitoring.outputs.connectionString": "InstrumentationKey=00000000-0000-0000-0000-000000000000;"
                                           "IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/",
}
GRAPH_CLIENT_ID = "99999999-8888-7777-6666-555555555555"


# --------------------------------------------------------------------------- parsing


@pytest.fixture(scope="module")
def bicep() -> dict[str, dict[str, Any]]:
    """Every .bicep file (path relative to infra/) -> pycep's JSON."""
    parser = BicepParser()
    return {p.relative_to(INFRA).as_posix(): dict(parser.parse(file_path=p)) for p in BICEP_FILES}


def test_infra_has_the_template_and_its_modules() -> None:
    names = {p.relative_to(INFRA).as_posix() for p in BICEP_FILES}
    assert {"main.bicep", "modules/functionapp.bicep", "modules/roles.bicep", "modules/storage.bicep",
            "modules/keyvault.bicep", "modules/monitoring.bicep"} <= names


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_every_bicep_file_parses(path: Path) -> None:
    doc = BicepParser().parse(file_path=path)
    assert doc.get("parameters") or doc.get("resources") or doc.get("modules")


def test_every_parameter_has_a_description(bicep: dict[str, dict[str, Any]]) -> None:
    missing = [f"{path}: {name}" for path, doc in bicep.items()
               for name, param in doc.get("parameters", {}).items()
               if not any(d["type"] == "description" and str(d.get("argument") or "").strip()
                          for d in param["decorators"])]
    assert not missing, f"parameters without @description: {missing}"


def test_module_calls_pass_exactly_the_declared_parameters(bicep: dict[str, dict[str, Any]]) -> None:
    main = bicep["main.bicep"]
    assert main["globals"]["scope"]["value"] == "resourceGroup"
    for name, module in main["modules"].items():
        assert module["type"] == "local", f"{name}: registry modules do not work offline"
        declared = bicep[module["detail"]["path"]]["parameters"]
        required = {p for p, spec in declared.items() if "default" not in spec}
        passed = set(module["config"]["params"])
        assert required <= passed, f"module {name} misses {sorted(required - passed)}"
        assert passed <= set(declared), f"module {name} passes unknown {sorted(passed - set(declared))}"


def test_parameters_file_names_template_parameters(bicep: dict[str, dict[str, Any]]) -> None:
    doc = json.loads((INFRA / "main.parameters.json").read_text())
    declared = bicep["main.bicep"]["parameters"]
    assert set(doc["parameters"]) <= set(declared)
    for name, entry in doc["parameters"].items():
        allowed = [d["argument"] for d in declared[name]["decorators"] if d["type"] == "allowed"]
        if allowed:
            assert entry["value"] in allowed[0], name


# --------------------------------------------------------------------------- evaluating


def _text(node: Any) -> str:
    """The expression text of a pycep node: ``a.b.c``, ``environment()``, ..."""
    if isinstance(node, str):
        return node
    if isinstance(node, dict) and "function" in node:
        return f"{node['function']['type']}()"
    if isinstance(node, dict) and node.get("operator", {}).get("type") == "property_accessor":
        ops = node["operator"]["operands"]
        return f"{_text(ops['operand_1'])}.{_text(ops['operand_2'])}"
    return json.dumps(node, sort_keys=True)


class Scope:
    """Evaluates the little Bicep the app settings and role assignments are written in:
    literals, ``${...}`` interpolation, parameters, variables, ``union``, ``a ? b : c`` and
    property access on variables. Anything else must be in :data:`PLACEHOLDERS`.

    pycep writes a reference and a string literal alike (``"name"``): a bare string naming a
    parameter or variable of the file is taken as a reference.
    """

    def __init__(self, doc: dict[str, Any], params: Mapping[str, Any], *,
                 caller: Scope | None = None, call: Mapping[str, Any] | None = None) -> None:
        self.doc = doc
        self.params = dict(params)
        self.caller, self.call = caller, dict(call or {})  # a module's parameters, as its caller passes them

    def _name(self, name: str) -> Any:
        if name in self.params:
            return self.params[name]
        if name in self.call and self.caller is not None:
            return self.caller.value(self.call[name])
        declared = self.doc.get("parameters", {})
        if name in declared and "default" in declared[name]:
            return self.value(declared[name]["default"])
        variables = self.doc.get("variables", {})
        if name in variables:
            return self.value(variables[name]["value"])
        if name in PLACEHOLDERS:
            return PLACEHOLDERS[name]
        raise KeyError(f"cannot evaluate {name!r}: add it to PLACEHOLDERS")

    def value(self, node: Any) -> Any:
        if isinstance(node, bool | int | float) or node is None:
            return node
        if isinstance(node, str):
            if node in self.params or node in self.call or node in self.doc.get("parameters", {}) \
                    or node in self.doc.get("variables", {}):
                return self._name(node)
            return re.sub(r"\$\{([^}]*)\}", lambda m: str(self._name(m.group(1).strip())), node)
        if isinstance(node, list):
            return [self.value(item) for item in node]
        if "function" in node and node["function"]["type"] == "union":
            merged: dict[str, Any] = {}
            for arg in node["function"]["parameters"].values():
                merged.update(self.value(arg))
            return merged
        if "operator" in node:
            op = node["operator"]
            if op["type"] == "conditional":
                condition = self.value(op["operands"]["condition"])
                assert isinstance(condition, bool), f"condition {op['operands']['condition']!r} is not a bool"
                return self.value(op["operands"]["true_value" if condition else "false_value"])
            if op["type"] == "property_accessor":
                head, _, rest = _text(node).partition(".")
                if head in self.doc.get("variables", {}) and rest:
                    value = self._name(head)
                    for part in rest.split("."):
                        value = value[part]
                    return value
                return self._name(_text(node))
        if "function" in node:
            return self._name(_text(node))
        return {key: self.value(item) for key, item in node.items()}


def _resources(doc: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {name: res for name, res in doc.get("resources", {}).items() if res["type"] == type_}


def template_app_settings(bicep: dict[str, dict[str, Any]], *, delegated: bool) -> dict[str, str]:
    """The function app's app settings as Azure would set them (main.bicep's defaults)."""
    main = Scope(bicep["main.bicep"], {"graphClientId": GRAPH_CLIENT_ID, "enableDelegatedSignIn": delegated})
    call = bicep["main.bicep"]["modules"]["functionApp"]
    module_doc = bicep[call["detail"]["path"]]
    module = Scope(module_doc, {}, caller=main, call=call["config"]["params"])
    (config,) = [res for res in _resources(module_doc, "Microsoft.Web/sites/config").values()
                 if res["config"]["name"] == "appsettings"]
    settings = module.value(config["config"]["properties"])
    assert all(isinstance(v, str) for v in settings.values()), "app setting values must be strings"
    return settings


@pytest.fixture(scope="module")
def app_settings(bicep: dict[str, dict[str, Any]]) -> dict[str, str]:
    return template_app_settings(bicep, delegated=False)


@pytest.fixture(scope="module")
def delegated_app_settings(bicep: dict[str, dict[str, Any]]) -> dict[str, str]:
    return template_app_settings(bicep, delegated=True)


# --------------------------------------------------------------------------- settings


def settings_read_by_code() -> set[str]:
    """``env.get("NAME", ...)`` and ``env["NAME"]`` in sync_core/settings.py."""
    tree = ast.parse((ROOT / "sync_core" / "settings.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        key: ast.expr | None = None
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "env" and node.args):
            key = node.args[0]
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "env":
            key = node.slice
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            names.add(key.value)
    return names


def _bindings() -> Iterator[dict[str, Any]]:
    for function in _get_functions(function_app.app):
        yield from json.loads(function.get_function_json())["bindings"]


def binding_needs() -> tuple[set[str], dict[str, set[str]]]:
    """``%NAME%`` settings of the bindings, and connection -> service-URI suffixes it needs."""
    names: set[str] = set()
    connections: dict[str, set[str]] = {k: set(v) for k, v in HOST_CONNECTIONS.items()}
    for binding in _bindings():
        for value in binding.values():
            if isinstance(value, str):
                names.update(re.findall(r"%([^%]+)%", value))
        if "connection" in binding:
            assert binding["type"] in CONNECTION_SERVICES, f"add {binding['type']} to CONNECTION_SERVICES"
            connections.setdefault(binding["connection"], set()).add(CONNECTION_SERVICES[binding["type"]])
    return names, connections


def test_the_ast_walk_finds_the_settings() -> None:
    read = settings_read_by_code()
    assert {"DAVBRIDGE_STATE_URL", "DAVBRIDGE_SECRETS_URL", "DAVBRIDGE_HOME", "GRAPH_CLIENT_ID"} <= read
    assert set(NOT_IN_AZURE) <= read, "an exclusion names a setting the code no longer reads"


def test_every_setting_the_code_reads_is_set_by_the_template(
        app_settings: dict[str, str], delegated_app_settings: dict[str, str]) -> None:
    template = set(app_settings) | set(delegated_app_settings)
    needed = settings_read_by_code() - set(NOT_IN_AZURE)
    bound, _ = binding_needs()
    assert bound, "no %NAME% in the bindings: the binding walk is broken"
    missing = sorted((needed | bound) - template)
    assert not missing, f"read by the code or the bindings but not set in infra/modules/functionapp.bicep: {missing}"


def test_every_connection_is_identity_based(app_settings: dict[str, str]) -> None:
    _, connections = binding_needs()
    assert "AzureWebJobsStorage" in connections
    for connection, services in connections.items():
        assert connection not in app_settings, f"{connection}: a connection string; use {connection}__* instead"
        assert app_settings.get(f"{connection}__credential") == "managedidentity", connection
        for service in services:
            url = app_settings.get(f"{connection}__{service}", "")
            assert url.startswith("https://"), f"{connection}__{service} is not set to an https endpoint"


def test_the_template_sets_nothing_unknown(app_settings: dict[str, str],
                                           delegated_app_settings: dict[str, str]) -> None:
    known = settings_read_by_code() | binding_needs()[0]
    unknown = sorted(name for name in set(app_settings) | set(delegated_app_settings)
                     if name not in known and not name.startswith(HOST_SETTING_PREFIXES))
    assert not unknown, f"set by the template, read by nobody (a typo?): {unknown}"
    assert not FLEX_FORBIDDEN & set(delegated_app_settings)


def test_app_settings_values(app_settings: dict[str, str], delegated_app_settings: dict[str, str]) -> None:
    routes = {f.get_function_name(): b["route"] for f in _get_functions(function_app.app)
              for b in json.loads(f.get_function_json())["bindings"] if "route" in b}
    base = f"https://{HOST}/api/"
    assert app_settings["DAVBRIDGE_WEBHOOK_URL"] == base + routes["graph_notifications"]
    assert app_settings["DAVBRIDGE_LIFECYCLE_URL"] == base + routes["graph_lifecycle"]
    assert "DAVBRIDGE_AUTH_REDIRECT_URL" not in app_settings  # delegated mode is off by default
    assert delegated_app_settings["DAVBRIDGE_AUTH_REDIRECT_URL"] == base + routes["auth_callback"]
    assert app_settings["SYNC_SCHEDULE"] == "0 */5 * * * *"
    assert app_settings["DAVBRIDGE_STATE_URL"] == "azuretables:https://davbridgeabc123.table.core.windows.net"
    assert app_settings["DAVBRIDGE_QUEUE_URL"] == "azurequeue:https://davbridgeabc123.queue.core.windows.net"
    assert app_settings["DAVBRIDGE_SECRETS_URL"] == "keyvault:https://davbridgekvabc123.vault.azure.net/"
    assert app_settings["GRAPH_CLIENT_ID"] == GRAPH_CLIENT_ID
    assert app_settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "Authorization=AAD"

    settings = Settings.from_env(app_settings)
    assert settings.webhooks_enabled and settings.auth_redirect_url is None
    # Every setting the template states at the code's default really is that default.
    designed = {"queue_url"}  # memory: locally, the Azure queue here
    for field in dataclasses.fields(Settings):
        if field.default is not dataclasses.MISSING and field.default is not None and field.name not in designed:
            assert getattr(settings, field.name) == field.default, field.name


# --------------------------------------------------------------------------- roles


def assigned_roles(bicep: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Role definition id -> scope resource type, of the assignments to the app's identity."""
    main = bicep["main.bicep"]
    app_call, roles_call = main["modules"]["functionApp"], main["modules"]["roles"]
    app_doc, roles_doc = bicep[app_call["detail"]["path"]], bicep[roles_call["detail"]["path"]]
    # main passes the app module's principalId output, which is the site's system identity
    assert _text(roles_call["config"]["params"]["principalId"]) == "functionApp.outputs.principalId"
    symbol, _, rest = _text(app_doc["outputs"]["principalId"]["value"]).partition(".")
    assert rest == "identity.principalId"
    site = app_doc["resources"][symbol]
    assert site["type"] == "Microsoft.Web/sites" and site["config"]["identity"]["type"] == "SystemAssigned"

    scope = Scope(roles_doc, {"principalId": "<app>"})
    assigned: dict[str, str] = {}
    for name, res in _resources(roles_doc, "Microsoft.Authorization/roleAssignments").items():
        props = res["config"]["properties"]
        if props["principalId"] != "principalId":
            continue
        role_def = props["roleDefinitionId"]["function"]
        assert role_def["type"] == "subscription_resource_id", name
        assert role_def["parameters"]["resource_type"] == "Microsoft.Authorization/roleDefinitions", name
        role_id = scope.value(role_def["parameters"]["resource_name_1"])
        target = roles_doc["resources"][res["config"]["scope"]]
        assert target["existing"], f"{name}: scope it to one existing resource"
        assigned[role_id] = target["type"]
    return assigned


def test_every_role_the_settings_need_is_assigned_to_the_app(
        bicep: dict[str, dict[str, Any]], delegated_app_settings: dict[str, str]) -> None:
    settings = Settings.from_env(delegated_app_settings)
    needed = required_roles(settings, delegated_app_settings)
    assert needed == set(REQUIRED_ROLES)  # this configuration uses every Azure backend
    assigned = assigned_roles(bicep)
    missing = sorted(name for name in needed if REQUIRED_ROLES[name] not in assigned)
    assert not missing, f"roles the app needs but infra/modules/roles.bicep does not assign: {missing}"
    for name in needed:
        assert assigned[REQUIRED_ROLES[name]] == ROLE_SCOPE_TYPES[name], name
    extra = set(assigned) - set(REQUIRED_ROLES.values())
    assert not extra, f"assigned but needed by nothing: {sorted(extra)}"


def test_required_roles_follow_the_backends() -> None:
    local = Settings.from_env({"DAVBRIDGE_HOME": "/tmp/x"})
    assert required_roles(local, {}) == set()
    keys = Settings.from_env({"DAVBRIDGE_STATE_URL": "azuretables:UseDevelopmentStorage=true",
                              "DAVBRIDGE_QUEUE_URL": "azurequeue:UseDevelopmentStorage=true",
                              "DAVBRIDGE_SECRETS_URL": "file:///tmp/s.json"})
    assert required_roles(keys, {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}) == set()
    vault = Settings.from_env({"DAVBRIDGE_SECRETS_URL": "https://v.vault.azure.net"})
    assert required_roles(vault, {}) == {"Key Vault Secrets Officer"}
    host = {"AzureWebJobsStorage__blobServiceUri": "https://a.blob.core.windows.net",
            "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "Authorization=AAD"}
    assert required_roles(local, host) == {"Storage Blob Data Owner", "Storage Queue Data Contributor",
                                           "Monitoring Metrics Publisher"}


# --------------------------------------------------------------------------- checkov


@pytest.fixture(scope="module")
def checkov_report() -> dict[str, Any]:
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} is missing: run `make test-deps` (devtools/install_test_deps.sh)")
    env = dict(os.environ, BC_SKIP_MAPPING="TRUE", CHECKOV_RUN_SCA_PACKAGE_SCAN_V2="false", LOG_LEVEL="WARNING")
    proc = subprocess.run([str(CHECKOV), "--framework", "bicep", "--directory", str(INFRA), "--output", "json",
                           "--skip-download"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"checkov printed no JSON (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    reports = report if isinstance(report, list) else [report]
    (bicep_report,) = [r for r in reports if r.get("check_type") == "bicep"]
    return bicep_report


def test_checkov_reports_no_failed_check(checkov_report: dict[str, Any]) -> None:
    summary = checkov_report["summary"]
    assert summary["parsing_errors"] == 0, "checkov could not parse a template"
    assert summary["passed"] > 0 and summary["resource_count"] >= 10, summary
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']}:{c['file_line_range'][0]}): {c['check_name']}"
              for c in checkov_report["results"]["failed_checks"]]
    assert not failed, "checkov failed checks:\n" + "\n".join(failed)


def test_every_skipped_check_has_a_reason(checkov_report: dict[str, Any]) -> None:
    unexplained = [f"{c['check_id']} {c['resource']}" for c in checkov_report["results"]["skipped_checks"]
                   if len(c["check_result"].get("suppress_comment", "").strip()) < 20
                   or c["check_result"]["suppress_comment"] == "No comment provided"]
    assert not unexplained, f"skipped without a written reason (// checkov:skip=ID:reason): {unexplained}"


# --------------------------------------------------------------------------- scripts


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_are_valid_bash(script: Path) -> None:
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in script.read_text()
    assert os.access(script, os.X_OK), f"{script.name} is not executable"
    subprocess.run(["bash", "-n", str(script)], check=True)
    shellcheck = shutil.which("shellcheck")
    if shellcheck:  # not installed by the test setup; checked where a developer has it
        subprocess.run([shellcheck, "-x", str(script)], check=True)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_answer_help_without_azure(script: Path, tmp_path: Path) -> None:
    """--help works with no az on PATH (argument parsing comes first)."""
    env = dict(os.environ, PATH=f"{tmp_path}:/usr/bin:/bin")
    proc = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "usage" in proc.stdout.lower()


def test_deploy_package_holds_the_app_only(tmp_path: Path) -> None:
    """deploy.sh --package-only: function_app.py, host.json, requirements.txt and sync_core/."""
    import zipfile

    out = tmp_path / "app.zip"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:/usr/bin:/bin")
    subprocess.run(["bash", str(INFRA / "deploy.sh"), "--package-only", str(out)], check=True, env=env,
                   capture_output=True, timeout=120)
    names = set(zipfile.ZipFile(out).namelist())
    assert {"function_app.py", "host.json", "requirements.txt", "sync_core/settings.py"} <= names
    assert not [n for n in names if n.split("/")[0] not in {"function_app.py", "host.json", "requirements.txt",
                                                               "sync_core"}]
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
