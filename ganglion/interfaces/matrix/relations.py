"""Where an answer goes in its room: into its ``m.thread``, as a reply, or plainly.

One pure function of the answer's thread, the event it answers, the room's size and
``matrix.reply_mode``, so the rules read in one place (the Matrix spec's "Threading" and
"Rich replies"). An answer in a thread always carries the thread relation (or clients show
it in the main timeline), with ``is_falling_back`` true unless it is shown as a reply, and an
``m.in_reply_to`` for clients without threads. In the main timeline an answer is a reply in
a room with more than one person besides the bot (``auto``: there, who is answered is not
obvious), always, or never. No quoted fallback is added (the spec dropped it in v1.13).
"""

from __future__ import annotations

from typing import Any

from ganglion.messages import matrix_thread_root

REPLY_MODES = ("auto", "always", "never")


def names_target(thread_id: str, others: int, mode: str) -> bool:
    """Whether the first event of an answer names the message it answers (worth looking up:
    most answers, in a room of two, do not)."""
    return (matrix_thread_root(thread_id) is not None or mode == "always"
            or (mode == "auto" and others > 1))


def relates_to(thread_id: str, answers: str | None, others: int, mode: str, *,
               first: bool = True) -> dict[str, Any] | None:
    """The ``m.relates_to`` of an event of an answer, or None for a plain message.

    ``answers``: the event id of the message it answers (None: a reminder, a notice);
    ``others``: the room's joined members besides the bot; ``first``: the answer's first
    event (the parts after it, when a long answer is split, are no replies).
    """
    reply = first and answers is not None and (
        mode == "always" or (mode == "auto" and others > 1))
    root = matrix_thread_root(thread_id)
    if root is not None:
        return {"rel_type": "m.thread", "event_id": root, "is_falling_back": not reply,
                "m.in_reply_to": {"event_id": answers if first and answers else root}}
    if reply:
        return {"m.in_reply_to": {"event_id": answers}}
    return None
