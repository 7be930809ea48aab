// Results of one study (the owner token comes from #owner=..., or is asked for, and is kept in this browser).
(() => {
  const base = location.pathname.replace(/\/precise_edit\/rating.*$/, "") + "/precise_edit/rating";
  const sid = location.pathname.split("/").filter(Boolean).pop();
  const K = `pe-rating:${sid}:owner`;
  const $ = (id) => document.getElementById(id);
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("owner");
  if (fromHash) localStorage.setItem(K, fromHash);
  const f = (x, d = 2) => (x === null || x === undefined ? "n/a" : Number(x).toFixed(d));

  async function load() {
    const owner = localStorage.getItem(K) || "";
    if (!owner) { $("login").hidden = false; return; }
    const r = await fetch(`${base}/api/studies/${sid}/results`, {cache: "no-store", headers: {"X-Owner-Token": owner}});
    if (r.status === 404) { localStorage.removeItem(K); $("login").hidden = false;
      $("login-error").textContent = "Unknown study or wrong owner token."; return; }
    const d = await r.json();
    $("login").hidden = true; $("results").hidden = false;
    $("title").textContent = `Results: ${d.study.name}`;
    $("counts").textContent = `${d.answers} answers from ${d.raters} rater${d.raters === 1 ? "" : "s"}`;
    const link = `${location.origin}${base}/rate/${sid}#key=${d.study.rater_key}`;
    $("rater-link").href = link; $("rater-link").textContent = link;
    const body = document.querySelector("#methods tbody");
    body.replaceChildren();
    for (const m of d.methods) {
      const tr = document.createElement("tr");
      tr.dataset.method = m.method;
      const cells = {rank: m.bt_rank, method: m.method, bt: f(m.bt_strength, 3), win: f(m.win_rate, 3),
        comparisons: f(m.comparisons, 1),
        instruction: `${f(m.instruction_mean)} [${f(m.instruction_ci_low)}, ${f(m.instruction_ci_high)}]`,
        preserve: `${f(m.preserve_mean)} [${f(m.preserve_ci_low)}, ${f(m.preserve_ci_high)}]`, ratings: m.ratings};
      for (const [k, v] of Object.entries(cells)) {
        const td = document.createElement("td"); td.className = k; td.textContent = v; tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    const ag = document.querySelector("#agreement tbody");
    ag.replaceChildren();
    for (const [q, a] of Object.entries(d.agreement)) {
      const tr = document.createElement("tr");
      tr.dataset.question = q;
      for (const [k, v] of [["q", q === "preserve" ? "rest kept" : "instruction followed"], ["alpha", f(a.alpha, 3)],
                            ["units", a.units], ["raters", a.raters]]) {
        const td = document.createElement("td"); td.className = k; td.textContent = v; tr.appendChild(td);
      }
      ag.appendChild(tr);
    }
    const q = `owner=${encodeURIComponent(owner)}`;
    $("export-answers").href = `${base}/api/studies/${sid}/export.csv?kind=answers&${q}`;
    $("export-summary").href = `${base}/api/studies/${sid}/export.csv?kind=summary&${q}`;
  }
  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault(); localStorage.setItem(K, $("owner").value.trim()); load();
  });
  load();
})();
