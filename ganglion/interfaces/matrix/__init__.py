"""The Matrix interface, one module per seam: events in, replies out, the session behind them.

``interface`` holds ``MatrixInterface`` (the sync loop); ``inbound`` decides which events
reach the bus; ``outbound`` and ``send`` put replies in rooms, ``stream`` shows an answer
while it streams (an early post, edited), ``receipts`` marks messages read (and reacts to
them); ``keys`` handles events with no room key yet; ``catchup`` fills a limited timeline;
``session`` builds the nio client and checks it at start; ``login`` is ``ganglion login``.
This file imports none of them, so ``ganglion login`` and ``check-config`` stay light (no
nio) and a daemon without Matrix never loads it.
"""
