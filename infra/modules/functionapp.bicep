// The Flex Consumption (FC1) Linux function app: Python 3.11, system-assigned identity,
// HTTPS only, identity-based host storage, and every setting davbridge reads
// (sync_core/settings.py) stated with its value, defaults included.

@description('Azure region of the plan and the app.')
param location string

@description('Name of the Flex Consumption plan.')
param planName string

@description('Name of the function app (also its default host name <name>.azurewebsites.net).')
param appName string

@description('Name of the storage account (host storage, deployment container, tables, queue).')
param storageAccountName string

@description('Blob container in that account the plan deploys the app package from.')
param deploymentContainerName string

@description('Key Vault URI (https://<vault>.vault.azure.net/): the secrets store.')
param keyVaultUri string

@description('Application Insights connection string (local auth disabled: the app signs in with its identity).')
param appInsightsConnectionString string

@description('Entra tenant id of the Graph app registration.')
param graphTenantId string

@description('Application (client) id of the Graph app registration.')
param graphClientId string

@description('Name of the sync queue (DAVBRIDGE_SYNC_QUEUE).')
param syncQueueName string

@description('NCRONTAB schedule of the sync timer (SYNC_SCHEDULE).')
param syncSchedule string

@description('Set DAVBRIDGE_AUTH_REDIRECT_URL so users can sign in themselves (delegated mode).')
param enableDelegatedSignIn bool

@description('Most instances the plan scales out to.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int

@description('Memory of each instance in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int

@description('Spread the plan over availability zones (only in regions where Flex Consumption offers it).')
param zoneRedundant bool = false

@description('Tags put on every resource.')
param tags object = {}

var storageSuffix = environment().suffixes.storage
var blobEndpoint = 'https://${storageAccountName}.blob.${storageSuffix}'
var queueEndpoint = 'https://${storageAccountName}.queue.${storageSuffix}'
var tableEndpoint = 'https://${storageAccountName}.table.${storageSuffix}'
var appBaseUrl = 'https://${functionApp.properties.defaultHostName}'

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225:Off by default because Flex Consumption offers zone redundancy in some regions only; deploy with zoneRedundant=true where it is
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
    zoneRedundant: zoneRedundant
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222:Microsoft Graph must reach the webhook endpoints from the internet; they authenticate every notification by its clientState HMAC, the admin API needs a function key
  // checkov:skip=CKV_AZURE_17:Microsoft Graph cannot present a client certificate when it calls the webhooks
  // checkov:skip=CKV_AZURE_212:The app scales from zero on purpose; the timer, the queue and Graph retries (4 h) tolerate a cold start, always-ready instances would be a fixed cost
  // checkov:skip=CKV_AZURE_213:No health endpoint: Flex Consumption replaces failed instances per trigger, and sync health is in davbridge status and Application Insights
  name: appName
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    publicNetworkAccess: 'Enabled'
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${blobEndpoint}/${deploymentContainerName}'
          authentication: {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

// No publishing passwords: deployments (az functionapp deployment source config-zip) use Entra ID.
resource scmBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

resource ftpBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'ftp'
  properties: {
    allow: false
  }
}

// The README's "Settings" table, for Azure. Values equal to the code's defaults are stated
// anyway, so the deployed configuration is all in one place.
var appSettingsBase = {
  AzureWebJobsStorage__blobServiceUri: blobEndpoint
  AzureWebJobsStorage__queueServiceUri: queueEndpoint
  AzureWebJobsStorage__tableServiceUri: tableEndpoint
  AzureWebJobsStorage__credential: 'managedidentity'
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'Authorization=AAD'
  DAVBRIDGE_STATE_URL: 'azuretables:${tableEndpoint}'
  DAVBRIDGE_TABLE_PREFIX: 'davbridge'
  DAVBRIDGE_SECRETS_URL: 'keyvault:${keyVaultUri}'
  DAVBRIDGE_QUEUE_URL: 'azurequeue:${queueEndpoint}'
  DAVBRIDGE_SYNC_QUEUE: syncQueueName
  SYNC_SCHEDULE: syncSchedule
  // More worker threads than queue messages in flight (batchSize 16 + newBatchThreshold 8):
  // a sync that creates a Graph subscription waits for Graph's validation request to the
  // webhook on this same app, which needs a free thread (else it times out).
  PYTHON_THREADPOOL_THREAD_COUNT: '32'
  DAVBRIDGE_WEBHOOK_URL: '${appBaseUrl}/api/graph/notifications'
  DAVBRIDGE_LIFECYCLE_URL: '${appBaseUrl}/api/graph/lifecycle'
  DAVBRIDGE_WEBHOOK_DEBOUNCE_SECONDS: '5'
  DAVBRIDGE_BUSY_RETRY_SECONDS: '30'
  DAVBRIDGE_CLIENT_STATE_KEY_NAME: 'webhook-client-state-key'
  GRAPH_TENANT_ID: graphTenantId
  GRAPH_CLIENT_ID: graphClientId
  GRAPH_CLIENT_SECRET_NAME: 'graph-client-secret'
  GRAPH_CERTIFICATE_NAME: 'graph-client-certificate'
  GRAPH_BASE_URL: 'https://graph.microsoft.com/v1.0'
  GRAPH_AUTHORITY_HOST: environment().authentication.loginEndpoint
  GRAPH_CA_BUNDLE: ''
  CALDAV_TIMEOUT_SECONDS: '30'
  GRAPH_TIMEOUT_SECONDS: '60'
  GRAPH_MAX_ATTEMPTS: '5'
  GRAPH_MAX_WAIT_SECONDS: '60'
}

var appSettingsDelegated = enableDelegatedSignIn ? {
  DAVBRIDGE_AUTH_REDIRECT_URL: '${appBaseUrl}/api/auth/callback'
} : {}

resource appSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222:Microsoft Graph must reach the webhook endpoints from the internet; they authenticate every notification by its clientState HMAC, the admin API needs a function key
  // checkov:skip=CKV_AZURE_13:App Service Authentication would turn away Graph, whose webhook calls carry no Entra token; webhooks check clientState, the admin API a function key
  // checkov:skip=CKV_AZURE_63:Flex Consumption has no App Service web server logs; requests and failures go to Application Insights
  // checkov:skip=CKV_AZURE_65:Flex Consumption has no App Service detailed error pages; exceptions go to Application Insights
  // checkov:skip=CKV_AZURE_66:Flex Consumption has no failed request tracing; failed requests go to Application Insights
  // checkov:skip=CKV_AZURE_80:The app is Python; no .NET Framework runs
  // checkov:skip=CKV_AZURE_88:The app keeps no files: Flex Consumption runs the package from the deployment blob container and state is in Table Storage
  parent: functionApp
  name: 'appsettings'
  properties: union(appSettingsBase, appSettingsDelegated)
}

output name string = functionApp.name
output defaultHostName string = functionApp.properties.defaultHostName
output principalId string = functionApp.identity.principalId
