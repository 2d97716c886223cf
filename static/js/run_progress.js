// Live run progress, over the shared live connection (live.js): the run's snapshot loaded
// over HTTP, then numbered WebSocket events newer than it. Every event carries the run's
// whole state (its counters and every batch), so the page re-renders from the newest one;
// live.js drops older ones that arrive late and reloads the snapshot on a gap or a
// reconnect, so a lost event never leaves a wrong screen. A worker that dies sends no event
// at all: while batches run, a quiet page reloads the snapshot every half batch lease, so a
// batch that stalled shows as such.
(function () {
  "use strict";
  const root = document.getElementById("run");
  if (!root) return;
  const live = document.getElementById("live");
  const bar = document.getElementById("progress");
  const batchRows = root.querySelector("#batches tbody");
  const finished = new Set(["completed", "failed", "cancelled", "closed"]);
  const batchColumns = ["index", "status", "messages", "tokens", "proposals", "attempts", "llm_seconds", "error"];
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
    recheck = setTimeout(connection.reload, Math.max(1, state.lease_seconds / 2) * 1000);
  }

  const statusText = { live: "live", reconnecting: "reconnecting…", closed: "" };
  const connection = Live.create({
    socketPath: root.dataset.wsPath,
    snapshotUrl: root.dataset.stateUrl,
    onSnapshot: render,
    onEvent: (event) => render(event.data),
    onStatus: (status) => {
      live.textContent = statusText[status];
    },
    keepAlive: () => !finished.has(root.dataset.status),
    firstRetry: 500,
    maxRetry: 10000,
  });

  connection.reload().then(() => {
    if (finished.has(root.dataset.status)) {
      live.textContent = "";
    } else {
      connection.connect();
    }
  });
})();
