#!/usr/bin/env bash
# Register davbridge in Entra ID (idempotent: an existing registration of that name is reused).
#
#   * the app registration and its service principal;
#   * the Microsoft Graph application permission Calendars.ReadWrite;
#   * a client secret, written to a file with mode 0600 (never printed);
#   * with --redirect-uri (delegated mode): that Web redirect URI and the delegated
#     permissions Calendars.ReadWrite and offline_access;
#   * with --consent: the tenant-wide admin consent (Global Administrator or Privileged Role
#     Administrator); without it, the command to run is printed;
#   * the Exchange Online commands that limit the app to one group of mailboxes.
#
# Needs the az CLI, signed in to the tenant of the mailboxes (az login). the README "Deploying" section has
# the whole sequence.
set -euo pipefail

GRAPH_API="00000003-0000-0000-c000-000000000000"      # Microsoft Graph (appId)
APP_CALENDARS_READWRITE="ef54d2bf-783f-4e0f-bca1-3210c0444d99"  # Calendars.ReadWrite (application role)
DELEGATED_CALENDARS_READWRITE="1ec239c2-d7c9-4623-a91a-a9775856bb36"  # Calendars.ReadWrite (delegated scope)
DELEGATED_OFFLINE_ACCESS="7427e0e9-2fba-42fe-b0c0-848c9e6a8182"  # offline_access (delegated scope)

usage() {
    cat <<'EOF'
usage: infra/register-app.sh [options]

  --name NAME            display name of the app registration (default davbridge)
  --secret-file FILE     where the client secret goes, mode 0600 (default ./graph-client-secret.txt);
                         an existing non-empty file is kept unless --new-secret
  --new-secret           add a new client secret even if FILE exists (older ones stay valid
                         until they expire; remove them with az ad app credential delete)
  --secret-years N       lifetime of a new client secret in years (default 1)
  --no-secret            add no client secret (a certificate is used instead: az ad app
                         credential reset --id APP_ID --cert @cert.pem --append)
  --redirect-uri URL     delegated mode: https://<app>/api/auth/callback (deploy.sh --delegated
                         prints it); adds the Web redirect URI and the delegated permissions
  --consent              grant admin consent now (needs Global Administrator or Privileged
                         Role Administrator)
  -h, --help             this text
EOF
}

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'register-app.sh: %s\n' "$*" >&2; exit 1; }

NAME="davbridge"
SECRET_FILE="./graph-client-secret.txt"
NEW_SECRET=false
NO_SECRET=false
SECRET_YEARS=1
REDIRECT_URI=""
CONSENT=false

while [ "$#" -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --new-secret) NEW_SECRET=true; shift; continue ;;
        --no-secret) NO_SECRET=true; shift; continue ;;
        --consent) CONSENT=true; shift; continue ;;
    esac
    [ "$#" -ge 2 ] || die "$1 needs a value (see --help)"
    case "$1" in
        --name) NAME="$2" ;;
        --secret-file) SECRET_FILE="$2" ;;
        --secret-years) SECRET_YEARS="$2" ;;
        --redirect-uri) REDIRECT_URI="$2" ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift 2
done
case "$SECRET_YEARS" in
    ''|*[!0-9]*) die "--secret-years must be a whole number" ;;
esac
case "$REDIRECT_URI" in
    ''|https://*/api/auth/callback) ;;
    *) die "--redirect-uri must be https://<app>/api/auth/callback" ;;
esac

command -v az >/dev/null 2>&1 || die "the az CLI is missing: https://learn.microsoft.com/cli/azure/install-azure-cli"
az account show -o none 2>/dev/null || die "not signed in: run az login (to the tenant of the mailboxes)"
TENANT_ID="$(az account show --query tenantId -o tsv)"

# ------------------------------------------------------------------ the registration
APP_ID="$(az ad app list --display-name "$NAME" --query '[0].appId' -o tsv)"
if [ -n "$APP_ID" ]; then
    log "app registration '$NAME' exists: $APP_ID"
else
    log "creating app registration '$NAME'"
    APP_ID="$(az ad app create --display-name "$NAME" --sign-in-audience AzureADMyOrg --query appId -o tsv)"
fi
if ! az ad sp show --id "$APP_ID" -o none 2>/dev/null; then
    log "creating its service principal"
    az ad sp create --id "$APP_ID" -o none
fi
SP_ID="$(az ad sp show --id "$APP_ID" --query id -o tsv)"

ensure_permission() {  # permission-id type(Role|Scope) label
    local present
    present="$(az ad app permission list --id "$APP_ID" \
        --query "[?resourceAppId=='$GRAPH_API'].resourceAccess[] | [?id=='$1' && type=='$2'] | length(@)" -o tsv)"
    if [ "$present" = "0" ]; then
        log "adding Microsoft Graph permission $3"
        az ad app permission add --id "$APP_ID" --api "$GRAPH_API" --api-permissions "$1=$2" -o none
    fi
}
ensure_permission "$APP_CALENDARS_READWRITE" Role "Calendars.ReadWrite (application)"

if [ -n "$REDIRECT_URI" ]; then
    existing="$(az ad app show --id "$APP_ID" --query "web.redirectUris[?@=='$REDIRECT_URI'] | length(@)" -o tsv)"
    if [ "$existing" = "0" ]; then
        log "adding Web redirect URI $REDIRECT_URI"
        uris=()  # keep the ones already there (no mapfile: macOS ships bash 3.2)
        while IFS= read -r uri; do
            if [ -n "$uri" ]; then uris+=("$uri"); fi
        done < <(az ad app show --id "$APP_ID" --query 'web.redirectUris[]' -o tsv)
        az ad app update --id "$APP_ID" --web-redirect-uris ${uris[@]+"${uris[@]}"} "$REDIRECT_URI" -o none
    fi
    ensure_permission "$DELEGATED_CALENDARS_READWRITE" Scope "Calendars.ReadWrite (delegated)"
    ensure_permission "$DELEGATED_OFFLINE_ACCESS" Scope "offline_access (delegated)"
fi

# ------------------------------------------------------------------ the client secret
if [ "$NO_SECRET" = true ]; then
    log "no client secret added (--no-secret)"
elif [ -s "$SECRET_FILE" ] && [ "$NEW_SECRET" = false ]; then
    log "keeping the client secret in $SECRET_FILE (--new-secret adds another)"
else
    log "adding a client secret (valid $SECRET_YEARS year(s)) -> $SECRET_FILE"
    secret="$(az ad app credential reset --id "$APP_ID" --append --display-name "davbridge $(date +%F)" \
        --years "$SECRET_YEARS" --query password -o tsv)"
    [ -n "$secret" ] || die "az ad app credential reset returned no secret"
    # 0600 before the secret is written, also when the file already existed
    (umask 077 && touch "$SECRET_FILE" && chmod 600 "$SECRET_FILE" && printf '%s' "$secret" >"$SECRET_FILE")
    unset secret
fi

# ------------------------------------------------------------------ admin consent
consent=(az ad app permission admin-consent --id "$APP_ID")
if [ "$CONSENT" = true ]; then
    log "granting admin consent"
    # A new service principal can take a moment to be visible to the consent call.
    for attempt in 1 2 3 4 5 6; do
        if "${consent[@]}" -o none; then
            break
        fi
        [ "$attempt" -lt 6 ] || die "admin consent failed: run '${consent[*]}' as a Global Administrator or Privileged Role Administrator"
        sleep 10
    done
fi

cat <<EOF

Entra app registration '$NAME'
  tenant id      $TENANT_ID
  client id      $APP_ID
  object id (service principal)  $SP_ID
  client secret  ${SECRET_FILE} (mode 0600; pass it to deploy.sh, then delete it)

EOF
if [ "$CONSENT" = true ]; then
    echo "1. Admin consent: granted."
else
    cat <<EOF
1. Admin consent (Global Administrator or Privileged Role Administrator):
     ${consent[*]}
EOF
fi
DELEGATED_FLAG=""
if [ -n "$REDIRECT_URI" ]; then
    DELEGATED_FLAG=" --delegated"
fi
cat <<EOF

2. Recommended: limit the app to the mailboxes of one mail-enabled security group, in Exchange
   Online PowerShell (Exchange Administrator). Without this, Calendars.ReadWrite reaches every
   mailbox of the tenant.
     Connect-ExchangeOnline
     New-DistributionGroup -Name davbridge-users -Type Security -PrimarySmtpAddress davbridge-users@contoso.com
     Add-DistributionGroupMember -Identity davbridge-users -Member ada@contoso.com
     New-ApplicationAccessPolicy -AppId $APP_ID -PolicyScopeGroupId davbridge-users@contoso.com \`
       -AccessRight RestrictAccess -Description "davbridge: only the davbridge-users calendars"
     Test-ApplicationAccessPolicy -Identity ada@contoso.com -AppId $APP_ID   # AccessCheckResult: Granted
   Or with RBAC for Applications (its successor): grant the Exchange role scoped to the group
   instead of the Entra permission. Entra and Exchange grants add up, so then skip the admin
   consent of step 1 (or revoke it: Entra admin center > Enterprise applications > $NAME >
   Permissions) and drop the permission from the registration:
     New-ServicePrincipal -AppId $APP_ID -ObjectId $SP_ID -DisplayName $NAME
     New-ManagementScope -Name davbridge-users -RecipientRestrictionFilter "MemberOfGroup -eq '<distinguished name of davbridge-users>'"
     New-ManagementRoleAssignment -App $APP_ID -Role "Application Calendars.ReadWrite" -CustomResourceScope davbridge-users
     az ad app permission delete --id $APP_ID --api $GRAPH_API --api-permissions $APP_CALENDARS_READWRITE
   Changes take up to an hour (RBAC for Applications: up to two) to apply.

3. Deploy:
     infra/deploy.sh --resource-group davbridge --location <region> \\
       --tenant-id $TENANT_ID --client-id $APP_ID --client-secret-file ${SECRET_FILE}${DELEGATED_FLAG}
EOF
