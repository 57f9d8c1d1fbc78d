// davbridge in one resource group: a Flex Consumption function app (Python 3.11) with its
// managed identity, one storage account (host storage, deployment package, tables, queue),
// Key Vault, Log Analytics + Application Insights, and the identity's role assignments.
// Local modules only: no registry, works offline. Deploy with infra/deploy.sh.
targetScope = 'resourceGroup'

@description('Prefix of every resource name: 2-9 lowercase letters and digits, starting with a letter. A hash of the resource group id is appended.')
@minLength(2)
@maxLength(9)
param prefix string = 'davbridge'

@description('Azure region of every resource (one where Flex Consumption is offered: az functionapp list-flexconsumption-locations).')
param location string = resourceGroup().location

@description('Entra tenant id of the Graph app registration (infra/register-app.sh prints it).')
param graphTenantId string = tenant().tenantId

@description('Application (client) id of the Graph app registration with Calendars.ReadWrite (infra/register-app.sh prints it).')
param graphClientId string

@description('NCRONTAB schedule of the sync timer (SYNC_SCHEDULE): every 5 minutes by default.')
param syncSchedule string = '0 */5 * * * *'

@description('Name of the sync queue (DAVBRIDGE_SYNC_QUEUE); the poison queue is <name>-poison.')
@minLength(3)
@maxLength(56)
param syncQueueName string = 'davbridge-sync'

@description('Enable delegated per-user sign-in: sets DAVBRIDGE_AUTH_REDIRECT_URL to https://<app>/api/auth/callback (register it as a Web redirect URI).')
param enableDelegatedSignIn bool = false

@description('Most instances the Flex Consumption plan scales out to.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Memory of each instance in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Spread the Flex Consumption plan over availability zones (only where the region offers it).')
param zoneRedundant bool = false

@description('Replication of the storage account that holds the state tables.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
  'Standard_RAGRS'
  'Standard_RAGZRS'
])
param storageSku string = 'Standard_GRS'

@description('Days a deleted Key Vault or secret can be recovered (7-90). Purge protection is on: a deleted vault name stays taken this long. Fixed once the vault exists.')
@minValue(7)
@maxValue(90)
param keyVaultRetentionDays int = 90

@description('Days Log Analytics keeps logs and telemetry (30-730).')
@minValue(30)
@maxValue(730)
param logRetentionDays int = 30

@description('Tags put on every resource.')
param tags object = {}

var token = uniqueString(resourceGroup().id)
var compactPrefix = toLower(replace(prefix, '-', ''))
var storageAccountName = take('${compactPrefix}${token}', 24)
var keyVaultName = take('${compactPrefix}kv${token}', 24)
var functionAppName = '${prefix}-func-${token}'
var planName = '${prefix}-plan-${token}'
var workspaceName = '${prefix}-log-${token}'
var appInsightsName = '${prefix}-appi-${token}'
var deploymentContainerName = 'app-package'

module monitoring 'modules/monitoring.bicep' = {
  name: 'davbridge-monitoring'
  params: {
    location: location
    workspaceName: workspaceName
    appInsightsName: appInsightsName
    retentionInDays: logRetentionDays
    tags: tags
  }
}

module storage 'modules/storage.bicep' = {
  name: 'davbridge-storage'
  params: {
    location: location
    storageAccountName: storageAccountName
    skuName: storageSku
    deploymentContainerName: deploymentContainerName
    syncQueueName: syncQueueName
    tags: tags
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'davbridge-keyvault'
  params: {
    location: location
    keyVaultName: keyVaultName
    softDeleteRetentionInDays: keyVaultRetentionDays
    workspaceId: monitoring.outputs.workspaceId
    tags: tags
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'davbridge-functionapp'
  params: {
    location: location
    planName: planName
    appName: functionAppName
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    keyVaultUri: keyVault.outputs.vaultUri
    appInsightsConnectionString: monitoring.outputs.connectionString
    graphTenantId: graphTenantId
    graphClientId: graphClientId
    syncQueueName: syncQueueName
    syncSchedule: syncSchedule
    enableDelegatedSignIn: enableDelegatedSignIn
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    zoneRedundant: zoneRedundant
    tags: tags
  }
}

module roles 'modules/roles.bicep' = {
  name: 'davbridge-roles'
  params: {
    principalId: functionApp.outputs.principalId
    storageAccountName: storage.outputs.name
    keyVaultName: keyVault.outputs.name
    appInsightsName: monitoring.outputs.appInsightsName
  }
}

var appUrl = 'https://${functionApp.outputs.defaultHostName}'

output functionAppName string = functionApp.outputs.name
output functionAppUrl string = appUrl
output webhookUrl string = '${appUrl}/api/graph/notifications'
output lifecycleUrl string = '${appUrl}/api/graph/lifecycle'
output authRedirectUrl string = enableDelegatedSignIn ? '${appUrl}/api/auth/callback' : ''
output keyVaultName string = keyVault.outputs.name
output keyVaultUri string = keyVault.outputs.vaultUri
output storageAccountName string = storage.outputs.name
output stateUrl string = 'azuretables:https://${storage.outputs.name}.table.${environment().suffixes.storage}'
output secretsUrl string = 'keyvault:${keyVault.outputs.vaultUri}'
output appInsightsName string = monitoring.outputs.appInsightsName
