// rsgo's web console: a small page over the admin API (/api/v1/). No build step and no
// dependencies. The Admin key lives in sessionStorage only, so it is gone when the browser
// session ends. Every value from the server reaches the page as text, never as HTML.
"use strict";

const KEY = "rsgo.key";
const TERMINAL = new Set(["Succeeded", "Failed", "RolledBack", "Superseded"]);
let timer = null;
const streams = new Map();

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function key() { return sessionStorage.getItem(KEY); }

function status(text) { document.getElementById("status").textContent = text || ""; }

class ApiError extends Error {
  constructor(code, message) { super(message); this.code = code; }
}

async function api(method, path, body) {
  const headers = { "X-Api-Key": key() || "" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store",
  });
  const data = await response.json().catch(() => ({}));
  if (response.status === 401) {
    signOut(data.message || "Signed out: the key was refused.");
    throw new ApiError(401, data.message);
  }
  if (!response.ok) throw new ApiError(response.status, data.message || `HTTP ${response.status}`);
  return data;
}

function when(time) {
  if (!time) return "—";
  const date = new Date(time);
  return isNaN(date) ? time : date.toLocaleString();
}

function phase(text) { return h("span", { class: `phase ${text || "Pending"}`, "data-phase": text || "Pending" }, text || "Pending"); }

function table(headers, rows, empty) {
  return h("table", {},
    h("thead", {}, h("tr", {}, headers.map((title) => h("th", {}, title)))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { class: "empty", colspan: headers.length }, empty))));
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  stopLive();
  render(message);
}

function stopLive() {
  if (timer) clearInterval(timer);
  timer = null;
  for (const controller of streams.values()) controller.abort();
  streams.clear();
}

function signIn(message) {
  const input = h("input", { type: "password", id: "signin-key", autocomplete: "off", placeholder: "rsgo_…", required: true });
  const error = h("p", { class: "error", id: "signin-error" }, message || "");
  const form = h("form", {
    class: "card", id: "signin", onsubmit: async (event) => {
      event.preventDefault();
      sessionStorage.setItem(KEY, input.value.trim());
      try {
        await api("GET", "/api/v1/apikeys");
        location.hash = "#/stacks";
        render();
      } catch (e) {
        sessionStorage.removeItem(KEY);
        error.textContent = e.code === 403 ? "This key lacks the Admin permission." : (e.message || "Sign-in failed.");
      }
    },
  },
  h("h1", {}, "Sign in to rsgo"),
  h("p", { class: "muted" }, "Use an API key with the Admin permission (rsgo apikey create --permission Admin). It is kept for this browser session only."),
  input, error,
  h("div", { class: "actions" }, h("button", { type: "submit", id: "signin-submit" }, "Sign in")));
  return h("section", { class: "signin" }, form);
}

// Stacks: what runs where, refreshed every two seconds.
async function stacksPage(main) {
  main.append(h("h1", {}, "Stacks"));
  const holder = h("div", { id: "stacks" });
  main.append(holder);
  const draw = async () => {
    const [stacks, deployments] = await Promise.all([
      api("GET", "/api/v1/stacks"), api("GET", "/api/v1/deployments?limit=500"),
    ]);
    const latest = new Map();
    for (const d of deployments.items) {
      const id = `${d.spec.environment}/${d.spec.stack}`;
      if (!latest.has(id)) latest.set(id, d);
    }
    const rows = stacks.items.map((s) => {
      const st = s.status || {};
      const last = latest.get(`${s.spec.environment}/${s.metadata.name}`);
      return h("tr", { "data-stack": s.metadata.name },
        h("td", {}, h("a", { href: `#/deployments?stack=${encodeURIComponent(s.metadata.name)}` }, s.metadata.name)),
        h("td", {}, s.spec.environment),
        h("td", {}, s.spec.product),
        h("td", { class: "mono" }, st.deployedVersion || "—", s.spec.version && s.spec.version !== st.deployedVersion ? h("span", { class: "muted" }, ` → ${s.spec.version}`) : null),
        h("td", {}, phase(st.phase)),
        h("td", {}, last ? [phase((last.status || {}).phase), " ", h("span", { class: "muted" }, `${last.spec.action} by ${last.spec.requestedBy}, ${when(last.spec.requestedAt)}`)] : "—"),
        h("td", { class: "muted" }, st.message || ""));
    });
    holder.replaceChildren(table(["Stack", "Environment", "Product", "Version", "Phase", "Last deployment", "Message"], rows, "No stacks yet."));
  };
  await draw();
  timer = setInterval(() => draw().catch((e) => status(e.message)), 2000);
}

// Deployments: history, newest first; rollouts in progress follow their event stream.
function deploymentRow(d) {
  const st = d.status || {};
  const services = (st.services || []).map((s) => h("li", {}, `${s.service}: ${s.action}`));
  const change = d.spec.action === "Upgrade" ? `${d.spec.fromVersion || "?"} → ${d.spec.toVersion || "?"}` : (d.spec.toVersion || "");
  return h("tr", { "data-deployment": d.metadata.name },
    h("td", { class: "mono" }, d.metadata.name),
    h("td", {}, d.spec.stack, h("div", { class: "muted" }, d.spec.environment)),
    h("td", {}, d.spec.action, h("div", { class: "muted mono" }, change)),
    h("td", { class: "cell-phase" }, phase(st.phase)),
    h("td", {}, d.spec.requestedBy),
    h("td", {}, when(d.spec.requestedAt)),
    h("td", { class: "cell-message" }, st.message || "", services.length ? h("ul", { class: "services" }, services) : null));
}

// Reads a deployment's Server-Sent Events with fetch (EventSource cannot send the key header)
// and updates its row as each event arrives.
async function follow(id) {
  if (streams.has(id)) return;
  const controller = new AbortController();
  streams.set(id, controller);
  try {
    const response = await fetch(`/api/v1/deployments/${encodeURIComponent(id)}/events`, {
      headers: { "X-Api-Key": key() || "", Accept: "text/event-stream" }, signal: controller.signal,
    });
    if (!response.ok || !response.body) return;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
        if (!block.includes("event: deployment") || !data) continue;
        const event = JSON.parse(data);
        const row = document.querySelector(`tr[data-deployment="${CSS.escape(id)}"]`);
        if (!row) continue;
        row.querySelector(".cell-phase").replaceChildren(phase(event.phase));
        const services = (event.services || []).map((s) => h("li", {}, `${s.service}: ${s.action}`));
        row.querySelector(".cell-message").replaceChildren(event.message || "", services.length ? h("ul", { class: "services" }, services) : "");
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") status(`Following ${id}: ${e.message}`);
  } finally {
    streams.delete(id);
  }
}

async function deploymentsPage(main, params) {
  const stack = params.get("stack");
  main.append(h("h1", {}, stack ? `Deployments of ${stack}` : "Deployments"));
  const holder = h("div", { id: "deployments" });
  main.append(holder);
  const query = stack ? `?stack=${encodeURIComponent(stack)}&limit=200` : "?limit=200";
  const draw = async () => {
    const deployments = await api("GET", `/api/v1/deployments${query}`);
    const known = new Set([...holder.querySelectorAll("tr[data-deployment]")].map((r) => r.dataset.deployment));
    const fresh = deployments.items.some((d) => !known.has(d.metadata.name));
    if (fresh || !known.size) {
      holder.replaceChildren(table(["Id", "Stack", "Action", "Phase", "Who", "When", "Result"], deployments.items.map(deploymentRow), "No deployments yet."));
    }
    for (const d of deployments.items) {
      if (!TERMINAL.has((d.status || {}).phase)) follow(d.metadata.name);
    }
  };
  await draw();
  timer = setInterval(() => draw().catch((e) => status(e.message)), 2000);
}

async function auditPage(main) {
  main.append(h("h1", {}, "Audit trail"));
  const audit = await api("GET", "/api/v1/audit?limit=500");
  const rows = audit.items.map((e) => {
    const s = e.spec;
    const actor = [s.actor.name, s.actor.keyPrefix, s.actor.address].filter(Boolean);
    return h("tr", {},
      h("td", {}, when(s.time)),
      h("td", {}, actor[0], actor.length > 1 ? h("div", { class: "muted mono" }, actor.slice(1).join(" · ")) : null),
      h("td", { class: "mono" }, s.action),
      h("td", {}, s.target || "—"),
      h("td", {}, phase(s.outcome), s.statusCode ? h("span", { class: "muted" }, ` ${s.statusCode}`) : null),
      h("td", { class: "muted" }, s.count ? `${s.count}× ` : "", s.detail || ""));
  });
  main.append(table(["Time", "Actor", "Action", "Target", "Outcome", "Detail"], rows, "Nothing recorded yet."));
}

// Settings → CI/CD Integration: create, list and revoke API keys.
const PERMISSIONS = [
  ["Hooks.Redeploy", "Redeploy", "Restart a stack with fresh images"],
  ["Hooks.Upgrade", "Upgrade", "Move a stack to another catalog version"],
  ["Hooks.SyncSources", "Sync Sources", "Synchronize catalog sources"],
  ["Admin", "Admin", "This console and the admin API"],
];

function keyState(k) { return phase(k.state); }

async function settingsPage(main) {
  main.append(h("h1", {}, "Settings → CI/CD Integration"));
  main.append(h("p", { class: "muted" }, "Pipelines call the hooks with an API key: POST /api/hooks/redeploy, /api/hooks/upgrade and /api/hooks/sync-sources with the X-Api-Key header, or `rsgo hook` with RSGO_URL and RSGO_API_KEY."));
  const once = h("div", { id: "key-once" });
  const formHolder = h("div", {});
  const list = h("div", { id: "keys" });
  main.append(h("div", { class: "actions" }, h("button", { id: "create-key", type: "button", onclick: () => showForm() }, "Create API Key")), once, formHolder, h("h2", {}, "API keys"), list);

  const environments = (await api("GET", "/api/v1/environments")).items.map((e) => e.metadata.name);

  async function drawKeys() {
    const keys = await api("GET", "/api/v1/apikeys");
    const rows = keys.items.map((k) => {
      const actions = h("td", {});
      if (k.state !== "revoked") {
        actions.append(h("button", {
          class: "danger", type: "button", "data-revoke": k.name, onclick: () => {
            actions.replaceChildren(
              h("span", {}, `Revoke "${k.displayName}"? Pipelines using it are refused at once. `),
              h("button", {
                class: "danger", type: "button", "data-confirm-revoke": k.name, onclick: async () => {
                  try {
                    await api("POST", `/api/v1/apikeys/${encodeURIComponent(k.name)}/revoke`);
                    status(`Revoked ${k.displayName}.`);
                  } catch (e) { status(e.message); }
                  drawKeys();
                },
              }, "Revoke key"), " ",
              h("button", { class: "secondary", type: "button", onclick: () => drawKeys() }, "Cancel"));
          },
        }, "Revoke"));
      }
      return h("tr", { "data-key": k.name },
        h("td", {}, k.displayName),
        h("td", { class: "mono" }, k.prefix, "…"),
        h("td", {}, k.permissions.join(", ")),
        h("td", {}, k.environment || "All environments"),
        h("td", {}, k.expiresAt ? when(k.expiresAt) : "Never"),
        h("td", { class: "cell-state" }, keyState(k)),
        h("td", {}, k.lastUsedAt ? when(k.lastUsedAt) : "Never"),
        actions);
    });
    list.replaceChildren(table(["Name", "Prefix", "Permissions", "Scope", "Expires", "State", "Last used", ""], rows, "No keys yet."));
  }

  function showForm() {
    const error = h("p", { class: "error", id: "create-error" });
    const name = h("input", { type: "text", id: "key-name", required: true, placeholder: "GitHub Actions Deploy" });
    const checks = PERMISSIONS.map(([value, label, help]) => h("label", { class: "check", title: help }, h("input", { type: "checkbox", name: "permission", value }), label));
    const expiry = h("input", { type: "date", id: "key-expiry" });
    const environment = h("select", { id: "key-environment" }, h("option", { value: "" }, "All environments"), environments.map((e) => h("option", { value: e }, e)));
    const form = h("form", {
      class: "grid", id: "create-form", onsubmit: async (event) => {
        event.preventDefault();
        const permissions = [...form.querySelectorAll("input[name=permission]:checked")].map((c) => c.value);
        const body = { name: name.value, permissions };
        if (environment.value) body.environment = environment.value;
        if (expiry.value) body.expiresAt = `${expiry.value}T23:59:59Z`;
        try {
          const created = await api("POST", "/api/v1/apikeys", body);
          formHolder.replaceChildren();
          showKey(created);
          drawKeys();
        } catch (e) { error.textContent = e.message; }
      },
    },
    h("label", { for: "key-name" }, "Name"), name,
    h("span", {}, "Permissions"), h("div", {}, checks),
    h("label", { for: "key-expiry" }, "Expires (optional)"), expiry,
    h("label", { for: "key-environment" }, "Environment"), environment,
    h("span", {}), h("div", { class: "actions" }, h("button", { type: "submit", id: "create-submit" }, "Create"), h("button", { class: "secondary", type: "button", onclick: () => formHolder.replaceChildren() }, "Cancel")));
    formHolder.replaceChildren(h("section", { class: "card" }, h("h2", {}, "New API key"), form, error));
    name.focus();
  }

  function showKey(created) {
    const code = h("code", { id: "new-key" }, created.key);
    const copied = h("span", { class: "muted", id: "copied" });
    once.replaceChildren(h("section", { class: "card key-once" },
      h("h2", {}, `API key "${created.displayName}" created`),
      h("p", {}, h("strong", {}, "Copy the key now. It is shown only this once: rsgo keeps only its hash.")),
      code,
      h("div", { class: "actions" },
        h("button", {
          type: "button", id: "copy-key", onclick: async () => {
            try {
              await navigator.clipboard.writeText(created.key);
            } catch {
              const range = document.createRange();
              range.selectNodeContents(code);
              getSelection().removeAllRanges();
              getSelection().addRange(range);
              document.execCommand("copy");
            }
            copied.textContent = "Copied to the clipboard.";
          },
        }, "Copy"),
        h("button", { class: "secondary", type: "button", id: "key-done", onclick: () => once.replaceChildren() }, "Done"), copied)));
  }

  await drawKeys();
}

const PAGES = { stacks: stacksPage, deployments: deploymentsPage, audit: auditPage, settings: settingsPage };

async function render(message) {
  stopLive();
  status("");
  const main = document.getElementById("main");
  const nav = document.getElementById("nav");
  if (!key()) {
    nav.hidden = true;
    main.replaceChildren(signIn(message));
    return;
  }
  nav.hidden = false;
  const [path, query] = (location.hash.slice(2) || "stacks").split("?");
  const page = path.split("/")[0];
  for (const link of nav.querySelectorAll("a")) link.classList.toggle("active", link.dataset.page === page);
  main.replaceChildren();
  try {
    await (PAGES[page] || stacksPage)(main, new URLSearchParams(query || ""));
  } catch (e) {
    if (e.code !== 401) main.append(h("p", { class: "error" }, e.code === 403 ? "This key lacks the Admin permission." : e.message));
  }
}

window.addEventListener("hashchange", () => render());
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("sign-out").addEventListener("click", () => signOut("Signed out."));
  render();
});
