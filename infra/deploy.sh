#!/usr/bin/env bash
# Deploy davbridge into one Azure resource group, or update it: run it again at any time.
#
#   1. the resource group (created if missing);
#   2. infra/main.bicep: Flex Consumption function app, storage, Key Vault, Log Analytics +
#      Application Insights, the app identity's role assignments, the app settings;
#   3. Key Vault Secrets Officer on the vault (and Table/Queue Data Contributor on the storage
#      account, for the davbridge CLI) for whoever runs this script;
#   4. the Graph credential as Key Vault secret graph-client-secret or graph-client-certificate,
#      read from a file (never printed, never an argument);
#   5. the app package (function_app.py, host.json, requirements.txt, sync_core/): Flex
#      Consumption installs requirements.txt in a remote build.
#
# Needs the az CLI (signed in: az login) and python3 (to build the zip). the README "Deploying" section has
# the whole sequence, from an empty subscription.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
INFRA="$ROOT/infra"
PYTHON="${PYTHON:-python3}"
DEPLOYMENT_NAME="davbridge"
GRAPH_SECRET_NAME="graph-client-secret"
GRAPH_CERTIFICATE_NAME="graph-client-certificate"
# Built-in role definition ids (see sync_core/azure_roles.py).
ROLE_SECRETS_OFFICER="b86a8fe4-44ce-4948-aee5-eccb2c155cd7"
ROLE_TABLE_CONTRIBUTOR="0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
ROLE_QUEUE_CONTRIBUTOR="974c5e8b-45b9-4653-ba55-5f855dd0fb88"

usage() {
    cat <<'EOF'
usage: infra/deploy.sh --resource-group NAME --client-id APP_ID [options]

  --subscription ID          subscription to deploy into (default: az's current one)
  --resource-group NAME      resource group, created if missing            [required]
  --location REGION          region (required when the group does not exist yet);
                             one of: az functionapp list-flexconsumption-locations -o table
  --prefix PREFIX            resource name prefix, 2-9 lowercase letters/digits (default davbridge)
  --tenant-id ID             tenant of the Graph app registration (default: az's tenant)
  --client-id APP_ID         application (client) id from infra/register-app.sh [required]
  --client-secret-file FILE  store this client secret as Key Vault secret graph-client-secret
  --certificate-file FILE    or this PEM (private key + certificate) as graph-client-certificate
                             (neither: the credential already in the vault is kept)
  --delegated                enable delegated sign-in (sets DAVBRIDGE_AUTH_REDIRECT_URL)
  --no-cli-access            do not grant yourself Table/Queue Data Contributor on the storage
                             account (the davbridge CLI pointed at Azure needs them)
  --package-only ZIP         only build the app package into ZIP, touch nothing in Azure
  -h, --help                 this text

Environment instead of options: AZURE_SUBSCRIPTION_ID, DAVBRIDGE_RESOURCE_GROUP,
DAVBRIDGE_LOCATION, DAVBRIDGE_PREFIX, GRAPH_TENANT_ID, GRAPH_CLIENT_ID,
GRAPH_CLIENT_SECRET_FILE, GRAPH_CERTIFICATE_FILE.
EOF
}

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'deploy.sh: %s\n' "$*" >&2; exit 1; }

SUBSCRIPTION="${AZURE_SUBSCRIPTION_ID:-}"
RESOURCE_GROUP="${DAVBRIDGE_RESOURCE_GROUP:-}"
LOCATION="${DAVBRIDGE_LOCATION:-}"
PREFIX="${DAVBRIDGE_PREFIX:-davbridge}"
TENANT_ID="${GRAPH_TENANT_ID:-}"
CLIENT_ID="${GRAPH_CLIENT_ID:-}"
SECRET_FILE="${GRAPH_CLIENT_SECRET_FILE:-}"
CERT_FILE="${GRAPH_CERTIFICATE_FILE:-}"
DELEGATED=false
CLI_ACCESS=true
PACKAGE_ONLY=""

while [ "$#" -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --delegated) DELEGATED=true; shift; continue ;;
        --no-cli-access) CLI_ACCESS=false; shift; continue ;;
    esac
    [ "$#" -ge 2 ] || die "$1 needs a value (see --help)"
    case "$1" in
        --subscription) SUBSCRIPTION="$2" ;;
        --resource-group) RESOURCE_GROUP="$2" ;;
        --location) LOCATION="$2" ;;
        --prefix) PREFIX="$2" ;;
        --tenant-id) TENANT_ID="$2" ;;
        --client-id) CLIENT_ID="$2" ;;
        --client-secret-file) SECRET_FILE="$2" ;;
        --certificate-file) CERT_FILE="$2" ;;
        --package-only) PACKAGE_ONLY="$2" ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift 2
done

# The app package: what the Functions host runs, nothing else (no tests, devtools, bench).
# Flex Consumption's remote build installs requirements.txt, so no dependencies are bundled.
package() {
    local out="$1"
    "$PYTHON" - "$ROOT" "$out" <<'PY'
import sys
import zipfile
from pathlib import Path

root, out = Path(sys.argv[1]), Path(sys.argv[2])
files = [root / "function_app.py", root / "host.json", root / "requirements.txt"]
files += sorted(p for p in (root / "sync_core").rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo"))
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
    for path in files:
        zf.write(path, path.relative_to(root).as_posix())
print(f"{out}: {len(files)} files", file=sys.stderr)
PY
}

if [ -n "$PACKAGE_ONLY" ]; then
    package "$PACKAGE_ONLY"
    exit 0
fi

command -v az >/dev/null 2>&1 || die "the az CLI is missing: https://learn.microsoft.com/cli/azure/install-azure-cli"
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON is missing (needed to build the app package)"
[ -n "$RESOURCE_GROUP" ] || die "--resource-group is required (see --help)"
[ -n "$CLIENT_ID" ] || die "--client-id is required: the application id infra/register-app.sh printed"
if [ -n "$SECRET_FILE" ] && [ -n "$CERT_FILE" ]; then
    die "give --client-secret-file or --certificate-file, not both"
fi
for file in "$SECRET_FILE" "$CERT_FILE"; do
    [ -z "$file" ] || [ -r "$file" ] || die "cannot read $file"
done

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

az account show -o none 2>/dev/null || die "not signed in to Azure: run az login"
if [ -n "$SUBSCRIPTION" ]; then
    az account set --subscription "$SUBSCRIPTION"
fi
SUBSCRIPTION="$(az account show --query id -o tsv)"
[ -n "$TENANT_ID" ] || TENANT_ID="$(az account show --query tenantId -o tsv)"
log "subscription $SUBSCRIPTION, resource group $RESOURCE_GROUP"

# ------------------------------------------------------------------ 1. resource group
if az group show --name "$RESOURCE_GROUP" -o none 2>/dev/null; then
    log "resource group $RESOURCE_GROUP exists"
else
    [ -n "$LOCATION" ] || die "resource group $RESOURCE_GROUP does not exist: give --location to create it"
    log "creating resource group $RESOURCE_GROUP in $LOCATION"
    az group create --name "$RESOURCE_GROUP" --location "$LOCATION" -o none
fi

# ------------------------------------------------------------------ 2. the template
params=(prefix="$PREFIX" graphTenantId="$TENANT_ID" graphClientId="$CLIENT_ID" enableDelegatedSignIn="$DELEGATED")
if [ -n "$LOCATION" ]; then
    params+=(location="$LOCATION")
fi
log "deploying infra/main.bicep (a few minutes)"
az deployment group create --resource-group "$RESOURCE_GROUP" --name "$DEPLOYMENT_NAME" \
    --template-file "$INFRA/main.bicep" --parameters "@$INFRA/main.parameters.json" \
    --parameters "${params[@]}" --query properties.outputs -o json >"$TMP/outputs.json"

output() {
    "$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]]["value"])' "$TMP/outputs.json" "$1"
}
APP="$(output functionAppName)"
APP_URL="$(output functionAppUrl)"
VAULT="$(output keyVaultName)"
STORAGE="$(output storageAccountName)"
STATE_URL="$(output stateUrl)"
SECRETS_URL="$(output secretsUrl)"
APP_INSIGHTS="$(output appInsightsName)"

# ------------------------------------------------------------------ 3. your own access
if [ "$(az account show --query user.type -o tsv)" = "user" ]; then
    ME="$(az ad signed-in-user show --query id -o tsv)"
    ME_TYPE="User"
else
    ME="$(az ad sp show --id "$(az account show --query user.name -o tsv)" --query id -o tsv)"
    ME_TYPE="ServicePrincipal"
fi

ensure_role() {  # role-id scope what
    local existing
    existing="$(az role assignment list --assignee "$ME" --role "$1" --scope "$2" --query 'length(@)' -o tsv)"
    if [ "$existing" = "0" ]; then
        log "granting you $3"
        az role assignment create --assignee-object-id "$ME" --assignee-principal-type "$ME_TYPE" \
            --role "$1" --scope "$2" -o none
    fi
}
VAULT_ID="$(az keyvault show --name "$VAULT" --query id -o tsv)"
ensure_role "$ROLE_SECRETS_OFFICER" "$VAULT_ID" "Key Vault Secrets Officer on $VAULT"
if [ "$CLI_ACCESS" = true ]; then
    STORAGE_ID="$(az storage account show --name "$STORAGE" --resource-group "$RESOURCE_GROUP" --query id -o tsv)"
    ensure_role "$ROLE_TABLE_CONTRIBUTOR" "$STORAGE_ID" "Storage Table Data Contributor on $STORAGE"
    ensure_role "$ROLE_QUEUE_CONTRIBUTOR" "$STORAGE_ID" "Storage Queue Data Contributor on $STORAGE"
fi

# ------------------------------------------------------------------ 4. the Graph credential
store_secret() {  # name file: retried while a new role assignment propagates
    local tries=0
    until az keyvault secret set --vault-name "$VAULT" --name "$1" --file "$2" --encoding utf-8 \
            -o none 2>"$TMP/keyvault.err"; do
        tries=$((tries + 1))
        if [ "$tries" -ge 20 ] || ! grep -qiE 'forbidden|not authorized|authorization' "$TMP/keyvault.err"; then
            cat "$TMP/keyvault.err" >&2
            die "could not store Key Vault secret $1"
        fi
        log "waiting for your Key Vault role to take effect ($tries/20)"
        sleep 15
    done
    log "stored Key Vault secret $1"
}
if [ -n "$SECRET_FILE" ]; then
    (umask 077 && tr -d '\r\n' <"$SECRET_FILE" >"$TMP/secret")  # a trailing newline is no part of it
    [ -s "$TMP/secret" ] || die "$SECRET_FILE is empty"
    store_secret "$GRAPH_SECRET_NAME" "$TMP/secret"
elif [ -n "$CERT_FILE" ]; then
    if ! grep -q 'PRIVATE KEY-----' "$CERT_FILE" || ! grep -q 'BEGIN CERTIFICATE' "$CERT_FILE"; then
        die "$CERT_FILE must hold the private key and the certificate, both PEM"
    fi
    store_secret "$GRAPH_CERTIFICATE_NAME" "$CERT_FILE"
else
    log "no --client-secret-file / --certificate-file: keeping the Graph credential the vault holds"
fi

# ------------------------------------------------------------------ 5. the code
package "$TMP/davbridge.zip"
# config-zip takes the Flex Consumption path (OneDeploy /api/publish with RemoteBuild=true and an
# Entra token, so no publishing password is needed). The first deployment can meet a 403 from
# the deployment container while the app's new Blob Data Owner role propagates: retried.
tries=0
until az functionapp deployment source config-zip --resource-group "$RESOURCE_GROUP" --name "$APP" \
        --src "$TMP/davbridge.zip" --build-remote true --timeout 1200 -o none; do
    tries=$((tries + 1))
    [ "$tries" -lt 5 ] || die "the code deployment failed 5 times; see the messages above"
    log "code deployment failed; retrying in 60 s ($tries/5)"
    sleep 60
done

cat <<EOF

davbridge is deployed.
  function app           $APP  ($APP_URL)
  webhooks               $(output webhookUrl)
                         $(output lifecycleUrl)
  Key Vault              $VAULT
  storage account        $STORAGE
  Application Insights   $APP_INSIGHTS

Next: onboard the first user.

  With the admin API (function key):
    KEY=\$(az functionapp keys list -g $RESOURCE_GROUP -n $APP --query functionKeys.default -o tsv)
    curl -fsS -X POST "$APP_URL/api/admin/users" -H "x-functions-key: \$KEY" \\
         -H 'Content-Type: application/json' -d @ada.json
    # ada.json: {"upn": "ada@contoso.com", "caldav_url": "https://caldav.example.com/",
    #            "caldav_username": "ada", "caldav_password": "<app password>"}  (delete it afterwards)

  Or with the davbridge CLI pointed at the Azure state (signed in with az login):
    export DAVBRIDGE_STATE_URL=$STATE_URL
    export DAVBRIDGE_SECRETS_URL=$SECRETS_URL
    export GRAPH_TENANT_ID=$TENANT_ID GRAPH_CLIENT_ID=$CLIENT_ID
    davbridge users add ada@contoso.com --caldav-url https://caldav.example.com/ --caldav-user ada --password-stdin

  Logs: az monitor app-insights query -g $RESOURCE_GROUP --app $APP_INSIGHTS \\
          --analytics-query 'traces | where timestamp > ago(1h) | order by timestamp desc | take 50'
EOF
if [ "$DELEGATED" = true ]; then
    cat <<EOF

  Delegated sign-in is on. Register its redirect URI (once) and consent again:
    infra/register-app.sh --redirect-uri $(output authRedirectUrl) --consent
EOF
fi
