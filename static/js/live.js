// The live connection the live pages share: a snapshot loaded over HTTP, then events over a
// WebSocket that reconnects with backoff. Events are `{"event", "seq", "data"}`. A numbered
// event (seq > 0) not newer than the last one seen arrived late and is dropped; a gap in the
// numbers reloads the snapshot. Events sent without a number (seq 0) cannot show a gap, so
// each of them reloads the snapshot. Every (re)connect reloads it too: events sent while the
// socket was down are lost. So a lost event never leaves a wrong screen.
//
//   const live = Live.create({
//     socketPath: root.dataset.wsPath,       // the page says where it listens
//     snapshotUrl: root.dataset.stateUrl,    // or a function returning the URL
//     onSnapshot(state) {}, onEvent(event) {},
//     onStatus(status) {},                   // "live", "reconnecting" or "closed"
//     keepAlive(closeEvent) { return true; }, // false: no reconnect after this close
//   });
//   live.reload().then(() => live.connect());
var Live = (function () {
  "use strict";

  // The consumers close with 4403 when the user may not watch: retrying changes nothing.
  const REFUSED = 4403;

  function create(options) {
    const firstRetry = options.firstRetry || 500;
    const maxRetry = options.maxRetry || 10000;
    const keepAlive = options.keepAlive || (() => true);
    const onStatus = options.onStatus || (() => {});
    let lastSeq = -1;
    let retry = firstRetry;
    let socket = null;
    let timer = null;
    let stopped = false;
    let reloading = null;
    let again = false;

    async function fetchSnapshot() {
      const url = typeof options.snapshotUrl === "function" ? options.snapshotUrl() : options.snapshotUrl;
      let state;
      try {
        const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
        if (!response.ok) return;
        state = await response.json();
      } catch (error) {
        return; // Offline for a moment: the next gap or reconnect reloads it.
      }
      if (typeof state.seq === "number") {
        if (state.seq < lastSeq) return; // taken before an event already shown
        lastSeq = state.seq;
      }
      options.onSnapshot(state);
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
          await fetchSnapshot();
        } while (again);
      })().finally(() => (reloading = null));
      return reloading;
    }

    function receive(message) {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch (error) {
        return;
      }
      const seq = typeof event.seq === "number" ? event.seq : 0;
      if (seq <= 0) {
        options.onEvent(event);
        reload();
        return;
      }
      if (seq <= lastSeq) return; // older than what is shown: it arrived late
      const gap = lastSeq >= 0 && seq > lastSeq + 1;
      lastSeq = seq;
      options.onEvent(event);
      if (gap) reload();
    }

    function connect() {
      if (stopped || socket) return;
      const scheme = window.location.protocol === "https:" ? "wss" : "ws";
      let current;
      try {
        current = new WebSocket(`${scheme}://${window.location.host}${options.socketPath}`);
      } catch (error) {
        onStatus("closed"); // a URL the browser refuses: retrying would not help
        return;
      }
      socket = current;
      current.onopen = async () => {
        retry = firstRetry;
        // Live once the snapshot taken after connecting is shown: events from here on apply to it.
        await reload();
        if (socket === current && current.readyState === WebSocket.OPEN) onStatus("live");
      };
      current.onmessage = receive;
      current.onerror = () => {}; // onclose follows
      current.onclose = (event) => {
        if (socket === current) socket = null;
        if (stopped || event.code === REFUSED || !keepAlive(event)) {
          onStatus("closed");
          return;
        }
        onStatus("reconnecting");
        // Jittered, so pages that lost the same server do not all come back at once.
        timer = setTimeout(connect, retry * (0.75 + Math.random() / 2));
        retry = Math.min(retry * 2, maxRetry);
      };
    }

    function close() {
      stopped = true;
      clearTimeout(timer);
      if (socket) socket.close();
    }

    return { connect, reload, close };
  }

  return { create };
})();
