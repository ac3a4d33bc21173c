// chatroom browser client: one room socket, history replay, live messages, presence.
// Message text is always inserted with textContent, never as HTML.
"use strict";

(() => {
  const body = document.body;
  const me = body.dataset.user;
  const room = body.dataset.room;
  const list = document.getElementById("messages");
  const online = document.getElementById("online");
  const statusEl = document.getElementById("status");
  const form = document.getElementById("send-form");
  const input = document.getElementById("body");
  const sendButton = document.getElementById("send");
  const sendError = document.getElementById("send-error");

  let socket = null;
  let lastId = null;          // highest message id shown: the resume point
  let retry = 0;
  const seen = new Set();     // ids on screen, so a replay never shows one twice
  const present = new Set();

  function setStatus(text, cls) {
    statusEl.textContent = text;
    statusEl.className = "status " + (cls || "");
  }

  function addLine(cls, text) {
    const li = document.createElement("li");
    li.className = cls;
    li.textContent = text;
    list.append(li);
    list.scrollTop = list.scrollHeight;
  }

  function addMessage(m) {
    if (seen.has(m.id)) return;
    seen.add(m.id);
    lastId = lastId === null ? m.id : Math.max(lastId, m.id);
    const li = document.createElement("li");
    li.className = "message" + (m.user === me ? " own" : "");
    li.dataset.id = String(m.id);
    const head = document.createElement("div");
    head.className = "meta";
    const who = document.createElement("span");
    who.className = "author";
    who.textContent = m.user;
    const when = document.createElement("time");
    when.dateTime = m.created_at;
    when.textContent = new Date(m.created_at).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"});
    head.append(who, " ", when);
    const text = document.createElement("div");
    text.className = "body";
    text.textContent = m.body;
    li.append(head, text);
    list.append(li);
    list.scrollTop = list.scrollHeight;
  }

  function renderOnline() {
    online.replaceChildren(...[...present].sort().map((name) => {
      const li = document.createElement("li");
      li.textContent = name;
      return li;
    }));
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    let url = `${scheme}//${location.host}/items/${encodeURIComponent(room)}/ws`;
    if (lastId !== null) url += `?since=${lastId}`;
    setStatus("connecting…", "connecting");
    socket = new WebSocket(url);
    socket.onmessage = (event) => {
      const frame = JSON.parse(event.data);
      switch (frame.type) {
        case "welcome":
          retry = 0;
          present.clear();
          frame.online.forEach((u) => present.add(u));
          renderOnline();
          setStatus("connected", "online");
          input.disabled = false;
          sendButton.disabled = false;
          break;
        case "history":
          frame.messages.forEach(addMessage);
          break;
        case "message":
          addMessage(frame);
          break;
        case "join":
          present.add(frame.user);
          renderOnline();
          if (frame.user !== me) addLine("notice", `${frame.user} joined`);
          break;
        case "leave":
          present.delete(frame.user);
          renderOnline();
          addLine("notice", `${frame.user} left`);
          break;
        case "error":
          sendError.textContent = frame.detail;
          sendError.hidden = false;
          break;
      }
    };
    socket.onclose = (event) => {
      input.disabled = true;
      sendButton.disabled = true;
      if (event.code === 1008) {
        setStatus("signed out", "offline");
        return;
      }
      const delay = Math.min(30000, 500 * 2 ** retry) * (0.5 + Math.random() / 2);
      retry += 1;
      setStatus(`reconnecting in ${Math.round(delay / 1000)} s`, "offline");
      setTimeout(connect, delay);
    };
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || !socket || socket.readyState !== WebSocket.OPEN) return;
    socket.send(JSON.stringify({type: "message", body: text}));
    input.value = "";
    sendError.hidden = true;
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  if (room) connect();
})();
