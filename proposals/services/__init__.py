"""Writes of the `proposals` app: `creation` (proposals from an answer, duplicates marked)
and `reviews` (every review action); the public names are re-exported here."""

from proposals.services.creation import (
    SIMILAR_TITLE_RATIO,
    DuplicateFinder,
    NewProposal,
    ProposalData,
    Similarity,
    create_proposal,
    create_proposals,
)
from proposals.services.reviews import (
    EDITABLE_FIELDS,
    PENDING,
    BulkOutcome,
    approve_proposal,
    bulk_review,
    edit_proposal,
    mark_duplicate,
    mark_duplicate_of_task,
    merge_proposals,
    merge_with_similar,
    reject_proposal,
    reopen_proposal,
    split_proposal,
    undo_last_action,
)

__all__ = [
    "EDITABLE_FIELDS",
    "PENDING",
    "SIMILAR_TITLE_RATIO",
    "BulkOutcome",
    "DuplicateFinder",
    "NewProposal",
    "ProposalData",
    "Similarity",
    "approve_proposal",
    "bulk_review",
    "create_proposal",
    "create_proposals",
    "edit_proposal",
    "mark_duplicate",
    "mark_duplicate_of_task",
    "merge_proposals",
    "merge_with_similar",
    "reject_proposal",
    "reopen_proposal",
    "split_proposal",
    "undo_last_action",
]
