// chatroom browser client: the recent-rooms list, and one room over a WebSocket, on the full
// page (/chat/<id>, signed in by the session cookie) or framed by a host (/embed/<id>, signed
// in by the host's token: see "credentials" below and docs/embedding.md).
//
// Safe by construction: every piece of text from the server or a user is inserted with
// textContent (or as a text node), never parsed as HTML. No inline styles (the CSP forbids them).
//
// Reliability: the highest message id on screen is the resume point. After a drop the socket
// reconnects with backoff and ?since=<that id>; messages are keyed by id, so a replay never
// shows one twice. Each message sent carries a random client_msg_id; until its broadcast comes
// back it stays on screen as "sending", and after a reconnect it is sent again unless the replay
// shows it was already stored.
//
// Edits and deletions take their place in the same id sequence (their `seq`), so the resume
// point covers them too; applying one twice changes nothing.
"use strict";

(() => {
  const PAGE_SIZE = 50;             // messages per "load older" request
  const NEAR_BOTTOM_PX = 64;        // closer than this to the end counts as "reading the end"
  const RETRY_BASE_MS = 500;        // first reconnect delay; doubles per failed attempt
  const RETRY_MAX_MS = 15000;       // ...up to this, with jitter so clients do not stampede
  const COUNTER_FROM = 0.8;         // show the character counter past this share of the limit
  const TYPING_EVERY_MS = 2000;     // typing notices sent at most this often (the server's interval)
  const TYPING_SHOWN_MS = 4500;     // someone is shown typing this long after their last notice
  const READ_AFTER_MS = 800;        // a read marker goes out once messages stop arriving
  const UNREAD_CAP = 100;           // GET /rooms counts unread messages up to this

  const $ = (id) => document.getElementById(id);
  let me = document.body.dataset.user;  // framed: unknown until the welcome frame names it
  const room = document.body.dataset.room;

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const timeFormat = new Intl.DateTimeFormat([], {hour: "2-digit", minute: "2-digit"});
  const dayTimeFormat = new Intl.DateTimeFormat([], {
    month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
  });
  const fullFormat = new Intl.DateTimeFormat([], {dateStyle: "full", timeStyle: "medium"});

  function when(iso) {
    const date = new Date(iso);
    const today = new Date();
    return date.toDateString() === today.toDateString()
      ? timeFormat.format(date) : dayTimeFormat.format(date);
  }

  function hue(name) {
    let h = 0;
    for (const ch of name) h = (h * 31 + ch.codePointAt(0)) >>> 0;
    return "hue-" + (h % 8);
  }

  const roomHref = (name) => "/chat/" + encodeURIComponent(name);
  const historyUrl = (query) =>
    `/items/${encodeURIComponent(room)}/messages?${new URLSearchParams(query)}`;

  // ---------------------------------------------------------------- recent rooms
  function roomItem(r) {
    const link = el("a", "room-link");
    link.href = roomHref(r.room);
    if (r.room === room) link.setAttribute("aria-current", "page");
    const meta = el("span", "room-meta", `${r.last_user} · ${when(r.last_message_at)}`);
    link.append(el("span", "room-name", r.room), meta);
    if (r.unread > 0 && r.room !== room) {
      const badge = el("span", "badge", r.unread >= UNREAD_CAP ? `${UNREAD_CAP - 1}+` : String(r.unread));
      badge.append(el("span", "visually-hidden", " unread"));
      link.append(badge);
    }
    const li = el("li");
    li.append(link);
    return li;
  }

  async function loadRooms() {
    const list = $("rooms");
    const empty = $("rooms-empty");
    try {
      const response = await fetch("/rooms?limit=30", {headers: {accept: "application/json"}});
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const data = await response.json();
      list.replaceChildren(...data.rooms.map(roomItem));
      empty.hidden = data.rooms.length > 0;
    } catch {
      empty.textContent = "The room list could not be loaded.";
      empty.hidden = false;
    } finally {
      list.removeAttribute("aria-busy");
    }
  }

  // A message in this room makes it the most recently active one.
  function bumpRoom(m) {
    const list = $("rooms");
    if (!list || list.hasAttribute("aria-busy")) return;
    list.querySelector('[aria-current="page"]')?.closest("li").remove();
    list.prepend(roomItem({room, last_user: m.user, last_message_at: m.created_at}));
    $("rooms-empty").hidden = true;
  }

  if ($("rooms")) loadRooms();
  if (!room) return;

  // ---------------------------------------------------------------- credentials
  // The full page rides on the session cookie. A framed room may have no cookie at all (many
  // browsers keep none in third-party frames): the host hands it a token, in the fragment or by
  // postMessage, neither of which reaches a server log. The page then sends it as a bearer
  // header over HTTP and as ?token= on the socket, which browsers cannot give headers; the
  // server redacts that from its logs.
  const framed = document.body.dataset.origins !== undefined;
  let token = null;

  function fetchHistory(query) {
    const headers = {accept: "application/json"};
    if (token) headers.authorization = `Bearer ${token}`;
    return fetch(historyUrl(query), {headers});
  }

  // ---------------------------------------------------------------- the room
  const scroller = $("scroller");
  const list = $("messages");
  const olderButton = $("load-older");
  const roomStart = $("room-start");
  const marker = $("new-marker");
  const form = $("send-form");
  const input = $("body");
  const sendError = $("send-error");
  const counter = $("counter");
  const statusEl = $("status");
  const statusText = $("status-text");
  const retryButton = $("retry");
  const sendButton = $("send");
  const onlineList = $("online");
  const onlineCount = $("online-count");
  const typingLine = $("typing");
  const maxChars = Number(document.body.dataset.maxChars) || 4000;
  const baseTitle = document.title;

  const shown = new Map();      // message id -> its <li>: nothing is shown twice
  let newestId = null;          // the resume point for ?since= (messages' ids, changes' seq)
  let editing = null;           // the <li> of the own message being edited
  let oldestId = null;          // the cursor for "load older"
  const pending = [];           // {cid, body, li, sent}: own messages not yet broadcast back
  const present = new Set();
  let socket = null;
  let ready = false;            // the current socket has replayed history: sends may go out
  let attempt = 0;
  let retryTimer = null;
  let countdown = null;
  let stopped = false;          // signed out or refused: no more reconnects
  let unseen = 0;               // arrived while the reader was scrolled up
  let unread = 0;               // arrived while the tab was hidden
  const typists = new Map();    // user -> the timer that stops showing them typing
  let typingSentAt = 0;
  let readThrough = 0;          // the read marker as far as this page knows
  let readTimer = null;

  // -------------------------------------------------- rendering
  function messageItem(m) {
    const own = m.user === me;
    const li = el("li", own ? "message own" : "message");
    if (m.id !== undefined) li.dataset.id = String(m.id);
    // A host's token may give a display name; the username stays in the tooltip.
    const shown = m.name || m.user;
    const avatar = el("span", "avatar " + hue(m.user), [...shown][0]);
    avatar.setAttribute("aria-hidden", "true");
    const meta = el("div", "meta");
    const author = el("span", "author", shown);
    if (m.name) author.title = m.user;
    meta.append(author);
    if (m.created_at) {
      const time = el("time", "", when(m.created_at));
      time.dateTime = m.created_at;
      time.title = fullFormat.format(new Date(m.created_at));
      meta.append(time);
    }
    const bubble = el("div", "bubble");
    bubble.append(el("div", "text", m.body));
    li.append(avatar, meta, bubble);
    if (m.id !== undefined) {
      // Edit only on own messages; delete on own ones, and on all for moderators (CSS).
      const actions = el("span", "actions");
      if (own) actions.append(actionButton("Edit", "edit", () => startEdit(li)));
      actions.append(actionButton("Delete", "delete", () => send({type: "delete", id: m.id})));
      meta.append(actions);
    }
    if (m.deleted_by) markDeleted(li);
    else if (m.edited_at) markEdited(li);
    return li;
  }

  function actionButton(text, kind, act) {
    const button = el("button", "action " + kind, text);
    button.type = "button";
    // Out of the Tab order (one stop per message would bury the box); the keyboard edits
    // with Up arrow, and deletes by saving an empty edit.
    button.tabIndex = -1;
    button.addEventListener("click", act);
    return button;
  }

  function markEdited(li) {
    if (!li.querySelector(".edited")) li.querySelector(".meta .actions").before(el("span", "edited", "(edited)"));
  }

  function markDeleted(li) {
    if (li === editing) stopEdit();
    li.classList.add("deleted");
    li.querySelector(".meta .actions")?.remove();
    li.querySelector(".edited")?.remove();
    li.querySelector(".text").textContent = "message deleted";
  }

  // An edit or delete from the room (live or replayed); its seq moves the resume point.
  function applyChange(c) {
    if (newestId === null || c.seq > newestId) newestId = c.seq;
    const li = shown.get(c.id);
    if (!li || li.classList.contains("deleted")) return;
    if (c.type === "delete") return markDeleted(li);
    li.querySelector(".text").textContent = c.body;
    markEdited(li);
  }

  function send(frame) {
    if (ready && socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(frame));
    else showError("Not connected. Try again in a moment.");
  }

  // Pending own messages stay last; everything else goes before them.
  const firstPending = () => list.querySelector(".message.pending");

  function addMessage(m) {
    if (shown.has(m.id)) return false;
    const li = messageItem(m);
    shown.set(m.id, li);
    if (newestId === null || m.id > newestId) {
      list.insertBefore(li, firstPending());
      newestId = m.id;
    } else {
      let next = null;
      for (const node of list.querySelectorAll(".message[data-id]")) {
        if (Number(node.dataset.id) > m.id) { next = node; break; }
      }
      list.insertBefore(li, next);
    }
    if (oldestId === null || m.id < oldestId) oldestId = m.id;
    return true;
  }

  function addNotice(text) {
    list.insertBefore(el("li", "notice", text), firstPending());
  }

  const nearBottom = () =>
    scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < NEAR_BOTTOM_PX;

  function toBottom() {
    scroller.scrollTop = scroller.scrollHeight;
    unseen = 0;
    marker.hidden = true;
  }

  // Add live content without yanking a reader who scrolled up: they get a marker instead.
  function live(add, {own = false} = {}) {
    const stick = own || nearBottom();
    const added = add();
    if (stick) {
      toBottom();
    } else if (added > 0) {
      unseen += added;
      marker.textContent = unseen === 1 ? "1 new message" : `${unseen} new messages`;
      marker.hidden = false;
    }
    if (added > 0 && document.hidden) {
      unread += added;
      document.title = `(${unread}) ${baseTitle}`;
    }
    if (added > 0) markRead();
  }

  // -------------------------------------------------- read markers
  // The newest message shown is read once the tab is visible and the reader is at the end;
  // one frame when messages settle, not one per message.
  function markRead() {
    clearTimeout(readTimer);
    readTimer = setTimeout(() => {
      if (document.visibilityState !== "visible" || !nearBottom()) return;
      if (newestId === null || newestId <= readThrough || !ready) return;
      if (!socket || socket.readyState !== WebSocket.OPEN) return;
      socket.send(JSON.stringify({type: "read", id: newestId}));
      readThrough = newestId;
    }, READ_AFTER_MS);
  }

  // -------------------------------------------------- who is typing
  // The line keeps its height when empty, and its text changes only when the names do.
  function renderTyping() {
    const names = [...typists.keys()].sort((a, b) => a.localeCompare(b));
    let text = "";
    if (names.length === 1) text = `${names[0]} is typing…`;
    else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
    else if (names.length > 2) text = "Several people are typing…";
    if (typingLine.textContent !== text) typingLine.textContent = text;
  }

  function typingFrom(user) {
    clearTimeout(typists.get(user));
    typists.set(user, setTimeout(() => stoppedTyping(user), TYPING_SHOWN_MS));
    renderTyping();
  }

  function stoppedTyping(user) {
    if (!typists.has(user)) return;
    clearTimeout(typists.get(user));
    typists.delete(user);
    renderTyping();
  }

  scroller.addEventListener("scroll", () => {
    if (!marker.hidden && nearBottom()) { unseen = 0; marker.hidden = true; }
    if (nearBottom()) markRead();
  }, {passive: true});
  marker.addEventListener("click", () => { toBottom(); input.focus(); });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) { unread = 0; document.title = baseTitle; markRead(); }
  });

  function renderOnline() {
    const names = [...present].sort((a, b) => a.localeCompare(b));
    onlineList.replaceChildren(...names.map((name) => {
      const li = el("li", "", name);
      if (name === me) li.append(" ", el("span", "you", "(you)"));
      return li;
    }));
    onlineCount.textContent = String(names.length);
  }

  function setOlder(hasMore) {
    olderButton.hidden = !hasMore;
    roomStart.hidden = hasMore;
    if (!hasMore && document.activeElement === olderButton) scroller.focus({preventScroll: true});
  }

  // -------------------------------------------------- status and errors
  function setStatus(kind, text) {
    statusEl.className = "status " + kind;
    statusText.textContent = text;
    retryButton.hidden = kind !== "offline" || stopped;
  }

  function showError(...parts) {
    sendError.replaceChildren(...parts);
    sendError.hidden = false;
  }

  function hideError() {
    sendError.hidden = true;
    sendError.replaceChildren();
  }

  const ERROR_TEXT = {
    body_too_long: `That message is too long: the limit is ${maxChars} characters.`,
    empty_body: "That message is empty.",
    store_failed: "The message could not be saved. Please send it again.",
    not_author: "Only its author can edit a message.",
    not_moderator: "Only its author or a moderator can delete a message.",
    unknown_message: "That message is no longer here.",
    message_deleted: "That message was deleted.",
  };

  function describe(frame) {
    let text = ERROR_TEXT[frame.code] || String(frame.detail || frame.code || "Not sent.");
    text = text.charAt(0).toUpperCase() + text.slice(1);
    if (!/[.!?]$/.test(text)) text += ".";
    const wait = Number(frame.retry_after);
    if (wait > 0) text += ` Try again in ${Math.ceil(wait)} s.`;
    return text;
  }

  function signedOut() {
    stop("Signed out");
    if (framed) return showError("Your sign-in has expired. Reload the page to keep chatting.");
    const link = el("a", "", "Sign in again");
    link.href = "/login?next=" + encodeURIComponent(location.pathname);
    showError("Your session has ended. ", link, " to keep chatting.");
  }

  function refused() {
    stop("No access");
    showError("Your account may not open this room.");
  }

  function stop(text) {
    stopped = true;
    clearTimeout(retryTimer);
    clearInterval(countdown);
    setStatus("offline", text);
    setComposer(false);
  }

  function setComposer(enabled) {
    input.disabled = !enabled;
    sendButton.disabled = !enabled;
  }

  // -------------------------------------------------- the socket
  function connect() {
    clearTimeout(retryTimer);
    clearInterval(countdown);
    if (stopped || socket || (framed && !token)) return;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const query = new URLSearchParams();
    if (token) query.set("token", token);
    const since = newestId;
    if (since !== null) query.set("since", since);
    const search = query.toString();
    const url = `${scheme}//${location.host}/items/${encodeURIComponent(room)}/ws` +
      (search && `?${search}`);
    setStatus("connecting", attempt ? "Reconnecting…" : "Connecting…");
    const ws = new WebSocket(url);
    socket = ws;
    let welcomed = false;
    ws.addEventListener("message", (event) => {
      if (socket !== ws) return;
      let frame;
      try { frame = JSON.parse(event.data); } catch { return; }
      if (frame.type === "welcome") welcomed = true;
      handle(ws, frame, since);
    });
    ws.addEventListener("close", (event) => {
      if (socket !== ws) return;
      socket = null;
      ready = false;
      markPending();
      if (!welcomed || event.code === 1008) probe(); else retryLater();
    });
  }

  // A refused handshake reaches browsers as close code 1006, like a server that is down: ask
  // over HTTP whether the session or the room is the reason before trying again.
  async function probe() {
    try {
      const response = await fetchHistory({limit: 1});
      if (response.status === 401) return signedOut();
      if (response.status === 403) return refused();
    } catch {
      // The server is unreachable: keep trying.
    }
    retryLater();
  }

  function retryLater() {
    if (stopped) return;
    const delay = Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** attempt) * (0.5 + Math.random() / 2);
    attempt += 1;
    const due = Date.now() + delay;
    const tick = () => {
      const seconds = Math.max(1, Math.ceil((due - Date.now()) / 1000));
      setStatus("offline", `Offline · retrying in ${seconds} s`);
    };
    tick();
    countdown = setInterval(tick, 1000);
    retryTimer = setTimeout(connect, delay);
  }

  retryButton.addEventListener("click", () => { attempt = 0; connect(); input.focus(); });
  window.addEventListener("online", () => { if (!socket) { attempt = 0; connect(); } });

  function handle(ws, frame, since) {
    switch (frame.type) {
      case "welcome":
        attempt = 0;
        for (const user of [...typists.keys()]) stoppedTyping(user);
        me = frame.user;
        setComposer(true);
        document.body.classList.toggle("moderator", frame.moderator === true);
        present.clear();
        for (const name of frame.online) present.add(name);
        renderOnline();
        setStatus("online", "Connected");
        break;
      case "history":
        onHistory(ws, frame, since);
        break;
      case "message": {
        const mine = settle(frame);
        stoppedTyping(frame.user);
        live(() => (addMessage(frame) ? 1 : 0), {own: mine});
        bumpRoom(frame);
        break;
      }
      case "edit":
      case "delete":
        applyChange(frame);
        break;
      case "join":
        if (!present.has(frame.user)) {
          present.add(frame.user);
          renderOnline();
          if (frame.user !== me) live(() => { addNotice(`${frame.user} joined`); return 0; });
        }
        break;
      case "leave":
        stoppedTyping(frame.user);
        if (present.delete(frame.user)) {
          renderOnline();
          live(() => { addNotice(`${frame.user} left`); return 0; });
        }
        break;
      case "typing":
        typingFrom(frame.user);
        break;
      case "read":  // this or another tab of ours read the room this far
        readThrough = Math.max(readThrough, frame.id);
        break;
      case "error":
        if (frame.id === undefined) onError(frame);  // else it refused a read: the next one may do
        break;
    }
  }

  async function onHistory(ws, frame, since) {
    const first = shown.size === 0;
    live(() => replayed(frame.messages), {own: first});
    if (since === null) {
      if (oldestId === null || frame.messages.some((m) => m.id === oldestId)) setOlder(frame.has_more);
    } else if (frame.has_more) {
      // More than one replay's worth was missed: page forward over REST.
      let after = frame.messages.length ? place(frame.messages[frame.messages.length - 1]) : since;
      for (;;) {
        let page;
        try {
          const response = await fetchHistory({after, limit: 200, changes: true});
          if (!response.ok) throw new Error(`HTTP ${response.status}`);
          page = await response.json();
        } catch {
          if (socket === ws) ws.close();  // start over from the newest id we have
          return;
        }
        if (socket !== ws) return;
        live(() => replayed(page.messages));
        if (!page.has_more || !page.messages.length) break;
        after = place(page.messages[page.messages.length - 1]);
      }
    }
    if (socket !== ws) return;
    ready = true;
    for (const p of pending) transmit(p);
    markRead();
    // A framed room never takes the focus from the host's page.
    const focusable = !framed && document.activeElement === document.body;
    if (first && focusable && matchMedia("(pointer: fine)").matches) {
      input.focus();
    }
  }

  const place = (item) => item.seq ?? item.id;

  // Replayed messages, and (after ?since=) edits and deletions in their order; how many are new.
  function replayed(items) {
    const messages = items.filter((m) => m.type !== "edit" && m.type !== "delete");
    let added = 0;
    for (const item of items) {
      if (item.type === "edit" || item.type === "delete") applyChange(item);
      else if (addMessage(item)) added += 1;
    }
    settleReplayed(messages);
    return added;
  }

  // -------------------------------------------------- sending
  function newClientMsgId() {
    const bytes = crypto.getRandomValues(new Uint8Array(16));  // works outside HTTPS too
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function pendingItem(text) {
    const li = messageItem({user: me, body: text});
    li.classList.add("pending");
    li.querySelector(".meta").append(el("span", "state", "sending…"));
    return li;
  }

  function markPending() {
    for (const p of pending) {
      p.li.querySelector(".state").textContent = "waiting for connection…";
    }
  }

  function transmit(p) {
    if (!ready || !socket || socket.readyState !== WebSocket.OPEN) return;
    socket.send(JSON.stringify({type: "message", body: p.body, client_msg_id: p.cid}));
    p.sent = true;
    p.li.querySelector(".state").textContent = "sending…";
  }

  function drop(p) {
    pending.splice(pending.indexOf(p), 1);
    p.li.remove();
  }

  // The broadcast of an own message acknowledges it.
  function settle(frame) {
    const p = frame.client_msg_id && pending.find((x) => x.cid === frame.client_msg_id);
    if (!p) return false;
    drop(p);
    return true;
  }

  // After a reconnect: a message sent just before the drop may have been stored although its
  // broadcast never arrived. The replay shows it; match by client_msg_id when the server
  // includes it, else by author and text.
  function settleReplayed(messages) {
    for (const m of messages) {
      if (m.user !== me) continue;
      const p = pending.find((x) => x.sent && (m.client_msg_id ? x.cid === m.client_msg_id : x.body === m.body));
      if (p) drop(p);
    }
  }

  // A refused frame: the error names its client_msg_id if the server says so; otherwise it is
  // the latest message sent. Its text goes back into the box so nothing typed is lost.
  function onError(frame) {
    if (frame.id !== undefined) return showError(describe(frame));  // an edit or delete refused
    let p = frame.client_msg_id && pending.find((x) => x.cid === frame.client_msg_id);
    if (!p) p = [...pending].reverse().find((x) => x.sent);
    if (p) {
      drop(p);
      if (!input.value.trim()) { input.value = p.body; updateCounter(); }
    }
    showError(describe(frame));
  }

  function updateCounter() {
    const n = [...input.value.trim()].length;
    counter.hidden = n < maxChars * COUNTER_FROM;
    counter.textContent = `${n} / ${maxChars}`;
    counter.classList.toggle("over", n > maxChars);
  }

  // -------------------------------------------------- editing
  function startEdit(li) {
    stopEdit();
    editing = li;
    li.classList.add("editing");
    input.value = li.querySelector(".text").textContent;
    $("composer-hint").textContent = "Editing · Enter to save (empty: delete) · Escape to cancel";
    updateCounter();
    input.focus();
  }

  function stopEdit() {
    if (!editing) return;
    editing.classList.remove("editing");
    editing = null;
    input.value = "";
    $("composer-hint").textContent = "Enter to send · Shift+Enter for a new line";
    updateCounter();
  }

  function lastOwn() {
    const own = list.querySelectorAll(".message.own[data-id]:not(.deleted)");
    return own.length ? own[own.length - 1] : null;
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (editing) {
      const li = editing;
      const id = Number(li.dataset.id);
      hideError();
      if (!text) send({type: "delete", id});
      else if (text !== li.querySelector(".text").textContent) send({type: "edit", id, body: text});
      stopEdit();
      return;
    }
    if (!text || stopped) return;
    hideError();
    const p = {cid: newClientMsgId(), body: text, li: pendingItem(text), sent: false};
    pending.push(p);
    live(() => { list.append(p.li); return 0; }, {own: true});
    input.value = "";
    updateCounter();
    if (ready) transmit(p); else p.li.querySelector(".state").textContent = "waiting for connection…";
  });

  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    } else if (event.key === "ArrowUp" && !input.value && !editing && lastOwn()) {
      event.preventDefault();
      startEdit(lastOwn());
    } else if (event.key === "Escape" && editing) {
      event.preventDefault();
      stopEdit();
    }
  });
  input.addEventListener("input", () => {
    updateCounter();
    const now = Date.now();
    if (!input.value.trim() || !ready || now - typingSentAt < TYPING_EVERY_MS) return;
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    socket.send(JSON.stringify({type: "typing"}));
    typingSentAt = now;
  });

  // -------------------------------------------------- older history over REST
  olderButton.addEventListener("click", async () => {
    olderButton.disabled = true;
    olderButton.textContent = "Loading…";
    // Nothing shown yet (a replay with no room for even the newest message): the newest page.
    const query = oldestId === null ? {limit: PAGE_SIZE} : {before: oldestId, limit: PAGE_SIZE};
    try {
      const response = await fetchHistory(query);
      if (response.status === 401) return signedOut();
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const page = await response.json();
      const height = scroller.scrollHeight;
      const top = scroller.scrollTop;
      page.messages.forEach(addMessage);
      setOlder(page.has_more);
      scroller.scrollTop = top + (scroller.scrollHeight - height);  // keep the reader's place
    } catch {
      showError("Older messages could not be loaded. Try again.");
    } finally {
      olderButton.disabled = false;
      olderButton.textContent = "Load older messages";
    }
  });

  // A token from the host: the first one opens the room, a later one (the host renewing an
  // expiring token) serves the next connection, or reopens a room the old one was refused.
  function useToken(value) {
    token = value;
    if (stopped) {
      stopped = false;
      hideError();
    }
    if (!socket) { attempt = 0; connect(); }
  }

  if (!framed) {
    connect();
  } else {
    const origins = document.body.dataset.origins.split(" ");
    window.addEventListener("message", (event) => {
      if (event.source !== window.parent || !origins.includes(event.origin)) return;
      if (typeof event.data?.token === "string") useToken(event.data.token);
    });
    setComposer(false);  // until the welcome frame says who is writing
    const fromFragment = new URLSearchParams(location.hash.slice(1)).get("token");
    if (fromFragment) {
      // Out of the frame's address, where it could be copied or shown.
      history.replaceState(null, "", location.pathname + location.search);
      useToken(fromFragment);
    } else {
      setStatus("connecting", "Waiting for the host page…");
    }
  }
})();
