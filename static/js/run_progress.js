// Live run progress: load the run's snapshot over HTTP, then apply numbered WebSocket
// events newer than it. On a dropped connection, reconnect and reload the snapshot, so
// a lost event never leaves a wrong screen.
(function () {
  "use strict";
  const root = document.getElementById("run");
  if (!root) return;
  const live = document.getElementById("live");
  const finished = new Set(["completed", "failed", "cancelled", "closed"]);
  let seq = -1;
  let retry = 500;

  function render(state) {
    for (const el of root.querySelectorAll("[data-field]")) {
      const name = el.dataset.field;
      if (name === "progress_bar") {
        el.style.width = state.progress_percent + "%";
        el.parentElement.setAttribute("aria-valuenow", state.progress_percent);
      } else if (name in state) {
        el.textContent = state[name];
        if (name === "status") el.className = "badge " + state.status;
      }
    }
    root.dataset.status = state.status;
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

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws/runs/${root.dataset.runId}/`);
    socket.onopen = async () => {
      retry = 500;
      live.textContent = "live";
      await snapshot();
    };
    socket.onmessage = (message) => {
      const event = JSON.parse(message.data);
      if (event.seq > seq) apply({ ...event.data, seq: event.seq });
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
