// streamhub's built-in page: a room's messages live over EventSource (JOIN,
// LEAVE and who is here; resuming by Last-Event-ID after a reconnect, and
// from the last seen sequence when the browser gave up), sending over
// gRPC-Web, and the server's telemetry from /metrics/events. Plain JS, no
// library: the whole page is a few KiB served from the binary.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const store = {
    get: (k, d) => localStorage.getItem("streamhub." + k) ?? d,
    set: (k, v) => localStorage.setItem("streamhub." + k, v),
  };
  const MAX_SHOWN = 500;
  const state = { room: "", user: "", lastSeq: 0, source: null, retry: null, people: new Map() };

  $("room").value = params.get("room") || store.get("room", "general");
  $("user").value = params.get("user") || store.get("user", "guest-" + Math.random().toString(36).slice(2, 6));
  $("token").value = store.get("token", "");

  const token = () => $("token").value.trim();
  const authHeaders = () => (token() ? { Authorization: "Bearer " + token() } : {});
  // EventSource cannot send headers: the token goes in the query.
  const withToken = (q) => { if (token()) q.set("access_token", token()); return q; };
  // With a token the server takes the user from it (its `sub`) and refuses
  // another name (403): the page shows and sends that one.
  function tokenUser() {
    try {
      const part = token().split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(part + "===".slice((part.length + 3) % 4))).sub || "";
    } catch (e) {
      return "";
    }
  }

  function setState(name, text) {
    $("state").dataset.state = name;
    $("state").textContent = text || name;
  }

  function rememberRoom(room) {
    const rooms = JSON.parse(store.get("rooms", "[]")).filter((r) => r !== room);
    rooms.unshift(room);
    store.set("rooms", JSON.stringify(rooms.slice(0, 10)));
    $("rooms").replaceChildren(...rooms.map((r) => Object.assign(document.createElement("option"), { value: r })));
  }

  // ---- the room ----
  function show(m, kind) {
    const list = $("messages");
    const nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
    const li = document.createElement("li");
    if (kind === "chat") {
      if (m.user === state.user) li.className = "mine";
      const who = Object.assign(document.createElement("span"), { className: "who", textContent: m.user });
      const time = document.createElement("time");
      time.dateTime = m.timestamp;
      time.textContent = new Date(m.timestamp).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      li.append(who, document.createTextNode(m.content), time);
    } else {
      li.className = "note";
      li.textContent = m.content;
    }
    list.append(li);
    while (list.children.length > MAX_SHOWN) list.firstElementChild.remove();
    if (nearBottom) list.scrollTop = list.scrollHeight;
  }

  function showPeople() {
    const names = [...state.people.keys()].sort();
    $("people").replaceChildren(...names.map((n) => Object.assign(document.createElement("li"), { textContent: n })));
    $("count").textContent = names.length ? "(" + names.length + ")" : "";
  }

  function presence(m, delta) {
    const n = (state.people.get(m.user) || 0) + delta;
    if (n > 0) state.people.set(m.user, n); else state.people.delete(m.user);
    showPeople();
  }

  function onRoomEvent(kind) {
    return (e) => {
      const m = JSON.parse(e.data);
      if (m.seq <= state.lastSeq) return; // seen before a reconnect
      state.lastSeq = m.seq;
      if (kind === "join") presence(m, +1);
      if (kind === "leave") presence(m, -1);
      show(m, kind);
    };
  }

  function connect() {
    clearTimeout(state.retry);
    if (state.source) state.source.close();
    // From the last message seen (0: everything the room still keeps);
    // EventSource's own reconnects send Last-Event-ID, which wins.
    const q = withToken(new URLSearchParams({ room: state.room, user: state.user, last_event_id: state.lastSeq }));
    const source = new EventSource("/events?" + q);
    state.source = source;
    source.onopen = () => setState("live");
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        // The browser gave up (an error status): try again, from lastSeq.
        setState("offline", "offline, retrying");
        state.retry = setTimeout(connect, 2000);
      } else {
        setState("connecting", "reconnecting");
      }
    };
    for (const kind of ["chat", "join", "leave"]) source.addEventListener(kind, onRoomEvent(kind));
    source.addEventListener("system", (e) => {
      const m = JSON.parse(e.data);
      if ("missed" in m && /not a position/.test(m.content)) {
        // The server restarted: its sequence starts again.
        state.lastSeq = 0;
        state.people.clear();
        showPeople();
      }
      show(m, "system");
    });
  }

  function join(event) {
    if (event) event.preventDefault();
    const room = $("room").value.trim() || "general";
    const user = tokenUser() || $("user").value.trim();
    $("user").value = user;
    store.set("room", room);
    store.set("user", user);
    store.set("token", token());
    rememberRoom(room);
    history.replaceState(null, "", "?" + new URLSearchParams({ room, user }));
    Object.assign(state, { room, user, lastSeq: 0 });
    state.people.clear();
    showPeople();
    $("messages").replaceChildren();
    document.title = room + " - streamhub";
    setState("connecting");
    connect();
  }

  // ---- sending, over gRPC-Web (chat.ChatService/SendMessage) ----
  const utf8 = new TextEncoder();
  function varint(n) {
    const out = [];
    for (; n > 127; n = Math.floor(n / 128)) out.push((n % 128) | 128);
    out.push(n);
    return out;
  }
  function field(number, text) {
    const bytes = utf8.encode(text);
    return [...varint((number << 3) | 2), ...varint(bytes.length), ...bytes];
  }
  function trailerStatus(body) {
    for (let i = 0; i + 5 <= body.length;) {
      const len = new DataView(body.buffer, body.byteOffset + i + 1, 4).getUint32(0);
      if (body[i] & 0x80) {
        const text = new TextDecoder().decode(body.subarray(i + 5, i + 5 + len));
        return [/grpc-status:\s*(\d+)/i.exec(text)?.[1], /grpc-message:\s*(.*)\r\n/i.exec(text)?.[1]];
      }
      i += 5 + len;
    }
    return [undefined, "no trailers"];
  }
  async function sendMessage(room, user, content) {
    // SendMessageRequest: user = 1, content = 2, room = 3.
    const message = [...field(1, user), ...field(2, content), ...field(3, room)];
    const body = new Uint8Array(5 + message.length);
    new DataView(body.buffer).setUint32(1, message.length);
    body.set(message, 5);
    const r = await fetch("/chat.ChatService/SendMessage", {
      method: "POST",
      headers: { "Content-Type": "application/grpc-web+proto", "X-Grpc-Web": "1", ...authHeaders() },
      body,
    });
    if (!r.ok) throw new Error("HTTP " + r.status);
    let status = r.headers.get("grpc-status");
    let text = r.headers.get("grpc-message");
    if (status === null) [status, text] = trailerStatus(new Uint8Array(await r.arrayBuffer()));
    if (status !== "0") throw new Error(decodeURIComponent(text || "status " + status));
  }

  $("send").addEventListener("submit", async (e) => {
    e.preventDefault();
    const input = $("content");
    const content = input.value;
    if (!content) return;
    input.value = "";
    try {
      await sendMessage(state.room, state.user, content);
    } catch (err) {
      input.value = content;
      show({ content: "not sent: " + err.message }, "system");
    }
  });
  $("join").addEventListener("submit", join);

  // ---- telemetry ----
  const plots = {};
  const SERIES = [
    ["deliveries", "deliveries/s", (v) => Math.round(v).toLocaleString()],
    ["subscribers", "subscribers", (v) => v.toLocaleString()],
    ["cpu_usage", "CPU", (v) => v.toFixed(1) + " %"],
    ["memory_usage", "memory", (v) => (v / 1048576).toFixed(1) + " MiB"],
  ];
  for (const [key, label] of SERIES) {
    const div = document.createElement("div");
    div.className = "plot";
    div.innerHTML = '<div class="label"><span></span><b>-</b></div><canvas></canvas>';
    div.querySelector("span").textContent = label;
    $("plots").append(div);
    plots[key] = { values: [], value: div.querySelector("b"), canvas: div.querySelector("canvas") };
  }
  function draw(plot) {
    const c = plot.canvas, ratio = window.devicePixelRatio || 1;
    c.width = c.clientWidth * ratio;
    c.height = c.clientHeight * ratio;
    const g = c.getContext("2d"), v = plot.values;
    if (v.length < 2) return;
    // Headroom above the highest point; the newest point at the right.
    const max = Math.max(...v) * 1.25 || 1, step = c.width / 59, x0 = c.width - (v.length - 1) * step;
    const y = (value) => c.height - 1 - (value / max) * (c.height - 2);
    g.beginPath();
    v.forEach((value, i) => g.lineTo(x0 + i * step, y(value)));
    const accent = getComputedStyle(document.body).getPropertyValue("--accent");
    g.strokeStyle = accent;
    g.lineWidth = 1.5 * ratio;
    g.stroke();
    g.lineTo(c.width, c.height);
    g.lineTo(x0, c.height);
    g.globalAlpha = 0.15;
    g.fillStyle = accent;
    g.fill();
  }
  function record(key, value) {
    const plot = plots[key], fmt = SERIES.find((s) => s[0] === key)[2];
    plot.values.push(value);
    if (plot.values.length > 60) plot.values.shift();
    plot.value.textContent = fmt(value);
    draw(plot);
  }
  let delivered = null;
  function watchMetrics() {
    const q = withToken(new URLSearchParams({ instance: "page", interval_seconds: 1 }));
    const source = new EventSource("/metrics/events?" + q);
    source.addEventListener("metric", (e) => {
      const m = JSON.parse(e.data), at = Date.parse(m.timestamp);
      if (m.name === "messages_delivered") {
        if (delivered && at > delivered.at) record("deliveries", ((m.value - delivered.value) * 1000) / (at - delivered.at));
        delivered = { value: m.value, at };
      } else if (m.name in plots) {
        record(m.name, m.value);
      }
    });
  }

  rememberRoom($("room").value);
  join();
  watchMetrics();
})();
