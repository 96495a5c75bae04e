// sipyard status page. Polls /api/state (the documents of `sipyard … --json`) and
// /api/history, and draws everything with DOM calls. Every value that may come from the
// network (contacts, user agents, display names, addresses) becomes a text node or a
// textContent: this file never assigns innerHTML, outerHTML or insertAdjacentHTML, and
// never builds an attribute (href, src, style, on*) from data.
"use strict";

(() => {
  const SVGNS = "http://www.w3.org/2000/svg";
  const HISTORY_SECONDS = 60;
  let token = "";          // the write token: memory only, sent as a header, never stored
  let state = null;        // the last /api/state document
  let fetchedAt = 0;       // Date.now() when it arrived
  let history = null;      // the last /api/history document
  let pollTimer = 0;
  const ticking = [];      // [node, seconds at fetch, sign] refreshed every second

  const $ = (id) => document.getElementById(id);

  function el(tag, cls, ...kids) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    for (const k of kids) {
      if (k === null || k === undefined) continue;
      e.appendChild(k instanceof Node ? k : document.createTextNode(String(k)));
    }
    return e;
  }

  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function duration(s) {
    s = Math.max(0, Math.round(Number(s) || 0));
    const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24;
    const m = Math.floor(s / 60) % 60, sec = s % 60;
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${m}m`;
    if (m) return `${m}m ${String(sec).padStart(2, "0")}s`;
    return `${sec}s`;
  }

  function clock(epoch) {
    if (epoch === null || epoch === undefined) return "–";
    return new Date(Number(epoch) * 1000).toLocaleTimeString([], { hour12: false });
  }

  function elapsed() { return (Date.now() - fetchedAt) / 1000; }

  // A cell whose seconds count down (expires) or up (uptime) between polls.
  function tick(node, seconds, sign) {
    ticking.push([node, Number(seconds) || 0, sign]);
    node.textContent = duration(seconds);
    return node;
  }

  function retick() {
    const e = elapsed();
    for (const [node, base, sign] of ticking) {
      const v = base + sign * e;
      node.textContent = duration(v);
      if (sign < 0) node.classList.toggle("soon", v < 60);
    }
  }

  function emptyRow(cols, text) {
    const td = el("td", "empty", text);
    td.colSpan = cols;
    return el("tr", null, td);
  }

  function badge(text, kind) {
    return el("span", "badge " + String(kind).replace(/[^a-z]/g, ""), text);
  }

  // -- sections -------------------------------------------------------------------------
  function renderHeader(st) {
    const s = st.status, rs = st.runstate;
    $("realm").textContent = s.realm;
    $("version").textContent = "v" + s.version;
    $("runstate").textContent = rs.active ? "run state: " + rs.active : "run state: normal";
    $("uptime").textContent = "";
    $("uptime").appendChild(document.createTextNode("up "));
    $("uptime").appendChild(tick(el("span"), s.uptime, +1));
    $("listen").textContent = "SIP on " + (s.listen || []).join(", ");
    document.title = `sipyard · ${s.realm}`;
  }

  function card(label, value, sub, alert) {
    const v = el("div", "value", String(value));
    if (sub) v.appendChild(el("small", null, " " + sub));
    return el("div", alert ? "card alert" : "card", el("div", "label", label), v);
  }

  function renderCards(st) {
    const s = st.status, lines = st.registry.lines;
    const requests = Object.values(s.requests || {}).reduce((a, b) => a + b, 0);
    $("cards").replaceChildren(
      card("Lines registered", s.lines_registered, "/ " + lines.length),
      card("Bindings", s.bindings),
      card("Active calls", st.calls.calls.length),
      card("Transactions", s.transactions),
      card("Requests", requests),
      card("TCP connections", s.tcp_connections),
      card("Bans", s.bans, null, s.bans > 0),
    );
  }

  function actionButton(label, title, onClick) {
    const b = el("button", "danger", label);
    b.type = "button";
    b.title = title;
    b.addEventListener("click", onClick);
    return b;
  }

  function renderLines(st) {
    const body = $("lines").tBodies[0];
    const showIdle = $("show-idle").checked;
    const canAct = st.web.actions && token !== "";
    const rows = [];
    for (const line of st.registry.lines) {
      const bs = line.bindings || [];
      if (!bs.length && !showIdle) continue;
      const span = Math.max(1, bs.length);
      const idle = bs.length === 0;
      const head = [
        el("td", "num line", line.line),
        el("td", null, line.display || "", line.type && line.type !== "phone"
          ? el("span", "sub", line.type) : null),
        el("td", null, idle ? badge(line.presence, "idle") : badge(line.presence, line.presence)),
      ];
      for (const td of head) td.rowSpan = span;
      const act = el("td", "act");
      act.rowSpan = span;
      if (canAct && !idle) {
        act.appendChild(actionButton("Unregister", "drop every binding of line " + line.line,
          () => post("/api/unregister", { line: String(line.line) })));
      }
      if (idle) {
        const td = el("td", null, "not registered");
        td.colSpan = 4;
        const tr = el("tr", "idle first", ...head, td, act);
        tr.dataset.line = String(line.line);
        rows.push(tr);
        continue;
      }
      bs.forEach((b, i) => {
        const cells = [
          el("td", "mono contact binding", b.contact),
          el("td", "mono", b.source),
          el("td", "ua", b.user_agent || "–"),
          tick(el("td", "num"), b.expires_in, -1),
        ];
        const tr = i === 0 ? el("tr", "first", ...head, ...cells, act) : el("tr", null, ...cells);
        tr.dataset.line = String(line.line);
        rows.push(tr);
      });
    }
    if (!rows.length) rows.push(emptyRow(8, "No line is registered."));
    body.replaceChildren(...rows);
    const reg = st.registry.lines.filter((l) => (l.bindings || []).length).length;
    $("lines-count").textContent = `${reg} of ${st.registry.lines.length} registered`;
  }

  // A URI that may break after "@" and before ";" (sip:11@127.0.0.1:5060;transport=udp),
  // so the Calls and Recent calls tables fit their panel: text nodes and <wbr> only.
  function uri(text, cls) {
    const e = el("span", cls);
    String(text).split(/(?<=@)|(?=;)/).forEach((piece, i) => {
      if (i) e.appendChild(document.createElement("wbr"));
      e.appendChild(document.createTextNode(piece));
    });
    return e;
  }

  function party(name, line) {
    return line ? el("span", null, String(line), uri(name || "", "sub")) : uri(name || "–");
  }

  function renderCalls(st) {
    const calls = st.calls.calls;
    $("calls-count").textContent = calls.length ? String(calls.length) : "";
    $("calls").tBodies[0].replaceChildren(...(calls.length ? calls.map((c) => el("tr", null,
      el("td", null, party(c.from, c.from_line)), el("td", null, party(c.to, c.to_line)),
      el("td", null, badge(c.state, c.state)),
      tick(el("td", "num"), c.duration || 0, +1),
    )) : [emptyRow(4, "No call in progress.")]));
    const cdr = st.cdr.cdr;
    $("cdr").tBodies[0].replaceChildren(...(cdr.length ? cdr.map((c) => el("tr", null,
      el("td", "num", clock(c.ended)), el("td", null, party(c.from, c.from_line)),
      el("td", null, party(c.to, c.to_line)),
      el("td", null, badge(c.reason || String(c.status), c.reason || "failed")),
      el("td", "num", duration(c.duration)),
    )) : [emptyRow(5, "No call recorded yet.")]));
    const trunks = st.trunks.trunks;
    $("trunks").tBodies[0].replaceChildren(...(trunks.length ? trunks.map((t) => el("tr", null,
      el("td", null, t.name, t.last_error ? el("span", "sub", t.last_error) : null),
      el("td", "mono", t.registrar), el("td", null, badge(t.state, t.state)),
      t.expires_in === null || t.expires_in === undefined ? el("td", "num", "–")
        : tick(el("td", "num"), t.expires_in, -1),
    )) : [emptyRow(4, "No trunk configured.")]));
  }

  function renderBans(st) {
    const bans = st.bans.bans;
    const canAct = st.web.actions && token !== "";
    $("bans-count").textContent = bans.length ? String(bans.length) : "";
    $("bans").tBodies[0].replaceChildren(...(bans.length ? bans.map((b) => {
      const act = el("td", "act");
      if (canAct) {
        act.appendChild(actionButton("Unban", "lift the ban of " + b.address,
          () => post("/api/unban", { address: String(b.address) })));
      }
      return el("tr", null, el("td", "mono", b.address), el("td", "num", b.failures),
        tick(el("td", "num"), b.until - st.web.now, -1), act);
    }) : [emptyRow(4, "No source is banned.")]));
  }

  function renderActions(st) {
    $("actions-panel").hidden = !st.web.actions;
    $("runstate-form").hidden = !(st.web.actions && token !== "");
  }

  function render() {
    if (!state) return;
    ticking.length = 0;
    renderHeader(state);
    renderCards(state);
    renderLines(state);
    renderCalls(state);
    renderBans(state);
    renderActions(state);
    $("updated").textContent = "updated " + new Date(fetchedAt).toLocaleTimeString([], { hour12: false })
      + ` · refreshes every ${state.web.poll} s`;
  }

  // -- chart ----------------------------------------------------------------------------
  function niceMax(v) {
    if (v <= 4) return 4;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function drawChart() {
    const box = $("chart");
    const width = Math.max(320, box.clientWidth || 800);
    const height = 200;
    const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
    const h = history;
    if (!h || !h.t || h.t.length === 0) {
      root.appendChild(svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle",
        class: "nodata" }, "No samples yet."));
      box.replaceChildren(root);
      return;
    }
    const left = 44, right = 44, top = 12, gap = 22, bottom = 22;
    const panelH = (height - top - gap - bottom) / 2;
    const t1 = h.t[h.t.length - 1];
    const span = Math.min(86400, Math.max(3600, t1 - h.t[0] + h.step));
    const t0 = t1 - span;
    const x = (t) => left + (width - left - right) * (t - t0) / span;
    const yB = niceMax(Math.max(...h.bindings));
    const yR = niceMax(Math.max(...h.requests));
    const panel = (y0, max, label) => {
      root.appendChild(svg("text", { x: left, y: y0 - 3, class: "title" }, label));
      for (const f of [0, 0.5, 1]) {
        const y = y0 + panelH * (1 - f);
        root.appendChild(svg("line", { x1: left, x2: width - right, y1: y, y2: y, class: "grid" }));
        root.appendChild(svg("text", { x: left - 6, y: y + 4, "text-anchor": "end", class: "axis" },
          String(Math.round(max * f))));
      }
    };
    const yTop = top + 10, yBot = top + 10 + panelH + gap;
    panel(yTop, yB, "bindings");
    panel(yBot, yR, "requests / min");
    // bindings: a step line with a soft area under it
    let d = "";
    h.t.forEach((t, i) => {
      const px = x(t).toFixed(1), py = (yTop + panelH * (1 - h.bindings[i] / yB)).toFixed(1);
      d += (i === 0 ? `M${px},${py}` : `H${px}V${py}`);
    });
    const base = (yTop + panelH).toFixed(1);
    root.appendChild(svg("path", { d: `${d}V${base}H${x(h.t[0]).toFixed(1)}Z`,
      class: "bindings-area" }));
    root.appendChild(svg("path", { d, class: "bindings" }));
    // requests per minute: bars; REGISTERs per minute: a line over them
    const bw = Math.max(1, (width - left - right) * h.step / span - 0.5);
    h.t.forEach((t, i) => {
      const v = h.requests[i];
      if (!v) return;
      const bh = panelH * v / yR;
      root.appendChild(svg("rect", { x: (x(t) - bw).toFixed(1), y: (yBot + panelH - bh).toFixed(1),
        width: bw.toFixed(1), height: bh.toFixed(1), class: "requests" }));
    });
    let r = "";
    h.t.forEach((t, i) => {
      r += `${i ? "L" : "M"}${x(t).toFixed(1)},${(yBot + panelH * (1 - h.registers[i] / yR)).toFixed(1)}`;
    });
    root.appendChild(svg("path", { d: r, class: "registers" }));
    // the latest values, at the right edge of each panel
    const n = h.t.length - 1, xe = x(t1);
    const yb = yTop + panelH * (1 - h.bindings[n] / yB);
    root.appendChild(svg("circle", { cx: xe, cy: yb, r: 3.5, class: "dot" }));
    root.appendChild(svg("text", { x: xe + 8, y: yb + 4, class: "last" }, String(h.bindings[n])));
    // one sample draws no line: a dot keeps the REGISTER rate visible from the first minute
    root.appendChild(svg("circle", { cx: xe, cy: yBot + panelH * (1 - h.registers[n] / yR),
      r: 3, class: "dot-reg" }));
    const yr = yBot + panelH * (1 - h.requests[n] / yR);
    root.appendChild(svg("text", { x: xe + 8, y: yr + 4, class: "last" }, String(h.requests[n])));
    // time axis: a label every 1, 3 or 6 hours (or every 15 min for the first hour)
    const every = span <= 3600 ? 900 : span <= 6 * 3600 ? 3600 : span <= 12 * 3600 ? 3 * 3600 : 6 * 3600;
    for (let t = Math.ceil(t0 / every) * every; t <= t1; t += every) {
      const label = new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
      root.appendChild(svg("text", { x: x(t), y: height - 6, "text-anchor": "middle", class: "axis" }, label));
    }
    box.replaceChildren(root);
  }

  // -- network --------------------------------------------------------------------------
  function setConn(ok, text) {
    const c = $("conn");
    c.className = "conn " + (ok ? "live" : "down");
    c.textContent = text;
  }

  async function getJSON(path) {
    const r = await fetch(path, { credentials: "same-origin", cache: "no-store" });
    if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
    return r.json();
  }

  async function poll() {
    clearTimeout(pollTimer);
    try {
      state = await getJSON("/api/state");
      fetchedAt = Date.now();
      setConn(true, "live");
      render();
    } catch (e) {
      setConn(false, "server unreachable");
    }
    const every = state ? state.web.poll : 5;
    pollTimer = setTimeout(poll, every * 1000);
  }

  async function pollHistory() {
    try {
      history = await getJSON("/api/history");
      drawChart();
    } catch (e) { /* the next round tries again; the status line shows the outage */ }
  }

  function note(text, bad) {
    const n = $("action-note");
    n.textContent = text;
    n.className = bad ? "note bad" : "note";
  }

  async function post(path, body) {
    let r, doc = {};
    try {
      r = await fetch(path, {
        method: "POST", credentials: "same-origin", cache: "no-store",
        headers: { "Content-Type": "application/json", "Authorization": "Bearer " + token },
        body: JSON.stringify(body),
      });
      try { doc = await r.json(); } catch (e) { doc = {}; }
    } catch (e) {
      note("request failed: " + e.message, true);
      return;
    }
    if (r.ok) note(`${path.replace("/api/", "")}: done (${JSON.stringify(doc)})`, false);
    else note(`${path.replace("/api/", "")}: refused: ${doc.error || ("HTTP " + r.status)}`, true);
    if (r.status === 403) token = "";
    poll();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("show-idle").addEventListener("change", render);
    $("token-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      token = $("token").value.trim();
      $("token").value = "";
      $("token-hint").textContent = token ? "Unlocked for this tab: action buttons are shown."
        : "Unban, unregister and run state need the server's token (kept in this tab only).";
      render();
    });
    $("runstate-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const v = $("runstate-input").value.trim();
      post("/api/runstate", { state: v === "" || v === "none" ? null : v });
    });
    window.addEventListener("resize", drawChart);
    document.addEventListener("visibilitychange", () => { if (!document.hidden) poll(); });
    setInterval(retick, 1000);
    setInterval(pollHistory, HISTORY_SECONDS * 1000);
    poll();
    pollHistory();
  });
})();
