from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from accounts import views as accounts_views
from agents import api as agents_api
from analytics import api as analytics_api
from approvals import api as approvals_api
from approvals import views as console_views
from hil_project import health
from tools import api as tools_api
from workflows import api as workflows_api

api = [
    path("conversations/", workflows_api.ConversationListApi.as_view()),
    path("conversations/<uuid:pk>/", workflows_api.ConversationDetailApi.as_view()),
    path("conversations/<uuid:pk>/messages/", workflows_api.MessageListApi.as_view()),
    path("conversations/<uuid:pk>/take-over/", approvals_api.ConversationTakeOverApi.as_view()),
    path("conversations/<uuid:pk>/satisfaction/", analytics_api.SatisfactionApi.as_view()),
    path("runs/<uuid:pk>/", workflows_api.RunDetailApi.as_view()),
    path("runs/<uuid:pk>/cancel/", workflows_api.RunCancelApi.as_view()),
    path("runs/<uuid:pk>/retry/", workflows_api.RunRetryApi.as_view()),
    path("runs/<uuid:pk>/events/", workflows_api.RunEventListApi.as_view()),
    path("runs/<uuid:pk>/events/stream/", workflows_api.RunEventStreamApi.as_view()),
    path("approvals/", approvals_api.ApprovalListApi.as_view()),
    path("approvals/<uuid:pk>/", approvals_api.ApprovalDetailApi.as_view()),
    path("approvals/<uuid:pk>/decision/", approvals_api.ApprovalDecisionApi.as_view()),
    path("handovers/", approvals_api.HandoverListApi.as_view()),
    path("handovers/<uuid:pk>/", approvals_api.HandoverDetailApi.as_view()),
    path("handovers/<uuid:pk>/claim/", approvals_api.HandoverClaimApi.as_view()),
    path("handovers/<uuid:pk>/reply/", approvals_api.HandoverReplyApi.as_view()),
    path("handovers/<uuid:pk>/return-to-ai/", approvals_api.HandoverReturnApi.as_view()),
    path("handovers/<uuid:pk>/notes/", approvals_api.HandoverNoteListApi.as_view()),
    path("canned-replies/", approvals_api.CannedReplyListApi.as_view()),
    path("secrets/", tools_api.SecretListApi.as_view()),
    path("secrets/<str:name>/", tools_api.SecretDetailApi.as_view()),
    path("tools/", tools_api.ToolListApi.as_view()),
    path("tools/<int:pk>/", tools_api.ToolDetailApi.as_view()),
    path("mcp-servers/", tools_api.McpServerListApi.as_view()),
    path("mcp-servers/<int:pk>/", tools_api.McpServerDetailApi.as_view()),
    path("mcp-servers/<int:pk>/sync/", tools_api.McpServerSyncApi.as_view()),
    path("data-sources/", tools_api.DataSourceListApi.as_view()),
    path("data-sources/<int:pk>/", tools_api.DataSourceDetailApi.as_view()),
    path("data-sources/<int:pk>/refresh/", tools_api.DataSourceRefreshApi.as_view()),
    path("sql-examples/", tools_api.SqlExampleListApi.as_view()),
    path("sql-examples/<int:pk>/", tools_api.SqlExampleDetailApi.as_view()),
    path("knowledge-sources/", tools_api.KnowledgeSourceListApi.as_view()),
    path("knowledge-sources/<int:pk>/", tools_api.KnowledgeSourceDetailApi.as_view()),
    path("knowledge-sources/<int:pk>/documents/", tools_api.DocumentListApi.as_view()),
    path("documents/<int:pk>/", tools_api.DocumentDetailApi.as_view()),
    path("tool-grants/", tools_api.ToolGrantListApi.as_view()),
    path("tool-grants/<int:pk>/", tools_api.ToolGrantDetailApi.as_view()),
    path("tool-policies/", tools_api.ToolPolicyListApi.as_view()),
    path("tool-policies/<int:pk>/", tools_api.ToolPolicyDetailApi.as_view()),
    path("tool-limits/", tools_api.ToolLimitListApi.as_view()),
    path("tool-limits/<int:pk>/", tools_api.ToolLimitDetailApi.as_view()),
    path("redaction/", tools_api.RedactionSettingsApi.as_view()),
    path("model-endpoints/", agents_api.EndpointListApi.as_view()),
    path("model-endpoints/<str:name>/", agents_api.EndpointDetailApi.as_view()),
    path("model-profiles/", agents_api.ProfileListApi.as_view()),
    path("model-profiles/<str:name>/", agents_api.ProfileDetailApi.as_view()),
    path("llm-calls/", agents_api.LLMCallListApi.as_view()),
    path("analytics/", analytics_api.AnalyticsApi.as_view()),
]

urlpatterns = [
    path("healthz", health.healthz),
    path("metrics", analytics_api.MetricsApi.as_view()),
    path("readyz", health.readyz),
    path("admin/", admin.site.urls),
    path("console/", console_views.console, name="console"),
    path("console/signin/", accounts_views.signin, name="signin"),
    path("console/verify/", accounts_views.verify, name="verify"),
    path("console/enrol/", accounts_views.enrol, name="enrol"),
    path("console/signout/", accounts_views.signout, name="signout"),
    path("console/tenant/", accounts_views.tenant_choose, name="tenant_choose"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("api/v1/", include(api)),
]
