// Shared by every page: the header, the token (sessionStorage), fetch helpers, formatting.
"use strict";
const Vigil = (() => {
  const TOKEN = "vigil.token";
  const token = () => sessionStorage.getItem(TOKEN) || "";

  function headers(write) {
    const h = { Accept: "application/json" };
    if (write) h["Content-Type"] = "application/json";
    if (token()) h.Authorization = "Bearer " + token();
    return h;
  }

  async function api(path, options = {}) {
    const write = options.method && options.method !== "GET";
    const response = await fetch(path, {
      method: options.method || "GET",
      headers: headers(write),
      body: write ? JSON.stringify(options.body || {}) : undefined,
    });
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) {
      const message = (data && data.error) || response.status + " " + response.statusText;
      throw new Error(message);
    }
    return data;
  }

  function header(active) {
    const el = document.createElement("header");
    el.innerHTML = `
      <span class="brand">VIGIL</span>
      <nav>
        <a href="/ui" data-page="keys">Keys</a>
        <a href="/ui/alerts" data-page="alerts">Alerts</a>
        <a href="/ui/models" data-page="models">Models</a>
      </nav>
      <span class="login">
        <span id="session" class="muted"></span>
        <input id="token" type="password" placeholder="token for changes" autocomplete="off">
        <button id="signin">Sign in</button>
        <button id="signout">Sign out</button>
      </span>`;
    document.body.prepend(el);
    el.querySelectorAll("nav a").forEach(a => a.classList.toggle("active", a.dataset.page === active));
    el.querySelector("#signin").onclick = async () => {
      sessionStorage.setItem(TOKEN, el.querySelector("#token").value.trim());
      el.querySelector("#token").value = "";
      await refreshSession();
    };
    el.querySelector("#signout").onclick = async () => { sessionStorage.removeItem(TOKEN); await refreshSession(); };
    refreshSession();
  }

  const session = { writes_enabled: false, authorized: false };
  async function refreshSession() {
    try { Object.assign(session, await api("/api/session")); } catch (e) { /* keep read-only */ }
    const label = document.getElementById("session");
    if (label) {
      label.textContent = !session.writes_enabled ? "read-only server"
        : session.authorized ? "signed in" : "read-only (sign in to change)";
    }
    document.querySelectorAll("[data-write]").forEach(b => { b.disabled = !session.authorized; });
    document.dispatchEvent(new CustomEvent("vigil:session", { detail: session }));
  }

  const esc = s => String(s ?? "").replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const num = (v, digits = 4) => (typeof v === "number" && isFinite(v)) ? (+v.toPrecision(digits)).toString() : "–";
  const when = t => (typeof t === "number") ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) : "–";
  function say(text, bad) {
    const el = document.getElementById("message");
    if (el) { el.textContent = text; el.className = bad ? "error" : "muted"; }
  }
  return { api, header, session, refreshSession, esc, num, when, say, token };
})();
