// Alerts (firing and resolved), silences (create and expire with the token), webhook deliveries.
"use strict";
Vigil.header("alerts");
const $ = id => document.getElementById(id);
const E = Vigil.esc;
const keyLink = k => `<a href="/ui/keys/${encodeURIComponent(k)}">${E(k)}</a>`;

async function loadAlerts() {
  const since = Date.now() / 1000 - Number($("since").value);
  const data = await Vigil.api(`/api/alerts?since=${since}&limit=2000`);
  $("firing-count").textContent = `(${data.firing.length})`;
  $("firing").querySelector("tbody").innerHTML = data.firing.map(a => `<tr data-alert="${E(a.alert_id)}">
    <td>${E(a.alert_id)}</td><td>${keyLink(a.key)}</td><td>${E(a.group)}</td>
    <td><span class="pill ${E(a.severity)}">${E(a.severity)}</span></td><td>${Vigil.when(a.start)}</td>
    <td class="num">${Vigil.num(a.score, 6)}</td></tr>`).join("") || `<tr><td colspan="6" class="muted">nothing is firing</td></tr>`;
  $("alerts").querySelector("tbody").innerHTML = data.alerts.slice().reverse().map(a => `<tr data-alert="${E(a.alert_id)}">
    <td><span class="pill ${E(a.status)}">${E(a.status)}</span></td><td>${E(a.alert_id)}</td><td>${keyLink(a.key)}</td>
    <td>${E(a.group)}</td><td><span class="pill ${E(a.severity)}">${E(a.severity)}</span></td>
    <td>${Vigil.when(a.start)}</td><td>${Vigil.when(a.end)}</td><td class="num">${Vigil.num(a.score, 6)}</td></tr>`).join("")
    || `<tr><td colspan="8" class="muted">no alerts in this period</td></tr>`;
}

async function loadSilences() {
  const data = await Vigil.api("/api/silences?state=all");
  $("silences").querySelector("tbody").innerHTML = data.silences.slice().reverse().map(s => `<tr data-silence="${E(s.id)}">
    <td><code>${E(s.id)}</code></td><td><span class="pill ${s.state === "active" ? "live" : ""}">${E(s.state)}</span></td>
    <td>key=${E(s.matchers.key)} group=${E(s.matchers.group)} severity=${E(s.matchers.severity)}</td>
    <td>${Vigil.when(s.ends_at)}</td><td>${E(s.created_by)}</td><td>${E(s.comment)}</td>
    <td>${s.state === "expired" ? "" : `<button data-write data-expire="${E(s.id)}">Expire</button>`}</td></tr>`).join("")
    || `<tr><td colspan="7" class="muted">no silences</td></tr>`;
  document.querySelectorAll("[data-expire]").forEach(b => {
    b.disabled = !Vigil.session.authorized;
    b.onclick = async () => {
      try { await Vigil.api(`/api/silences/${encodeURIComponent(b.dataset.expire)}`, { method: "DELETE" });
            Vigil.say(`expired ${b.dataset.expire}`); await loadSilences(); }
      catch (e) { Vigil.say(e.message, true); }
    };
  });
}

async function loadWebhooks() {
  const data = await Vigil.api("/api/webhooks");
  $("webhooks").querySelector("tbody").innerHTML = data.webhooks.map(w => `<tr>
    <td>${E(w.endpoint)}</td><td>${E(w.format)}</td><td>${E(w.min_severity)}</td><td>${E(w.key_pattern)}</td>
    <td class="num">${w.pending}</td><td>${Vigil.when(w.next_attempt_at)}</td><td>${Vigil.when(w.oldest_pending_since)}</td></tr>`).join("")
    || `<tr><td colspan="7" class="muted">no webhooks configured (VIGIL_WEBHOOKS): alerts are logged, not delivered</td></tr>`;
}

$("silence-form").onsubmit = async ev => {
  ev.preventDefault();
  const f = new FormData(ev.target);
  const body = {
    matchers: { key: f.get("key") || "*", group: f.get("group") || "*", severity: f.get("severity") || "*" },
    duration: f.get("duration"), comment: f.get("comment"),
  };
  try {
    const made = await Vigil.api("/api/silences", { method: "POST", body });
    Vigil.say(`created silence ${made.silence.id}`);
    ev.target.reset();
    await loadSilences();
  } catch (e) { Vigil.say(e.message, true); }
};

async function loadAll() {
  try { await Promise.all([loadAlerts(), loadSilences(), loadWebhooks()]); }
  catch (e) { Vigil.say(e.message, true); }
}
$("reload").onclick = loadAll;
$("since").onchange = loadAll;
document.addEventListener("vigil:session", () => document.querySelectorAll("[data-expire]").forEach(b => { b.disabled = !Vigil.session.authorized; }));
loadAll();
setInterval(loadAlerts, 5000);
