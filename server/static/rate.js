// Rater page: blind edits in the rater's own order; answers are queued in localStorage and resent
// until the server confirms them, so a locked database or a full disk never loses one silently.
(() => {
  const base = location.pathname.replace(/\/precise_edit\/rating.*$/, "") + "/precise_edit/rating";
  const sid = location.pathname.split("/").filter(Boolean).pop();
  const key = new URLSearchParams(location.hash.slice(1)).get("key") || "";
  const K = (n) => `pe-rating:${sid}:${n}`;
  const $ = (id) => document.getElementById(id);
  let token = localStorage.getItem(K("token")) || "";
  let view = null, cur = null, form = null, flushing = null, retryTimer = null;

  const queue = () => JSON.parse(localStorage.getItem(K("queue")) || "[]");
  const setQueue = (q) => localStorage.setItem(K("queue"), JSON.stringify(q));
  const api = (path, opts = {}) => fetch(base + "/api" + path, {
    ...opts, cache: "no-store", headers: {"Content-Type": "application/json", "X-Rater-Token": token, ...(opts.headers || {})}});

  function status(text, bad) { $("status").textContent = text; $("status").className = bad ? "bad" : "ok"; }

  async function start() {
    if (!token) { $("join").hidden = false; $("name").focus(); return; }
    const r = await api("/me");
    if (r.status === 404) { localStorage.removeItem(K("token")); token = ""; return start(); }
    view = await r.json();
    $("title").textContent = `${view.name} (rater: ${view.rater})`;
    for (const a of queue()) { const it = view.items.find((i) => i.id === a.item); if (it) it.answer = a; }
    next();
    flush();
  }

  $("join").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const r = await fetch(`${base}/api/studies/${sid}/join`, {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({key, name: $("name").value})});
    if (!r.ok) { $("join-error").textContent = r.status === 404 ? "This link is not valid (ask for a new one)." : (await r.json()).error; return; }
    token = (await r.json()).token;
    localStorage.setItem(K("token"), token);
    $("join").hidden = true;
    start();
  });

  const answered = () => view.items.filter((i) => i.answer).length;
  function progress() {
    const done = answered(), total = view.items.length;
    $("progress").textContent = done < total ? `${done + 1} of ${total}` : `${total} of ${total}, done`;
  }

  function next(item) {
    cur = item || view.items.find((i) => !i.answer) || null;
    progress();
    $("item").hidden = !cur;
    $("finished").hidden = !!cur;
    if (cur) render();
  }

  function render() {
    const prev = cur.prefill;
    form = {scores: {}, better: undefined};
    $("instruction").textContent = cur.instruction;
    $("item-error").textContent = "";
    const row = $("images");
    row.replaceChildren(card("Source", cur.source));
    for (const e of cur.edits) {
      const c = card(`Edit ${e.label}`, e.image);
      c.dataset.edit = e.id;
      form.scores[e.id] = prev && prev.scores[e.id] ? [...prev.scores[e.id]] : [0, 0];
      [["instruction followed", 0], ["rest of the image kept", 1]].forEach(([label, q]) => {
        const d = document.createElement("div");
        d.className = "q"; d.dataset.edit = e.id; d.dataset.q = q;
        d.innerHTML = `<span>${e.label}: ${label} (1 = not at all, 5 = fully)</span>`;
        for (let v = 1; v <= 5; v++) {
          const b = document.createElement("button");
          b.type = "button"; b.textContent = v; b.dataset.v = v;
          b.addEventListener("click", () => { form.scores[e.id][q] = v; paint(); });
          d.appendChild(b);
        }
        c.appendChild(d);
      });
      row.appendChild(c);
    }
    const better = $("better");
    better.querySelectorAll("button").forEach((b) => b.remove());
    for (const e of [...cur.edits, {id: null, label: "Tie"}]) {
      const b = document.createElement("button");
      b.type = "button"; b.textContent = e.label; b.dataset.better = e.id === null ? "tie" : e.id;
      b.addEventListener("click", () => { form.better = e.id; paint(); });
      better.appendChild(b);
    }
    if (prev) form.better = prev.better;
    paint();
  }

  function card(title, image) {
    const c = document.createElement("div");
    c.className = "card";
    c.innerHTML = `<h2></h2><img alt="">`;
    c.querySelector("h2").textContent = title;
    c.querySelector("img").src = `${base}/api/images/${image}?t=${encodeURIComponent(token)}`;
    c.querySelector("img").alt = title;
    return c;
  }

  function activeRow() {
    for (const e of cur.edits) for (const q of [0, 1]) if (!form.scores[e.id][q]) return [e.id, q];
    return null;
  }

  function paint() {
    const act = activeRow();
    document.querySelectorAll("#images .q").forEach((d) => {
      const v = form.scores[d.dataset.edit][+d.dataset.q];
      d.classList.toggle("active", !!act && String(act[0]) === d.dataset.edit && act[1] === +d.dataset.q);
      d.querySelectorAll("button").forEach((b) => b.classList.toggle("on", +b.dataset.v === v));
    });
    document.querySelectorAll("#better button").forEach((b) =>
      b.classList.toggle("on", form.better !== undefined && b.dataset.better === (form.better === null ? "tie" : String(form.better))));
  }

  function save() {
    if (!cur) return;
    if (activeRow() || form.better === undefined) {
      $("item-error").textContent = "Answer every row and pick the better edit (or Tie) first.";
      return;
    }
    const a = {item: cur.id, scores: form.scores, better: form.better,
               client_id: `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`};
    setQueue([...queue(), a]);
    cur.answer = a;
    cur.prefill = null;
    next();
    flush();
  }

  function flush() {
    if (flushing) return flushing;
    clearTimeout(retryTimer);
    flushing = (async () => {
      let q = queue();
      while (q.length) {
        let r = null;
        try { r = await api("/answers", {method: "POST", body: JSON.stringify(q[0])}); } catch (e) { r = null; }
        if (r && (r.ok || r.status === 409)) {
          q = queue().slice(1); setQueue(q);
          continue;
        }
        if (r && r.status >= 400 && r.status < 500) {   // can never be saved: say so, do not resend
          const bad = q[0];
          q = queue().slice(1); setQueue(q);
          const it = view.items.find((i) => i.id === bad.item);
          if (it) it.answer = null;
          status(`not saved: ${(await r.json().catch(() => ({}))).error || r.status}; please answer again`, true);
          next();
          return;
        }
        status(`not saved (${q.length} answer${q.length > 1 ? "s" : ""} kept, resending...)`, true);
        retryTimer = setTimeout(flush, 2000);
        return;
      }
      status("all answers saved", false);
    })().finally(() => { flushing = null; });
    return flushing;
  }

  async function undo() {
    if (flushing) await flushing;
    const q = queue();
    let item = null;
    if (q.length) {
      const last = q.pop(); setQueue(q);
      item = view.items.find((i) => i.id === last.item);
    } else {
      const r = await api("/undo", {method: "POST", body: "{}"});
      if (!r.ok) { status("undo not saved: try again", true); return; }
      const id = (await r.json()).item;
      item = view.items.find((i) => i.id === id);
    }
    if (!item) return;
    item.prefill = item.answer;
    item.answer = null;
    status(q.length ? "" : "last answer undone", false);
    next(item);
  }

  $("save").addEventListener("click", save);
  $("undo").addEventListener("click", undo);
  document.addEventListener("keydown", (ev) => {
    if (!view || ev.target.tagName === "INPUT" || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const k = ev.key.toLowerCase();
    if (k === "u" || k === "backspace") { ev.preventDefault(); undo(); return; }
    if (!cur) return;
    if (k >= "1" && k <= "5") {
      const act = activeRow();
      if (act) { form.scores[act[0]][act[1]] = +k; paint(); }
    } else if (k === "t") { form.better = null; paint(); }
    else if (k === "enter") { ev.preventDefault(); save(); }
    else if (k.length === 1) {
      const e = cur.edits.find((x) => x.label.toLowerCase() === k);
      if (e) { form.better = e.id; paint(); }
    }
  });
  window.addEventListener("online", flush);
  start();
})();
