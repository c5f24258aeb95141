// ppsync sync page: reads and steers this node through its local API.
// Plain JavaScript, no build step. Every request goes to the same origin with
// the session cookie; requests that change something carry X-PPSync-Page.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const REFRESH_MS = 10000; // fallback when the event stream is quiet or down
  const PAGE = 50; // activity events per page

  let status = null; // the last GET /v1/status
  let peerNames = {}; // peer ID -> site, for the activity feed
  let refreshTimer = null;
  let refreshing = false;
  let oldestID = 0; // the oldest activity event shown
  const shownIDs = new Set();
  let activityLoaded = false;
  let lastDB = null; // the last GET /v1/db
  let dbTimer = null;
  let dbFollowUps = 0; // looks at the database box still to come after an event

  // api calls the node; it throws an Error with the node's message.
  async function api(method, path, body) {
    const opts = { method, credentials: "same-origin", headers: { "X-PPSync-Page": "1", "Accept": "application/json" } };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, opts);
    } catch (e) {
      const err = new Error("the node does not answer");
      err.down = true;
      throw err;
    }
    let data = null;
    try { data = await resp.json(); } catch (e) { /* not JSON */ }
    if (resp.status === 401) {
      sessionEnded();
    }
    if (!resp.ok) {
      const err = new Error((data && data.error) || ("the node answered " + resp.status));
      err.status = resp.status;
      throw err;
    }
    return data;
  }

  function setText(el, text) {
    if (el.textContent !== text) el.textContent = text;
  }

  function sessionEnded() {
    const m = $("session-msg");
    m.hidden = false;
    setText(m, "Your session has ended. Run \u201cppsync open --data DATA\u201d on this computer for a new link.");
    $("sync-now").disabled = true;
    $("interval-save").disabled = true;
    $("db-check").disabled = true;
  }

  // Durations as Go writes them ("1h30m0s") and reads them ("90m", "1.5h").
  const UNIT_MS = { ns: 1e-6, us: 1e-3, "µs": 1e-3, ms: 1, s: 1000, m: 60000, h: 3600000 };
  function parseDuration(s) {
    s = s.trim();
    if (s === "") return NaN;
    const re = /(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)/y;
    let total = 0;
    let i = 0;
    while (i < s.length) {
      re.lastIndex = i;
      const m = re.exec(s);
      if (!m) return NaN;
      total += parseFloat(m[1]) * UNIT_MS[m[2]];
      i = re.lastIndex;
    }
    return total;
  }
  function shortDuration(goStr) {
    if (!goStr) return "";
    return goStr.replace(/([hm])0s$/, "$1").replace(/h0m$/, "h");
  }
  function everyText(goStr) {
    return "every " + shortDuration(goStr);
  }

  function ago(iso) {
    if (!iso) return "never";
    const t = new Date(iso);
    let s = Math.round((Date.now() - t.getTime()) / 1000);
    if (s < 5) return "just now";
    if (s < 60) return s + " seconds ago";
    const m = Math.round(s / 60);
    if (m < 60) return m === 1 ? "1 minute ago" : m + " minutes ago";
    const h = Math.round(m / 60);
    if (h < 48) return h === 1 ? "1 hour ago" : h + " hours ago";
    return t.toLocaleString();
  }
  // clock shows a time, with the date when it is not today.
  function clock(iso) {
    const t = new Date(iso);
    const today = new Date().toDateString() === t.toDateString();
    return today ? t.toLocaleTimeString() : t.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
  }
  function plural(n, one, many) {
    return n + " " + (n === 1 ? one : many);
  }
  function bytes(n) {
    if (n < 1024) return n + " bytes";
    if (n < 1048576) return (n / 1024).toFixed(1) + " KB";
    return (n / 1048576).toFixed(1) + " MB";
  }
  function siteOf(peerID) {
    return peerNames[peerID] || ("member " + String(peerID).slice(-6));
  }

  // ---- status and members -------------------------------------------------

  function renderStatus(st) {
    status = st;
    setText($("site-name"), st.role === "relay" ? "Relay" : st.site);
    setText($("family-name"), st.family_name ? "· " + st.family_name : "");
    setText($("node-meta"), (st.role === "relay" ? "Vendor relay" : "Site") + " · ppsync " + st.version);
    document.title = (st.role === "relay" ? "Relay" : st.site) + " · Sync · ppsync";

    const running = $("st-running");
    running.className = "good";
    setText(running, "Running, " + everyText(st.sync_interval));

    const online = $("st-online");
    if (st.online && st.peers > 0) {
      online.className = "good";
      setText(online, "Online · " + plural(st.peers, "member", "members") + " connected");
    } else if (st.online) {
      online.className = "";
      setText(online, "Assumed online: " + (st.offline_reason || "the connectivity check is off"));
    } else {
      online.className = "bad";
      setText(online, "Offline: " + (st.offline_reason || "no family member is reachable"));
    }

    const last = $("st-last");
    last.className = st.last_sync ? "" : "bad";
    setText(last, st.last_sync ? ago(st.last_sync) + " (" + clock(st.last_sync) + ")" : "Not yet since the node started");

    const pending = $("st-pending");
    if (st.role === "relay") {
      pending.className = "";
      setText(pending, "None: a relay writes nothing of its own");
    } else {
      pending.className = st.pending > 0 ? "bad" : "good";
      setText(pending, st.pending > 0 ? plural(st.pending, "change", "changes") + " waiting to reach another member" : "Nothing waiting");
    }

    const enc = $("st-enc");
    const e = st.encryption;
    enc.className = e && e.state === "waiting" ? "bad" : (e && (e.state === "sealing" || e.state === "blind") ? "good" : "");
    setText(enc, !e ? "Unknown" :
      e.state === "blind" ? "A relay: it holds every entry sealed and no key to read one" :
      e.state === "waiting" ? "Waiting for the family's data key" :
      e.state === "no-key" ? "No data key yet: the first change saved here makes one" :
      "End-to-end encrypted (key epoch " + e.epoch + "): the vendor's relay cannot read it");

    const cur = $("interval-current");
    setText(cur, shortDuration(st.sync_interval));
    const input = $("interval");
    if (document.activeElement !== input && !input.dataset.dirty) input.value = shortDuration(st.sync_interval);

    renderWarnings(st);
  }

  function renderWarnings(st) {
    const list = (st.warnings || []).slice();
    if (st.role !== "relay" && st.write_blocked) {
      list.push("This site cannot save changes right now: " + st.write_blocked);
    }
    if (st.held > 0 && !(st.encryption && st.encryption.state === "waiting")) { // else the key warning says it
      list.push(plural(st.held, "entry needs", "entries need") + " a newer version of ppsync before this site can apply " + (st.held === 1 ? "it" : "them") + ": update this site.");
    }
    const box = $("warnings");
    const key = list.join("\n");
    if (box.dataset.key === key) return; // unchanged: do not announce again
    box.dataset.key = key;
    box.replaceChildren();
    for (const w of list) {
      const p = document.createElement("p");
      p.className = "alert";
      p.setAttribute("role", "alert");
      p.textContent = w;
      box.appendChild(p);
    }
  }

  function cell(tr, label, text, note) {
    const td = document.createElement("td");
    td.dataset.label = label;
    const span = document.createElement("span");
    span.textContent = text;
    td.appendChild(span);
    if (note) {
      const n = document.createElement("span");
      n.className = "note";
      n.textContent = note;
      span.appendChild(n);
    }
    tr.appendChild(td);
    return td;
  }

  function renderPeers(peers) {
    peerNames = {};
    for (const p of peers) peerNames[p.peer_id] = p.site;
    const body = $("members-body");
    body.replaceChildren();
    for (const p of peers) {
      const tr = document.createElement("tr");
      tr.dataset.site = p.site;
      const th = document.createElement("th");
      th.scope = "row";
      th.dataset.label = "Site";
      th.textContent = p.site;
      tr.appendChild(th);
      cell(tr, "Role", p.role === "relay" ? "Relay" : "Site");
      const conn = !p.connected ? "Not connected" : p.via === "relay" ? "Via the relay" : "Direct";
      cell(tr, "Connection", conn).className = p.connected ? "good" : "bad";
      const own = status && status.version;
      const differs = p.version && own && p.version !== own;
      cell(tr, "Version", p.version || "unknown", differs ? "differs from this site (" + own + ")" : "");
      cell(tr, "Lag", p.lag === 0 ? "Up to date" : plural(p.lag, "entry", "entries") + " behind");
      cell(tr, "Last seen", p.last_seen ? ago(p.last_seen) : "never", p.clock_skew ? "clock off by " + p.clock_skew : "");
      body.appendChild(tr);
    }
    $("members-empty").hidden = peers.length > 0;
    $("members").hidden = peers.length === 0;
  }

  async function refresh() {
    if (refreshing) return;
    refreshing = true;
    try {
      const dbp = refreshDB(); // on its own: the rest shows whatever it answers
      const alp = refreshAlerts();
      const [st, pr] = await Promise.all([api("GET", "/v1/status"), api("GET", "/v1/peers")]);
      renderStatus(st);
      renderPeers(pr.peers || []);
      await dbp;
      await alp;
    } catch (e) {
      if (e.down) {
        const r = $("st-running");
        r.className = "bad";
        setText(r, "Not running: the node does not answer. Start it (ppsync run, or its service).");
        setText($("st-online"), "Unknown");
      }
    } finally {
      refreshing = false;
    }
  }

  function scheduleRefresh() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(() => { refreshTimer = null; refresh(); }, 300);
  }

  // ---- the practice database -----------------------------------------------

  const DB_BUSY_MS = 2000; // refresh the database box this often while it works
  const DB_REFUSED_SHOWN = 20; // the newest refused rows listed
  const DRIVERS = { sqlite: "SQLite", postgres: "PostgreSQL" };

  async function refreshDB() {
    let d;
    try {
      d = await api("GET", "/v1/db");
    } catch (e) {
      if (!e.down && e.status !== 401 && lastDB && lastDB.driver) {
        showDBProblem("The node did not say how the practice database is doing: " + e.message);
      }
      return;
    }
    const prev = lastDB;
    renderDB(d);
    // While rows load, wait to be captured or move, and for a while after an
    // event, look again soon: the database's side of a change (an apply, a
    // refused row) follows the event and sends none of its own.
    const busy = d.driver && (d.loading || d.pending_capture > 0 || dbFollowUps > 0 ||
      (prev && (prev.pending_apply !== d.pending_apply || prev.applied !== d.applied || prev.captured !== d.captured)));
    if (dbFollowUps > 0) dbFollowUps--;
    clearTimeout(dbTimer);
    dbTimer = busy ? setTimeout(refreshDB, DB_BUSY_MS) : null;
  }

  function showDBProblem(text) {
    const p = $("db-problem");
    p.hidden = !text;
    setText(p, text);
  }

  function waiting(el, n, one, many) {
    setText(el, n > 0 ? plural(n, one, many) + " waiting" : "Nothing waiting");
  }

  function when(el, iso) {
    setText(el, iso ? ago(iso) + " (" + clock(iso) + ")" : "None since the node started");
  }

  function renderDB(d) {
    lastDB = d;
    const card = $("db-card");
    if (!d.driver) { // this node syncs no practice database
      card.hidden = true;
      return;
    }
    card.hidden = false;
    showDBProblem(d.problem ? "The practice database has a problem: " + d.problem : "");

    const loading = $("db-loading");
    loading.hidden = !d.loading;
    setText(loading, d.loading ? "Loading existing rows: " + d.load_rows + " published" : "");

    const name = $("db-name");
    const where = (d.database || "").replace(/^sqlite:(\/\/)?/, "");
    if (name.dataset.key !== d.driver + "\n" + where) {
      name.dataset.key = d.driver + "\n" + where;
      name.replaceChildren(document.createTextNode(DRIVERS[d.driver] || d.driver));
      if (where) {
        const w = document.createElement("span");
        w.className = "why";
        w.textContent = where;
        name.appendChild(w);
      }
    }
    waiting($("db-pending-capture"), d.pending_capture, "change", "changes");
    waiting($("db-pending-apply"), d.pending_apply, "change", "changes");
    when($("db-last-capture"), d.last_capture);
    when($("db-last-apply"), d.last_apply);

    const tables = d.per_table || [];
    const body = $("db-tables-body");
    body.replaceChildren();
    for (const t of tables) {
      const tr = document.createElement("tr");
      tr.dataset.table = t.table;
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = t.table;
      const cap = document.createElement("td");
      cap.className = "num";
      cap.textContent = String(t.captured);
      const app = document.createElement("td");
      app.className = "num";
      app.textContent = String(t.applied);
      const wait = document.createElement("td");
      wait.className = "num";
      wait.textContent = String((t.pending_capture || 0) + (t.pending_apply || 0));
      if (t.problem) {
        th.textContent = t.table + " (" + t.problem + ")";
      }
      tr.append(th, cap, app, wait);
      body.appendChild(tr);
    }
    setText($("db-waiting"), String((d.pending_capture || 0) + (d.pending_apply || 0)));
    setText($("db-captured"), String(d.captured));
    setText($("db-applied"), String(d.applied));
    $("db-tables").hidden = tables.length === 0;
    const skipped = d.skipped || [];
    let note = tables.length === 0 ? (d.problem ? "No table is synced yet." : "Reading the database's tables…")
      : "Captured: changes made in this database, sent to the family. Applied: rows of the other sites written into it. Both since the node started.";
    if (skipped.length) note += " Not synced: " + skipped.join("; ") + ".";
    setText($("db-tables-note"), note);

    const warns = d.warnings || [];
    const wl = $("db-warnings");
    const wkey = warns.join("\n");
    if (wl.dataset.key !== wkey) {
      wl.dataset.key = wkey;
      wl.replaceChildren(...warns.map((w) => {
        const li = document.createElement("li");
        li.textContent = w;
        return li;
      }));
    }
    wl.hidden = warns.length === 0;

    renderRefused(d.refused || []);
  }

  function renderRefused(rows) {
    const box = $("db-refused");
    box.hidden = rows.length === 0;
    setText($("h-db-refused"), rows.length ? "Rows the database refused (" + rows.length + ")" : "Rows the database refused");
    const ul = $("db-refused-list");
    const key = rows.map((r) => r.table + "\u0000" + r.key + "\u0000" + r.reason).join("\n");
    if (ul.dataset.key === key) return;
    ul.dataset.key = key;
    ul.replaceChildren();
    const newest = rows.slice(-DB_REFUSED_SHOWN).reverse();
    for (const r of newest) {
      const li = document.createElement("li");
      li.dataset.table = r.table;
      li.dataset.key = r.key;
      const id = document.createElement("span");
      id.className = "row-id";
      id.textContent = r.table + " " + r.key;
      li.append(id, document.createTextNode(": " + r.reason));
      ul.appendChild(li);
    }
    if (rows.length > newest.length) {
      const li = document.createElement("li");
      li.className = "hint";
      li.textContent = "and " + plural(rows.length - newest.length, "older one", "older ones") + " (ppsync db status lists them all)";
      ul.appendChild(li);
    }
  }

  const KINDS = [
    ["missing", "missing from the database"],
    ["different", "with different values"],
    ["extra", "deleted by the family but still in the database"],
    ["new", "never synced"],
  ];

  async function checkDB() {
    const btn = $("db-check");
    const msg = $("db-check-msg");
    btn.disabled = true;
    btn.setAttribute("aria-busy", "true");
    msg.className = "hint";
    setText(msg, "Checking… every row of every synced table is compared with the family's data.");
    try {
      const res = await api("POST", "/v1/db/check", { repair: false });
      const diffs = res.differences || [];
      const rows = plural(res.checked, "row", "rows") + " in " + plural((res.tables || []).length, "table", "tables");
      if (diffs.length === 0) {
        msg.className = "msg saved";
        setText(msg, "Checked " + rows + ": the database matches the family's data.");
      } else {
        const parts = [];
        for (const [kind, words] of KINDS) {
          const n = diffs.filter((x) => x.kind === kind).length;
          if (n) parts.push(n + " " + words);
        }
        const data = status && status.data_dir ? status.data_dir : "DATA";
        msg.className = "msg error";
        setText(msg, "Checked " + rows + ": " + (res.complete ? "" : "at least ") + plural(diffs.length, "row differs", "rows differ") +
          " (" + parts.join(", ") + "). To make the database match, run \u201cppsync db check --data " + data + " --repair\u201d on this computer.");
      }
    } catch (e) {
      msg.className = "msg error";
      setText(msg, "The check failed: " + e.message);
    } finally {
      btn.disabled = false;
      btn.removeAttribute("aria-busy");
      refreshDB();
    }
  }

  // ---- alerts -------------------------------------------------------------------

  const KIND_WORDS = {
    "not-synced": "has not synced", stalled: "connected but not catching up", fork: "two copies are writing (fork)",
    revoked: "a removed copy is trying to connect", version: "runs another version", test: "test",
  };

  async function refreshAlerts() {
    let res;
    try {
      res = await api("GET", "/v1/alerts");
    } catch (e) {
      if (!e.down && e.status !== 401) setText($("alerts-smtp"), "The node did not list its alert rules: " + e.message);
      return;
    }
    renderAlerts(res);
  }

  function renderAlerts(res) {
    const rules = res.alerts || [];
    setText($("alerts-smtp"), rules.length ? "Email goes through " + res.smtp + "." : "");
    $("alerts-none").hidden = rules.length > 0;
    const list = $("alerts-list");
    list.replaceChildren();
    for (const a of rules) {
      const li = document.createElement("li");
      const head = document.createElement("p");
      const who = (a.emails || []).slice();
      if (a.webhook) who.push("a webhook");
      head.textContent = a.site + ": tells " + who.join(", ") + " after " + shortDuration(a.after) + " without sync, " + a.hours +
        (a.remind ? ", reminding every " + shortDuration(a.remind) : "");
      const state = document.createElement("p");
      state.className = "state-" + a.state;
      let words = a.state === "alerting" ? "Alerting" : a.state === "paused" ? "Paused until " + clock(a.paused_until) : "All well";
      const probs = (a.problems || []).map((p) => (KIND_WORDS[p.kind] || p.kind) + " since " + clock(p.since) + (p.alerted ? "" : " (not told yet)"));
      if (probs.length) words += ": " + a.site + " " + probs.join("; ");
      state.textContent = words;
      li.append(head, state);
      if (a.last_sent && a.last_sent.sent) {
        const last = document.createElement("p");
        last.className = "hint";
        last.textContent = "Last message: " + a.last_sent.subject + " (" + a.last_sent.channel + ", " + ago(a.last_sent.sent) + ")";
        li.append(last);
      }
      for (const p of a.pending || []) {
        if (!p.error) continue;
        const e = document.createElement("p");
        e.className = "pending";
        e.textContent = (p.gave_up ? "Not sent (gave up after " : "Not sent yet (" + p.attempts + " tries, next " + clock(p.next_try) + "; ") +
          (p.gave_up ? p.attempts + " tries): " : "") + p.subject + " by " + p.channel + ": " + p.error;
        li.append(e);
      }
      const actions = document.createElement("div");
      actions.className = "actions";
      const btn = document.createElement("button");
      btn.type = "button";
      btn.textContent = "Send test";
      btn.setAttribute("aria-label", "Send a test message of the rule for " + a.site);
      const msg = document.createElement("span");
      msg.className = "hint";
      msg.setAttribute("role", "status");
      const kept = testMsgs[a.id]; // the answer of a test, kept across refreshes
      if (kept) { msg.className = kept[0]; msg.textContent = kept[1]; }
      btn.addEventListener("click", () => sendTest(a, btn, msg));
      actions.append(btn, msg);
      li.append(actions);
      list.append(li);
    }
  }

  const testMsgs = {}; // rule ID -> [class, text] of its last test

  async function sendTest(a, btn, msg) {
    btn.disabled = true;
    btn.setAttribute("aria-busy", "true");
    msg.className = "hint";
    setText(msg, "Sending…");
    try {
      const res = await api("POST", "/v1/alerts/" + encodeURIComponent(a.id) + "/test");
      testMsgs[a.id] = ["msg saved", "Sent by " + (res.deliveries || []).map((d) => d.channel).join(" and ") + "."];
    } catch (e) {
      testMsgs[a.id] = ["msg error", e.message];
    } finally {
      msg.className = testMsgs[a.id][0];
      setText(msg, testMsgs[a.id][1]);
      btn.disabled = false;
      btn.removeAttribute("aria-busy");
    }
  }

  // ---- Sync Now --------------------------------------------------------------

  async function syncNow() {
    const btn = $("sync-now");
    btn.disabled = true;
    btn.setAttribute("aria-busy", "true");
    setText($("sync-msg"), "Syncing… waiting up to 20 seconds for every member.");
    try {
      const rc = await api("POST", "/v1/sync", { wait: "20s" });
      renderReceipt(rc);
      setText($("sync-msg"), "");
    } catch (e) {
      setText($("sync-msg"), "Sync Now failed: " + e.message);
    } finally {
      btn.disabled = false;
      btn.removeAttribute("aria-busy");
      refresh();
    }
  }

  function renderReceipt(rc) {
    const box = $("receipt");
    const members = rc.members || [];
    let summary;
    if (members.length === 0) summary = "No other member is known: nothing to sync with.";
    else if (rc.caught_up) summary = "Every member holds everything this site holds (took " + rc.waited + ").";
    else summary = "Not every member caught up (waited " + rc.waited + ").";
    $("receipt-summary").textContent = summary;
    const ul = $("receipt-members");
    ul.replaceChildren();
    for (const m of members) {
      const li = document.createElement("li");
      li.dataset.site = m.site;
      li.className = m.caught_up ? "good" : "bad";
      li.textContent = m.site + ": " + (m.caught_up ? "caught up" : (m.reason || "not caught up"));
      ul.appendChild(li);
    }
    $("receipt-title").textContent = "Sync receipt, " + new Date().toLocaleTimeString();
    box.hidden = false;
  }

  // ---- sync interval ---------------------------------------------------------

  async function saveInterval(ev) {
    ev.preventDefault();
    const input = $("interval");
    const msg = $("interval-msg");
    const value = input.value.trim();
    const ms = parseDuration(value);
    let problem = "";
    if (value === "") problem = "Enter an interval, like 30s, 5m or 1h.";
    else if (isNaN(ms)) problem = "\u201c" + value + "\u201d is not a duration: write it like 30s, 5m or 1h.";
    else if (ms < 1000) problem = "The interval must be at least 1 second.";
    else if (ms > 24 * 3600000) problem = "The interval must be at most 24 hours.";
    if (problem) {
      input.setAttribute("aria-invalid", "true");
      msg.className = "msg error";
      setText(msg, problem);
      input.focus();
      return;
    }
    input.removeAttribute("aria-invalid");
    $("interval-save").disabled = true;
    msg.className = "msg";
    setText(msg, "Saving…");
    try {
      const s = await api("PUT", "/v1/settings", { sync_interval: value });
      delete input.dataset.dirty;
      input.value = shortDuration(s.sync_interval);
      setText($("interval-current"), shortDuration(s.sync_interval));
      msg.className = "msg saved";
      setText(msg, "Saved: this site now syncs " + everyText(s.sync_interval) + ".");
      refresh();
    } catch (e) {
      input.setAttribute("aria-invalid", "true");
      msg.className = "msg error";
      setText(msg, "Not saved: " + e.message);
    } finally {
      $("interval-save").disabled = false;
    }
  }

  // ---- activity ----------------------------------------------------------------

  // describe turns an event into a sentence and whether it is a problem.
  function describe(ev) {
    const d = ev.data || {};
    switch (ev.type) {
      case "committed": {
        const n = d.to - d.from + 1;
        return [n === 1 ? "Saved 1 change at this site (entry " + d.to + ")" : "Saved " + n + " changes at this site (entries " + d.from + "–" + d.to + ")", false];
      }
      case "received": {
        const n = d.to - d.from + 1;
        const from = siteOf(d.peer);
        const what = "Received " + plural(n, "change", "changes") + (from === d.site ? " from " + d.site : " of " + d.site + " through " + from);
        return [what + (d.via === "catch-up" ? " (catching up)" : ""), false];
      }
      case "catch-up":
        if (!d.ok) return ["Catching up with " + siteOf(d.peer) + " failed; it is tried again", true];
        if (!d.entries) return ["Checked with " + siteOf(d.peer) + ": nothing was missing", false];
        return ["Caught up with " + siteOf(d.peer) + ": " + plural(d.entries, "entry", "entries") + " (" + bytes(d.bytes || 0) + ")", false];
      case "peer":
        return [(d.site || siteOf(d.peer)) + (d.connected ? " connected" : " disconnected"), !d.connected];
      case "fork":
        return ["Fork: site " + d.site + " wrote two different entries at number " + d.seq + " (two copies of one site are writing); support must resolve it", true];
      case "settings":
        return ["Settings changed: sync " + everyText(d.sync_interval) + ", connectivity check " + (d.connectivity_check === false ? "off" : "on") + ", log level " + d.log_level, false];
      case "installed": {
        const what = d.installed === "revocation" ? "Revocation of " + d.site : "Certificate of " + d.site + " (epoch " + d.epoch + ")";
        return [what + (d.changed ? " installed" : " was already installed"), false];
      }
      case "sync-now":
        return [d.wait && d.wait !== "0s" ? "Sync Now pressed (waiting up to " + d.wait + ")" : "Sync Now pressed", false];
      case "rejected":
        return ["Refused entries of " + (d.site || "a site") + " from " + siteOf(d.peer) + ": " + (d.error || "invalid"), true];
      case "conflict":
        return ["Conflict: " + JSON.stringify(d), true];
      case "alert":
        return [d.what === "recovery" ? "Alert rule for " + d.site + ": recovered (" + d.subject + ")" : "Alert for " + d.site + ": " + d.subject, d.what !== "recovery"];
      case "alert-sent":
        return ["Alert message sent by " + d.channel + " (" + d.event + ")", false];
      case "alert-error":
        return ["Alert message not sent by " + d.channel + (d.gave_up ? " (gave up): " : " (tried again later): ") + d.error, true];
      default:
        return [ev.type + ": " + JSON.stringify(d), false];
    }
  }

  function activityItem(ev) {
    const li = document.createElement("li");
    li.dataset.id = ev.id;
    li.dataset.type = ev.type;
    const t = document.createElement("time");
    t.dateTime = ev.time;
    t.textContent = clock(ev.time);
    const [text, problem] = describe(ev);
    const span = document.createElement("span");
    span.textContent = text;
    if (problem) span.className = "problem";
    li.append(t, span);
    return li;
  }

  async function loadActivity(older) {
    const btn = $("older");
    const msg = $("activity-msg");
    btn.disabled = true;
    try {
      let path = "/v1/activity?limit=" + PAGE;
      if (older && oldestID > 0) path += "&before=" + oldestID;
      const res = await api("GET", path);
      const evs = res.events || [];
      const list = $("activity");
      for (const ev of evs) {
        if (shownIDs.has(ev.id)) continue;
        shownIDs.add(ev.id);
        list.appendChild(activityItem(ev));
        if (oldestID === 0 || ev.id < oldestID) oldestID = ev.id;
      }
      activityLoaded = true;
      if (evs.length < PAGE) {
        btn.hidden = true;
        setText(msg, shownIDs.size === 0 ? "Nothing has happened yet." : "That is everything kept.");
      } else {
        setText(msg, older ? "Loaded " + evs.length + " older events." : "");
      }
      return evs.length ? evs[0].id : 0;
    } catch (e) {
      setText(msg, "Could not load the activity: " + e.message);
      return 0;
    } finally {
      btn.disabled = false;
    }
  }

  function addLiveEvent(ev) {
    if (!activityLoaded || shownIDs.has(ev.id)) return;
    shownIDs.add(ev.id);
    $("activity").prepend(activityItem(ev));
  }

  // ---- live events -------------------------------------------------------------

  const TYPES = ["committed", "received", "catch-up", "peer", "fork", "settings", "installed", "sync-now", "rejected",
    "alert", "alert-sent", "alert-error"];

  function listen(after) {
    if (!window.EventSource) return;
    const live = $("live");
    const es = new EventSource("/v1/events" + (after ? "?after=" + after : ""));
    es.onopen = () => { live.className = "live on"; setText(live, "Live"); };
    es.onerror = () => { live.className = "live off"; setText(live, "Reconnecting…"); };
    for (const type of TYPES) {
      es.addEventListener(type, (m) => {
        let data = null;
        try { data = JSON.parse(m.data); } catch (e) { /* keep null */ }
        const ev = { id: Number(m.lastEventId), type, time: new Date().toISOString(), data };
        addLiveEvent(ev);
        dbFollowUps = 3;
        if (type === "settings" && data && data.sync_interval) {
          setText($("interval-current"), shortDuration(data.sync_interval));
        }
        scheduleRefresh();
      });
    }
  }

  async function logout() {
    try { await api("POST", "/v1/logout", {}); } catch (e) { /* ends anyway */ }
    window.location.replace("/");
  }

  async function start() {
    $("sync-now").addEventListener("click", syncNow);
    $("interval-form").addEventListener("submit", saveInterval);
    $("interval").addEventListener("input", (e) => { e.target.dataset.dirty = "1"; e.target.removeAttribute("aria-invalid"); });
    $("older").addEventListener("click", () => loadActivity(true));
    $("logout").addEventListener("click", logout);
    $("db-check").addEventListener("click", checkDB);
    await refresh();
    const newest = await loadActivity(false);
    listen(newest);
    setInterval(refresh, REFRESH_MS);
  }

  start();
})();
