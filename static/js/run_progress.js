// Live run progress: load the run's snapshot over HTTP, then apply numbered WebSocket
// events newer than it. Every event carries the run's whole state (its counters and every
// batch), so the page re-renders from the newest one and ignores older ones that arrive
// late. A gap in the numbers, or a dropped connection, reloads the snapshot, so a lost
// event never leaves a wrong screen. A worker that dies sends no event at all: while
// batches run, a quiet page reloads the snapshot every half batch lease, so a batch that
// stalled shows as such.
(function () {
  "use strict";
  const root = document.getElementById("run");
  if (!root) return;
  const live = document.getElementById("live");
  const bar = document.getElementById("progress");
  const batchRows = root.querySelector("#batches tbody");
  const finished = new Set(["completed", "failed", "cancelled", "closed"]);
  const batchColumns = ["index", "status", "messages", "tokens", "proposals", "attempts", "llm_seconds", "error"];
  let seq = -1;
  let retry = 500;
  let reloading = null;
  let again = false;
  let recheck = null;

  function cell(column, batch, stalled) {
    const td = document.createElement("td");
    if (column === "status") {
      const badge = document.createElement("span");
      badge.className = "badge " + batch.status;
      badge.textContent = batch.status;
      td.append(badge);
      if (stalled) {
        const note = document.createElement("span");
        note.className = "badge stalled";
        note.title = "No heartbeat from its worker for over " + root.dataset.leaseSeconds + " s";
        note.textContent = "stalled";
        td.append(" ", note);
      }
    } else {
      if (column === "error") td.className = "error-text";
      td.textContent = batch[column];
    }
    return td;
  }

  function renderBatches(state) {
    const stalled = new Set(state.stalled_indexes);
    const rows = state.batches.map((batch) => {
      const tr = document.createElement("tr");
      tr.dataset.batch = batch.index;
      tr.dataset.status = batch.status;
      if (stalled.has(batch.index)) tr.dataset.stalled = "";
      tr.append(...batchColumns.map((column) => cell(column, batch, stalled.has(batch.index))));
      return tr;
    });
    if (!rows.length) {
      const tr = document.createElement("tr");
      tr.className = "empty";
      const td = document.createElement("td");
      td.colSpan = batchColumns.length;
      td.className = "muted";
      td.textContent = finished.has(state.status) ? "No batches." : "Not planned yet.";
      tr.append(td);
      rows.push(tr);
    }
    batchRows.replaceChildren(...rows);
  }

  function render(state) {
    root.dataset.leaseSeconds = state.lease_seconds;
    for (const el of root.querySelectorAll("[data-field]")) {
      const name = el.dataset.field;
      if (name in state) {
        el.textContent = state[name];
        if (name === "status") el.className = "badge " + state.status;
      }
    }
    bar.querySelector('[data-part="done"]').style.width = state.done_percent + "%";
    bar.querySelector('[data-part="failed"]').style.width = state.failed_percent + "%";
    bar.setAttribute("aria-valuenow", state.progress_percent);
    bar.setAttribute("aria-valuetext", state.progress_label);
    renderBatches(state);
    for (const action of root.querySelectorAll("[data-show]")) action.hidden = !state[action.dataset.show];
    root.dataset.status = state.status;
    checkAgainLater(state);
  }

  function checkAgainLater(state) {
    clearTimeout(recheck);
    if (finished.has(state.status) || !state.batches.some((batch) => batch.status === "running")) return;
    recheck = setTimeout(reload, Math.max(1, state.lease_seconds / 2) * 1000);
  }

  function apply(state) {
    if (state.seq < seq) return;
    seq = state.seq;
    render(state);
  }

  async function snapshot() {
    const response = await fetch(root.dataset.stateUrl, { headers: { Accept: "application/json" } });
    if (response.ok) apply(await response.json());
  }

  // One reload at a time, so a burst of gaps asks for few snapshots; but a reload asked for
  // while one is on its way fetches again after it: the snapshot on its way may predate
  // what the gap hides.
  function reload() {
    if (reloading) {
      again = true;
      return reloading;
    }
    reloading = (async () => {
      do {
        again = false;
        await snapshot();
      } while (again);
    })().finally(() => (reloading = null));
    return reloading;
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws/runs/${root.dataset.runId}/`);
    socket.onopen = async () => {
      retry = 500;
      // Live once the snapshot taken after connecting is shown: events from here on apply to it.
      try {
        await reload();
      } finally {
        live.textContent = "live";
      }
    };
    socket.onmessage = (message) => {
      const event = JSON.parse(message.data);
      if (event.seq <= seq) return; // older than what is shown: it arrived late
      const gap = seq >= 0 && event.seq > seq + 1;
      apply({ ...event.data, seq: event.seq });
      if (gap) reload();
    };
    socket.onclose = () => {
      if (finished.has(root.dataset.status)) {
        live.textContent = "";
        return;
      }
      live.textContent = "reconnecting…";
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 10000);
    };
  }

  snapshot().then(() => {
    if (finished.has(root.dataset.status)) {
      live.textContent = "";
    } else {
      connect();
    }
  });
})();
