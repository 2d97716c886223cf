"""The API of chats and messages, and bulk ingestion for integrations.

Mounted under `/api/v1/` by `tasktracker.api_urls`, in the `sources` namespace (the rows
are the `sources` app's: `reverse("api:sources:message-bulk")`). It lives here, not in
`sources.api`, because who sees a chat depends on which projects read it, which only
`projects.access` knows, and `sources` imports no other app. The serializers, filters
and services are the `sources` app's; these views only ask `projects.access`, validate
and call them.
"""

from collections.abc import Mapping
from typing import IO, Any

from django.db.models import QuerySet
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, permissions, serializers, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ParseError, PermissionDenied
from rest_framework.filters import OrderingFilter
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter
from rest_framework.views import APIView

from projects import access
from sources.api import (
    BULK_MAX_BODY_BYTES,
    BulkMessagesSerializer,
    ChatFilter,
    ChatSerializer,
    ChatUpdateSerializer,
    IngestCountsSerializer,
    MessageDetailSerializer,
    MessageFilter,
    MessageSerializer,
    read_bulk,
)
from sources.models import Chat, Message
from sources.search import COUNT_CAP, CappedCountPagination, MessageSearchFilter
from sources.selectors import chat_detail, chat_list, message_detail, message_list
from sources.services import BULK_MAX_MESSAGES, ingest_messages, update_chat

VISIBLE = "The chats the current configuration of a project you are on reads (all for staff)."
NOT_FOUND = OpenApiResponse(description="No such chat, or not one a project you are on reads.")


class BulkJSONParser(JSONParser):
    """DRF's JSON parser, with JSON nested deeper than Python's stack allows refused as a
    400 like any other unreadable body (DRF lets the RecursionError through: a 500)."""

    def parse(
        self,
        stream: IO[bytes],
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise ParseError("JSON parse error - the body nests too deeply.") from exc


class CanIngestMessages(permissions.BasePermission):
    """Staff, or an integration's user given the `sources.add_message` permission."""

    message = "Posting messages takes a staff user or the sources.add_message permission."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return access.can_ingest_messages(request.user)


@extend_schema_view(
    list=extend_schema(
        summary="List chats",
        description=f"Chats by title. {VISIBLE} Filter by `is_active` and `type`; `search` looks in the "
        "title.",
    ),
    retrieve=extend_schema(
        summary="Get a chat",
        description=f"{VISIBLE} `is_active` says whether analysis runs read the chat.",
        responses={200: ChatSerializer, 404: NOT_FOUND},
    ),
    partial_update=extend_schema(
        summary="Rename a chat or switch it on or off",
        description="Staff only. Changes `title` and `is_active`; other fields are ignored. A chat "
        "switched off keeps storing its messages, but analysis runs skip it.",
        request=ChatUpdateSerializer,
        responses={
            200: ChatSerializer,
            403: OpenApiResponse(description="Not a staff user."),
            404: NOT_FOUND,
        },
    ),
)
class ChatViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    # PATCH and no PUT (no `update`): a PUT would have to send fields Telegram owns.
    serializer_class = ChatSerializer
    permission_classes = [permissions.IsAuthenticated]
    filterset_class = ChatFilter
    search_fields = ["title"]
    ordering_fields = ["title", "created_at"]
    lookup_value_regex = r"\d+"

    def get_queryset(self) -> QuerySet[Chat]:
        chats = chat_list() if self.action == "list" else chat_detail()
        return access.visible_chats(self.request.user, chats)

    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        # Found first: a chat the user does not see is a 404, as for reading it.
        chat = self.get_object()
        if not access.can_change_chats(request.user):
            raise PermissionDenied("Only staff users can change chats.")
        changes = ChatUpdateSerializer(data=request.data, partial=True)
        changes.is_valid(raise_exception=True)
        chat = update_chat(chat=chat, **changes.validated_data)
        return Response(ChatSerializer(chat).data)


@extend_schema_view(
    list=extend_schema(
        summary="List messages",
        description="Messages of the chats you see (the chats the current configuration of a project you "
        "are on reads; all for staff), oldest first. Filter by `chat` (or `chat_telegram_id`), `author_id` "
        "and a time window (`sent_after` inclusive, `sent_before` exclusive); `search` finds words of the "
        "text by their start (see the parameter); `ordering=-sent_at` gives newest first. Pages count at "
        f"most {COUNT_CAP:,} messages: `count_is_capped` says when more match.",
    ),
    retrieve=extend_schema(
        summary="Get a message with its edit history",
        description="Its earlier texts are in `edits`, oldest first. Messages of the chats you see.",
        responses={
            200: MessageDetailSerializer,
            404: OpenApiResponse(description="No such message, or not of a chat you see."),
        },
    ),
)
class MessageViewSet(viewsets.ReadOnlyModelViewSet):
    permission_classes = [permissions.IsAuthenticated]
    filter_backends = [DjangoFilterBackend, OrderingFilter, MessageSearchFilter]
    pagination_class = CappedCountPagination
    filterset_class = MessageFilter
    # Searched by the word index (MessageSearchFilter); named for the browsable API's search box.
    search_fields = ["text"]
    ordering_fields = ["sent_at", "id"]
    lookup_value_regex = r"\d+"

    def get_queryset(self) -> QuerySet[Message]:
        messages = message_list() if self.action == "list" else message_detail()
        return access.visible_messages(self.request.user, messages)

    def get_serializer_class(self) -> type[serializers.BaseSerializer]:
        if self.action == "bulk":
            return BulkMessagesSerializer
        return MessageDetailSerializer if self.action == "retrieve" else MessageSerializer

    @extend_schema(
        summary="Store a batch of messages of one chat",
        description=(
            "For integrations. Creates the chat if new and stores up to "
            f"{BULK_MAX_MESSAGES} messages in one transaction: a request that fails writes nothing. "
            "Idempotent on (chat, Telegram message id): a message already stored as given counts as "
            "`unchanged`; one with a different text and a later `edited_at` is `updated`, its previous "
            "text kept in its edit history. Datetimes need a time zone. Duplicate ids in one request, "
            f"an empty list, more than {BULK_MAX_MESSAGES} messages or a body over "
            f"{BULK_MAX_BODY_BYTES // (1024 * 1024)} MiB are refused. Takes a staff user or the "
            "`sources.add_message` permission (token or session)."
        ),
        request=BulkMessagesSerializer,
        responses={
            200: IngestCountsSerializer,
            400: OpenApiResponse(description="Invalid payload; field errors, nothing written."),
            403: OpenApiResponse(description="Neither staff nor granted `sources.add_message`."),
            413: OpenApiResponse(description=f"Body over {BULK_MAX_BODY_BYTES // (1024 * 1024)} MiB."),
        },
    )
    @action(
        detail=False,
        methods=["post"],
        url_path="bulk",
        permission_classes=[CanIngestMessages],
        parser_classes=[BulkJSONParser],
        filter_backends=[],
        pagination_class=None,
    )
    def bulk(self, request: Request) -> Response:
        counts = ingest_messages(**read_bulk(request))
        return Response(IngestCountsSerializer(counts).data)


router = SimpleRouter()
router.register("chats", ChatViewSet, basename="chat")
router.register("messages", MessageViewSet, basename="message")

# The rows are the `sources` app's, and so are the URL names (`api:sources:chat-list`).
app_name = "sources"
urlpatterns = router.urls
