"""The Matrix interface, one module per seam: events in, replies out, the session behind them.

``interface`` holds ``MatrixInterface`` (the sync loop); ``inbound`` decides which events
reach the bus, ``replies`` reads back the message a reply answers; ``outbound`` and ``send``
put replies in rooms, ``relations`` decides where (a thread, a reply), ``stream`` shows an
answer while it streams (an early post, edited), ``receipts`` marks messages read (and reacts
to them); ``keys`` handles events with no room key yet; ``catchup`` fills a limited timeline
and the time between invite and join; ``membership`` joins, refuses and leaves rooms;
``session`` builds the nio client and checks it at start; ``login`` is ``ganglion login``.
This file imports none of them, so ``ganglion login`` and ``check-config`` stay light (no
nio) and a daemon without Matrix never loads it.
"""
