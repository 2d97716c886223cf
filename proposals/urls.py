from django.urls import path

from proposals import views

app_name = "proposals"
urlpatterns = [
    path("review/", views.queue, name="queue"),
    path("review/state/", views.queue_state, name="queue-state"),
    path("review/<int:proposal_id>/", views.proposal_page, name="proposal"),
    path("review/<int:proposal_id>/approve/", views.approve, name="approve"),
    path("review/<int:proposal_id>/reject/", views.reject, name="reject"),
    path("review/<int:proposal_id>/edit/", views.edit, name="edit"),
    path("review/<int:proposal_id>/merge/", views.merge, name="merge"),
    path("review/<int:proposal_id>/undo/", views.undo, name="undo"),
    path("review/<int:proposal_id>/split/", views.split, name="split"),
    path("review/<int:proposal_id>/duplicate/", views.duplicate, name="duplicate"),
]
