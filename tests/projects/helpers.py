"""Helpers of the projects tests."""

from typing import Any


def form_data(response: Any) -> dict[str, Any]:
    """The POST data the edit page in `response` sends when saved unchanged."""
    editor = response.context["editor"]
    data: dict[str, Any] = {}

    def add(form: Any) -> None:
        for name in form.fields:
            value = form[name].value()
            if value is None or value is False:
                continue
            if isinstance(value, list | tuple):
                data[form[name].html_name] = [str(item) for item in value]
            else:
                data[form[name].html_name] = "on" if value is True else str(value)

    add(editor.form)
    for formset in editor.formsets.values():
        add(formset.management_form)
        for form in formset.forms:
            add(form)
    return data
