// Keys index: server-side paging (HSCAN cursors) and search; nothing but one page in memory.
"use strict";
Vigil.header("keys");
const state = { cursors: [0], page: 0, next: 0 };
const $ = id => document.getElementById(id);

async function load() {
  const q = $("search").value.trim();
  const cursor = state.cursors[state.page];
  const params = new URLSearchParams({ q, cursor, limit: $("limit").value });
  try {
    const data = await Vigil.api("/api/keys?" + params);
    state.next = data.next_cursor;
    $("total").textContent = `(${data.total.toLocaleString()} in all)`;
    $("keys").querySelector("tbody").innerHTML = data.keys.map(row).join("") ||
      `<tr><td colspan="8" class="muted">no keys on this page${q ? " match" : ""}</td></tr>`;
    $("prev").disabled = state.page === 0;
    $("first").disabled = state.page === 0;
    $("next").disabled = state.next === 0;
    Vigil.say(`page ${state.page + 1}`);
  } catch (e) { Vigil.say(e.message, true); }
}

function row(k) {
  const incident = k.open_incident
    ? `<span class="pill firing">${Vigil.esc(k.open_incident.incident_id)}</span>` : "";
  return `<tr data-key="${Vigil.esc(k.key)}">
    <td><a href="/ui/keys/${encodeURIComponent(k.key)}">${Vigil.esc(k.key)}</a></td>
    <td>${Vigil.esc(k.group)}</td>
    <td class="num">${Vigil.num(k.last_value, 6)}</td>
    <td class="num">${Vigil.num(k.last_score, 4)}${k.anomaly ? ' <span class="pill firing">anomaly</span>' : ""}</td>
    <td>${incident}</td>
    <td>${Vigil.esc(k.model_version)}</td>
    <td>${Vigil.when(k.last_event_time)}</td>
    <td>${k.in_this_worker ? '<span class="pill live">in memory</span>' : ""}</td></tr>`;
}

let timer = null;
$("search").addEventListener("input", () => {
  clearTimeout(timer);
  timer = setTimeout(() => { state.cursors = [0]; state.page = 0; load(); }, 250);
});
$("limit").onchange = () => { state.cursors = [0]; state.page = 0; load(); };
$("next").onclick = () => { state.cursors[state.page + 1] = state.next; state.page += 1; load(); };
$("prev").onclick = () => { state.page = Math.max(0, state.page - 1); load(); };
$("first").onclick = () => { state.page = 0; load(); };
load();
