from django.urls import path

from sources.views import telegram_webhook

app_name = "sources"
urlpatterns = [
    path("telegram/webhook/", telegram_webhook, name="telegram-webhook"),
]
