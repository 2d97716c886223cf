// The review pages' keyboard shortcuts and the queue's live notices. The pages work
// without this file: every review is a plain form or link; this only adds keys (`?` lists
// them) and tells the reviewer about reviews made elsewhere, over the shared live connection
// (live.js, loaded before this file on the queue's pages). Its events are not numbered (they
// come from every project the reviewer reviews), so each one reloads the queue's snapshot
// over HTTP and a lost event never leaves a wrong count. Without a WebSocket server (or when
// it goes away) it retries quietly and the page works as before.
(function () {
  "use strict";

  function typing(event) {
    return event.target.closest("input, textarea, select, [contenteditable]");
  }

  // The edit page: Ctrl+Enter (or Cmd+Enter) saves and approves.
  const saveAndApprove = document.getElementById("save-and-approve");
  if (saveAndApprove) {
    document.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        saveAndApprove.form.requestSubmit(saveAndApprove);
      }
    });
  }

  // The duplicate page: a candidate's number chooses it.
  const candidates = document.getElementById("candidates");
  if (candidates) {
    document.addEventListener("keydown", (event) => {
      if (event.ctrlKey || event.metaKey || event.altKey || typing(event)) return;
      if (event.key === "/") {
        event.preventDefault();
        document.getElementById("duplicate-search").focus();
        return;
      }
      const number = Number(event.key);
      const buttons = candidates.querySelectorAll("button[name=of]");
      if (number >= 1 && number <= buttons.length) {
        event.preventDefault();
        buttons[number - 1].form.requestSubmit(buttons[number - 1]);
      }
    });
  }
})();

(function () {
  "use strict";
  const root = document.getElementById("review");
  if (!root) return;

  function typing(event) {
    return event.target.closest("input, textarea, select, [contenteditable]");
  }
  const shownId = Number(root.dataset.proposalId) || null;
  const notices = document.getElementById("live-notices");
  const remaining = root.querySelector('[data-field="remaining"]');
  const live = document.getElementById("live");
  const past = {
    approve: "approved",
    add_to_task: "added to a task",
    reject: "rejected",
    merge: "merged",
    mark_duplicate: "marked as a duplicate",
    split: "split",
    edit: "edited",
    undo: "restored by an undo",
    reopen: "reopened",
  };
  let leaving = false;
  let shownGone = false;

  // Keyboard shortcuts.

  function submit(id) {
    const form = document.getElementById(id);
    if (!form) return;
    leaving = true;
    form.requestSubmit();
  }

  function follow(id) {
    const link = document.getElementById(id);
    if (link) window.location.assign(link.href);
  }

  function focus(selector) {
    const field = document.querySelector(selector);
    if (field) field.focus();
  }

  const help = document.getElementById("help");
  const guidelines = document.getElementById("guidelines");
  const keys = {
    a: () => submit("approve-form"),
    r: () => focus("#reject-form input[name=reason]"),
    e: () => follow("edit-link"),
    s: () => follow("split-link"),
    d: () => follow("duplicate-link"),
    m: () => submit("merge-form"),
    u: () => submit(document.getElementById("undo-current-form") ? "undo-current-form" : "undo-form"),
    j: () => follow("next-link"),
    n: () => follow("next-link"),
    k: () => follow("previous-link"),
    g: () => {
      if (guidelines) guidelines.open = !guidelines.open;
    },
    "/": () => focus("form.filters input[name=q]"),
    "?": () => {
      if (help && !help.open) help.showModal();
    },
  };
  // Keys that still work once a colleague has reviewed the proposal shown.
  const afterGone = "jnkgu/?";

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.isComposing) return;
    if (typing(event) || (help && help.open)) return;
    const action = keys[event.key];
    if (!action || (shownGone && !afterGone.includes(event.key))) return;
    event.preventDefault();
    action();
  });

  for (const form of root.querySelectorAll("form[method=post]")) {
    form.addEventListener("submit", () => {
      leaving = true;
    });
  }

  // Live notices.

  function notice(text, link) {
    const item = document.createElement("p");
    item.className = "notice";
    item.textContent = text;
    if (link) {
      const anchor = document.createElement("a");
      anchor.href = link.href;
      anchor.textContent = link.text;
      item.append(" ", anchor);
    }
    notices.prepend(item);
    while (notices.children.length > 5) notices.lastElementChild.remove();
  }

  function shownWasReviewed(status) {
    if (shownGone) return;
    shownGone = true;
    for (const form of root.querySelectorAll(".actions form, #edit-link")) {
      form.hidden = true;
    }
    const next = root.dataset.nextUrl || root.dataset.queueUrl;
    notice(`Proposal ${shownId} was ${status} by a colleague: it is the one shown here.`, {
      href: next,
      text: "Next proposal",
    });
  }

  function showSnapshot(state) {
    if (leaving) return; // on its way to the next page: what it shows no longer matters
    remaining.textContent = state.remaining;
    if (state.current && state.current.status !== "pending" && root.dataset.proposalStatus === "pending") {
      shownWasReviewed(state.current.status);
    }
  }

  // live.js reloads the snapshot after each of these events.
  function reviewed(data) {
    if (leaving && data.id === shownId) return; // Our own review, on its way to the next page.
    const verb = past[data.action] || data.status;
    if (data.id === shownId && data.status !== "pending" && root.dataset.proposalStatus === "pending") {
      shownWasReviewed(verb);
    } else if (data.id === shownId) {
      notice(`Proposal ${data.id} was ${verb} by a colleague.`, { href: window.location.href, text: "Reload" });
    } else {
      notice(`Proposal ${data.id} was ${verb} by a colleague.`);
    }
  }

  Live.create({
    socketPath: root.dataset.wsPath,
    snapshotUrl: () => {
      const url = new URL(root.dataset.stateUrl, window.location.href);
      if (shownId) url.searchParams.set("current", shownId);
      return url;
    },
    onSnapshot: showSnapshot,
    onEvent: (event) => {
      if (event.event === "proposal_reviewed") reviewed(event.data);
    },
    onStatus: (status) => {
      live.textContent = status === "live" ? "live" : "";
    },
    keepAlive: () => !leaving,
    firstRetry: 1000,
    maxRetry: 60000,
  }).connect();
})();
