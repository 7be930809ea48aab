// Studies list: names and counts only; results need the study's owner token (asked for on the results page).
(async () => {
  const base = location.pathname.replace(/\/precise_edit\/rating.*$/, "") + "/precise_edit/rating";
  const r = await fetch(base + "/api/studies", {cache: "no-store"});
  const {studies} = await r.json();
  const body = document.querySelector("#studies tbody");
  document.getElementById("empty").hidden = studies.length > 0;
  for (const s of studies) {
    const tr = document.createElement("tr");
    tr.dataset.study = s.id;
    for (const v of [s.name, s.items, s.answers, new Date(s.created * 1000).toLocaleString()]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.appendChild(td);
    }
    const td = document.createElement("td"), a = document.createElement("a");
    a.href = `${base}/results/${s.id}`;
    a.textContent = "results";
    td.appendChild(a);
    tr.appendChild(td);
    body.appendChild(tr);
  }
})();
