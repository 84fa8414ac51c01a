// Messages the server could not store (its disk refused the write): the outbox keeps them,
// and they go again, each once a round, with a growing pause, until one is stored.
const FIRST = 500; // ms before the first round, then twice as long each time,
const MAX = 10000; // up to this

export class StoreRetry {
  // send(entry): sends an outbox entry again; ready(): whether the socket can take it now.
  constructor(outbox, send, ready) {
    this.outbox = outbox;
    this.send = send;
    this.ready = ready;
    this.retrying = new Set(); // ids the server could not store
    this.resending = new Set(); // of those, the ones sent again and not answered yet
    this.timer = null;
    this.backoff = FIRST;
  }

  waiting() {
    return this.retrying.size > 0 || this.resending.size > 0;
  }

  // The server refused to store it (this time): it goes again in the next round.
  refused(id) {
    this.resending.delete(id);
    this.retrying.add(id);
    if (this.timer !== null) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      if (this.ready()) this.round(); // else the next ready sends the whole outbox anyway
    }, this.backoff);
    this.backoff = Math.min(this.backoff * 2, MAX);
  }

  // Acknowledged. One of them stored: the disk works again, the others need not wait.
  stored(id) {
    if (!this.resending.delete(id) && !this.retrying.delete(id)) return;
    this.cancel();
    this.backoff = FIRST;
    this.round();
  }

  // Refused for good (too large, malformed): resending would not help.
  drop(id) {
    this.retrying.delete(id);
    this.resending.delete(id);
  }

  // Each waiting message is sent once a round: an ack or a refusal ends its round.
  round() {
    for (const e of this.outbox()) {
      if (!this.retrying.has(e.id)) continue;
      this.retrying.delete(e.id);
      this.resending.add(e.id);
      this.send(e);
    }
  }

  cancel() {
    clearTimeout(this.timer);
    this.timer = null;
  }

  // A new connection sends the whole outbox again (what still fails comes back); forget
  // also starts the pause over (another conversation, another login).
  clear({ forget = false } = {}) {
    this.retrying = new Set();
    this.resending = new Set();
    this.cancel();
    if (forget) this.backoff = FIRST;
  }
}
