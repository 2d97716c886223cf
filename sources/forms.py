from django import forms


class ExportUploadForm(forms.Form):
    """The admin's upload of a Telegram Desktop export. Whether the file is an export is
    for `import_telegram_export` to decide while it streams it, not for the form."""

    export = forms.FileField(
        label="Export file",
        help_text="The result.json Telegram Desktop wrote (Export chat history, or Export Telegram data, "
        "in JSON format).",
        widget=forms.FileInput(attrs={"accept": ".json,application/json"}),
    )
    chat_id = forms.IntegerField(
        label="Chat id",
        required=False,
        help_text="Import only this chat of a full-account export (its id as exported or in Bot API form). "
        "Leave empty to import every chat in the file.",
    )
