// Versions per group, the live one, shadow-evaluation losses; promote and rollback (with the
// token) call the same registry code as `vigil models promote|rollback`.
"use strict";
Vigil.header("models");
const $ = id => document.getElementById(id);
const E = Vigil.esc;

function group(g) {
  const versions = g.versions.slice().reverse();
  const rows = versions.map(v => `<tr data-version="${E(v.version)}">
    <td>${v.live ? '<span class="pill live">live</span>' : ""}</td><td><code>${E(v.version)}</code></td>
    <td>${Vigil.when(v.created)}</td><td class="num">${Vigil.num(v.metrics.candidate_loss)}</td>
    <td class="num">${Vigil.num(v.metrics.live_loss)}</td><td class="num">${Vigil.num(v.metrics.train_loss)}</td>
    <td class="num">${v.metrics.steps ?? "–"}</td><td>${E(v.parent || "–")}</td><td>${E(v.note)}</td>
    <td>${v.live ? "" : `<button data-write data-promote="${E(v.version)}" data-group="${E(g.group)}">Promote</button>`}</td></tr>`).join("");
  const events = g.events.map(e => `<li>${Vigil.when(e.at)} ${E(e.action)} → <code>${E(e.version)}</code>${e.from ? ` from <code>${E(e.from)}</code>` : ""} <span class="muted">${E(e.reason)}</span></li>`).join("");
  return `<section class="card" data-group="${E(g.group)}">
    <div class="toolbar"><h2 style="margin:0">${E(g.group)}</h2>
      <span>live: <code class="live-version">${E(g.live || "none")}</code></span>
      <button data-write data-rollback="${E(g.group)}" ${g.history.length < 2 ? "data-nohistory" : ""}>Roll back</button></div>
    <table><thead><tr><th></th><th>version</th><th>created (UTC)</th><th class="num">candidate loss</th>
      <th class="num">live loss (same holdout)</th><th class="num">train loss</th><th class="num">steps</th><th>parent</th><th>note</th><th></th></tr></thead>
      <tbody>${rows || '<tr><td colspan="10" class="muted">no versions registered yet</td></tr>'}</tbody></table>
    <h2>Recent promotions and rollbacks</h2><ul>${events || '<li class="muted">none</li>'}</ul></section>`;
}

async function load() {
  try {
    const data = await Vigil.api("/api/models");
    $("groups").innerHTML = data.groups.map(group).join("") || '<p class="muted">no model groups</p>';
    wire();
  } catch (e) { Vigil.say(e.message, true); }
}

function wire() {
  const can = Vigil.session.authorized;
  document.querySelectorAll("[data-promote]").forEach(b => {
    b.disabled = !can;
    b.onclick = () => act(`/api/models/${encodeURIComponent(b.dataset.group)}/promote`, { version: b.dataset.promote, reason: "web" },
      r => `promoted ${r.live} (group ${r.group})`);
  });
  document.querySelectorAll("[data-rollback]").forEach(b => {
    b.disabled = !can || b.hasAttribute("data-nohistory");
    b.onclick = () => act(`/api/models/${encodeURIComponent(b.dataset.rollback)}/rollback`, { reason: "web" },
      r => `rolled back group ${r.group}: ${r.from} → ${r.live}`);
  });
}

async function act(path, body, message) {
  try { const r = await Vigil.api(path, { method: "POST", body }); Vigil.say(message(r)); await load(); }
  catch (e) { Vigil.say(e.message, true); }
}

$("reload").onclick = load;
document.addEventListener("vigil:session", wire);
load();
